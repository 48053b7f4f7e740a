"""Run untrusted generated code, never inside the training process.

Each run gets its own subprocess in a fresh temporary folder, with a wall-clock limit, CPU,
memory, file-size and process limits, an environment stripped of secrets, and no network:
a new network namespace where `unshare` allows one (most Linux machines and containers run
as root, Colab and Kaggle included), and Python's socket module disabled in any case.
A crash, a hang, an infinite loop or a failed assert all count as a failure.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Prepended to the program: no sockets, even where no network namespace could be made.
_NO_NETWORK = """\
import socket as _s
class _Blocked(_s.socket):
    def __init__(self, *a, **k):
        raise OSError("network access is disabled in the sandbox")
def _refuse(*a, **k):
    raise OSError("network access is disabled in the sandbox")
_s.socket, _s.create_connection, _s.socketpair = _Blocked, _refuse, _refuse
del _s, _Blocked, _refuse
"""


@dataclass
class Outcome:
    passed: bool
    reason: str  # "passed", "failed: AssertionError ...", "timeout", "memory", ...


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """`unshare -rn` if this machine lets us make a network namespace, else nothing."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "-rn") if ok else ()


def _limits(memory_mb: int, cpu_seconds: int) -> None:
    import resource

    os.setsid()  # own process group, so a timeout kills whatever the code spawned
    mem = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_program(source: str, timeout: float = 5.0, memory_mb: int = 512) -> Outcome:
    """Run `source` as a Python program in the sandbox. It passes when it runs to its end:
    exit code 0 and a random marker printed after the last line, so an early `sys.exit(0)`
    in generated code cannot skip the tests."""
    marker = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="kit-sandbox-") as work:
        path = os.path.join(work, "program.py")
        with open(path, "w") as f:
            f.write(_NO_NETWORK + source + f"\nprint({marker!r})\n")
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "PYTHONHASHSEED": "0",
               "LANG": "C.UTF-8"}
        cmd = [*_netns_prefix(), sys.executable, "-I", "-B", path]
        out_path = os.path.join(work, "stdout.txt")  # a file: its size is capped by RLIMIT_FSIZE
        try:
            with open(out_path, "w") as out_file:
                proc = subprocess.Popen(
                    cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out_file,
                    stderr=subprocess.PIPE, text=True,
                    preexec_fn=lambda: _limits(memory_mb, int(timeout) + 1),
                )
        except OSError as exc:
            return Outcome(False, f"could not start: {exc}")
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return Outcome(False, "timeout")
        if proc.returncode == 0:
            with open(out_path, "rb") as f:
                f.seek(max(0, os.path.getsize(out_path) - 200))
                out = f.read().decode(errors="replace")
            if marker in out:
                return Outcome(True, "passed")
            return Outcome(False, "exited before the tests ran to the end")
        if proc.returncode < 0:
            return Outcome(False, f"killed by signal {-proc.returncode}")
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {proc.returncode}"
        if "MemoryError" in last:
            return Outcome(False, "memory")
        return Outcome(False, f"failed: {last[:200]}")


def run_tests(code: str, tests: str, timeout: float = 5.0, memory_mb: int = 512) -> Outcome:
    """Run a candidate solution followed by its tests (plain asserts)."""
    return run_program(code + "\n\n" + tests + "\n", timeout, memory_mb)
