"""The sandbox for generated code (kit/sandbox.py): outcomes, forged passes, isolation, limits,
and the best-effort fallback. Each hostile program first tries its attack and then asserts that
the attack worked, so `passed` means the attack succeeded; the reason must show it failed
inside the program (not a broken sandbox). Network tests only touch listeners made here."""

import os
import resource
import socket
import subprocess
import time
import uuid

import pytest
from conftest import ROOT

from kit import sandbox
from kit.errors import KitError

strict_only = pytest.mark.skipif(not sandbox.is_strict(), reason=sandbox.describe())


def attack(program: str, tests: str = "", timeout: float = 3) -> sandbox.Outcome:
    """With tests: the verdict (run_tests); without: the program alone, passing if it ran to its
    end (run_program; run_tests refuses a task with no tests)."""
    out = (sandbox.run_tests(program, tests, timeout=timeout) if tests
           else sandbox.run_program(program, timeout=timeout))
    assert not out.passed, f"the attack worked: {out}"
    assert not out.reason.startswith("sandbox error"), out
    return out


@pytest.mark.parametrize("program, passed, reason", [
    ("def f(x):\n    return x * 2\nassert f(2) == 4", True, "passed"),
    ("def f(x):\n    return x * 3\nassert f(2) == 4", False, "AssertionError"),
    ("def f(x) return", False, "SyntaxError"),
    ("while True:\n    pass", False, "timeout"),
    ("import time\ntime.sleep(60)", False, "timeout"),
    ("x = bytearray(4 * 2**30)", False, "memory"),
    ("import sys\nsys.exit(0)\nassert False", False, "before the tests ran to the end"),
    ("raise SystemExit(0)", False, "before the tests ran to the end"),
])
def test_sandbox_outcomes(program, passed, reason):
    out = sandbox.run_program(program, timeout=2)
    assert out.passed is passed and reason in out.reason, out


