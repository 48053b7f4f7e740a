"""Classification with a decoder LLM: each label is a short reply, scored by its likelihood.

Why generative labels rather than a classification head: the model stays a plain causal LM,
so the same Unsloth training path, the same 4-bit loading and the same exports (adapter,
merged, later GGUF) work unchanged and load anywhere; an instruct model can already classify
before training, so "before" is a fair baseline; and scoring every label's full token sequence
(end-of-turn included) gives a proper probability per class, with no parsing of free text.

The prompt lists the labels; training teaches the reply `label<end-of-turn>` with loss on
the reply only. Prediction computes log P(label | prompt) for each label and softmaxes.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kit import data
from kit.errors import fail

INSTRUCTION = "Classify the message into exactly one of these categories: {labels}.\n\nMessage: {text}"
LABELS_FILE = "labels.json"


@dataclass
class Labeled:
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]
    labels: list[str]  # the label set, from the training split, in a stable order
    notes: list[str] = field(default_factory=list)


def _label_text(value, where: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        fail(f"{where}: label {value!r} is not a string or an integer")
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{where}: label {value!r} is not a class (NaN or Infinity in the file?)")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        fail(f"{where}: empty label")
    return text


def _columns(rows: list[dict], source: str, text_column: str, label_column: str) -> tuple[list, list]:
    found = sorted(rows[0].keys())
    for col, what in ((text_column, "text"), (label_column, "label")):
        if col not in rows[0]:
            fail(f"{source}: no {what} column {col!r}; columns found {found} "
                 f"(set {what}_column=...)")
    texts, labels = [], []
    for i, row in enumerate(rows, 1):
        where = f"{source}, example {i}"
        if text_column not in row or label_column not in row:
            fail(f"{where}: missing {text_column!r} or {label_column!r}")
        text = row[text_column]
        if not isinstance(text, str) or not text.strip():
            fail(f"{where}: {text_column!r} is not non-empty text")
        texts.append(text.strip())
        labels.append(_label_text(row[label_column], where))
    return texts, labels


def load_labeled(source: str, eval_data: str, eval_fraction: float, text_column: str,
                 label_column: str, seed: int, **hub) -> Labeled:
    """Texts and labels for training and evaluation; the label set comes from training.

    Rule for evaluation labels never seen in training: those rows are left out of the
    metrics (the model cannot predict them), with a warning that counts them.
    """
    notes: list[str] = []
    train_rows, test_rows = data.read_split_rows(source, eval_data, **hub)  # data.hub_pick
    texts, labels = _columns(train_rows, source, text_column, label_column)
    if test_rows is None:
        held = data.hold_out(len(texts), eval_fraction, seed, source, cap=500)
        test_texts = [t for i, t in enumerate(texts) if i in held]
        test_labels = [lab for i, lab in enumerate(labels) if i in held]
        texts = [t for i, t in enumerate(texts) if i not in held]
        labels = [lab for i, lab in enumerate(labels) if i not in held]
        notes.append(f"held out {len(held)} examples for evaluation (eval_fraction={eval_fraction})")
    else:
        test_texts, test_labels = _columns(test_rows, eval_data or source, text_column, label_column)
    # Numbers in numeric order, then text. isdecimal, not isdigit: int() refuses "²" and "³".
    label_set = sorted(set(labels), key=lambda s: (not s.isdecimal(), int(s) if s.isdecimal() else 0, s))
    if len(label_set) < 2:
        fail(f"{source}: only one class ({label_set[0]!r}) in the training data; "
             "a classifier needs at least two")
    unseen = [i for i, lab in enumerate(test_labels) if lab not in label_set]
    if unseen:
        names = sorted({test_labels[i] for i in unseen})
        notes.append(f"{len(unseen)} held-out examples have labels never seen in training "
                     f"({', '.join(map(repr, names[:5]))}); they are left out of evaluation")
        keep = [i for i in range(len(test_labels)) if i not in set(unseen)]
        test_texts = [test_texts[i] for i in keep]
        test_labels = [test_labels[i] for i in keep]
        if not test_texts:
            fail(f"{eval_data or source}: no held-out example has a label seen in training")
    return Labeled(texts, labels, test_texts, test_labels, label_set, notes)


def prompt(text: str, labels: list[str]) -> list[dict]:
    return [{"role": "user", "content": INSTRUCTION.format(labels=", ".join(labels), text=text)}]


def to_examples(texts: list[str], labels: list[str], label_set: list[str]) -> list[data.Example]:
    return [data.Example(prompt(t, label_set) + [{"role": "assistant", "content": lab}])
            for t, lab in zip(texts, labels)]


def oversample(texts: list[str], labels: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Balanced sampling: repeat each class's examples up to the largest class's count."""
    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for t, lab in zip(texts, labels):
        by_class.setdefault(lab, []).append(t)
    top = max(len(v) for v in by_class.values())
    pairs = []
    for lab, items in by_class.items():
        extra = [rng.choice(items) for _ in range(top - len(items))]
        pairs += [(t, lab) for t in items + extra]
    rng.shuffle(pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _conversation_ids(tokenizer, text: str, label_set: list[str], label: str) -> list[int]:
    rendered = data.render(tokenizer, prompt(text, label_set) + [{"role": "assistant", "content": label}])
    return tokenizer(rendered, add_special_tokens=False)["input_ids"]


def fit_texts(tokenizer, texts: list[str], label_set: list[str], max_len: int) -> tuple[list[str], int]:
    """Texts cut at their end so that the rendered prompt (instruction and label list intact)
    plus the longest label and its end-of-turn token fit `max_len` tokens; and how many were
    cut. Cutting the message rather than the conversation keeps what scoring needs: the label
    list at the prompt's head and the label itself. Stops if even an empty message cannot fit."""
    sizes = {lab: len(_conversation_ids(tokenizer, "", label_set, lab)) for lab in label_set}
    longest = max(label_set, key=lambda lab: sizes[lab])
    if sizes[longest] > max_len:
        fail(f"max_seq_length={max_len} is too short for the classification prompt: with an empty "
             f"message, the instruction, the {len(label_set)} labels and the longest label "
             f"({longest!r}) as the reply take {sizes[longest]} tokens; raise max_seq_length "
             "or shorten the labels")
    out, n_cut = [], 0
    for text in texts:
        size = len(_conversation_ids(tokenizer, text, label_set, longest))
        if size <= max_len:
            out.append(text)
            continue
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = min(len(offsets), max(max_len - sizes[longest], 0))
        while True:  # token boundaries can shift by a token or two when the text is cut
            cut = text[: offsets[keep - 1][1]].rstrip() if keep > 0 else ""
            over = len(_conversation_ids(tokenizer, cut, label_set, longest)) - max_len
            if over <= 0 or keep == 0:
                break
            keep = max(keep - over, 0)
        out.append(cut)
        n_cut += 1
    return out, n_cut


def cut_note(n_cut: int, total: int, what: str, max_len: int) -> str:
    return (f"{n_cut} of {total} {what} texts are too long for max_seq_length={max_len} with the "
            "prompt and the longest label; their ends were cut (the instruction, the label list "
            "and the label are kept)")


@dataclass
class _Row:
    """One text's scoring inputs: the prompt tokens all labels share, then per label the
    tokens to feed after them, the tokens they predict, and which of those are label tokens."""

    prefix: list[int]
    feeds: list[list[int]]
    targets: list[list[int]]
    counts: list[list[bool]]


def _row(tokenizer, text: str, label_set: list[str], max_len: int) -> _Row:
    encoded = [data.encode(tokenizer, prompt(text, label_set) + [{"role": "assistant", "content": lab}],
                           max_len) for lab in label_set]
    seqs = [e.input_ids for e in encoded]
    firsts = [next((k for k in range(1, len(e.labels)) if e.labels[k] != -100), len(e.labels))
              for e in encoded]
    shared = min(min(firsts), min(len(s) for s in seqs) - 1)
    shared = next((k for k in range(shared) if len({s[k] for s in seqs}) > 1), shared)
    # The last shared token is fed again with each label: its output predicts the first
    # label token, and the cached prefix then needs no logits at all.
    cut = max(shared - 1, 0)
    return _Row(prefix=seqs[0][:cut],
                feeds=[s[cut:-1] for s in seqs],
                targets=[s[cut + 1:] for s in seqs],
                counts=[[lab != -100 for lab in e.labels[cut + 1:]] for e in encoded])


def _unshared(row: _Row) -> _Row:
    """The same row with nothing cached: the prompt fed again with each label."""
    if not row.prefix:
        return row
    head = row.prefix[1:]
    return _Row([], [row.prefix + f for f in row.feeds],
                 [head + f[:1] + t for f, t in zip(row.feeds, row.targets)],
                 [[False] * len(head) + [False] + c for c in row.counts])


def _repeat_cache(cache, times: int):
    """The prompt's keys/values repeated for each label (row i*times + j: text i, label j)."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(times)
        return cache
    return tuple(tuple(t.repeat_interleave(times, dim=0) for t in layer) for layer in cache)


def _score_rows(model, rows: list[_Row], pad: int, device):
    """Summed log-likelihood of each label's tokens, (len(rows), n_labels), on the CPU.

    One forward of each prompt (right-padded, no logits), its cache repeated per label, then
    one forward of all label continuations; log-probabilities only at the label positions."""
    import torch

    n_labels = len(rows[0].feeds)
    if any(not r.prefix for r in rows):  # an all-padding prompt row would attend to nothing
        rows = [_unshared(r) for r in rows]
    width = max(len(r.prefix) for r in rows)
    past, prefix_mask = None, None
    lengths = torch.tensor([len(r.prefix) for r in rows])
    if width:
        ids = torch.tensor([r.prefix + [pad] * (width - len(r.prefix)) for r in rows])
        prefix_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        out = model(input_ids=ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True,
                    logits_to_keep=1)
        past = _repeat_cache(out.past_key_values, n_labels)
        prefix_mask = prefix_mask.repeat_interleave(n_labels, dim=0)
    feeds = [f for r in rows for f in r.feeds]
    targets = [t for r in rows for t in r.targets]
    counts = [c for r in rows for c in r.counts]
    w = max(2, max(len(f) for f in feeds))  # at least 2: a single new token takes a decode path
    ids = torch.tensor([f + [pad] * (w - len(f)) for f in feeds])
    mask = torch.tensor([[1] * len(f) + [0] * (w - len(f)) for f in feeds])
    target = torch.tensor([t + [0] * (w - len(t)) for t in targets])
    counted = torch.tensor([c + [False] * (w - len(c)) for c in counts])
    positions = lengths.repeat_interleave(n_labels)[:, None] + torch.arange(w)[None, :]
    if prefix_mask is not None:
        mask = torch.cat([prefix_mask, mask], dim=1)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                   position_ids=positions.to(device), past_key_values=past, use_cache=past is not None).logits
    counted = counted.to(logits.device)
    picked = logits[counted].float()  # only the positions that predict a label token
    logp = picked.gather(-1, target.to(logits.device)[counted][:, None]).squeeze(-1) - picked.logsumexp(-1)
    sums = torch.zeros(counted.shape, dtype=torch.float32, device=logits.device)
    sums[counted] = logp
    return sums.sum(-1).view(len(rows), n_labels).cpu()


LOGIT_BUDGET = 2**26  # logits one batch of label continuations may hold (256 MiB in fp32)


def _batches(order: list[int], rows: list[_Row], batch_size: int, vocab: int) -> list[list[int]]:
    """Consecutive runs of `order` (texts sorted by length): at most `batch_size` texts, and
    fewer where their labels' logits (texts x labels x label width x vocabulary) would pass
    LOGIT_BUDGET, as with a long label list and a 150k-256k vocabulary."""
    out: list[list[int]] = []
    widest = 0
    for i in order:
        width = max(2, max(map(len, rows[i].feeds)))
        if out and len(out[-1]) < batch_size and \
                (len(out[-1]) + 1) * len(rows[i].feeds) * max(width, widest) * vocab <= LOGIT_BUDGET:
            out[-1].append(i)
            widest = max(width, widest)
        else:
            out.append([i])
            widest = width
    return out


def logliks(model, tokenizer, texts: list[str], label_set: list[str], max_len: int = 512,
            batch_size: int = 16):
    """log P(label | text): the summed log-likelihood of each label's reply tokens (end-of-turn
    included), exactly as they are trained; a (texts, labels) float tensor on the CPU.

    Texts too long for `max_len` are cut at their end (see `fit_texts`). Texts are batched
    by length (a long one pads only its own batch), each prompt runs once, and
    log-probabilities are computed only where a label token is predicted."""
    import torch

    texts, _ = fit_texts(tokenizer, texts, label_set, max_len)
    rows = [_row(tokenizer, t, label_set, max_len) for t in texts]
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i].prefix), max(map(len, rows[i].feeds))))
    out = torch.empty((len(texts), len(label_set)))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in _batches(order, rows, batch_size, len(tokenizer)):
                out[chunk] = _score_rows(model, [rows[i] for i in chunk], pad, device)
    finally:
        if was_training:
            model.train()
    return out


def score(model, tokenizer, texts: list[str], label_set: list[str], max_len: int = 512,
          batch_size: int = 16) -> list[dict[str, float]]:
    """P(label | text) for every label: the softmax over labels of `logliks`."""
    import torch

    probs = torch.softmax(logliks(model, tokenizer, texts, label_set, max_len, batch_size), dim=-1)
    return [{lab: round(float(p), 4) for lab, p in zip(label_set, row)} for row in probs]


def metrics(truth: list[str], predicted: list[str], label_set: list[str]) -> dict:
    """Accuracy, macro-F1 and the confusion matrix (rows: true label, columns: predicted)."""
    index = {lab: k for k, lab in enumerate(label_set)}
    confusion = [[0] * len(label_set) for _ in label_set]
    for t, p in zip(truth, predicted):
        confusion[index[t]][index[p]] += 1
    f1s = []
    for k in range(len(label_set)):
        tp = confusion[k][k]
        fp = sum(confusion[r][k] for r in range(len(label_set))) - tp
        fn = sum(confusion[k]) - tp
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    present = [f for k, f in enumerate(f1s) if sum(confusion[k]) or any(r[k] for r in confusion)]
    return {
        "accuracy": round(sum(t == p for t, p in zip(truth, predicted)) / max(len(truth), 1), 4),
        "macro_f1": round(sum(present) / max(len(present), 1), 4),
        "confusion": confusion,
        "labels": label_set,
    }


def evaluate(model, tokenizer, texts: list[str], truth: list[str], label_set: list[str],
             max_len: int) -> dict:
    probs = score(model, tokenizer, texts, label_set, max_len)
    predicted = [max(p, key=p.get) for p in probs]
    out = metrics(truth, predicted, label_set)
    out["mean_true_label_probability"] = round(sum(p[t] for p, t in zip(probs, truth)) / len(truth), 4)
    return out


def confusion_table(result: dict, title: str):
    from rich.table import Table

    table = Table(title=title, title_style="bold")
    table.add_column("true \\ predicted", style="bold")
    for lab in result["labels"]:
        table.add_column(lab, justify="right")
    for lab, row in zip(result["labels"], result["confusion"]):
        table.add_row(lab, *[f"[green]{v}[/]" if i == result["labels"].index(lab) else str(v)
                             for i, v in enumerate(row)])
    return table


def labels_file(label_set: list[str], max_seq_length: int | None = None) -> str:
    meta = {"labels": label_set, "instruction": INSTRUCTION}
    if max_seq_length:
        meta["max_seq_length"] = max_seq_length  # predict() cuts long texts as training did
    return json.dumps(meta, indent=2)


def predict(folder: str | Path, texts: list[str], max_len: int | None = None
            ) -> list[tuple[str, dict[str, float]]]:
    """Labels with a probability per class for `texts`, from a saved adapter/ or merged/
    folder of the classification recipe (plain peft/transformers; no training stack).
    A text longer than `max_len` tokens with the prompt and the longest label (default: the
    run's max_seq_length from labels.json, else 512) is cut at its end (see `fit_texts`)."""
    from kit.verify import load_exported

    folder = Path(folder)
    meta_path = folder / LABELS_FILE
    if not meta_path.is_file():
        fail(f"{folder} has no {LABELS_FILE}: not an output of the classification recipe")
    meta = json.loads(meta_path.read_text())
    label_set = meta["labels"]
    model, tokenizer = load_exported(folder)
    probs = score(model, tokenizer, texts, label_set, max_len or meta.get("max_seq_length") or 512)
    return [(max(p, key=p.get), p) for p in probs]


def class_counts(labels: list[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(Counter(labels).items()))
