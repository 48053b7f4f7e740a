"""Text classification with a 4-bit decoder LLM and Unsloth.

    make recipe=classification ARGS="data=tickets.csv text_column=body label_column=queue"
    python recipes/classification.py max_steps=100 balance=oversample
    python recipes/classification.py --help
    python -m kit classification balance=oversample     # wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    r = recipe("classification")
    r.main(r.ClassificationConfig(balance="oversample"))

Each label is taught as a short reply and scored by its likelihood (see kit/classify.py for
why), so predictions come with a probability per class. The built-in data are support
messages in four classes; held-out messages use sentence patterns training never saw.
Afterwards: kit.classify.predict("outputs/classification/adapter", ["My card was charged twice"]).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kit import classify, data, export, hub, models, preflight, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import console, escape, finish, say, step, warn


@dataclass
class ClassificationConfig(RecipeConfig):
    data: str = "builtin:tickets"
    """Labelled texts: a .csv/.jsonl/.json/.parquet file, a Hub dataset, or `builtin:tickets`."""
    output_dir: str = "outputs/classification"
    """Where adapter/, merged/ (each with labels.json) and metrics.json go."""
    text_column: str = "text"
    """Column holding the text to classify."""
    label_column: str = "label"
    """Column holding the label (strings or integers)."""
    eval_data: str = ""
    """Held-out file; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.2
    """Share of `data` held out for evaluation when there is no test split."""
    balance: Literal["none", "oversample"] = "none"
    """`oversample`: repeat examples of smaller classes up to the largest (balanced sampling)."""
    max_seq_length: int = 256
    """Longest prompt + label in tokens; longer texts are truncated (with a warning)."""


def main(cfg: ClassificationConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here

    # 1. Data: texts and labels; the label set is read from the training split.
    step("Data")
    d = classify.load_labeled(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.text_column,
                              cfg.label_column, cfg.seed)
    say(f"{cfg.data}: {len(d.train_texts)} train / {len(d.test_texts)} held-out; "
        f"labels: {escape(', '.join(d.labels))}")
    say(f"train classes: {escape(classify.class_counts(d.train_labels))}")
    for note in d.notes:
        warn(note)
    texts, labels = d.train_texts, d.train_labels
    if cfg.balance == "oversample":
        texts, labels = classify.oversample(texts, labels, cfg.seed)
        say(f"balanced by oversampling: {escape(classify.class_counts(labels))}")

    # 2. Model: 4-bit NF4 on a GPU, 16-bit on CPU; a run that cannot fit the card stops here,
    #    before any weight loads.
    step("Model")
    prep = models.prepare(cfg, say)
    tokenizer = prep.tokenizer

    # 3. Each example: the prompt (with the label list) and the label as the reply. A text too
    #    long for max_seq_length is cut at its end, never the instruction, the label list or
    #    the label: the prompt plus the longest label and its end-of-turn token must fit.
    texts, n_cut = classify.fit_texts(tokenizer, texts, d.labels, cfg.max_seq_length)
    test_texts, n_test_cut = classify.fit_texts(tokenizer, d.test_texts, d.labels, cfg.max_seq_length)
    for n, total, what in ((n_cut, len(texts), "train"), (n_test_cut, len(test_texts), "held-out")):
        if n:
            warn(classify.cut_note(n, total, what, cfg.max_seq_length))
    train_examples = classify.to_examples(texts, labels, d.labels)
    train_enc, notes = data.encode_all(tokenizer, train_examples, cfg.max_seq_length, "train")
    for note in notes:
        warn(note)

    # 4. Memory plan for the longest row (the fastest settings that fit), then LoRA adapters
    #    on every linear projection.
    models.attach_lora(prep, cfg, say, longest=data.longest(train_enc))

    # 5. Evaluate before training: every label scored for every held-out text.
    step("Evaluate before training")
    before = classify.evaluate(prep.model, tokenizer, test_texts, d.test_labels, d.labels,
                               cfg.max_seq_length)
    console.print(classify.confusion_table(before, "before training"))

    # 6. Train.
    step(f"Train {cfg.max_steps} steps")
    result = train.run(prep, train_enc, cfg, say)

    # 7. Evaluate after training.
    step("Evaluate after training")
    after = classify.evaluate(prep.model, tokenizer, test_texts, d.test_labels, d.labels,
                              cfg.max_seq_length)
    console.print(classify.confusion_table(after, "after training"))

    # 8. Export with the label set; reload each in a fresh process and classify a held-out text.
    step("Export")
    exports = export.export_and_verify(
        prep.model, tokenizer, cfg.export, Path(cfg.output_dir),
        classify.prompt(test_texts[0], d.labels), progress=say,  # its true label: d.test_labels[0]
        extra_files={classify.LABELS_FILE: classify.labels_file(d.labels, cfg.max_seq_length)},
        gguf_quant=cfg.gguf_quant)

    # 9. Summary table, metrics.json and report.png.
    metrics = finish("classification", cfg, prep, result, before, after, exports, started,
                   held_out=len(d.test_texts), extra={"labels": d.labels})
    export.require_ok(exports)  # an export that failed its fresh-process check fails the run

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        hub.push(Path(cfg.output_dir), metrics, cfg.push, cfg.push_private, progress=say)
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(ClassificationConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
