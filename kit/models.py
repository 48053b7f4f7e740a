"""Models: pick the device and the model, load it through Unsloth, add LoRA adapters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import unsloth  # noqa: F401  (patches transformers/peft/trl; must come before them)
from unsloth import FastLanguageModel

from kit import embedded
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
        return ModelChoice(str(path), "SmolLM2-135M-Instruct (embedded)", why)
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


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _check_hub_model(name: str) -> None:
    """Fail in seconds, not after minutes of retries, when a Hub model cannot be had."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads offline
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
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


def load(choice: ModelChoice, max_seq_length: int, load_in_4bit: bool,
         trust_remote_code: bool = False):
    """Load model and tokenizer through Unsloth; a model that cannot be found is one clear line."""
    from kit.secrets import hub_token, redact

    token = hub_token()
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=choice.path,
            max_seq_length=max_seq_length,
            load_in_4bit=load_in_4bit,
            dtype=None,  # Unsloth picks bf16 where supported, else fp16
            token=token,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        text = redact(str(exc), token)
        if "trust_remote_code" in text and not trust_remote_code:
            fail(f"model {choice.label!r} runs code from its own repository; if you trust it, "
                 "pass trust_remote_code=true")
        first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
        fail(f"could not load model {choice.label!r}: {first}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def add_lora(model, lora, gradient_checkpointing: bool | str, seed: int):
    """Wrap the model with LoRA adapters on the configured projections."""
    targets = [t.strip() for t in lora.target_modules.split(",") if t.strip()]
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
class Settings:
    load_in_4bit: bool
    gradient_checkpointing: bool | str
    notes: list[str]


def decide_settings(cfg, device: Device) -> Settings:
    """Fill in the `auto` settings for this device; an explicit setting always wins."""
    notes = []
    four_bit = cfg.load_in_4bit
    if four_bit is None:
        four_bit = device.gpu
        notes.append("4-bit NF4 base (GPU)" if four_bit else "16-bit base (CPU: no 4-bit merge)")
    elif four_bit and not device.gpu:
        fail("load_in_4bit=true needs a GPU: bitsandbytes' 4-bit layers and Unsloth's merge "
             "into a 4-bit base do not run on CPU")
    gc = str(cfg.gradient_checkpointing).lower()
    if gc == "auto":
        checkpointing: bool | str = "unsloth" if device.gpu else False
        notes.append("Unsloth gradient checkpointing" if device.gpu
                     else "no gradient checkpointing (CPU: memory is not the limit)")
    else:
        checkpointing = {"unsloth": "unsloth", "true": True, "false": False}[gc]
    return Settings(four_bit, checkpointing, notes)


def default_learning_rate(total_params: int) -> float:
    # Small models need a larger step to learn a new behaviour in a few dozen steps
    # (SmolLM2-135M learns the built-in persona in 60 steps at 1e-3); 2e-4 is the usual
    # LoRA rate for 1B+ models.
    return 1e-3 if total_params < 500_000_000 else 2e-4


@dataclass
class Prepared:
    """What the model step of a recipe leaves behind."""

    device: Device
    choice: ModelChoice
    settings: Settings
    model: object
    tokenizer: object
    trainable: int = 0
    total: int = 0
    learning_rate: float = 0.0


def prepare(cfg, say=print) -> Prepared:
    """Pick the device and model, decide the memory settings, say so, and load."""
    device = detect_device()
    choice = resolve_model(cfg.model, device, progress=say)
    settings = decide_settings(cfg, device)
    say(f"device: {device.name} ({device.memory_gib:.0f} GiB)")
    say(f"model: {choice.label} ({choice.reason}); " + "; ".join(settings.notes))
    model, tokenizer = load(choice, cfg.max_seq_length, settings.load_in_4bit, cfg.trust_remote_code)
    return Prepared(device, choice, settings, model, tokenizer)


def attach_lora(prep: Prepared, cfg, say=print) -> Prepared:
    """Add LoRA adapters, count parameters and settle the learning rate."""
    prep.model = add_lora(prep.model, cfg.lora, prep.settings.gradient_checkpointing, cfg.seed)
    prep.trainable, prep.total = count_parameters(prep.model)
    prep.learning_rate = cfg.learning_rate or default_learning_rate(prep.total)
    say(f"LoRA r={cfg.lora.r}: {prep.trainable:,} trainable of {prep.total:,} parameters "
        f"({100 * prep.trainable / prep.total:.2f}%); learning rate {prep.learning_rate:g}")
    return prep
