"""GGUF export for llama.cpp and Ollama, built only from PyPI packages (works offline).

Unsloth's own GGUF path clones and builds llama.cpp from GitHub at run time. Instead,
`scripts/setup_llama.sh` extracts llama.cpp's `convert_hf_to_gguf.py` (with its `gguf-py`)
from the llama-cpp-python sdist into `<venv>/share/kit-llama.cpp/` and builds that binding.
Here we run the converter (f16, bf16, q8_0) and the binding's quantize API (k-quants), each in
a subprocess so that a crash in C cannot take the training run with it, then check the file
by loading it with llama-cpp-python in a fresh process.

    python -m kit.gguf quantize IN.gguf OUT.gguf q4_k_m
    python -m kit.gguf verify MODEL.gguf '[{"role": "user", "content": "Hi"}]' [MAX_NEW_TOKENS]
    python -m kit.gguf verify-lora BASE.gguf ADAPTER.gguf PROMPT MAX_NEW_TOKENS REFERENCE.json

Each prints one JSON line. The verify side imports neither Unsloth nor transformers.

`export=gguf-lora` (export_gguf_lora): the base converted once to GGUF and the LoRA adapter
converted beside it by llama.cpp's own `convert_lora_to_gguf.py`, with an Ollama Modelfile that
says `FROM` the base and `ADAPTER` the adapter. llama.cpp scales an adapter by lora_alpha / r;
rsLoRA's scale (alpha / sqrt(r)) is kept by writing alpha * sqrt(r); DoRA cannot be expressed.
`LoraSet` loads one GGUF base and answers with a named adapter, or none, chosen per call.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kit.checks import BINDING_QUANTS, CONVERT_QUANTS, DORA_GGUF_LORA, LORA_TYPE, QUANTS, lora_gguf_name
from kit.errors import fail
from kit.families import CHAT_FORMATS
from kit.proc import check_in_fresh_process, last_error_line

SETUP_HINT = "run `make gguf-tools` (or `bash scripts/setup_llama.sh`)"
CONVERTER = "convert_hf_to_gguf.py"
LORA_CONVERTER = "convert_lora_to_gguf.py"


def tools_dir() -> Path:
    """Where setup_llama.sh puts llama.cpp's converter; $KIT_LLAMA_CPP overrides it (any
    llama.cpp checkout whose convert_hf_to_gguf.py and gguf-py/ match each other)."""
    env = os.environ.get("KIT_LLAMA_CPP")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "kit-llama.cpp"


def _has_binding() -> bool:
    # find_spec, not import: loading libllama in the training process is what we avoid.
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def tools_available(quant: str | None = None, lora: bool = False) -> str | None:
    """None when GGUF export of `quant` (default: every type, and verification; `lora`: the
    adapter converter too) can run, else one line saying what is missing and how to install it."""
    tools = tools_dir()
    if not (tools / CONVERTER).is_file() or not (tools / "gguf-py" / "gguf").is_dir():
        return f"llama.cpp's {CONVERTER} is not installed in {tools}; {SETUP_HINT}"
    if lora and not (tools / LORA_CONVERTER).is_file():
        return f"llama.cpp's {LORA_CONVERTER} is not installed in {tools}; {SETUP_HINT}"
    if quant not in CONVERT_QUANTS and not _has_binding():
        return f"the llama-cpp-python binding (llama_cpp) is not installed; {SETUP_HINT}"
    return None


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        crashed = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        fail(f"{what} failed{crashed}: {last_error_line(proc.stderr + proc.stdout)}")
    return proc.stdout


def _converter_env() -> dict[str, str]:
    env = dict(os.environ)
    # The converters need the gguf-py they ship with (newer than the stack's pinned gguf); put
    # it first for this subprocess only.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools_dir() / "gguf-py"), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")  # they read local files only; never the Hub
    return env


def _convert(merged_dir: Path, outfile: Path, outtype: str, name: str) -> None:
    _run([sys.executable, str(tools_dir() / CONVERTER), str(merged_dir), "--outfile", str(outfile),
          "--outtype", outtype, "--model-name", name],
         f"llama.cpp's {CONVERTER} ({outtype})", _converter_env())


def _quantize(src: Path, dst: Path, quant: str) -> None:
    _run([sys.executable, "-m", "kit.gguf", "quantize", str(src), str(dst), quant],
         f"llama_cpp quantize to {quant}")


def _model_name(merged_dir: Path) -> str:
    # `outputs/<run>/merged` is the usual layout: the run's name says more than "merged".
    path = merged_dir.resolve()
    return path.parent.name if path.name == "merged" else path.name


def convert_model(model_dir: Path, outfile: Path, quant: str, name: str,
                  progress: Callable[[str], object] = print) -> Path:
    """One Hugging Face model folder (merged, or a base) as the GGUF `outfile` of type `quant`:
    llama.cpp's converter, then its quantizer for the k-quants. Temporary files go beside
    `outfile`, which the caller renames into place."""
    if quant in CONVERT_QUANTS:
        progress(f"Converting {model_dir} to GGUF {quant} with llama.cpp's {CONVERTER}")
        _convert(model_dir, outfile, quant, name)
    else:
        # "auto" keeps the checkpoint's 16-bit type (bf16 stays bf16): nothing lost before
        # the one real quantization step.
        full = outfile.with_name(f".{outfile.name}.16bit")
        progress(f"Converting {model_dir} to a 16-bit GGUF with llama.cpp's {CONVERTER}")
        _convert(model_dir, full, "auto", name)
        progress(f"Quantizing to {quant} with llama.cpp (llama_cpp.llama_model_quantize)")
        _quantize(full, outfile, quant)
        full.unlink()
    return outfile


def export_gguf(merged_dir: Path, out_dir: Path, quant: str, progress: Callable[[str], object] = print,
                name: str | None = None, stops: list[str] | tuple[str, ...] = ()) -> Path:
    """Convert a merged Hugging Face model folder to `out_dir/<name>-<quant>.gguf` and write an
    Ollama `Modelfile` beside it, whose stop list includes `stops` (the model's stop set,
    kit.stops). Both appear whole or not at all."""
    merged_dir, out_dir = Path(merged_dir), Path(out_dir)
    quant = quant.lower()
    if quant not in QUANTS:
        fail(f"gguf quant {quant!r} is not supported; choose one of: {', '.join(QUANTS)}")
    if not (merged_dir / "config.json").is_file():
        fail(f"{merged_dir} is not a merged model folder (no config.json); export merged first")
    if reason := tools_available(quant):
        fail(reason)
    name = name or _model_name(merged_dir)
    final = out_dir / f"{name}-{quant}.gguf"
    made_out_dir = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The temp folder sits beside the result so the last step is a same-filesystem rename.
    tmp = Path(tempfile.mkdtemp(prefix=".gguf-tmp-", dir=out_dir))
    try:
        start = time.perf_counter()
        convert_model(merged_dir, tmp / final.name, quant, name, progress)
        modelfile = tmp / "Modelfile"
        modelfile.write_text(ollama_modelfile(tmp / final.name, stops))
        for f in (tmp / final.name, modelfile):
            f.chmod(0o644)
        os.replace(tmp / final.name, final)
        os.replace(modelfile, out_dir / "Modelfile")
        size = final.stat().st_size / 2**20
        progress(f"Wrote {final} ({size:.0f} MiB) and {out_dir / 'Modelfile'} "
                 f"in {time.perf_counter() - start:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_out_dir and not final.exists():
            with contextlib.suppress(OSError):  # we made it for this file; leave no empty folder
                out_dir.rmdir()
    return final


# ------------------------------------------------------------------ LoRA adapters (export=gguf-lora)


def lora_alpha(config: dict) -> float:
    """The lora_alpha to write for llama.cpp, which scales an adapter by lora_alpha / r (r: each
    tensor's rank): PEFT's alpha, or for rsLoRA (scale alpha / sqrt(r)) alpha * sqrt(r), the same
    scale. What one alpha cannot express is one line: DoRA, per-layer ranks or alphas."""
    if config.get("use_dora"):
        fail(DORA_GGUF_LORA)
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        fail("this adapter has per-layer ranks or alphas (rank_pattern/alpha_pattern), and a llama.cpp "
             "LoRA adapter has one lora_alpha for all layers; use export=gguf (the merged model)")
    alpha, r = float(config["lora_alpha"]), int(config["r"])
    return alpha * math.sqrt(r) if config.get("use_rslora") else alpha


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path,
                 progress: Callable[[str], object] = print) -> float:
    """The PEFT adapter in `adapter_dir` as the GGUF LoRA `outfile`, by llama.cpp's own
    convert_lora_to_gguf.py (the base's config.json from `base_dir`). The converter writes the
    adapter_config.json's lora_alpha as it is, so it reads a staged copy whose alpha keeps
    PEFT's scale (lora_alpha). Returns the alpha written."""
    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    alpha = lora_alpha(config)
    stage = Path(tempfile.mkdtemp(prefix=".lora-stage-", dir=outfile.parent))
    try:
        staged = {**config, "lora_alpha": alpha, "use_rslora": False}
        (stage / "adapter_config.json").write_text(json.dumps(staged, indent=2))
        for f in ("adapter_model.safetensors", "adapter_model.bin"):
            if (adapter_dir / f).is_file():
                (stage / f).symlink_to((adapter_dir / f).resolve())
        scale = (f"alpha {config['lora_alpha']} x sqrt(r={config['r']}) = {alpha:g}: rsLoRA's scale"
                 if config.get("use_rslora") else f"alpha {alpha:g}")
        progress(f"Converting the adapter to a GGUF LoRA ({LORA_TYPE}, {scale}) with llama.cpp's "
                 f"{LORA_CONVERTER}")
        _run([sys.executable, str(tools_dir() / LORA_CONVERTER), str(stage), "--base", str(base_dir),
              "--outfile", str(outfile), "--outtype", LORA_TYPE],
             f"llama.cpp's {LORA_CONVERTER}", _converter_env())
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return alpha


def export_gguf_lora(adapter_dir: Path, base_dir: Path, folder: Path, quant: str, base_name: str,
                     name: str, stops: list[str] | tuple[str, ...] = (),
                     progress: Callable[[str], object] = print) -> tuple[Path, Path]:
    """Into `folder` (the caller's temporary folder, renamed into place whole): the base as
    `<base_name>-<quant>.gguf`, the adapter as `<name>-lora-f16.gguf` and an Ollama Modelfile with
    FROM the base and ADAPTER the adapter. Returns (base GGUF, adapter GGUF)."""
    quant = quant.lower()
    if quant not in QUANTS:
        fail(f"gguf quant {quant!r} is not supported; choose one of: {', '.join(QUANTS)}")
    if reason := tools_available(quant, lora=True):
        fail(reason)
    folder = Path(folder)
    start = time.perf_counter()
    # The adapter first: one llama.cpp cannot take fails in seconds, before the base's conversion.
    adapter = folder / lora_gguf_name(name)
    convert_lora(adapter_dir, base_dir, adapter, progress)
    base = convert_model(base_dir, folder / f"{base_name}-{quant}.gguf", quant, base_name, progress)
    (folder / "Modelfile").write_text(ollama_modelfile(base, stops, adapter=adapter))
    mib = {f: f.stat().st_size / 2**20 for f in (base, adapter)}
    progress(f"Wrote {base.name} ({mib[base]:.0f} MiB), {adapter.name} ({mib[adapter]:.1f} MiB) and a "
             f"Modelfile in {time.perf_counter() - start:.0f} s")
    return base, adapter


# ------------------------------------------------------------------ Ollama Modelfile

# The chat formats an Ollama TEMPLATE is written for: kit.families.CHAT_FORMATS.
_PROBE = "kit-probe-7f3a"  # a user message no template could contain by accident


def _gguf_chat_info(path: Path) -> tuple[str | None, str | None, str | None]:
    """(chat template, BOS text, EOS text) as embedded in the GGUF: what Ollama will see."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def get(key):
        return fields[key].contents() if key in fields else None

    tokens = get("tokenizer.ggml.tokens") or []

    def token(key):
        i = get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

    bos, eos = token("tokenizer.ggml.bos_token_id"), token("tokenizer.ggml.eos_token_id")
    return get("tokenizer.chat_template"), bos, eos


def _render(template: str, messages: list[dict], bos: str | None, eos: str | None) -> str:
    """Render a Hugging Face chat template the way transformers does (sandboxed Jinja,
    trim_blocks/lstrip_blocks), without importing transformers."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda f: time.strftime(f))
    return env.from_string(template).render(messages=messages, add_generation_prompt=True,
                                            bos_token=bos or "", eos_token=eos or "")


def chat_family(template: str | None, bos: str | None = None, eos: str | None = None
                ) -> tuple[str | None, str | None]:
    """(family, default system prompt): which Ollama template reproduces `template`, judged by
    rendering one user turn, and the system text it inserts when the user gives none."""
    if not template:
        return None, None
    try:
        text = _render(template, [{"role": "user", "content": _PROBE}], bos, eos)
    except Exception:  # a template we cannot render is one we cannot vouch for
        return None, None
    if bos and "bos_token" in template and text.startswith(bos):
        text = text[len(bos):]  # llama.cpp adds BOS itself; Ollama's template must not
    for form in CHAT_FORMATS.values():
        user_turn = form.user_turn.format(probe=_PROBE)
        if text.endswith(user_turn):
            head = text[: -len(user_turn)]
            match = re.fullmatch(form.system, head, flags=re.S)
            if head and not match:
                return None, None  # something else before the turn: not a plain form of this family
            return form.name, (match.group(1) if match else None)
    return None, None


def _quote(text: str) -> str:
    if '"""' in text:  # Ollama's triple quotes cannot be escaped; fall back to one JSON line
        return json.dumps(text)
    return f'"""{text}"""'


def ollama_modelfile(gguf_path: Path, stops: list[str] | tuple[str, ...] = (),
                     adapter: Path | None = None) -> str:
    """An Ollama Modelfile for `gguf_path` (referenced as ./<file name>), its chat format taken
    from the template embedded in the GGUF, stopping at `stops` as well; `adapter`: a GGUF LoRA
    beside it, put on that base (Ollama's ADAPTER)."""
    return modelfile_text(gguf_path.name, *_gguf_chat_info(gguf_path), stops=stops,
                          adapter=adapter.name if adapter else None)


def modelfile_text(file_name: str, template: str | None, bos: str | None, eos: str | None,
                   stops: list[str] | tuple[str, ...] = (), adapter: str | None = None) -> str:
    family, system = chat_family(template, bos, eos)
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{file_name}"]
    if adapter:  # a LoRA for that base (Ollama takes one ADAPTER)
        lines.append(f"ADAPTER ./{adapter}")
    lines.append("")
    if family:
        form = CHAT_FORMATS[family]
        lines += [f"# {family} chat format, as in the model's tokenizer chat template",
                  f"TEMPLATE {_quote(form.ollama)}"]
        if system:
            lines.append(f"SYSTEM {_quote(system)}")
        stops = list(dict.fromkeys([*form.stops, *stops, *([eos] if eos else [])]))
    else:
        lines += ["# No TEMPLATE: the chat format is not one this kit recognises, so Ollama picks one by",
                  "# matching the GGUF's embedded tokenizer.chat_template against the templates it knows.",
                  "# If replies run on or ignore the turns, add a TEMPLATE for this model by hand."]
        stops = list(dict.fromkeys([*stops, *([eos] if eos else [])]))
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ checking the file


def verify_gguf(path: Path, prompt: list[dict], max_new_tokens: int = 64, timeout: float = 300) -> dict:
    """Load a GGUF with llama-cpp-python in a fresh process, answer `prompt` greedily through
    the GGUF's own chat template, and report whether it stopped at end-of-turn."""
    if not _has_binding():
        return {"kind": "gguf", "ok": False, "stopped": False, "reply": "",
                "error": f"the llama-cpp-python binding (llama_cpp) is not installed; {SETUP_HINT}"}
    result = check_in_fresh_process(
        "gguf", ["kit.gguf", "verify", str(path), json.dumps(prompt), str(max_new_tokens)], timeout)
    if "error" not in result:
        result["ok"] = bool(result["reply"]) and bool(result["stopped"])
    return result


# What the gguf-lora check asks of llama.cpp (base + adapter) against the PEFT adapter's greedy
# reply to the same prompt ids: the first LORA_TOKENS tokens (the stop token included), each
# predicted by llama.cpp given PEFT's tokens before it. On a lossless base (f16, bf16) all of them
# equal; on a quantized base at least LORA_QUANT_AGREEMENT of them (the quantization moves the
# logits: one difference in 10 to 16 tokens is let pass; an rsLoRA adapter scaled 4x too little
# agreed on 8 of 9, which fails). Then it answers through the GGUF's own chat template and must
# stop at the end of its turn.
LORA_TOKENS = 16
LORA_QUANT_AGREEMENT = 0.9
LOSSLESS = ("f16", "bf16")


def verify_gguf_lora(base: Path, adapter: Path, prompt: list[dict] | str, reference: dict, quant: str,
                     max_new_tokens: int = 64, timeout: float = 300) -> dict:
    """Load the base GGUF with the GGUF adapter in llama.cpp, in a fresh process, and compare its
    greedy tokens with `reference` (kit.verify's PEFT reply: prompt_ids, token_ids); then answer
    `prompt` through the GGUF's chat template and report whether it stopped."""
    failed = {"kind": "gguf-lora", "ok": False, "stopped": False, "reply": ""}
    if not _has_binding():
        return {**failed, "error": f"the llama-cpp-python binding (llama_cpp) is not installed; {SETUP_HINT}"}
    if not reference.get("token_ids"):
        return {**failed, "error": "no PEFT reply to compare with (the adapter's own check failed)"}
    ref = {k: reference[k] for k in ("prompt_ids", "token_ids")}
    result = check_in_fresh_process(
        "gguf-lora", ["kit.gguf", "verify-lora", str(base), str(adapter), json.dumps(prompt),
                      str(max_new_tokens), json.dumps(ref)], timeout)
    if "error" in result:
        return result
    n, same, prefix = result["compared"], result["same"], result["same_prefix"]
    lossless = quant in LOSSLESS
    agrees = prefix == n if lossless else same >= LORA_QUANT_AGREEMENT * n
    result["criterion"] = (f"all first {n} PEFT tokens" if lossless
                           else f"at least {LORA_QUANT_AGREEMENT:.0%} of the first {n} PEFT tokens")
    if not agrees:
        at = result["first_difference"]
        result["error"] = (f"llama.cpp with the adapter departs from the PEFT adapter: {same} of its first "
                           f"{n} greedy tokens agree (needs {result['criterion']}); first difference at "
                           f"token {at + 1}: {result['llama_token']!r} where PEFT has "
                           f"{result['peft_token']!r}")
    result["ok"] = agrees and bool(result["reply"]) and bool(result["stopped"])
    return result


class LoraSet:
    """One GGUF base loaded once in llama.cpp (in this process), several GGUF LoRA adapters on
    it, each request answered with the adapter it names, or with none (the base itself):

        models = LoraSet("gguf-lora/SmolLM2-135M-Instruct-f16.gguf",
                         {"pip": "a/gguf-lora/a-lora-f16.gguf", "terse": "b/gguf-lora/b-lora-f16.gguf"})
        models.chat([{"role": "user", "content": "Who are you?"}], adapter="pip")

    Switching sets the context's adapters (llama_set_adapters_lora) and drops the cached prompt
    (its keys and values were computed with the other adapter); the weights stay loaded."""

    def __init__(self, base: str | Path, adapters: dict[str, str | Path] | None = None,
                 n_ctx: int = 2048, n_threads: int | None = None, **llama_kwargs):
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(base), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count() or 1,
                         verbose=llama_kwargs.pop("verbose", False), **llama_kwargs)
        self.adapters: dict[str, object] = {}
        self.active: tuple[str | None, float] = (None, 0.0)
        for name, path in (adapters or {}).items():
            self.add(name, path)

    def add(self, name: str, path: str | Path) -> None:
        """Load a GGUF LoRA made for this base (freed with the model)."""
        import llama_cpp

        if not Path(path).is_file():
            fail(f"adapter {name!r}: no file at {path}")
        ptr = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode())
        if not ptr:
            fail(f"adapter {name!r}: llama.cpp could not load {path} as a LoRA for this base")
        self.adapters[name] = ptr

    def use(self, adapter: str | None = None, scale: float = 1.0) -> None:
        """Answer with `adapter` (None: the base alone) from now on."""
        import ctypes

        import llama_cpp

        if (adapter, scale) == self.active:
            return
        if adapter is not None and adapter not in self.adapters:
            fail(f"no adapter named {adapter!r}; loaded: {', '.join(self.adapters) or 'none'}")
        ctx = self.llm._ctx.ctx
        if adapter is None:
            rc = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            ptrs = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            rc = llama_cpp.llama_set_adapters_lora(ctx, ptrs, 1, (ctypes.c_float * 1)(scale))
        if rc:
            fail(f"llama.cpp could not set adapter {adapter!r} (llama_set_adapters_lora returned {rc})")
        self.llm.reset()  # the cached prompt's keys and values belong to the previous adapter
        self.active = (adapter, scale)

    def chat(self, messages: list[dict], adapter: str | None = None, scale: float = 1.0,
             max_tokens: int = 64, **kwargs) -> dict:
        """create_chat_completion (the GGUF's own chat template; greedy unless you pass
        temperature) with `adapter` at `scale`."""
        self.use(adapter, scale)
        kwargs.setdefault("temperature", 0.0)
        kwargs.setdefault("top_k", 1)
        return self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, **kwargs)


