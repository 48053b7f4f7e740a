"""Training: TRL's SFTTrainer (as patched by Unsloth) on pre-tokenized, prompt-masked data."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field

import torch
import unsloth  # noqa: F401  (must patch trl/transformers first)
from datasets import Dataset
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import DataCollatorForSeq2Seq, TrainerCallback
from trl import SFTConfig, SFTTrainer

from kit.config import loggers
from kit.data import Encoded


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int  # real (non-pad) tokens seen
    rows: int = 0  # training examples
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class CountingCollator:
    """Pads a batch (labels with -100) and counts the real tokens it saw."""

    def __init__(self, tokenizer):
        self.inner = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        self.tokens = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.tokens += int(batch["attention_mask"].sum())
        return batch


class RichProgressCallback(TrainerCallback):
    """One progress bar with the running loss, in place of transformers' tqdm bars."""

    def __init__(self):
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
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


def train(model, tokenizer, encoded: list[Encoded], cfg, *, gpu: bool, bf16: bool,
          learning_rate: float, checkpoint_dir: str, resume_from: str | None = None,
          callbacks: tuple = (), micro_batch: int | None = None, grad_accum: int = 1,
          collator: CountingCollator | None = None) -> TrainResult:
    """Run SFT up to cfg.max_steps optimizer steps (continuing from `resume_from`, a
    checkpoint folder, if given); return the loss curve and this session's throughput."""
    result = TrainResult(steps=0, seconds=0.0, tokens=0, rows=len(encoded))
    micro_batch = micro_batch or cfg.batch_size
    collator = collator or CountingCollator(tokenizer)
    args = SFTConfig(
        output_dir=checkpoint_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=micro_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=learning_rate,
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
        max_length=cfg.max_seq_length,
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        dataloader_pin_memory=gpu,
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=to_dataset(encoded),
        data_collator=collator,
        args=args,
        callbacks=[RichProgressCallback(), *callbacks],
    )
    # transformers' own console printer duplicates the rich bar's loss: silence it.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=resume_from)
    result.seconds = time.perf_counter() - start
    result.steps = out.global_step
    result.tokens = collator.tokens
    # The full curve, including steps logged before a resume (kept in the checkpoint's state).
    logged = [h for h in trainer.state.log_history if "loss" in h]
    result.losses = [float(h["loss"]) for h in logged]
    result.learning_rates = [float(h.get("learning_rate", 0.0)) for h in logged]
    return result


def peak_memory_gib(gpu: bool) -> tuple[float, str]:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**30, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RAM"


def run(prep, encoded: list[Encoded], cfg, say=print) -> TrainResult:
    """Check the disk, pick up the newest complete checkpoint (resume=auto), record the run's
    config in output_dir, and train with checkpoints every cfg.save_steps."""
    import shutil

    from kit import checkpoints, preflight

    sizes = (prep.total, prep.trainable, cfg.save_total_limit, cfg.save_steps)
    need = preflight.export_bytes(cfg.export, *sizes)
    mirror_need = preflight.export_bytes("none", *sizes)  # the mirror gets checkpoints only
    say(preflight.check_disk(cfg.output_dir, need, cfg.checkpoint_mirror, mirror_need))
    folder = checkpoints.checkpoint_dir(cfg.output_dir)
    resume_from = None
    if cfg.resume == "auto":
        resume_from, notes = checkpoints.latest(cfg.output_dir, cfg.checkpoint_mirror)
        for note in notes:
            say(note)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    if resume_from is not None:
        step = checkpoints.step_of(resume_from)
        say(f"resuming from {resume_from} (step {step} of {cfg.max_steps})"
            + ("; training is already complete" if step >= cfg.max_steps else ""))
    checkpoints.record_run_config(cfg)
    marker = checkpoints.CompleteMarker(folder, cfg.checkpoint_mirror, cfg.save_total_limit, say)
    return train(prep.model, prep.tokenizer, encoded, cfg, gpu=prep.device.gpu, bf16=prep.device.bf16,
                 learning_rate=prep.learning_rate, checkpoint_dir=str(folder),
                 resume_from=str(resume_from) if resume_from else None, callbacks=(marker,),
                 micro_batch=prep.settings.micro_batch, grad_accum=prep.settings.grad_accum)
