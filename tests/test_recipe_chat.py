"""End to end: the chat recipe on the embedded SmolLM2-135M, as `make recipe=chat` runs it."""

import json

import pytest
from conftest import run_recipe


@pytest.mark.slow
def test_chat_recipe_end_to_end(tmp_path):
    out = tmp_path / "chat"
    proc = run_recipe("chat", "max_steps=20", "eval_samples=12", "max_new_tokens=32",
                      f"output_dir={out}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Run summary" in proc.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    before, after = metrics["before"], metrics["after"]
    assert before.keys() == after.keys() >= {"loss", "check_rate", "reply_f1", "stopped_at_eos"}
    assert after["loss"] < before["loss"], (before, after)
    assert metrics["train"]["steps"] == 20
    assert metrics["train"]["loss_last"] < metrics["train"]["loss_first"]
    assert metrics["improved"]["loss"] is True

    # Each export was loaded in a fresh process with plain peft/transformers and stopped at EOS.
    for kind in ("adapter", "merged"):
        res = metrics["exports"][kind]
        assert res["ok"] and res["stopped"], res
        assert (out / kind).is_dir()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 16
