"""Run untrusted generated code, never inside the training process.

`run_tests(code, tests)` judges a candidate solution by its tests (Python with asserts);
`run_program(source)` runs a program alone. Both return an `Outcome`. `describe()` says in one
line which isolation this machine gives; `is_strict()` whether it is the strict one.

Strict (Linux where unprivileged user namespaces are allowed: most machines, Colab and
Kaggle; not inside Docker's default seccomp profile). What each guarantee rests on:
- files: new user and mount namespaces and `pivot_root` into a root that holds read-only binds
  of /usr, /lib*, /bin, /sbin, two /etc files and the running Python's own prefix (its venv or
  pyenv folder, not the folders around it), plus a private tmpfs at /work (also /tmp) of
  `disk_mb` MiB (when that Python lives under /tmp, /tmp is a second private tmpfs of the same
  size holding its read-only view). The rest of the machine (home, ~/.cache/huggingface, the repository, other
  runs, /proc, /sys) is not in that mount namespace at all. When the kit runs as root the code
  also runs as an unprivileged uid (nobody), so a root-only file would stay unreadable even if
  it were visible.
- privileges: no capabilities (bounding set emptied, SECBIT_NOROOT, capset zero),
  no_new_privs and nosuid binds, so nothing the code executes can gain any.
- network: a new network namespace with no interface up: no TCP, UDP or Unix socket reaches
  the host (abstract Unix sockets are per namespace; path ones are not visible).
- processes: a new PID namespace; the code sees only itself and cannot signal anything else.
  Its init process exits when the code ends or times out, and the kernel then kills
  everything the code started (daemons included). The caller kills the whole tree at
  `timeout` + a few seconds whatever happens, and reads at most a few KB from it.
- budget: RLIMIT_NPROC counted in the sandbox's own user namespace: the code is one process
  with no children and no threads, so RLIMIT_AS (`memory_mb`) bounds its memory and the tmpfs
  (`disk_mb`, apart from `memory_mb`) its files; CPU seconds, open files and core dumps are
  limited too. Memory that RLIMIT_AS does not count is refused by a seccomp filter the worker
  loads before it starts Python (sandbox_jail.ALWAYS_DENIED): memfd, SysV and POSIX shared
  memory, message queues, io_uring, keyrings, and new namespaces or mounts (a nested user
  namespace could mount a tmpfs of any size).
- environment: the code gets a fixed, minimal environment; the parent's is never passed and,
  with no /proc, cannot be read.

The verdict (`run_tests`): two sandboxes side by side, each with the limits above. The
candidate runs the code alone: no tests, no token. The judge runs the tests alone, with a
random 128-bit token that only it holds (over stdin, never in a file, argv or the
environment). The names the tests use but do not define are the candidate's: calling one, or
asking an attribute, item, length or next value of what it returned, is a request over a pipe,
and what comes back is JSON that the judge rebuilds as exact builtin types (None, bool, int,
float, complex, str, bytes, list, tuple, dict, set, frozenset; numpy values and subclasses
such as Counter are converted by the candidate; any other object stays in the candidate and
may be called or asked, but comparing it, testing its truth or computing with it fails the
test). Lists, dicts and sets the tests pass are updated with what the function left in them.
So every `==`, `in`, `and`, `abs(x - y) < e` or bare `assert` is evaluated on the judge's own
objects, and the judge writes `token` + "passed" on its private pipe only when the tests ran to
their end; the candidate cannot see the tests, the token or the judge's memory (another
sandbox: other namespaces in strict mode; no ptrace, no signal and no writable open in
best-effort mode). A task whose tests hold no `assert` is refused. What remains: the candidate's
answers are its own (the judge's requests show it the arguments, never the expected values),
and the tests are trusted as data (they run only in the judge's sandbox). `run_program` runs a
program alone and passes when it runs to its end.

Best-effort (no user namespaces, e.g. Docker's default seccomp; `mode="best-effort"` or
KIT_SANDBOX=best-effort forces it): one process, confined by the kernel before the program
runs, never by Python-level checks (an audit hook was what this mode used to rest on; one
line, `sys.audit = lambda *a: None` then `subprocess`, got around it):
- user: nobody (65534) when the kit runs as root (`Popen(user=, group=, extra_groups=[])`);
  root with every capability dropped (as in strict mode) where Python itself lives where
  nobody cannot read it (a pyenv under /root), and then only if Landlock is there.
- seccomp (libseccomp, through `pyseccomp`; sandbox_jail.seccomp_filter): no execve, no child
  process (clone only for threads), no socket of any kind, no file or folder created, opened
  for writing, renamed, removed or re-permissioned anywhere, signals only to itself, no
  ptrace, plus everything refused in strict mode (memfd, shared memory, namespaces, ...).
- Landlock (`landlockpy`, where the kernel has it: 5.13 on): reads only the system folders,
  Python's own folders, three /dev nodes and the program's folder; everything else refused,
  /proc, home and the Hub token included. Without Landlock it reads whatever its user can.
- limits and environment as in strict mode; the parent's environment is never passed.
What stays weaker than strict: the host's PID, network and mount namespaces are shared (the
code cannot use them, but the kernel surface is larger), and without Landlock files are
guarded only by their permissions. `describe()` says which of these hold on this machine.

Why these libraries: libseccomp is what Docker, systemd and podman build their filters with
(it also refuses the i386 and x32 system call tables on x86_64, which a hand-written filter
easily forgets) and is installed on every Debian/Ubuntu system; pyseccomp is a small ctypes
binding with the official bindings' API. landlockpy has no dependencies, checks results
correctly and knows ABIs 1 to 11 (the older `landlock` package treats a stale errno as a
failure). bubblewrap and nsjail need the user namespaces (or setuid/root mounts) that this
mode exists to do without.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kit.report import printable

GRACE = 5.0  # seconds beyond `timeout` for starting and tearing down the sandbox
DISK_MB = 64
WORKER_UID = 1000  # inside the sandbox's user namespace, when the caller is root
NOBODY = 65534
FORCE_BEST_EFFORT = os.environ.get("KIT_SANDBOX") == "best-effort"  # tests flip this
_SOURCE = (Path(__file__).with_name("sandbox_jail.py")).read_text()
STOPPED = "failed: the program stopped answering"  # sandbox_jail.STOPPED
_HARNESS = _SOURCE + "\nharness()\n"
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1"}


@dataclass
class Outcome:
    passed: bool
    reason: str  # "passed", "failed: AssertionError ...", "timeout", "memory", ...

    def __post_init__(self):  # the reason may quote the program: escaped before anyone shows it
        self.reason = printable(str(self.reason))


@dataclass(frozen=True)
class Isolation:
    strict: bool
    line: str  # one line for the console and metrics.json
    missing: str = ""  # why strict isolation is unavailable
    usable: bool = True  # False: neither mode can run code here (`line` says why)


def _python_folders() -> list[str]:
    exe = os.path.realpath(sys.executable)
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                            sys.base_exec_prefix)}
    found.add(os.path.dirname(os.path.dirname(exe)))
    # site-packages folders that a .pth file adds (a venv layered on another), not the others
    # on sys.path (an editable install would add the whole repository)
    found.update(os.path.realpath(p) for p in sys.path
                 if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p))
    return sorted(p for p in found if p not in ("/", os.path.expanduser("~")))


def _binds() -> list[str]:
    """Host paths the sandbox sees read-only: the system and the running Python, nothing else."""
    wanted = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
              "/etc/ld.so.cache", "/etc/localtime", *_python_folders()]
    out: list[str] = []
    for path in sorted(wanted, key=len):
        if os.path.lexists(path) and not any(path.startswith(p + "/") for p in out if not os.path.islink(p)):
            out.append(path)
    return out


def _read_bounded(fds: dict[int, bytearray], limits: dict[int, int], until, deadline: float) -> bool:
    """Read the pipes into their buffers (at most `limits` bytes each, the rest discarded) until
    `until()` is true and they are at EOF, or the deadline. False if the deadline came first."""
    open_fds = list(fds)
    for fd in open_fds:
        os.set_blocking(fd, False)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        ready, _, _ = select.select(open_fds, [], [], min(left, 0.1))
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                open_fds.remove(fd)
            elif len(fds[fd]) < limits[fd]:
                fds[fd] += chunk[: limits[fd] - len(fds[fd])]
        if not ready and until():
            return True
    return True


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _write_maps(pid: int) -> int:
    """uid/gid maps for the sandbox's user namespace; returns the uid the code will run as."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:  # root: the sandbox's root is ours (for the binds); the code runs as nobody
        maps = (f"0 0 1\n{WORKER_UID} {NOBODY} 1\n", f"0 0 1\n{WORKER_UID} {NOBODY} 1\n")
        worker = WORKER_UID
    else:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        maps, worker = (f"0 {uid} 1\n", f"0 {gid} 1\n"), 0
    with open(f"/proc/{pid}/uid_map", "w") as f:
        f.write(maps[0])
    with open(f"/proc/{pid}/gid_map", "w") as f:
        f.write(maps[1])
    return worker


