"""Training: TRL's SFTTrainer (as patched by Unsloth) on pre-tokenized, prompt-masked data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import unsloth  # noqa: F401  (must patch trl/transformers first)
from datasets import Dataset
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import DataCollatorForSeq2Seq, TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from kit import checkpoints, ranks
from kit.config import loggers
from kit.data import Encoded


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int  # real (non-pad) tokens seen, all ranks together
    rows: int = 0  # training examples
    world_size: int = 1  # training processes (kit.launch)
    ranks_agree: bool = True  # every rank ended with the same adapter weights
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class PaddedCollator:
    """Pads a batch (labels with -100). The trainer counts the real tokens each step trains on
    (`include_num_input_tokens_seen`), summed over the ranks; the data loader may collate a
    batch ahead that no step uses, so the collator does not count."""

    def __init__(self, tokenizer):
        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def __call__(self, features):
        return self.inner(features)


class PackingCollator(PaddedCollator):
    """Padding-free: a micro-batch's rows laid end to end in one row, no pad token anywhere.

    TRL's collator does the layout (position ids restart at 0 for each row, and the label at
    each row's first token becomes -100, so no row is trained to predict the next row's start;
    that label is never a target in a row alone either). `packed_seq_lengths` tells Unsloth's
    attention where rows end (varlen kernels, or a block-diagonal mask on SDPA), so no row
    attends to another; without it, Unsloth and transformers infer the same boundaries from
    the restarting position ids. The labels come in precomputed (prompts already -100)."""

    def __init__(self, tokenizer):
        self.inner = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)

    def __call__(self, features):
        rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        batch = self.inner(rows)
        lengths = [len(f["input_ids"]) for f in features]
        batch["packed_seq_lengths"] = torch.tensor(lengths, dtype=torch.int32)
        return batch


def collator_for(tokenizer, packing: bool) -> PaddedCollator:
    return PackingCollator(tokenizer) if packing else PaddedCollator(tokenizer)


@torch.no_grad()
def rows_stay_apart(model) -> tuple[bool, str]:
    """Does this model, on this device and attention backend, keep packed rows apart?

    A long random row and a short one run packed (PackingCollator's layout), the short one
    alone, and both end to end with no boundary (what a leak looks like). The short row's loss
    packed must equal its loss alone: within 1e-5 relative, or at least 20 times closer to it
    than the leaking layout is (16-bit rounding on a GPU's varlen kernels). Four tiny passes."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    gen = torch.Generator().manual_seed(0)
    first = torch.randint(vocab // 4, vocab // 2, (48,), generator=gen)
    second = torch.randint(vocab // 4, vocab // 2, (16,), generator=gen)
    ids = torch.cat([first, second])[None].to(device)
    labels = torch.cat([torch.full((49,), -100), second[1:]])[None].to(device)
    pos = torch.cat([torch.arange(48), torch.arange(16)])[None].to(device)
    lengths = torch.tensor([48, 16], dtype=torch.int32)

    def loss(**kw) -> float:
        return float(model(use_cache=False, **kw).loss)

    alone = loss(input_ids=second[None].to(device), labels=second[None].to(device))
    packed = loss(input_ids=ids, labels=labels, position_ids=pos, packed_seq_lengths=lengths)
    leaked = loss(input_ids=ids, labels=labels)
    off, leak = abs(packed - alone), abs(leaked - alone)
    ok = off <= 1e-5 * max(abs(alone), 1.0) or off * 20 <= leak
    return ok, (f"a packed row's loss {'matches' if ok else 'differs from'} its loss alone "
                f"({off:.2g} apart; a leak would be {leak:.2g})")


class RichProgressCallback(TrainerCallback):
    """One progress bar with the running loss, in place of transformers' tqdm bars."""

    def __init__(self):
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not ranks.is_main(),
        )
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-",
                                           completed=state.global_step)

    def on_step_end(self, args, state, control, **kw):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kw):
        self.progress.stop()


def to_dataset(encoded: list[Encoded]) -> Dataset:
    return Dataset.from_dict({
        "input_ids": [e.input_ids for e in encoded],
        "attention_mask": [[1] * len(e.input_ids) for e in encoded],
        "labels": [e.labels for e in encoded],
    })


def sft_config(cfg, run, checkpoint_dir: str | None = None) -> SFTConfig:
    """TRL's training arguments for this run (trainer_args). The data comes tokenized and
    prompt-masked (kit.data), so TRL is told not to prepare it."""
    s = run.settings
    return SFTConfig(
        **trainer_args(cfg, run, checkpoint_dir),
        max_length=cfg.max_seq_length,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        # Tokens trained on: a packed batch has no padding (and a pad token may equal EOS, so
        # it cannot be counted by id); a padded one counts its attention mask.
        include_num_input_tokens_seen="all" if s.packing else "non_padding",
    )


def trainer_args(cfg, run, checkpoint_dir: str | None = None) -> dict:
    """The arguments every TRL trainer of the kit gets: the memory plan's micro-batch and
    accumulation (`batch_size` is the effective batch), the learning rate settled with the
    adapters, 8-bit AdamW on a GPU, linear decay after warmup, weight decay 0.01, checkpoints
    every `save_steps` into output_dir/checkpoints/."""
    gpu, bf16, s = run.device.gpu, run.device.bf16, run.settings
    return dict(
        output_dir=checkpoint_dir or str(checkpoints.checkpoint_dir(cfg.output_dir)),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=s.micro_batch,
        gradient_accumulation_steps=s.grad_accum,
        learning_rate=run.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=min(cfg.warmup_steps, max(cfg.max_steps - 1, 0)),
        weight_decay=0.01,
        optim="adamw_8bit" if gpu else "adamw_torch",  # bitsandbytes' 8-bit AdamW needs a GPU
        bf16=gpu and bf16,
        fp16=gpu and not bf16,
        logging_steps=1,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        report_to=loggers(cfg.report_to) or "none",
        seed=cfg.seed,
        disable_tqdm=True,
        dataloader_pin_memory=gpu,
        # Several ranks (kit.launch): gloo on CPU, NCCL between GPUs; every parameter that
        # trains gets a gradient, so DDP need not search for unused ones.
        ddp_backend=None if gpu or not ranks.in_ranks() else "gloo",
        ddp_find_unused_parameters=False,
        ddp_timeout=int(ranks.WAIT.total_seconds()),
    )


def callbacks(cfg, say=print) -> list[TrainerCallback]:
    """The progress bar, and the marker that makes a checkpoint resumable once it is whole
    (copied to `checkpoint_mirror` too, if set)."""
    folder = checkpoints.checkpoint_dir(cfg.output_dir)
    return [RichProgressCallback(),
            checkpoints.CompleteMarker(folder, cfg.checkpoint_mirror, cfg.save_total_limit, say)]


def quiet(trainer) -> None:
    """transformers' own console printer repeats the progress bar's loss: remove it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def result_of(trainer, out, resume_from: str | None, rows: int) -> TrainResult:
    """What trainer.train(...) did: steps, this session's time and tokens (all ranks), the
    whole loss curve (steps before a resume too, from the checkpoint's state), and whether the
    ranks ended with the same weights."""
    result = TrainResult(steps=out.global_step, seconds=float(out.metrics.get("train_runtime", 0.0)),
                         tokens=trainer.state.num_input_tokens_seen - _tokens_before(resume_from),
                         rows=rows)
    result.world_size, result.ranks_agree = ranks.world_size(), ranks.ranks_agree(trainer.model)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    result.losses = [float(h["loss"]) for h in logged]
    result.learning_rates = [float(h.get("learning_rate", 0.0)) for h in logged]
    if not result.ranks_agree:
        from kit.report import warn

        warn(f"the {result.world_size} processes ended with different adapter weights; rank 0's "
             "are exported (report this: data-parallel training should keep them identical)")
    return result


def train(model, tokenizer, encoded: list[Encoded], cfg, *, gpu: bool, bf16: bool,
          learning_rate: float, checkpoint_dir: str, resume_from: str | None = None,
          callbacks: tuple = (), micro_batch: int | None = None, grad_accum: int = 1,
          collator: PaddedCollator | None = None, packing: bool = False) -> TrainResult:
    """The recipes' training stage in one call, for tests and the bench: SFT up to
    cfg.max_steps optimizer steps (continuing from `resume_from`, a checkpoint folder, if
    given). `packing`: padding-free micro-batches (PackingCollator) instead of padded ones;
    the same rows in the same order either way, so the loss of every step is the same."""
    from kit.device import Device
    from kit.memory import Settings
    from kit.runplan import RunPlan

    settings = Settings(False, False, [], micro_batch or cfg.batch_size, grad_accum, packing=packing)
    run = RunPlan(Device("cuda" if gpu else "cpu", "", 0.0, bf16), None, settings,
                  learning_rate=learning_rate)
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=to_dataset(encoded),
        data_collator=collator or collator_for(tokenizer, packing),
        args=sft_config(cfg, run, checkpoint_dir),
        callbacks=[RichProgressCallback(), *callbacks],
    )
    quiet(trainer)
    out = trainer.train(resume_from_checkpoint=resume_from)
    return result_of(trainer, out, resume_from, len(encoded))


def _tokens_before(checkpoint: str | None) -> int:
    """Tokens seen before this session, as a resumed checkpoint's trainer state records them."""
    if checkpoint is None:
        return 0
    import json
    from pathlib import Path

    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return 0
    return int(state.get("num_input_tokens_seen", 0))


def choose_packing(cfg, model, encoded: list[Encoded], micro_batch: int) -> tuple[bool, str]:
    """The `packing=` key for this run: (padding-free?, why), as its docstring states the rule."""
    mode = getattr(cfg, "packing", "off")
    if mode == "off":
        return False, "packing=off: padded micro-batches"
    lengths = {len(e.input_ids) for e in encoded}
    if mode == "auto" and micro_batch <= 1:
        return False, "packing off (auto): micro-batches of one row have no padding to remove"
    if mode == "auto" and len(lengths) <= 1:
        return False, "packing off (auto): every row has the same length, no padding to remove"
    ok, why = rows_stay_apart(model)
    if not ok:
        if mode == "on":
            from kit.errors import fail

            fail(f"packing=on is not safe with this model and attention backend: {why}; "
                 "use packing=off")
        return False, f"packing off (auto): not safe on this backend: {why}"
    return True, f"packing {'on' if mode == 'on' else 'on (auto)'}: padding-free micro-batches; {why}"


def prepare_output(cfg, say=print) -> None:
    """Once every check has passed, just before training (rank 0): what overwrite=true replaces
    (the earlier run's checkpoints, exports, metrics, report and config, in output_dir and the
    mirror: only what this kit wrote) or resume=never (the checkpoints) goes, and so does what
    a stopped run left half-written; each said."""
    from kit.report import escape

    places = [(cfg.output_dir, True)] + ([(cfg.checkpoint_mirror, False)] if cfg.checkpoint_mirror else [])
    for place, exports in places:
        if cfg.overwrite:
            removed = checkpoints.clear_run(place, exports)
        elif cfg.resume == "never":
            removed = checkpoints.clear_checkpoints(place)
        else:
            continue
        if removed:
            why = "overwrite=true" if cfg.overwrite else "resume=never"
            say(escape(f"{why}: removed the earlier run's {', '.join(removed)} from {place}"))
    stale = checkpoints.remove_stale(cfg.output_dir)
    if stale:
        say(escape(stale))


def resume_point(run, cfg, say=print) -> str | None:
    """Before training: clear what this run replaces (prepare_output); check the disk holds the
    checkpoints and exports; the newest complete checkpoint that can be read to resume from
    (resume=auto; one that cannot is moved aside and said); record the run's config in
    output_dir (a resumed run must be the same run)."""
    from kit import preflight

    if ranks.is_main():
        prepare_output(cfg, say)
    ranks.barrier()  # no rank looks for checkpoints while rank 0 clears them
    sizes = (run.total, run.trainable, cfg.save_total_limit, cfg.save_steps)
    need = preflight.export_bytes(cfg.export, *sizes)
    mirror_need = preflight.export_bytes("none", *sizes)  # the mirror gets checkpoints only
    say(preflight.check_disk(cfg.output_dir, need, cfg.checkpoint_mirror, mirror_need))
    resume_from = None
    if cfg.resume == "auto" and not cfg.overwrite:
        if ranks.is_main():
            for note in checkpoints.latest(cfg.output_dir, cfg.checkpoint_mirror)[1]:
                say(note)
            checkpoints.pick_resumable(cfg.output_dir, cfg.checkpoint_mirror, say)
        ranks.barrier()  # rank 0 has moved aside any checkpoint that cannot be read
        resume_from = checkpoints.latest(cfg.output_dir, cfg.checkpoint_mirror)[0]
    if resume_from is not None:
        step = checkpoints.step_of(resume_from)
        say(f"resuming from {resume_from} (step {step} of {cfg.max_steps})"
            + ("; training is already complete: no step is trained, its adapter is evaluated and "
               "exported" if step >= cfg.max_steps else ""))
    if ranks.is_main():
        checkpoints.record_run_config(cfg)
    return str(resume_from) if resume_from is not None else None


def already_trained(trainer, resume_from: str | None):
    """What trainer.train(resume_from_checkpoint=...) returns, for a checkpoint that is already at
    max_steps, without training: its adapter weights and trainer state loaded (as the trainer
    loads them to resume), zero steps run, no time spent. None when steps are left. (The
    trainer itself would run at least one more step, at learning rate 0: its loop checks for
    the end only after a step.)"""
    if resume_from is None:
        return None
    from pathlib import Path

    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    state = TrainerState.load_from_json(str(Path(resume_from) / "trainer_state.json"))
    if state.global_step < trainer.args.max_steps:
        return None
    weights = load_file(str(Path(resume_from) / "adapter_model.safetensors"))
    loaded = set_peft_model_state_dict(trainer.model, weights)
    if getattr(loaded, "unexpected_keys", None):
        from kit.errors import fail

        fail(f"checkpoint {resume_from} holds weights this model lacks "
             f"({loaded.unexpected_keys[0]}, ...); pass overwrite=true to train again")
    trainer.state = state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return TrainOutput(state.global_step, sum(losses) / len(losses) if losses else 0.0,
                       {"train_runtime": 0.0})


def packing_for(run, cfg, model, encoded: list[Encoded], say=print):
    """The packing decision (choose_packing) for the planned micro-batch, said, with the memory
    planned again for packed passes when it packs; the RunPlan with it recorded."""
    from kit import runplan

    packing, why = choose_packing(cfg, model, encoded, run.settings.micro_batch)
    say(why)
    if packing:
        run = runplan.fit_packed(run, [len(e.input_ids) for e in encoded], say)
    return run.with_settings(packing=packing, packing_reason=why)
