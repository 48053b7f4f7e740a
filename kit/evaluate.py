"""Evaluation on held-out data: loss on reply tokens, and generated replies scored by checks."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import torch
import unsloth  # noqa: F401
from unsloth import FastLanguageModel

from kit import stops as stops_mod
from kit.data import Encoded, Example, check_reply, pad_batch, render


@dataclass
class Generation:
    prompt: list[dict]
    reply: str
    stopped: bool  # ended with a stop token (kit.stops) rather than at the length limit


def by_length(lengths: list[int]) -> list[int]:
    """Indices longest first: batches of neighbours pad little, and a long row does not pad a
    whole batch of short ones. Callers put results back in the original order."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.no_grad()
def heldout_loss(model, tokenizer, encoded: list[Encoded], batch_size: int = 8) -> float:
    """Mean cross-entropy per reply token (prompt tokens masked as in training), over batches
    of rows of similar length."""
    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    ordered = [encoded[i] for i in by_length([len(e.input_ids) for e in encoded])]
    for i in range(0, len(ordered), batch_size):
        ids, mask, labels = pad_batch(ordered[i : i + batch_size], tokenizer.pad_token_id)
        n = int((labels[:, 1:] != -100).sum())
        if n == 0:
            continue
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device))
        total += float(out.loss) * n
        count += n
    return total / max(count, 1)


def prompt_of(example: Example) -> list[dict]:
    """The conversation up to (not including) its last assistant reply."""
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[:last]


def reference_of(example: Example) -> str:
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return example.messages[last]["content"]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 48,
             batch_size: int = 16, stop_strings: list[str] | None = None,
             temperature: float = 0.0) -> list[Generation]:
    """Greedy (with `temperature` > 0: sampled), batched generation that stops at the model's
    stop set (kit.stops: its generation config's EOS list, its template's end-of-turn token and
    the tokenizer's EOS), or where the reply first contains one of `stop_strings` (the reply
    ends with it then); the model is put in Unsloth's inference mode meanwhile. Prompts are
    batched by length (longest first) and the replies come back in the prompts' order."""
    stops = stops_mod.stop_ids(tokenizer, getattr(model, "generation_config", None))
    FastLanguageModel.for_inference(model)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    texts_all = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts_all, add_special_tokens=False)["input_ids"]]
    order = by_length(lengths)
    out: list[Generation | None] = [None] * len(prompts)
    try:
        for i in range(0, len(order), batch_size):
            index = order[i : i + batch_size]
            chunk = [prompts[j] for j in index]
            texts = [texts_all[j] for j in index]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            ids = model.generate(
                **enc.to(device), max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {}),
                pad_token_id=tokenizer.pad_token_id, eos_token_id=stops,
                **({"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}),
            )
            for j, p, row in zip(index, chunk, ids[:, enc["input_ids"].shape[1] :]):
                row, stopped = stops_mod.cut_at_stop(row.tolist(), stops)
                reply = tokenizer.decode(row, skip_special_tokens=True)
                ends = [reply.find(s) + len(s) for s in stop_strings or () if s and s in reply]
                if ends:  # the last token may run past the stop string
                    reply, stopped = reply[: min(ends)], True
                out[j] = Generation(p, reply.strip(), stopped)
    finally:
        tokenizer.padding_side = side
        FastLanguageModel.for_training(model)
    return out  # type: ignore[return-value]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Word-overlap F1 between a reply and the reference reply (SQuAD-style)."""
    p, r = _words(prediction), _words(reference)
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def evaluate(model, tokenizer, examples: list[Example], encoded: list[Encoded],
             max_new_tokens: int = 48, max_generate: int = 64) -> tuple[dict, list[Generation]]:
    """Loss on every held-out example; replies generated for up to `max_generate` of them.

    `check_rate` (share of replies passing their `expect`/`reject` checks) is the task
    metric when the data has checks; `reply_f1` (word overlap with the reference) always.
    """
    loss = heldout_loss(model, tokenizer, encoded)
    sample = examples[:max_generate]
    gens = generate(model, tokenizer, [prompt_of(e) for e in sample], max_new_tokens)
    metrics = {"loss": round(loss, 4), "perplexity": round(math.exp(min(loss, 50)), 3)}
    checks = [check_reply(e, g.reply) for e, g in zip(sample, gens)]
    checks = [c for c in checks if c is not None]
    if checks:
        metrics["check_rate"] = round(sum(checks) / len(checks), 4)
    metrics["reply_f1"] = round(sum(token_f1(g.reply, reference_of(e)) for e, g in zip(sample, gens))
                                / max(len(gens), 1), 4)
    metrics["stopped_at_eos"] = round(sum(g.stopped for g in gens) / max(len(gens), 1), 4)
    return metrics, gens

