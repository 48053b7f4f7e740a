"""Typed recipe configs: dataclasses with a docstring per field, overridden by `key=value`.

`lora.r=32` reaches into a nested dataclass. Values are parsed by the field's type, so
`max_steps=ten` is an error, and an unknown key is an error that lists the valid keys.

Why not tyro (installed with Unsloth, 1.0.17 here): it parses `--lora.r 32`, not `lora.r=32`,
takes a bool as a bare flag (`--overwrite`; `--overwrite=yes` is refused), and reports a bad
value as a ten-line panel before exiting, where the kit's rule is one line and exit code 2, in
a notebook cell as well as a terminal. A shim would have to rewrite the arguments going in and
scrape the panel coming out. What tyro would save is the type dispatch below (~40 lines); the
field docstrings, the ranges and the cross-field checks (`validate`) would stay either way.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import os
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from kit.checks import DORA_GGUF_LORA, QUANTS, check_repo
from kit.errors import fail

Export = Literal["adapter", "merged", "both", "gguf", "gguf-lora", "all"]
# What each `export=` value writes, in order (a GGUF is converted from the merged model; a GGUF
# LoRA from the adapter, which its check compares it with). `all` leaves gguf-lora out: it
# already writes a full-size GGUF of the merged model, a second one of the base would double
# that, and DoRA runs (which `all` serves) cannot be a GGUF LoRA.
EXPORT_KINDS = {"adapter": ("adapter",), "merged": ("merged",), "both": ("adapter", "merged"),
                "gguf": ("gguf",), "gguf-lora": ("adapter", "gguf-lora"),
                "all": ("adapter", "merged", "gguf")}
# The export kinds written as GGUF (they need llama.cpp's tools and gguf_quant).
GGUF_KINDS = ("gguf", "gguf-lora")
REPORT_TO = ("none", "tensorboard", "wandb", "trackio")


def loggers(report_to: str) -> list[str]:
    """The loggers a `report_to=` value names, `none` left out."""
    return [x.strip() for x in report_to.split(",") if x.strip() and x.strip() != "none"]


@dataclass
class LoraConfig:
    r: int = 16
    """LoRA rank: the adapter's size. 8-64 is typical; larger learns more and uses more memory."""
    alpha: int = 16
    """LoRA scaling numerator; the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA path. Unsloth's fast path wants 0."""
    target_modules: str = "auto"
    """Comma-separated module names to adapt. `auto`: every linear projection of the model's
    decoder layers, by its own names (q_proj..down_proj in Llama, Qwen, Mistral and Gemma;
    qkv_proj, o_proj, gate_up_proj, down_proj in Phi-3)."""
    variant: Literal["lora", "rslora", "dora"] = "lora"
    """`lora`; `rslora` (the update scaled by alpha / sqrt(r), so a larger r still learns);
    `dora` (weight-decomposed: a learned magnitude per output row; unfused in Unsloth: about 1.8x
    the time per step of plain LoRA and ~9% more peak RAM on the embedded model, docs/adapters.md)."""
    init: Literal["default", "gaussian", "pissa", "olora", "loftq"] = "default"
    """How the adapter starts: `default` (B = 0), `gaussian`, `pissa` (the top singular
    directions of each weight), `olora` (its QR factors). pissa and olora move part of the base
    weights into the adapter, so they need a 16-bit base; the adapter is saved as a plain LoRA
    against the original base. `loftq` is refused (see docs/adapters.md)."""
    plus_ratio: float = 0.0
    """LoRA+: lora_B trains at learning_rate x plus_ratio (16 in the paper); 0: off."""


