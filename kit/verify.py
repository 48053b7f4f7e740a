"""Load an exported model the way a user without this kit would, and generate once.

    python -m kit.verify adapter|merged PATH '[{"role": "user", "content": "Hi"}]' [MAX_NEW_TOKENS]
    python -m kit.verify adapter|merged PATH '"<fim_prefix>def f(x):<fim_suffix>..."'   # raw text
    python -m kit.verify adapter PATH PROMPT MAX_NEW_TOKENS BASE   # on this base, checked first
    python -m kit.verify merge ADAPTER OUT BASE DTYPE HELD_OUT.json [CHECK.json]   # the fp32 merge

Prints one JSON line: the reply, whether generation stopped at one of the folder's own stop
tokens (its `generation_config.json` EOS list, as transformers uses it; nothing is passed to
override it), and timings. Imports neither Unsloth nor the kit's stages, on purpose (only
kit.pin, the base fingerprint, standard library alone).
"""

from __future__ import annotations

import json
import sys
import time


def load_exported(path, kind: str | None = None, base: str | None = None):
    """(model, tokenizer) from an exported folder with plain peft/transformers: an adapter
    folder (it has adapter_config.json) or a merged one. fp32 on CPU, the saved dtype on GPU.
    `base`: put the adapter on this base (a folder or cached Hub id) rather than the one its
    adapter_config.json names, refused (kit.pin) if it is not the base it was trained on."""
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind = kind or ("adapter" if (Path(path) / "adapter_config.json").is_file() else "merged")
    if kind == "adapter" and not base:  # the base on this machine, as the kit recorded it
        from kit import pin

        base = pin.local_base(Path(path))
    tokenizer = AutoTokenizer.from_pretrained(path)
    gpu = torch.cuda.is_available()
    dtype = "auto" if gpu else torch.float32
    if kind == "adapter" and base:
        from peft import PeftModel

        from kit import pin

        pin.check(Path(path), base)
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=dtype), path)
    elif kind == "adapter":
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
    elif kind == "merged":
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    return (model.to("cuda") if gpu else model), tokenizer


def main(argv: list[str]) -> int:
    if argv[0] == "merge":
        return merge_main(*argv[1:])
    kind, path, prompt = argv[0], argv[1], json.loads(argv[2])
    max_new_tokens = int(argv[3]) if len(argv) > 3 else 64
    base = argv[4] if len(argv) > 4 else None
    start = time.perf_counter()
    model, tokenizer = load_exported(path, kind, base)
    print(json.dumps({"kind": kind, **answer(model, tokenizer, path, prompt, max_new_tokens, start)}))
    return 0


