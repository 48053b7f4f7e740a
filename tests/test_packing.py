"""Packed (padding-free) micro-batches: nothing leaks across rows, prompt masks survive, the
`packing=` rule, and a recipe trains to the same held-out metrics packed and padded."""

import json

import pytest
import torch

from kit import data, models, train
from kit.choice import resolve_model
from kit.config import RecipeConfig, apply_overrides
from kit.device import detect_device
from kit.errors import KitError

# Rows of clearly different lengths (prompts and replies of 1 to ~40 words).
ROWS = [data.Example([{"role": "user", "content": q}, {"role": "assistant", "content": a}]) for q, a in (
    ("Hi?", "Hello!"),
    ("Name three colours of the rainbow and say which one is between the other two.",
     "Red, yellow and green; yellow sits between red and green."),
    ("Why?", "Because the light bends by a different angle for each colour as it passes through "
             "each drop of water, so the colours spread apart into a band across the sky."),
    ("Count to five in words, please, one word after another.", "One two three four five."),
)]


@pytest.fixture(scope="module")
def tiny_fp32(tiny_model_dir):
    """The tiny Llama through Unsloth with LoRA, in fp32, LoRA B randomized so that every
    adapter matrix gets a gradient."""
    device = detect_device()
    model, tokenizer = models.load(resolve_model(str(tiny_model_dir), device), 256, load_in_4bit=False)
    cfg = apply_overrides(RecipeConfig(), ["lora.r=8"])
    model = models.add_lora(model, cfg.lora, False, cfg.seed).float()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    encoded, _ = data.encode_all(tokenizer, ROWS, 256, "train")
    return model, tokenizer, encoded


def features(encoded):
    return [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in encoded]


def loss_and_grads(model, batches):
    """Token-weighted mean loss over batches (each batch's mean times its supervised tokens),
    and its gradients on the LoRA weights."""
    model.zero_grad(set_to_none=True)
    counts = [int((b["labels"][:, 1:] != -100).sum()) for b in batches]
    total = 0.0
    for b, n in zip(batches, counts):
        loss = model(**b).loss * n / sum(counts)
        loss.backward()
        total += float(loss.detach())
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    return total, grads


def test_packed_loss_and_lora_grads_equal_rows_run_alone(tiny_fp32):
    model, tokenizer, encoded = tiny_fp32
    assert len({len(e.input_ids) for e in encoded}) == len(encoded), "rows must differ in length"
    model.train()
    packed = train.PackingCollator(tokenizer)(features(encoded))
    assert packed["input_ids"].shape == (1, sum(len(e.input_ids) for e in encoded))
    assert "attention_mask" not in packed
    alone = [train.PaddedCollator(tokenizer)(features([e])) for e in encoded]
    padded = train.PaddedCollator(tokenizer)(features(encoded))

    loss_p, grads_p = loss_and_grads(model, [packed])
    loss_a, grads_a = loss_and_grads(model, alone)
    loss_pad, _ = loss_and_grads(model, [padded])
    assert loss_p == pytest.approx(loss_a, rel=1e-6)
    assert loss_pad == pytest.approx(loss_a, rel=1e-6)
    assert len(grads_p) == len(grads_a) > 0
    for k in grads_a:
        assert grads_a[k].abs().max() > 0, k
        torch.testing.assert_close(grads_p[k], grads_a[k], rtol=1e-5, atol=1e-7, msg=k)

    # The same rows with no boundary (one long row) do see each other: the check can fail.
    joined = {"input_ids": packed["input_ids"], "labels": packed["labels"]}
    loss_j, _ = loss_and_grads(model, [joined])
    assert abs(loss_j - loss_a) > 1e-3


def test_prompt_masks_survive_packing(tokenizer):
    encoded, _ = data.encode_all(tokenizer, ROWS, 256, "train")
    collator = train.PackingCollator(tokenizer)
    batch = collator(features(encoded))
    ids, labels, pos = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    start = 0
    for e in encoded:
        n = len(e.input_ids)
        assert ids[start:start + n] == e.input_ids
        assert pos[start:start + n] == list(range(n))
        # Every label as encode made it, prompt -100s included; the first token is never a
        # target (alone it has nothing before it), so packing masks it.
        assert labels[start] == -100 and labels[start + 1:start + n] == e.labels[1:]
        assert any(x == -100 for x in e.labels[1:]) and any(x != -100 for x in e.labels)
        start += n
    assert batch["packed_seq_lengths"].tolist() == [len(e.input_ids) for e in encoded]
    assert start == len(ids)  # every row laid end to end, nothing added


