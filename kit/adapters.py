"""LoRA variants and adapters the kit writes and loads.

- `init_weights`, `check_precision`: what `lora.variant` / `lora.init` mean for Unsloth's
  get_peft_model (rsLoRA and DoRA are its `use_rslora` / `use_dora`), and the one combination
  only the memory plan can rule out (pissa/olora on a 4-bit base).
- `keep_initial`: PiSSA and OLoRA move part of each base weight into the adapter; the adapter as
  it started is kept so that the saved one is converted to a plain LoRA against the original
  base (PEFT's `path_initial_model_for_weight_conversion`).
- `optimizer`: LoRA+ through PEFT's `create_loraplus_optimizer`, given to SFTTrainer as
  `optimizers=` (TRL's SFTConfig has no such key, and Unsloth's `loraplus_lr_ratio` lives in
  its own UnslothTrainingArguments, which its CPU trainer does not read).
- `load`: an adapter onto a base, refused in one line when the base is not the one it was
  trained on (kit.pin).
- `adopt`, `load_weights`: `adapter=` in the dpo and grpo recipes: the saved adapter's shape
  becomes the run's `lora`, and its weights fill what the recipe's get_peft_model built.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kit.errors import fail

INIT_WEIGHTS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
REWRITES_BASE = ("pissa", "olora")
INITIAL = "initial_adapter"  # in output_dir: the PiSSA/OLoRA adapter as it started (PEFT loads
# it under its folder name, which may hold no dot)


def init_weights(init: str):
    """get_peft_model's `init_lora_weights` for `lora.init`."""
    return INIT_WEIGHTS[init]


def check_precision(lora, load_in_4bit: bool) -> None:
    """Before the model loads: pissa/olora need the 16-bit weights they factor."""
    if lora.init in REWRITES_BASE and load_in_4bit:
        fail(f"lora.init={lora.init} moves part of each base weight into the adapter and needs a "
             "16-bit base, but this run loads it in 4-bit: pass load_in_4bit=false (or lora.init=default)")


def record(lora) -> dict:
    """The variant as metrics.json and the model card keep it."""
    return {"variant": lora.variant, "init": lora.init, "plus_ratio": lora.plus_ratio}


def initial_dir(output_dir) -> Path:
    return Path(output_dir) / INITIAL


def keep_initial(model, lora, output_dir) -> Path | None:
    """Right after get_peft_model: for pissa/olora, save the adapter as it starts (PEFT's recipe:
    saved with init_lora_weights=True), so that export converts the trained one into a plain
    LoRA against the original base. Nothing for the other initialisations."""
    folder = initial_dir(output_dir)
    if lora.init not in REWRITES_BASE:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    config = model.peft_config["default"]
    config.init_lora_weights = True
    try:
        model.save_pretrained(str(folder))
    finally:
        config.init_lora_weights = INIT_WEIGHTS[lora.init]
    return folder


def optimizer(model, lora, learning_rate: float, gpu: bool):
    """LoRA+ (lora.plus_ratio > 0): PEFT's optimizer with lora_B at learning_rate x ratio, the
    optimizer the run would use otherwise (8-bit AdamW on a GPU, AdamW on CPU), weight decay 0.01
    as in kit.train.sft_config. None when off: the trainer builds its own."""
    if not lora.plus_ratio:
        return None
    import unsloth  # noqa: F401  (patches peft first, as everywhere in the kit)
    from peft.optimizers import create_loraplus_optimizer

    if gpu:
        import bitsandbytes as bnb

        cls = bnb.optim.AdamW8bit
    else:
        import torch

        cls = torch.optim.AdamW
    return create_loraplus_optimizer(model, cls, lr=learning_rate, loraplus_lr_ratio=lora.plus_ratio,
                                     weight_decay=0.01)


def optimizers(model, lora, learning_rate: float, gpu: bool) -> tuple:
    """SFTTrainer's `optimizers=`: (LoRA+ optimizer or None, None: the scheduler from the args)."""
    return optimizer(model, lora, learning_rate, gpu), None


def load(base, adapter_dir, **kwargs):
    """PeftModel.from_pretrained(base_model, adapter_dir), refused in one line when `base` (a
    folder or cached Hub id, or a loaded model whose name_or_path is one) is not the base the
    adapter was trained on (its base_fingerprint.json)."""
    import unsloth  # noqa: F401
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kit import pin

    path = base if isinstance(base, str | Path) else getattr(base, "name_or_path", "")
    pin.check(Path(adapter_dir), str(path))
    if isinstance(base, str | Path):
        base = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    model = base
    return PeftModel.from_pretrained(model, str(adapter_dir))


