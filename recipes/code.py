"""Code fine-tuning with Unsloth: instruction → code, or fill-in-the-middle.

    make recipe=code                                    # built-in Python tasks, pass@1 before/after
    make recipe=code ARGS="eval=humaneval eval_limit=40"
    make recipe=code ARGS="mode=fim data=path/to/src model=unsloth/Qwen2.5-Coder-1.5B-bnb-4bit"
    python recipes/code.py --help
    python -m kit code eval=humaneval                   # wherever the kit is installed

In a notebook cell (or this whole file pasted into one: it runs with its defaults):
    from kit.recipe import recipe
    r = recipe("code")
    r.main(r.CodeConfig(eval="humaneval", eval_limit=40))

Generated code is only ever run by kit/sandbox.py: a separate process with time, memory and
file limits, no network and a temporary folder. A crash or hang counts as a failed problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kit import code, data, evaluate, export, hub, models, preflight, sandbox, train
from kit.cli import parse_cli, run_script
from kit.config import RecipeConfig
from kit.errors import fail
from kit.report import escape, finish, say, step, warn


@dataclass
class CodeConfig(RecipeConfig):
    data: str = "builtin:pytasks"
    """Instruct: prompt/completion (or chat) rows with a `tests` column; FIM: a folder of .py
    files or a file with a `text_column`. `builtin:pytasks`: the kit's small Python tasks."""
    output_dir: str = "outputs/code"
    """Where adapter/, merged/ and metrics.json go."""
    mode: Literal["instruct", "fim"] = "instruct"
    """`instruct`: task description → code, loss on the code. `fim`: fill in the middle."""
    eval: Literal["heldout", "humaneval"] = "heldout"
    """pass@1 on the data's held-out problems, or on OpenAI's HumanEval (instruct mode)."""
    eval_limit: int = 0
    """Score only the first N evaluation problems (0: all)."""
    eval_data: str = ""
    """Held-out problems; empty: the data's test split, else `eval_fraction` of it."""
    eval_fraction: float = 0.1
    """Share of `data` held out when there is no test split."""
    text_column: str = "content"
    """FIM mode: the column holding source code in a data file."""
    fim_per_file: int = 4
    """FIM mode: holes cut from each source file."""
    max_new_tokens: int = 0
    """Longest generated solution during evaluation; 0 (auto): 512 for eval=humaneval, 256
    for held-out problems, 64 for a FIM middle. An answer also ends where its code block
    closes."""
    exec_timeout: float = 5.0
    """Seconds each generated solution may run with its tests."""
    sandbox: Literal["strict", "best-effort"] = "strict"
    """`strict`: stop before loading the model if this machine cannot isolate generated code
    with namespaces (kit/sandbox.py); `best-effort`: run it anyway with weaker isolation."""


