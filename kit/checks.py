"""Small constants and checks that kit.config (a leaf: it imports no pipeline stage) shares with
the stages that own them: the GGUF types (kit.gguf), the Hub's repository names (kit.hub), and
whether the Hub can be reached at all (kit.models, kit.data). Nothing here imports more than the
standard library."""

from __future__ import annotations

import re

from kit.errors import fail

# ---------------------------------------------------------------- GGUF types (kit.gguf)

# Written by llama.cpp's converter directly.
CONVERT_QUANTS = ("f16", "bf16", "q8_0")
# Made from a lossless 16-bit GGUF by llama_cpp.llama_model_quantize: quant → llama_ftype name.
BINDING_QUANTS = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
}
QUANTS = (*CONVERT_QUANTS, *BINDING_QUANTS)
# Why export=gguf-lora refuses lora.variant=dora (kit.config before the model loads, kit.gguf
# for an adapter converted by hand).
DORA_GGUF_LORA = ("export=gguf-lora with lora.variant=dora: a llama.cpp LoRA adapter holds only A, B "
                  "and one alpha, with no place for DoRA's per-row magnitude, so llama.cpp would run "
                  "a different model; use export=gguf (DoRA merged into the weights) or "
                  "lora.variant=lora|rslora")

LORA_TYPE = "f16"  # the GGUF adapter's tensors (the converter's choices: f32, f16, bf16, q8_0)


def lora_gguf_name(name: str) -> str:
    """The GGUF adapter's file name in gguf-lora/ (kit.gguf writes it, kit.hub pushes it)."""
    return f"{name}-lora-{LORA_TYPE}.gguf"


# ---------------------------------------------------------------- the Hub (kit.hub)

# Each export kind's repository: `push=user/repo` puts the merged model in `user/repo-merged`.
SUFFIX = {"adapter": "", "merged": "-merged", "gguf": "-GGUF", "gguf-lora": "-LoRA-GGUF"}
# The Hub's rule for owner and name: letters, digits, '-', '_', '.', starting and ending with a
# letter or digit, no '--' or '..', at most 96 characters each.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
REPO = re.compile(rf"^{_PART}/{_PART}$")


def check_repo(repo: str) -> None:
    if not REPO.match(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        fail(f"push={repo!r}: expected a Hub repository as owner/name (letters, digits, '-', '_', '.'), "
             "e.g. push=your-name/smollm2-chat")
    longest = max(SUFFIX.values(), key=len)
    if len(repo.split("/")[1]) + len(longest) > 96:
        fail(f"push={repo!r}: the name is too long (at most {96 - len(longest)} characters, "
             f"leaving room for the {longest} suffix)")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers on its HTTPS port: a missing model or dataset can then fail
    in seconds rather than after a minute of the client's retries."""
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False
