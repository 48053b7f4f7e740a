"""Load an exported model the way a user without this kit would, and generate once.

    python -m kit.verify adapter|merged PATH '[{"role": "user", "content": "Hi"}]' [MAX_NEW_TOKENS]

Prints one JSON line: the reply, whether generation stopped at EOS, and timings. Imports
neither Unsloth nor anything from the kit's training path, on purpose.
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
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    stopped = tokenizer.eos_token_id in new
    if stopped:
        new = new[: new.index(tokenizer.eos_token_id)]
    print(json.dumps({
        "kind": kind,
        "reply": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "stopped": stopped,
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
