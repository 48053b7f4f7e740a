"""Models: pick the device and the model, load it through Unsloth, add LoRA adapters."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import unsloth  # noqa: F401  (patches transformers/peft/trl; must come before them)
from unsloth import FastLanguageModel

from kit import checks, embedded, ranks
from kit import plan as plan_mod
from kit.errors import fail

# With a GPU and no model named: a small instruct model Unsloth pre-quantized to 4-bit,
# which fits a free Colab T4 with room to spare.
GPU_DEFAULT = "unsloth/Llama-3.2-1B-Instruct-bnb-4bit"


@dataclass
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gib: float
    bf16: bool

    @property
    def gpu(self) -> bool:
        return self.kind == "cuda"

    def peak_memory_gib(self) -> tuple[float, str]:
        """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
        if self.gpu:
            return torch.cuda.max_memory_allocated() / 2**30, "GPU"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RAM"


def detect_device() -> Device:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Device("cuda", props.name, props.total_memory / 2**30, torch.cuda.is_bf16_supported())
    import psutil

    return Device("cpu", f"CPU ({os.cpu_count()} threads)", psutil.virtual_memory().total / 2**30, True)


@dataclass
class ModelChoice:
    path: str  # what from_pretrained gets: a Hub id or a local folder
    label: str  # what to show the user
    reason: str
    hub_id: str = ""  # the base model's Hub id, where known: what an adapter's card names

    def __post_init__(self):
        if not self.hub_id and not Path(self.path).exists() and self.path.count("/") == 1:
            self.hub_id = self.path


def resolve_model(name: str, device: Device, progress=print) -> ModelChoice:
    """Turn the `model=` setting into something loadable, saying why it was picked."""
    if name == "auto":
        if device.gpu:
            return ModelChoice(GPU_DEFAULT, GPU_DEFAULT, f"GPU found ({device.name}): default 4-bit model")
        name, why = embedded.ALIAS, "no GPU: the embedded model, which needs no network"
    else:
        why = "as configured"
    if name == embedded.ALIAS:
        try:
            path = embedded.ensure_converted(progress)
        except FileNotFoundError as exc:
            fail(str(exc))
        return ModelChoice(str(path), "SmolLM2-135M-Instruct (embedded)", why, embedded.HUB_ID)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            fail(f"model path {path} holds no model (no config.json there)")
        return ModelChoice(str(path.resolve()), str(path), why)
    if name.count("/") != 1:
        fail(f"unknown model {name!r}: not a local folder, not a Hub id (owner/name), "
             f"not the alias {embedded.ALIAS!r}")
    _check_hub_model(name)
    return ModelChoice(name, name, why)


def _check_hub_model(name: str) -> None:
    """Fail in seconds, not after minutes of retries, when a Hub model cannot be had."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads offline
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not checks.hub_reachable():
        fail(f"unknown model {name!r}: not in the local Hugging Face cache, and the Hub cannot "
             f"be reached (offline?); use model={embedded.ALIAS} or a local folder")
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(name)
    except GatedRepoError:
        fail(f"model {name!r} is gated: accept its licence on the Hub and set HF_TOKEN")
    except RepositoryNotFoundError:
        fail(f"unknown model {name!r}: no such model on the Hugging Face Hub (or it is private)")


@contextlib.contextmanager
def loading(choice: ModelChoice, trust_remote_code: bool = False) -> Iterator[None]:
    """Around `FastLanguageModel.from_pretrained(...)`: a model that cannot be found or read
    becomes one clear line (exit 2), with any Hub token redacted, rather than a traceback."""
    from kit.secrets import hub_token, redact

    try:
        yield
    except (OSError, ValueError, RuntimeError) as exc:
        text = redact(str(exc), hub_token())
        if "trust_remote_code" in text and not trust_remote_code:
            fail(f"model {choice.label!r} runs code from its own repository; if you trust it, "
                 "pass trust_remote_code=true")
        first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
        fail(f"could not load model {choice.label!r}: {first}")


def set_pad_token(tokenizer) -> None:
    """Padded batches need a pad token: EOS where the model has none (labels mask it anyway)."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def load(choice: ModelChoice, max_seq_length: int, load_in_4bit: bool,
         trust_remote_code: bool = False, device_map: str | None = None):
    """Model and tokenizer through Unsloth, as a recipe loads them (for tests and the bench).
    `device_map="balanced"` spreads the layers over every visible GPU; by default Unsloth puts
    the whole model on this process's GPU (LOCAL_RANK's under torchrun)."""
    from kit.secrets import hub_token

    with loading(choice, trust_remote_code):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=choice.path, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit,
            dtype=None, token=hub_token(), trust_remote_code=trust_remote_code,
            **({"device_map": device_map} if device_map else {}))
    set_pad_token(tokenizer)
    return model, tokenizer


