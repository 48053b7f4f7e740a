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
import os
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


def unreadable(path: Path) -> str:
    """Why the complete checkpoint in `path` cannot be resumed from, or "" if it can: its marker,
    its trainer_state.json (read as transformers reads it, at the step its name says), its
    weights (safetensors' own header and size check) and the optimizer, scheduler and RNG
    files (torch's zip format, whose directory sits at the end: a cut-off file has none)."""
    import zipfile

    from safetensors import safe_open
    from transformers.trainer_callback import TrainerState

    step = step_of(path)
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return f"its {MARKER} is not valid JSON"
    if not isinstance(marker, dict) or marker.get("step") != step:
        return f"its {MARKER} does not name step {step}"
    try:
        state = TrainerState.load_from_json(str(path / "trainer_state.json"))
    except FileNotFoundError:
        return "it has no trainer_state.json"
    except (OSError, ValueError, TypeError) as exc:
        return f"its trainer_state.json is not a trainer state ({type(exc).__name__})"
    if state.global_step != step:
        return f"its trainer_state.json is at step {state.global_step!r}, not {step}"
    weights = list(path.glob("*.safetensors"))
    if not weights and not (path / "adapter_model.bin").is_file():
        return "it holds no adapter weights"
    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error type for a bad header or size
            return f"its {file.name} cannot be read ({str(exc).splitlines()[0][:80] or type(exc).__name__})"
    for file in sorted([*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]):
        try:
            zipfile.ZipFile(file).close()
        except (OSError, zipfile.BadZipFile):
            return f"its {file.name} is cut off or damaged"
    return ""


def pick_resumable(output_dir: str | Path, mirror: str = "", say=print) -> Path | None:
    """The newest complete checkpoint that can be read. One that cannot is said, with why, and
    moved aside (to `unreadable-checkpoint-N` beside it, kept for a look, never resumed), and
    the one before it is tried; if it cannot be moved, the run stops naming it."""
    while True:
        best, _ = latest(output_dir, mirror)
        if best is None:
            return None
        why = unreadable(best)
        if not why:
            return best
        aside = best.with_name(ASIDE + best.name)
        try:
            if aside.exists() and _is_own_checkpoint(aside):
                shutil.rmtree(aside)
            best.rename(aside)
        except OSError as exc:
            fail(f"checkpoint {best} cannot be read ({why}) nor moved aside ({exc.strerror or exc}); "
                 "remove that folder and run the same command again to resume from the one before it")
        say(f"checkpoint {best} cannot be read ({why}); moved it to {aside.name} and looking for "
            "the one before it")


def run_key(cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _FREE_KEYS}


def claim_output_dir(cfg) -> str:
    """Decide what to do with an existing output_dir (and mirror) before anything is trained.

    Returns "fresh" or "resume". The folder and the mirror are locked for this process first
    (kit.runlock), so a second run into either stops here. A folder holding another run's
    config (or, for output_dir, files that are not a run of this kit) is refused unless
    overwrite=true. Nothing is deleted here: overwrite=true clears the earlier run's files
    only once every check has passed, just before training (kit.train.prepare_output).
    """
    from kit import runlock

    runlock.acquire(cfg.output_dir)
    try:
        if cfg.checkpoint_mirror:
            runlock.acquire(cfg.checkpoint_mirror, "checkpoint_mirror")
        return _claim(cfg)
    except KitError:
        runlock.release(cfg.output_dir)
        if cfg.checkpoint_mirror:
            runlock.release(cfg.checkpoint_mirror)
        raise


def _claim(cfg) -> str:
    out = Path(cfg.output_dir)
    places = [out] + ([Path(cfg.checkpoint_mirror)] if cfg.checkpoint_mirror else [])
    if cfg.overwrite:
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
            if not isinstance(previous, dict):
                raise ValueError("not an object")
        except (OSError, ValueError):
            fail(f"{saved} is unreadable; pass overwrite=true to start over, or choose another "
                 "output_dir/checkpoint_mirror")
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            fail(f"{place} holds a run with a different config (changed: {', '.join(changed)}); "
                 "pass overwrite=true to replace it, or choose another output_dir/checkpoint_mirror")
    return "resume" if found and cfg.resume == "auto" else "fresh"


# ---------------------------------------------------------------- what the kit wrote

# Files and folders a run of this kit writes at the top of output_dir (kit.export, kit.gguf,
# kit.report, kit.plots, this module); overwrite=true removes these and nothing else.
OWN_FILES = ("metrics.json", "report.png", RUN_CONFIG)
# An export folder is the kit's if it holds what the kit writes there.
OWN_FOLDERS = {"adapter": ("adapter_config.json",), "merged": ("config.json",),
               "gguf": ("Modelfile", "*.gguf"), "gguf-lora": ("Modelfile", "*.gguf")}
