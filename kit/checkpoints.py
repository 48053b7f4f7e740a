"""Checkpoints that survive a dead runtime: complete-only resume, an optional mirror, and a
guard against mixing two different runs in one output folder.

The trainer writes `output_dir/checkpoints/checkpoint-N/` (adapter, optimizer, scheduler,
RNG states and its position in the data). Only after a save has finished do we add a
`kit_complete.json` marker; a folder without it was cut off mid-write and is never loaded.
With `checkpoint_mirror=` (a mounted Google Drive, a Kaggle output folder) each complete
checkpoint is also copied there, atomically, so a new session can pick it up.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import unsloth  # noqa: F401  (before transformers, so it can patch it)
from transformers import TrainerCallback

from kit.errors import KitError, fail

MARKER = "kit_complete.json"
RUN_CONFIG = "run_config.json"
# Keys that may change between a run and its resumption without making it another run.
_FREE_KEYS = {"output_dir", "resume", "overwrite", "checkpoint_mirror", "save_steps",
              "save_total_limit", "eval_samples", "eval_limit", "max_new_tokens", "export",
              "nproc"}  # a killed run may resume on another number of processes


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_of(path: Path) -> int:
    """The step of a `checkpoint-N` folder, -1 for anything else."""
    m = re.fullmatch(r"checkpoint-(\d+)", path.name)
    return int(m.group(1)) if m else -1


def complete_checkpoints(folder: Path) -> list[Path]:
    """Checkpoints in `folder` that finished writing, oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if step_of(p) >= 0 and (p / MARKER).is_file()]
    return sorted(found, key=step_of)


def latest(output_dir: str | Path, mirror: str = "") -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint in the output folder or the mirror, and notes on any
    incomplete ones skipped."""
    notes = []
    candidates = []
    for folder in [checkpoint_dir(output_dir)] + ([checkpoint_dir(mirror)] if mirror else []):
        if not folder.is_dir():
            continue
        partial = [p.name for p in folder.iterdir() if step_of(p) >= 0 and not (p / MARKER).is_file()]
        if partial:
            notes.append(f"skipped incomplete checkpoint(s) in {folder}: {', '.join(sorted(partial))}")
        candidates += complete_checkpoints(folder)
    return (max(candidates, key=step_of) if candidates else None), notes


def run_key(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_KEYS}


def claim_output_dir(cfg) -> str:
    """Decide what to do with an existing output_dir (and mirror) before anything is trained.

    Returns "fresh" or "resume". The folder is locked for this process first (kit.runlock), so
    a second run into it stops here. A folder holding another run's config (or, for
    output_dir, files that are not a run of this kit) is refused unless overwrite=true, which
    clears the old checkpoints.
    """
    from kit import runlock

    runlock.acquire(cfg.output_dir)
    try:
        return _claim(cfg)
    except KitError:
        runlock.release(cfg.output_dir)
        raise


def _claim(cfg) -> str:
    out = Path(cfg.output_dir)
    places = [out] + ([Path(cfg.checkpoint_mirror)] if cfg.checkpoint_mirror else [])
    if cfg.overwrite:
        for place in places:
            shutil.rmtree(checkpoint_dir(place), ignore_errors=True)
            (place / RUN_CONFIG).unlink(missing_ok=True)
        return "fresh"
    from kit.runlock import LOCK_FILE

    if any(p.name != LOCK_FILE for p in out.iterdir()) and not (out / RUN_CONFIG).is_file():
        fail(f"output_dir {out} is not empty and holds no run of this kit; "
             "choose another output_dir or pass overwrite=true")
    current = json.loads(json.dumps(run_key(cfg)))
    found = False
    for place in places:
        saved = place / RUN_CONFIG
        if not saved.is_file():
            continue
        found = True
        try:
            previous = json.loads(saved.read_text())
        except (OSError, ValueError):
            fail(f"{saved} is unreadable; pass overwrite=true to start over, or choose another "
                 "output_dir/checkpoint_mirror")
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            fail(f"{place} holds a run with a different config (changed: {', '.join(changed)}); "
                 "pass overwrite=true to replace it, or choose another output_dir/checkpoint_mirror")
    return "resume" if found and cfg.resume == "auto" else "fresh"


# What a run that was stopped mid-write leaves in output_dir: export folders being written
# (kit.export.atomic_dir), the merged scratch copy for a GGUF, metrics/report/config files
# being replaced, Hub upload staging and the GGUF converter's folder.
_STALE = (".*.tmp-*", ".*.old", ".merged-for-gguf", ".hub-*", f".{RUN_CONFIG}.tmp", "gguf/.gguf-tmp-*")


def remove_stale(output_dir: str | Path) -> str:
    """Remove what a stopped run left half-written (only once this run holds output_dir's lock,
    so no live run is writing it); say what went and how much space it freed, or ""."""
    out = Path(output_dir)
    found = sorted({p for pattern in _STALE for p in out.glob(pattern)})
    if not found:
        return ""
    size = 0
    for path in found:
        files = [path] if not path.is_dir() else [p for p in path.rglob("*") if p.is_file()]
        size += sum(p.lstat().st_size for p in files if not p.is_symlink() or p == path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    names = ", ".join(str(p.relative_to(out)) for p in found)
    return (f"removed what an earlier run stopped mid-write left in {out} "
            f"({size / 2**30:.2f} GiB): {names}")


def record_run_config(cfg) -> None:
    """Write the run's config beside its checkpoints (and in the mirror)."""
    text = json.dumps(run_key(cfg), indent=2, sort_keys=True)
    for place in [Path(cfg.output_dir)] + ([Path(cfg.checkpoint_mirror)] if cfg.checkpoint_mirror else []):
        place.mkdir(parents=True, exist_ok=True)
        tmp = place / f".{RUN_CONFIG}.tmp"
        tmp.write_text(text)
        tmp.replace(place / RUN_CONFIG)


def _copy_atomic(src: Path, dst_parent: Path) -> None:
    dst_parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_parent / f".{src.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    final = dst_parent / src.name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


class CompleteMarker(TrainerCallback):
    """After each finished save: mark it complete, mirror it, prune old mirrored ones."""

    def __init__(self, folder: Path, mirror: str, keep: int, say=print):
        self.folder, self.mirror, self.keep, self.say = folder, mirror, keep, say

    def on_save(self, args, state, control, **kw):
        from kit import ranks

        ranks.barrier()  # every rank has written its part (its RNG state) before the marker
        path = self.folder / f"checkpoint-{state.global_step}"
        if not ranks.is_main() or not path.is_dir():
            return
        (path / MARKER).write_text(json.dumps({"step": state.global_step, "max_steps": state.max_steps}))
        if self.mirror:
            target = checkpoint_dir(self.mirror)
            _copy_atomic(path, target)
            for old in complete_checkpoints(target)[: -self.keep or None]:
                shutil.rmtree(old, ignore_errors=True)
        self.say(f"checkpoint saved at step {state.global_step}"
                 + (f" (mirrored to {checkpoint_dir(self.mirror)})" if self.mirror else ""))
