"""Chat fine-tuning with Unsloth: teach a chat model a new behaviour from conversations.

    make recipe=chat ARGS="max_steps=100 lora.r=32 data=my.jsonl"
    python recipes/chat.py max_steps=100 lora.r=32 data=my.jsonl
    python recipes/chat.py --help                       # every key, its default and meaning

In a notebook cell:  from chat import ChatConfig, main;  main(ChatConfig(max_steps=100))

It reads like Unsloth's notebooks: load → LoRA → data → evaluate → train → evaluate → export.
The built-in data teaches the model to introduce itself as "Pip"; held-out questions with
phrasings it never saw check whether it learned (`check_rate`).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# kit's modules import Unsloth before transformers, trl and peft, so it can patch them.
from kit import data, evaluate, export, models, train
from kit.config import RecipeConfig, parse_cli, to_dict
from kit.errors import run_cli
from kit.report import console, say, step, summary_table, versions, warn, write_json


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
    out = Path(cfg.output_dir)

    # 1. Data first, so a bad file fails in seconds rather than after the model loads.
    step("Data")
    splits = data.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed)
    say(f"{splits.source}: {len(splits.train)} train / {len(splits.test)} held-out "
        f"conversations ({data.FORMATS[splits.fmt]})")
    for note in splits.notes:
        say(note)

    # 2. Model: 4-bit NF4 on a GPU, 16-bit on CPU.
    step("Model")
    device = models.detect_device()
    choice = models.resolve_model(cfg.model, device, progress=say)
    settings = models.decide_settings(cfg, device)
    say(f"device: {device.name} ({device.memory_gib:.0f} GiB)")
    say(f"model: {choice.label} ({choice.reason}); " + "; ".join(settings.notes))
    model, tokenizer = models.load(choice, cfg.max_seq_length, settings.load_in_4bit)

    # 3. Tokenize through the model's chat template; loss on assistant replies only.
    train_enc, notes = data.encode_all(tokenizer, splits.train, cfg.max_seq_length, "train")
    test_enc, test_notes = data.encode_all(tokenizer, splits.test, cfg.max_seq_length, "held-out")
    for note in notes + test_notes:
        warn(note)

    # 4. LoRA adapters on every linear projection.
    model = models.add_lora(model, cfg.lora, settings.gradient_checkpointing, cfg.seed)
    trainable, total = models.count_parameters(model)
    lr = cfg.learning_rate or models.default_learning_rate(total)
    say(f"LoRA r={cfg.lora.r}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); learning rate {lr:g}")

    # 5. Evaluate before training.
    step("Evaluate before training")
    before, gens_before = evaluate.evaluate(model, tokenizer, splits.test, test_enc,
                                            cfg.max_new_tokens, cfg.eval_samples)
    say(f"before: {before}")

    # 6. Train.
    step(f"Train {cfg.max_steps} steps")
    with tempfile.TemporaryDirectory(prefix="kit-trainer-") as scratch:
        result = train.train(model, tokenizer, train_enc, cfg, gpu=device.gpu, bf16=device.bf16,
                             learning_rate=lr, checkpoint_dir=scratch)
    peak, peak_kind = train.peak_memory_gib(device.gpu)

    # 7. Evaluate after training, on the same held-out prompts.
    step("Evaluate after training")
    after, gens_after = evaluate.evaluate(model, tokenizer, splits.test, test_enc,
                                          cfg.max_new_tokens, cfg.eval_samples)
    say(f"after:  {after}")
    for b, a in list(zip(gens_before, gens_after))[:3]:
        say(f"[dim]prompt:[/] {b.prompt[-1]['content']}\n  [dim]before:[/] {b.reply[:120]}"
            f"\n  [dim]after:[/]  {a.reply[:120]}")

    # 8. Export atomically; load each result in a fresh process and check it stops at EOS.
    step("Export")
    probe = next((e for e in splits.test if e.expect), splits.test[0])
    exports = export.export_and_verify(model, tokenizer, cfg.export, out,
                                       evaluate.prompt_of(probe), progress=say)
    for kind, res in exports.items():
        problem = res.get("error") or "did not stop at EOS"
        status = "[green]loads, answers, stops at EOS[/]" if res["ok"] else f"[red]{problem}[/]"
        say(f"{kind}: {status}  reply: {res.get('reply', '')[:100]!r}")

    # 9. Summary and metrics.json.
    better = evaluate.improved(before, after)
    wall = time.perf_counter() - started
    metrics = {
        "recipe": "chat", "model": choice.label, "device": device.name,
        "before": before, "after": after, "improved": better,
        "train": {"steps": result.steps, "seconds": round(result.seconds, 1),
                  "tokens": result.tokens, "tokens_per_second": round(result.tokens_per_second, 1),
                  "loss_first": result.losses[0], "loss_last": result.losses[-1],
                  "losses": result.losses, "learning_rates": result.learning_rates,
                  "peak_memory_gib": round(peak, 2), "peak_memory_kind": peak_kind},
        "trainable_parameters": trainable, "total_parameters": total,
        "exports": exports, "wall_seconds": round(wall, 1),
        "config": to_dict(cfg), "versions": versions(),
    }
    write_json(out / "metrics.json", metrics)
    console.print(summary_table([
        ("device", device.name), ("model", choice.label),
        ("trainable", f"{trainable:,} ({100 * trainable / total:.2f}%)"),
        ("steps", str(result.steps)), ("tokens/s", f"{result.tokens_per_second:,.0f}"),
        (f"peak {peak_kind}", f"{peak:.2f} GiB"),
        ("train loss", f"{result.losses[0]:.3f} → {result.losses[-1]:.3f}"),
        ("wall time", f"{wall:.0f} s"),
        ("outputs", ", ".join(str(out / k) for k in exports) + f", {out / 'metrics.json'}"),
    ], before, after, better))
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(ChatConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":
    sys.exit(run_cli(cli))
