"""Benchmark: the kit's training path against a plain transformers + PEFT + bitsandbytes QLoRA
baseline, on the same random-init model, data, sequence length, batch, rank and targets.

    make bench                                  # CPU: a tiny shape, full and chat rows, minutes
    python bench/bench.py suite --shape 8b      # GPU: per memory budget, kit plan vs best plain

Each measured run is its own process (`bench.py run ...`): importing unsloth patches transformers,
so the baseline must never see it. The model is made from a config with random weights (speed
and memory do not depend on the values), so nothing is downloaded.

Per run it reports real (non-pad) tokens/s over the timed steps, peak GPU memory allocated, the
kit planner's predicted peak, and LoRA MFU: F = 4·N_frozen + 6·N_lora + 12·L·d·T FLOPs per token
(T: the sequence length) against the card's dense bf16 peak.

Data: `full` (every row `--seq` tokens) or `chat` (chat-like lengths, see `rows`). On chat data
each stack runs at its best: the kit with its own `packing=auto` choice, the plain baseline with
padding-free batches (TRL's `DataCollatorForLanguageModeling(padding_free=True)`, position ids
restarting per row) where its attention keeps packed rows apart, else length-grouped padded
batches (`train_sampling_strategy="group_by_length"`); `batching` in each result says which.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {  # Llama dimensions; the vocabulary is the tokenizer's (SmolLM2's 49,152)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUDGETS_GB = (16, 24, 40, 80, 141)
WARMUP_STEPS = 3  # not timed: compilation, allocator growth


# ---------------------------------------------------------------- model and data


def make_model(shape: str, out: Path, tokenizer: str) -> None:
    """A random-init Llama of the named shape, saved with a tokenizer, in bf16."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, bos_token_id=1, eos_token_id=2,
                      pad_token_id=2, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)


