"""The memory plan applied to one run: what the config asks (`Request`, read from it once), the
settings the plan picks for this device (precision, checkpointing mode, micro-batch), and the
lines that say so. The plan itself, the arithmetic, is kit.plan; no Unsloth here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kit import plan as plan_mod
from kit import ranks
from kit.choice import ModelChoice
from kit.device import Device, free_memory, host_free_gib
from kit.errors import fail


@dataclass(frozen=True)
class Request:
    """What a recipe's config asks of the model, the memory plan and the optimizer: read from
    the config once (`of`), so nothing past the plan reaches back into it."""

    model: str
    gpu_model: str  # `model=auto` on a GPU (the recipe's choice)
    max_seq_length: int
    batch_size: int  # the effective batch, all ranks together
    micro_batch_size: int  # 0: the plan picks
    checkpointing: str | None  # a plan mode, or None for auto
    load_in_4bit: bool | None
    r: int
    target_modules: str
    gpu_memory_gib: float
    memory_margin: float
    nproc: int
    learning_rate: float | None
    # Sequences each example puts through the model in one pass: 2 for a preference pair (DPO
    # runs chosen and rejected together, each padded to the longer), so a micro-batch of n
    # pairs holds the tokens of 2n sequences.
    sequences_per_row: int = 1
    # Completions sampled at once before each step, all ranks together (GRPO's generation
    # batch); 0: the recipe generates nothing while training.
    generation_batch: int = 0

    @classmethod
    def of(cls, cfg) -> Request:
        generation = (getattr(cfg, "generation_batch_size", 0) or cfg.batch_size
                      if hasattr(cfg, "num_generations") else 0)
        return cls(cfg.model, type(cfg).gpu_model, cfg.max_seq_length, cfg.batch_size,
                   cfg.micro_batch_size, plan_mod.mode_of(str(cfg.gradient_checkpointing)),
                   cfg.load_in_4bit, cfg.lora.r, cfg.lora.target_modules, cfg.gpu_memory_gib,
                   cfg.memory_margin, cfg.nproc, cfg.learning_rate,
                   getattr(type(cfg), "sequences_per_row", 1), generation)

    @property
    def plan_targets(self) -> tuple[str, ...]:
        from kit.config import target_names

        names = tuple(target_names(self.target_modules))
        return plan_mod.AUTO_TARGETS if names in (("auto",), ("all-linear",)) else names


@dataclass
class Settings:
    load_in_4bit: bool
    gradient_checkpointing: bool | str  # as Unsloth's get_peft_model takes it
    notes: list[str]
    micro_batch: int = 1
    grad_accum: int = 1
    plan: plan_mod.Plan | None = None
    split: bool = False  # layers spread over every GPU in one process (kit.gpus.parallel)
    packing: bool = False  # padding-free micro-batches (kit.train.choose_packing)
    packing_reason: str = ""

    def apply(self, chosen: plan_mod.Plan) -> Settings:
        """These settings with the plan's checkpointing mode and micro-batch."""
        return dataclasses.replace(self, plan=chosen,
                                   gradient_checkpointing=UNSLOTH_GC[chosen.setting.checkpointing],
                                   micro_batch=chosen.setting.micro_batch,
                                   grad_accum=chosen.setting.grad_accum)


UNSLOTH_GC: dict[str, bool | str] = {"off": False, "on": True, "unsloth": "unsloth"}