def answer(model, tokenizer, path, prompt, max_new_tokens: int, start: float) -> dict:
    """Generate greedily from `prompt` with the folder's own generation config: the reply, and
    whether it stopped at one of the folder's stop tokens. `start`: when loading began."""
    from pathlib import Path

    import torch
    from transformers import GenerationConfig

    loaded = time.perf_counter() - start
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
    token_ids = new if stop is None else new[:stop + 1]  # the reply's ids and the stop token
    new = new if stop is None else new[:stop]
    return {
        "reply": tokenizer.decode(new, skip_special_tokens=True).strip(),
        "stopped": stop is not None,
        "stop_token": stop_token,
        # what another runtime is compared with (kit.gguf's gguf-lora check)
        "prompt_ids": enc["input_ids"][0].tolist(), "token_ids": token_ids,
        "load_seconds": round(loaded, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }


# ---------------------------------------------------------------- the merge

DTYPES = ("bfloat16", "float16", "float32")
LOST_LIMIT = 0.10  # share of the update (relative L2 norm) a cast may lose
LOSS_LIMIT = 0.02  # relative rise of the held-out loss, merged over adapter


def cast_loss(merged, base, dtype) -> tuple[float, float, int, int]:
    """For one adapted weight merged in fp32 (`merged`) over `base` (fp32 copies): the squared L2
    norms of the cast error and of the update, the entries the cast left equal to the base
    (the update vanished there), and the entries."""
    import torch

    cast = merged.to(getattr(torch, dtype)).float()
    if not torch.isfinite(cast).all():  # float16 overflows above 65504
        return float("inf"), 1.0, 0, merged.numel()
    update = merged - base
    return (float((cast - merged).double().pow(2).sum()), float(update.double().pow(2).sum()),
            int((cast == base).sum()), merged.numel())


def merge_weights(model, dtype: str) -> dict:
    """Merge every LoRA layer of a PeftModel into its base weight in float32 (PEFT's own merge:
    LoRA, rsLoRA and DoRA alike), measuring for each dtype what a cast would lose. Returns the
    stats; the merged weights stay float32 in the model."""
    from peft.tuners.lora import LoraLayer

    sums = {d: [0.0, 0.0, 0, 0] for d in DTYPES}
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        weight = module.get_base_layer().weight
        base = weight.data.float().clone()
        weight.data = base.clone()
        for name in ("lora_A", "lora_B"):
            getattr(module, name).float()
        if getattr(module, "lora_magnitude_vector", None):
            module.lora_magnitude_vector.float()
        module.merge()
        merged = weight.data
        for d in DTYPES:
            for i, v in enumerate(cast_loss(merged, base, d)):
                sums[d][i] += v
        del base
    out = {}
    for d, (err, upd, same, n) in sums.items():
        lost = (err / upd) ** 0.5 if upd > 0 else 0.0
        out[d] = {"update_lost": round(lost, 6) if lost != float("inf") else None,
                  "unchanged_share": round(same / n, 6) if n else 0.0}
    return out


def held_out_loss(model, rows: list) -> float:
    """Mean token loss over held-out rows ([input_ids, labels] pairs), one row at a time."""
    import torch

    total, count = 0.0, 0
    for ids, labels in rows:
        ids_t = torch.tensor([ids], device=model.device)
        labels_t = torch.tensor([labels], device=model.device)
        n = int((labels_t[:, 1:] != -100).sum())
        if n == 0:
            continue
        with torch.no_grad():
            total += float(model(input_ids=ids_t, labels=labels_t).loss) * n
        count += n
    return total / count if count else float("nan")


def greedy(model, prompts: list, new_tokens: int, pad_id) -> list[list[int]]:
    import torch

    outs = []
    for ids in prompts:
        enc = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            out = model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), do_sample=False,
                                 max_new_tokens=new_tokens, pad_token_id=pad_id)
        outs.append(out[0, len(ids):].tolist())
    return outs


def agreement(model, prompts: list, replies: list) -> float:
    """Share of the adapter's greedy tokens the merged model also predicts, each position given
    the adapter's own reply so far (teacher-forced: one early difference does not count twice)."""
    import torch

    same = total = 0
    for ids, reply in zip(prompts, replies):
        if not reply:
            continue
        seq = torch.tensor([ids + reply], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=seq).logits[0]
        pred = logits[len(ids) - 1:len(ids) - 1 + len(reply)].argmax(-1).tolist()
        same += sum(int(a == b) for a, b in zip(pred, reply))
        total += len(reply)
    return same / total if total else 1.0