def linear_names(model) -> list[str]:
    """Names of the linear projections inside the model's decoder layers (not the LM head):
    what `lora.target_modules=auto` adapts."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and ".layers." in name}
    return sorted(names)


def lora_targets(model, target_modules: str) -> list[str]:
    """The module names `lora.target_modules` means for this model (`auto` or PEFT's
    `all-linear`: every linear projection of its decoder layers, by name)."""
    from kit.config import target_names

    names = target_names(target_modules)
    return linear_names(model) if names in (["auto"], ["all-linear"]) else names


# The linear layers `lora.target_modules` can name, by config.json's model_type. A type not
# listed is not checked here (PEFT names a wrong module once the weights are loaded).
_ATTENTION_MLP = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TARGET_MODULES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "granite", "olmo", "olmo2", "cohere"), _ATTENTION_MLP),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
}
EMBEDDING_MODULES = ("embed_tokens", "lm_head")  # Unsloth trains these in full when named


def _model_type(path: str) -> str:
    """config.json's model_type for a local folder or a cached Hub model; "" if unknown."""
    import json

    config = Path(path) / "config.json"
    if not config.is_file():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json") if path.count("/") == 1 else None
        if not isinstance(cached, str):
            return ""
        config = Path(cached)
    try:
        return str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def check_targets(target_modules: str, choice: ModelChoice) -> None:
    """Fail before any weight loads when `lora.target_modules` names a layer the model lacks."""
    from kit.config import target_names

    names = target_names(target_modules)
    known = TARGET_MODULES.get(_model_type(choice.path))
    if known is None or names in (["all-linear"], ["auto"]):
        return
    bad = [n for n in names if n.rsplit(".", 1)[-1] not in known + EMBEDDING_MODULES]
    if bad:
        verb = "is not a layer" if len(bad) == 1 else "are not layers"
        fail(f"lora.target_modules: {', '.join(bad)} {verb} of {choice.label} "
             f"({_model_type(choice.path)}); its layers are {','.join(known)} (or auto)")


def add_lora(model, lora, gradient_checkpointing: bool | str, seed: int):
    """LoRA adapters on the configured projections, as a recipe adds them (for tests and the
    bench)."""
    targets = lora_targets(model, lora.target_modules)
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        use_gradient_checkpointing=gradient_checkpointing,
        random_state=seed,
    )


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight counts its unpacked elements."""

    def size(p) -> int:
        state = getattr(p, "quant_state", None)
        return state.shape.numel() if state is not None else p.numel()

    trainable = sum(size(p) for p in model.parameters() if p.requires_grad)
    total = sum(size(p) for p in model.parameters())
    return trainable, total


@dataclass
class Parallel:
    """How a run uses the machine's GPUs (`parallel`)."""

    processes: int  # data-parallel training processes, each with the whole model on its GPU
    split: bool  # one process, the model's layers spread over every GPU (device_map="balanced")
    why: str


def visible_gpus(device: Device) -> int:
    return torch.cuda.device_count() if device.gpu and torch.cuda.is_available() else 0


def parallel(cfg, say=print, device: Device | None = None, gpus: int | None = None) -> Parallel:
    """`nproc` and the visible GPUs, settled with the memory plan before any process starts:
    data-parallel, one process per GPU, when the whole model and a share of the batch fit one
    card; with `nproc=0` and a model that fits only all the cards together, one process with its
    layers split over them (slower: one card works at a time). On CPU, `nproc=N` runs N gloo
    processes (how the tests exercise the path). A run that fits neither way stops here."""
    device = device or detect_device()
    gpus = visible_gpus(device) if gpus is None else gpus
    if not device.gpu:
        n = max(cfg.nproc, 1)
        ranks.check_batch(cfg, n)
        return Parallel(n, False, f"nproc={n}: {n} processes on CPU (gloo)" if n > 1 else "one process")
    if cfg.nproc > max(gpus, 1):
        fail(f"nproc={cfg.nproc}, but this machine shows {gpus} GPU(s); use nproc=0 (every GPU) "
             f"or at most {gpus}")
    n = cfg.nproc or max(gpus, 1)
    if n == 1 and not (cfg.nproc == 0 and gpus > 1):
        return Parallel(1, False, "one process, one GPU")
    ranks.check_batch(cfg, n)
    choice = resolve_model(cfg.model, device, progress=say)
    settings = decide_settings(cfg, device)
    try:
        shape = plan_mod.read_shape(choice.path)
    except (OSError, ValueError):
        return Parallel(n, False, f"{n} processes, one per GPU (no memory plan for this model)")
    one, _ = plan_memory(cfg, device, shape, cfg.max_seq_length, settings.load_in_4bit, world=n)
    if one.fits:
        return Parallel(n, False, f"data-parallel: {n} processes, one per GPU, each with the whole "
                                  f"model and {cfg.batch_size // n} of batch_size={cfg.batch_size} "
                                  f"(per GPU: {one.estimate.total:.1f} GiB)")
    if cfg.nproc <= 1 and gpus > 1:
        split, _ = plan_memory(cfg, device, shape, cfg.max_seq_length, settings.load_in_4bit,
                               world=1, cards=gpus)
        if split.fits:
            return Parallel(1, True, f"layers split over {gpus} GPUs in one process "
                                     f"(device_map=balanced): it needs ~{one.estimate.total:.1f} GiB, "
                                     f"more than one card's {one.budget_gib:.1f} GiB usable")
        fail(f"{choice.label} {split.message} (its layers split over {gpus} GPUs)")
    fail(f"{choice.label} {one.message}"
         + ("" if cfg.nproc <= 1 else "; nproc=0 lets the plan split its layers over the GPUs"))


