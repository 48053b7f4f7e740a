"""Export: the LoRA adapter (PEFT format) and/or the merged model, written atomically and then
checked by loading each in a fresh process with plain peft/transformers.

The adapter names its base portably and carries its fingerprint (kit.pin). The merge is done in
float32 by plain PEFT in a fresh process (kit.verify.merge_main), from the 16-bit base where the
run was 4-bit, and saved in `merge_dtype`; merged/merge_report.json says what the cast lost and
how far the merged model's held-out loss and greedy tokens are from the adapter's."""

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


def base_of(model, base=None):
    """(path, hub id) of the base the adapters sit on: the run's ModelChoice where given, else
    the path PEFT recorded when get_peft_model was called."""
    if base is not None:
        return str(base.path), base.hub_id
    return str(model.peft_config["default"].base_model_name_or_path or ""), ""


def save_adapter(model, tokenizer, final: Path, extra_files: dict[str, str] | None = None,
                 base=None) -> Path:
    """The adapter (PEFT's save_pretrained) naming its base portably (the Hub id, or the folder's
    name; kit.pin), with base_fingerprint.json beside it. A PiSSA/OLoRA adapter is converted to a
    plain LoRA against the original base (from the initial adapter kit.adapters.keep_initial
    kept in output_dir), so it loads on that base in plain PEFT."""
    from kit import adapters, pin

    path, hub_id = base_of(model, base)
    pinned = pin.record(path, hub_id)
    config = model.peft_config["default"]
    initial = adapters.initial_dir(final.parent)
    convert = ({"path_initial_model_for_weight_conversion": str(initial)}
               if str(config.init_lora_weights).lower() in adapters.REWRITES_BASE and initial.is_dir()
               else {})
    with atomic_dir(final) as tmp:
        # adapter_config.json and PEFT's README.md name the base from these two: the portable
        # name for the save, this machine's path back afterwards.
        inner = model.get_base_model()
        saved = (config.base_model_name_or_path, config.revision, inner.config._name_or_path,
                 inner.name_or_path)
        config.base_model_name_or_path, config.revision = pinned["base_model"], pinned["revision"]
        inner.config._name_or_path = inner.name_or_path = pinned["base_model"]
        try:
            embeddings = _embeddings_to_save(model, config, pin.base_dir(path))
            model.save_pretrained(str(tmp), **convert, save_embedding_layers=embeddings)
        finally:
            (config.base_model_name_or_path, config.revision, inner.config._name_or_path,
             inner.name_or_path) = saved
        (tmp / pin.FILE).write_text(json.dumps(pinned, indent=2) + "\n")
        local = pin.base_dir(path)
        if local is not None:  # where the base is on this machine; a dot-file, never pushed
            (tmp / pin.LOCAL).write_text(str(local.resolve()) + "\n")
        tokenizer.save_pretrained(str(tmp))
        # peft would use the base model's; kit.verify and users' own code can read this one.
        generation_config(model, tokenizer).save_pretrained(str(tmp))
        _write_extra(tmp, extra_files)
        _settle_permissions(tmp)
    return final


def _embeddings_to_save(model, config, base_folder: Path | None) -> bool | str:
    """PEFT's own rule for putting the whole embedding layers in the adapter (they were resized,
    or LoRA targets them), decided from the base's config.json on this machine. PEFT's "auto"
    looks the base up by the portable name the adapter is being saved under, which is no path
    here and may be a Hub id out of reach: a warning on every offline save."""
    from peft.utils.constants import EMBEDDING_LAYER_NAMES

    targets = config.target_modules
    vocab = getattr(model.config, "vocab_size", None)
    if base_folder is None or not vocab or (isinstance(targets, str) and targets != "all-linear"):
        return "auto"
    if not isinstance(targets, str) and any(t in EMBEDDING_LAYER_NAMES for t in targets):
        return "auto"  # PEFT saves them without a lookup
    return json.loads((base_folder / "config.json").read_text()).get("vocab_size") != vocab


