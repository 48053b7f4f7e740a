"""Load an exported model the way a user without this kit would, and generate once.

    python -m kit.verify adapter|merged PATH '[{"role": "user", "content": "Hi"}]' [MAX_NEW_TOKENS]
    python -m kit.verify adapter|merged PATH '"<fim_prefix>def f(x):<fim_suffix>..."'   # raw text

Prints one JSON line: the reply, whether generation stopped at one of the folder's own stop
tokens (its `generation_config.json` EOS list, as transformers uses it; nothing is passed to
override it), and timings. Imports neither Unsloth nor anything else from the kit, on purpose.
"""

from __future__ import annotations

import json
import sys
import time


def load_exported(path, kind: str | None = None):
    """(model, tokenizer) from an exported folder with plain peft/transformers: an adapter
    folder (it has adapter_config.json) or a merged one. fp32 on CPU, the saved dtype on GPU."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = kind or ("adapter" if (Path(path) / "adapter_config.json").is_file() else "merged")
    tokenizer = AutoTokenizer.from_pretrained(path)
    gpu = torch.cuda.is_available()
    dtype = "auto" if gpu else torch.float32
    if kind == "adapter":
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif kind == "merged":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return (model.to("cuda") if gpu else model), tokenizer


def main(argv: list[str]) -> int:
    kind, path, prompt = argv[0], argv[1], json.loads(argv[2])
    max_new_tokens = int(argv[3]) if len(argv) > 3 else 64
    start = time.perf_counter()
    import torch

    model, tokenizer = load_exported(path, kind)
    loaded = time.perf_counter() - start
    from pathlib import Path

    from transformers import GenerationConfig

    # An adapter folder carries the generation config the kit wrote beside it (peft itself
    # would take the base model's); a merged folder's is what from_pretrained loaded.
    own = Path(path) / "generation_config.json"
    config = GenerationConfig.from_pretrained(path) if own.is_file() else model.generation_config
    eos = config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    # A conversation goes through the folder's chat template; a string (a fill-in-the-middle
    # prompt) is the text itself.
    text = prompt if isinstance(prompt, str) else tokenizer.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, generation_config=config, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    stop = next((k for k, t in enumerate(new) if t in eos), None)
    stop_token = tokenizer.convert_ids_to_tokens(new[stop]) if stop is not None else None
    new = new if stop is None else new[:stop]
    print(json.dumps({
        "kind": kind,
        "reply": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "stopped": stop is not None,
        "stop_token": stop_token,
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