# What transformers' Trainer writes into a checkpoint folder (with PEFT), and our marker.
_TRAINER_FILES = re.compile(
    r"(adapter_model\.safetensors|adapter_model\.bin|adapter_config\.json|optimizer\.pt|scheduler\.pt|"
    r"scaler\.pt|rng_state(_\d+)?\.pth|trainer_state\.json|training_args\.bin|README\.md|"
    r"tokenizer(_config)?\.json|special_tokens_map\.json|chat_template\.jinja|vocab\.json|"
    r"merges\.txt|tokenizer\.model|added_tokens\.json|generation_config\.json|config\.json|"
    r"model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json|" + re.escape(MARKER) + ")")
ASIDE = "unreadable-"  # a checkpoint that could not be read, kept aside: unreadable-checkpoint-N


def _is_own_checkpoint(path: Path) -> bool:
    """A `checkpoint-N` (or one kept aside) folder the trainer and this kit wrote: it holds the
    kit's marker, or nothing but what the trainer writes (one cut off mid-save)."""
    name = path.name[len(ASIDE):] if path.name.startswith(ASIDE) else path.name
    if path.is_symlink() or not path.is_dir() or step_of(Path(name)) < 0:
        return False
    if (path / MARKER).is_file():
        return True
    return all(_TRAINER_FILES.fullmatch(p.name) and p.is_file() and not p.is_symlink()
               for p in path.iterdir())


def _own_checkpoints(place: Path) -> list[Path]:
    folder = checkpoint_dir(place)
    if folder.is_symlink() or not folder.is_dir():
        return []
    tmp = [p for p in folder.iterdir() if p.name.startswith(".checkpoint-") and p.name.endswith(".tmp")]
    return sorted([p for p in folder.iterdir() if _is_own_checkpoint(p)] + tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def clear_checkpoints(place: str | Path) -> list[str]:
    """Remove the checkpoints this kit wrote in `place`/checkpoints (another tool's files there
    stay, and so does the folder then); the names removed."""
    place = Path(place)
    removed = []
    for path in _own_checkpoints(place):
        _remove(path)
        removed.append(str(path.relative_to(place)))
    try:
        checkpoint_dir(place).rmdir()  # only if nothing else is left in it
    except OSError:
        pass
    return removed


def clear_run(place: str | Path, exports: bool = True) -> list[str]:
    """Remove an earlier run's files from `place` (output_dir, or the mirror with
    exports=False): its checkpoints, run_config.json and, in output_dir, the exports,
    metrics.json and report.png. Only what this kit writes, never through a symbolic link;
    the names removed."""
    place = Path(place)
    if not place.is_dir():
        return []
    removed = clear_checkpoints(place)
    names = list(OWN_FILES) if exports else [RUN_CONFIG]
    for name in names:
        path = place / name
        if path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(name)
    for name, signs in (OWN_FOLDERS.items() if exports else ()):
        path = place / name
        if path.is_dir() and not path.is_symlink() and any(any(path.glob(sign)) for sign in signs):
            shutil.rmtree(path)
            removed.append(name + "/")
    return removed


# What a run that was stopped mid-write leaves in output_dir: export folders being written
# (kit.export.atomic_dir), the merged scratch copy for a GGUF, metrics/report/config files
# being replaced, Hub upload staging and the GGUF converter's folder.
_STALE = (".*.tmp-*", ".*.old", ".merged-for-gguf", ".hub-*", f".{RUN_CONFIG}.tmp", "gguf/.gguf-tmp-*",
          f"checkpoints/.{MARKER}.tmp-*", f"checkpoints/checkpoint-*/.{MARKER}.tmp-*")


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


def write_new(path: Path, text: str) -> None:
    """Write `path` atomically: a temporary file created fresh beside it (O_EXCL|O_NOFOLLOW, so
    no file or link planted at that name is followed), then renamed over `path` (a rename
    replaces a link at `path` rather than writing through it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def record_run_config(cfg) -> None:
    """Write the run's config beside its checkpoints (and in the mirror)."""
    text = json.dumps(run_key(cfg), indent=2, sort_keys=True)
    for place in [Path(cfg.output_dir)] + ([Path(cfg.checkpoint_mirror)] if cfg.checkpoint_mirror else []):
        place.mkdir(parents=True, exist_ok=True)
        write_new(place / RUN_CONFIG, text)


def _copy_atomic(src: Path, dst_parent: Path) -> None:
    dst_parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_parent / f".{src.name}.tmp"
    if tmp.is_symlink() or tmp.exists():
        _remove(tmp)
    shutil.copytree(src, tmp)
    final = dst_parent / src.name
    if final.is_symlink() or final.exists():
        _remove(final)
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
        write_new(path / MARKER, json.dumps({"step": state.global_step, "max_steps": state.max_steps}))
        if self.mirror:
            target = checkpoint_dir(self.mirror)
            _copy_atomic(path, target)
            for old in complete_checkpoints(target)[: -self.keep or None]:
                shutil.rmtree(old, ignore_errors=True)
        self.say(f"checkpoint saved at step {state.global_step}"
                 + (f" (mirrored to {checkpoint_dir(self.mirror)})" if self.mirror else ""))
