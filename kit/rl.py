"""GRPO (reinforcement learning from verifiable rewards): the prompts and their columns, the
reward functions (the kit's, or a user's `reward=module:function`), the baseline sample that
refuses a run with nothing to learn, the held-out rewards and score, and TRL's GRPOConfig.

A reward function is called as TRL calls it:

    fn(prompts=[...], completions=[...], completion_ids=[...], trainer_state=...,
       log_extra=..., log_metric=..., **columns) -> list[float]

one reward per completion. Prompts are conversations, so each completion is a list with one
assistant message (`completion_text` gives its text); `columns` are the data's other columns
(`answer`, `tests`, ...), one value per completion. `def fn(prompts, completions, **kwargs)`
always fits.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import unsloth  # noqa: F401  (patches trl/transformers first)
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from unsloth import FastLanguageModel

from kit import code, data, sandbox, train
from kit.errors import fail

# What TRL passes a reward function besides prompts, completions and the data's columns.
TRL_KEYWORDS = ("completion_ids", "trainer_state", "log_extra", "log_metric")


@dataclass
class Prompts:
    train: list[dict]  # {"prompt": [messages], **columns}: rows as GRPOTrainer takes them
    test: list[dict]
    kind: str  # "answer" (an `answer` column), "code" (`tests`), or "custom"
    columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _row(raw: dict, where: str) -> dict:
    """A prompt row: `prompt` as text or a conversation, or a conversation whose last assistant
    turn is left out; every other column kept as it is (a completion dropped)."""
    if "prompt" in raw:
        prompt = raw["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                fail(f"{where}: empty prompt")
            prompt = [{"role": "user", "content": prompt}]
        elif not (isinstance(prompt, list) and prompt
                  and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)):
            fail(f"{where}: `prompt` must be text or a list of messages with role and content")
        columns = {k: v for k, v in raw.items() if k not in ("prompt", "completion", "chosen", "rejected")}
        return {"prompt": prompt, **columns}
    fmt = data.detect_format(set(raw))
    example = data.to_example(raw, fmt, where)
    last = max(i for i, m in enumerate(example.messages) if m["role"] == "assistant")
    return {"prompt": example.messages[:last], **example.meta}


def load_prompts(cfg) -> Prompts:
    """The training and held-out prompts (`data`, `eval_data`, or a seeded `eval_fraction`
    held out), with the kind of check their columns allow."""
    train_rows, test_rows = data.read_split_rows(cfg.data, cfg.eval_data, **data.hub_pick(cfg))
    if not train_rows:
        fail(f"{cfg.data}: no rows")
    rows = [_row(r, f"{cfg.data}, example {i}") for i, r in enumerate(train_rows, 1)]
    notes = []
    if test_rows is None:
        held = data.hold_out(len(rows), cfg.eval_fraction, cfg.seed, cfg.data)
        test = [r for i, r in enumerate(rows) if i in held]
        rows = [r for i, r in enumerate(rows) if i not in held]
        notes.append(f"held out {len(test)} of {len(test) + len(rows)} prompts for evaluation "
                     f"(eval_fraction={cfg.eval_fraction})")
    else:
        test = [_row(r, f"{cfg.eval_data or cfg.data} (held-out), example {i}")
                for i, r in enumerate(test_rows, 1)]
    columns = sorted({k for r in rows for k in r if k != "prompt"})
    kind = "code" if "tests" in columns else "answer" if "answer" in columns else "custom"
    if kind == "code":
        code.check_tasks([data.Example([], meta=r) for r in test], cfg.eval_data or cfg.data)
    for split, what in ((rows, "training"), (test, "held-out")):
        if kind == "answer" and any(not isinstance(r.get("answer"), str | int) for r in split):
            fail(f"{cfg.data}: every {what} row needs an `answer` (text or a whole number)")
    return Prompts(rows, test, kind, columns, notes)


# ---------------------------------------------------------------- rewards


def completion_text(completion) -> str:
    """A completion's text: the string itself, or its assistant messages' content."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content", "") for m in completion if m.get("role", "assistant") == "assistant")


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def answer_of(text: str, answer: str) -> str:
    """What a reply answers: its last number where the answer is a number, else its last line
    without surrounding spaces and final punctuation."""
    if _NUMBER.fullmatch(answer.strip()):
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip().rstrip(".!") if lines else ""


