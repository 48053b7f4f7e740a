"""Preference pairs for the dpo recipe: the formats users have, the reference model, the held-out
preference metrics and TRL's DPOConfig.

Formats, told apart by the first row's columns and value types (each becomes a `Pair`: the
prompt as chat messages, the chosen and the rejected reply as assistant messages):

- `prompt`/`chosen`/`rejected` as text: the prompt is the user's turn;
- the same as conversations: `prompt` a list of messages, `chosen`/`rejected` lists of
  assistant messages (or whole conversations that start with the prompt);
- UltraFeedback-binarized: `prompt` text, `chosen`/`rejected` whole conversations, and the
  `score_chosen`/`score_rejected` columns;
- full `chosen`/`rejected` conversations and no `prompt`, as in HH-RLHF: message lists, or HH's
  text ("\\n\\nHuman: ... \\n\\nAssistant: ..."); the prompt is what both share.

Rows may carry `expect`/`reject` checks (regexes) for the chat checks, as in kit.data.

The reference: TRL's DPOTrainer, given a PEFT model and no `ref_model`, copies the trainable
"default" adapter into a frozen "ref" adapter before training and scores the reference with it
(kit.prefs.reference_of names it); no second copy of the base is loaded. Started from the base,
that copy is the fresh adapter, so the reference is the base; started from an SFT adapter
(`adapter=`), it is the SFT model.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from kit import adapters, data
from kit.errors import fail

FORMATS = {
    "text_pairs": "`prompt`/`chosen`/`rejected` as text",
    "chat_pairs": "`prompt`/`chosen`/`rejected` as conversations",
    "ultrafeedback": "UltraFeedback-binarized (`prompt`, `chosen`/`rejected` conversations, scores)",
    "full_chat": "full `chosen`/`rejected` conversations sharing a prompt (HH-RLHF, messages)",
    "hh_text": "full `chosen`/`rejected` HH-RLHF text (\\n\\nHuman: ... \\n\\nAssistant: ...)",
}
SCORES = ("score_chosen", "score_rejected")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
_ROLES = ("system", "user", "assistant")


@dataclass
class Pair:
    """One preference: a prompt (chat messages) and two assistant replies to it."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    expect: str | None = None
    reject: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class PairSplits:
    train: list[Pair]
    test: list[Pair]
    source: str
    fmt: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- formats


def detect_format(row: dict) -> str:
    """The format of a preference dataset, from its first row."""
    cols = set(row)
    if {"chosen", "rejected"} <= cols:
        chosen = row["chosen"]
        if "prompt" in cols:
            if isinstance(row["prompt"], str) and not isinstance(chosen, list):
                return "text_pairs"
            if SCORES[0] in cols and SCORES[1] in cols:
                return "ultrafeedback"
            return "chat_pairs"
        if isinstance(chosen, str):
            return "hh_text"
        return "full_chat"
    fail(f"not preference data: columns found {sorted(cols)[:12]}; the dpo recipe reads pairs with "
         "`chosen` and `rejected` replies (and usually a `prompt`): " + "; ".join(FORMATS.values()))