def decide_settings(want: Request, device: Device) -> Settings:
    """Fill in the `auto` precision for this device; an explicit setting always wins. The
    checkpointing mode and micro-batch come from the memory plan (`plan_memory`)."""
    notes = []
    four_bit = want.load_in_4bit
    if four_bit is None:
        four_bit = device.gpu
        notes.append("4-bit NF4 base (GPU)" if four_bit else "16-bit base (CPU: no 4-bit merge)")
    elif four_bit and not device.gpu:
        fail("load_in_4bit=true needs a GPU: bitsandbytes' 4-bit layers and Unsloth's merge "
             "into a 4-bit base do not run on CPU")
    share = ranks.per_rank_batch(want)  # batch_size is the effective batch, all ranks together
    micro = want.micro_batch_size or share
    # Until a plan replaces it (a model whose config has no plan): the old safe choice.
    mode = want.checkpointing or ("unsloth" if device.gpu else "off")
    return Settings(four_bit, UNSLOTH_GC[mode], notes, micro, share // micro)


def memory_budget(want: Request, device: Device) -> tuple[float, str]:
    """(GiB the run may plan for, where that number comes from)."""
    if want.gpu_memory_gib:
        return want.gpu_memory_gib, f"gpu_memory_gib={want.gpu_memory_gib:g}"
    return free_memory(device)


def plan_memory(want: Request, device: Device, shape: plan_mod.Shape, seq: int,
                four_bit: bool, row_lengths: tuple[int, ...] = (),
                checkpointing: str | None = None, world: int = 0,
                cards: int = 1) -> tuple[plan_mod.Plan, str]:
    """The fastest checkpointing mode and micro-batch that fit, for sequences up to `seq`, and
    where the memory figure came from. Per GPU: each of `world` data-parallel ranks (default:
    this run's) takes its share of `batch_size`; `cards` > 1 plans one process whose layers are
    split over that many cards like this one (less a tenth, as layers do not split evenly).
    Rows of several sequences each (`want.sequences_per_row`: a preference pair's chosen and
    rejected) are planned as one sequence that many times as long: the same tokens per pass."""
    seq *= want.sequences_per_row
    free, source = memory_budget(want, device)
    if cards > 1:
        free, source = free * cards * 0.9, f"{cards} × {source}, layers split"
    gpu = device.gpu or bool(want.gpu_memory_gib)
    share = ranks.per_rank_batch(want, world or None)
    chosen = plan_mod.choose(
        shape, budget_gib=plan_mod.usable_gib(free, want.memory_margin),
        batch_size=share,
        seq=seq, checkpointing=checkpointing or want.checkpointing,
        micro_batch=want.micro_batch_size or None, r=want.r, targets=want.plan_targets,
        four_bit=four_bit,
        # Offloading activations to host memory saves nothing on a CPU.
        modes=plan_mod.MODES if gpu else ("off", "on"), tflops=plan_mod.peak_tflops(device.name),
        # Offloaded activations may take half the host's free RAM; the rest is the data and Python.
        host_gib=host_free_gib() / 2, row_lengths=row_lengths,
        generation_rows=want.generation_batch * share // want.batch_size,  # this rank's share
    )
    return chosen, source


def say_plan(chosen: plan_mod.Plan, source: str, say) -> None:
    say(f"memory plan ({source}): {chosen.message}")
    say(f"  estimate: {chosen.estimate.describe()} GiB")
    if chosen.faster_not_fitting:
        say("  faster, but does not fit: " + "; ".join(chosen.faster_not_fitting))


def read_shape(choice: ModelChoice, want: Request, settings: Settings,
               say=print) -> tuple[plan_mod.Shape | None, Settings]:
    """The model's shape and the settings; without a shape (no plan for this model), after
    saying in one line why, the safe settings the run falls back to: one row per pass,
    checkpointing as decided (offloaded on a GPU unless set), accumulation making up
    `batch_size`."""
    try:
        return plan_mod.read_shape(choice.path), settings
    except (OSError, ValueError) as exc:
        micro = want.micro_batch_size or 1
        settings = dataclasses.replace(settings, micro_batch=micro,
                                       grad_accum=ranks.per_rank_batch(want) // micro)
        gc = {"unsloth": "offloaded checkpointing", True: "checkpointing",
              False: "no checkpointing"}[settings.gradient_checkpointing]
        say(f"no memory plan for {choice.label}: {str(exc).splitlines()[0][:160]}; using safe "
            f"settings: {gc}, micro-batch {settings.micro_batch} × {settings.grad_accum} accumulation")
        return None, settings