def correct_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 where the reply's answer equals the row's `answer` exactly (answer_of), else 0."""
    return [float(answer_of(completion_text(c), str(a).strip()) == str(a).strip())
            for c, a in zip(completions, answer)]


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 for a reply that is the answer alone (one word or number), 0.25 for one short line
    (at most eight words), else 0."""
    out = []
    for c in completions:
        text = completion_text(c).strip()
        out.append(0.5 if re.fullmatch(r"\S+", text) else
                   0.25 if text and "\n" not in text and len(text.split()) <= 8 else 0.0)
    return out


def code_format_reward(prompts, completions, **kwargs) -> list[float]:
    """0.5 for a reply with a fenced Python block that parses, 0.25 for a block that does not."""
    out = []
    for c in completions:
        text = completion_text(c)
        if "```" not in text:
            out.append(0.0)
            continue
        try:
            ast.parse(code.extract_code(text))
            out.append(0.5)
        except SyntaxError:
            out.append(0.25)
    return out


class CodeReward:
    """1.0 where the reply's code passes the row's `tests` in the sandbox (kit.sandbox.run_tests:
    the verdict is decided where the candidate cannot reach), else 0. Verdicts are kept, so the
    same program is run once."""

    __name__ = "code_reward"

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self.seen: dict[tuple[str, str], bool] = {}

    def passed(self, text: str, row: dict) -> bool:
        program = code.program_for(data.Example([], meta=row), text)
        key = (program, row["tests"])
        if key not in self.seen:
            self.seen[key] = sandbox.run_tests(program, row["tests"], timeout=self.timeout).passed
        return self.seen[key]

    def __call__(self, prompts, completions, tests, **kwargs) -> list[float]:
        rows = [{"tests": t, **{k: kwargs[k][i] for k in ("header", "entry_point") if k in kwargs}}
                for i, t in enumerate(tests)]
        return [float(self.passed(completion_text(c), r)) for c, r in zip(completions, rows)]


def builtin_rewards(cfg) -> dict[str, object]:
    """The kit's reward functions by name (`reward=correct_reward,format_reward` works too)."""
    return {"correct_reward": correct_reward, "format_reward": format_reward,
            "code_reward": CodeReward(cfg.exec_timeout), "code_format_reward": code_format_reward}


DEFAULTS = {"answer": ("correct_reward", "format_reward"), "code": ("code_reward", "code_format_reward")}


