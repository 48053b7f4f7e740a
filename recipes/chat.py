"""Chat fine-tuning with Unsloth: teach a chat model a new behaviour from conversations.

    make recipe=chat ARGS="max_steps=100 lora.r=32 data=my.jsonl"
    python recipes/chat.py max_steps=100 lora.r=32 data=my.jsonl
    python recipes/chat.py --help                       # every key, its default and meaning
    python -m kit chat max_steps=100                    # the same wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    chat = recipe("chat")
    chat.main(chat.ChatConfig(max_steps=100))

It runs like Unsloth's notebooks, with the Unsloth and TRL calls in main() and the kit working
out what goes into them. The steps, in order: read and split the data → the memory plan →
FastLanguageModel.from_pretrained → tokenize → the plan for the longest row →
FastLanguageModel.get_peft_model → evaluate → SFTTrainer(args=SFTConfig).train() → evaluate →
export (save_pretrained / a float32 merge, each checked in a fresh process) →
metrics.json → push to the Hub.

The built-in data teaches the model to introduce itself as "Pip"; held-out questions with
phrasings it never saw check whether it learned (`check_rate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import adapters, data, evaluate, export, hub, launch, models, preflight, ranks, runplan, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import escape, finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from trl import SFTTrainer
from unsloth import FastLanguageModel


@dataclass
class ChatConfig(RecipeConfig):
    data: str = "builtin:persona"
    """Conversations: a .jsonl/.json/.csv/.parquet file, a Hub dataset, or `builtin:persona`."""
    output_dir: str = "outputs/chat"
    """Where adapter/, merged/ and metrics.json go."""
    eval_data: str = ""
    """Held-out conversations; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.1
    """Share of `data` held out for evaluation when there is no test split."""
    eval_samples: int = 64
    """Held-out prompts to generate replies for, before and after training."""
    max_new_tokens: int = 48
    """Longest generated reply during evaluation."""


def main(cfg: ChatConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here

    # 1. Data first, so a bad file fails in seconds rather than after the model loads.
    step("Data")
    splits = data.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                              **data.hub_pick(cfg))  # a Hub dataset's subset and splits
    say(f"{splits.source}: {len(splits.train)} train / {len(splits.test)} held-out "
        f"conversations ({data.FORMATS[splits.fmt]})")
    for note in splits.notes:
        say(note)

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

    # 3. Tokenize through the model's chat template; loss on assistant replies only.
    train_enc, notes = data.encode_all(tokenizer, splits.train, cfg.max_seq_length, "train")
    test_enc, test_notes = data.encode_all(tokenizer, splits.test, cfg.max_seq_length, "held-out")
    for note in notes + test_notes:
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

    # 5. Evaluate before training.
    step("Evaluate before training")
    before, gens_before = ranks.on_main(evaluate.evaluate, model, tokenizer, splits.test,
                                         test_enc, cfg.max_new_tokens, cfg.eval_samples)
    say(f"before: {before}")

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

    # 7. Evaluate after training, on the same held-out prompts.
    step("Evaluate after training")
    after, gens_after = ranks.on_main(evaluate.evaluate, model, tokenizer, splits.test,
                                       test_enc, cfg.max_new_tokens, cfg.eval_samples)
    say(f"after:  {after}")
    for b, a in list(zip(gens_before, gens_after))[:3]:
        say(f"[dim]prompt:[/] {escape(b.prompt[-1]['content'])}\n  [dim]before:[/] {escape(b.reply[:120])}"
            f"\n  [dim]after:[/]  {escape(a.reply[:120])}")

    # 8. Export. export.save_adapter calls model.save_pretrained (the LoRA weights, naming
    #    its base portably) and export.save_merged merges it in float32 with plain PEFT (saved in
    #    merge_dtype, with merged/merge_report.json: what the cast lost), each
    #    into a temporary folder renamed into place with the stop set in generation_config.json;
    #    export_and_verify then loads each in a fresh process and checks it stops at the end
    #    of its turn.
    step("Export")
    probe = next((e for e in splits.test if e.expect), splits.test[0])
    exports = ranks.on_main(export.export_and_verify, model, tokenizer, cfg.export,
                             Path(cfg.output_dir), evaluate.prompt_of(probe), progress=say,
                             gguf_quant=cfg.gguf_quant,
                             base=plan.choice, merge_dtype=cfg.merge_dtype, held_out=test_enc)

    # 9. Summary table, metrics.json and report.png.
    metrics = ranks.on_main(finish, "chat", cfg, plan, result, before, after, exports, started,
                             held_out=len(splits.test))
    export.require_ok(exports)  # an export that does not load or stop fails the run (exit 1)

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        ranks.on_main(hub.push, Path(cfg.output_dir), metrics, cfg.push, cfg.push_private,
                       progress=say)
    ranks.leave()
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(ChatConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
