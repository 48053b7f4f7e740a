"""bench/bench.py on a tiny random-init Llama, so the benchmark cannot rot between GPU runs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_runs_both_stacks_in_separate_processes(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "suite", "--shape", "tiny", "--seq", "128",
         "--batch", "2", "--steps", "6", "--work", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = {r["stack"]: r for r in json.loads(out.read_text())["runs"]}
    assert set(runs) == {"kit", "plain"}
    for r in runs.values():
        assert r["tokens_per_s"] > 0 and r["lora_params"] > 0 and r["predicted_gib"] > 0
    # The baseline must never see unsloth: it patches transformers on import.
    assert runs["plain"]["unsloth_imported"] is False and runs["kit"]["unsloth_imported"] is True
    assert "| kit | off | 2 × 1 | full |" in proc.stdout and "| plain | off | 2 × 1 | full |" in proc.stdout
