"""Real Unsloth LoRA training on a tiny random Llama: the base is frozen, the adapter learns."""

import math

import pytest
import torch

from kit import data, evaluate, metrics, models, train
from kit.choice import resolve_model
from kit.config import RecipeConfig, apply_overrides
from kit.device import Device, detect_device
from kit.memory import Request, decide_settings

ROWS = [data.Example([{"role": "user", "content": f"Say {w}."},
                      {"role": "assistant", "content": f"{w}!"}]) for w in
        ("yes", "no", "maybe", "hello", "thanks", "sure", "fine", "great")]


@pytest.fixture()
def tiny(tiny_model_dir):
    device = detect_device()
    choice = resolve_model(str(tiny_model_dir), device)
    model, tokenizer = models.load(choice, 128, load_in_4bit=False)
    cfg = apply_overrides(RecipeConfig(), ["max_steps=4", "batch_size=4", "lora.r=8", "warmup_steps=0"])
    model = models.add_lora(model, cfg.lora, False, cfg.seed)
    return model, tokenizer, cfg, device


def test_base_frozen_lora_changed(tiny, tmp_path):
    model, tokenizer, cfg, device = tiny
    named = dict(model.named_parameters())
    lora = {k: v.detach().clone() for k, v in named.items() if "lora_" in k}
    base = {k: v.detach().clone() for k, v in named.items() if "lora_" not in k}
    assert lora and all(named[k].requires_grad for k in lora)
    assert not any(named[k].requires_grad for k in base)

    encoded, _ = data.encode_all(tokenizer, ROWS, 128, "train")
    result = train.train(model, tokenizer, encoded, cfg, gpu=False, bf16=True,
                         learning_rate=1e-2, checkpoint_dir=str(tmp_path))
    assert result.steps == 4 and len(result.losses) == 4
    assert all(math.isfinite(x) for x in result.losses)
    assert result.tokens > 0

    after = dict(model.named_parameters())
    changed = [k for k in lora if not torch.equal(after[k], lora[k])]
    assert len(changed) == len(lora), "every LoRA matrix should have moved"
    unchanged = [k for k in base if torch.equal(after[k], base[k])]
    assert len(unchanged) == len(base), "base weights must stay frozen"


def test_training_lowers_heldout_loss(tiny, tmp_path):
    model, tokenizer, cfg, _ = tiny
    encoded, _ = data.encode_all(tokenizer, ROWS, 128, "train")
    before = evaluate.heldout_loss(model, tokenizer, encoded)
    cfg = apply_overrides(cfg, ["max_steps=8"])
    train.train(model, tokenizer, encoded, cfg, gpu=False, bf16=True,
                learning_rate=1e-2, checkpoint_dir=str(tmp_path))
    after = evaluate.heldout_loss(model, tokenizer, encoded)
    assert after < before


def test_generate_returns_one_reply_per_prompt(tiny):
    model, tokenizer, _, _ = tiny
    gens = evaluate.generate(model, tokenizer, [evaluate.prompt_of(e) for e in ROWS[:3]], max_new_tokens=5)
    assert len(gens) == 3 and all(isinstance(g.reply, str) for g in gens)
    assert tokenizer.padding_side == "right", "generation must restore the training padding side"
    # The recipes evaluate before training: generation must hand the model back in training
    # mode, every module of it, with the KV cache off again (Unsloth's inference mode turns it
    # on, and a cache lets packed rows see each other).
    left_in_eval = [name for name, m in model.named_modules() if not m.training]
    assert not left_in_eval, f"left in eval mode: {left_in_eval[:5]}"
    assert model.config.use_cache is False, "the KV cache must be off again for training"


def test_settings_on_cpu():
    cpu = Device("cpu", "cpu", 8.0, True)
    s = decide_settings(Request.of(RecipeConfig()), cpu)
    assert s.load_in_4bit is False and s.gradient_checkpointing is False
    gpu = Device("cuda", "T4", 15.0, False)
    s = decide_settings(Request.of(RecipeConfig()), gpu)  # before a memory plan replaces it
    assert s.load_in_4bit is True and s.gradient_checkpointing == "unsloth"
    assert (s.micro_batch, s.grad_accum) == (4, 1)
    explicit = apply_overrides(RecipeConfig(), ["gradient_checkpointing=true", "load_in_4bit=false"])
    s = decide_settings(Request.of(explicit), gpu)
    assert s.load_in_4bit is False and s.gradient_checkpointing is True
    from kit.errors import KitError

    with pytest.raises(KitError, match="needs a GPU"):
        decide_settings(Request.of(apply_overrides(RecipeConfig(), ["load_in_4bit=true"])), cpu)


def test_improved_metric_directions():
    better = metrics.improved({"loss": 2.0, "check_rate": 0.4, "reply_f1": 0.3},
                              {"loss": 1.0, "check_rate": 0.4, "reply_f1": 0.5})
    assert better == {"loss": True, "check_rate": False, "reply_f1": True}
