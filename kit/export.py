"""Export: the LoRA adapter (PEFT format) and/or the merged 16-bit model, written atomically
and then checked by loading each in a fresh process with plain peft/transformers."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.markup import escape

from kit.proc import check_in_fresh_process


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename,
    so a crash leaves either the old result or the new one, never half of one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = final.with_name(f".{final.name}.old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _settle_permissions(path: Path) -> None:
    # mkdtemp makes a 0700 folder and some writers 0600 files; results should be readable
    # like any other file the user makes.
    path.chmod(0o755)
    for f in path.rglob("*"):
        f.chmod(0o755 if f.is_dir() else 0o644)


def _write_extra(folder: Path, extra_files: dict[str, str] | None) -> None:
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)


def generation_config(model, tokenizer):
    """The model's generation config with its EOS list set to the stop set (kit.stops), so
    plain transformers, vLLM and TGI stop at the end of the turn with no argument passed."""
    import copy

    from transformers import GenerationConfig

    from kit import stops

    base = getattr(model, "generation_config", None)
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    config.eos_token_id = stops.stop_ids(tokenizer, base)
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return config


def save_adapter(model, tokenizer, final: Path, extra_files: dict[str, str] | None = None) -> Path:
    with atomic_dir(final) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        # peft would use the base model's; kit.verify and users' own code can read this one.
        generation_config(model, tokenizer).save_pretrained(str(tmp))
        _write_extra(tmp, extra_files)
        _settle_permissions(tmp)
    return final


def save_merged(model, tokenizer, final: Path, extra_files: dict[str, str] | None = None) -> Path:
    """Merge LoRA into 16-bit weights through Unsloth (which dequantizes a 4-bit base)."""
    with atomic_dir(final) as tmp:
        model.save_pretrained_merged(
            str(tmp.resolve()),
            tokenizer,
            save_method="merged_16bit",
            safe_serialization=None,  # safetensors even on 2-CPU hosts (Colab, Kaggle)
            temporary_location=str(tmp.resolve() / ".unsloth_buffers"),
        )
        shutil.rmtree(tmp / ".unsloth_buffers", ignore_errors=True)
        generation_config(model, tokenizer).save_pretrained(str(tmp))
        _copy_sentencepiece_model(model, tmp)
        _write_extra(tmp, extra_files)
        _settle_permissions(tmp)
    return final


def _copy_sentencepiece_model(model, folder: Path) -> None:
    """A SentencePiece `tokenizer.model` beside the base weights goes into the export too:
    llama.cpp's converter reads Phi-3's and Llama 2's vocabulary from it, and a fast tokenizer
    does not always write it back."""
    base = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""))
    src = base / "tokenizer.model"
    if base.is_dir() and src.is_file() and not (folder / "tokenizer.model").exists():
        shutil.copyfile(src, folder / "tokenizer.model")


def verify(kind: str, path: Path, prompt: list[dict], max_new_tokens: int = 64,
           timeout: float = 600) -> dict:
    """Load an exported folder in a fresh Python process (plain peft/transformers, no
    Unsloth), generate greedily from `prompt`, and report whether it stopped at one of the
    folder's own stop tokens (its generation_config.json)."""
    result = check_in_fresh_process(
        kind, ["kit.verify", kind, str(path), json.dumps(prompt), str(max_new_tokens)], timeout)
    if "error" not in result:
        result["ok"] = bool(result.get("reply")) and bool(result.get("stopped"))
    return result


def save_gguf(model, tokenizer, output_dir: Path, quant: str, merged: Path | None, progress=print) -> Path:
    """A GGUF converted from the merged model: the one just exported, or a temporary one that is
    removed afterwards (a GGUF-only run should not leave a 16-bit copy on a 20 GB Kaggle disk)."""
    from kit import gguf, stops

    stop_tokens = stops.stop_tokens(tokenizer, generation_config(model, tokenizer).eos_token_id)
    if merged is not None:
        return gguf.export_gguf(merged, output_dir / "gguf", quant, progress, name=output_dir.name,
                                stops=stop_tokens)
    scratch = output_dir / ".merged-for-gguf"
    try:
        save_merged(model, tokenizer, scratch)
        return gguf.export_gguf(scratch, output_dir / "gguf", quant, progress, name=output_dir.name,
                                stops=stop_tokens)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def export_and_verify(model, tokenizer, what: str, output_dir: Path, prompt: list[dict],
                      progress=print, extra_files: dict[str, str] | None = None,
                      max_new_tokens: int = 64, gguf_quant: str = "q8_0") -> dict[str, dict]:
    """Write the exports `what` asks for (adapter, merged, both, gguf or all), with
    `extra_files` (name → text) inside each folder, and check each one in a fresh process."""
    results = {}
    from kit.config import EXPORT_KINDS

    for kind in EXPORT_KINDS[what]:
        path = output_dir / kind
        progress(f"Saving {kind} to {path}")
        if kind == "gguf":
            from kit.gguf import verify_gguf

            merged = output_dir / "merged" if "merged" in results else None
            path = save_gguf(model, tokenizer, output_dir, gguf_quant, merged, progress)
            progress(f"Checking {path.name}: loading it in a fresh process with llama.cpp")
            res = results[kind] = {"path": str(path), **verify_gguf(path, prompt, max_new_tokens)}
        else:
            (save_adapter if kind == "adapter" else save_merged)(model, tokenizer, path, extra_files)
            progress(f"Checking {kind}: loading it in a fresh process with plain "
                     f"{'peft' if kind == 'adapter' else 'transformers'}")
            res = results[kind] = {"path": str(path), **verify(kind, path, prompt, max_new_tokens)}
        stop = f" ({res['stop_token']})" if res.get("stop_token") else ""
        status = (f"[green]loads, answers, stops at the end of its turn{escape(stop)}[/]" if res["ok"]
                  else f"[red]{escape(problem_of(res))}[/]")
        progress(f"{kind}: {status}  reply: {escape(repr(res.get('reply', '')[:100]))}")
    return results


def problem_of(result: dict) -> str:
    """What went wrong with one export's check, in a few words."""
    if result.get("error"):
        return result["error"]
    if not result.get("reply"):
        return "gave an empty reply"
    return "did not stop at the end of its turn (ran to the length limit)"


def require_ok(results: dict[str, dict]) -> None:
    """Fail the run (exit code 1, one line) if any export did not pass its fresh-process check:
    a file that does not load or does not stop is no result, whatever the metrics say."""
    from kit import ranks
    from kit.errors import CheckFailed

    bad = [f"{kind} ({problem_of(r)})" for kind, r in results.items() if not r.get("ok")]
    if bad:
        error = CheckFailed("export check failed: " + "; ".join(bad) + "; see metrics.json")
        error.quiet = not ranks.is_main()  # among several ranks, rank 0 says it
        raise error
