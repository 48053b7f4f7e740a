"""How a model's turn ends: the one place that knows which tokens stop its generation.

A tokenizer's EOS is often not the token that ends an assistant turn: Qwen's EOS is
`<|endoftext|>` but its turns end with `<|im_end|>`; Phi-3's end with `<|end|>`, Llama-3
Instruct's with `<|eot_id|>`, Gemma's with `<end_of_turn>` (`<turn|>` in Gemma 4). Passing
`eos_token_id=tokenizer.eos_token_id` to `generate` replaces the model's own stop list, and
the reply runs on. The stop set here is the union of

    the model's `generation_config.eos_token_id` (an id or a list),
    the end-of-turn token found by rendering a conversation through the chat template
    (the first special token the template writes after an assistant reply), and
    the tokenizer's EOS.

Evaluation, the export checks, the exports' `generation_config.json` and the Ollama
Modelfile's stop list all come from `stop_ids`/`stop_tokens`. No torch here.
"""

from __future__ import annotations

_MARK = "kit-reply-5d1c"  # a reply no template could contain by accident
_PROBE = [{"role": "user", "content": "kit-question-5d1c"}, {"role": "assistant", "content": _MARK}]


def _ids(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value if v is not None]


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return ids


def after_reply(tokenizer) -> str | None:
    """The text the chat template writes right after an assistant reply (up to the next turn
    or the end of the conversation), or None without a usable template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(_PROBE, tokenize=False)
    except Exception:  # a template that refuses this shape (e.g. demands a system turn)
        return None
    at = text.rfind(_MARK)
    return None if at < 0 else text[at + len(_MARK):]


_TURN_ENDS: dict[tuple[int, str], str | None] = {}  # (tokenizer, template) → its turn end


def turn_end(tokenizer) -> str | None:
    """The token that ends an assistant turn in this model's chat template: the first special
    token rendered after a reply (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<end_of_turn>`,
    `</s>`...), or None when the template writes none. Worked out once per tokenizer and
    template (every encoded row asks)."""
    key = (id(tokenizer), str(getattr(tokenizer, "chat_template", "")))
    if key not in _TURN_ENDS:
        _TURN_ENDS[key] = _find_turn_end(tokenizer)
    return _TURN_ENDS[key]


def _find_turn_end(tokenizer) -> str | None:
    tail = after_reply(tokenizer)
    if not tail:
        return None
    special = _special_ids(tokenizer)
    for tok_id in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if tok_id in special:
            return tokenizer.convert_ids_to_tokens(tok_id)
    return None


def stop_ids(tokenizer, generation_config=None) -> list[int]:
    """Token ids that end a reply: the generation config's EOS list, the template's
    end-of-turn token, then the tokenizer's EOS (in that order, without repeats)."""
    out: list[int] = []
    if generation_config is not None:
        out += _ids(getattr(generation_config, "eos_token_id", None))
    end = turn_end(tokenizer)
    if end is not None:
        out.append(tokenizer.convert_tokens_to_ids(end))
    out += _ids(tokenizer.eos_token_id)
    return list(dict.fromkeys(i for i in out if i is not None and i >= 0))


def stop_tokens(tokenizer, ids: list[int]) -> list[str]:
    """The text of each stop id (for the Ollama Modelfile and for messages)."""
    return [tokenizer.convert_ids_to_tokens(i) for i in ids]


def cut_at_stop(row: list[int], stops: list[int]) -> tuple[list[int], bool]:
    """A generated row up to its first stop token, and whether it had one."""
    stop_set = set(stops)
    for k, tok in enumerate(row):
        if tok in stop_set:
            return row[:k], True
    return row, False
