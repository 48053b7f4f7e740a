"""The run's plan, settled before and around the Unsloth calls, one step at a time: the device,
the model and the memory plan for the worst case (`plan_run`, from the config, before any weight
loads), the plan again for the data's longest row (`fit_rows`) or packed passes (`fit_packed`),
and, once the adapters are on, the parameter counts and the learning rate (`with_adapters`).
Each step takes the RunPlan and returns a new one; only `plan_run` reads the config."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kit import choice as choice_mod
from kit import gpus, memory, ranks
from kit import plan as plan_mod
from kit.choice import ModelChoice
from kit.device import Device, detect_device, visible_gpus
from kit.errors import fail
from kit.memory import Request, Settings


@dataclass(frozen=True)
class RunPlan:
    """What a recipe settles before and around the Unsloth calls, and what metrics.json
    reports: the device, the model, the memory plan's settings; once the adapters are on, the
    parameter counts and the learning rate."""

    device: Device
    choice: ModelChoice | None
    settings: Settings
    shape: plan_mod.Shape | None = None
    trainable: int = 0
    total: int = 0
    learning_rate: float = 0.0
    want: Request | None = None

    @property
    def cards(self) -> int:
        return visible_gpus(self.device) if self.settings.split else 1

    @property
    def device_map(self) -> dict:
        """from_pretrained's placement: the layers spread over every GPU when the plan splits
        them (kit.gpus.parallel), else Unsloth's default (this process's GPU)."""
        return {"device_map": "balanced"} if self.settings.split else {}

    def with_settings(self, chosen: plan_mod.Plan | None = None, **changes) -> RunPlan:
        settings = dataclasses.replace(self.settings, **changes)
        return dataclasses.replace(self, settings=settings.apply(chosen) if chosen else settings)


def plan_run(cfg, say=print, choice: ModelChoice | None = None) -> RunPlan:
    """Pick the device and the model (unless `choice` is already made) and plan the memory for
    the worst case (every row max_seq_length long): a run that cannot fit the card stops here,
    before any weight loads. Also fails here when `lora.target_modules` names a layer the
    model lacks."""
    want = Request.of(cfg)
    device = detect_device()
    choice = choice or choice_mod.resolve_model(want.model, device, say, want.gpu_model)
    settings = memory.decide_settings(want, device)
    say(f"device: {device.name} ({device.memory_gib:.0f} GiB)")
    say(f"model: {choice.label} ({choice.reason}); " + "; ".join(settings.notes))
    # Also brings a Hub model's config.json into the cache, where the target check reads it.
    shape, settings = memory.read_shape(choice, want, settings, say)
    choice_mod.check_targets(want.target_modules, choice)
    cards = 1
    if not ranks.in_ranks() and visible_gpus(device) > 1:
        way = gpus.parallel(want, say, device)  # here: one process, so the layers may be split
        settings.split, cards = way.split, (visible_gpus(device) if way.split else 1)
        say(way.why)
    if shape is not None:
        worst, _ = memory.plan_memory(want, device, shape, want.max_seq_length,
                                      settings.load_in_4bit, cards=cards)
        if not worst.fits:
            fail(f"{choice.label} at max_seq_length={want.max_seq_length} {worst.message}")
        settings = settings.apply(worst)
    return RunPlan(device, choice, settings, shape, want=want)


def fit_rows(run: RunPlan, longest: int | None = None, say=print) -> RunPlan:
    """The memory plan again for the data's longest row (a shorter one only frees memory for
    a faster setting): the checkpointing mode get_peft_model gets, and the micro-batch."""
    if run.shape is None:
        return run
    want = run.want
    seq = min(want.max_seq_length, longest or want.max_seq_length)
    chosen, source = memory.plan_memory(want, run.device, run.shape, seq,
                                        run.settings.load_in_4bit, cards=run.cards)
    run = run.with_settings(chosen if chosen.fits else None)
    memory.say_plan(run.settings.plan, source, say)
    return run


def fit_packed(run: RunPlan, lengths: list[int], say=print) -> RunPlan:
    """Packed micro-batches: plan again counting each pass's tokens (the sum of its rows, at
    worst the micro-batch's count of the data's longest rows) rather than rows × the longest
    row, keeping the checkpointing mode the adapters were attached with."""
    if run.shape is None or run.settings.plan is None:
        return run
    want = run.want
    mode = run.settings.plan.setting.checkpointing
    seq = min(want.max_seq_length, max(lengths, default=want.max_seq_length))
    chosen, source = memory.plan_memory(want, run.device, run.shape, seq,
                                        run.settings.load_in_4bit, row_lengths=tuple(lengths),
                                        checkpointing=mode, cards=run.cards)
    if not chosen.fits:
        return run
    memory.say_plan(chosen, source, say)
    return run.with_settings(chosen)


def default_learning_rate(total_params: int, further: bool = False) -> float:
    # Small models need a larger step to learn a new behaviour in a few dozen steps
    # (SmolLM2-135M learns the built-in persona in 60 steps at 1e-3); 2e-4 is the usual
    # LoRA rate for 1B+ models. Training a trained adapter further (adapter= in dpo and grpo)
    # takes a tenth: GRPO on the code tasks from the code recipe's adapter fell from pass@1 0.72
    # to 0.38 in 20 steps at 1e-3 and rose to 0.81 at 1e-4 (docs/grpo.md).
    rate = 1e-3 if total_params < 500_000_000 else 2e-4
    return rate / 10 if further else rate


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight counts its unpacked elements."""

    def size(p) -> int:
        state = getattr(p, "quant_state", None)
        return state.shape.numel() if state is not None else p.numel()

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return trainable, total


def with_adapters(run: RunPlan, model, say=print, further: bool = False) -> RunPlan:
    """Count the parameters of the model get_peft_model returned, and settle the learning rate
    (`further`: the adapter is a trained one, loaded to train further)."""
    trainable, total = count_parameters(model)
    rate = run.want.learning_rate or default_learning_rate(total, further)
    why = " (a tenth of a new adapter's: training a trained one further)" if (
        further and not run.want.learning_rate) else ""
    config = getattr(model, "peft_config", {}).get("default")
    say(f"LoRA r={getattr(config, 'r', run.want.r)}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); learning rate {rate:g}{why}")
    return dataclasses.replace(run, trainable=trainable, total=total, learning_rate=rate)
