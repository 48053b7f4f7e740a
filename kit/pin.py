"""The base an adapter was trained on, pinned: a portable name (the Hub id, never a path on this
machine), the revision where known, and a fingerprint of the base's files, written into the
adapter folder as `base_fingerprint.json`. Loading an adapter onto a base whose fingerprint
differs is refused in one line (`check`).

Standard library only, with no torch: kit.verify (plain peft/transformers, in a fresh process)
uses it too.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

FILE = "base_fingerprint.json"
# Where the base is on this machine, for loading the adapter here (kit.verify, predict()): a
# dot-file, which kit.hub's push leaves out, so nothing published names a local path.
LOCAL = ".local-base"
SAMPLE_BYTES = 64  # from the start and the middle of each tensor
# config.json keys that change with the writer, not the model.
_VOLATILE = {"transformers_version", "_name_or_path", "name_or_path"}


def portable_name(path: str, hub_id: str = "") -> tuple[str, str]:
    """(name, note) for adapter_config.json's base_model_name_or_path: the Hub id where known,
    else the folder's own name (never an absolute path) with a note saying so."""
    if hub_id:
        return hub_id, ""
    p = Path(path)
    if not p.exists() and path.count("/") == 1:
        return path, ""
    return p.name, (f"the base was a local folder named {p.name!r} with no known Hub id: put a copy "
                    "of it where PEFT can find it under that name, or load it yourself first")


def revision(path: str) -> str | None:
    """The Hub commit of a base read from the Hugging Face cache (`.../snapshots/<commit>/`)."""
    parts = Path(path).resolve().parts
    if len(parts) >= 2 and parts[-2] == "snapshots" and len(parts[-1]) == 40:
        return parts[-1]
    return None


def base_dir(path: str) -> Path | None:
    """The folder holding a base's config.json: a local folder, or a Hub id's cached snapshot."""
    p = Path(path).expanduser()
    if (p / "config.json").is_file():
        return p
    if path.count("/") == 1:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        cached = try_to_load_from_cache(path, "config.json")
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def _safetensors_entries(file: Path):
    """(name, dtype, shape, sample bytes) for each tensor of a .safetensors file, read from its
    header and a few bytes of each tensor: no torch, and seconds even for a large model."""
    with file.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        start_of_data = 8 + size
        for name in sorted(k for k in header if k != "__metadata__"):
            info = header[name]
            begin, end = info["data_offsets"]
            sample = b""
            for offset in (begin, begin + (end - begin) // 2):
                fh.seek(start_of_data + offset)
                sample += fh.read(min(SAMPLE_BYTES, end - offset))
            yield name, info["dtype"], info["shape"], sample


def fingerprint(folder: Path) -> dict:
    """sha256 over the base's config.json (writer-only keys left out) and, for every tensor of
    its safetensors files, the name, dtype, shape and a sample of its bytes."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in _VOLATILE}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    tensors = 0
    for file in sorted(folder.glob("*.safetensors")):
        for name, dtype, shape, sample in _safetensors_entries(file):
            digest.update(f"{name}|{dtype}|{shape}|".encode() + sample)
            tensors += 1
    return {"sha256": digest.hexdigest(), "tensors": tensors,
            "covers": "config.json and each tensor's name, dtype, shape and a sample of its values"
            if tensors else "config.json only (no safetensors weights found)"}


def record(path: str, hub_id: str = "") -> dict:
    """What an adapter folder keeps about its base (base_fingerprint.json)."""
    name, note = portable_name(path, hub_id)
    folder = base_dir(path)
    out = {"base_model": name, "revision": revision(str(folder)) if folder else None}
    out.update(fingerprint(folder) if folder else {"sha256": None, "covers": "base files not found"})
    if note:
        out["note"] = note
    return out


def local_base(adapter_dir: Path) -> str | None:
    """The base's folder on this machine, as the kit recorded it beside the adapter, if it is
    still there."""
    hint = Path(adapter_dir) / LOCAL
    if hint.is_file():
        folder = Path(hint.read_text().strip())
        if (folder / "config.json").is_file():
            return str(folder)
    return None


def check(adapter_dir: Path, base: str) -> None:
    """Refuse, in one line (kit.errors.fail: exit code 2), to put the adapter in `adapter_dir` on
    `base` (a folder or a cached Hub id) when its fingerprint differs from the one the adapter
    recorded. An adapter without base_fingerprint.json (made elsewhere) is not checked."""
    pinned_file = Path(adapter_dir) / FILE
    if not pinned_file.is_file():
        return
    pinned = json.loads(pinned_file.read_text())
    folder = base_dir(base)
    if not pinned.get("sha256") or folder is None:
        return
    found = fingerprint(folder)
    if found["sha256"] != pinned["sha256"]:
        from kit.errors import fail

        fail(
            f"the adapter in {Path(adapter_dir).name} was trained on {pinned.get('base_model')} "
            f"(base fingerprint {pinned['sha256'][:12]}), but {Path(base).name} is another base "
            f"(fingerprint {found['sha256'][:12]}); load it on the base it was trained on")
