"""Data: read a dataset, detect its format, turn rows into chat messages, tokenize with masks.

Sources: a local .jsonl/.json/.csv/.parquet file or a Hugging Face dataset name.
Formats, told apart by their columns: OpenAI `messages`, ShareGPT `conversations`,
Alpaca `instruction`/`input`/`output`, and `prompt`/`completion`.
Rows may carry checks for evaluation: `expect` (a regex the reply must match) and
`reject` (a regex it must not match).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from kit import checks
from kit.errors import KitError, fail

FILE_SUFFIXES = {".jsonl", ".json", ".csv", ".parquet"}
FORMATS = {
    "messages": "OpenAI `messages`",
    "sharegpt": "ShareGPT `conversations` (from/value)",
    "alpaca": "Alpaca `instruction`/`input`/`output`",
    "prompt_completion": "`prompt`/`completion`",
}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "system": "system", "bing": "assistant", "chatgpt": "assistant"}
BUILTIN_DIR = Path(__file__).parent / "builtin"


@dataclass
class Example:
    """One conversation, plus optional evaluation checks."""

    messages: list[dict[str, str]]
    expect: str | None = None
    reject: str | None = None
    meta: dict = field(default_factory=dict)  # the row's other columns (e.g. a code task's tests)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class Splits:
    train: list[Example]
    test: list[Example]
    source: str
    fmt: str
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reading


def is_local(source: str) -> bool:
    path = Path(source).expanduser()
    return path.exists() or path.suffix.lower() in FILE_SUFFIXES


def read_records(source: str, split: str = "train", subset: str = "") -> list[dict]:
    """Rows of a local file, or of a Hub dataset's split (of its `subset`), as plain dicts."""
    if is_local(source):
        return _read_file(Path(source).expanduser())
    return _read_hub(source, split, subset)


def hub_pick(cfg) -> dict:
    """Which part of a Hub dataset a recipe reads: the `data_subset`, `data_split` and
    `eval_split` keys, as read_split_rows takes them."""
    return {"subset": cfg.data_subset, "split": cfg.data_split, "eval_split": cfg.eval_split}


def _read_file(path: Path) -> list[dict]:
    """A local file's rows. Not `datasets.load_dataset("json"/"csv", data_files=...)`: that
    converts every file into an Arrow copy in the cache (disk a 20 GB Kaggle session needs for
    exports), and for a bad JSONL line (datasets 4.8.5) raises "An error occurred while
    generating the dataset", the 0-based row only in a log line; a file of a few thousand rows
    reads in well under a second here, with `path:line` in every error."""
    if not path.exists():
        fail(f"data file not found: {path}")
    if path.is_dir():
        fail(f"data path {path} is a folder; pass a .jsonl, .json, .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        fail(f"{path}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .csv or .parquet")
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a broken file
            fail(f"{path}: not a readable parquet file ({type(exc).__name__})")
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            fail(f"{path}: not UTF-8 text (byte {exc.start}); re-save it as UTF-8")
        if not text.strip():
            fail(f"{path} is empty")
        rows = {".jsonl": _parse_jsonl, ".json": _parse_json, ".csv": _parse_csv}[suffix](path, text)
    if not rows:
        fail(f"{path} holds no examples")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            fail(f"{path}: example {i} is a {type(row).__name__}, expected an object with named fields")
    return rows


def _parse_jsonl(path: Path, text: str) -> list[dict]:
    rows = []
    # Lines end at "\n" (or "\r\n") only: str.splitlines would also split at U+2028, U+0085
    # and other characters JSON allows raw inside a string.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            fail(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})")
        except RecursionError:
            fail(f"{path}:{lineno}: JSON nested too deeply to read")
    return rows


def _parse_json(path: Path, text: str) -> list[dict]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})")
    except RecursionError:
        fail(f"{path}: JSON nested too deeply to read")
    if isinstance(data, dict):
        lists = [v for k, v in data.items() if isinstance(v, list) and k in ("data", "train", "rows")]
        data = lists[0] if lists else [data]
    if not isinstance(data, list):
        fail(f"{path}: expected a list of examples")
    return data


def _parse_csv(path: Path, text: str) -> list[dict]:
    # The csv module finds the rows itself (quoted newlines included); str.splitlines would
    # also split inside fields at \x0c, U+2028 and the like. A cell may be a whole document.
    limit = csv.field_size_limit()
    csv.field_size_limit(len(text) + 1)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        return [dict(row) for row in reader]
    except csv.Error as exc:
        fail(f"{path}: malformed CSV ({exc})")
    finally:
        csv.field_size_limit(limit)