def test_sandbox_hides_secrets_and_uses_a_scratch_folder(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_for_test")
    program = ("import os\nassert 'HF_TOKEN' not in os.environ\n"
               f"assert os.getcwd() != {os.getcwd()!r}\nopen('left_behind.txt', 'w').write('x')")
    assert sandbox.run_program(program).passed
    assert not os.path.exists("left_behind.txt")


def test_tests_run_after_the_code_and_plain_asserts_still_work():
    code = ("import collections\ndef f(s):\n    return collections.Counter(s)\n"
            "def g():\n    return [1, (2, 'a')]")
    tests = "assert f('aab') == {'a': 2, 'b': 1}\nassert g() == [1, (2, 'a')]\nassert g() != [1]"
    assert sandbox.run_tests(code, tests).passed
    assert not sandbox.run_tests(code, "assert g() == [1, (2, 'b')]").passed


# ---------------------------------------------------------------- forged passes

FAILING_TEST = "assert 1 == 2"


@pytest.mark.parametrize("program", [
    # print the old end marker (the last line of program.py) from atexit / excepthook / before exit
    "import atexit\natexit.register(lambda: print(open(__file__).read().splitlines()[-1]))",
    "import sys\nsys.excepthook = lambda *a: print(open(__file__).read())",
    "import os\nprint(open(__file__).read(), flush=True)\nos._exit(0)",
    "import os\nprint(open('/proc/self/cmdline').read(), flush=True)\nos._exit(0)",
    # write a verdict on every descriptor, with every secret-looking string the process holds
    "import gc, os, re\n"
    "found = [o for x in gc.get_objects() for o in gc.get_referents(x)\n"
    "         if isinstance(o, str) and re.fullmatch('[0-9a-f]{32}', o)]\n"
    "for fd in range(3, 64):\n"
    "    for t in found + ['']:\n"
    "        try: os.write(fd, (t + '\\npassed').encode())\n"
    "        except OSError: pass\n"
    "os._exit(0)",
    "import os\nfor fd in range(3, 64):\n    try: os.write(fd, b'passed')\n    except OSError: pass",
    # climb to the harness's frame and read its locals
    "import sys\nf = sys._getframe()\nwhile f.f_back: f = f.f_back\n"
    "tok = [v for v in f.f_locals.values() if isinstance(v, str) and len(v) == 32][0]\n"
    "import os\nos.write(3, (tok + '\\npassed').encode())\nos._exit(0)",
    "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n"
    "    while f.f_back: f = f.f_back\n    tok = f.f_locals['token']\n"
    "    import os\n    os.write(3, (tok + '\\npassed').encode())\n    os._exit(0)",
    "import sys\nsys.settrace(lambda *a: None)",
    "import ctypes",
    # replace what the harness writes the verdict with
    "import os\n_w = os.write\nos.write = lambda fd, b: _w(fd, b.split(b'\\n')[0] + b'\\npassed')",
    "import builtins\nbuiltins.AssertionError = None",
])
def test_a_failing_test_cannot_be_made_to_pass(program):
    attack(program, FAILING_TEST)


def test_an_object_equal_to_everything_does_not_pass():
    code = ("class Anything:\n    def __eq__(self, other):\n        return True\n"
            "    def __ne__(self, other):\n        return False\n"
            "def f(x):\n    return Anything()\ndef g(x):\n    return [Anything()]")
    assert "plain value" in attack(code, "assert f(1) == 2").reason
    assert "plain value" in attack(code, "def check(c):\n    assert c(1) == [2]\ncheck(g)").reason


def test_values_from_libraries_still_compare():
    pytest.importorskip("numpy")
    code = "import numpy as np\ndef f():\n    return np.int64(3)"
    assert sandbox.run_tests(code, "assert f() == 3").passed


# Ways to pass a failing test. Those marked "forged" passed on main (2026-12-04), when the tests
# ran in the candidate's process; the others were held there by an audit hook, which is gone:
# the verdict now comes from a judge process that the candidate never runs in, on plain data.
HUNT = ("import os\ndef _forge(frame):\n    while frame is not None:\n"
        "        for v in list(frame.f_locals.values()):\n"
        "            if isinstance(v, str) and len(v) == 32:\n"
        "                for fd in range(3, 64):\n"
        "                    try: os.write(fd, (v + '\\npassed').encode())\n"
        "                    except OSError: pass\n"
        "                os._exit(0)\n"
        "        frame = frame.f_back\n")
ANYTHING = "class A:\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return A()\n"
FORGERIES = {
    # a signal handler's frame walks f_back to the harness's token (forged, strict mode)
    "signal-frames": (HUNT + "import signal\nsignal.signal(signal.SIGUSR1, lambda s, fr: _forge(fr))\n"
                      "def f(x):\n    os.kill(os.getpid(), signal.SIGUSR1)\n    return x\n",
                      "assert f(1) == 2"),
    "getframe": (HUNT + "import sys\ndef f(x):\n    _forge(sys._getframe())\n", "assert f(1) == 2"),
    "inspect": (HUNT + "import inspect\ndef f(x):\n    _forge(inspect.currentframe())\n", "assert f(1) == 2"),
    "gc": ("import gc, os, re\ndef f(x):\n"
           "    found = [v for o in gc.get_objects() if isinstance(o, dict) for v in list(o.values())\n"
           "             if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v)]\n"
           "    for fd in range(3, 64):\n        for t in found:\n"
           "            try: os.write(fd, (t + '\\npassed').encode())\n            except OSError: pass\n"
           "    os._exit(0)\n", "assert f(1) == 2"),
    # _ctypes loaded from its file, then the current frame read through the C API
    "ctypes-by-file": (HUNT + "import importlib.util, sys\n"
                       "spec = importlib.util.spec_from_file_location('_ctypes', "
                       "importlib.util.find_spec('_ctypes').origin)\n"
                       "m = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(m)\n"
                       "sys.modules['_ctypes'] = m\nimport ctypes\n"
                       "_forge(ctypes.cast(ctypes.pythonapi.PyEval_GetFrame(), ctypes.py_object).value)\n"
                       "def f(x):\n    return x\n", "assert f(1) == 2"),
    # builtins patched from inside a call, after the harness restored them (forged)
    "patched-builtins": ("def f(x):\n    import builtins\n    builtins.abs = lambda v: 0\n    return 0\n",
                         "assert f(1) == 0\nassert abs(f(2) - 5) < 1e-9"),
    # equality rigged where an `assert a == b` rewrite does not look (each forged)
    "eq-staticmethod": ("class A:\n    __eq__ = staticmethod(lambda *a: True)\ndef f(x):\n    return A()\n",
                        "assert f(1) == 2"),
    "eq-partialmethod": ("import functools\ndef t(*a):\n    return True\nclass A:\n"
                         "    __eq__ = functools.partialmethod(t)\ndef f(x):\n    return A()\n",
                         "assert f(1) == 2"),
    "assert-in": (ANYTHING, "assert f(1) in [2, 3]"),
    "assert-and": (ANYTHING, "assert f(1) == 2 and f(2) == 4"),
    "assert-abs": ("class A:\n    def __sub__(self, o):\n        return 0\ndef f(x):\n    return A()\n",
                   "assert abs(f(1) - 2.5) < 1e-6"),
    "assert-all": (ANYTHING, "assert all(f(i) == 2 * i + 1 for i in range(3))"),
    # the answer looked up in the tests, which used to sit in the program's own file (forged)
    "reads-the-tests": ("def f(x):\n    import re\n    src = open(__file__).read()\n"
                        "    return int(re.search(r'f\\(1\\) == (\\d+)', src).group(1))\n",
                        "assert f(1) == 2"),
    "exit-in-finally": ("import os\ndef f(x):\n    try:\n        return 0\n    finally:\n"
                        "        os._exit(0)\n",
                        "assert f(1) == 2"),
    "inherited-fds": ("import os\ndef f(x):\n    for fd in range(64):\n"
                      "        try: os.write(fd, b'passed\\n')\n"
                      "        except OSError: pass\n    return 0\n", "assert f(1) == 2"),
}


@pytest.mark.parametrize("force", [False, True], ids=["auto", "best-effort"])
@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forgery_corpus(name, force, monkeypatch):
    monkeypatch.setattr(sandbox, "FORCE_BEST_EFFORT", force)
    program, tests = FORGERIES[name]
    attack(program, tests)


def test_a_task_without_tests_is_refused():
    for tests in ("", "f(1)", "print('ok')"):
        out = sandbox.run_tests("def f(x):\n    return x", tests)
        assert not out.passed and out.reason.startswith("refused: the task has no tests"), out


def test_the_tests_still_use_the_program_as_before():
    code = ("class Stack:\n    def __init__(self):\n        self.items = []\n"
            "    def push(self, x):\n        self.items.append(x)\n        return len(self.items)\n"
            "def squares(n):\n    for i in range(n):\n        yield i * i\n"
            "def positive(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n"
            "def add_one(xs):\n    xs.append(1)\n"
            "LIMIT = 3\n")
    tests = ("s = Stack()\nassert s.push(4) == 1 and s.push(5) == 2 and s.items == [4, 5]\n"
             "assert list(squares(LIMIT)) == [0, 1, 4]\n"
             "try:\n    positive(-1)\n    assert False\n"
             "except ValueError as e:\n    assert 'negative' in str(e)\n"
             "xs = []\nadd_one(xs)\nassert xs == [1]\n"
             "assert abs(positive(0.1 + 0.2) - 0.3) < 1e-9\n")
    assert sandbox.run_tests(code, tests).passed, sandbox.run_tests(code, tests)
    assert "NameError" in sandbox.run_tests("x = 1", "assert f(1) == 1").reason


# ---------------------------------------------------------------- isolation (strict machines)


@strict_only
def test_cannot_read_root_only_files_the_token_or_the_kit(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    for path in (secret, ROOT / "kit" / "sandbox.py", os.path.expanduser("~/.cache/huggingface/token"),
                 "/etc/shadow"):
        out = attack(f"print(open({str(path)!r}).read())\nassert True")
        assert "Error" in out.reason, out


@strict_only
def test_cannot_write_outside_its_folder(tmp_path):
    name = f"kit-sandbox-test-{uuid.uuid4().hex}"
    targets = [f"/var/tmp/{name}", os.path.join(os.path.expanduser("~"), name),
               str(ROOT / "kit" / name), str(tmp_path / name), f"/usr/{name}"]
    program = "wrote = 0\n" + "".join(
        f"try:\n    open({t!r}, 'w').write('x')\n    wrote += 1\nexcept OSError:\n    pass\n"
        for t in targets)
    attack(program + "assert wrote")
    # /tmp is the sandbox's own (on its tmpfs): writing there works and stays there.
    assert sandbox.run_program(f"open('/tmp/{name}', 'w').write('x')").passed
    assert not any(os.path.exists(t) for t in [*targets, f"/tmp/{name}"])


@strict_only
def test_no_network_tcp_udp_or_host_unix_socket(tmp_path):
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "host.sock"))
    unix.listen()
    for s in (tcp, udp, unix):
        s.settimeout(0.2)
    try:
        attack(f"import socket\nsocket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1)")
        attack(f"import _socket\ns = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)\n"
               f"s.sendto(b'x', ('127.0.0.1', {udp.getsockname()[1]}))\nassert False")
        attack("import socket\ns = socket.socket(socket.AF_UNIX)\n"
               f"s.connect({str(tmp_path / 'host.sock')!r})")
        attack("import subprocess\nsubprocess.run(['curl', '-s', 'http://127.0.0.1:1'], check=True)")
        with pytest.raises(TimeoutError):
            tcp.accept()
        with pytest.raises(TimeoutError):
            udp.recv(10)
        with pytest.raises(TimeoutError):
            unix.accept()
    finally:
        for s in (tcp, udp, unix):
            s.close()


