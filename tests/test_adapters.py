"""LoRA variants, the measured merge and the pinned base (kit.adapters, kit.pin, kit.verify's merge).

Each variant trains a few steps on the tiny Llama and its adapter loads in plain PEFT, in a fresh
process, with the logits it had in the run; a constructed update below bf16's spacing is
reported lost in bf16 and kept in float32; an adapter is refused on another base; the built-in
chat run's merge report agrees with its adapter and nothing it writes for the Hub names a path
on this machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_recipe

from kit import adapters, data, export, pin, train, verify
from kit.choice import ModelChoice
from kit.config import LoraConfig, RecipeConfig, apply_overrides
from kit.errors import KitError

PROBE = [{"role": "user", "content": "Say hello."}]


# ---------------------------------------------------------------- the cast, on tensors


def test_update_below_bf16_spacing_is_lost_in_bf16_and_kept_in_fp32():
    """|W| near 0.02: bf16's spacing there is 2**-13 ≈ 1.2e-4, so an update of 3e-5 rounds away
    entirely in bf16 and survives float32."""
    torch.manual_seed(0)
    base = (0.02 + 0.002 * torch.rand(64, 64)).to(torch.bfloat16).float()  # bf16 values, as loaded
    update = torch.full_like(base, 3e-5)
    merged = base + update
    err, upd, same, n = verify.cast_loss(merged, base, "bfloat16")
    assert (err / upd) ** 0.5 == pytest.approx(1.0, abs=1e-3)  # the whole update lost
    assert same == n  # and not one entry changed
    err, upd, same, n = verify.cast_loss(merged, base, "float32")
    assert err == 0.0 and same == 0
    report = {"dtype": "bfloat16", "update_lost": 1.0, "loss_adapter": 1.0, "loss_merged": 1.0,
              "by_dtype": {"bfloat16": {"update_lost": 1.0}, "float16": {"update_lost": 0.3},
                           "float32": {"update_lost": 0.0}}}
    out = verify.departs(report)
    assert not out["ok"] and out["problem"].endswith("merge_dtype=float32 keeps the update")
    assert "100% of the LoRA update lost in bfloat16" in out["problem"]


def test_merge_weights_measures_a_real_peft_merge(tiny_model_dir):
    """PEFT's own merge in float32 on the tiny Llama, with lora_B set so every update entry is
    1e-5 (below bf16's spacing for these weights): bf16 loses it all, float32 keeps it."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, PeftLoraConfig(r=4, lora_alpha=4, target_modules=["q_proj"]))
    for name, p in model.named_parameters():
        if "lora_A" in name:
            p.data.fill_(0.0)[:, 0] = 1.0
        if "lora_B" in name:
            p.data.fill_(0.0)[:, 0] = 1e-5
    stats = verify.merge_weights(model, "auto")
    assert stats["bfloat16"]["update_lost"] > 0.9
    assert stats["float32"]["update_lost"] == 0.0
    assert stats["bfloat16"]["unchanged_share"] > 0.9


# ---------------------------------------------------------------- the variants


def test_bad_combinations_are_one_line_before_loading():
    for args, words in ((["lora.init=loftq"], "LoftQ rewrites the base weights"),
                        (["lora.init=pissa", "load_in_4bit=true"], "needs a 16-bit base"),
                        (["lora.init=olora", "lora.variant=dora"], "cannot convert a DoRA adapter"),
                        (["lora.plus_ratio=0.5"], r"expected 0 \(off\) or a ratio"),
                        (["merge_dtype=int8"], "expected one of auto, bfloat16")):
        with pytest.raises(KitError, match=words):
            apply_overrides(RecipeConfig(), args)

    class Run:  # what adapters.settle reads of a RunPlan: the memory plan's precision
        class settings:
            load_in_4bit = True

    with pytest.raises(KitError, match="loads it in 4-bit"):
        adapters.settle(LoraConfig(init="pissa"), Run)


VARIANTS = {"rslora": LoraConfig(r=4, alpha=8, variant="rslora"),
            "dora": LoraConfig(r=4, alpha=8, variant="dora"),
            "pissa": LoraConfig(r=4, alpha=8, init="pissa"),
            "olora": LoraConfig(r=4, alpha=8, init="olora"),
            "gaussian+lora_plus": LoraConfig(r=4, alpha=8, init="gaussian", plus_ratio=16)}

PLAIN_PEFT = """
import json, sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
for adapter in sys.argv[4:]:
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        torch.save(model(input_ids=torch.tensor([ids])).logits, f"{adapter}/plain.pt")
"""


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tokenizer, tmp_path_factory):
    """Each variant trained 2 steps on the tiny Llama (float32, so a PiSSA residual is exact),
    its run logits on a probe, and its adapter saved through export.save_adapter."""
    from trl import SFTTrainer
    from unsloth import FastLanguageModel

    from kit import models

    root = tmp_path_factory.mktemp("variants")
    rows = [data.encode(tokenizer, [{"role": "user", "content": f"Say {w}."},
                                    {"role": "assistant", "content": f"{w}!"}], 64)
            for w in ("yes", "no", "maybe", "hello")]
    probe = rows[0].input_ids
    out = {}
    for name, lora in VARIANTS.items():
        folder = root / name
        model, tok = FastLanguageModel.from_pretrained(model_name=str(tiny_model_dir), max_seq_length=64,
                                                       load_in_4bit=False, dtype=torch.float32)
        models.set_pad_token(tok)
        model = FastLanguageModel.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha, target_modules=models.lora_targets(model, "auto"),
            use_gradient_checkpointing=False, random_state=0,
            use_rslora=lora.variant == "rslora", use_dora=lora.variant == "dora",
            init_lora_weights=adapters.init_weights(lora.init))
        adapters.keep_initial(model, lora, folder)
        cfg = RecipeConfig(max_steps=2, batch_size=2, output_dir=str(folder), save_steps=0, warmup_steps=0)
        from kit.device import Device
        from kit.memory import Settings
        from kit.runplan import RunPlan

        run = RunPlan(Device("cpu", "", 0.0, False), None, Settings(False, False, [], 2, 1),
                      learning_rate=1e-2)
        trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=train.to_dataset(rows),
                             data_collator=train.collator_for(tok, False), args=train.sft_config(cfg, run),
                             optimizers=adapters.optimizers(model, lora, 1e-2, gpu=False))
        train.quiet(trainer)
        trainer.train()
        lrs = sorted({g["initial_lr"] for g in trainer.optimizer.param_groups if g["params"]})
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([probe])).logits.float()
        export.save_adapter(model, tok, folder / "adapter", base=ModelChoice(str(tiny_model_dir), "tiny", ""))
        out[name] = {"dir": folder / "adapter", "logits": logits, "lrs": lrs, "probe": probe}
    subprocess.run([sys.executable, "-c", PLAIN_PEFT, str(tiny_model_dir), json.dumps(probe), str(root),
                    *(str(v["dir"]) for v in out.values())], check=True, cwd=ROOT, timeout=300)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loads_in_plain_peft_with_the_run_logits(trained, name, tmp_path_factory):
    got = trained[name]
    plain = torch.load(got["dir"] / "plain.pt")
    assert torch.allclose(plain, got["logits"], atol=1e-4, rtol=1e-4), (plain - got["logits"]).abs().max()
    config = json.loads((got["dir"] / "adapter_config.json").read_text())
    assert config["use_dora"] == (name == "dora") and config["use_rslora"] == (name == "rslora")
    if name in ("pissa", "olora"):  # converted: a plain LoRA of twice the rank on the original base
        assert config["init_lora_weights"] is True and config["r"] == 8
    # LoRA+: lora_B at 16x the learning rate; otherwise one rate for all
    assert got["lrs"] == ([pytest.approx(1e-2), pytest.approx(0.16)] if "lora_plus" in name
                          else [pytest.approx(1e-2)])