def _messages(value, where: str, what: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        fail(f"{where}: `{what}` must be a non-empty list of messages, found "
             f"{type(value).__name__ if value != [] else 'an empty list'}")
    out = []
    for j, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            fail(f"{where}, `{what}` message {j}: expected an object with `role` and `content`")
        role = turn.get("role")
        if role not in _ROLES:
            fail(f"{where}, `{what}` message {j}: unknown role {role!r} (expected system, user or assistant)")
        content = data._text(turn.get("content"), f"{where}, `{what}` message {j}")
        out.append({"role": role, "content": content})
    return out


def _hh(text: str, where: str, what: str) -> list[dict[str, str]]:
    """HH-RLHF text as messages: "\\n\\nHuman: ... \\n\\nAssistant: ..." turns."""
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        fail(f"{where}: `{what}` is not HH-RLHF text (turns starting \"\\n\\nHuman: \" and "
             "\"\\n\\nAssistant: \")")
    return [{"role": _HH_ROLES[who], "content": said.strip()}
            for who, said in zip(parts[1::2], parts[2::2])]


def _split_shared(chosen: list[dict], rejected: list[dict], where: str) -> tuple[list, list, list]:
    """Whole conversations → (shared prompt, chosen replies, rejected replies): the prompt is the
    longest run of messages both share that ends before an assistant reply."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and chosen[n - 1]["role"] == "assistant":
        n -= 1  # a shared assistant message ending the prefix belongs to the replies compared
    if n == 0 or n >= len(chosen) or n >= len(rejected):
        fail(f"{where}: `chosen` and `rejected` share no prompt followed by different replies")
    return chosen[:n], chosen[n:], rejected[n:]


def _replies(messages: list[dict], where: str, what: str) -> list[dict]:
    if messages[0]["role"] != "assistant" or not any(m["content"].strip() for m in messages
                                                       if m["role"] == "assistant"):
        fail(f"{where}: `{what}` must be the assistant's reply (it starts with a "
             f"{messages[0]['role']} message)")
    return messages


def to_pair(row: dict, fmt: str, where: str) -> Pair:
    with_prompt = fmt in ("text_pairs", "chat_pairs", "ultrafeedback")
    need = {"chosen", "rejected"} | ({"prompt"} if with_prompt else set())
    missing = need - row.keys()
    if missing:
        fail(f"{where}: missing {sorted(missing)} (the file mixes formats? detected {FORMATS[fmt]})")
    if fmt == "text_pairs":
        prompt = [{"role": "user", "content": data._text(row["prompt"], f"{where}, `prompt`")}]
        chosen = [{"role": "assistant", "content": data._text(row["chosen"], f"{where}, `chosen`")}]
        rejected = [{"role": "assistant", "content": data._text(row["rejected"], f"{where}, `rejected`")}]
    elif fmt == "hh_text":
        full_c = _hh(data._text(row["chosen"], f"{where}, `chosen`"), where, "chosen")
        full_r = _hh(data._text(row["rejected"], f"{where}, `rejected`"), where, "rejected")
        prompt, chosen, rejected = _split_shared(full_c, full_r, where)
    elif fmt == "full_chat":
        prompt, chosen, rejected = _split_shared(_messages(row["chosen"], where, "chosen"),
                                                 _messages(row["rejected"], where, "rejected"), where)
    else:  # chat_pairs, ultrafeedback: the prompt as text or messages; replies alone or whole
        p = row["prompt"]
        prompt = ([{"role": "user", "content": data._text(p, f"{where}, `prompt`")}]
                  if isinstance(p, str) else _messages(p, where, "prompt"))
        chosen, rejected = (_messages(row[k], where, k) for k in ("chosen", "rejected"))
        if chosen[: len(prompt)] == prompt and rejected[: len(prompt)] == prompt:
            chosen, rejected = chosen[len(prompt):], rejected[len(prompt):]
        if not chosen or not rejected:
            fail(f"{where}: `chosen` or `rejected` holds the prompt and no reply")
    if prompt[-1]["role"] == "assistant":
        fail(f"{where}: the prompt ends with an assistant message; it should end with the user's turn")
    chosen, rejected = _replies(chosen, where, "chosen"), _replies(rejected, where, "rejected")
    if chosen == rejected:
        fail(f"{where}: `chosen` and `rejected` are the same reply: nothing to prefer")
    used = {"prompt", "chosen", "rejected", "expect", "reject"}
    return Pair(prompt, chosen, rejected, expect=data._pattern(row, "expect", where),
                reject=data._pattern(row, "reject", where),
                meta={k: v for k, v in row.items() if k not in used})


def to_pairs(rows: list[dict], source: str) -> tuple[list[Pair], str]:
    fmt = detect_format(rows[0])
    return [to_pair(r, fmt, f"{source}, example {i}") for i, r in enumerate(rows, 1)], fmt


def _score_note(pairs: list[Pair], what: str) -> list[str]:
    """UltraFeedback: rows whose chosen reply did not score above the rejected one."""
    def score(p: Pair, key: str) -> float | None:
        v = p.meta.get(key)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    scored = [(score(p, SCORES[0]), score(p, SCORES[1])) for p in pairs]
    ties = sum(1 for c, r in scored if c is not None and r is not None and c <= r)
    return ([f"{ties} of {len(pairs)} {what} pairs have score_chosen <= score_rejected "
             "(trained on as given)"] if ties else [])


def load_splits(source: str, eval_data: str = "", eval_fraction: float = 0.1, seed: int = 0,
                **hub) -> PairSplits:
    """Train and held-out pairs, every row checked: where the held-out ones come from is
    kit.data.read_split_rows's rule (a built-in's test file, `eval_data`, a Hub test split),
    else a seeded `eval_fraction` of the rows."""
    train_rows, test_rows = data.read_split_rows(source, eval_data, **hub)
    train, fmt = to_pairs(train_rows, source)
    notes = []
    if test_rows is None:
        held = data.hold_out(len(train), eval_fraction, seed, source)
        test = [p for i, p in enumerate(train) if i in held]
        train = [p for i, p in enumerate(train) if i not in held]
        notes.append(f"held out {len(held)} of {len(held) + len(train)} pairs for evaluation "
                     f"(eval_fraction={eval_fraction})")
    else:
        test, _ = to_pairs(test_rows, eval_data or source)
    if fmt == "ultrafeedback":
        notes += _score_note(train, "train")
    return PairSplits(train, test, source, fmt, notes)


# ---------------------------------------------------------------- data for TRL and the checks


def to_dataset(pairs: list[Pair]):
    """TRL's conversational preference format; DPOTrainer renders it with the chat template
    (its per-dataset progress bars off: the recipe says the counts)."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    return Dataset.from_dict({"prompt": [p.prompt for p in pairs],
                              "chosen": [p.chosen for p in pairs],
                              "rejected": [p.rejected for p in pairs]})