# ------------------------------------------------------------------ subprocess side


def _child_quantize(src: str, dst: str, quant: str) -> int:
    import ctypes

    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, BINDING_QUANTS[quant])
    params.nthread = os.cpu_count() or 1
    start = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    print(json.dumps({"quant": quant, "rc": rc, "seconds": round(time.perf_counter() - start, 1)}))
    if rc != 0:
        print(f"error: llama_model_quantize returned {rc}", file=sys.stderr)
    return 0 if rc == 0 else 1


def _child_verify(path: str, prompt: list[dict] | str, max_new_tokens: int) -> int:
    start = time.perf_counter()
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_threads=os.cpu_count() or 1, verbose=False)
    loaded = time.perf_counter() - start
    print(json.dumps({
        "kind": "gguf",
        **_greedy_answer(llm, prompt, max_new_tokens),
        "chat_format": llm.chat_format,
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


def _greedy_answer(llm, prompt: list[dict] | str, max_new_tokens: int) -> dict:
    """llama.cpp's greedy answer: raw text (a fill-in-the-middle prompt) as it is, a conversation
    through create_chat_completion, which renders the GGUF's own tokenizer.chat_template (as
    llama.cpp's server does) and stops at the vocabulary's end-of-generation tokens."""
    if isinstance(prompt, str):
        out = llm(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1, seed=0)
        reply = out["choices"][0].get("text")
    else:
        out = llm.create_chat_completion(messages=prompt, max_tokens=max_new_tokens, temperature=0.0,
                                         top_k=1, seed=0)
        reply = out["choices"][0]["message"].get("content")
    choice = out["choices"][0]
    return {"reply": (reply or "").strip(), "stopped": choice.get("finish_reason") == "stop",
            "finish_reason": choice.get("finish_reason"),
            "completion_tokens": out.get("usage", {}).get("completion_tokens")}


def _child_verify_lora(base: str, adapter: str, prompt: list[dict] | str, max_new_tokens: int,
                       reference: dict) -> int:
    import numpy as np
    from llama_cpp import Llama

    start = time.perf_counter()
    if not Path(adapter).is_file():  # llama.cpp would crash on it rather than say so
        print(f"error: no GGUF adapter at {adapter}", file=sys.stderr)
        return 1
    llm = Llama(model_path=base, lora_path=adapter, n_ctx=2048, n_threads=os.cpu_count() or 1,
                verbose=False)
    loaded = time.perf_counter() - start
    # Teacher-forced: PEFT's prompt ids, then its reply one token at a time, each next token
    # predicted by llama.cpp (the last position's logits after each step).
    ids, ref = list(reference["prompt_ids"]), list(reference["token_ids"])[:LORA_TOKENS]
    pred = []
    for step in [ids, *([t] for t in ref[:-1])]:
        llm.eval(step)
        pred.append(int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)))))
    diffs = [i for i, (a, b) in enumerate(zip(pred, ref)) if a != b]
    first = diffs[0] if diffs else None

    def text(token):
        return llm.detokenize([token], special=True).decode(errors="replace")

    llm.reset()
    print(json.dumps({
        "kind": "gguf-lora",
        "compared": len(ref), "same": len(ref) - len(diffs),
        "same_prefix": len(ref) if first is None else first, "first_difference": first,
        "llama_token": text(pred[first]) if first is not None else None,
        "peft_token": text(ref[first]) if first is not None else None,
        **_greedy_answer(llm, prompt, max_new_tokens),
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["verify-lora"] and len(argv) == 6:
        return _child_verify_lora(argv[1], argv[2], json.loads(argv[3]), int(argv[4]), json.loads(argv[5]))
    if argv[:1] == ["quantize"] and len(argv) == 4 and argv[3] in BINDING_QUANTS:
        return _child_quantize(argv[1], argv[2], argv[3])
    if argv[:1] == ["verify"] and len(argv) in (3, 4):
        return _child_verify(argv[1], json.loads(argv[2]), int(argv[3]) if len(argv) > 3 else 64)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
