"""Subprocess helpers shared by the export checks (kit.export, kit.gguf): run a loader in a
fresh Python process and read its one JSON result line, or its error."""

from __future__ import annotations

import json
import re
import subprocess
import sys


def last_error_line(text: str, limit: int = 300) -> str:
    """The informative line of a tool's output: its error, not its progress bars."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^(\w+(Error|Exception)\b|error:|ERROR:)", ln)]
    line = (errors or lines or ["no output"])[-1]
    return re.sub(r"^(ERROR|CRITICAL):[\w.-]+:", "", line)[:limit]  # drop a logger's prefix


def check_in_fresh_process(kind: str, module_args: list[str], timeout: float) -> dict:
    """Run `python -m MODULE ARGS` (a loader that prints one JSON result line) in a fresh process,
    so nothing this process patched or cached can make a broken export look fine."""
    failed = {"kind": kind, "ok": False, "stopped": False, "reply": ""}
    try:
        proc = subprocess.run([sys.executable, "-m", *module_args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        crashed = f"killed by signal {-proc.returncode}: " if proc.returncode < 0 else ""
        return {**failed, "error": crashed + last_error_line(proc.stderr)}
    return json.loads(lines[-1])
