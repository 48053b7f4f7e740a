"""Models through Unsloth: load one (a model that cannot load is one line, not a traceback),
the LoRA target names, the adapters added. The device is kit.device, the model's choice
kit.choice, the plan around these calls kit.runplan."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import unsloth  # noqa: F401  (patches transformers/peft/trl; must come before them)
from unsloth import FastLanguageModel

from kit.choice import ModelChoice
from kit.errors import fail


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


def add_lora(model, lora, gradient_checkpointing: bool | str, seed: int):
    """LoRA adapters on the configured projections, as a recipe adds them (for tests and the
    bench)."""
    return FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_targets(model, lora.target_modules),
        bias="none",
        use_gradient_checkpointing=gradient_checkpointing,
        random_state=seed,
    )
