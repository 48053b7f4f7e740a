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
    record = json.loads(out.read_text())
    runs = {(r["stack"], r["data"]): r for r in record["runs"]}
    assert set(runs) == {(s, d) for s in ("kit", "plain") for d in ("full", "chat")}
    for r in runs.values():
        assert r["tokens_per_s"] > 0 and r["lora_params"] > 0 and r["predicted_gib"] > 0
        assert r["peak_gib"] > 0 and r["batching"]
    # The baseline must never see unsloth: it patches transformers on import.
    for d in ("full", "chat"):
        assert runs["plain", d]["unsloth_imported"] is False and runs["kit", d]["unsloth_imported"] is True
    # Chat lengths: the kit packs (auto), the plain baseline uses its best safe way to cut padding.
    assert runs["kit", "chat"]["batching"] == "padding-free" and runs["kit", "full"]["batching"] == "padded"
    assert runs["plain", "chat"]["batching"] in ("padding-free", "grouped")
    assert set(record["ratios"]) == {"full", "chat"}
    # One JSON line per run on stdout.
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert {(r["stack"], r["data"]) for r in lines} == set(runs)
    assert "| kit | off | 2 × 1 | full | padded |" in proc.stdout
    assert "| plain | off | 2 × 1 | chat |" in proc.stdout


def test_make_bench_creates_its_output_folder(tmp_path, monkeypatch):
    """`make bench` on a fresh clone writes into outputs/, which a fresh clone lacks."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench

    monkeypatch.setattr(bench, "make_model", lambda *a: None)
    monkeypatch.setattr(bench, "child", lambda *a: {"stack": a[1], "gc": a[2], "micro": a[3], "data": a[6],
                                                    "error": "not run"})
    (tmp_path / "llama-tiny").mkdir()
    (tmp_path / "llama-tiny" / "config.json").write_text(json.dumps(
        {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 49152}))
    out = tmp_path / "fresh" / "outputs" / "bench-cpu.json"
    monkeypatch.setattr(sys, "argv", ["bench.py", "suite", "--work", str(tmp_path), "--out", str(out)])
    bench.main()
    assert json.loads(out.read_text())["runs"]
