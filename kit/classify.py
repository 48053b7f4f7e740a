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
                 label_column: str, seed: int) -> Labeled:
    """Texts and labels for training and evaluation; the label set comes from training.

    Rule for evaluation labels never seen in training: those rows are left out of the
    metrics (the model cannot predict them), with a warning that counts them.
    """
    notes: list[str] = []
    train_rows, test_rows = data.read_split_rows(source, eval_data)
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


def score(model, tokenizer, texts: list[str], label_set: list[str], max_len: int = 512,
          batch_size: int = 16) -> list[dict[str, float]]:
    """P(label | text) for every label, from the summed log-likelihood of each label's reply
    tokens (end-of-turn included), exactly as they are trained."""
    import torch

    pairs = [(i, j) for i in range(len(texts)) for j in range(len(label_set))]
    encoded = [data.encode(tokenizer, prompt(texts[i], label_set)
                           + [{"role": "assistant", "content": label_set[j]}], max_len)
               for i, j in pairs]
    loglik = torch.full((len(texts), len(label_set)), float("-inf"))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            ids, mask, labels = data.pad_batch(encoded[start : start + batch_size], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            target = labels[:, 1:]
            picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sums = (picked * (target != -100)).sum(-1)
            for k, (i, j) in enumerate(pairs[start : start + batch_size]):
                loglik[i, j] = sums[k]
    if was_training:
        model.train()
    probs = torch.softmax(loglik, dim=-1)
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


def labels_file(label_set: list[str]) -> str:
    return json.dumps({"labels": label_set, "instruction": INSTRUCTION}, indent=2)


def predict(folder: str | Path, texts: list[str]) -> list[tuple[str, dict[str, float]]]:
    """Labels with a probability per class for `texts`, from a saved adapter/ or merged/
    folder of the classification recipe (plain peft/transformers; no training stack)."""
    from kit.verify import load_exported

    folder = Path(folder)
    meta_path = folder / LABELS_FILE
    if not meta_path.is_file():
        fail(f"{folder} has no {LABELS_FILE}: not an output of the classification recipe")
    label_set = json.loads(meta_path.read_text())["labels"]
    model, tokenizer = load_exported(folder)
    probs = score(model, tokenizer, texts, label_set)
    return [(max(p, key=p.get), p) for p in probs]


def class_counts(labels: list[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(Counter(labels).items()))
