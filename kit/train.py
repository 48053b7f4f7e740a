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

from kit.data import Encoded


@dataclass
class TrainResult:
    steps: int
    seconds: float
    tokens: int  # real (non-pad) tokens seen
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

    def __init__(self, result: TrainResult):
        self.result = result
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        self.task = None

    def on_train_begin(self, args, state, control, **kw):
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, loss="-")

    def on_step_end(self, args, state, control, **kw):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self.result.losses.append(float(logs["loss"]))
            self.result.learning_rates.append(float(logs.get("learning_rate", 0.0)))
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
          learning_rate: float, checkpoint_dir: str) -> TrainResult:
    """Run SFT for cfg.max_steps optimizer steps; return losses and throughput."""
    result = TrainResult(steps=0, seconds=0.0, tokens=0)
    collator = CountingCollator(tokenizer)
    args = SFTConfig(
        output_dir=checkpoint_dir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=min(cfg.warmup_steps, max(cfg.max_steps - 1, 0)),
        weight_decay=0.01,
        optim="adamw_8bit" if gpu else "adamw_torch",  # bitsandbytes' 8-bit AdamW needs a GPU
        bf16=gpu and bf16,
        fp16=gpu and not bf16,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
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
        callbacks=[RichProgressCallback(result)],
    )
    # transformers' own console printer duplicates the rich bar's loss: silence it.
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    start = time.perf_counter()
    out = trainer.train()
    result.seconds = time.perf_counter() - start
    result.steps = out.global_step
    result.tokens = collator.tokens
    return result


def peak_memory_gib(gpu: bool) -> tuple[float, str]:
    """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**30, "GPU"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RAM"


def run(prep, encoded: list[Encoded], cfg) -> TrainResult:
    """Train the prepared model; the trainer's scratch folder is thrown away afterwards."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kit-trainer-") as scratch:
        return train(prep.model, prep.tokenizer, encoded, cfg, gpu=prep.device.gpu,
                     bf16=prep.device.bf16, learning_rate=prep.learning_rate, checkpoint_dir=scratch)