def _offline() -> bool:
    flags = (os.environ.get(k, "").lower() for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f in {"1", "true", "yes", "on"} for f in flags)


def _in_cache(name: str) -> bool:
    """Whether a Hub dataset has been downloaded or built here before (then it loads offline)."""
    from huggingface_hub import constants

    datasets_cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(constants.HF_HOME, "datasets")
    return (Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}").is_dir() or (
        Path(datasets_cache) / name.replace("/", "___")).is_dir()


def _read_hub(name: str, split: str, subset: str = "") -> list[dict]:
    if not _in_cache(name):
        if _offline() or not checks.hub_reachable():  # fail in seconds, not after a minute of retries
            fail(f"could not load data {name!r}: not a local file, not in the local Hugging Face "
                 "cache, and the Hub cannot be reached (offline?)")
    try:
        import datasets

        ds = datasets.load_dataset(name, subset or None, split=split)
    except Exception as exc:  # offline, unknown name or subset or split, gated: "cannot use it"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        part = f" (subset {subset!r}, split {split!r})" if subset else f" (split {split!r})"
        fail(f"could not load data {name!r}{part}: not a local file, and the Hugging Face Hub "
             f"said: {reason}")
    return [dict(r) for r in ds]


# ---------------------------------------------------------------- formats


def detect_format(columns: set[str]) -> str:
    if "messages" in columns:
        return "messages"
    if "conversations" in columns:
        return "sharegpt"
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    fail(
        f"unknown data format: columns found {sorted(columns)}; accepted: "
        + "; ".join(FORMATS.values())
    )


_REQUIRED = {
    "messages": {"messages"},
    "sharegpt": {"conversations"},
    "alpaca": {"instruction", "output"},
    "prompt_completion": {"prompt", "completion"},
}


def _text(value, where: str) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{where}: expected text, found the number {value!r} (NaN or Infinity in the file)")
    if not isinstance(value, str):
        fail(f"{where}: expected text, found {type(value).__name__}")
    return value


def _pattern(row: dict, key: str, where: str) -> str | None:
    """An `expect`/`reject` regex, checked now rather than when the first reply is scored."""
    value = row.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        fail(f"{where}: `{key}` must be a regular expression (text), found {type(value).__name__}")
    try:
        re.compile(value)
    except re.error as exc:
        fail(f"{where}: `{key}` {value[:60]!r} is not a valid regular expression ({exc})")
    return value


def to_example(row: dict, fmt: str, where: str) -> Example:
    missing = _REQUIRED[fmt] - row.keys()
    if missing:
        fail(f"{where}: missing {sorted(missing)} (the file mixes formats? detected {FORMATS[fmt]})")
    if fmt == "messages" or fmt == "sharegpt":
        turns = row["messages" if fmt == "messages" else "conversations"]
        if not isinstance(turns, list) or not turns:
            fail(f"{where}: expected a non-empty list of turns")
        messages = []
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict):
                fail(f"{where}, turn {j + 1}: expected an object")
            if fmt == "messages":
                role, content = turn.get("role"), turn.get("content")
            else:
                role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
                content = turn.get("value")
            if role not in ("system", "user", "assistant"):
                fail(f"{where}, turn {j + 1}: unknown role {turn.get('role', turn.get('from'))!r}")
            messages.append({"role": role, "content": _text(content, f"{where}, turn {j + 1}")})
    elif fmt == "alpaca":
        # The non-empty parts: many Alpaca files leave `instruction` empty and put the task in
        # `input`, which must not start the prompt with a blank line.
        parts = [_text(row["instruction"], where), _text(row.get("input") or "", where)]
        prompt = "\n\n".join(part for part in parts if part.strip())
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": _text(row["output"], where)}]
    else:
        messages = [{"role": "user", "content": _text(row["prompt"], where)},
                    {"role": "assistant", "content": _text(row["completion"], where)}]
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        fail(f"{where}: no assistant reply to learn from")
    used = _REQUIRED[fmt] | {"input", "expect", "reject"}
    meta = {k: v for k, v in row.items() if k not in used}
    return Example(messages, expect=_pattern(row, "expect", where), reject=_pattern(row, "reject", where),
                   meta=meta)