def as_examples(pairs: list[Pair]) -> list[data.Example]:
    """The prompt and the chosen reply as a conversation, with the pair's checks: what the chat
    checks (kit.evaluate) and the export checks read."""
    return [data.Example(p.prompt + p.chosen, expect=p.expect, reject=p.reject) for p in pairs]


def lengths(tokenizer, pairs: list[Pair]) -> list[int]:
    """Tokens of each pair's longer sequence (prompt + chosen, or prompt + rejected)."""
    out = []
    for p in pairs:
        texts = [data.render(tokenizer, p.prompt + p.chosen), data.render(tokenizer, p.prompt + p.rejected)]
        out.append(max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]))
    return out


def length_notes(sizes: list[int], max_len: int, what: str) -> list[str]:
    over = sum(n > max_len for n in sizes)
    return ([f"{over} of {len(sizes)} {what} pairs are longer than max_seq_length={max_len}; TRL "
             "keeps their start (the prompt) and cuts the replies' end"] if over else [])


# ---------------------------------------------------------------- training


def dpo_config(cfg, run):
    """TRL's DPOConfig: the arguments every recipe's trainer gets (kit.train.trainer_args) and the
    DPO keys: `loss_type` (a comma-separated list is combined, weight 1 each), `beta`, and
    max_length; TRL's own gradient checkpointing off (Unsloth's is set on the model)."""
    from trl import DPOConfig

    from kit import train

    return DPOConfig(**train.trainer_args(cfg, run), max_length=cfg.max_seq_length,
                     loss_type=loss_types(cfg.loss_type), beta=cfg.beta, gradient_checkpointing=False,
                     precompute_ref_log_probs=False, remove_unused_columns=False,
                     include_num_input_tokens_seen="non_padding")  # tokens/s counts no padding


LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
              "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def loss_types(text: str) -> list[str]:
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in LOSS_TYPES]
    if not names or bad:
        fail(f"loss_type={text!r}: expected one or more (comma-separated) of {', '.join(LOSS_TYPES)}")
    return names


def check(cfg) -> None:
    """The dpo recipe's own keys, before anything loads."""
    loss_types(cfg.loss_type)
    if not (math.isfinite(cfg.beta) and cfg.beta > 0):
        fail(f"beta={cfg.beta!r} is out of range: expected a number above 0 (0.1 is usual)")
    adapters.start_folder(cfg.adapter)
    if cfg.nproc > 1:
        fail(f"nproc={cfg.nproc}: the dpo recipe trains in one process (a model too big for one GPU "
             "is split over them with nproc=0)")


def reference_of(model, adapter: str) -> str:
    """What the reference model is, in words, once DPOTrainer has set it up."""
    has_ref = "ref" in getattr(model, "peft_config", {})
    if not has_ref:
        return "the base (the adapter disabled)"
    if adapter:
        return f"the model it starts from: the base with {adapter} (TRL's frozen copy, adapter \"ref\")"
    return "the base: the new adapter as it starts (TRL's frozen copy, adapter \"ref\")"


def drop_reference(model) -> None:
    """After training: remove TRL's frozen reference adapter, so the exports hold the trained one."""
    if "ref" in getattr(model, "peft_config", {}):
        model.set_adapter("default")
        model.delete_adapter("ref")


# ---------------------------------------------------------------- held-out preference metrics


def pair_metrics(trainer, beta: float) -> dict:
    """On the trainer's held-out pairs (its eval_dataset, tokenized by TRL): the implicit rewards
    as TRL defines them, beta × (log p_policy - log p_ref) summed over each reply's tokens.
    `preference_accuracy`: share of pairs whose chosen reply's reward is above the rejected
    one's (a tie, as before any training, counts half: chance); `reward_margin`: the mean of
    chosen minus rejected reward."""
    import torch
    from trl.trainer.utils import use_adapter

    model = trainer.model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    margins, chosen_r, rejected_r = [], [], []

    def logps(inputs) -> torch.Tensor:
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        kw = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        out = model(**kw, labels=labels, use_cache=False, fused_lm_head=True)
        return out.log_probs[:, -(inputs["completion_mask"].size(1) - 1):].sum(dim=1).float()

    try:
        with torch.no_grad():
            for batch in trainer.get_eval_dataloader():
                inputs = {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}
                policy = logps(inputs)
                with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                    ref = logps(inputs)
                c, r = (beta * (policy - ref)).chunk(2)
                chosen_r += c.tolist()
                rejected_r += r.tolist()
                margins += (c - r).tolist()
    finally:
        model.train(was_training)
    n = max(len(margins), 1)
    wins = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins)
    return {"preference_accuracy": round(wins / n, 4),
            "reward_margin": round(sum(margins) / n, 4),
            "chosen_reward": round(sum(chosen_r) / n, 4), "rejected_reward": round(sum(rejected_r) / n, 4)}