class Leaky(torch.nn.Module):
    """A model whose attention ignores where packed rows end (what an unsafe backend does)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, position_ids=None, packed_seq_lengths=None, **kw):
        return self.inner(**kw)


def test_packing_rule(tiny_fp32):
    model, tokenizer, encoded = tiny_fp32
    cfg = RecipeConfig()
    assert cfg.packing == "auto"
    on, why = train.choose_packing(cfg, model, encoded, micro_batch=4)
    assert on and "matches" in why
    assert not train.choose_packing(cfg, model, encoded, micro_batch=1)[0]
    same = [data.Encoded(e.input_ids[:10], e.labels[:10]) for e in encoded]
    assert not train.choose_packing(cfg, model, same, micro_batch=4)[0]
    assert not train.choose_packing(apply_overrides(cfg, ["packing=off"]), model, encoded, 4)[0]
    # A backend that lets rows see each other: auto turns packing off and says so; on refuses.
    on, why = train.choose_packing(cfg, Leaky(model), encoded, micro_batch=4)
    assert not on and "not safe" in why
    with pytest.raises(KitError, match="not safe"):
        train.choose_packing(apply_overrides(cfg, ["packing=on"]), Leaky(model), encoded, 4)
    with pytest.raises(KitError, match="packing"):
        apply_overrides(cfg, ["packing=sometimes"])


def test_plan_counts_tokens_per_pass_when_packed():
    from kit import plan

    shape = plan.Shape.from_config(plan.LLAMA_8B)
    lengths = tuple([2048] + [400] * 200)
    padded = plan.choose(shape, budget_gib=20, batch_size=8, seq=2048, checkpointing="off")
    packed = plan.choose(shape, budget_gib=20, batch_size=8, seq=2048, checkpointing="off",
                         row_lengths=lengths)
    # Padded, a pass holds micro-batch × 2,048 tokens; packed, at worst the longest rows' sum.
    assert packed.setting.micro_batch > padded.setting.micro_batch
    b = packed.setting.micro_batch
    assert packed.setting.tokens == 2048 + 400 * (b - 1) and packed.fits
    assert padded.setting.tokens == padded.setting.micro_batch * 2048


def test_chat_recipe_same_heldout_metrics_packed_and_padded(tmp_path, tiny_model_dir, monkeypatch):
    """The chat recipe's own main() on the built-in data, twice in this process (the exports'
    fresh-process checks are skipped: other tests cover them)."""
    from kit import export
    from kit.cli import parse_cli
    from kit.recipe import recipe

    chat = recipe("chat")
    monkeypatch.setattr(export, "export_and_verify", lambda *a, **k: {})
    runs = {}
    for mode in ("on", "off"):
        out = tmp_path / mode
        cfg = parse_cli(chat.ChatConfig(), [f"model={tiny_model_dir}", f"packing={mode}", "max_steps=3",
                                            "eval_samples=2", "max_new_tokens=2", "save_steps=0",
                                            "learning_rate=1e-2", f"output_dir={out}"])
        chat.main(cfg)
        runs[mode] = json.loads((out / "metrics.json").read_text())
    on, off = runs["on"], runs["off"]
    assert on["memory_plan"]["packing"] is True and off["memory_plan"]["packing"] is False
    assert on["config"]["packing"] == "on" and off["config"]["packing"] == "off"
    # Same rows, same order, same seed: the same training, padded or not (bf16 on CPU: noise).
    assert on["before"]["loss"] == pytest.approx(off["before"]["loss"], rel=1e-3)
    assert on["after"]["loss"] == pytest.approx(off["after"]["loss"], rel=2e-2)
    assert on["after"]["loss"] < on["before"]["loss"]
    assert len(on["train"]["losses"]) == len(off["train"]["losses"]) == 3
    for a, b in zip(on["train"]["losses"], off["train"]["losses"]):
        assert a == pytest.approx(b, rel=2e-2)
    assert on["train"]["tokens"] == off["train"]["tokens"]

def test_evaluation_batches_by_length_and_keeps_order(tiny_fp32):
    from kit import evaluate

    model, tokenizer, encoded = tiny_fp32
    assert evaluate.by_length([3, 9, 1, 5]) == [1, 3, 0, 2]
    # Batched by length, the held-out loss is still the token-weighted mean over all rows.
    counts = [sum(x != -100 for x in e.labels[1:]) for e in encoded]
    alone = [evaluate.heldout_loss(model, tokenizer, [e]) for e in encoded]
    expected = sum(a * n for a, n in zip(alone, counts)) / sum(counts)
    assert evaluate.heldout_loss(model, tokenizer, encoded, batch_size=2) == pytest.approx(expected, rel=1e-5)
    prompts = [evaluate.prompt_of(e) for e in ROWS]
    gens = evaluate.generate(model, tokenizer, prompts, max_new_tokens=2, batch_size=2)
    assert [g.prompt for g in gens] == prompts
    model.train()
