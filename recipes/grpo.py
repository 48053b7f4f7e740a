"""GRPO with Unsloth: reinforcement learning from rewards a program checks, not from examples.

    make recipe=grpo                                    # built-in sums, exact answers
    make recipe=grpo ARGS="data=builtin:pytasks adapter=outputs/code/adapter"   # code, sandbox
    python recipes/grpo.py reward=my_rewards:brevity,correct_reward
    python recipes/grpo.py --help
    python -m kit grpo max_steps=100                    # wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    r = recipe("grpo")
    r.main(r.GrpoRecipeConfig(max_steps=100))

For each prompt the model samples `num_generations` completions; reward functions score them;
each completion's advantage is its reward against its group's mean, and TRL's GRPOTrainer
raises the likelihood of the better ones. Rewards are plain functions (kit/rl.py; yours with
`reward=module:function`): the built-in ones check an `answer` column exactly (the default
data: sums of two numbers) or run a `tests` column in the sandbox (code). docs/grpo.md.

The steps, in order, with the Unsloth and TRL calls in main(): the prompts and the reward
functions (checked before anything loads) → the memory plan, generation counted →
FastLanguageModel.from_pretrained → FastLanguageModel.get_peft_model (or the adapter to start
from) → a baseline sample that refuses a run with nothing to learn → held-out rewards before
→ GRPOTrainer(args=GRPOConfig).train() → held-out rewards after → export (save_pretrained / a
float32 merge, each checked in a fresh process) → metrics.json → push to the Hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# kit first: it quiets the stack's import-time notices, and imports Unsloth before trl,
# transformers and peft, so Unsloth can patch them.
from kit import adapters, data, export, hub, launch, models, preflight, ranks, rl, runplan, sandbox, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import escape, finish, say, step, warn
from kit.secrets import hub_token

# isort: split
from datasets import Dataset
from unsloth import FastLanguageModel


@dataclass
class GrpoRecipeConfig(RecipeConfig):
    data: str = "builtin:sums"
    """Prompts (`prompt` as text or messages, or any chat format: its last reply is left out)
    with the columns the rewards read: `answer` (checked exactly) or `tests` (plain asserts, run
    in the sandbox). `builtin:sums` (default), `builtin:pytasks` (the code recipe's tasks)."""
    output_dir: str = "outputs/grpo"
    """Where adapter/, merged/ and metrics.json go."""
    max_steps: int = 30
    """Optimizer steps to train."""
    batch_size: int = 8
    """Completions per optimizer step: batch_size / num_generations prompts, each sampled
    num_generations times (a multiple of num_generations)."""
    num_generations: int = 4
    """Completions sampled per prompt: the group each reward is compared within (2 or more)."""
    generation_batch_size: int = 0
    """Completions generated at once (a multiple of batch_size and num_generations); 0: batch_size,
    one generation per optimizer step."""
    max_completion_length: int = 0
    """Longest sampled completion, in tokens; one cut there is left out of the loss. 0: by the
    data's kind, 32 for `answer` data (short replies), 256 for `tests` (a whole function in a
    code block), 128 otherwise."""
    temperature: float = 0.7
    """Sampling temperature for the completions (and the baseline sample). At 1.0 the small
    models' replies ramble and are rarely right: no reward to learn from."""
    reward: str = ""
    """Reward functions, comma-separated: `module:function` (yours: fn(prompts, completions,
    **kwargs) -> list[float]) or a built-in name (correct_reward, format_reward, code_reward,
    code_format_reward). Empty: correct_reward,format_reward for `answer` data,
    code_reward,code_format_reward for `tests` data."""
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    """TRL's GRPO loss: dapo (its default: token-level normalisation), grpo, dr_grpo, bnpo."""
    beta: float = 0.0
    """KL penalty against the model without its new adapter updates; 0 (TRL's default): none,
    and no reference pass."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide each advantage by its group's reward spread (group), the batch's, or not (none)."""
    adapter: str = ""
    """Start from this LoRA adapter (e.g. outputs/code/adapter, saved by the code recipe on the
    same base); its r, alpha, target modules and variant are kept. Empty: a new adapter."""
    baseline_prompts: int = 4
    """Training prompts sampled before training to check there is something to learn."""
    eval_data: str = ""
    """Held-out prompts; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.1
    """Share of `data` held out when there is no test split."""
    eval_limit: int = 0
    """Score only the first N held-out prompts (0: all)."""
    exec_timeout: float = 5.0
    """Seconds each generated program may run with its tests (code rewards)."""
    sandbox: Literal["strict", "best-effort"] = "strict"
    """Code rewards: `strict` stops before loading the model if this machine cannot isolate
    generated code; `best-effort` runs it with weaker isolation (kit/sandbox.py)."""
    use_vllm: bool = False
    """Generate with vLLM (a GPU and the optional vLLM extra, requirements/vllm.txt);
    false: plain transformers generation."""
    learning_rate: float | None = None
    """Peak learning rate. Default: 1e-3 for models under 0.5B parameters, else 2e-4; a tenth of
    that when starting from `adapter=`."""
    warmup_steps: int = 0
    """Linear warm-up steps before the linear decay."""
    save_steps: int = 10
    """Checkpoint every N steps into output_dir/checkpoints (0: never)."""


def main(cfg: GrpoRecipeConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here
    say(rl.check_groups(cfg))  # a batch that does not split into groups stops here

    # 1. The prompts and the reward functions, checked before the model loads: a bad file, a
    #    reward= that does not import or cannot take TRL's arguments, fail in seconds.
    step("Data and rewards")
    prompts = rl.load_prompts(cfg)
    if cfg.eval_limit:
        prompts.test = prompts.test[: cfg.eval_limit]
    rewards = rl.load_rewards(cfg, prompts)
    cfg.max_completion_length = rl.completion_length(cfg, prompts.kind)
    say(f"{cfg.data}: {len(prompts.train)} training / {len(prompts.test)} held-out prompts; "
        f"columns {', '.join(prompts.columns) or 'none'}; rewards: "
        f"{', '.join(rl.name_of(f) for f in rewards)}")
    for note in prompts.notes:
        say(note)
    if prompts.kind == "code" or any(isinstance(f, rl.CodeReward) for f in rewards):
        isolation = sandbox.check(cfg.sandbox)
        if isolation:
            say(isolation)

    if (n := launch.processes(cfg, say)) > 1:
        return launch.run_ranks(cfg, __file__, n, say)

    # 2. Model. The memory plan counts the generation batch's KV cache and logits as well as
    #    training; a run that cannot fit stops here, before any weight loads.
    step("Model")
    plan = runplan.plan_run(cfg, say)
    rl.check_vllm(cfg, plan.device.gpu)
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
    data.check_template(tokenizer)

    # 3. Prompts that leave room for a whole completion; the plan for the longest one.
    room = cfg.max_seq_length - cfg.max_completion_length
    prompts.train, note = rl.fit_prompts(tokenizer, prompts.train, room, "training")
    prompts.test, test_note = rl.fit_prompts(tokenizer, prompts.test, room, "held-out")
    for line in (note, test_note):
        if line:
            warn(line)
    longest = max(len(tokenizer(data.render(tokenizer, r["prompt"], add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"]) for r in prompts.train)
    plan = runplan.fit_rows(plan, longest + cfg.max_completion_length, say)

    # 4. LoRA on every linear projection (or the adapter's own), its weights loaded when
    #    starting from one.
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

    # 5. A baseline sample: refused here if most completions are cut at max_completion_length,
    #    or if every completion of each sampled prompt gets the same reward (nothing to learn).
    step("Baseline sample")
    sample = ranks.on_main(rl.baseline, model, tokenizer, prompts.train, rewards, cfg, prompts.kind)
    say(f"baseline: {sample.record()}")

    def measure(when: str) -> dict:
        step(f"Evaluate {when}")
        result, gens = rl.evaluate(model, tokenizer, prompts.test, rewards, cfg, prompts.kind)
        for row, g in list(zip(prompts.test, gens))[:2]:
            say(f"[dim]{escape(row['prompt'][-1]['content'][:90])}[/]\n→ {escape(g.reply[:160])}")
        say(f"{when}: {result}")
        return result

    before = ranks.on_main(measure, "before training")

    # 6. Train. TRL's GRPOTrainer on the Unsloth model: it samples num_generations completions
    #    per prompt (plain generate, or vLLM with use_vllm=true), calls each reward function,
    #    and logs each one's mean (rewards/NAME/mean).
    step(f"Train {cfg.max_steps} steps")
    resume_from = train.resume_point(plan, cfg, say)
    trainer = rl.Trainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=rewards,
        train_dataset=Dataset.from_list(prompts.train),  # prompt + the columns rewards read
        args=rl.grpo_config(cfg, plan, rewards),
        callbacks=[*train.callbacks(cfg, say), rl.RewardLine(rewards, say, max(cfg.max_steps // 10, 1))],
    )
    train.quiet(trainer)
    stats = train.already_trained(trainer, resume_from) or trainer.train(resume_from_checkpoint=resume_from)
    result = train.result_of(trainer, stats, resume_from, rows=len(prompts.train))

    # 7. Evaluate after training, on the same held-out prompts.
    after = ranks.on_main(measure, "after training")

    # 8. Export, each export checked in a fresh process on a held-out prompt.
    step("Export")
    exports = ranks.on_main(export.export_and_verify, model, tokenizer, cfg.export,
                             Path(cfg.output_dir), prompts.test[0]["prompt"], progress=say,
                             max_new_tokens=max(64, cfg.max_completion_length),
                             gguf_quant=cfg.gguf_quant, base=plan.choice, merge_dtype=cfg.merge_dtype)

    # 9. Summary table, metrics.json (with the baseline sample and each reward per step).
    extra = {"baseline": sample.record(), "train_rewards": rl.train_rewards(trainer, rewards),
             "rewards": [rl.name_of(f) for f in rewards]}
    metrics = ranks.on_main(finish, "grpo", cfg, plan, result, before, after, exports, started,
                             held_out=len(prompts.test), extra=extra)
    export.require_ok(exports)

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        ranks.on_main(hub.push, Path(cfg.output_dir), metrics, cfg.push, cfg.push_private,
                       progress=say)
    ranks.leave()
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(GrpoRecipeConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
