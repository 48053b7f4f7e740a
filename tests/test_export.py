"""Exports load with plain peft/transformers, agree with each other, and are written atomically."""

import json

import pytest
import torch

from kit import export, models, stops
from kit.choice import resolve_model
from kit.config import LoraConfig
from kit.device import detect_device

PROMPT = [{"role": "user", "content": "Say yes."}]


@pytest.fixture(scope="module")
def exported(taught_model_dir, tmp_path_factory):
    """Both exports of the taught tiny Llama (it answers "Done!" and ends its turn) with a LoRA
    adapter that changes its logits but not its greedy answer."""
    device = detect_device()
    model, tokenizer = models.load(resolve_model(str(taught_model_dir), device), 128, False)
    model = models.add_lora(model, LoraConfig(r=8), False, 0)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter do something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("out")
    results = export.export_and_verify(model, tokenizer, "both", out, PROMPT, progress=lambda _: None)
    return out, results


def test_both_exports_written_with_tokenizer(exported):
    out, results = exported
    assert set(results) == {"adapter", "merged"}
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "config.json").is_file()
    assert list((out / "merged").glob("*.safetensors"))
    for kind in ("adapter", "merged"):
        assert json.loads((out / kind / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temporary folders left"


def test_exports_load_in_a_fresh_process(exported, tokenizer):
    out, results = exported
    turn_end = stops.turn_end(tokenizer)
    assert turn_end == "<|im_end|>"  # ChatML: what ends each assistant turn
    for kind, res in results.items():
        assert "error" not in res, res
        # Loaded with plain peft/transformers, the export says what the model was taught and
        # stops at the end of its turn, from its own generation_config.json.
        assert res["reply"] == "Done!" and res["load_seconds"] >= 0, res
        assert res["stopped"] and res["stop_token"] == turn_end, res
        assert res["ok"] is True
        saved = json.loads((out / kind / "generation_config.json").read_text())["eos_token_id"]
        assert tokenizer.convert_tokens_to_ids(turn_end) in ([saved] if isinstance(saved, int) else saved)

    # Cut off before its turn ends, the same export gives the same words and fails the check:
    # a reply alone does not pass it.
    cut = export.verify("merged", out / "merged", PROMPT, max_new_tokens=2)
    assert cut["reply"] == "Done!" and not cut["stopped"] and cut["stop_token"] is None, cut
    assert cut["ok"] is False and "did not stop" in export.problem_of(cut)


def test_merged_equals_base_plus_adapter(exported, taught_model_dir):
    out, _ = exported
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 4093, 198, 10576, 359, 346, 47, 2, 198]])
    with torch.no_grad():
        # The adapter names its base by the folder's name only (kit.pin): load that folder here.
        base_model = AutoModelForCausalLM.from_pretrained(taught_model_dir, dtype=torch.float32)
        adapter = PeftModel.from_pretrained(base_model, out / "adapter")
        merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
        a, m = adapter(ids).logits, merged(ids).logits
        base = adapter.get_base_model()
        with adapter.disable_adapter():
            b = base(ids).logits
    assert not torch.allclose(a, b, atol=1e-3), "the adapter should change the outputs"
    assert torch.allclose(a, m, atol=5e-2, rtol=5e-2), (a - m).abs().max()


def test_atomic_dir_keeps_old_result_on_crash(tmp_path):
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with export.atomic_dir(final) as tmp:
            (tmp / "half.bin").write_text("half")
            raise RuntimeError("disk full")
    assert (final / "old.txt").read_text() == "old" and not (final / "half.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]

    with export.atomic_dir(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_verify_reports_a_folder_without_a_model(tmp_path):
    res = export.verify("merged", tmp_path, PROMPT)
    assert res["ok"] is False and res["error"]
