"""GGUF export for llama.cpp and Ollama, built only from PyPI packages (works offline).

Unsloth's own GGUF path clones and builds llama.cpp from GitHub at run time. Instead,
`scripts/setup_llama.sh` extracts llama.cpp's `convert_hf_to_gguf.py` (with its `gguf-py`)
from the llama-cpp-python sdist into `<venv>/share/kit-llama.cpp/` and builds that binding.
Here we run the converter (f16, bf16, q8_0) and the binding's quantize API (k-quants), each in
a subprocess so that a crash in C cannot take the training run with it, then check the file
by loading it with llama-cpp-python in a fresh process.

    python -m kit.gguf quantize IN.gguf OUT.gguf q4_k_m
    python -m kit.gguf verify MODEL.gguf '[{"role": "user", "content": "Hi"}]' [MAX_NEW_TOKENS]

Each prints one JSON line. The verify side imports neither Unsloth nor transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from kit.checks import BINDING_QUANTS, CONVERT_QUANTS, QUANTS
from kit.errors import fail
from kit.families import CHAT_FORMATS
from kit.proc import check_in_fresh_process, last_error_line

SETUP_HINT = "run `make gguf-tools` (or `bash scripts/setup_llama.sh`)"
CONVERTER = "convert_hf_to_gguf.py"


def tools_dir() -> Path:
    """Where setup_llama.sh puts llama.cpp's converter; $KIT_LLAMA_CPP overrides it (any
    llama.cpp checkout whose convert_hf_to_gguf.py and gguf-py/ match each other)."""
    env = os.environ.get("KIT_LLAMA_CPP")
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "kit-llama.cpp"


def _has_binding() -> bool:
    # find_spec, not import: loading libllama in the training process is what we avoid.
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def tools_available(quant: str | None = None) -> str | None:
    """None when GGUF export of `quant` (default: every type, and verification) can run,
    else one line saying what is missing and how to install it."""
    tools = tools_dir()
    if not (tools / CONVERTER).is_file() or not (tools / "gguf-py" / "gguf").is_dir():
        return f"llama.cpp's {CONVERTER} is not installed in {tools}; {SETUP_HINT}"
    if quant not in CONVERT_QUANTS and not _has_binding():
        return f"the llama-cpp-python binding (llama_cpp) is not installed; {SETUP_HINT}"
    return None


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        crashed = f" (killed by signal {-proc.returncode})" if proc.returncode < 0 else ""
        fail(f"{what} failed{crashed}: {last_error_line(proc.stderr + proc.stdout)}")
    return proc.stdout


def _convert(merged_dir: Path, outfile: Path, outtype: str, name: str) -> None:
    tools = tools_dir()
    env = dict(os.environ)
    # The converter needs the gguf-py it ships with (newer than the stack's pinned gguf); put
    # it first for this subprocess only.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tools / "gguf-py"), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")  # it reads tokenizer files locally; never the Hub
    _run([sys.executable, str(tools / CONVERTER), str(merged_dir), "--outfile", str(outfile),
          "--outtype", outtype, "--model-name", name],
         f"llama.cpp's {CONVERTER} ({outtype})", env)


def _quantize(src: Path, dst: Path, quant: str) -> None:
    _run([sys.executable, "-m", "kit.gguf", "quantize", str(src), str(dst), quant],
         f"llama_cpp quantize to {quant}")


def _model_name(merged_dir: Path) -> str:
    # `outputs/<run>/merged` is the usual layout: the run's name says more than "merged".
    path = merged_dir.resolve()
    return path.parent.name if path.name == "merged" else path.name


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
        if quant in CONVERT_QUANTS:
            progress(f"Converting {merged_dir} to GGUF {quant} with llama.cpp's {CONVERTER}")
            _convert(merged_dir, tmp / final.name, quant, name)
        else:
            # "auto" keeps the checkpoint's 16-bit type (bf16 stays bf16): nothing lost before
            # the one real quantization step.
            progress(f"Converting {merged_dir} to a 16-bit GGUF with llama.cpp's {CONVERTER}")
            _convert(merged_dir, tmp / "full.gguf", "auto", name)
            progress(f"Quantizing to {quant} with llama.cpp (llama_cpp.llama_model_quantize)")
            _quantize(tmp / "full.gguf", tmp / final.name, quant)
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


def ollama_modelfile(gguf_path: Path, stops: list[str] | tuple[str, ...] = ()) -> str:
    """An Ollama Modelfile for `gguf_path` (referenced as ./<file name>), its chat format taken
    from the template embedded in the GGUF, stopping at `stops` as well."""
    return modelfile_text(gguf_path.name, *_gguf_chat_info(gguf_path), stops=stops)


def modelfile_text(file_name: str, template: str | None, bos: str | None, eos: str | None,
                   stops: list[str] | tuple[str, ...] = ()) -> str:
    family, system = chat_family(template, bos, eos)
    lines = ["# Ollama: ollama create NAME -f Modelfile && ollama run NAME", f"FROM ./{file_name}", ""]
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
    # create_chat_completion renders the GGUF's own tokenizer.chat_template (as llama.cpp's
    # server does) and stops at the vocabulary's end-of-generation tokens.
    if isinstance(prompt, str):  # raw text (a fill-in-the-middle prompt): no chat template
        out = llm(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1, seed=0)
        reply = out["choices"][0].get("text") or ""
    else:
        out = llm.create_chat_completion(messages=prompt, max_tokens=max_new_tokens, temperature=0.0,
                                         top_k=1, seed=0)
        reply = out["choices"][0]["message"].get("content") or ""
    choice = out["choices"][0]
    print(json.dumps({
        "kind": "gguf",
        "reply": reply.strip(),
        "stopped": choice.get("finish_reason") == "stop",
        "finish_reason": choice.get("finish_reason"),
        "chat_format": llm.chat_format,
        "completion_tokens": out.get("usage", {}).get("completion_tokens"),
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["quantize"] and len(argv) == 4 and argv[3] in BINDING_QUANTS:
        return _child_quantize(argv[1], argv[2], argv[3])
    if argv[:1] == ["verify"] and len(argv) in (3, 4):
        return _child_verify(argv[1], json.loads(argv[2]), int(argv[3]) if len(argv) > 3 else 64)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
