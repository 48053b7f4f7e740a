"""Fill-in-the-middle with Unsloth: teach a code model to fill a hole in your own source files.

    make recipe=fim                                     # on a GPU: the kit's own sources
    make recipe=fim ARGS="data=path/to/src model=unsloth/Qwen2.5-Coder-1.5B-bnb-4bit"
    python recipes/fim.py data=path/to/src model=unsloth/Qwen2.5-Coder-1.5B-bnb-4bit
    python recipes/fim.py --help

In a notebook cell:
    from kit.recipe import recipe
    r = recipe("fim")
    r.main(r.FimConfig(data="path/to/src"))

With its defaults on a GPU it fine-tunes Qwen2.5-Coder-1.5B (4-bit) on the kit's own Python
files. The model needs fill-in-the-middle tokens; without them (the embedded SmolLM2, which
`model=auto` picks on a CPU) the run stops in seconds, before the weights load.

Holes of 1-3 lines are cut out of source files (a folder of .py files, or a `text_column` of a
data file) and trained prefix → suffix → middle with the tokenizer's own fill-in-the-middle
tokens (Qwen2.5-Coder, StarCoder or DeepSeek-Coder style), loss on the middle. Held-out files
give the holes it is measured on: the share of middles filled exactly, and the loss.

The steps, in order, with the Unsloth and TRL calls in main(): read the files and cut the holes
→ the model's FIM tokens, from its tokenizer alone → the memory plan →
FastLanguageModel.from_pretrained → tokenize → the plan for the longest row →
FastLanguageModel.get_peft_model → exact fills and loss before training →
SFTTrainer(args=SFTConfig).train() → exact fills and loss again → export
(save_pretrained / a float32 merge, each checked in a fresh process on a held-out hole)
→ metrics.json → push to the Hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import adapters, code, data, evaluate, export, hub, launch, models, preflight, ranks, runplan, train
from kit.choice import resolve_model
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.device import detect_device
from kit.errors import fail
from kit.report import finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from trl import SFTTrainer
from unsloth import FastLanguageModel


@dataclass
class FimConfig(RecipeConfig):
    # `model=auto` on a GPU: Qwen2.5-Coder's base model, 4-bit; its tokenizer has FIM tokens.
    gpu_model: ClassVar[str] = "unsloth/Qwen2.5-Coder-1.5B-bnb-4bit"

    data: str = "builtin:kit-sources"
    """Source code: a folder of .py files, a .jsonl/.json/.csv/.parquet file or Hub dataset with
    a `text_column`, or `builtin:kit-sources` (the kit's own Python files)."""
    output_dir: str = "outputs/fim"
    """Where adapter/, merged/ and metrics.json go."""
    text_column: str = "content"
    """The column holding source code in a data file."""
    fim_per_file: int = 4
    """Holes cut from each source file."""
    eval_limit: int = 0
    """Score only the first N held-out holes (0: all)."""
    eval_fraction: float = 0.1
    """Share of the files held out (at least one)."""
    max_new_tokens: int = 0
    """Longest generated middle during evaluation; 0 (auto): 64."""


def main(cfg: FimConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here
    if not cfg.data:
        fail("fim needs source files: data=path/to/folder (of .py files) or a data file")

    # 1. Data: holes cut from the training files, and from the held-out ones.
    step("Data")
    sources = code.read_sources(cfg.data, cfg.text_column, cfg.data_split, cfg.data_subset)
    n_test = max(1, round(len(sources) * cfg.eval_fraction)) if len(sources) > 1 else 0
    if n_test == 0:
        fail(f"{cfg.data}: FIM needs at least two source files (one is held out)")
    train_cases = code.fim_examples(sources[n_test:], cfg.fim_per_file, cfg.seed)
    test_cases = code.fim_examples(sources[:n_test], 2, cfg.seed + 1)[: cfg.eval_limit or None]
    if not train_cases or not test_cases:
        fail(f"{cfg.data}: files too short to cut fill-in-the-middle holes from")
    say(f"{cfg.data}: {len(train_cases)} training holes from {len(sources) - n_test} files; "
        f"{len(test_cases)} held-out holes from {n_test}")

    # The model's fill-in-the-middle tokens, read from its tokenizer alone: a model without
    # them stops here, in seconds, before any weight loads.
    step("Model")
    choice = resolve_model(cfg.model, detect_device(), say, cfg.gpu_model)
    fim = code.fim_tokens_before_load(choice.path, choice.label, cfg.trust_remote_code, cfg.gpu_model)
    say(f"fill-in-the-middle tokens ({fim[0]} style): {' '.join(fim[1:])}")

    # Several GPUs (or nproc=N): one training process per GPU through torch's launcher; this
    # process waits for them and returns rank 0's metrics. In those ranks, rank 0 alone
    # evaluates, exports and pushes (ranks.on_main); the others wait for its results.
    if (n := launch.processes(cfg, say)) > 1:
        return launch.run_ranks(cfg, __file__, n, say)

    # 2. Model. The memory plan first (4-bit NF4 on a GPU, 16-bit on CPU; the checkpointing
    #    mode and micro-batch that fit): a run that cannot fit the card stops here, before any
    #    weight loads. A model that cannot load is one line, not a traceback.
    plan = runplan.plan_run(cfg, say, choice)
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

    # 3. Tokenize with the model's own FIM tokens: prefix, suffix, then the middle (the loss).
    train_enc = [code.encode_fim(tokenizer, fim, p, m, s, cfg.max_seq_length) for p, m, s in train_cases]
    test_enc = [code.encode_fim(tokenizer, fim, p, m, s, cfg.max_seq_length) for p, m, s in test_cases]
    for enc, what in ((train_enc, "training"), (test_enc, "held-out")):
        if any(e.truncated for e in enc):
            warn(f"{sum(e.truncated for e in enc)} of {len(enc)} {what} holes had their prefix/suffix "
                 f"cut to max_seq_length={cfg.max_seq_length} (sentinels and middle kept)")
    train_enc = [e for e in train_enc if e.input_ids]

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
    new_tokens = code.new_tokens(cfg.max_new_tokens, "fim", "heldout")

    def measure(when: str) -> dict:
        step(f"Evaluate {when}")
        result = {"fim_exact": code.fim_exact(model, tokenizer, fim, test_cases, cfg.max_seq_length,
                                              new_tokens),
                  "loss": round(evaluate.heldout_loss(model, tokenizer, test_enc), 4)}
        say(f"{when}: {result}")
        return result

    # 5. Evaluate before training: held-out middles filled exactly, and the loss.
    before = ranks.on_main(measure, "before training")

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

    # 7. Evaluate after training, on the same holes.
    after = ranks.on_main(measure, "after training")

    # 8. Export. export.save_adapter calls model.save_pretrained (the LoRA weights, naming
    #    its base portably) and export.save_merged merges it in float32 with plain PEFT (saved in
    #    merge_dtype, with merged/merge_report.json: what the cast lost), each
    #    into a temporary folder renamed into place; export_and_verify then reloads each in a
    #    fresh process and fills a held-out hole.
    step("Export")
    probe = code.fim_prompt(tokenizer, fim, test_cases[0], cfg.max_seq_length)
    exports = ranks.on_main(export.export_and_verify, model, tokenizer, cfg.export,
                             Path(cfg.output_dir), probe, progress=say,
                             max_new_tokens=max(160, new_tokens), gguf_quant=cfg.gguf_quant,
                             base=plan.choice, merge_dtype=cfg.merge_dtype, held_out=test_enc)

    # 9. Summary table, metrics.json and report.png.
    metrics = ranks.on_main(finish, "fim", cfg, plan, result, before, after, exports, started,
                             held_out=len(test_enc))
    export.require_ok(exports)  # an export that failed its fresh-process check fails the run

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        ranks.on_main(hub.push, Path(cfg.output_dir), metrics, cfg.push, cfg.push_private,
                       progress=say)
    ranks.leave()
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(FimConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