@dataclass
class RecipeConfig:
    """Keys every recipe shares."""

    # `model=auto` on a GPU: a small instruct model Unsloth pre-quantized to 4-bit, which fits a
    # free Colab T4 with room to spare (a recipe may name its own).
    gpu_model: ClassVar[str] = "unsloth/Llama-3.2-1B-Instruct-bnb-4bit"

    model: str = "auto"
    """Hub id, local folder, or `smollm2-135m` (embedded, offline). `auto`: a 4-bit Unsloth
    model on a GPU, the embedded SmolLM2-135M-Instruct on CPU."""
    data: str = "builtin"
    """Local .jsonl/.json/.csv/.parquet file, a Hugging Face dataset name, or `builtin`."""
    output_dir: str = "outputs/run"
    """Where the adapter, merged model and metrics.json are written."""
    max_steps: int = 60
    """Optimizer steps to train."""
    export: Export = "both"
    """What to write: `adapter` (PEFT), `merged` (16-bit, plain transformers), `both`, `gguf`
    (the merged model for llama.cpp and Ollama, with a Modelfile), `gguf-lora` (the adapter and
    a GGUF LoRA of it beside the base as GGUF, Modelfile with ADAPTER; not for DoRA) or `all`
    (adapter, merged, gguf)."""
    gguf_quant: str = "q8_0"
    """GGUF type for export=gguf/all (the merged model) and export=gguf-lora (the base): q8_0,
    f16, bf16 (converter only), or q4_k_m, q5_k_m, q6_k, q4_0 (quantized with llama.cpp)."""
    max_seq_length: int = 512
    """Longest sequence in tokens; longer examples are truncated (with a warning)."""
    batch_size: int = 4
    """Examples per optimizer step (the effective batch)."""
    micro_batch_size: int = 0
    """Examples per forward pass; gradient accumulation makes up `batch_size`. 0: the memory
    plan picks the largest that fits."""
    learning_rate: float | None = None
    """Peak learning rate. Default: 1e-3 for models under 0.5B parameters, else 2e-4."""
    warmup_steps: int = 5
    """Linear warm-up steps before the linear decay."""
    load_in_4bit: bool | None = None
    """Load the base in 4-bit NF4. Default: on with a GPU; off on CPU, where Unsloth
    cannot merge into a 4-bit base."""
    gradient_checkpointing: str = "auto"
    """`unsloth` (recompute, inputs offloaded to CPU), `true` (recompute), `false`; `auto`: the
    memory plan turns it off whenever the run fits without it (fastest)."""
    packing: Literal["auto", "on", "off"] = "auto"
    """Padding-free training batches: each micro-batch's rows end to end in one sequence, no pad
    tokens, position ids restarting per row and attention kept within each row (the loss of each
    row is what it would be alone). `auto`: on when padding would waste compute (micro-batches
    of more than one row, rows of different lengths) and a check on the loaded model shows no
    row sees another on this device's attention backend; off otherwise, saying why. `on` fails
    where that check does. The memory plan then counts tokens per pass, not rows."""
    gpu_memory_gib: float = 0.0
    """Plan for this much GPU memory instead of what the card has free (0). With `make plan`
    it answers "does this fit a 16 GB T4?" on any machine."""
    memory_margin: float = 0.15
    """Share of the memory the plan leaves unused for the allocator's cache and fragmentation."""
    seed: int = 3407
    """Random seed for LoRA init, data order and sampling."""
    save_steps: int = 20
    """Checkpoint every N steps into output_dir/checkpoints (0: never)."""
    save_total_limit: int = 2
    """Keep only the newest N checkpoints."""
    checkpoint_mirror: str = ""
    """Also copy each checkpoint here (a mounted Google Drive, a Kaggle output folder)."""
    resume: Literal["auto", "never"] = "auto"
    """`auto`: continue from the newest complete checkpoint in output_dir or the mirror."""
    overwrite: bool = False
    """Replace a different run already in output_dir (its checkpoints are deleted)."""
    push: str = ""
    """After the run, upload the exports to the Hugging Face Hub: `user/repo` gets the adapter,
    `user/repo-merged` the merged model, `user/repo-GGUF` the GGUF, each with a model card."""
    push_private: bool = False
    """Create the Hub repositories as private (an existing repository keeps its visibility)."""
    report_to: str = "none"
    """Training loggers for TRL: `none`, or any of `tensorboard`, `wandb`, `trackio`
    (comma-separated). Nothing is sent anywhere unless you name one."""
    trust_remote_code: bool = False
    """Run code shipped in a model's Hub repository (only for models you trust)."""
    nproc: int = 0
    """Training processes, one per GPU (data-parallel through torch's launcher; `batch_size`
    stays the effective batch). 0: every visible GPU, or, for a model too big for one card,
    its layers split over them in one process. On CPU, N > 1 runs N gloo processes."""
    data_subset: str = ""
    """A Hub dataset's subset (its configuration name, e.g. `sst2` of `nyu-mll/glue`); empty:
    its default one. Local files ignore it."""
    data_split: str = "train"
    """The Hub dataset's split to train on; slices work: `train[:2000]`, `train[:10%]`."""
    eval_split: str = "test"
    """The Hub dataset's split to evaluate on (when `eval_data` is empty); where it has no such
    split, a share of the training rows is held out instead."""
    merge_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """dtype of the merged model. The merge is done in float32, then cast; merged/merge_report.json
    says how much of the LoRA update the cast lost. `auto`: the base's 16-bit dtype if it keeps
    the update (under 10% lost), else float32 (twice the size)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter settings (`lora.r=32`, ...)."""


# ---------------------------------------------------------------- field docs


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string under each field) for a dataclass and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def valid_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += valid_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, current value, docstring) for every leaf field: the recipe's `--help`."""
    rows = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, value, docs.get(f.name, "")))
    return rows