def merge_main(adapter: str, out: str, base: str, dtype: str, held_out: str, check: str = "") -> int:
    """The merged model, written to `out` in `dtype` (`auto`: the base's 16-bit dtype when the
    cast keeps the update, else float32), with merge_report.json: what the cast lost, and the
    held-out loss and greedy tokens of the adapter and of the merged model as saved.

    `check`: a JSON file {"prompt", "max_new_tokens", "generation_config"}: the export's check
    (`answer`, as `python -m kit.verify merged OUT` does it) on the merged model as reloaded
    from `out` for the report, after the kit's generation config (with the run's stop set) is
    put in place of the one save_pretrained wrote; its result is the report's `answer`. One
    process and one load fewer than merging and checking apart."""
    from pathlib import Path

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kit import pin

    pin.check(Path(adapter), base)
    data = json.loads(Path(held_out).read_text())
    gpu = torch.cuda.is_available()
    # On CPU in fp32 (the reference); on a GPU in the base's dtype, each adapted weight
    # brought to fp32 only while it is merged.
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto" if gpu else torch.float32)
    base_dtype = str(model.config.dtype if not gpu else model.dtype).replace("torch.", "")
    if base_dtype == "float32" and not gpu:  # loaded as fp32 here; the files say what it is
        config = json.loads((Path(pin.base_dir(base) or base) / "config.json").read_text())
        base_dtype = str(config.get("dtype") or config.get("torch_dtype") or "bfloat16")
    model = PeftModel.from_pretrained(model.to("cuda") if gpu else model, adapter)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    new_tokens = int(data.get("new_tokens", 16))
    loss_adapter = held_out_loss(model, data["rows"])
    replies = greedy(model, data["prompts"], new_tokens, tokenizer.pad_token_id)
    stats = merge_weights(model, dtype)
    own = base_dtype if base_dtype in ("bfloat16", "float16") else "float32"
    lost_own = stats[own]["update_lost"]
    if dtype == "auto":
        keeps = lost_own is not None and lost_own <= LOST_LIMIT
        chosen = own if keeps else "float32"
        why = (f"auto: {own} keeps the update ({lost_own:.1%} lost, limit {LOST_LIMIT:.0%})" if keeps
               else f"auto: float32, because {own} would lose "
                    f"{'all' if lost_own is None else f'{lost_own:.1%}'} of the update "
                    f"(limit {LOST_LIMIT:.0%})")
    else:
        chosen, why = dtype, f"merge_dtype={dtype}"
    merged = model.unload()  # the LoRA layers gone; their update is in the base weights
    merged.to(getattr(torch, chosen)).save_pretrained(out)
    del merged, model
    task = json.loads(Path(check).read_text()) if check else None
    if task:  # the kit's stop set, not the base's generation config save_pretrained wrote
        (Path(out) / "generation_config.json").write_text(task["generation_config"])
    start = time.perf_counter()
    again = AutoModelForCausalLM.from_pretrained(out, dtype="auto" if gpu else torch.float32)
    again = (again.to("cuda") if gpu else again).eval()
    loss_merged = held_out_loss(again, data["rows"])
    agree = agreement(again, data["prompts"], replies)
    report = {"dtype": chosen, "why": why, "merged_in": "float32", "base_dtype": base_dtype,
              "update_lost": stats[chosen]["update_lost"],
              "unchanged_share": stats[chosen]["unchanged_share"],
              "loss_adapter": round(loss_adapter, 6), "loss_merged": round(loss_merged, 6),
              "greedy_agreement": round(agree, 6), "greedy_tokens": sum(map(len, replies)),
              "held_out_rows": len(data["rows"]), "by_dtype": stats,
              "limits": {"update_lost": LOST_LIMIT, "loss_rise": LOSS_LIMIT}}
    report.update(departs(report))
    (Path(out) / "merge_report.json").write_text(json.dumps(report, indent=2) + "\n")
    if task and task.get("max_new_tokens"):
        reply = answer(again, AutoTokenizer.from_pretrained(out), out, task["prompt"],
                       int(task["max_new_tokens"]), start)
        report = {**report, "answer": {"kind": "merged", **reply}}
    print(json.dumps(report))
    return 0


def departs(report: dict) -> dict:
    """{"ok": ..., "problem": ...}: the merged model departs from the adapter when the cast lost
    more than LOST_LIMIT of the update, or the held-out loss rose more than LOSS_LIMIT."""
    lost, a, m = report["update_lost"], report["loss_adapter"], report["loss_merged"]
    problems = []
    if lost is None or lost > LOST_LIMIT:
        problems.append(f"{'all' if lost is None else f'{lost:.0%}'} of the LoRA update lost "
                        f"in {report['dtype']} (limit {LOST_LIMIT:.0%})")
    if m - a > LOSS_LIMIT * abs(a):
        problems.append(f"held-out loss {a:.4f} (adapter) → {m:.4f} (merged)")
    if not problems:
        return {"ok": True}
    keep = next((d for d in ("bfloat16", "float16", "float32")
                 if (report["by_dtype"][d]["update_lost"] or 1.0) <= LOST_LIMIT), "float32")
    keep = "float32" if keep == report["dtype"] else keep
    return {"ok": False, "problem": f"the merged model departs from the adapter: {'; '.join(problems)}; "
                                    f"merge_dtype={keep} keeps the update"}


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as exc:  # kit.pin's refusal (a KitError) as the one line the kit prints
        if type(exc).__name__ != "KitError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