def _verdict(result: dict, token: str) -> Outcome:
    verdict = result.get("verdict", "")
    if verdict.startswith(token + "\n"):
        reason = verdict[len(token) + 1:]
        return Outcome(reason == "passed", reason)
    status = result.get("status")
    if status == "timeout":
        return Outcome(False, "timeout")
    if status == "signal":
        sig = result.get("signal")
        return Outcome(False, "timeout" if sig == signal.SIGXCPU else f"killed by signal {sig}")
    lines = [ln for ln in result.get("output", "").splitlines() if ln.strip()]
    if lines and "MemoryError" in lines[-1]:
        return Outcome(False, "memory")
    if verdict:
        return Outcome(False, "failed: the program wrote a forged verdict")
    if result.get("code") == 0 or not lines:
        return Outcome(False, "exited before the tests ran to the end")
    return Outcome(False, f"failed: {lines[-1][:200]}")


def _run_strict(code: str, tests: str, timeout: float, memory_mb: int, disk_mb: int,
                role: str | None = None, rpc: tuple[int, ...] = ()) -> Outcome:
    token = secrets.token_hex(16)
    deadline = time.monotonic() + timeout + GRACE
    root = tempfile.mkdtemp(prefix="kit-sandbox-")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", _SOURCE + "\nsupervise()\n"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/", close_fds=True,
            start_new_session=True, pass_fds=rpc)
    except OSError as exc:
        os.rmdir(root)
        return Outcome(False, f"sandbox error: could not start: {exc}")
    finally:
        for fd in rpc:  # the sandbox's own now: EOF reaches the other side when it ends
            os.close(fd)
    out, err = bytearray(), bytearray()
    try:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        first = os.read(proc.stdout.fileno(), 1) if ready else b""
        if first != b"u":
            rest = os.read(proc.stdout.fileno(), 512) if first == b"E" else b""
            return Outcome(False, "sandbox error: " + (rest.decode(errors="replace").strip()
                                                       or "the supervisor did not start"))
        worker = _write_maps(proc.pid)
        binds = _binds()
        work = next(w for w in ("/work", "/sandbox", "/kit-sandbox-work")
                    if not any(b == w or b.startswith(w + "/") for b in binds))
        cfg = {"root": root, "work": work, "binds": binds, "disk_mb": disk_mb, "memory_mb": memory_mb,
               "cpu_seconds": int(timeout) + 1, "timeout": timeout, "token": token,
               "code": code, "tests": tests, "exe": sys.executable, "harness": _HARNESS,
               "env": dict(_ENV, HOME=work, TMPDIR=work + "/tmp"), "worker_id": worker,
               "nproc": 1 if worker else 3,  # counted per user namespace: supervisor, init, code
               "seccomp_dir": _module_dir("pyseccomp"), "role": role, "rpc": list(rpc)}
        try:
            proc.stdin.write(json.dumps(cfg).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        fds = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        finished = _read_bounded(fds, {proc.stdout.fileno(): 65536, proc.stderr.fileno(): 8192},
                                 lambda: proc.poll() is not None, deadline)
    finally:
        _kill(proc)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        try:
            os.rmdir(root)
        except OSError:
            pass
    try:
        result = json.loads(bytes(out).decode())
    except ValueError:
        if not finished:
            return Outcome(False, "timeout")
        lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        last = lines[-1][:200] if lines else f"exit code {proc.returncode}"
        return Outcome(False, f"sandbox error: {last}")
    return _verdict(result, token)


def _module_dir(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(name)
    return os.path.dirname(spec.origin) if spec and spec.origin else ""


def _run_best_effort(code: str, tests: str, timeout: float, memory_mb: int, disk_mb: int,
                     role: str | None = None, rpc: tuple[int, ...] = ()) -> Outcome:
    """One process confined by the kernel (see `_fallback_probe` and sandbox_jail._confine)."""
    token = secrets.token_hex(16)
    deadline = time.monotonic() + timeout + GRACE
    fallback = _fallback_probe()
    if fallback["missing"]:
        for fd in rpc:
            os.close(fd)
        return Outcome(False, f"sandbox error: {fallback['missing']}")
    with tempfile.TemporaryDirectory(prefix="kit-sandbox-") as work:
        work = os.path.realpath(work)
        os.chmod(work, 0o755)  # readable by nobody; nothing in it is writable by the program
        Path(work, "program.py").write_text(code + "\n\n" + tests + "\n")
        lib = _copy_confiners(work)
        verdict_r, verdict_w = os.pipe()
        rlimits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": int(timeout) + 1,
                   "RLIMIT_FSIZE": disk_mb * 2**20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0}
        payload = {"token": token, "code": code, "tests": tests, "verdict_fd": verdict_w,
                   "best_effort": True, "work": work, "lib": lib, "rlimits": rlimits,
                   "landlock": fallback["landlock"] > 0, "role": role, "rpc": list(rpc),
                   "readable": [*_binds(), *(f"/dev/{d}" for d in ("null", "zero", "urandom"))]}
        env = dict(_ENV, HOME=work, TMPDIR=work)
        user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if fallback["user"] == NOBODY else {}
        payload["drop_root"] = fallback["user"] == 0  # root, but without any capability
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _HARNESS], cwd=work, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(verdict_w, *rpc),
                                    start_new_session=True, **user)
        except OSError as exc:
            os.close(verdict_r)
            os.close(verdict_w)
            return Outcome(False, f"sandbox error: could not start: {exc}")
        finally:
            for fd in rpc:
                os.close(fd)
        os.close(verdict_w)
        out, verdict = bytearray(), bytearray()
        timed_out = False
        try:
            try:
                proc.stdin.write(json.dumps(payload).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass
            fds = {proc.stdout.fileno(): out, verdict_r: verdict}
            finished = _read_bounded(fds, {proc.stdout.fileno(): 8192, verdict_r: 4096},
                                     lambda: proc.poll() is not None,
                                     min(deadline, time.monotonic() + timeout))
            timed_out = not finished
        finally:
            _kill(proc)
            os.close(verdict_r)
            proc.stdout.close()
    if timed_out:
        return Outcome(False, "timeout")
    rc = proc.returncode
    output = out.decode("utf-8", "replace")[-2048:]
    if rc == 70 and "sandbox setup:" in output:  # the confinement itself failed: nothing ran
        return Outcome(False, "sandbox error: " + output.split("sandbox setup:")[-1].strip()[:200])
    result = {"verdict": verdict.decode("utf-8", "replace"), "output": output}
    if rc is not None and rc < 0:
        result.update(status="signal", signal=-rc)
    else:
        result.update(status="exit", code=rc)
    return _verdict(result, token)


def _copy_confiners(work: str) -> str:
    """pyseccomp and landlockpy, copied into the worker's folder (work/lib): the worker runs
    `python -I`, which ignores PYTHONPATH, so packages installed there (`pip install --target`,
    as `make gpu-check` does on a machine without the stack) would not import; and Landlock
    then grants reading these two, not the folder they were installed in (about 0.5 ms a run)."""
    lib = os.path.join(work, "lib")
    os.mkdir(lib)
    copy_modules(("pyseccomp", "landlockpy"), lib)
    for folder, _dirs, files in os.walk(lib):  # readable by nobody, whatever the install's umask
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(os.path.join(folder, f), 0o644)
    return lib


def copy_modules(names, dest: str) -> None:
    """Copy importable modules into `dest` as an install lays them out: a package's folder
    (without __pycache__), or a single module's file."""
    import importlib.util
    import shutil

    for name in names:
        spec = importlib.util.find_spec(name)
        if spec.submodule_search_locations:
            folder = next(iter(spec.submodule_search_locations))
            shutil.copytree(folder, os.path.join(dest, name), ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(spec.origin, dest)


def _others_can_read(path: str) -> bool:
    """Whether a user with no claim on `path` (nobody) can reach and read it."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(1, len(parts)):
        folder = "/".join(parts[:i]) or "/"
        if not os.stat(folder).st_mode & 0o001:
            return False
    return bool(os.stat(path).st_mode & 0o004)


@functools.lru_cache(maxsize=1)
def _fallback_probe() -> dict:
    """What best-effort mode has here: libseccomp (required), Landlock's ABI (0: none), and the
    user the program runs as (None: the caller's own; NOBODY; 0: root without capabilities,
    when the caller is root and Python lives where nobody cannot read it, e.g. under /root)."""
    import ctypes.util

    def lacking(why):
        return {"missing": why, "landlock": 0, "user": None}

    if sys.platform != "linux":
        return lacking(f"seccomp needs Linux (this is {sys.platform})")
    if not _module_dir("pyseccomp") or not _module_dir("landlockpy"):
        return lacking("the Python packages pyseccomp and landlockpy are not installed "
                       "(requirements/stack.txt)")
    if ctypes.util.find_library("seccomp") is None:
        return lacking("libseccomp is not installed (apt-get install libseccomp2)")
    import landlockpy

    abi = landlockpy.abi_version()  # 0: none
    user = None
    if os.geteuid() == 0:
        needed = [sys.executable, *_python_folders()]  # pyseccomp, landlockpy: copied (_copy_confiners)
        user = NOBODY if all(_others_can_read(p) for p in needed) else 0
        if user == 0 and not abi:
            return lacking("the kit runs as root, Python lives where nobody cannot read it "
                           f"({os.path.realpath(sys.executable)}) and the kernel has no Landlock")
    return {"missing": "", "landlock": abi, "user": user}


@functools.lru_cache(maxsize=1)
def _strict_probe() -> str:
    """'' when strict isolation works here, else what is missing (one line)."""
    if sys.platform != "linux":
        return f"namespaces need Linux (this is {sys.platform})"
    out = _run_strict("import os\nassert not os.path.exists('/proc/self')", "", 10.0, 256, 1)
    return "" if out.passed else out.reason.removeprefix("sandbox error: ")


def isolation(memory_mb: int = 512, disk_mb: int = DISK_MB, mode: str = "auto") -> Isolation:
    """What this machine gives, as one line, and whether it is strict. `mode="best-effort"`
    describes the fallback even where strict isolation works."""
    if FORCE_BEST_EFFORT:
        missing = "switched off (KIT_SANDBOX=best-effort)"
    elif mode == "best-effort":
        missing = "not asked for (best-effort)"
    else:
        missing = _strict_probe()
    if not missing:
        return Isolation(True, f"sandbox: strict — user, mount, PID and network namespaces, "
                               f"read-only system and Python only, {disk_mb} MiB private tmpfs, "
                               f"one process of at most {memory_mb} MiB (seccomp refuses memfd, "
                               "shared memory and new namespaces), no capabilities")
    missing = printable(missing)
    fallback = _fallback_probe()
    if fallback["missing"]:
        return Isolation(False, f"sandbox: none — strict: {missing}; best-effort: "
                                f"{fallback['missing']}", missing, usable=False)
    who = {None: "your own user", NOBODY: "nobody (uid 65534)",
           0: "root without capabilities"}[fallback["user"]]
    reads = (f"Landlock ABI {fallback['landlock']}: reads only the system and Python's folders"
             if fallback["landlock"] else f"no Landlock: it reads whatever {who} can read")
    return Isolation(False, f"sandbox: best-effort — {missing}; one process as {who} of at most "
                            f"{memory_mb} MiB, CPU and open-file limits; seccomp: no exec, child "
                            "process, socket, ptrace, memfd or shared memory, no file written "
                            f"anywhere, signals only to itself; {reads}; host namespaces shared "
                            "(weaker than strict)", missing)


def describe() -> str:
    return isolation().line


def check(mode: str) -> str:
    """The describe() line, or one clear error when `mode` is "strict" and this machine
    cannot give strict isolation."""
    iso = isolation()
    if mode == "strict" and not iso.strict:
        from kit.errors import fail

        fail(f"sandbox=strict: strict isolation is unavailable here ({iso.missing}); "
             "sandbox=best-effort runs generated code anyway with weaker isolation")
    if not iso.usable:
        from kit.errors import fail

        fail(f"sandbox={mode}: generated code cannot run here ({iso.line.removeprefix('sandbox: ')})")
    # A sandbox that is there but broken would fail every problem, and pass@1 would read 0 after
    # a whole run: a known-good task first (about 0.3 s), as the run's own tasks will be run.
    canary = run_tests("def f():\n    return 1", "assert f() == 1")
    if not canary.passed:
        from kit.errors import fail

        fail(f"sandbox={mode}: a known-good program failed in the sandbox ({canary.reason}); every "
             "generated program would fail the same way")
    return iso.line


def is_strict() -> bool:
    return isolation().strict


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 512, *,
                disk_mb: int = DISK_MB, mode: str = "auto") -> Outcome:
    """Run `source` as a Python program in the sandbox. It passes when it ran to its end
    without an exception (and wrote that on the harness's private pipe).
    `mode`: "auto" (strict where the machine allows it, else best-effort), "strict" or
    "best-effort" (the fallback, even where strict works)."""
    if mode not in ("auto", "strict", "best-effort"):
        raise ValueError(f"mode must be auto, strict or best-effort, not {mode!r}")
    iso = isolation(memory_mb, disk_mb, mode)
    if iso.strict:
        return _run_strict(source, "", timeout, memory_mb, disk_mb)
    if mode == "strict":
        return Outcome(False, f"sandbox error: strict isolation is unavailable ({iso.missing})")
    return _run_best_effort(source, "", timeout, memory_mb, disk_mb)


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 512, *,
              disk_mb: int = DISK_MB, mode: str = "auto") -> Outcome:
    """Run a candidate solution against its tests (Python with at least one `assert`).

    Two sandboxes side by side, each with `timeout` and `memory_mb`: the candidate (the code,
    without the tests or any token) and the judge (the tests and the verdict token, without the
    code). The tests call the candidate's functions through two pipes and get plain data back
    (exact builtin types, rebuilt by the judge), so the verdict is decided where the candidate's
    code cannot reach: see sandbox_jail's "verdicts" section. A task with no tests is refused."""
    import ast

    try:
        if not any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(tests))):
            return Outcome(False, "refused: the task has no tests (no assert statement)")
    except SyntaxError as exc:
        return Outcome(False, f"refused: the tests do not compile: {exc.msg} (line {exc.lineno})")
    if mode not in ("auto", "strict", "best-effort"):
        raise ValueError(f"mode must be auto, strict or best-effort, not {mode!r}")
    iso = isolation(memory_mb, disk_mb, mode)
    if not iso.strict and mode == "strict":
        return Outcome(False, f"sandbox error: strict isolation is unavailable ({iso.missing})")
    run = _run_strict if iso.strict else _run_best_effort
    to_program_r, to_program_w = os.pipe()
    to_judge_r, to_judge_w = os.pipe()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        program = pool.submit(run, code, "", timeout, memory_mb, disk_mb, "candidate",
                              (to_program_r, to_judge_w))
        verdict = run("", tests, timeout, memory_mb, disk_mb, "judge", (to_judge_r, to_program_w))
        program = program.result()
    if verdict.reason == STOPPED and program.reason.startswith(("memory", "timeout", "killed", "sandbox")):
        return Outcome(False, program.reason)  # why the program stopped answering
    return verdict


__all__ = ["Outcome", "Isolation", "run_program", "run_tests", "describe", "check", "is_strict",
           "isolation", "printable"]
