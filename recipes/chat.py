"""Chat fine-tuning with Unsloth: teach a chat model a new behaviour from conversations.

    make recipe=chat ARGS="max_steps=100 lora.r=32 data=my.jsonl"
    python recipes/chat.py max_steps=100 lora.r=32 data=my.jsonl
    python recipes/chat.py --help                       # every key, its default and meaning
    python -m kit chat max_steps=100                    # the same wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    chat = recipe("chat")
    chat.main(chat.ChatConfig(max_steps=100))

It reads like Unsloth's notebooks: load → LoRA → data → evaluate → train → evaluate → export.
The built-in data teaches the model to introduce itself as "Pip"; held-out questions with
phrasings it never saw check whether it learned (`check_rate`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

# kit's modules import Unsloth before transformers, trl and peft, so it can patch them.
from kit import data, evaluate, export, hub, models, preflight, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.report import escape, finish, say, step, warn


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
    splits = data.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed)
    say(f"{splits.source}: {len(splits.train)} train / {len(splits.test)} held-out "
        f"conversations ({data.FORMATS[splits.fmt]})")
    for note in splits.notes:
        say(note)

    # 2. Model: 4-bit NF4 on a GPU, 16-bit on CPU; a run that cannot fit the card stops here,
    #    before any weight loads.
    step("Model")
    prep = models.prepare(cfg, say)
    tokenizer = prep.tokenizer

    # 3. Tokenize through the model's chat template; loss on assistant replies only.
    train_enc, notes = data.encode_all(tokenizer, splits.train, cfg.max_seq_length, "train")
    test_enc, test_notes = data.encode_all(tokenizer, splits.test, cfg.max_seq_length, "held-out")
    for note in notes + test_notes:
        warn(note)

    # 4. Memory plan for the longest row (the fastest settings that fit), then LoRA adapters
    #    on every linear projection.
    models.attach_lora(prep, cfg, say, longest=data.longest(train_enc))

    # 5. Evaluate before training.
    step("Evaluate before training")
    before, gens_before = evaluate.evaluate(prep.model, tokenizer, splits.test, test_enc,
                                            cfg.max_new_tokens, cfg.eval_samples)
    say(f"before: {before}")

    # 6. Train.
    step(f"Train {cfg.max_steps} steps")
    result = train.run(prep, train_enc, cfg, say)

    # 7. Evaluate after training, on the same held-out prompts.
    step("Evaluate after training")
    after, gens_after = evaluate.evaluate(prep.model, tokenizer, splits.test, test_enc,
                                          cfg.max_new_tokens, cfg.eval_samples)
    say(f"after:  {after}")
    for b, a in list(zip(gens_before, gens_after))[:3]:
        say(f"[dim]prompt:[/] {escape(b.prompt[-1]['content'])}\n  [dim]before:[/] {escape(b.reply[:120])}"
            f"\n  [dim]after:[/]  {escape(a.reply[:120])}")

    # 8. Export atomically; load each result in a fresh process and check it stops at the
    #    end of its turn (the stop set goes into each export's generation_config.json).
    step("Export")
    probe = next((e for e in splits.test if e.expect), splits.test[0])
    exports = export.export_and_verify(prep.model, tokenizer, cfg.export, Path(cfg.output_dir),
                                       evaluate.prompt_of(probe), progress=say,
                                       gguf_quant=cfg.gguf_quant)

    # 9. Summary table, metrics.json and report.png.
    metrics = finish("chat", cfg, prep, result, before, after, exports, started, held_out=len(splits.test))
    export.require_ok(exports)  # an export that does not load or stop fails the run (exit 1)

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        hub.push(Path(cfg.output_dir), metrics, cfg.push, cfg.push_private, progress=say)
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(ChatConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
