"""The model a run trains: `model=` turned into something loadable (the embedded model, a local
folder or a Hub id, checked in seconds), its config.json's model_type, and the LoRA target check
against the family table, all before any weight loads. No torch here."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kit import checks, embedded, families
from kit.errors import fail

if TYPE_CHECKING:
    from kit.device import Device


@dataclass
class ModelChoice:
    path: str  # what from_pretrained gets: a Hub id or a local folder
    label: str  # what to show the user
    reason: str
    hub_id: str = ""  # the base model's Hub id, where known: what an adapter's card names

    def __post_init__(self):
        if not self.hub_id and not Path(self.path).exists() and self.path.count("/") == 1:
            self.hub_id = self.path


def resolve_model(name: str, device: Device, progress=print, gpu_default: str = "") -> ModelChoice:
    """Turn the `model=` setting into something loadable, saying why it was picked. `auto`:
    `gpu_default` (the recipe's, RecipeConfig.gpu_model) on a GPU, the embedded model on CPU."""
    if name == "auto":
        if device.gpu:
            from kit.config import RecipeConfig

            model = gpu_default or RecipeConfig.gpu_model
            return ModelChoice(model, model, f"GPU found ({device.name}): default 4-bit model")
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
    check_hub_model(name)
    return ModelChoice(name, name, why)


def check_hub_model(name: str) -> None:
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


def model_type(path: str) -> str:
    """config.json's model_type for a local folder or a cached Hub model; "" if unknown."""
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
    """Fail before any weight loads when `lora.target_modules` names a layer the model lacks
    (for the families kit/families.py knows; another is checked by PEFT after loading)."""
    from kit.config import target_names

    names = target_names(target_modules)
    kind = model_type(choice.path)
    family = families.BY_TYPE.get(kind)
    if family is None or names in (["all-linear"], ["auto"]):
        return
    known = family.targets + families.EMBEDDINGS
    bad = [n for n in names if n.rsplit(".", 1)[-1] not in known]
    if bad:
        verb = "is not a layer" if len(bad) == 1 else "are not layers"
        fail(f"lora.target_modules: {', '.join(bad)} {verb} of {choice.label} "
             f"({kind}); its layers are {','.join(family.targets)} (or auto)")
