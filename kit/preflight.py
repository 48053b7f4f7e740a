"""Checks that must pass before a GPU hour is spent: enough disk for what will be written, and
the token or packages the end of the run will need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kit.errors import fail

GIB = 2**30


def export_bytes(export: str, total_params: int, trainable: int, save_total_limit: int,
                 save_steps: int) -> int:
    """Bytes the run will write: merged 16-bit ≈ 2 bytes/parameter; an adapter ≈ 4 bytes per
    trainable parameter; each checkpoint ≈ adapter + AdamW's two fp32 states (12 bytes)."""
    from kit.config import EXPORT_KINDS

    kinds = EXPORT_KINDS.get(export, ())  # "none": checkpoints only (the mirror)
    need = 0
    if "merged" in kinds or "gguf" in kinds:  # a GGUF is converted from the merged model
        need += 2 * total_params
    if "gguf" in kinds or "gguf-lora" in kinds:  # (gguf-lora: the base, at most 16-bit)
        need += 2 * total_params
    if "adapter" in kinds:
        need += 4 * trainable
    if save_steps > 0:
        need += 12 * trainable * max(save_total_limit, 1)
    return need + 50 * 2**20  # tokenizer files, configs, metrics


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_disk(output_dir: str, needed: int, mirror: str = "", mirror_needed: int = 0,
               disk_usage=shutil.disk_usage) -> str:
    """Fail with the numbers if output_dir's disk cannot hold `needed` bytes, or the mirror's
    `mirror_needed` (it receives checkpoints only)."""
    places = [(output_dir, needed)]
    if mirror:
        places.append((mirror, mirror_needed))
    for place, n in places:
        free = disk_usage(_existing_parent(Path(place))).free
        if free < n * 1.1:
            fail(f"not enough free disk at {place}: this run writes about {n / GIB:.2f} GiB "
                 f"(exports and checkpoints), {free / GIB:.2f} GiB free; free some space, "
                 "choose export=adapter, or set output_dir= elsewhere")
    return f"disk: about {needed / GIB:.2f} GiB to write, enough free at {output_dir}"


def start(cfg) -> None:
    """A recipe's first step: the config's values and the services the run will need, then
    whether output_dir (and the mirror) is ours to use, locked for this run. Nothing is deleted
    here: what this run replaces goes once every check has passed (kit.train.prepare_output)."""
    from kit import ranks
    from kit.checkpoints import claim_output_dir
    from kit.config import validate

    validate(cfg)
    check_services(cfg)
    # Among several ranks, rank 0 claims output_dir, unless the process that launched the ranks
    # holds it already (kit.launch); the others wait until it has.
    if ranks.is_main() and not os.environ.get(ranks.LAUNCHED):
        claim_output_dir(cfg)
    ranks.check_shared(cfg.output_dir)  # several machines: the same folder on each


# The package each `report_to=` logger needs.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def check_services(cfg) -> None:
    """What the end of the run needs from outside (a Hub token that may write where push= points,
    a logger's package) is checked at the start, so a missing token or network fails in
    seconds rather than after training."""
    import importlib.util

    from kit.config import EXPORT_KINDS, loggers

    for logger in loggers(getattr(cfg, "report_to", "none")):
        package = LOGGER_PACKAGES[logger]
        if importlib.util.find_spec(package) is None:
            fail(f"report_to={logger} needs the {package} package: pip install {package}")
    kinds = EXPORT_KINDS.get(getattr(cfg, "export", ""), ())
    if "gguf" in kinds or "gguf-lora" in kinds:
        from kit.gguf import tools_available

        # the converters, and the binding that checks the result
        missing = tools_available(lora="gguf-lora" in kinds)
        if missing:
            fail(f"export={cfg.export}: {missing}")
    if getattr(cfg, "push", ""):
        from kit import ranks
        from kit.secrets import hub_token

        token = hub_token()
        if not token:
            fail(f"push={cfg.push} needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
        if ranks.is_main() and not os.environ.get(ranks.LAUNCHED):  # once, not in every rank
            from kit.hub import check_access

            check_access(cfg.push, token)  # reachable, the token valid, the owner writable