def settle(lora, run, say=print) -> None:
    """After the memory plan, before the model loads: refuse what cannot work on this run (a
    pissa/olora init on a 4-bit base) and say the variant and what it costs."""
    check_precision(lora, run.settings.load_in_4bit)
    if lora.variant == "lora" and lora.init == "default" and not lora.plus_ratio:
        return
    parts = [f"LoRA variant {lora.variant}"]
    if lora.variant == "dora":
        parts.append(DORA_COST)
    if lora.init != "default":
        parts.append(f"init {lora.init}")
    if lora.plus_ratio:
        parts.append(f"LoRA+: lora_B at {lora.plus_ratio:g}x the learning rate")
    say("; ".join(parts))


# Measured on the embedded SmolLM2-135M (docs/adapters.md): DoRA runs unfused in Unsloth.
DORA_COST = "DoRA runs unfused: about 1.8x the time per step of plain LoRA, ~9% more peak memory"


# ---------------------------------------------------------------- adapter=: start from a saved adapter


def start_folder(path: str) -> Path | None:
    """`adapter=`: a PEFT adapter folder to start from, checked before anything loads (None: no
    adapter given)."""
    import json

    if not path:
        return None
    folder = Path(path).expanduser()
    if not (folder / "adapter_config.json").is_file():
        fail(f"adapter={path}: no adapter_config.json there; pass the adapter folder a recipe wrote "
             "(e.g. outputs/chat/adapter)")
    try:
        json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        fail(f"adapter={path}: adapter_config.json cannot be read ({exc})")
    return folder


def start_from(path: str, choice) -> Path | None:
    """The `adapter=` folder, once the model is chosen and before it loads: refused in one line
    when it was trained on another base (kit.pin)."""
    from kit import pin

    folder = start_folder(path)
    if folder is not None:
        pin.check(folder, str(choice.path))
    return folder


def adopt(lora, path: str, choice, say=print) -> Path | None:
    """`adapter=FOLDER`, before the model loads: checked as start_from does, and its shape
    becomes this run's `lora` (rank, alpha, target modules, rsLoRA or DoRA), so that the
    recipe's own get_peft_model call builds the same adapter and `load_weights` fills it. The
    initialisation is `default` (a kit adapter is saved as a plain LoRA on the original base,
    PiSSA/OLoRA included), LoRA+ and dropout stay this run's. None: no adapter given."""
    import json

    folder = start_from(path, choice)
    if folder is None:
        return None
    if not (folder / "adapter_model.safetensors").is_file():
        fail(f"adapter={path}: no adapter_model.safetensors there (the LoRA weights)")
    peft = json.loads((folder / "adapter_config.json").read_text())
    if str(peft.get("peft_type", "LORA")).upper() != "LORA" or "r" not in peft:
        fail(f"adapter={path}: not a LoRA adapter (peft_type {peft.get('peft_type')})")
    targets = peft.get("target_modules") or []
    lora.r, lora.alpha = int(peft["r"]), int(peft.get("lora_alpha") or peft["r"])
    lora.target_modules = ",".join(sorted(targets)) if isinstance(targets, list) else str(targets)
    lora.variant = "dora" if peft.get("use_dora") else "rslora" if peft.get("use_rslora") else "lora"
    lora.init = "default"
    say(f"starting from the adapter in {folder} (r={lora.r}, alpha={lora.alpha}, {lora.variant}; "
        "its own shape: lora.r, alpha, target_modules and variant unused)")
    return folder


def load_weights(model, folder: Path) -> None:
    """Right after get_peft_model built the shape `adopt` read: the saved adapter's weights put
    into it (PEFT's set_peft_model_state_dict), refused in one line when they do not fit."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(Path(folder) / "adapter_model.safetensors"))
    try:
        loaded = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # a shape that differs
        fail(f"adapter={folder}: its weights do not fit this model ({str(exc).splitlines()[0][:200]})")
    if getattr(loaded, "unexpected_keys", None):
        fail(f"adapter={folder}: holds weights this model lacks ({loaded.unexpected_keys[0]}, ...)")
