"""`make gpu-check` on CPU: the same script as on a GPU, on tiny shapes, so it cannot rot between
GPU runs. It must measure both stacks in every batching, run the chat recipe end to end with both
exports checked and its held-out loss down, put two adapters on one base with a mixed batch
equal to each row alone, and write its JSON and markdown."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_in_reduced_form(tmp_path):
    out, md = tmp_path / "gpu-check.json", tmp_path / "gpu-check.md"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--work", str(tmp_path / "work"), "--out", str(out),
         "--md", str(md), "--steps", "5", "--recipe-steps", "3", "--teach-steps", "5", "--timeout", "1200"],
        capture_output=True, text=True, timeout=2400, cwd=tmp_path)
    record = json.loads(out.read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert record["ok"] is True and record["device"].startswith("CPU")

    runs = {(r["stack"], r["data"], r["batching"]): r for r in record["speed"]["runs"]}
    wanted = [("kit", "full", "padded"), ("kit", "chat", "padded"), ("kit", "chat", "padding-free"),
              ("kit", "chat", "packed"), ("plain", "full", "padded")]
    assert set(runs) >= set(wanted)
    assert any(k[:2] == ("plain", "chat") for k in runs)
    for r in runs.values():
        assert r["tokens_per_s"] > 0 and r["peak_gib"] > 0 and r["predicted_gib"] > 0
        assert r["unsloth_imported"] is (r["stack"] == "kit")  # the baseline never sees unsloth
    assert runs["kit", "chat", "packed"]["rows_per_bin"] > 1  # several chat rows share a bin

    r = record["recipes"]["chat"]
    assert r["ok"] and r["exit"] == 0, r
    assert r["exports"] == {"adapter": True, "merged": True}, r["exports"]
    assert r["steps"] == 3 and r["before"] and r["after"]
    assert all(r["checks"].values()), r["checks"]  # the held-out loss fell
    # The CPU form keeps the suite short: one recipe (tests/test_recipes.py runs each on CPU).
    for name in ("classification", "code", "fim"):
        assert "chat recipe only" in record["recipes"][name]["skipped"]
    assert record["recipes"]["model"]["loss_last"] < record["recipes"]["model"]["loss_first"]

    # Two adapters on the small model: a mixed batch gives each row exactly its tokens alone (fp32),
    # through plain transformers + PEFT (no Unsloth), and rows of different adapters differ.
    multi = record["multi"]
    assert multi["ok"] and multi["exact_rows"] == multi["rows"] == 6 and multi["rows_differ"], multi
    assert multi["unsloth_imported"] is False

    table = md.read_text()
    assert "| kit | off | 2 × 1 | chat | packed |" in table
    assert "| chat | yes |" in table and "| fim | skipped on CPU" in table and "all ok: True" in table
    assert "ok: True; 6/6 rows exactly as alone" in table


def test_gpu_check_without_the_stack_says_what_to_do(tmp_path):
    """On a machine whose Python lacks Unsloth and has no .gpu/ bundle: one line, exit 2."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gpu_check.sh", tmp_path / "scripts")
    bare = tmp_path / "bare"  # a Python with none of the stack, as on a fresh GPU image
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    env = {**os.environ, "PYTHON": str(bare / "bin" / "python"), "PYTHONPATH": ""}
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "gpu_check.sh")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "make gpu-bundle" in lines[0]