def merge_base(model, base=None) -> str | None:
    """The 16-bit weights to merge into: the run's base, or for a 4-bit run the 16-bit model
    Unsloth's table maps it to (or the same repository, when it was quantized on loading).
    None: unknown (a pre-quantized model outside Unsloth's table)."""
    path, _ = base_of(model, base)
    if not getattr(model, "is_loaded_in_4bit", False):
        return path
    from unsloth.models.mapper import INT_TO_FLOAT_MAPPER

    full = INT_TO_FLOAT_MAPPER.get(path) or INT_TO_FLOAT_MAPPER.get(path.lower())
    if full:
        return full
    from kit import pin

    folder = pin.base_dir(path)
    config = json.loads((folder / "config.json").read_text()) if folder else {}
    return path if folder and "quantization_config" not in config else None


def held_out_file(folder: Path, held_out, rows: int = 16, prompts: int = 4, new_tokens: int = 16) -> Path:
    """The held-out rows the merge report measures (token ids and labels; the prompt part of the
    first few, for greedy replies), as JSON for the fresh process."""
    data = {"rows": [[e.input_ids, e.labels] for e in held_out[:rows]],
            "prompts": [], "new_tokens": new_tokens}
    for e in held_out[:prompts]:
        first = next((i for i, lab in enumerate(e.labels) if lab != -100), len(e.labels))
        if first > 0:
            data["prompts"].append(e.input_ids[:first])
    path = folder / "held_out.json"
    path.write_text(json.dumps(data))
    return path


def save_merged(model, tokenizer, final: Path, extra_files: dict[str, str] | None = None, *,
                adapter: Path | None = None, base=None, dtype: str = "auto", held_out=None,
                check: tuple | None = None, timeout: float = 3600) -> tuple[Path, dict]:
    """The merged model and its merge report (kit.verify.merge_main, in a fresh process): LoRA
    merged in float32 into the 16-bit base and saved in `dtype`. `adapter`: the adapter folder
    already saved (else one is saved to a scratch folder first). `check`: (prompt,
    max_new_tokens) for the export's check, made in the same fresh process on the merged model
    as it reloads it from disk (the report's `answer`). A 4-bit run whose 16-bit base is unknown
    is merged by Unsloth's save_pretrained_merged instead (report: measured false)."""
    full = merge_base(model, base)
    if full is None:
        return _save_merged_unsloth(model, tokenizer, final, extra_files), {
            "measured": False, "ok": True,
            "note": "merged by Unsloth (merged_16bit): no 16-bit base known for this 4-bit model"}
    scratch = Path(tempfile.mkdtemp(prefix=".merge-", dir=final.parent))
    try:
        if adapter is None or not (adapter / "adapter_config.json").is_file():
            adapter = save_adapter(model, tokenizer, scratch / "adapter", base=base)
        data = held_out_file(scratch, list(held_out or []))
        task = scratch / "check.json"
        task.write_text(json.dumps({
            "prompt": check[0] if check else "", "max_new_tokens": check[1] if check else 0,
            "generation_config": generation_config(model, tokenizer).to_json_string()}))
        with atomic_dir(final) as tmp:
            # Everything but the weights first: the fresh process checks the folder as it will be.
            tokenizer.save_pretrained(str(tmp))
            _copy_sentencepiece_model(model, tmp)
            _write_extra(tmp, extra_files)
            report = check_in_fresh_process("merge", ["kit.verify", "merge", str(adapter), str(tmp),
                                                      full, dtype, str(data), str(task)], timeout)
            if report.get("error"):
                from kit.errors import CheckFailed

                raise CheckFailed(f"merge failed: {report['error']}")
            _settle_permissions(tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return final, report


def _save_merged_unsloth(model, tokenizer, final: Path, extra_files: dict[str, str] | None = None) -> Path:
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
           timeout: float = 600, base: str | None = None) -> dict:
    """Load an exported folder in a fresh Python process (plain peft/transformers, no
    Unsloth), generate greedily from `prompt`, and report whether it stopped at one of the
    folder's own stop tokens (its generation_config.json). `base`: the base an adapter goes on
    (its adapter_config.json names the Hub id, which need not be reachable from here)."""
    result = check_in_fresh_process(
        kind, ["kit.verify", kind, str(path), json.dumps(prompt), str(max_new_tokens),
               *([base] if base and kind == "adapter" else [])], timeout)
    if "error" not in result:
        result["ok"] = bool(result.get("reply")) and bool(result.get("stopped"))
    return result