@dataclass
class Settings:
    load_in_4bit: bool
    gradient_checkpointing: bool | str  # as Unsloth's get_peft_model takes it
    notes: list[str]
    micro_batch: int = 1
    grad_accum: int = 1
    plan: plan_mod.Plan | None = None
    split: bool = False  # layers spread over every GPU in one process (`parallel`)
    packing: bool = False  # padding-free micro-batches (kit.train.choose_packing)
    packing_reason: str = ""


def decide_settings(cfg, device: Device) -> Settings:
    """Fill in the `auto` precision for this device; an explicit setting always wins. The
    checkpointing mode and micro-batch come from the memory plan (`plan_memory`)."""
    notes = []
    four_bit = cfg.load_in_4bit
    if four_bit is None:
        four_bit = device.gpu
        notes.append("4-bit NF4 base (GPU)" if four_bit else "16-bit base (CPU: no 4-bit merge)")
    elif four_bit and not device.gpu:
        fail("load_in_4bit=true needs a GPU: bitsandbytes' 4-bit layers and Unsloth's merge "
             "into a 4-bit base do not run on CPU")
    mode = plan_mod.mode_of(str(cfg.gradient_checkpointing))
    share = ranks.per_rank_batch(cfg)  # batch_size is the effective batch, all ranks together
    micro = cfg.micro_batch_size or share
    # Until a plan replaces it (a model whose config has no plan): the old safe choice.
    mode = mode or ("unsloth" if device.gpu else "off")
    return Settings(four_bit, _UNSLOTH_GC[mode], notes, micro, share // micro)


_UNSLOTH_GC: dict[str, bool | str] = {"off": False, "on": True, "unsloth": "unsloth"}


def memory_budget(cfg, device: Device) -> tuple[float, str]:
    """(GiB the run may plan for, where that number comes from)."""
    if cfg.gpu_memory_gib:
        return cfg.gpu_memory_gib, f"gpu_memory_gib={cfg.gpu_memory_gib:g}"
    if device.gpu:
        free = torch.cuda.mem_get_info()[0] / 2**30
        return free, f"{device.name}, {free:.1f} GiB free"
    import psutil

    free = psutil.virtual_memory().available / 2**30
    return free, f"CPU RAM, {free:.1f} GiB available"


def plan_memory(cfg, device: Device, shape: plan_mod.Shape, seq: int,
                four_bit: bool, row_lengths: tuple[int, ...] = (),
                checkpointing: str | None = None, world: int = 0,
                cards: int = 1) -> tuple[plan_mod.Plan, str]:
    """The fastest checkpointing mode and micro-batch that fit, for sequences up to `seq`, and
    where the memory figure came from. Per GPU: each of `world` data-parallel ranks (default:
    this run's) takes its share of `batch_size`; `cards` > 1 plans one process whose layers are
    split over that many cards like this one (less a tenth, as layers do not split evenly)."""
    import psutil

    free, source = memory_budget(cfg, device)
    if cards > 1:
        free, source = free * cards * 0.9, f"{cards} × {source}, layers split"
    gpu = device.gpu or bool(cfg.gpu_memory_gib)
    # Offloaded activations may take half the host's free RAM; the rest is the data and Python.
    host = psutil.virtual_memory().available / 2**30 / 2
    chosen = plan_mod.choose(
        shape, budget_gib=plan_mod.usable_gib(free, cfg.memory_margin),
        batch_size=ranks.per_rank_batch(cfg, world or None),
        seq=seq, checkpointing=checkpointing or plan_mod.mode_of(str(cfg.gradient_checkpointing)),
        micro_batch=cfg.micro_batch_size or None, r=cfg.lora.r,
        targets=_plan_targets(cfg.lora.target_modules),
        four_bit=four_bit,
        # Offloading activations to host memory saves nothing on a CPU.
        modes=plan_mod.MODES if gpu else ("off", "on"), tflops=plan_mod.peak_tflops(device.name),
        host_gib=host, row_lengths=row_lengths,
    )
    return chosen, source


def _plan_targets(target_modules: str) -> tuple[str, ...]:
    from kit.config import target_names

    names = tuple(target_names(target_modules))
    return ("auto",) if names in (("auto",), ("all-linear",)) else names


def _apply_plan(settings: Settings, chosen: plan_mod.Plan) -> None:
    settings.plan = chosen
    settings.gradient_checkpointing = _UNSLOTH_GC[chosen.setting.checkpointing]
    settings.micro_batch = chosen.setting.micro_batch
    settings.grad_accum = chosen.setting.grad_accum


def _say_plan(chosen: plan_mod.Plan, source: str, say) -> None:
    say(f"memory plan ({source}): {chosen.message}")
    say(f"  estimate: {chosen.estimate.describe()} GiB")
    if chosen.faster_not_fitting:
        say("  faster, but does not fit: " + "; ".join(chosen.faster_not_fitting))


def read_shape(choice: ModelChoice, say=print, settings: Settings | None = None,
               cfg=None) -> plan_mod.Shape | None:
    """The model's shape, or None after saying, in one line, why there is no plan and (given the
    settings) the safe ones the run falls back to: one row per pass, checkpointing as decided
    (offloaded on a GPU unless set), accumulation making up `batch_size`."""
    try:
        return plan_mod.read_shape(choice.path)
    except (OSError, ValueError) as exc:
        fallback = ""
        if settings is not None:
            settings.micro_batch = cfg.micro_batch_size or 1
            settings.grad_accum = ranks.per_rank_batch(cfg) // settings.micro_batch
            gc = {"unsloth": "offloaded checkpointing", True: "checkpointing",
                  False: "no checkpointing"}[settings.gradient_checkpointing]
            fallback = (f"; using safe settings: {gc}, micro-batch {settings.micro_batch} × "
                        f"{settings.grad_accum} accumulation")
        say(f"no memory plan for {choice.label}: {str(exc).splitlines()[0][:160]}{fallback}")
        return None


def show_plan(cfg) -> plan_mod.Plan | None:
    """`make plan`: print the plan for this config and card without loading any weights."""
    from kit.report import say

    device = detect_device()
    if cfg.gpu_memory_gib and not device.gpu:  # planning for a card this machine lacks
        device = Device("cuda", f"a {cfg.gpu_memory_gib:g} GiB GPU", cfg.gpu_memory_gib, True)
        if cfg.model == "auto":
            cfg.model = GPU_DEFAULT
    choice = resolve_model(cfg.model, device, progress=say)
    settings = decide_settings(cfg, device)
    shape = read_shape(choice, say, settings, cfg)
    check_targets(cfg.lora.target_modules, choice)
    if shape is None:
        return None
    say(f"model: {choice.label}: {shape.params / 1e9:.2f}B parameters, {shape.layers} layers, "
        f"hidden {shape.hidden}, vocabulary {shape.vocab}; "
        f"{'4-bit' if settings.load_in_4bit else '16-bit'} base")
    simulated = not detect_device().gpu  # gpu_memory_gib on a CPU machine: nproc cards like it
    gpus = max(cfg.nproc, 1) if simulated else visible_gpus(device)
    world, cards = 1, 1
    if gpus > 1:
        import dataclasses

        asked = dataclasses.replace(cfg, nproc=0) if simulated else cfg
        way = parallel(asked, say, device, gpus=gpus)
        world, cards = way.processes, (gpus if way.split else 1)
        say(f"GPUs: {gpus}{' (as nproc says)' if simulated else ''}; {way.why}")
    chosen, source = plan_memory(cfg, device, shape, cfg.max_seq_length, settings.load_in_4bit,
                                 world=world, cards=cards)
    if not chosen.fits:
        say(f"  estimate: {chosen.estimate.describe()} GiB")
        fail(chosen.message)
    _say_plan(chosen, source, say)
    return chosen


def default_learning_rate(total_params: int) -> float:
    # Small models need a larger step to learn a new behaviour in a few dozen steps
    # (SmolLM2-135M learns the built-in persona in 60 steps at 1e-3); 2e-4 is the usual
    # LoRA rate for 1B+ models.
    return 1e-3 if total_params < 500_000_000 else 2e-4


@dataclass(frozen=True)
class RunPlan:
    """What a recipe settles before and around the Unsloth calls, and what metrics.json
    reports: the device, the model, the memory plan's settings; once the adapters are on, the
    parameter counts and the learning rate. Each step returns a new one."""

    device: Device
    choice: ModelChoice | None
    settings: Settings
    shape: plan_mod.Shape | None = None
    trainable: int = 0
    total: int = 0
    learning_rate: float = 0.0

    @property
    def cards(self) -> int:
        return visible_gpus(self.device) if self.settings.split else 1

    @property
    def device_map(self) -> dict:
        """from_pretrained's placement: the layers spread over every GPU when the plan splits
        them (`parallel`), else Unsloth's default (this process's GPU)."""
        return {"device_map": "balanced"} if self.settings.split else {}

    def with_settings(self, chosen: plan_mod.Plan | None = None, **changes) -> RunPlan:
        settings = dataclasses.replace(self.settings, **changes)
        if chosen is not None:
            _apply_plan(settings, chosen)
        return dataclasses.replace(self, settings=settings)


def plan_run(cfg, say=print) -> RunPlan:
    """Pick the device and the model and plan the memory for the worst case (every row
    max_seq_length long): a run that cannot fit the card stops here, before any weight loads."""
    device = detect_device()
    choice = resolve_model(cfg.model, device, progress=say)
    settings = decide_settings(cfg, device)
    say(f"device: {device.name} ({device.memory_gib:.0f} GiB)")
    say(f"model: {choice.label} ({choice.reason}); " + "; ".join(settings.notes))
    shape = read_shape(choice, say, settings, cfg)  # also brings a Hub config.json into the cache
    check_targets(cfg.lora.target_modules, choice)
    cards = 1
    if not ranks.in_ranks() and visible_gpus(device) > 1:
        way = parallel(cfg, say, device)  # here: one process, so the layers may be split
        settings.split, cards = way.split, (visible_gpus(device) if way.split else 1)
        say(way.why)
    if shape is not None:
        worst, _ = plan_memory(cfg, device, shape, cfg.max_seq_length, settings.load_in_4bit,
                               cards=cards)
        if not worst.fits:
            fail(f"{choice.label} at max_seq_length={cfg.max_seq_length} {worst.message}")
        _apply_plan(settings, worst)
    return RunPlan(device, choice, settings, shape)


def fit_rows(run: RunPlan, cfg, longest: int | None = None, say=print) -> RunPlan:
    """The memory plan again for the data's longest row (a shorter one only frees memory for
    a faster setting): the checkpointing mode get_peft_model gets, and the micro-batch."""
    if run.shape is None:
        return run
    seq = min(cfg.max_seq_length, longest or cfg.max_seq_length)
    chosen, source = plan_memory(cfg, run.device, run.shape, seq, run.settings.load_in_4bit,
                                 cards=run.cards)
    run = run.with_settings(chosen if chosen.fits else None)
    _say_plan(run.settings.plan, source, say)
    return run


def fit_packed(run: RunPlan, cfg, lengths: list[int], say=print) -> RunPlan:
    """Packed micro-batches: plan again counting each pass's tokens (the sum of its rows, at
    worst the micro-batch's count of the data's longest rows) rather than rows × the longest
    row, keeping the checkpointing mode the adapters were attached with."""
    if run.shape is None or run.settings.plan is None:
        return run
    mode = run.settings.plan.setting.checkpointing
    seq = min(cfg.max_seq_length, max(lengths, default=cfg.max_seq_length))
    chosen, source = plan_memory(cfg, run.device, run.shape, seq, run.settings.load_in_4bit,
                                 row_lengths=tuple(lengths), checkpointing=mode, cards=run.cards)
    if not chosen.fits:
        return run
    _say_plan(chosen, source, say)
    return run.with_settings(chosen)


def with_adapters(run: RunPlan, model, cfg, say=print) -> RunPlan:
    """Count the parameters of the model get_peft_model returned, and settle the learning rate."""
    trainable, total = count_parameters(model)
    rate = cfg.learning_rate or default_learning_rate(total)
    say(f"LoRA r={cfg.lora.r}: {trainable:,} trainable of {total:,} parameters "
        f"({100 * trainable / total:.2f}%); learning rate {rate:g}")
    return dataclasses.replace(run, trainable=trainable, total=total, learning_rate=rate)
