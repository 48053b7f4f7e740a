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

The steps, in order, with the Unsloth and TRL calls in main(): read, split and balance the data →
the memory plan → FastLanguageModel.from_pretrained → prompts and labels, tokenized → the plan
for the longest row → FastLanguageModel.get_peft_model → score every label before training →
SFTTrainer(args=SFTConfig).train() → score again → export with labels.json (save_pretrained /
a float32 merge, each checked in a fresh process) → metrics.json → push to the Hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import adapters, classify, data, export, hub, launch, models, preflight, ranks, runplan, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import console, escape, finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from trl import SFTTrainer
from unsloth import FastLanguageModel


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
                              cfg.label_column, cfg.seed, **data.hub_pick(cfg))
    say(f"{cfg.data}: {len(d.train_texts)} train / {len(d.test_texts)} held-out; "
        f"labels: {escape(', '.join(d.labels))}")
    say(f"train classes: {escape(classify.class_counts(d.train_labels))}")
    for note in d.notes:
        warn(note)
    texts, labels = d.train_texts, d.train_labels
    if cfg.balance == "oversample":
        texts, labels = classify.oversample(texts, labels, cfg.seed)
        say(f"balanced by oversampling: {escape(classify.class_counts(labels))}")

    # Several GPUs (or nproc=N): one training process per GPU through torch's launcher; this
    # process waits for them and returns rank 0's metrics. In those ranks, rank 0 alone
    # evaluates, exports and pushes (ranks.on_main); the others wait for its results.
    if (n := launch.processes(cfg, say)) > 1:
        return launch.run_ranks(cfg, __file__, n, say)

    # 2. Model. The memory plan first (4-bit NF4 on a GPU, 16-bit on CPU; the checkpointing
    #    mode and micro-batch that fit): a run that cannot fit the card stops here, before any
    #    weight loads. A model that cannot load is one line, not a traceback.
    step("Model")
    plan = runplan.plan_run(cfg, say)
    adapters.settle(cfg.lora, plan, say)  # a variant that cannot work here stops now
    with models.loading(plan.choice, cfg.trust_remote_code):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=plan.choice.path,
            max_seq_length=cfg.max_seq_length,
            load_in_4bit=plan.settings.load_in_4bit,
            dtype=None,  # bf16 where the card has it, else fp16
            token=hub_token(),
            trust_remote_code=cfg.trust_remote_code,
            **plan.device_map,  # device_map="balanced" when the plan splits the layers over GPUs
        )
    models.set_pad_token(tokenizer)
    data.check_template(tokenizer)  # a chat template that cannot render in seconds stops here

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
    test_enc, _ = data.encode_all(tokenizer, classify.to_examples(test_texts, d.test_labels, d.labels),
                                  cfg.max_seq_length, "held-out")  # for the merge report
    for note in notes:
        warn(note)

    # 4. LoRA. Adapters on every linear projection, with the checkpointing mode the memory
    #    plan picks for the data's longest row.
    plan = runplan.fit_rows(plan, data.longest(train_enc), say)
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=models.lora_targets(model, cfg.lora.target_modules),
        bias="none",
        use_gradient_checkpointing=plan.settings.gradient_checkpointing,
        random_state=cfg.seed,
        use_rslora=cfg.lora.variant == "rslora",  # scale alpha / sqrt(r)
        use_dora=cfg.lora.variant == "dora",  # magnitude + direction (unfused: slower)
        init_lora_weights=adapters.init_weights(cfg.lora.init),  # default, gaussian, pissa, olora
    )
    adapters.keep_initial(model, cfg.lora, cfg.output_dir)  # pissa/olora: saved against the real base
    plan = runplan.with_adapters(plan, model, say)  # parameter counts, learning rate

    # 5. Evaluate before training: every label scored for every held-out text.
    step("Evaluate before training")
    before = ranks.on_main(classify.evaluate, model, tokenizer, test_texts, d.test_labels,
                            d.labels, cfg.max_seq_length)
    console.print(classify.confusion_table(before, "before training"))

    # 6. Train. TRL's SFTTrainer, as Unsloth patches it; the kit checks the disk, finds the
    #    newest complete checkpoint (resume=auto), decides on packing and fills SFTConfig.
    step(f"Train {cfg.max_steps} steps")
    resume_from = train.resume_point(plan, cfg, say)
    plan = train.packing_for(plan, cfg, model, train_enc, say)
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=train.to_dataset(train_enc),
        data_collator=train.collator_for(tokenizer, plan.settings.packing),
        args=train.sft_config(cfg, plan),
        callbacks=train.callbacks(cfg, say),  # progress bar; complete-checkpoint marker
        # LoRA+ (lora.plus_ratio): PEFT's optimizer, lora_B at a higher rate; else TRL's own
        optimizers=adapters.optimizers(model, cfg.lora, plan.learning_rate, plan.device.gpu),
    )
    train.quiet(trainer)
    stats = train.already_trained(trainer, resume_from) or trainer.train(resume_from_checkpoint=resume_from)
    result = train.result_of(trainer, stats, resume_from, rows=len(train_enc))

    # 7. Evaluate after training.
    step("Evaluate after training")
    after = ranks.on_main(classify.evaluate, model, tokenizer, test_texts, d.test_labels,
                           d.labels, cfg.max_seq_length)
    console.print(classify.confusion_table(after, "after training"))

    # 8. Export with the label set. export.save_adapter calls model.save_pretrained (the LoRA
    #    weights, naming its base portably) and export.save_merged merges it in float32 with plain
    #    PEFT (saved in merge_dtype, with merged/merge_report.json), each into a temporary
    #    folder renamed into place; export_and_verify then reloads each in a fresh process and
    #    classifies a held-out text.
    step("Export")
    exports = ranks.on_main(
        export.export_and_verify, model, tokenizer, cfg.export, Path(cfg.output_dir),
        classify.prompt(test_texts[0], d.labels), progress=say,  # its true label: d.test_labels[0]
        extra_files={classify.LABELS_FILE: classify.labels_file(d.labels, cfg.max_seq_length)},
        gguf_quant=cfg.gguf_quant, base=plan.choice, merge_dtype=cfg.merge_dtype, held_out=test_enc)

    # 9. Summary table, metrics.json and report.png.
    metrics = ranks.on_main(finish, "classification", cfg, plan, result, before, after, exports,
                             started, held_out=len(d.test_texts), extra={"labels": d.labels})
    export.require_ok(exports)  # an export that failed its fresh-process check fails the run

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        ranks.on_main(hub.push, Path(cfg.output_dir), metrics, cfg.push, cfg.push_private,
                       progress=say)
    ranks.leave()
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(ClassificationConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