# ---------------------------------------------------------------- overrides

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse(key: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in {"none", "null", "auto"} and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse(key, text, inner[0]) if len(inner) == 1 else text
    if origin is Literal:
        if text not in args:
            fail(f"{key}={text!r}: expected one of {', '.join(map(str, args))}")
        return text
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        fail(f"{key}={text!r}: expected true or false")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            fail(f"{key}={text!r}: expected a whole number")
    if tp is float:
        try:
            return float(text)
        except ValueError:
            fail(f"{key}={text!r}: expected a number")
    return text


def apply_overrides(cfg: Any, args: list[str]) -> Any:
    """Return a copy of `cfg` with `key=value` overrides applied and checked against types."""
    cfg = _deepcopy(cfg)
    keys = valid_keys(cfg)
    for arg in args:
        if "=" not in arg:
            fail(f"expected key=value, got {arg!r}; valid keys: {', '.join(keys)}")
        key, text = arg.split("=", 1)
        key = key.strip().lstrip("-").replace("-", "_")
        if key not in keys:
            fail(f"unknown config key {key!r}; valid keys: {', '.join(keys)}")
        *path, name = key.split(".")
        target = cfg
        for part in path:
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        setattr(target, name, _parse(key, text.strip(), hints[name]))
    validate(cfg)
    return cfg


# key: (check, what it expects). Keys a config lacks (a recipe's own) are skipped; None is
# left to the field's meaning (learning_rate=None: the default for the model's size).
_RANGES: dict[str, tuple[Any, str]] = {
    "max_steps": (lambda v: v > 0, "a whole number above 0"),
    "nproc": (lambda v: 0 <= v <= 64, "0 (every GPU) or a number of processes up to 64"),
    "batch_size": (lambda v: v > 0, "a whole number above 0"),
    "micro_batch_size": (lambda v: v >= 0, "0 (auto) or more"),
    "gpu_memory_gib": (lambda v: v >= 0, "0 (the card's free memory) or a size in GiB"),
    "memory_margin": (lambda v: 0 <= v < 0.9, "a share from 0 to below 0.9"),
    "max_seq_length": (lambda v: v >= 16, "16 tokens or more"),
    "learning_rate": (lambda v: 0 < v <= 1, "a number above 0 and at most 1 (LoRA uses about 1e-4 to 1e-3)"),
    "warmup_steps": (lambda v: v >= 0, "0 or more"),
    "save_steps": (lambda v: v >= 0, "0 (never) or more"),
    "save_total_limit": (lambda v: v >= 1, "1 or more"),
    "seed": (lambda v: 0 <= v < 2**32, f"a whole number from 0 to {2**32 - 1}"),
    "eval_fraction": (lambda v: 0 < v < 1, "a share between 0 and 1, such as 0.1"),
    "eval_samples": (lambda v: v > 0, "a whole number above 0"),
    "eval_limit": (lambda v: v >= 0, "0 (all) or more"),
    "max_new_tokens": (lambda v: v > 0, "a whole number above 0"),
    "exec_timeout": (lambda v: 0 < v <= 600, "seconds above 0, at most 600 (10 minutes a program)"),
    "fim_per_file": (lambda v: v > 0, "a whole number above 0"),
    "lora.r": (lambda v: v > 0, "a whole number above 0 (8-64 is typical)"),
    "lora.alpha": (lambda v: v > 0, "a whole number above 0 (often equal to lora.r)"),
    "lora.dropout": (lambda v: 0 <= v < 1, "a share from 0 to below 1 (Unsloth's fast path wants 0)"),
    "lora.plus_ratio": (lambda v: v == 0 or 1 <= v <= 64, "0 (off) or a ratio from 1 to 64 (16 is usual)"),
}
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*")


def _numbers(cfg: Any, prefix: str = ""):
    """(key, value) for every number in a config, nested ones included."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, prefix + f.name + ".")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield prefix + f.name, value


def target_names(target_modules: str) -> list[str]:
    """The module names in `lora.target_modules`, checked for form (which names a model has is
    checked against its config.json before it loads: kit.choice.check_targets)."""
    names = [t.strip() for t in str(target_modules).split(",") if t.strip()]
    if names in (["auto"], ["all-linear"]):  # every linear projection (PEFT's name for it)
        return names
    bad = [n for n in names if not _MODULE_NAME.fullmatch(n)]
    if not names or bad:
        fail(f"lora.target_modules={target_modules!r}: expected comma-separated module names such "
             f"as q_proj,v_proj (or auto)" + (f"; {bad[0]!r} is not one" if bad else ""))
    return names


# Keys that name a file or folder, and what Linux file systems accept: a path of at most 4,095
# bytes (PATH_MAX less its NUL), each name in it at most 255 (NAME_MAX).
PATH_KEYS = ("data", "eval_data", "output_dir", "checkpoint_mirror", "model")
PATH_MAX, NAME_MAX = 4095, 255


def check_path(key: str, value: str) -> None:
    """A path too long for the file system is one line here, not a traceback where it is opened."""
    raw = os.fsencode(os.path.expanduser(value))
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if len(raw) > PATH_MAX or longest > NAME_MAX:
        what = (f"{len(raw):,} bytes long (at most {PATH_MAX:,})" if len(raw) > PATH_MAX
                else f"a name of {longest:,} bytes in it (at most {NAME_MAX})")
        fail(f"{key}={value[:40]}...: the path is too long for the file system, {what}")


def validate(cfg: Any) -> None:
    """Choices and ranges, for configs built in Python as well as parsed from key=value."""
    hints = typing.get_type_hints(type(cfg))
    for key in PATH_KEYS:
        if isinstance(getattr(cfg, key, None), str):
            check_path(key, getattr(cfg, key))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if typing.get_origin(hints[f.name]) is Literal and value not in typing.get_args(hints[f.name]):
            fail(f"{f.name}={value!r}: expected one of {', '.join(map(str, typing.get_args(hints[f.name])))}")
    for key, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"{key}={value!r}: expected a finite number")
    for key, (ok, expected) in _RANGES.items():
        *path, name = key.split(".")
        target = cfg
        for part in path:
            target = getattr(target, part, None)
        if target is None or not hasattr(target, name):
            continue
        value = getattr(target, name)
        default = next(f.default for f in dataclasses.fields(target) if f.name == name)
        if value == 0 and default == 0:  # a field whose default is 0 reads 0 as "auto"/"all"
            continue
        if value is not None and not ok(value):
            fail(f"{key}={value!r} is out of range: expected {expected}")
    if getattr(cfg, "micro_batch_size", 0) and cfg.batch_size % cfg.micro_batch_size:
        fail(f"batch_size={cfg.batch_size} is not a multiple of micro_batch_size={cfg.micro_batch_size}")
    if set(GGUF_KINDS) & set(EXPORT_KINDS.get(getattr(cfg, "export", ""), ())):
        if cfg.gguf_quant not in QUANTS:
            fail(f"gguf_quant={cfg.gguf_quant!r}: expected one of {', '.join(QUANTS)}")
    if getattr(cfg, "push", ""):
        check_repo(cfg.push)
    if hasattr(cfg, "report_to"):
        named = [x.strip() for x in cfg.report_to.split(",") if x.strip()]
        if not named or any(x not in REPORT_TO for x in named):
            fail(f"report_to={cfg.report_to!r}: expected none or any of {', '.join(REPORT_TO[1:])}")
    if hasattr(cfg, "lora"):
        target_names(cfg.lora.target_modules)
        _check_lora(cfg)
    if hasattr(cfg, "gradient_checkpointing"):
        if str(cfg.gradient_checkpointing).lower() not in {"auto", "unsloth", "true", "false"}:
            fail(
                f"gradient_checkpointing={cfg.gradient_checkpointing!r}: "
                "expected auto, unsloth, true or false"
            )


def _check_lora(cfg: Any) -> None:
    """LoRA variant combinations that cannot work, refused before anything loads (the 4-bit
    check for `load_in_4bit=auto` waits for the memory plan: kit.adapters.check_precision)."""
    lora = cfg.lora
    if lora.init == "loftq":
        fail("lora.init=loftq: not supported: LoftQ rewrites the base weights as their 4-bit "
             "quantization and PEFT cannot convert its adapter back to the original base, so the "
             "adapter would load on no published model; use lora.init=pissa or olora")
    if lora.init in ("pissa", "olora") and getattr(cfg, "load_in_4bit", None) is True:
        fail(f"lora.init={lora.init} moves part of each base weight into the adapter and needs a "
             "16-bit base: pass load_in_4bit=false (or lora.init=default)")
    if lora.variant == "dora" and "gguf-lora" in EXPORT_KINDS.get(getattr(cfg, "export", ""), ()):
        fail(DORA_GGUF_LORA)
    if lora.init in ("pissa", "olora") and lora.variant == "dora":
        fail(f"lora.init={lora.init} with lora.variant=dora: PEFT cannot convert a DoRA adapter "
             "back to the original base; use one or the other")


def _deepcopy(cfg: Any) -> Any:
    changes = {
        f.name: _deepcopy(getattr(cfg, f.name))
        for f in dataclasses.fields(cfg)
        if dataclasses.is_dataclass(getattr(cfg, f.name))
    }
    return dataclasses.replace(cfg, **changes)