def rows(kind: str, n: int, seq: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) rows. `full`: every row `seq` tokens, all trained. `chat`: lengths
    like a chat SFT set (log-normal, sigma 0.7, median ~500 tokens at `seq` 2,048 and the same
    share of shorter ones, capped at `seq`), the first third of each row a masked prompt."""
    rnd = random.Random(seed)
    out = []
    median, floor = 500 * seq / 2048, max(4, seq // 64)
    for _ in range(n):
        drawn = int(rnd.lognormvariate(math.log(median), 0.7))
        length = seq if kind == "full" else max(floor, min(seq, drawn))
        ids = [rnd.randrange(1000, vocab - 1000) for _ in range(length)]
        prompt = 0 if kind == "full" else length // 3
        out.append((ids, [-100] * prompt + ids[prompt:]))
    return out


# ---------------------------------------------------------------- one measured run (child process)


class StepClock:
    """Times optimizer steps after warm-up and counts the real tokens fed in between."""

    def __init__(self):
        self.times: list[float] = []
        self.tokens_at: list[int] = []
        self.tokens = 0

    def count(self, batch: dict) -> dict:
        """Real tokens: the attention mask's ones, or every position of a padding-free row."""
        mask = batch.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        return batch

    def callback(self):
        from transformers import TrainerCallback

        clock = self

        class Clock(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                clock.times.append(time.perf_counter())
                clock.tokens_at.append(clock.tokens)

        return Clock()

    def tokens_per_second(self) -> float:
        t, n = self.times[WARMUP_STEPS:], self.tokens_at[WARMUP_STEPS:]
        return (n[-1] - n[0]) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


def load_kit(a):
    """The kit's loader and LoRA, as the recipes run them (4-bit on a GPU)."""
    from kit import models
    from kit.choice import ModelChoice
    from kit.config import RecipeConfig, apply_overrides
    from kit.device import detect_device

    gpu = detect_device().gpu
    choice = ModelChoice(str(a.model), "bench model", "benchmark")
    model, tok = models.load(choice, a.seq, load_in_4bit=gpu)
    cfg = apply_overrides(RecipeConfig(), [f"lora.r={a.rank}", f"lora.alpha={a.rank}"])
    gc = {"off": False, "on": True, "unsloth": "unsloth"}[a.gc]
    return models.add_lora(model, cfg.lora, gc, cfg.seed), tok


def bins_of(data: list, seq: int) -> list[list]:
    """Rows grouped first-fit-decreasing into bins of at most `seq` tokens, as TRL's `bfd`
    packing groups them; a step's micro-batch is then `micro` full bins, not `micro` rows."""
    bins: list[list] = []
    room: list[int] = []
    for row in sorted(data, key=lambda r: -len(r[0])):
        at = next((i for i, free in enumerate(room) if free >= len(row[0])), None)
        if at is None:
            bins.append([row])
            room.append(seq - len(row[0]))
        else:
            bins[at].append(row)
            room[at] -= len(row[0])
    return bins


PACKING_KEY = {"padding-free": "on", "packed": "on", "padded": "off", "grouped": "off"}  # bench → kit


def train_kit(model, tok, a, data, clock: StepClock, result: dict, batching: str = "auto") -> None:
    """kit.train.train on `data`: `padded`, `padding-free` (the kit's packing=on), `packed`
    (bins of rows up to --seq tokens laid end to end, padding-free) or `auto` (the kit's own
    packing=auto choice)."""
    from kit import train
    from kit.config import RecipeConfig, apply_overrides
    from kit.data import Encoded
    from kit.device import detect_device

    gpu = detect_device().gpu
    cfg = apply_overrides(RecipeConfig(), [f"max_steps={a.steps}", f"batch_size={a.micro * a.accum}",
                                           f"max_seq_length={a.seq}", "save_steps=0", "warmup_steps=1",
                                           f"lora.r={a.rank}", f"lora.alpha={a.rank}",
                                           "packing=" + PACKING_KEY.get(batching, "auto")])
    encoded = [Encoded(ids, labels) for ids, labels in data]
    segments: dict[tuple, list[Encoded]] = {}
    if batching == "packed":  # one training row per bin; the collator splits it back into its rows
        packed = []
        for rows_in_bin in bins_of(data, a.seq):
            whole = Encoded([i for r in rows_in_bin for i in r[0]], [x for r in rows_in_bin for x in r[1]])
            segments[tuple(whole.input_ids)] = [Encoded(*r) for r in rows_in_bin]
            packed.append(whole)
        encoded = packed
        result.update(batching="packed", batching_reason=f"{len(data)} rows in {len(packed)} bins of "
                      f"<= {a.seq} tokens", rows_per_bin=round(len(data) / len(packed), 2))
        packing = True
    else:
        packing, why = train.choose_packing(cfg, model, encoded, a.micro)
        result.update(batching="padding-free" if packing else "padded", batching_reason=why)
    inner = train.collator_for(tok, packing)

    class Collator:  # the kit's collator, also feeding the step clock
        def __call__(self, features):
            if segments:
                features = [{"input_ids": e.input_ids, "labels": e.labels}
                            for f in features for e in segments[tuple(f["input_ids"])]]
            return clock.count(inner(features))

    train.train(model, tok, encoded, cfg, gpu=gpu, bf16=gpu, learning_rate=2e-4,
                checkpoint_dir=f"/tmp/bench-kit-{os.getpid()}", callbacks=(clock.callback(),),
                micro_batch=a.micro, grad_accum=a.accum, collator=Collator(), packing=packing)


def run_kit(a, data, clock: StepClock, result: dict):
    """The kit's own path: kit.models.load / add_lora and kit.train.train, as the recipes run,
    with the run's `packing=auto` choice (or --batching)."""
    model, tok = load_kit(a)
    train_kit(model, tok, a, data, clock, result, a.batching)
    return model


def plain_rows_stay_apart(model) -> tuple[bool, float, float]:
    """Padding-free on this attention backend: does a row packed after another (position ids
    restarting, no attention mask) get the loss it gets alone? (ok, |packed - alone|, |joined -
    alone|), `joined` being the two rows end to end with no boundary, what a leak looks like."""
    import torch

    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    first, second = (torch.randint(vocab // 4, vocab // 2, (n,), generator=gen) for n in (48, 16))
    dev = next(model.parameters()).device
    ids = torch.cat([first, second])[None].to(dev)
    labels = torch.cat([torch.full((49,), -100), second[1:]])[None].to(dev)
    pos = torch.cat([torch.arange(48), torch.arange(16)])[None].to(dev)
    with torch.no_grad():
        alone = float(model(input_ids=second[None].to(dev), labels=second[None].to(dev)).loss)
        packed = float(model(input_ids=ids, labels=labels, position_ids=pos).loss)
        joined = float(model(input_ids=ids, labels=labels).loss)
    off, leak = abs(packed - alone), abs(joined - alone)
    return off <= 1e-5 * max(alone, 1.0) or off * 20 <= leak, off, leak


def load_plain(a):
    """The baseline a user would write without the kit: 4-bit NF4 via bitsandbytes, PEFT LoRA,
    SDPA attention."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=quant if cuda else None,
                                                 dtype=torch.bfloat16, attn_implementation="sdpa",
                                                 device_map={"": 0} if cuda else None)
    tok = AutoTokenizer.from_pretrained(a.model)
    if tok.pad_token is None:  # as the kit's loader does; padding needs one
        tok.pad_token = tok.eos_token
    if cuda:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=a.gc != "off")
    model = get_peft_model(model, LoraConfig(r=a.rank, lora_alpha=a.rank, lora_dropout=0.0,
                                             target_modules=list(TARGETS), task_type="CAUSAL_LM"))
    return model, tok


def train_plain(model, tok, a, data, clock: StepClock, result: dict, batching: str = "auto") -> None:
    """The baseline's training: paged 8-bit AdamW, transformers' Trainer. On rows of different
    lengths, at its best: padding-free where SDPA keeps packed rows apart, else length-grouped
    batches."""
    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    cuda = torch.cuda.is_available()
    wanted, varied = batching, len({len(r[0]) for r in data}) > 1
    batching = "padded"
    if varied and wanted in ("auto", "padding-free"):
        ok, off, leak = plain_rows_stay_apart(model)
        result.update(plain_isolation={"ok": ok, "packed_off_by": off, "leak_off_by": leak})
        batching = "padding-free" if ok or wanted == "padding-free" else "grouped"
    elif varied and wanted == "grouped":
        batching = "grouped"
    result.update(batching=batching)
    if batching == "padding-free":
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling  # trl never imports unsloth

        free = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)

        def collate(features):
            return clock.count(free([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]))
    else:
        pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)

        def collate(features):
            return clock.count(pad([{k: v for k, v in f.items() if k != "length"} for f in features]))
    ds = Dataset.from_dict({"input_ids": [r[0] for r in data], "labels": [r[1] for r in data],
                            "attention_mask": [[1] * len(r[0]) for r in data],
                            "length": [len(r[0]) for r in data]})
    args = TrainingArguments(
        output_dir=f"/tmp/bench-plain-{os.getpid()}", per_device_train_batch_size=a.micro,
        gradient_accumulation_steps=a.accum, max_steps=a.steps, learning_rate=2e-4, warmup_steps=1,
        optim="paged_adamw_8bit" if cuda else "adamw_torch", bf16=cuda, logging_steps=1,
        save_strategy="no", report_to="none", gradient_checkpointing=a.gc != "off",
        gradient_checkpointing_kwargs={"use_reentrant": False}, remove_unused_columns=False,
        disable_tqdm=True, seed=3407,
        train_sampling_strategy="group_by_length" if batching == "grouped" else "random")
    Trainer(model=model, args=args, train_dataset=ds, data_collator=collate,
            callbacks=[clock.callback()]).train()


def run(a) -> None:
    """One process, one stack: load the model once, then train each --configs entry (data:batching)
    in turn with a fresh clock and peak-memory count, one RESULT line each."""
    if a.stack == "kit":
        import unsloth  # noqa: F401  (the kit's order: unsloth before transformers)
    import torch

    cuda = torch.cuda.is_available()
    if a.budget_gib and cuda:  # imitate a smaller card
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(a.budget_gib / total, 1.0))
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(a.model).vocab_size
    configs = [c.split(":") for c in (a.configs or [f"{a.data}:{a.batching}"])]
    started = time.perf_counter()
    try:
        model, tok = (load_kit if a.stack == "kit" else load_plain)(a)
    except torch.OutOfMemoryError:
        for kind, batching in configs:
            print("RESULT " + json.dumps({"stack": a.stack, "gc": a.gc, "micro": a.micro, "accum": a.accum,
                                          "seq": a.seq, "data": kind, "batching": batching, "oom": True}))
        return
    load_s = time.perf_counter() - started
    # A 4-bit weight counts its unpacked elements (as kit.models.count_parameters does; that
    # module imports unsloth, which this process may not).
    frozen = sum(getattr(getattr(p, "quant_state", None), "shape", p.shape).numel()
                 for p in model.parameters() if not p.requires_grad)
    for kind, batching in configs:
        n = a.micro * a.accum * (a.steps + 1) * (8 if batching == "packed" else 1)
        data = rows(kind, n, a.seq, vocab)
        clock = StepClock()
        result = {"stack": a.stack, "gc": a.gc, "micro": a.micro, "accum": a.accum, "seq": a.seq,
                  "data": kind, "load_s": round(load_s, 1)}
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            (train_kit if a.stack == "kit" else train_plain)(model, tok, a, data, clock, result, batching)
        except torch.OutOfMemoryError:
            result.update(oom=True)
            print("RESULT " + json.dumps(result), flush=True)
            continue
        result.update(tokens_per_s=round(clock.tokens_per_second(), 1),
                      wall_s=round(time.perf_counter() - t, 1),
                      peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda
                      else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      peak_kind="GPU" if cuda else "RAM",
                      device=torch.cuda.get_device_name(0) if cuda else "cpu",
                      # The baseline must run unpatched: importing unsloth changes transformers' classes.
                      unsloth_imported="unsloth" in sys.modules,
                      lora_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                      frozen_params=frozen)
        print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- the suite (parent process)


def predicted(shape, r: dict, coef) -> float:
    from kit import plan

    return plan.estimate(shape, plan.Setting(r["gc"], r["micro"], r["accum"], r["seq"]), coef=coef).total


def mfu(r: dict, shape, seq: int) -> float | None:
    from kit.plan import PEAK_TFLOPS

    peak = next((v for k, v in PEAK_TFLOPS.items() if k in str(r.get("device"))), None)
    if not peak or not r.get("tokens_per_s"):
        return None
    return shape.flops_per_token(seq, r["lora_params"]) * r["tokens_per_s"] / (peak * 1e12)


def children(model: Path, stack: str, gc: str, micro: int, accum: int, seq: int, configs: list[str],
             steps: int, budget: float, timeout: float) -> list[dict]:
    """One child process (`run`) training each of `configs` (data:batching) on one loaded model;
    one result per config, an `error` where the child gave none."""
    cmd = [sys.executable, __file__, "run", "--model", str(model), "--stack", stack, "--gc", gc,
           "--micro", str(micro), "--accum", str(accum), "--seq", str(seq), "--steps", str(steps),
           "--budget-gib", str(budget), "--configs", *configs]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out, err = proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        out, err = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout"
    found = [json.loads(ln[len("RESULT "):]) for ln in out.splitlines() if ln.startswith("RESULT ")]
    tail = " | ".join((err.strip().splitlines() or ["no output"])[-3:])
    for config in configs[len(found):]:
        data, batching = config.split(":")
        found.append({"stack": stack, "gc": gc, "micro": micro, "accum": accum, "seq": seq, "data": data,
                      "batching": batching, "error": tail})
    return found


def child(model: Path, stack: str, gc: str, micro: int, accum: int, seq: int, data: str, steps: int,
          budget: float, timeout: float, batching: str = "auto") -> dict:
    return children(model, stack, gc, micro, accum, seq, [f"{data}:{batching}"], steps, budget, timeout)[0]


def suite(a) -> None:
    from kit import plan

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"llama-{a.shape}"
    if not (model / "config.json").exists():
        t = time.perf_counter()
        make_model(a.shape, model, a.tokenizer or _embedded_tokenizer())
        print(f"made {model} in {time.perf_counter() - t:.0f} s", flush=True)
    shape = plan.Shape.from_config(json.loads((model / "config.json").read_text()))
    import torch

    gpu = torch.cuda.is_available()
    # (stack, gc, micro, data, budget cap, plain batching on varied lengths)
    runs: list[tuple[str, str, int, str, float, str]] = []
    if gpu:
        free = torch.cuda.mem_get_info()[0] / 2**30
        budgets = [b for b in BUDGETS_GB if b * 1e9 / 2**30 <= free + 2] or [int(free)]
        for data in a.data:
            for b in budgets:  # the kit's plan per budget, run under that budget's cap
                p = plan.choose(shape, budget_gib=plan.usable_gib(b * 1e9 / 2**30 - 1, 0.15),
                                batch_size=a.batch, seq=a.seq)
                if p.fits:
                    runs.append(("kit", p.setting.checkpointing, p.setting.micro_batch, data,
                                 b * 1e9 / 2**30, "auto"))
            for gc, micro in a.plain:  # plain configurations, uncapped; budgets are assigned by peak
                runs.append(("plain", gc, micro, data, 0.0, "auto"))
                if data == "chat":  # its other way to cut padding, in case it is the faster one
                    runs.append(("plain", gc, micro, data, 0.0, "grouped"))
        for stack, gc, micro in a.chat:
            runs.append((stack, gc, micro, "chat", 0.0, "auto"))
    else:
        runs = [(stack, "off", a.batch, data, 0.0, "auto") for data in a.data for stack in ("kit", "plain")]
    seen, results = set(), []
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stack, gc, micro, data, cap, batching in runs:
        key = (stack, gc, micro, data, batching)
        if key in seen:
            continue
        seen.add(key)
        r = child(model, stack, gc, micro, a.batch // micro, a.seq, data, a.steps, cap, a.timeout, batching)
        r["cap_gib"] = round(cap, 1)
        if "tokens_per_s" in r:
            r["predicted_gib"] = round(predicted(shape, r, plan.KIT if stack == "kit" else plan.PLAIN), 2)
            r["mfu"] = mfu(r, shape, a.seq)
        results.append(r)
        print(json.dumps(r), flush=True)
        record = {"shape": a.shape, "seq": a.seq, "batch": a.batch, "runs": results,
                  "ratios": ratios(results)}
        out.write_text(json.dumps(record, indent=1))
    print(table(results, shape, gpu, a.seq))


def ratios(results: list[dict]) -> dict[str, float]:
    """Per data kind: the fastest kit run's real tokens/s over the fastest plain run's."""
    out = {}
    for data in ("full", "chat"):
        best = {stack: max((r["tokens_per_s"] for r in results if r["stack"] == stack and r["data"] == data
                            and r.get("tokens_per_s")), default=None) for stack in ("kit", "plain")}
        if best["kit"] and best["plain"]:
            out[data] = round(best["kit"] / best["plain"], 2)
    return out


def budget_rows(ok: list[dict], shape, seq: int, batch: int = 4) -> list[str]:
    """Per card size: the kit's plan (as measured) against the fastest measured plain
    configuration whose peak leaves 1 GiB of the card for CUDA's context and the allocator."""
    from kit import plan

    rows = []
    for b in BUDGETS_GB:
        gib = b * 1e9 / 2**30
        chosen = plan.choose(shape, budget_gib=plan.usable_gib(gib - 1, 0.15), batch_size=batch, seq=seq,
                             tflops=plan.PEAK_TFLOPS["H200"]).setting
        kit = next((r for r in ok if r["stack"] == "kit" and (r["gc"], r["micro"])
                    == (chosen.checkpointing, chosen.micro_batch)), None)
        plain = max((r for r in ok if r["stack"] == "plain" and r["peak_gib"] <= gib - 1),
                    key=lambda r: r["tokens_per_s"], default=None)
        ratio = f"{kit['tokens_per_s'] / plain['tokens_per_s']:.2f}x" if kit and plain else "-"
        rows.append(f"| {b} GB | {_cfg(kit)} | {_tps(kit)} | {_cfg(plain)} | {_tps(plain)} | {ratio} |")
    return rows


def _tps(r: dict | None) -> str:
    return "-" if r is None else f"{r['tokens_per_s']:,.0f}"


def table(results: list[dict], shape, gpu: bool, seq: int = 2048) -> str:
    lines = ["| stack | checkpointing | micro × accum | data | batching | tokens/s | peak GiB "
             "| predicted GiB | LoRA MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['stack']} | {r['gc']} | {r['micro']} | {r['data']} | | "
                         f"{'OOM' if r.get('oom') else r.get('error', '?')[:60]} | | | |")
            continue
        lines.append(f"| {r['stack']} | {r['gc']} | {r['micro']} × {r['accum']} | {r['data']} | "
                     f"{r.get('batching', '-')} | {r['tokens_per_s']:,.0f} | "
                     f"{r['peak_gib'] if r['peak_gib'] is not None else '-'} {r.get('peak_kind', '')} | "
                     f"{r['predicted_gib']} | {_pct(r.get('mfu'))} |")
    if gpu:
        for data in ("full", "chat"):
            ok = [r for r in results if "tokens_per_s" in r and r["data"] == data]
            if ok:
                lines += ["", f"{data} rows:", "", "| budget | kit plan | tokens/s "
                          "| fastest plain that fits | tokens/s | kit / plain |",
                          "|---|---|---|---|---|---|"]
                lines += budget_rows(ok, shape, seq)
    best = ratios(results)
    lines += ["", "kit / plain, real tokens/s: " + ", ".join(f"{d} {x:.2f}x" for d, x in best.items())]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x else "-"


def _cfg(r: dict | None) -> str:
    return "-" if r is None else f"{r['gc']} {r['micro']}×{r['accum']}"


def _embedded_tokenizer() -> str:
    from kit import embedded

    return str(embedded.ensure_converted())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="one measured run (a child process)")
    r.add_argument("--model", required=True)
    r.add_argument("--stack", choices=("kit", "plain"), required=True)
    r.add_argument("--gc", choices=("off", "on", "unsloth"), default="off")
    r.add_argument("--micro", type=int, default=4)
    r.add_argument("--accum", type=int, default=1)
    r.add_argument("--seq", type=int, default=2048)
    r.add_argument("--data", choices=("full", "chat"), default="full")
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--rank", type=int, default=16)
    r.add_argument("--budget-gib", type=float, default=0.0)
    r.add_argument("--configs", nargs="*", default=[],
                   help="several runs on the one loaded model, as data:batching (e.g. chat:packed); "
                        "default: --data:--batching")
    r.add_argument("--batching", choices=("auto", "padding-free", "packed", "grouped", "padded"),
                   default="auto",
                   help="plain stack on rows of different lengths: auto = padding-free where its "
                        "attention keeps rows apart, else grouped by length")
    s = sub.add_parser("suite", help="make the model, run every configuration, print the tables")
    s.add_argument("--shape", choices=SHAPES, default="tiny")
    s.add_argument("--seq", type=int, default=2048)
    s.add_argument("--batch", type=int, default=4, help="effective batch (rows per optimizer step)")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--tokenizer", default="", help="tokenizer folder (default: the embedded SmolLM2's)")
    s.add_argument("--work", default="/tmp/kit-bench")
    s.add_argument("--out", default="bench/results.json")
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--plain", type=_pair, nargs="*", default=[("on", 4), ("off", 1), ("off", 2), ("off", 4)],
                   help="plain configurations to measure, as gc:micro")
    s.add_argument("--data", nargs="+", choices=("full", "chat"), default=["full", "chat"],
                   help="data kinds to run every configuration on")
    s.add_argument("--chat", type=_triple, nargs="*", default=[],
                   help="extra runs on chat-like varied lengths, as stack:gc:micro")
    a = ap.parse_args()
    if a.cmd == "run":
        a.model = Path(a.model)
        run(a)
    else:
        suite(a)


def _pair(text: str) -> tuple[str, int]:
    gc, micro = text.split(":")
    return gc, int(micro)


def _triple(text: str) -> tuple[str, str, int]:
    stack, gc, micro = text.split(":")
    return stack, gc, int(micro)


if __name__ == "__main__":
    main()
