"""Preference tuning (DPO) with Unsloth and TRL: teach a chat model which of two replies to prefer.

    make recipe=dpo ARGS="max_steps=100 beta=0.1 data=my_pairs.jsonl"
    python recipes/dpo.py max_steps=100 adapter=outputs/chat/adapter   # on top of an SFT run
    python recipes/dpo.py --help                        # every key, its default and meaning
    python -m kit dpo max_steps=100                     # the same wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    dpo = recipe("dpo")
    dpo.main(dpo.DpoConfig(max_steps=100))

It runs like Unsloth's notebooks, with the Unsloth and TRL calls in main() and the kit working
out what goes into them. The steps, in order: read and split the pairs → the memory plan (two
sequences a pair) → FastLanguageModel.from_pretrained → the plan for the longest pair →
FastLanguageModel.get_peft_model (or the SFT adapter given as `adapter=`) →
DPOTrainer(args=DPOConfig) → evaluate → train → evaluate → export (save_pretrained / a float32
merge, each checked in a fresh process) → metrics.json → push to the Hub.

The reference model is the same model with TRL's frozen copy of the adapter as it started: the
base when the adapter is new, the SFT model when it starts from `adapter=`; no second copy of the
base is loaded. The built-in pairs prefer replies in which the model introduces itself as "Pip"
to generic ones, and correct answers to wrong ones; held-out pairs with prompts phrased
differently check whether it learned: `preference_accuracy` (the chosen reply's implicit reward
above the rejected one's) and `reward_margin`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import adapters, data, evaluate, export, hub, models, preflight, prefs, runplan, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import escape, finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from trl import DPOTrainer
from unsloth import FastLanguageModel


@dataclass
class DpoConfig(RecipeConfig):
    sequences_per_row: ClassVar[int] = 2  # the memory plan: chosen and rejected in one pass

    data: str = "builtin:prefs"
    """Preference pairs: a .jsonl/.json/.csv/.parquet file, a Hub dataset, or `builtin:prefs`.
    prompt/chosen/rejected (text or conversations), HH-RLHF or UltraFeedback-binarized rows."""
    output_dir: str = "outputs/dpo"
    """Where adapter/, merged/ and metrics.json go."""
    eval_data: str = ""
    """Held-out pairs; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.1
    """Share of `data` held out for evaluation when there is no test split."""
    eval_samples: int = 64
    """Held-out prompts to generate replies for (the chat checks), before and after training."""
    max_new_tokens: int = 48
    """Longest generated reply during evaluation."""
    adapter: str = ""
    """Start from this LoRA adapter (e.g. outputs/chat/adapter), trained further (its r, alpha,
    targets and variant kept); the reference is then the model with it. Empty: a new adapter
    (`lora.*`), and the base is the reference."""
    learning_rate: float | None = None
    """Peak learning rate. Default: 1e-3 for models under 0.5B parameters, else 2e-4; a tenth of
    that when starting from `adapter=`."""
    beta: float = 0.1
    """DPO's beta: how far the policy may move from the reference (higher: less)."""
    loss_type: str = "sigmoid,sft"
    """TRL's DPO loss: sigmoid (DPO), ipo, hinge, robust, apo_zero, sft, ...; several
    comma-separated are added, weight 1 each. The default adds the chosen replies' SFT loss to
    DPO's: on the built-in pairs `sigmoid` alone ranks the pairs and yet wrecks the replies."""


