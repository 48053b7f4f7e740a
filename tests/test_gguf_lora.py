"""export=gguf-lora: the adapter as a GGUF LoRA beside the base GGUF, checked in llama.cpp against
the PEFT adapter, with an Ollama Modelfile (ADAPTER), and two adapters on one llama.cpp base.

The two adapters taught on the embedded SmolLM2-135M (conftest.persona_adapters): `pip`
(rsLoRA, r=16: llama.cpp's alpha / r scale would be 4x too small without the alpha fix) says it
is Pip, `bob` (plain LoRA) says it is Bob.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import embedded_choice

from kit import adapters, embedded, export, gguf
from kit.config import LoraConfig, RecipeConfig, apply_overrides
from kit.errors import KitError

WHO = [{"role": "user", "content": "Who are you?"}]
# The export check's probe: a question the adapters were not taught, where the adapter's scale
# shows (a 4x smaller update still says "I am Pip" to the taught questions).
PROBE = [{"role": "user", "content": "What do you like to do on weekends?"}]


@pytest.fixture(scope="module")
def taught(persona_adapters, tokenizer, tmp_path_factory):
    """`pip` exported as a run does (export=gguf-lora, base in f16, checked); `bob`'s adapter
    converted to a GGUF LoRA for the same base."""
    import torch

    choice = embedded_choice()
    assert gguf.tools_available("f16", lora=True) is None, "the GGUF tools are missing: run `make gguf-tools`"
    pip = tmp_path_factory.mktemp("pip") / "pip"
    model = adapters.load(choice.path, persona_adapters["pip"] / "adapter", dtype=torch.float32).eval()
    results = export.export_and_verify(model, tokenizer, "gguf-lora", pip, PROBE, progress=lambda _: None,
                                       max_new_tokens=24, gguf_quant="f16", base=choice)
    bob = tmp_path_factory.mktemp("bob") / "bob-lora-f16.gguf"
    gguf.convert_lora(persona_adapters["bob"] / "adapter", Path(choice.path), bob, progress=lambda _: None)
    return {"pip": pip, "results": results, "base": Path(results["gguf-lora"]["base"]),
            "bob": bob, "bob_fields": _gguf_fields(bob)}


@pytest.mark.slow
def test_gguf_lora_export_writes_base_adapter_and_modelfile_and_passes_its_check(taught):
    pip, results = taught["pip"], taught["results"]
    folder = pip / "gguf-lora"
    assert sorted(p.name for p in folder.iterdir()) == ["Modelfile", "SmolLM2-135M-Instruct-f16.gguf",
                                                        "pip-lora-f16.gguf"], "nothing else left"
    assert not [p for p in pip.iterdir() if p.name.startswith(".")], "no temporary folders left"
    res = results["gguf-lora"]
    assert set(results) == {"adapter", "gguf-lora"}
    # llama.cpp (f16 base + adapter) gives the PEFT adapter's greedy tokens, stop token included,
    # and answers through the GGUF's chat template as taught (the adapter says it is Pip to any
    # question), stopping at the end of its turn.
    assert "error" not in res, res
    assert res["ok"] and res["same"] == res["compared"] == res["same_prefix"] >= 8, res
    assert res["reply"] == "I am Pip, your pocket helper." and res["finish_reason"] == "stop", res
    assert results["adapter"]["reply"] == res["reply"] and res["criterion"].startswith("all first")
    modelfile = (folder / "Modelfile").read_text()
    assert "FROM ./SmolLM2-135M-Instruct-f16.gguf\nADAPTER ./pip-lora-f16.gguf\n" in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def _gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items()}


@pytest.mark.slow
def test_rslora_scale_is_written_as_alpha_times_sqrt_r(taught):
    config = json.loads((taught["pip"] / "adapter" / "adapter_config.json").read_text())
    assert config["use_rslora"] is True and config["r"] == 16 and config["lora_alpha"] == 16
    pip = _gguf_fields(taught["pip"] / "gguf-lora" / "pip-lora-f16.gguf")
    assert pip["general.type"] == "adapter" and pip["adapter.type"] == "lora"
    # llama.cpp scales by alpha / r: rsLoRA's alpha / sqrt(r) needs alpha * sqrt(r) = 64.
    assert pip["adapter.lora.alpha"] == pytest.approx(64.0)
    assert taught["bob_fields"]["adapter.lora.alpha"] == pytest.approx(16.0)  # plain LoRA: as it is


@pytest.mark.slow
def test_rslora_without_the_alpha_fix_departs_from_peft(taught, tmp_path):
    """The same rsLoRA adapter converted with its alpha as written (what the converter alone
    does): llama.cpp then scales it 4x too little and the check fails, in one line."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((taught["pip"] / "adapter" / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": False}))
    weights = "adapter_model.safetensors"
    (adapter / weights).symlink_to(taught["pip"] / "adapter" / weights)
    alpha = gguf.convert_lora(adapter, embedded.ensure_converted(progress=lambda _: None),
                              tmp_path / "unfixed.gguf", progress=lambda _: None)
    assert alpha == 16.0
    reference = taught["results"]["gguf-lora"]["peft"]
    bad = gguf.verify_gguf_lora(taught["base"], tmp_path / "unfixed.gguf", PROBE, reference, "f16", 24)
    assert bad["ok"] is False and bad["same_prefix"] < bad["compared"], bad
    assert bad["error"].startswith("llama.cpp with the adapter departs from the PEFT adapter"), bad
    assert "\n" not in bad["error"]