def main(cfg: CodeConfig) -> dict:
    started = time.perf_counter()
    preflight.start(cfg)  # bad values, or another run's output_dir, stop here
    isolation = sandbox.check(cfg.sandbox) if cfg.mode == "instruct" else ""
    if isolation:
        say(isolation)  # a machine that cannot isolate generated code stops here
    if cfg.mode == "fim" and cfg.eval == "humaneval":
        fail("eval=humaneval scores instruction-following code; use it with mode=instruct")

    # 1. Data: problems with tests (instruct) or holes cut from source files (fim).
    step("Data")
    if cfg.mode == "instruct":
        splits = data.load_splits(cfg.data, cfg.eval_data, cfg.eval_fraction, cfg.seed)
        problems = code.humaneval_examples(cfg.eval_limit) if cfg.eval == "humaneval" else (
            splits.test[: cfg.eval_limit] if cfg.eval_limit else splits.test)
        code.check_tasks(problems, cfg.eval_data or cfg.data)
        say(f"{cfg.data}: {len(splits.train)} training tasks; pass@1 on {len(problems)} "
            f"{'HumanEval' if cfg.eval == 'humaneval' else 'held-out'} problems")
    else:
        sources = code.read_sources(cfg.data, cfg.text_column)
        n_test = max(1, round(len(sources) * cfg.eval_fraction)) if len(sources) > 1 else 0
        if n_test == 0:
            fail(f"{cfg.data}: FIM needs at least two source files (one is held out)")
        train_cases = code.fim_examples(sources[n_test:], cfg.fim_per_file, cfg.seed)
        test_cases = code.fim_examples(sources[:n_test], 2, cfg.seed + 1)[: cfg.eval_limit or None]
        if not train_cases or not test_cases:
            fail(f"{cfg.data}: files too short to cut fill-in-the-middle holes from")
        say(f"{cfg.data}: {len(train_cases)} training holes from {len(sources) - n_test} files; "
            f"{len(test_cases)} held-out holes from {n_test}")

    # 2. Model: 4-bit NF4 on a GPU, 16-bit on CPU; a run that cannot fit the card stops here,
    #    before any weight loads.
    step("Model")
    prep = models.prepare(cfg, say)
    tokenizer = prep.tokenizer

    # 3. Tokenize. Instruct: chat template, loss on the answer. FIM: the model's FIM tokens.
    if cfg.mode == "instruct":
        train_enc, notes = data.encode_all(tokenizer, splits.train, cfg.max_seq_length, "train")
        test_enc, _ = data.encode_all(tokenizer, problems, cfg.max_seq_length, "evaluation")
    else:
        fim = code.fim_tokens(tokenizer)
        say(f"fill-in-the-middle tokens ({fim[0]} style): {' '.join(fim[1:])}")
        train_enc = [code.encode_fim(tokenizer, fim, p, m, s, cfg.max_seq_length) for p, m, s in train_cases]
        test_enc = [code.encode_fim(tokenizer, fim, p, m, s, cfg.max_seq_length) for p, m, s in test_cases]
        notes = [f"{sum(e.truncated for e in enc)} of {len(enc)} {what} holes had their prefix/suffix "
                 f"cut to max_seq_length={cfg.max_seq_length} (sentinels and middle kept)"
                 for enc, what in ((train_enc, "training"), (test_enc, "held-out"))
                 if any(e.truncated for e in enc)]
        train_enc = [e for e in train_enc if e.input_ids]
    for note in notes:
        warn(note)

    # 4. Memory plan for the longest row (the fastest settings that fit), then LoRA adapters
    #    on every linear projection.
    models.attach_lora(prep, cfg, say, longest=data.longest(train_enc))
    new_tokens = code.new_tokens(cfg.max_new_tokens, cfg.mode, cfg.eval)

    def measure(when: str) -> dict:
        step(f"Evaluate {when}")
        loss = evaluate.heldout_loss(prep.model, tokenizer, test_enc)
        if cfg.mode == "instruct":
            result, attempts = code.pass_at_1(prep.model, tokenizer, problems, new_tokens,
                                              cfg.exec_timeout)
            failed = [a for a in attempts if not a.outcome.passed]
            shown = failed[:1] + [a for a in attempts if a.outcome.passed][:1]
            for a in shown:  # one failure and one success, when there are
                say(f"[dim]{escape(a.prompt[:90])}[/]\n{escape(a.code[:240])}\n→ {escape(a.outcome.reason)}")
        else:
            result = {"fim_exact": code.fim_exact(prep.model, tokenizer, fim, test_cases,
                                                  cfg.max_seq_length, new_tokens)}
        result["loss"] = round(loss, 4)
        say(f"{when}: {result}")
        return result

    # 5-7. Evaluate, train, evaluate again on the same problems.
    before = measure("before training")
    step(f"Train {cfg.max_steps} steps")
    result = train.run(prep, train_enc, cfg, say)
    after = measure("after training")

    # 8. Export; reload each result in a fresh process and answer a held-out task.
    step("Export")
    # The check asks what the recipe taught: a held-out task, or a held-out hole to fill.
    probe = evaluate.prompt_of(problems[0]) if cfg.mode == "instruct" else \
        code.fim_prompt(tokenizer, fim, test_cases[0], cfg.max_seq_length)
    exports = export.export_and_verify(prep.model, tokenizer, cfg.export, Path(cfg.output_dir),
                                       probe, progress=say, max_new_tokens=max(160, new_tokens),
                                       gguf_quant=cfg.gguf_quant)

    # 9. Summary table, metrics.json and report.png.
    metrics = finish("code", cfg, prep, result, before, after, exports, started, held_out=len(test_enc),
                     extra={"sandbox": isolation} if isolation else None)
    export.require_ok(exports)  # an export that failed its fresh-process check fails the run

    # 10. Push to the Hugging Face Hub (push=user/repo): each export with a model card.
    if cfg.push:
        step("Push to the Hub")
        hub.push(Path(cfg.output_dir), metrics, cfg.push, cfg.push_private, progress=say)
    return metrics


def cli(argv: list[str]) -> None:
    cfg = parse_cli(CodeConfig(), argv)
    if cfg is not None:
        main(cfg)


if __name__ == "__main__":  # a shell, or this file pasted whole into a notebook cell
    run_script(cli)
