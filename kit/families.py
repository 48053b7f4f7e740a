"""Model families: what the kit knows about each config.json `model_type`, in one table.

Per family: the linear projections of a decoder layer and their shapes, which are at once what
`lora.target_modules` may name (checked before any weight loads, kit.choice.check_targets) and
what the memory plan counts (kit.plan); and the fill-in-the-middle tokens its code models use
(kit.code). A multimodal config names its decoder in `text_config`, whose own model_type is
listed with the outer one (Gemma 3). A model_type not here gets no memory plan (the run falls
back to safe settings and says so) and no target check before load (PEFT names a wrong module
once the weights are in).

The chat formats the GGUF export writes an Ollama template for (CHAT_FORMATS) are the other
table here. They are recognised from a checkpoint's own chat template, not from its
model_type: one architecture carries several (SmolLM2 is a Llama speaking ChatML).

No project module sits below this one, and it imports no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A decoder layer's linear projections: (name, in features, out features). The features are sums
# of d (hidden size), m (intermediate size), q (heads × head_dim), kv (KV heads × head_dim),
# each with an optional whole-number factor: "q+2kv" is q + 2·kv.
Projection = tuple[str, str, str]
_GATED = (("q_proj", "d", "q"), ("k_proj", "d", "kv"), ("v_proj", "d", "kv"), ("o_proj", "q", "d"),
          ("gate_proj", "d", "m"), ("up_proj", "d", "m"), ("down_proj", "m", "d"))
_FUSED = (("qkv_proj", "d", "q+2kv"), ("o_proj", "q", "d"), ("gate_up_proj", "d", "2m"),
          ("down_proj", "m", "d"))
_PLAIN_MLP = _GATED[:4] + (("c_fc", "d", "m"), ("c_proj", "m", "d"))
EMBEDDINGS = ("embed_tokens", "lm_head")  # Unsloth trains these in full when named


@dataclass(frozen=True)
class FimStyle:
    """One convention of fill-in-the-middle tokens, in PSM order (prefix, suffix, then the
    middle is generated), and models whose tokenizers carry it."""

    name: str
    prefix: str
    suffix: str
    middle: str
    models: str

    @property
    def tokens(self) -> tuple[str, str, str, str]:
        return self.name, self.prefix, self.suffix, self.middle


FIM_STYLES = {s.name: s for s in (
    FimStyle("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "Qwen2.5-Coder"),
    FimStyle("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "StarCoder2"),
    FimStyle("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "DeepSeek-Coder"),
)}


@dataclass(frozen=True)
class Family:
    name: str
    types: tuple[str, ...]  # config.json model_type values (a multimodal one's text_config's too)
    projections: tuple[Projection, ...]
    fim: str = ""  # the FIM_STYLES entry of the family's code models (their tokenizer decides)
    measured: bool = False  # the memory plan's coefficients were measured on this family

    @property
    def targets(self) -> tuple[str, ...]:
        """The names `lora.target_modules` may give (besides EMBEDDINGS and `auto`)."""
        return tuple(name for name, _, _ in self.projections)


FAMILIES = (
    Family("Llama", ("llama",), _GATED, fim="deepseek", measured=True),  # DeepSeek-Coder 1.x
    Family("Mistral", ("mistral",), _GATED),
    Family("Qwen2", ("qwen2",), _GATED, fim="qwen"),  # Qwen2.5-Coder
    Family("Qwen3", ("qwen3",), _GATED),
    Family("Gemma", ("gemma",), _GATED),
    Family("Gemma 2", ("gemma2",), _GATED),
    Family("Gemma 3", ("gemma3", "gemma3_text"), _GATED),
    Family("Granite", ("granite",), _GATED),
    Family("OLMo", ("olmo", "olmo2"), _GATED),
    Family("Cohere", ("cohere", "cohere2"), _GATED),
    Family("SmolLM3", ("smollm3",), _GATED),
    Family("Phi-3", ("phi3",), _FUSED),
    # One up projection and no gate; its activations are estimated as a gated MLP's (more).
    Family("StarCoder2", ("starcoder2",), _PLAIN_MLP, fim="starcoder"),
)
BY_TYPE = {t: f for f in FAMILIES for t in f.types}
DEFAULT = FAMILIES[0]  # a config.json without a model_type is taken for a Llama


def family(model_type: str) -> Family | None:
    """The family of a config.json `model_type` ("" for none: DEFAULT); None if not known."""
    return BY_TYPE.get(model_type) if model_type else DEFAULT


def known_types() -> str:
    return ", ".join(sorted(BY_TYPE))


_TERM = re.compile(r"(\d*)(d|m|q|kv)")


def features(expr: str, dims: dict[str, int]) -> int:
    """An in/out feature count such as "q+2kv", given d, m, q and kv."""
    total = 0
    for term in expr.split("+"):
        match = _TERM.fullmatch(term)
        if not match:
            raise ValueError(f"bad feature expression {expr!r}")
        total += int(match.group(1) or 1) * dims[match.group(2)]
    return total


def fim_models() -> str:
    """Models with fill-in-the-middle tokens, for a message: "Qwen2.5-Coder, StarCoder2 or ..."."""
    names = [s.models for s in FIM_STYLES.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]


# ------------------------------------------------------------------ chat formats (Ollama)


@dataclass(frozen=True)
class ChatFormat:
    """A chat format the GGUF export writes an Ollama TEMPLATE for, and how to recognise it in
    one user turn rendered through a checkpoint's chat template (kit.gguf.chat_family)."""

    name: str
    ollama: str  # Ollama's Go template; `.Messages` carries system, user and assistant turns
    stops: tuple[str, ...]
    system: str  # regex of a system turn, group 1 the text
    user_turn: str  # one user turn and the opened assistant turn, {probe} the user's text


# No BOS in the Go templates: llama.cpp adds it itself when the GGUF asks for one.
CHAT_FORMATS = {c.name: c for c in (
    ChatFormat(
        "chatml",
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n",
        ("<|im_end|>", "<|im_start|>"),
        r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n",
        "<|im_start|>user\n{probe}<|im_end|>\n<|im_start|>assistant\n"),
    ChatFormat(
        "llama3",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"),
        r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
        "<|start_header_id|>user<|end_header_id|>\n\n{probe}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"),
)}