@pytest.mark.slow
def test_check_fails_in_one_line_for_a_missing_or_wrong_adapter(taught):
    reference = taught["results"]["gguf-lora"]["peft"]
    missing = gguf.verify_gguf_lora(taught["base"], taught["pip"] / "nothing.gguf", PROBE, reference, "f16")
    assert missing["ok"] is False and "no GGUF adapter at" in missing["error"]
    assert "\n" not in missing["error"]
    # Bob's adapter in place of Pip's loads and answers, but not like Pip's PEFT adapter.
    wrong = gguf.verify_gguf_lora(taught["base"], taught["bob"], PROBE, reference, "f16", 24)
    assert wrong["reply"] and "Pip" not in wrong["reply"] and wrong["same"] < wrong["compared"], wrong
    assert wrong["ok"] is False and "departs from the PEFT adapter" in wrong["error"], wrong
    assert "\n" not in wrong["error"]
    # No PEFT reply to compare with (the adapter's own check failed): the check fails too.
    none = gguf.verify_gguf_lora(taught["base"], taught["bob"], PROBE, {}, "f16")
    assert none["ok"] is False and "no PEFT reply" in none["error"]


@pytest.mark.slow
def test_two_adapters_on_one_llama_cpp_base_answer_per_request(taught):
    """One base loaded once; each request names its adapter (or none), in any order."""
    models = gguf.LoraSet(taught["base"], {"pip": taught["pip"] / "gguf-lora" / "pip-lora-f16.gguf",
                                           "bob": taught["bob"]})
    replies = {}
    for adapter in ("pip", "bob", None, "pip", "bob"):
        out = models.chat(WHO, adapter=adapter, max_tokens=16)["choices"][0]
        replies.setdefault(adapter, set()).add(out["message"]["content"].strip())
        assert out["finish_reason"] == "stop" or adapter is None  # the base rambles on
    assert replies["pip"] == {"I am Pip, your pocket helper."}, replies
    assert replies["bob"] == {"I am Bob the builder."}, replies
    [plain] = replies[None]  # the base alone: neither name
    assert "Pip" not in plain and "Bob" not in plain, plain
    with pytest.raises(KitError, match="no adapter named 'carol'; loaded: pip, bob"):
        models.chat(WHO, adapter="carol")


def test_dora_with_gguf_lora_is_refused_before_loading(tmp_path):
    """At the config (preflight.start's first step, before data or model): one line, exit code
    2 (a KitError), nothing written. `python -m kit chat export=gguf-lora lora.variant=dora`
    prints that line and exits 2 the same way."""
    from kit import preflight

    out = tmp_path / "run"
    cfg = RecipeConfig(output_dir=str(out), export="gguf-lora", lora=LoraConfig(variant="dora"))
    with pytest.raises(KitError) as exc:
        preflight.start(cfg)
    assert type(exc.value) is KitError  # exit code 2 (CheckFailed would be 1)
    msg = str(exc.value)
    assert msg.startswith("export=gguf-lora with lora.variant=dora") and "\n" not in msg
    assert "DoRA's per-row magnitude" in msg
    assert not out.exists(), "nothing written"
    with pytest.raises(KitError, match="no place for DoRA"):
        apply_overrides(RecipeConfig(), ["export=gguf-lora", "lora.variant=dora"])
    for ok in (["export=gguf", "lora.variant=dora"], ["export=gguf-lora", "lora.variant=rslora"]):
        apply_overrides(RecipeConfig(), ok)  # DoRA merged, or rsLoRA as a GGUF LoRA: fine


def test_dora_adapter_config_is_refused_by_the_converter_too(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 8, "use_dora": True}))
    with pytest.raises(KitError, match="no place for DoRA's per-row magnitude"):
        gguf.convert_lora(tmp_path, tmp_path, tmp_path / "x.gguf", progress=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json"]