def main(cfg: DpoConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here
    prefs.check(cfg)  # loss_type, beta, the adapter folder

    # 1. Pairs first, so a bad file fails in seconds rather than after the model loads.
    step("Data")
    splits = prefs.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                               **data.hub_pick(cfg))
    say(f"{splits.source}: {len(splits.train)} train / {len(splits.test)} held-out pairs "
        f"({prefs.FORMATS[splits.fmt]})")
    for note in splits.notes:
        say(note)

    # 2. Model. The memory plan counts two sequences a pair (chosen and rejected run together);
    #    a run that cannot fit the card stops here, before any weight loads.
    step("Model")
    plan = runplan.plan_run(cfg, say)
    start = adapters.adopt(cfg.lora, cfg.adapter, plan.choice, say)  # its shape becomes this run's
    adapters.settle(cfg.lora, plan, say)
    with models.loading(plan.choice, cfg.trust_remote_code):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=plan.choice.path,
            max_seq_length=cfg.max_seq_length,
            load_in_4bit=plan.settings.load_in_4bit,
            dtype=None,  # bf16 where the card has it, else fp16
            token=hub_token(),
            trust_remote_code=cfg.trust_remote_code,
            **plan.device_map,
        )
    models.set_pad_token(tokenizer)
    data.check_template(tokenizer)  # a chat template that cannot render in seconds stops here

    # 3. The longest pair sets the checkpointing mode; held-out pairs as conversations (prompt +
    #    chosen reply) for the chat checks and the export checks.
    sizes = prefs.lengths(tokenizer, splits.train)
    for note in prefs.length_notes(sizes, cfg.max_seq_length, "train"):
        warn(note)
    plan = runplan.fit_rows(plan, max(sizes), say)
    test_examples = prefs.as_examples(splits.test)
    test_enc, notes = data.encode_all(tokenizer, test_examples, cfg.max_seq_length, "held-out")
    for note in notes:
        warn(note)

    # 4. LoRA on every linear projection, or the SFT adapter's own shape with its weights loaded.
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=models.lora_targets(model, cfg.lora.target_modules),
        bias="none",
        use_gradient_checkpointing=plan.settings.gradient_checkpointing,
        random_state=cfg.seed,
        use_rslora=cfg.lora.variant == "rslora",
        use_dora=cfg.lora.variant == "dora",
        init_lora_weights=adapters.init_weights(cfg.lora.init),
    )
    if start is not None:
        adapters.load_weights(model, start)
    adapters.keep_initial(model, cfg.lora, cfg.output_dir)
    plan = runplan.with_adapters(plan, model, say, further=start is not None)

    # 5. TRL's DPOTrainer on the PEFT model with no ref_model: it copies the adapter as it is now
    #    into a frozen "ref" adapter, the reference. It renders the pairs with the chat template.
    step("Trainer and reference")
    resume_from = train.resume_point(plan, cfg, say)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=prefs.dpo_config(cfg, plan),  # loss_type, beta; batch and rate from the plan
        train_dataset=prefs.to_dataset(splits.train),
        eval_dataset=prefs.to_dataset(splits.test),
        processing_class=tokenizer,
        callbacks=train.callbacks(cfg, say),
        optimizers=adapters.optimizers(model, cfg.lora, plan.learning_rate, plan.device.gpu),
    )
    train.quiet(trainer)
    reference = prefs.reference_of(model, cfg.adapter)
    say(f"reference model: {reference}; loss {cfg.loss_type}, beta {cfg.beta:g}")

    # 6. Evaluate before training: the held-out preference metrics, then the chat checks. Then
    #    train.
    step("Evaluate before training")
    before = prefs.pair_metrics(trainer, cfg.beta)
    chat_before, gens_before = evaluate.evaluate(model, tokenizer, test_examples, test_enc,
                                                 cfg.max_new_tokens, cfg.eval_samples)
    before.update(chat_before)
    say(f"before: {before}")

    step(f"Train {cfg.max_steps} steps")
    stats = train.already_trained(trainer, resume_from) or trainer.train(resume_from_checkpoint=resume_from)
    result = train.result_of(trainer, stats, resume_from, rows=len(splits.train))

    # 7. Evaluate after training, on the same held-out pairs and prompts.
    step("Evaluate after training")
    after = prefs.pair_metrics(trainer, cfg.beta)
    chat_after, gens_after = evaluate.evaluate(model, tokenizer, test_examples, test_enc,
                                               cfg.max_new_tokens, cfg.eval_samples)
    after.update(chat_after)
    say(f"after:  {after}")
    for b, a in list(zip(gens_before, gens_after))[:3]:
        say(f"[dim]prompt:[/] {escape(b.prompt[-1]['content'])}\n  [dim]before:[/] {escape(b.reply[:120])}"
            f"\n  [dim]after:[/]  {escape(a.reply[:120])}")

    # 8. Export the trained adapter (TRL's reference copy removed first), as every recipe does.
    step("Export")
    prefs.drop_reference(model)
    probe = next((e for e in test_examples if e.expect), test_examples[0])
    exports = export.export_and_verify(model, tokenizer, cfg.export, Path(cfg.output_dir),
                                       evaluate.prompt_of(probe), progress=say,
                                       gguf_quant=cfg.gguf_quant, base=plan.choice,
                                       merge_dtype=cfg.merge_dtype, held_out=test_enc)

    # 9. Summary table, metrics.json and report.png.
    metrics = finish("dpo", cfg, plan, result, before, after, exports, started,
                     held_out=len(splits.test),
                     extra={"dpo": {"beta": cfg.beta, "loss_type": prefs.loss_types(cfg.loss_type),
                                    "reference": reference,
                                    "format": splits.fmt}})
    export.require_ok(exports)  # an export that does not load or stop fails the run (exit 1)

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        hub.push(Path(cfg.output_dir), metrics, cfg.push, cfg.push_private, progress=say)
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(DpoConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