@pytest.mark.slow
def test_dpo_and_grpo_start_from_each_variant_with_its_run_logits(trained, tiny_model_dir, tmp_path):
    """`adapter=FOLDER` in the dpo and grpo recipes: adapters.adopt reads the saved adapter's
    shape (rank, alpha, targets, rsLoRA/DoRA) into cfg.lora, the recipe's get_peft_model builds
    it, adapters.load_weights fills it: the model starts with the logits the adapter had."""
    from unsloth import FastLanguageModel

    from kit import models

    choice = ModelChoice(str(tiny_model_dir), "tiny", "")
    for name, got in trained.items():
        lora = LoraConfig(r=64, alpha=3, variant="lora", init="pissa")  # all replaced by the adapter's
        folder = adapters.adopt(lora, str(got["dir"]), choice, say=lambda _: None)
        assert (lora.variant, lora.init) == (VARIANTS[name].variant, "default"), name
        model, _ = FastLanguageModel.from_pretrained(model_name=str(tiny_model_dir), max_seq_length=64,
                                                     load_in_4bit=False, dtype=torch.float32)
        model = FastLanguageModel.get_peft_model(
            model, r=lora.r, lora_alpha=lora.alpha,
            target_modules=models.lora_targets(model, lora.target_modules),
            use_gradient_checkpointing=False, random_state=1, use_rslora=lora.variant == "rslora",
            use_dora=lora.variant == "dora", init_lora_weights=adapters.init_weights(lora.init))
        adapters.load_weights(model, folder)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([got["probe"]])).logits.float()
        gap = (logits - got["logits"]).abs().max()
        assert torch.allclose(logits, got["logits"], atol=1e-4, rtol=1e-4), (name, gap)
    # refused in one line: no weights file; a shape the model does not have
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "adapter_config.json").write_text((trained["rslora"]["dir"] / "adapter_config.json").read_text())
    (empty / pin.FILE).write_text((trained["rslora"]["dir"] / pin.FILE).read_text())
    with pytest.raises(KitError, match="no adapter_model.safetensors"):
        adapters.adopt(LoraConfig(), str(empty), choice, say=lambda _: None)
    with pytest.raises(KitError, match="do not fit this model"):
        adapters.load_weights(model, trained["pissa"]["dir"])  # rank 8 into the rank-4 model


