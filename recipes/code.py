"""Code fine-tuning with Unsloth: a task description in, code that passes its tests out.

    make recipe=code                                    # built-in Python tasks, pass@1 before/after
    make recipe=code ARGS="eval=humaneval eval_limit=40"
    python recipes/code.py --help
    python -m kit code eval=humaneval                   # wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    r = recipe("code")
    r.main(r.CodeConfig(eval="humaneval", eval_limit=40))

Generated code is only ever run by kit/sandbox.py: a separate process with time, memory and
file limits, no network and a temporary folder. A crash or hang counts as a failed problem.
Fill-in-the-middle on source files is its own recipe, recipes/fim.py.

The steps, in order, with the Unsloth and TRL calls in main(): check the sandbox → read the
tasks and the problems to score → the memory plan → FastLanguageModel.from_pretrained →
tokenize → the plan for the longest row → FastLanguageModel.get_peft_model → pass@1 and loss
before training → SFTTrainer(args=SFTConfig).train() → pass@1 and loss again → export
(save_pretrained / a float32 merge, each checked in a fresh process) → metrics.json →
push to the Hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import (
    adapters,
    code,
    data,
    evaluate,
    export,
    hub,
    launch,
    models,
    preflight,
    ranks,
    runplan,
    sandbox,
    train,
)
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import escape, finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from trl import SFTTrainer
from unsloth import FastLanguageModel


@dataclass
class CodeConfig(RecipeConfig):
    data: str = "builtin:pytasks"
    """Prompt/completion (or chat) rows with a `tests` column; `builtin:pytasks`: the kit's
    small Python tasks."""
    output_dir: str = "outputs/code"
    """Where adapter/, merged/ and metrics.json go."""
    eval: Literal["heldout", "humaneval"] = "heldout"
    """pass@1 on the data's held-out problems, or on OpenAI's HumanEval."""
    eval_limit: int = 0
    """Score only the first N evaluation problems (0: all)."""
    eval_data: str = ""
    """Held-out problems; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.1
    """Share of `data` held out when there is no test split."""
    max_new_tokens: int = 0
    """Longest generated solution during evaluation; 0 (auto): 512 for eval=humaneval, 256
    for held-out problems. An answer also ends where its code block closes."""
    exec_timeout: float = 5.0
    """Seconds each generated solution may run with its tests."""
    sandbox: Literal["strict", "best-effort"] = "strict"
    """`strict`: stop before loading the model if this machine cannot isolate generated code
    with namespaces (kit/sandbox.py); `best-effort`: run it anyway with weaker isolation."""


def main(cfg: CodeConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here
    isolation = sandbox.check(cfg.sandbox)
    if isolation:
        say(isolation)  # a machine that cannot isolate generated code stops here

    # 1. Data: tasks to train on, and the problems (with tests) pass@1 is measured on.
    step("Data")
    splits = data.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed,
                              **data.hub_pick(cfg))  # a Hub dataset's subset and splits
    problems = code.humaneval_examples(cfg.eval_limit) if cfg.eval == "humaneval" else (
        splits.test[: cfg.eval_limit] if cfg.eval_limit else splits.test)
    code.check_tasks(problems, cfg.eval_data or cfg.data)
    say(f"{cfg.data}: {len(splits.train)} training tasks; pass@1 on {len(problems)} "
        f"{'HumanEval' if cfg.eval == 'humaneval' else 'held-out'} problems")

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

    # 3. Tokenize through the chat template; loss on the answer.
    train_enc, notes = data.encode_all(tokenizer, splits.train, cfg.max_seq_length, "train")
    test_enc, _ = data.encode_all(tokenizer, problems, cfg.max_seq_length, "evaluation")
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
    new_tokens = code.new_tokens(cfg.max_new_tokens, "instruct", cfg.eval)

    def measure(when: str) -> dict:
        step(f"Evaluate {when}")
        loss = evaluate.heldout_loss(model, tokenizer, test_enc)
        result, attempts = code.pass_at_1(model, tokenizer, problems, new_tokens, cfg.exec_timeout)
        failed = [a for a in attempts if not a.outcome.passed]
        shown = failed[:1] + [a for a in attempts if a.outcome.passed][:1]
        for a in shown:  # one failure and one success, when there are
            say(f"[dim]{escape(a.prompt[:90])}[/]\n{escape(a.code[:240])}\n→ {escape(a.outcome.reason)}")
        result["loss"] = round(loss, 4)
        say(f"{when}: {result}")
        return result

    # 5. Evaluate before training: pass@1 in the sandbox, and the held-out loss.
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

    # 7. Evaluate after training, on the same problems.
    after = ranks.on_main(measure, "after training")

    # 8. Export. export.save_adapter calls model.save_pretrained (the LoRA weights, naming
    #    its base portably) and export.save_merged merges it in float32 with plain PEFT (saved in
    #    merge_dtype, with merged/merge_report.json: what the cast lost), each
    #    into a temporary folder renamed into place; export_and_verify then reloads each in a
    #    fresh process and answers a held-out task.
    step("Export")
    exports = ranks.on_main(export.export_and_verify, model, tokenizer, cfg.export,
                             Path(cfg.output_dir), evaluate.prompt_of(problems[0]), progress=say,
                             max_new_tokens=max(160, new_tokens), gguf_quant=cfg.gguf_quant,
                             base=plan.choice, merge_dtype=cfg.merge_dtype, held_out=test_enc)

    # 9. Summary table, metrics.json and report.png.
    metrics = ranks.on_main(finish, "code", cfg, plan, result, before, after, exports, started,
                             held_out=len(test_enc), extra={"sandbox": isolation} if isolation else None)
    export.require_ok(exports)  # an export that failed its fresh-process check fails the run

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        ranks.on_main(hub.push, Path(cfg.output_dir), metrics, cfg.push, cfg.push_private,
                       progress=say)
    ranks.leave()
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(CodeConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