def save_gguf(model, tokenizer, output_dir: Path, quant: str, merged: Path | None, progress=print,
              **merge) -> Path:
    """A GGUF converted from the merged model: the one just exported, or a temporary one that is
    removed afterwards (a GGUF-only run should not leave a 16-bit copy on a 20 GB Kaggle disk)."""
    from kit import gguf, stops

    stop_tokens = stops.stop_tokens(tokenizer, generation_config(model, tokenizer).eos_token_id)
    if merged is not None:
        return gguf.export_gguf(merged, output_dir / "gguf", quant, progress, name=output_dir.name,
                                stops=stop_tokens)
    scratch = output_dir / ".merged-for-gguf"
    try:
        save_merged(model, tokenizer, scratch, **merge)
        return gguf.export_gguf(scratch, output_dir / "gguf", quant, progress, name=output_dir.name,
                                stops=stop_tokens)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gguf_base(model, base=None) -> tuple[Path, str]:
    """(folder, name) of the 16-bit base a GGUF LoRA goes on: the run's base (for a 4-bit run the
    16-bit model it was made from, kit.export.merge_base), fetched from the Hub if it is not on
    this machine, and the name its GGUF gets (the Hub id's last part, or the folder's name)."""
    from kit import pin
    from kit.errors import CheckFailed

    full = merge_base(model, base)
    folder = pin.base_dir(full) if full else None
    if folder is None and full and full.count("/") == 1:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(full, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                              "*.txt", "*.jinja"]))
    if folder is None:
        raise CheckFailed("export=gguf-lora: no 16-bit base known for this 4-bit model, and llama.cpp "
                          "needs one to put the adapter on; use export=gguf (the merged model)")
    hub_id = base.hub_id if base is not None and full == str(base.path) else ""
    return folder, pin.portable_name(full, hub_id)[0].split("/")[-1]


def save_gguf_lora(model, tokenizer, output_dir: Path, quant: str, adapter: Path, base=None,
                   progress=print) -> tuple[Path, Path]:
    """output_dir/gguf-lora: the base as GGUF (`quant`), the saved PEFT `adapter` as a GGUF LoRA
    beside it and an Ollama Modelfile (FROM the base, ADAPTER the adapter), written whole or not
    at all. Returns (base GGUF, adapter GGUF)."""
    from kit import gguf, stops

    folder, base_name = gguf_base(model, base)
    stop_tokens = stops.stop_tokens(tokenizer, generation_config(model, tokenizer).eos_token_id)
    final = output_dir / "gguf-lora"
    with atomic_dir(final) as tmp:
        base_gguf, lora = gguf.export_gguf_lora(adapter, folder, tmp, quant, base_name, output_dir.name,
                                                stop_tokens, progress)
        _settle_permissions(tmp)
    return final / base_gguf.name, final / lora.name