def name_of(fn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _import(item: str):
    module_name, _, attr = item.partition(":")
    if not module_name or not attr:
        fail(f"reward={item!r}: expected module:function (a module on the path or in this folder), "
             f"or a built-in reward: {', '.join(DEFAULTS['answer'] + DEFAULTS['code'])}")
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)  # a module beside the user, as `python -m` finds it
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a user's module: whatever it raises is one line
        fail(f"reward={item}: could not import {module_name!r}: {type(exc).__name__}: "
             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
    fn = getattr(module, attr, None)
    if fn is None:
        fail(f"reward={item}: {module_name!r} has no {attr!r}")
    return fn


def load_rewards(cfg, prompts: Prompts) -> list:
    """The reward functions: `reward=` (comma-separated module:function or built-in names), or
    the defaults for the data's kind; each checked to be callable with what TRL passes (the
    data's columns included), before the model loads."""
    known = builtin_rewards(cfg)
    if cfg.reward.strip():
        items = [x.strip() for x in cfg.reward.split(",") if x.strip()]
    elif prompts.kind in DEFAULTS:
        items = list(DEFAULTS[prompts.kind])
    else:
        fail(f"{cfg.data}: no `answer` or `tests` column for the built-in rewards (columns: "
             f"{', '.join(prompts.columns) or 'none'}); give reward=module:function")
    funcs = []
    for item in items:
        fn = known[item] if item in known else _import(item)
        for column in ("answer", "tests"):
            if item in known and column in inspect.signature(fn).parameters and column not in prompts.columns:
                fail(f"reward={item} reads the `{column}` column, which {cfg.data} lacks")
        if not callable(fn):
            fail(f"reward={item}: not a function ({type(fn).__name__})")
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            try:
                sig.bind(prompts=[], completions=[], **dict.fromkeys(TRL_KEYWORDS),
                         **{c: [] for c in prompts.columns})
            except TypeError as exc:
                fail(f"reward={item}: {name_of(fn)}{sig} cannot be called as TRL calls it "
                     f"(prompts=, completions=, {', '.join(TRL_KEYWORDS)} and the data's columns "
                     f"{', '.join(prompts.columns) or '(none)'} as keywords): {exc}; define it as "
                     f"def {name_of(fn)}(prompts, completions, **kwargs)")
        funcs.append(fn)
    names = [name_of(f) for f in funcs]
    if len(set(names)) != len(names):
        fail(f"reward={cfg.reward}: two reward functions share a name ({', '.join(names)}); "
             "TRL logs each by name")
    return funcs


def score(funcs: list, rows: list[dict], completions: list[list[dict]]) -> dict[str, list[float]]:
    """Each reward function's rewards for these completions (rows[i] is completion i's row),
    called as TRL calls it."""
    columns = sorted({k for r in rows for k in r if k != "prompt"})
    kwargs = {c: [r.get(c) for r in rows] for c in columns}
    extra = {"completion_ids": [[] for _ in rows], "trainer_state": None,
             "log_extra": lambda *a, **k: None, "log_metric": lambda *a, **k: None}
    out = {}
    for fn in funcs:
        values = fn(prompts=[r["prompt"] for r in rows], completions=completions, **extra, **kwargs)
        values = [float("nan") if v is None else float(v) for v in values]
        if len(values) != len(rows):
            fail(f"reward function {name_of(fn)} returned {len(values)} rewards for {len(rows)} completions")
        out[name_of(fn)] = values
    return out


def _as_completion(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------- before training


def check_groups(cfg) -> str:
    """Refuse, before the model loads, a batch that does not split into whole groups of
    `num_generations` completions (TRL would raise later); the line that says the grouping."""
    g, batch = cfg.num_generations, cfg.batch_size
    gen = cfg.generation_batch_size or batch
    if g < 2:
        fail(f"num_generations={g}: GRPO compares completions of the same prompt, so it needs 2 or more")
    if gen % g:
        key = "generation_batch_size" if cfg.generation_batch_size else "batch_size"
        fail(f"{key}={gen} does not divide into groups of num_generations={g}: use a multiple of "
             f"{g} (e.g. {key}={max(g, gen - gen % g)})")
    if cfg.generation_batch_size and cfg.generation_batch_size % batch:
        fail(f"generation_batch_size={gen} is not a multiple of batch_size={batch} (one generation "
             "feeds whole optimizer steps)")
    if cfg.max_completion_length < 0:
        fail(f"max_completion_length={cfg.max_completion_length}: use a positive number, or 0 for "
             "the default by the data's kind")
    if cfg.max_completion_length >= cfg.max_seq_length:
        fail(f"max_completion_length={cfg.max_completion_length} leaves no room for the prompt in "
             f"max_seq_length={cfg.max_seq_length}")
    return (f"{gen // g} prompts × {g} completions per generation; {batch} completions per "
            f"optimizer step")


# max_completion_length=0, by the data's kind: a number's reply is short, a code reply is a
# whole function in a fenced block (the code recipe's held-out replies run 60-200 tokens).
AUTO_COMPLETION = {"answer": 32, "code": 256, "custom": 128}


def completion_length(cfg, kind: str) -> int:
    """max_completion_length (check_groups checked it), or with 0 the one for this kind of data,
    checked against max_seq_length."""
    if cfg.max_completion_length:
        return cfg.max_completion_length
    length = AUTO_COMPLETION[kind]
    if length >= cfg.max_seq_length:
        fail(f"max_completion_length={length} (the default for {kind} data) leaves no room for "
             f"the prompt in max_seq_length={cfg.max_seq_length}: raise max_seq_length or set "
             "max_completion_length")
    return length


def check_vllm(cfg, gpu: bool) -> None:
    """use_vllm=true needs vLLM installed (the optional GPU extra, requirements/vllm.txt) and a GPU."""
    if not cfg.use_vllm:
        return
    import importlib.util

    if not gpu:
        fail("use_vllm=true needs a GPU (vLLM does not generate on CPU here); use use_vllm=false")
    if importlib.util.find_spec("vllm") is None:
        fail("use_vllm=true needs vLLM: pip install -r requirements/vllm.txt (docs/grpo.md), "
             "or use_vllm=false for plain generation")


def fit_prompts(tokenizer, rows: list[dict], room: int, what: str) -> tuple[list[dict], str]:
    """Rows whose prompt (through the chat template) leaves `room` tokens for the completion
    within max_seq_length; the longest kept prompt's length, and a note on what was left out."""
    lengths = [len(tokenizer(data.render(tokenizer, r["prompt"], add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]) for r in rows]
    kept = [r for r, n in zip(rows, lengths) if n <= room]
    if not kept:
        fail(f"every {what} prompt is longer than max_seq_length - max_completion_length = {room} "
             "tokens: raise max_seq_length")
    note = (f"left out {len(rows) - len(kept)} {what} prompt(s) longer than {room} tokens "
            "(max_seq_length - max_completion_length)" if len(kept) < len(rows) else "")
    return kept, note


@dataclass
class Sample:
    rewards: dict[str, list[float]]  # per function, per completion
    totals: list[float]
    truncated: int
    groups: int
    spread: int  # groups whose completions do not all get the same reward

    def record(self) -> dict:
        n = len(self.totals)
        return {"prompts": self.groups, "completions": n, "truncated": self.truncated,
                "groups_with_different_rewards": self.spread,
                "reward": round(sum(self.totals) / n, 4),
                **{f"reward/{k}": round(sum(v) / n, 4) for k, v in self.rewards.items()}}


def baseline(model, tokenizer, rows: list[dict], funcs: list, cfg, kind: str) -> Sample:
    """Before training: `num_generations` sampled completions (at `temperature`, up to
    `max_completion_length` tokens) for the first `baseline_prompts` training prompts, scored
    by every reward function. Refused in one line (exit 2): most completions cut at the length
    limit (GRPO masks them out: nothing is left to learn from), or every group's completions
    sharing one reward (no differences within a group: zero advantage, zero gradient)."""
    import torch

    from kit.evaluate import generate

    torch.manual_seed(cfg.seed)  # the same sample for the same run
    g, L = cfg.num_generations, cfg.max_completion_length
    chosen = rows[: cfg.baseline_prompts]
    repeated = [r for r in chosen for _ in range(g)]
    gens = generate(model, tokenizer, [r["prompt"] for r in repeated], L, batch_size=max(g, 8),
                    stop_strings=code.STOP_STRINGS if kind == "code" else None,
                    temperature=cfg.temperature)
    rewards = score(funcs, repeated, [_as_completion(x.reply) for x in gens])
    totals = [sum(v[i] for v in rewards.values()) for i in range(len(repeated))]
    truncated = sum(not x.stopped for x in gens)
    groups = [totals[i : i + g] for i in range(0, len(totals), g)]
    spread = sum(max(grp) - min(grp) > 1e-9 for grp in groups)
    sample = Sample(rewards, totals, truncated, len(groups), spread)
    if truncated * 2 > len(gens):
        fail(f"{truncated} of {len(gens)} sampled completions ran to max_completion_length={L} "
             "tokens without ending: GRPO leaves cut-off completions out of the loss "
             "(mask_truncated_completions), so there would be almost nothing to learn from; "
             "raise max_completion_length")
    if not spread:
        values = sorted({round(t, 4) for t in totals})
        fail(f"nothing to learn: in a sample of {len(groups)} training prompts × {g} completions, "
             f"every completion of each prompt got the same reward ({', '.join(map(str, values[:4]))}); "
             "GRPO learns from differences within a group: use rewards that tell this model's "
             "completions apart (reward=...), a higher temperature, or start from an adapter "
             "that sometimes succeeds (adapter=...)")
    return sample


# ---------------------------------------------------------------- held-out


def evaluate(model, tokenizer, rows: list[dict], funcs: list, cfg, kind: str) -> tuple[dict, list]:
    """Greedy completions for the held-out prompts: the mean reward (all functions summed, and
    each alone as reward/NAME), the share that ended before max_completion_length, and the
    score the data's own check gives: exact_match (the `answer` column) or pass_at_1 (`tests`,
    in the sandbox)."""
    from kit.evaluate import generate

    gens = generate(model, tokenizer, [r["prompt"] for r in rows], cfg.max_completion_length,
                    stop_strings=code.STOP_STRINGS if kind == "code" else None)
    completions = [_as_completion(x.reply) for x in gens]
    rewards = score(funcs, rows, completions)
    n = len(rows)
    out = {"reward": round(sum(sum(v) for v in rewards.values()) / n, 4),
           **{f"reward/{k}": round(sum(v) / n, 4) for k, v in rewards.items()}}
    if kind == "answer":
        out["exact_match"] = round(sum(correct_reward(None, completions, [r["answer"] for r in rows])) / n, 4)
    elif kind == "code":
        checker = next((f for f in funcs if isinstance(f, CodeReward)), None) or CodeReward(cfg.exec_timeout)
        out["pass_at_1"] = round(sum(checker.passed(x.reply, r) for x, r in zip(gens, rows)) / n, 4)
    out["stopped_at_eos"] = round(sum(x.stopped for x in gens) / n, 4)
    return out, gens


# ---------------------------------------------------------------- training


def grpo_config(cfg, run, funcs: list) -> GRPOConfig:
    """TRL's GRPOConfig: the kit's training arguments (kit.train.trainer_args: the memory plan's
    micro-batch and accumulation over `batch_size` completions), one generation batch per
    optimizer step unless `generation_batch_size` says otherwise, cut-off completions masked
    out of the loss, and each reward function's mean logged (rewards/NAME/mean)."""
    gen = {"generation_batch_size": cfg.generation_batch_size} if cfg.generation_batch_size else {}
    return GRPOConfig(
        **train.trainer_args(cfg, run),
        **gen,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        loss_type=cfg.loss_type,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=True,
        use_vllm=cfg.use_vllm,
        **({"vllm_mode": "colocate"} if cfg.use_vllm else {}),
        reward_weights=[1.0] * len(funcs),
        remove_unused_columns=False,
    )


def train_rewards(trainer, funcs: list) -> dict[str, list[float]]:
    """Per step, each reward function's mean over the step's completions, as TRL logged it
    (rewards/NAME/mean), and their sum (reward)."""
    logged = [h for h in trainer.state.log_history if "reward" in h]
    out = {"reward": [round(float(h["reward"]), 4) for h in logged]}
    for fn in funcs:
        key = f"rewards/{name_of(fn)}/mean"
        out[f"reward/{name_of(fn)}"] = [round(float(h.get(key, float("nan"))), 4) for h in logged]
    return out


class RewardLine(TrainerCallback):
    """A line per logged step: the step's mean reward, each function's, and the share of
    completions cut at max_completion_length (TRL's logs)."""

    def __init__(self, funcs: list, say=print, every: int = 1):
        self.names, self.say, self.every = [name_of(f) for f in funcs], say, max(every, 1)

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "reward" not in logs or state.global_step % self.every:
            return
        parts = ", ".join(f"{n} {logs.get(f'rewards/{n}/mean', float('nan')):.3f}" for n in self.names)
        clipped = logs.get("completions/clipped_ratio")
        self.say(f"step {state.global_step}: reward {logs['reward']:.3f} ({parts})"
                 + (f"; cut at max_completion_length {clipped:.0%}" if clipped is not None else ""))


class Trainer(GRPOTrainer):
    """TRL's GRPOTrainer that samples in Unsloth's inference mode: in training mode gradient
    checkpointing turns the KV cache off, and each new token re-runs the whole sequence
    (measured on a 2-core CPU: 8 x 32 tokens ~3x slower)."""

    def _generate_single_turn(self, *args, **kwargs):
        model = self.accelerator.unwrap_model(self.model)
        FastLanguageModel.for_inference(model)
        try:
            return super()._generate_single_turn(*args, **kwargs)
        finally:
            FastLanguageModel.for_training(model)