def to_examples(rows: list[dict], source: str) -> tuple[list[Example], str]:
    fmt = detect_format(set(rows[0].keys()))
    return [to_example(r, fmt, f"{source}, example {i}") for i, r in enumerate(rows, 1)], fmt


def read_split_rows(data: str, eval_data: str = "", subset: str = "", split: str = "train",
                    eval_split: str = "test") -> tuple[list[dict], list[dict] | None]:
    """Raw training rows, and evaluation rows where the source has them: `builtin:NAME`'s own
    test file, `eval_data`, or a Hub dataset's `eval_split`; None means "hold some out". A Hub
    dataset is read from its `subset` (configuration) and `split` (slices work)."""
    if data.startswith("builtin:"):
        name = data.split(":", 1)[1]
        if not (BUILTIN_DIR / f"{name}_train.jsonl").is_file():
            known = sorted(p.name[: -len("_train.jsonl")] for p in BUILTIN_DIR.glob("*_train.jsonl"))
            fail(f"unknown built-in dataset {name!r}; have: {', '.join(known)}")
        test = read_records(eval_data) if eval_data else _read_file(BUILTIN_DIR / f"{name}_test.jsonl")
        return _read_file(BUILTIN_DIR / f"{name}_train.jsonl"), test
    train_rows = read_records(data, split, subset)
    if eval_data:
        return train_rows, read_records(eval_data)
    if not is_local(data) and eval_split:
        try:
            return train_rows, read_records(data, eval_split, subset)
        except KitError:  # no such split
            pass
    return train_rows, None


def hold_out(n_items: int, fraction: float, seed: int, source: str, cap: int = 200) -> set[int]:
    """Seeded indices of the items to hold out for evaluation (at least one, at most `cap`)."""
    n = min(max(1, round(n_items * fraction)), cap)
    if n_items - n < 1:
        fail(f"{source}: {n_items} example(s) is too few to hold some out for evaluation")
    order = list(range(n_items))
    random.Random(seed).shuffle(order)
    return set(order[:n])


def load_splits(data: str, eval_data: str = "", eval_fraction: float = 0.1, seed: int = 0,
                **hub) -> Splits:
    """Train and held-out examples, every row validated (see read_split_rows for where the
    held-out ones come from, and `hub` for which part of a Hub dataset; otherwise a seeded
    `eval_fraction` of the rows)."""
    notes: list[str] = []
    train_rows, test_rows = read_split_rows(data, eval_data, **hub)
    train, fmt = to_examples(train_rows, data)
    if test_rows is None:
        held = hold_out(len(train), eval_fraction, seed, data)
        test = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
        notes.append(f"held out {len(held)} of {len(held) + len(train)} examples for evaluation "
                     f"(eval_fraction={eval_fraction})")
    else:
        test, _ = to_examples(test_rows, eval_data or data)
    return Splits(train, test, data, fmt, notes)


# ---------------------------------------------------------------- tokenizing


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    k = next((i for i in range(n) if a[i] != b[i]), n)
    return k


def reply_spans(tokenizer, messages: list[dict], text: str) -> list[tuple[int, int, int]]:
    """(start, content_end, end) character offsets in `text` of each assistant reply: from
    where the generation prompt leaves off, through the reply, to the end of the template's
    end-of-turn token (kit.stops.turn_end), so the model learns to stop.

    Templates differ in what they write around a reply (Llama and Gemma trim it, Phi-3 adds
    EOS after the last turn, Qwen3 puts an empty think block in the last one), so the reply
    is found in the rendered text rather than assumed at the end of a partial rendering."""
    from kit import stops

    end_token = stops.turn_end(tokenizer)
    spans, pos = [], 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        opened = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        start = len(opened) if opened and text.startswith(opened) and len(opened) >= pos else None
        content = msg["content"].strip()
        at = text.find(content, pos if start is None else start)
        if at < 0:
            fail("the model's chat template changes the replies' text (cannot find a reply in "
                 "the rendered conversation); cannot mask prompts for it")
        start = at if start is None else start
        content_end = at + len(content)
        end = content_end
        if end_token:
            k = text.find(end_token, content_end)
            if k >= 0 and not text[content_end:k].strip():
                end = k + len(end_token)
        else:  # no end-of-turn token: whatever the template writes to close this turn
            end = max(end, _common_prefix(render(tokenizer, messages[: i + 1]), text))
        spans.append((start, content_end, end))
        pos = end
    return spans


