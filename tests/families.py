"""The model families users bring, built offline: real tokenizers and chat templates, tiny
random-init models of each architecture.

No model can be downloaded in the tests, but the llama-cpp-python source distribution that
`make gguf-tools` fetches ships vocab-only GGUFs with the real tokenizers of Llama 3, Qwen2,
Phi-3, Llama 2 / Mistral (SentencePiece) and Gemma 4, with test strings and the token ids
llama.cpp gives them, and the published chat templates of those models. transformers'
GGUF tokenizer conversion takes 50-90 s per family and gets special tokens wrong, so the
tokenizers are rebuilt here from the GGUF's vocabulary, merges and scores (a few seconds),
checked against llama.cpp's expected ids (tests/test_families.py), and cached.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kit.embedded import cache_root

SDIST_VERSION = "0.3.36"
MODELS = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/models"
CACHE_VERSION = "2"

# Byte-level BPE pre-tokenizer patterns, by the GGUF's `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "qwen2": _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")}


@dataclass(frozen=True)
class Family:
    name: str
    vocab: str  # ggml-vocab-*.gguf in the sdist
    template: str | None  # models/templates/*.jinja; None: the GGUF's own
    arch: str  # transformers model class
    turn_end: str  # the token that ends an assistant turn in this family's template
    generation_eos: tuple[str, ...]  # what a real checkpoint's generation_config.json lists
    config: dict = field(default_factory=dict)  # architecture-specific config keys


FAMILIES = {
    "llama3": Family("llama3", "ggml-vocab-llama-bpe.gguf", "meta-llama-Llama-3.1-8B-Instruct.jinja",
                     "LlamaForCausalLM", "<|eot_id|>",
                     ("<|end_of_text|>", "<|eot_id|>")),
    "qwen2": Family("qwen2", "ggml-vocab-qwen2.gguf", "Qwen-Qwen2.5-7B-Instruct.jinja",
                    "Qwen2ForCausalLM", "<|im_end|>", ("<|im_end|>", "<|endoftext|>")),
    "qwen3": Family("qwen3", "ggml-vocab-qwen2.gguf", "Qwen-Qwen3-0.6B.jinja", "Qwen3ForCausalLM",
                    "<|im_end|>", ("<|im_end|>", "<|endoftext|>"), {"head_dim": 16}),
    "phi3": Family("phi3", "ggml-vocab-phi-3.gguf", "microsoft-Phi-3.5-mini-instruct.jinja",
                   "Phi3ForCausalLM", "<|end|>", ("<|endoftext|>",)),
    "mistral": Family("mistral", "ggml-vocab-llama-spm.gguf", "mistralai-Mistral-Nemo-Instruct-2407.jinja",
                      "MistralForCausalLM", "</s>", ("</s>",)),
    "gemma": Family("gemma", "ggml-vocab-gemma-4.gguf", None, "Gemma3ForCausalLM", "<turn|>",
                    ("<eos>",), {"head_dim": 16}),
}


def sdist() -> Path:
    """The llama-cpp-python sdist `make gguf-tools` downloaded (scripts/setup_llama.sh)."""
    path = cache_root() / "llama-cpp-python" / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make gguf-tools` first")
    return path


def assets() -> Path:
    """The vocab GGUFs, their test strings and the templates, extracted once into the cache."""
    target = cache_root() / f"family-assets-{SDIST_VERSION}"
    if (target / ".complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".assets-", dir=target.parent))
    wanted = {f.vocab for f in FAMILIES.values()} | {f.template for f in FAMILIES.values() if f.template}
    wanted |= {f"{v}.inp" for v in {f.vocab for f in FAMILIES.values()}}
    wanted |= {f"{v}.out" for v in {f.vocab for f in FAMILIES.values()}}
    with tarfile.open(sdist()) as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and member.name.startswith(MODELS) and name in wanted:
                (tmp / name).write_bytes(tar.extractfile(member).read())
    (tmp / ".complete").write_text("")
    if target.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(target)
    return target


def _fields(path: Path) -> dict:
    """The `tokenizer.*` key-value pairs of a GGUF file. gguf-py's GGUFReader makes a numpy
    view per array item and takes half a minute on a 280k-merge vocabulary; the format's
    key-value section is simple enough to read directly (tensors are not needed)."""
    import struct

    buf = path.read_bytes()
    if buf[:4] != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file")
    scalars = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    pos = 8  # magic, version
    _, n_kv = struct.unpack_from("<QQ", buf, pos)
    pos += 16

    def string() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n:pos].decode("utf-8", errors="replace")

    def value(kind: int):
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in scalars:
                fmt = f"<{count}{scalars[item]}"
                out = list(struct.unpack_from(fmt, buf, pos))
                pos += struct.calcsize(fmt)
                return out
            return [value(item) for _ in range(count)]
        (out,) = struct.unpack_from("<" + scalars[kind], buf, pos)
        pos += struct.calcsize(scalars[kind])
        return out

    out = {}
    for _ in range(n_kv):
        key = string()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        out[key] = value(kind)
    return {k: v for k, v in out.items() if k.startswith("tokenizer.")}


def _spm_merges(vocab: dict[str, int], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges for a SentencePiece vocabulary: every split of a piece into two pieces,
    ranked by the merged piece's score (SentencePiece merges the highest-scoring pair first)."""
    ranked = []
    for piece, pid in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                ranked.append((-scores[pid], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(vocab_file: Path, template: str | None = None):
    """A transformers fast tokenizer rebuilt from a vocab-only GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    f = _fields(vocab_file)
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    vocab = {t: i for i, t in enumerate(tokens)}
    kind = f["tokenizer.ggml.model"]
    if kind == "gpt2":
        merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"]]
        pre = f.get("tokenizer.ggml.pre")
        # Llama 3 takes a whole pre-token straight from the vocabulary when it is there
        # (llama.cpp's `ignore_merges`), before any merging.
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False,
                                   ignore_merges=pre == "llama-bpe"))
        if pre not in _SPLITS:
            raise ValueError(f"no pre-tokenizer pattern for {pre!r}")
        if pre == "qwen2":
            tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
    else:  # SentencePiece-style: ▁ for spaces, byte fallback
        if "tokenizer.ggml.merges" in f:
            merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"]]
        else:
            merges = _spm_merges(vocab, list(f["tokenizer.ggml.scores"]))
        unk = f.get("tokenizer.ggml.unknown_token_id")
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, fuse_unk=True,
                                   unk_token=tokens[unk] if unk is not None else None))
        # llama.cpp puts a space before the text and after each special token, as
        # SentencePiece's dummy prefix does in transformers' legacy Llama tokenizer.
        prefix = f.get("tokenizer.ggml.add_space_prefix", kind == "llama")
        tok.normalizer = normalizers.Sequence(([normalizers.Prepend("▁")] if prefix else [])
                                              + [normalizers.Replace(" ", "▁")])
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    # llama.cpp's token types: 3 control, 4 user-defined (both kept whole, never split).
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if int(ty) == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if int(ty) == 4])

    def name(key):
        i = f.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None else None

    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=name("bos"), eos_token=name("eos"), unk_token=name("unknown"),
        pad_token=name("padding"), chat_template=template or f.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False, model_max_length=131072,
    )


def llama_cpp_cases(vocab_name: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's own test strings for a vocabulary and the ids it tokenizes them to."""
    folder = assets()
    texts = (folder / f"{vocab_name}.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = (folder / f"{vocab_name}.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]


def tokenizer(name: str):
    """The family's tokenizer with its chat template, from the cache (built on first use)."""
    from transformers import AutoTokenizer

    fam = FAMILIES[name]
    target = cache_root() / f"family-tokenizers-v{CACHE_VERSION}" / name
    if not (target / "tokenizer.json").is_file():
        folder = assets()
        template = (folder / fam.template).read_text(encoding="utf-8") if fam.template else None
        tok = build_tokenizer(folder / fam.vocab, template)
        if tok.pad_token is None:  # Llama 3 and Mistral ship none; transformers pads with EOS
            tok.pad_token = tok.eos_token
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=_mkdir(target.parent)))
        tok.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    return AutoTokenizer.from_pretrained(target)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tiny_model(name: str, path: Path, tok=None, hidden: int = 64) -> Path:
    """A random-init 2-layer model of the family's architecture with its tokenizer, template
    and a generation_config.json listing the family's stop tokens as a real checkpoint does."""
    import torch
    import transformers

    fam = FAMILIES[name]
    tok = tok or tokenizer(name)
    model_cls = getattr(transformers, fam.arch)
    config = model_cls.config_class(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **fam.config,
    )
    torch.manual_seed(0)
    model = model_cls(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids(t) for t in fam.generation_eos]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if _fields(assets() / fam.vocab)["tokenizer.ggml.model"] == "llama":
        write_sentencepiece_model(assets() / fam.vocab, path / "tokenizer.model")
    return path