@strict_only
def test_cannot_see_the_parents_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_for_test")
    attack("import os\nassert 'hf_fake' in open(f'/proc/{os.getppid()}/environ').read()")
    attack("import os\nassert 'hf_fake' in open('/proc/1/environ').read()")


@strict_only
def test_cannot_signal_an_unrelated_process():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        attack(f"import os, signal\nos.kill({sleeper.pid}, signal.SIGTERM)")
        attack("import os, signal\nos.kill(-1, signal.SIGKILL)\nassert False")
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def _alive(marker: str) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    pids.append(int(d))
        except (OSError, ValueError):
            pass
    return pids


DAEMON = """\
import os, sys, time
def daemon():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 30; : {marker}'])
        os._exit(0)
daemon()
{tail}
"""


@strict_only
@pytest.mark.parametrize("tail, tests", [("", "assert True"), ("time.sleep(60)", "")])
def test_nothing_outlives_the_run(tail, tests):
    marker = f"kit-daemon-{uuid.uuid4().hex}"
    sandbox.run_tests(DAEMON.format(marker=marker, tail=tail), tests, timeout=1)
    time.sleep(0.2)
    assert _alive(marker) == []


@strict_only
def test_forks_are_refused_so_memory_is_one_budget():
    attack("import os, time\nn = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
           "    except OSError:\n        break\n"
           "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n"
           "    n += 1\nassert n > 0")
    attack("import threading\nt = threading.Thread(target=lambda: None)\nt.start()\nassert True\nt.join()",
           "assert False")


