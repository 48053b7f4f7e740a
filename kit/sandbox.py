"""Run untrusted generated code, never inside the training process.

`run_tests(code, tests)` runs a candidate solution and then its tests (plain asserts);
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
  with no children and no threads, so RLIMIT_AS (`memory_mb`) bounds its total memory and
  the tmpfs bounds its disk; CPU seconds, open files and core dumps are limited too.
- environment: the code gets a fixed, minimal environment; the parent's is never passed and,
  with no /proc, cannot be read.

The verdict: a test passes only when the harness (trusted code in the same process, started
before the program) finishes the tests and writes a random 128-bit token followed by
"passed" on a pipe the caller reads. The token is never in a file, argv, the environment or
the program's globals; it reaches the harness over stdin, which then points at /dev/null. The
harness keeps its own references to os.write/os._exit, catches every exception (SystemExit
included) and leaves with os._exit, so atexit, sys.excepthook and finalizers never run after
the tests, and printing anything, or exiting early with status 0, passes nothing. An audit
hook refuses the ways to the harness's locals (gc object walking, sys._getframe, frame
attributes of tracebacks and generators, settrace/setprofile) and ctypes. `assert a == b` in
the tests is checked so that an object whose class the program defined cannot pass by
answering `==` with True; builtins are restored before the tests run.

Residual risk, stated honestly: the tests run in the same interpreter as the candidate code,
so a determined program can still forge a pass: Python's audit hooks are not a security
boundary (crafted bytecode or marshal data can read raw memory, a candidate function called
during the tests can rebind the test's globals, `__eq__` can be borrowed from a builtin,
`assert x` trusts `bool(x)`). This affects the pass@1 number only; it does not weaken the
isolation above, which the kernel enforces.

Best-effort (no user namespaces, e.g. Docker's default seccomp): a separate process in its own
session and temporary folder with the same memory, CPU, file-size and open-file limits, a
minimal environment, and the harness's audit hook also refusing sockets (`_socket` included),
process creation and signals, and file access outside that folder and Python's own. Code that
reaches C (a compiled extension, or memory tricks) can bypass those Python-level blocks, so
this mode is weaker and `describe()` says so; the recipe refuses it unless `sandbox=best-effort`.
"""

from __future__ import annotations

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

GRACE = 5.0  # seconds beyond `timeout` for starting and tearing down the sandbox
DISK_MB = 64
WORKER_UID = 1000  # inside the sandbox's user namespace, when the caller is root
NOBODY = 65534
FORCE_BEST_EFFORT = os.environ.get("KIT_SANDBOX") == "best-effort"  # tests flip this
_SOURCE = (Path(__file__).with_name("sandbox_jail.py")).read_text()
_HARNESS = _SOURCE + "\nharness()\n"
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1"}


@dataclass
class Outcome:
    passed: bool
    reason: str  # "passed", "failed: AssertionError ...", "timeout", "memory", ...


@dataclass(frozen=True)
class Isolation:
    strict: bool
    line: str  # one line for the console and metrics.json
    missing: str = ""  # why strict isolation is unavailable


def _python_folders() -> list[str]:
    exe = os.path.realpath(sys.executable)
    found = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix,
                                            sys.base_exec_prefix)}
    found.add(os.path.dirname(os.path.dirname(exe)))
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


def _run_strict(code: str, tests: str, timeout: float, memory_mb: int, disk_mb: int) -> Outcome:
    token = secrets.token_hex(16)
    deadline = time.monotonic() + timeout + GRACE
    root = tempfile.mkdtemp(prefix="kit-sandbox-")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", _SOURCE + "\nsupervise()\n"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/", close_fds=True,
            start_new_session=True)
    except OSError as exc:
        os.rmdir(root)
        return Outcome(False, f"sandbox error: could not start: {exc}")
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
               "nproc": 1 if worker else 3}  # counted per user namespace: supervisor, init, code
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


def _run_best_effort(code: str, tests: str, timeout: float, memory_mb: int, disk_mb: int) -> Outcome:
    token = secrets.token_hex(16)
    deadline = time.monotonic() + timeout + GRACE
    with tempfile.TemporaryDirectory(prefix="kit-sandbox-") as work:
        work = os.path.realpath(work)
        Path(work, "program.py").write_text(code + "\n\n" + tests + "\n")
        os.mkdir(os.path.join(work, "tmp"))
        verdict_r, verdict_w = os.pipe()
        rlimits = {"RLIMIT_AS": memory_mb * 2**20, "RLIMIT_CPU": int(timeout) + 1,
                   "RLIMIT_FSIZE": disk_mb * 2**20, "RLIMIT_NOFILE": 64, "RLIMIT_CORE": 0}
        payload = {"token": token, "code": code, "tests": tests, "verdict_fd": verdict_w,
                   "best_effort": True, "work": work, "rlimits": rlimits,
                   "readable": [p for p in _binds() if not p.startswith("/etc")]}
        env = dict(_ENV, HOME=work, TMPDIR=os.path.join(work, "tmp"))
        try:
            proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", _HARNESS], cwd=work, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, pass_fds=(verdict_w,),
                                    start_new_session=True)
        except OSError as exc:
            os.close(verdict_r)
            os.close(verdict_w)
            return Outcome(False, f"sandbox error: could not start: {exc}")
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
            # Stop when the program has exited, even if something it left holds the pipes.
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
    result = {"verdict": verdict.decode("latin-1"), "output": out.decode("utf-8", "replace")[-2048:]}
    if rc is not None and rc < 0:
        result.update(status="signal", signal=-rc)
    else:
        result.update(status="exit", code=rc)
    return _verdict(result, token)


@functools.lru_cache(maxsize=1)
def _strict_probe() -> str:
    """'' when strict isolation works here, else what is missing (one line)."""
    if sys.platform != "linux":
        return f"namespaces need Linux (this is {sys.platform})"
    out = _run_strict("import os\nassert not os.path.exists('/proc/self')", "", 10.0, 256, 1)
    return "" if out.passed else out.reason.removeprefix("sandbox error: ")


def isolation(memory_mb: int = 512, disk_mb: int = DISK_MB) -> Isolation:
    """What this machine gives, as one line, and whether it is strict."""
    missing = "switched off (KIT_SANDBOX=best-effort)" if FORCE_BEST_EFFORT \
        else _strict_probe()
    if not missing:
        return Isolation(True, f"sandbox: strict — user, mount, PID and network namespaces, "
                               f"read-only system and Python only, {disk_mb} MiB private tmpfs, "
                               f"one process of at most {memory_mb} MiB, no capabilities")
    return Isolation(False, f"sandbox: best-effort — {missing}; a separate process with memory, "
                            "CPU and file limits and Python-level blocks on network, processes and "
                            "files that C code can bypass (weaker than strict)", missing)


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
    return iso.line


def is_strict() -> bool:
    return isolation().strict


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 512, *, tests: str = "",
                disk_mb: int = DISK_MB) -> Outcome:
    """Run `source` (then `tests`) as a Python program in the sandbox. It passes when the tests
    ran to their end without an exception: see the module docstring for how that is judged."""
    if isolation().strict:
        return _run_strict(source, tests, timeout, memory_mb, disk_mb)
    return _run_best_effort(source, tests, timeout, memory_mb, disk_mb)


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 512, *,
              disk_mb: int = DISK_MB) -> Outcome:
    """Run a candidate solution followed by its tests (plain asserts)."""
    return run_program(code, timeout, memory_mb, tests=tests, disk_mb=disk_mb)


__all__ = ["Outcome", "Isolation", "run_program", "run_tests", "describe", "check", "is_strict",
           "isolation"]