def reply_text(tok, ids: list[int], labels: list[int]) -> list[str]:
    """The trained-on (unmasked) stretches of a row, decoded with special tokens kept."""
    runs, current = [], []
    for i, lab in zip(ids, labels):
        if lab != -100:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def strip_think(text: str) -> str:
    """Qwen3's template opens the last reply with an empty think block; the model learns it."""
    return re.sub(r"^<think>\n\n</think>\n\n", "", text)



def write_sentencepiece_model(vocab_file: Path, path: Path) -> Path:
    """`tokenizer.model` (SentencePiece BPE) from a SentencePiece-style vocab GGUF: the pieces,
    scores and types llama.cpp took from the original file, written back. llama.cpp's converter
    reads Phi-3's and Llama 2's vocabulary from this file, as the real checkpoints ship it."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    f = _fields(vocab_file)
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    for key, attr in (("unknown", "unk_id"), ("bos", "bos_id"), ("eos", "eos_id")):
        i = f.get(f"tokenizer.ggml.{key}_token_id")
        setattr(proto.trainer_spec, attr, -1 if i is None else int(i))
    proto.trainer_spec.pad_id = -1
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    # The SentencePiece model holds the base vocabulary; tokens added on top of it (Phi-3's
    # <|end|> and friends, from id 32000) live in the tokenizer's config, where the converter
    # reads them. The base ends before the first control/user token after <unk>, <s>, </s>.
    unk = f.get("tokenizer.ggml.unknown_token_id")
    for i, (piece, score, kind) in enumerate(zip(f["tokenizer.ggml.tokens"], f["tokenizer.ggml.scores"],
                                                 f["tokenizer.ggml.token_type"])):
        kind = int(kind)
        if i > 2 and kind in (2, 3, 4):
            break
        proto.pieces.add(piece=piece, score=float(score), type=kind if kind != 2 or i == unk else 4)
    proto.trainer_spec.vocab_size = len(proto.pieces)
    path.write_bytes(proto.SerializeToString())
    return path