@strict_only
def test_disk_is_limited_and_private():
    out = attack("with open('big', 'wb') as f:\n    for _ in range(200):\n        f.write(b'x' * 2**20)")
    assert "No space" in out.reason or "too large" in out.reason, out


def test_a_child_holding_the_output_open_does_not_hang_the_caller():
    program = ("import os, subprocess, sys, time\n"
               "try:\n    subprocess.Popen(['sleep', '30'], stderr=sys.stderr, start_new_session=True)\n"
               "except Exception:\n    pass\ntime.sleep(60)")
    start = time.monotonic()
    out = attack(program, timeout=1)
    assert time.monotonic() - start < 1 + sandbox.GRACE and out.reason == "timeout", out


def test_a_flood_of_output_does_not_grow_the_caller():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    attack("import sys\nchunk = 'x' * 2**20\nfor _ in range(600):\n    sys.stderr.write(chunk)\n"
           "    sys.stdout.write(chunk)\nassert False", timeout=4)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100, grown_mb


# ---------------------------------------------------------------- the best-effort fallback


@pytest.fixture
def best_effort(monkeypatch):
    monkeypatch.setattr(sandbox, "FORCE_BEST_EFFORT", True)


def test_best_effort_says_it_is_weaker_and_strict_refuses(best_effort):
    assert not sandbox.is_strict()
    line = sandbox.describe()
    assert line.startswith("sandbox: best-effort") and "weaker" in line, line
    assert "seccomp: no exec" in line and ("Landlock ABI" in line or "no Landlock" in line), line
    with pytest.raises(KitError, match="sandbox=best-effort runs generated code anyway"):
        sandbox.check("strict")
    assert sandbox.check("best-effort") == line