def encode(tokenizer, messages: list[dict], max_len: int) -> Encoded:
    """Token ids with labels on assistant replies and their end-of-turn token (everything
    else -100). A row longer than `max_len` keeps its last reply's start and its end-of-turn
    token (see `_truncate`), so a long answer still teaches the model to stop."""
    text = render(tokenizer, messages)
    spans = reply_spans(tokenizer, messages, text)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [
        tok if any(s <= a and b <= e and b > a for s, _, e in spans) else -100
        for tok, (a, b) in zip(ids, offsets)
    ]
    if len(ids) <= max_len:
        return Encoded(ids, labels)
    _, content_end, end = spans[-1]
    # Tokens of the last reply, and of its end-of-turn part.
    reply = [k for k, (a, b) in enumerate(offsets) if labels[k] != -100 and a >= spans[-1][0] and b <= end]
    closing = [k for k in reply if offsets[k][0] >= content_end]
    return _truncate(ids, labels, max_len, reply[0] if reply else len(ids),
                     closing[0] if closing else (reply[-1] + 1 if reply else len(ids)),
                     reply[-1] + 1 if reply else len(ids), tokenizer.bos_token_id)


def _truncate(ids: list[int], labels: list[int], max_len: int, reply_start: int,
              closing_start: int, reply_end: int, bos: int | None) -> Encoded:
    """Cut a row to `max_len` tokens, keeping what the task needs: the end-of-turn tokens
    (`closing_start:reply_end`), the beginning of the last reply and the prompt nearest it.
    Whatever follows the turn end goes first; then the prompt's oldest tokens (a leading BOS
    stays) down to half the budget; then the reply's tail before its end-of-turn token."""
    def cut(keep: list[int]) -> Encoded:
        return Encoded([ids[k] for k in keep], [labels[k] for k in keep], truncated=True)

    if reply_end <= max_len:
        return cut(list(range(reply_end)))
    closing = list(range(closing_start, reply_end))[-max_len:]
    head = [0] if ids[0] == bos and 0 < reply_start and len(closing) + 1 < max_len else []
    body = list(range(reply_start, closing_start))
    prompt = list(range(len(head), reply_start))
    room = max_len - len(head) - len(closing)
    n_prompt = min(len(prompt), max(room // 2, room - len(body)))
    n_body = max(room - n_prompt, 0)
    return cut(head + prompt[len(prompt) - n_prompt:] + body[:n_body] + closing)


def encode_all(
    tokenizer, examples: list[Example], max_len: int, what: str
) -> tuple[list[Encoded], list[str]]:
    """Encode a split; stop if masking leaves nothing to train on, warn about truncation."""
    encoded = [encode(tokenizer, ex.messages, max_len) for ex in examples]
    notes = []
    n_trunc = sum(e.truncated for e in encoded)
    if n_trunc:
        notes.append(f"{n_trunc} of {len(encoded)} {what} examples are longer than "
                     f"max_seq_length={max_len} and were cut to fit, each keeping its last "
                     "reply's start and end-of-turn token")
    # (the first token is never predicted, so its label does not count)
    empty = [i for i, e in enumerate(encoded, 1) if not any(t != -100 for t in e.labels[1:])]
    if len(empty) == len(encoded):
        fail(f"no {what} example has a reply token left to train on after masking"
             + (f" and truncation to max_seq_length={max_len}" if n_trunc else ""))
    if empty:
        notes.append(f"{len(empty)} {what} examples have no reply token within "
                     f"max_seq_length={max_len} and teach nothing")
    return encoded, notes


def longest(encoded: list[Encoded]) -> int:
    """Tokens in the longest encoded row: what a padded micro-batch can grow to."""
    return max((len(e.input_ids) for e in encoded), default=0)


def pad_batch(chunk: list[Encoded], pad_id: int):
    """Right-padded (input_ids, attention_mask, labels) tensors for a list of encoded rows."""
    import torch

    width = max(len(e.input_ids) for e in chunk)
    ids = torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in chunk])
    mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in chunk])
    labels = torch.tensor([e.labels + [-100] * (width - len(e.labels)) for e in chunk])
    return ids, mask, labels


def check_reply(example: Example, reply: str) -> bool | None:
    """Apply an example's `expect`/`reject` checks to a generated reply; None if it has none."""
    if example.expect is None and example.reject is None:
        return None
    ok = True
    if example.expect is not None:
        ok &= re.search(example.expect, reply) is not None
    if example.reject is not None:
        ok &= re.search(example.reject, reply) is None
    return ok