def export_and_verify(model, tokenizer, what: str, output_dir: Path, prompt: list[dict],
                      progress=print, extra_files: dict[str, str] | None = None,
                      max_new_tokens: int = 64, gguf_quant: str = "q8_0", *, base=None,
                      merge_dtype: str = "auto", held_out=None) -> dict[str, dict]:
    """Write the exports `what` asks for (adapter, merged, both, gguf, gguf-lora or all), with
    `extra_files` (name → text) inside each folder, and check each one in a fresh process.
    `base`: the run's ModelChoice (the adapter's pinned base); `merge_dtype` and `held_out`
    (encoded held-out rows) go to the merge and its report."""
    results = {}
    from kit.config import EXPORT_KINDS

    base_path = base_of(model, base)[0]
    reference: dict = {}
    merge = {"adapter": output_dir / "adapter", "base": base, "dtype": merge_dtype, "held_out": held_out}
    for kind in EXPORT_KINDS[what]:
        path = output_dir / kind
        progress(f"Saving {kind} to {path}")
        report = None
        if kind == "gguf":
            from kit.gguf import verify_gguf

            merged = output_dir / "merged" if "merged" in results else None
            path = save_gguf(model, tokenizer, output_dir, gguf_quant, merged, progress, **merge)
            progress(f"Checking {path.name}: loading it in a fresh process with llama.cpp")
            res = results[kind] = {"path": str(path), **verify_gguf(path, prompt, max_new_tokens)}
        elif kind == "gguf-lora":  # (after "adapter": EXPORT_KINDS puts it first)
            from kit.gguf import verify_gguf_lora

            base_gguf, path = save_gguf_lora(model, tokenizer, output_dir, gguf_quant, output_dir / "adapter",
                                             base, progress)
            progress(f"Checking {path.name} on {base_gguf.name}: llama.cpp in a fresh process, against "
                     "the PEFT adapter's greedy tokens")
            res = results[kind] = {"path": str(path), "base": str(base_gguf), **verify_gguf_lora(
                base_gguf, path, prompt, reference, gguf_quant, max_new_tokens), "peft": reference}
        else:
            if kind == "adapter":
                save_adapter(model, tokenizer, path, extra_files, base=base)
            else:
                progress(f"Merging in float32 and checking {kind} in a fresh process with plain "
                         f"transformers")
                _, report = save_merged(model, tokenizer, path, extra_files, **merge,
                                        check=(prompt, max_new_tokens))
                progress(merge_line(report))
            answer = (report or {}).pop("answer", None)
            if answer is not None:  # the merge's process made the check on the saved folder
                answer["ok"] = bool(answer.get("reply")) and bool(answer.get("stopped"))
            else:
                progress(f"Checking {kind}: loading it in a fresh process with plain "
                         f"{'peft' if kind == 'adapter' else 'transformers'}")
            res = results[kind] = {"path": str(path), **(answer or verify(
                kind, path, prompt, max_new_tokens, base=base_path))}
            ids = {k: res.pop(k, None) for k in ("prompt_ids", "token_ids")}  # not for metrics.json
            if kind == "adapter":  # the PEFT reply's token ids: what the gguf-lora check compares
                reference = ids
        if report is not None:
            res["merge"] = report
            if not report.get("ok", True) and res.get("ok"):
                res["ok"], res["error"] = False, report["problem"]
        stop = f" ({res['stop_token']})" if res.get("stop_token") else ""
        status = (f"[green]loads, answers, stops at the end of its turn{escape(stop)}[/]" if res["ok"]
                  else f"[red]{escape(problem_of(res))}[/]")
        progress(f"{kind}: {status}  reply: {escape(repr(res.get('reply', '')[:100]))}")
    return results


def merge_line(report: dict) -> str:
    """The merge report in one line for the console."""
    if report.get("measured") is False:
        return f"merge: {report.get('note', '')}"
    lost = report.get("update_lost")
    return escape(f"merge: float32, saved as {report['dtype']} ({report['why']}); update lost "
                  f"{'all' if lost is None else f'{lost:.2%}'}, unchanged entries "
                  f"{report['unchanged_share']:.1%}; held-out loss {report['loss_adapter']:.4f} "
                  f"(adapter) → {report['loss_merged']:.4f} (merged); greedy agreement "
                  f"{report['greedy_agreement']:.1%}")


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