def test_best_effort_still_blocks_the_obvious(best_effort, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_for_test")
    assert sandbox.run_tests("def f():\n    return 1", "assert f() == 1").passed
    attack("import _socket\n_socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)")
    attack("import subprocess\nsubprocess.run(['curl', '-s', 'http://127.0.0.1:1'])")
    attack("import os\nassert 'hf_fake' in open(f'/proc/{os.getppid()}/environ').read()")
    attack(f"open({str(tmp_path / 'x')!r}, 'w').write('x')")
    attack("import atexit\natexit.register(lambda: print(open(__file__).read()))", FAILING_TEST)
    assert not (tmp_path / "x").exists()


def test_strict_wherever_the_machine_allows_namespaces():
    line = sandbox.describe()
    assert line.startswith("sandbox: strict" if sandbox.is_strict() else "sandbox: best-effort")
    allowed = subprocess.run(["unshare", "-Urnmpf", "true"], capture_output=True).returncode == 0
    if allowed and os.environ.get("KIT_SANDBOX") != "best-effort":
        assert sandbox.is_strict(), line  # no silent fall back to the weaker mode


# The one-line escape from the old best-effort mode (a Python audit hook): `subprocess` asks
# `sys.audit` from Python code, so rebinding it let a shell run with the caller's rights. Each
# program below tries the direct way first, then that shell; the fallback must refuse both.
ESCAPE = "import os, signal, socket, subprocess, sys\nsys.audit = lambda *a: None\n"


def shell(command: str) -> str:
    return f"subprocess.run(['/bin/bash', '-c', {command!r}], check=True, timeout=5)\n"


def test_best_effort_no_program_runs(best_effort):
    out = attack(ESCAPE + shell("exit 0"))
    assert "PermissionError" in out.reason, out
    attack(ESCAPE + "os.execv('/bin/true', ['true'])")


def test_best_effort_cannot_read_root_only_files_or_the_token(best_effort, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_for_test")
    for path in ("/etc/shadow", "/proc/self/environ", f"/proc/{os.getpid()}/environ"):
        attack(ESCAPE + f"try:\n    text = open({path!r}).read()\nexcept OSError:\n"
               f"    text = subprocess.run(['cat', {path!r}], capture_output=True, check=True).stdout\n"
               "assert text")
    attack(ESCAPE + "assert 'hf_fake' in repr(os.environ)")
    attack(ESCAPE + "try:\n    text = open(f'/proc/{os.getppid()}/environ').read()\nexcept OSError:\n"
           "    text = subprocess.run(['cat', f'/proc/{os.getppid()}/environ'], capture_output=True,"
           " text=True).stdout\nassert 'hf_fake' in text")


def test_best_effort_no_outbound_connection(best_effort):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        attack(ESCAPE + f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               f"except OSError:\n    {shell(f'exec 3<>/dev/tcp/127.0.0.1/{port}')}")
        attack(ESCAPE + "import _socket\n_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)")
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        server.close()


def test_best_effort_cannot_move_or_make_files_anywhere(best_effort, tmp_path):
    src, dst = tmp_path / "kept.txt", tmp_path / "moved.txt"
    src.write_text("x")
    attack(ESCAPE + f"try:\n    os.rename({str(src)!r}, {str(dst)!r})\n"
           f"except OSError:\n    {shell(f'mv {src} {dst}')}")
    attack(ESCAPE + f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')")
    attack(ESCAPE + "open('/dev/shm/kit-sandbox-test', 'w').write('x')")
    assert src.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]
    assert not os.path.exists("/dev/shm/kit-sandbox-test")


def test_best_effort_cannot_signal_a_host_process(best_effort):
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        attack(ESCAPE + f"try:\n    os.kill({sleeper.pid}, signal.SIGKILL)\n"
               f"except OSError:\n    {shell(f'kill -9 {sleeper.pid}')}")
        attack(ESCAPE + "os.kill(-1, signal.SIGKILL)\nassert False")
        time.sleep(0.2)
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_best_effort_leaves_no_daemon(best_effort):
    marker = f"kit-daemon-{uuid.uuid4().hex}"
    sandbox.run_tests(ESCAPE + f"subprocess.Popen(['/bin/sh', '-c', 'sleep 30; : {marker}'], "
                      "start_new_session=True)\n", "assert True", timeout=2)
    sandbox.run_tests(DAEMON.format(marker=marker, tail=""), "assert True", timeout=2)
    time.sleep(0.2)
    assert _alive(marker) == []


def test_best_effort_runs_ordinary_code_and_the_mode_argument_forces_it():
    assert sandbox.run_tests("def f(x):\n    return sorted(x)", "assert f([2, 1]) == [1, 2]",
                             mode="best-effort").passed
    assert "best-effort" in sandbox.isolation(mode="best-effort").line
    # the fallback writes no file at all; strict code has its private tmpfs
    assert not sandbox.run_program("open('x', 'w').write('x')", mode="best-effort").passed
    if sandbox.is_strict():
        assert sandbox.run_program("open('x', 'w').write('x')").passed


def test_best_effort_with_its_libraries_only_on_pythonpath(tmp_path):
    """As `make gpu-check` installs the stack on a machine without it (`pip install --target`,
    then PYTHONPATH): the worker runs `python -I`, which ignores PYTHONPATH, and still confines
    itself; its Landlock rules do not open the folder the libraries were installed in."""
    import sys

    bare = tmp_path / "bare"  # a Python with nothing installed, as on a fresh GPU image
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    site = tmp_path / "site"  # what the kit imports, as `pip install --target` lays it out
    site.mkdir()
    sandbox.copy_modules(("pyseccomp", "landlockpy", "rich", "markdown_it", "mdurl", "pygments"), str(site))
    (site / "secret.txt").write_text("of the user's")
    reader = f"print(open({str(site / 'secret.txt')!r}).read())"
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from kit import sandbox\n"
        "ok = sandbox.run_tests('def f(x):\\n    return x + 1', 'assert f(1) == 2', mode='best-effort')\n"
        f"leak = sandbox.run_program({reader!r}, mode='best-effort')\n"
        "print(ok.passed, ok.reason, '|', leak.passed, leak.reason)\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    proc = subprocess.run([str(bare / "bin" / "python"), str(probe)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran, reason, _, read, why = proc.stdout.split(maxsplit=4)
    assert (ran, reason) == ("True", "passed"), proc.stdout
    if sandbox._fallback_probe()["landlock"]:  # the installed folder stays closed to the program
        assert read == "False" and "of the user's" not in why, proc.stdout


def test_a_sandbox_that_cannot_run_a_known_good_program_stops_the_recipe(best_effort, monkeypatch):
    """sandbox.check (the code and grpo recipes, before the model loads) runs a known-good task:
    a broken sandbox is one line there, not pass@1 = 0 after the whole run."""
    assert sandbox.check("best-effort").startswith("sandbox: best-effort")
    monkeypatch.setattr(sandbox, "_HARNESS", "raise SystemExit(3)")  # a worker that dies at once
    with pytest.raises(KitError, match="a known-good program failed in the sandbox"):
        sandbox.check("best-effort")


# Memory that RLIMIT_AS does not count: memfd pages (written, never mapped), 10 x 64 MiB here.
MEMFD = ("import os\nfds = []\nfor _ in range(10):\n    fd = os.memfd_create('x')\n"
         "    for _ in range(64):\n        os.write(fd, b'x' * 2**20)\n    fds.append(fd)\n"
         "assert len(fds) == 10")


@strict_only
def test_memfd_counts_against_the_memory_limit_strict():
    attack(MEMFD)


def test_memfd_counts_against_the_memory_limit_best_effort(best_effort):
    attack(MEMFD)
    attack("import multiprocessing.shared_memory as sm\nsm.SharedMemory(create=True, size=2**30)")


@pytest.mark.parametrize("force", [False, True])
def test_failure_reasons_cannot_drive_the_terminal(force, monkeypatch):
    monkeypatch.setattr(sandbox, "FORCE_BEST_EFFORT", force)
    osc52 = "\\x1b]52;c;" + "aGVsbG8=" + "\\x07"  # a clipboard write, as the program writes it
    out = attack(f"raise ValueError('{osc52}\\u202e\\r\\nnext line')")
    assert not any(not c.isprintable() for c in out.reason), repr(out.reason)
    assert "\\x1b]52" in out.reason and "\\u202e" in out.reason, out.reason


def test_an_oversized_answer_fails_in_one_line():
    out = sandbox.run_tests("def f(x):\n    return 'x' * 10**7", "assert len(f(1)) == 10**7")
    assert not out.passed and "an answer of more than 4 MiB" in out.reason, out