@pytest.mark.slow
def test_adapter_names_its_base_portably_and_is_refused_on_another(trained, tiny_model_dir,
                                                                   tiny_fim_model_dir):
    adapter = trained["rslora"]["dir"]
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name  # a folder's name, not its path
    pinned = json.loads((adapter / pin.FILE).read_text())
    assert pinned["sha256"] == pin.fingerprint(tiny_model_dir)["sha256"] and "note" in pinned
    for f in adapter.rglob("*"):  # .local-base (this machine's path) is a dot-file push leaves out
        if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith("."):
            assert str(tiny_model_dir.parent) not in f.read_text(errors="replace"), f.name
    with pytest.raises(KitError, match=r"was trained on tiny-llama\w* .* is another base"):
        adapters.load(str(tiny_fim_model_dir), adapter)
    assert isinstance(adapters.load(str(tiny_model_dir), adapter, dtype=torch.float32), torch.nn.Module)
    res = export.verify("adapter", adapter, PROBE, max_new_tokens=2, base=str(tiny_fim_model_dir))
    assert not res["ok"] and res["error"].startswith("error: the adapter in adapter was trained on")


# ---------------------------------------------------------------- the chat recipe's merge


@pytest.mark.slow
def test_chat_merge_report_agrees_with_the_adapter_and_names_no_local_path(tmp_path):
    from kit import embedded, hub

    out = tmp_path / "chat"
    proc = run_recipe("chat", "max_steps=3", f"output_dir={out}", "eval_samples=2", "max_new_tokens=8",
                      "save_steps=0", "merge_dtype=float32", "lora.variant=rslora",
                      timeout=1800)  # a 3-step run; minutes on a loaded 2-core machine
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "merged" / "merge_report.json").read_text())
    for key in ("dtype", "update_lost", "unchanged_share", "loss_adapter", "loss_merged", "greedy_agreement"):
        assert key in report, key
    assert report["dtype"] == "float32" and report["update_lost"] == 0.0 and report["ok"]
    assert report["greedy_agreement"] == 1.0 and report["greedy_tokens"] > 0
    assert report["loss_merged"] == pytest.approx(report["loss_adapter"], rel=1e-4)
    assert report["by_dtype"]["bfloat16"]["update_lost"] > 0  # what a bf16 save would have lost
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["merge"]["greedy_agreement"] == 1.0
    assert metrics["lora"] == {"variant": "rslora", "init": "default", "plus_ratio": 0.0}
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == embedded.HUB_ID
    card = hub.model_card(metrics, "adapter", "someone/chat-test", token="")
    assert "LoRA variant | rslora" in card and "greedy agreement 100.0%" in card
    local = (str(tmp_path), str(Path.home()), str(embedded.cache_root()))
    texts = {"card": card, **{str(f): f.read_text(errors="replace") for kind in ("adapter", "merged")
                               for f in (out / kind).rglob("*")
                               if f.is_file() and f.suffix != ".safetensors" and not f.name.startswith(".")}}
    for name, text in texts.items():
        assert not any(p in text for p in local), name
