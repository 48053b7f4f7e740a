"""Memory plan: estimate a LoRA run's peak GPU memory from the model's config.json, before a
single weight loads, and pick the fastest settings that fit the card.

The estimate adds up the parts that matter for QLoRA on a decoder:

    weights      4-bit NF4 linears (0.516 bytes/param with double quantization), 16-bit embeddings
    LoRA         adapter weights, their gradients and 8-bit AdamW states (10 bytes/param)
    activations  per token: one layer's saved tensors, times the layers kept alive
                 (all of them without checkpointing; one being recomputed with it), plus the
                 layer inputs checkpointing keeps on the GPU (Unsloth's mode offloads them)
    logits       per token, times the vocabulary (the loss runs in chunks, so this stays small)
    overhead     a fixed part and dequantization buffers the size of the largest weight

What it models: the decoders of the families in kit/families.py, whose table gives each
layer's projections and their shapes (Llama's q/k/v/o, gate/up/down; Phi-3's fused qkv_proj and
gate_up_proj; StarCoder2's plain c_fc/c_proj MLP), the decoder of a multimodal config's
`text_config` (its vision tower is not counted), and any `head_dim`. Only the Llama layout was
measured; the others hold their weights in other matrices, and their activations are estimated
as a gated MLP's (StarCoder2's single up projection saves less: an overestimate). What it
refuses (`Shape.from_config` raises ValueError, and the run falls back to safe settings):
mixture-of-experts configs (every expert's weights would count, but how many tokens each expert
holds activations for, and Unsloth's expert kernels, were never measured) and any `model_type`
the family table lacks, whose projection names and sizes are unknown here.

Vocabularies: every point was measured at 49,152 entries. The embedding and LM head are counted
exactly (16-bit even on a 4-bit base, once if tied), but the logits term (Unsloth's chunked
loss) was not measured at the 128k-262k vocabularies of Llama 3, Qwen or Gemma, so beyond
49,152 the excess entries count twice (`Coefficients.vocab_margin`, a stated margin, not a fit).

Its coefficients are fitted to peaks measured on an H200 (torch 2.11, transformers 5.17.0,
unsloth 2026.10.9; random-init Llamas, sequence 2,048, LoRA r=16 on all projections):
`CALIBRATION` keeps those points; tests/test_plan.py refits without some and predicts those.

Speed: a micro-batch costs the larger of the host's time to launch its kernels (about 8.75 ms
per layer, measured through the kit on an H200: micro-batches of 1 and 2 rows of 2,048 tokens
took the same 0.28 s at 7.38B) and the GPU's time for its FLOPs (at the 53% MFU measured there),
all times 1.44 when checkpointing recomputes the forward. So a micro-batch of one row wastes the
card: at 7.38B, no checkpointing with 1 row ran 7,382 tokens/s, offloaded checkpointing with 4
rows 11,159. The plan picks the fastest predicted setting that fits, then the smaller one, and
makes up the requested batch with gradient accumulation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from kit import families

GiB = 2**30
ALL_TARGETS = families.DEFAULT.targets  # Llama's seven projections: the calibration's targets
AUTO_TARGETS = ("auto",)  # every linear projection of the decoder layers, whatever their names
# Keys that give a mixture-of-experts config's expert count (Qwen-MoE, Mixtral, DeepSeek, DBRX,
# gpt-oss, Llama 4...).
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
CALIBRATED_VOCAB = 49152  # the vocabulary of every measured point
MODES = ("off", "on", "unsloth")  # gradient checkpointing: none, recompute, recompute + offload
# GPU time per mode, relative to none (7.38B, H200, 4 rows: 16,036 vs 11,159 tokens/s offloaded).
MODE_COST = {"off": 1.0, "on": 1.44, "unsloth": 1.44}
HOST_SECONDS_PER_LAYER = 0.00875  # launching one layer's forward and backward kernels
ACHIEVED_MFU = 0.535  # 7.38B, no checkpointing, 4 × 2,048 tokens, H200
# Dense bf16 (fp16 on T4) peaks in TFLOPS, for the speed order; unknown cards get an A100's.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "B200": 2250.0, "A100": 312.0, "L40": 362.0,
               "L4": 121.0, "A10": 125.0, "T4": 65.0, "V100": 125.0}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit values, 8-bit absmax per 64, fp32 per 256 blocks
LORA_BYTES = 10  # fp32 weight + fp32 gradient + two 8-bit Adam moments


@dataclass(frozen=True)
class Shape:
    """The dimensions of a decoder that memory depends on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    # A decoder layer's linear projections, from the family table (kit.families).
    projections: tuple[families.Projection, ...] = families.DEFAULT.projections

    @classmethod
    def from_config(cls, cfg: dict) -> Shape:
        outer = cfg
        cfg = cfg.get("text_config") or cfg  # multimodal configs nest the decoder
        kind = str(cfg.get("model_type") or outer.get("model_type") or "")
        experts = _experts(cfg) or _experts(outer)
        if experts:
            raise ValueError(f"cannot plan a mixture-of-experts model ({experts}): memory not modelled")
        try:
            d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            shape = cls(
                hidden=d,
                intermediate=int(cfg.get("intermediate_size") or 4 * d),
                layers=int(cfg["num_hidden_layers"]),
                heads=heads,
                kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or d // heads),
                vocab=int(cfg["vocab_size"]),
                tied=bool(cfg.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"config.json lacks the decoder dimensions ({exc})") from None
        family = families.family(kind)
        if family is None:
            raise ValueError(f"cannot plan model_type {kind!r}: its projections are not modelled "
                             f"(kit/families.py knows {families.known_types()})")
        return dataclasses.replace(shape, projections=family.projections)

    def _linears(self) -> dict[str, tuple[int, int]]:
        """Each projection of one decoder layer: name → (in, out) features."""
        dims = {"d": self.hidden, "m": self.intermediate, "q": self.heads * self.head_dim,
                "kv": self.kv_heads * self.head_dim}
        return {name: (families.features(i, dims), families.features(o, dims))
                for name, i, o in self.projections}

    @property
    def largest_linear(self) -> int:
        return max(i * o for i, o in self._linears().values())

    @property
    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self._linears().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params

    def flops_per_token(self, seq: int, lora: int = 0) -> float:
        """LoRA training FLOPs per token: 4·N_frozen + 6·N_lora + 12·L·d·T (attention)."""
        return 4 * self.params + 6 * lora + 12 * self.layers * self.hidden * seq

    def lora_params(self, r: int, targets: tuple[str, ...] = ALL_TARGETS) -> int:
        """Adapter parameters on the named projections (names this layout lacks add nothing, as
        in PEFT); `("auto",)` or `()`: on every projection of the layers."""
        shapes = self._linears()
        if tuple(targets) in (AUTO_TARGETS, ()):
            targets = tuple(shapes)
        return self.layers * sum(r * sum(shapes[t]) for t in targets if t in shapes)


def _experts(cfg: dict) -> str:
    """'N experts' for a mixture-of-experts config, 'experts' if the count is unnamed, else ''."""
    for key in EXPERT_KEYS:
        n = cfg.get(key)
        if isinstance(n, int) and n > 1:
            return f"{n} experts"
    ffn = cfg.get("ffn_config")  # DBRX nests it
    if isinstance(ffn, dict) and _experts(ffn):
        return _experts(ffn)
    if cfg.get("moe_intermediate_size") or "moe" in str(cfg.get("model_type", "")):
        return "experts"
    return ""


@dataclass(frozen=True)
class Coefficients:
    """Fitted constants of one training stack (see the module docstring)."""

    activation_scale: float  # one layer's saved bytes per token, in units of 2·(8·d + 4·m)
    logit_bytes: float  # per token per vocabulary entry
    fixed_gib: float
    buffer_weights: float  # dequantization buffers, in units of the largest weight at 16-bit
    embedding_bytes: int  # the plain stack upcasts embeddings to fp32 for k-bit training
    # Vocabulary entries beyond CALIBRATED_VOCAB count (1 + this) times in the logits term.
    vocab_margin: float = 0.0


# Unsloth's chunked loss was measured at 49,152 entries only: a margin beyond (module docstring).
KIT = Coefficients(0.667, 0.625, 0.036, 4.16, 2, vocab_margin=1.0)
# transformers' loss materializes every logit in fp32: linear in the vocabulary, no margin.
PLAIN = Coefficients(1.74, 3.99, 0.0, 4.16, 4)

# Measured peaks (GiB) the coefficients were fitted to: (stack, dims, checkpointing, micro-batch).
# Random-init Llamas, vocabulary 49,152, sequence 2,048, r=16 on all seven projections, 4-bit.
LLAMA_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49152,
            "tie_word_embeddings": False}
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49152,
            "tie_word_embeddings": True}
# The first six are from the GPU probe in the issue (Unsloth through TRL's own collator); the
# rest from bench/bench.py (the kit's path, and its plain baseline) on the same H200.
CALIBRATION = [
    ("kit", LLAMA_8B, "unsloth", 4, 6.23), ("kit", LLAMA_8B, "on", 4, 7.98),
    ("kit", LLAMA_8B, "on", 16, 17.59), ("kit", LLAMA_8B, "off", 4, 34.58),
    ("kit", LLAMA_8B, "off", 8, 64.12), ("kit", LLAMA_1B, "unsloth", 4, 1.66),
    ("kit", LLAMA_8B, "unsloth", 4, 6.60), ("kit", LLAMA_8B, "off", 1, 12.17),
    ("kit", LLAMA_8B, "off", 2, 19.71), ("kit", LLAMA_8B, "off", 4, 34.69),
    ("plain", LLAMA_8B, "off", 1, 24.87), ("plain", LLAMA_8B, "off", 2, 44.02),
    ("plain", LLAMA_8B, "off", 4, 82.16),
]
# Plain with checkpointing is estimated loosely (transformers' non-reentrant checkpointing measured
# 14.12 GiB at 7.38B × 4 rows, estimated 11.2; the probe's TRL run at 1.07B 3.80, estimated 4.4).
# Only bench/ uses those estimates; the planner never plans the plain stack.
# Tokens/s the speed model was fitted to (kit, 7.38B, H200, rows of 2,048): (mode, micro, tokens/s).
SPEED_POINTS = [("unsloth", 4, 11159), ("off", 1, 7382), ("off", 2, 14509), ("off", 4, 16036)]


@dataclass(frozen=True)
class Setting:
    checkpointing: str  # one of MODES
    micro_batch: int
    grad_accum: int
    seq: int  # longest sequence a micro-batch can hold
    pass_tokens: int = 0  # packed micro-batches: the most tokens one pass can hold (0: rows × seq)

    @property
    def tokens(self) -> int:
        return self.pass_tokens or self.micro_batch * self.seq

    def tokens_per_second(self, shape: Shape, peak_tflops: float) -> float:
        """Predicted speed: a micro-batch takes the host's launch time or the GPU's, the longer."""
        host = HOST_SECONDS_PER_LAYER * shape.layers
        gpu = self.tokens * shape.flops_per_token(self.seq) / (ACHIEVED_MFU * peak_tflops * 1e12)
        # Recomputing the forward costs launches as well as FLOPs.
        return self.tokens / (MODE_COST[self.checkpointing] * max(host, gpu))

    def describe(self) -> str:
        gc = {"off": "no checkpointing", "on": "checkpointing",
              "unsloth": "offloaded checkpointing"}[self.checkpointing]
        packed = f", packed ≤ {self.pass_tokens} tokens per pass" if self.pass_tokens else ""
        return (f"{gc}, micro-batch {self.micro_batch} × {self.grad_accum} accumulation, "
                f"seq ≤ {self.seq}{packed}")


@dataclass
class Estimate:
    parts: dict[str, float]  # GiB per part
    host_gib: float = 0.0  # layer inputs Unsloth's checkpointing offloads to CPU RAM
    # Sampling completions before a step (GRPO): their KV cache and logits, held while no
    # activations are, so the peak has the larger of the two.
    generation_gib: float = 0.0

    @property
    def total(self) -> float:
        training = self.parts.get("activations", 0.0) + self.parts.get("logits", 0.0)
        return sum(self.parts.values()) + max(self.generation_gib - training, 0.0)

    def describe(self) -> str:
        text = ", ".join(f"{k} {v:.2f}" for k, v in self.parts.items() if v >= 0.005)
        if self.generation_gib:
            text += (f"; generation {self.generation_gib:.2f} "
                     "(KV cache and logits, not at once with activations)")
        return text


def generation_gib(shape: Shape, rows: int, seq: int) -> float:
    """Sampling `rows` completions at once, each up to `seq` tokens with its prompt: the 16-bit
    KV cache (keys and values of every layer) and one step's fp32 logits, twice (the scores
    and their softmax)."""
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2
    return rows * (seq * kv_per_token + 2 * 4 * shape.vocab) / GiB


def estimate(shape: Shape, setting: Setting, *, r: int = 16, targets: tuple[str, ...] = ALL_TARGETS,
             four_bit: bool = True, coef: Coefficients = KIT, generation_rows: int = 0) -> Estimate:
    """Predicted peak memory of one training step, split by part; with `generation_rows`, of
    sampling that many completions (GRPO) before it too (generation_gib)."""
    d, m = shape.hidden, shape.intermediate
    vocab = shape.vocab + coef.vocab_margin * max(shape.vocab - CALIBRATED_VOCAB, 0)
    layer_bytes = coef.activation_scale * 2 * (8 * d + 4 * m)
    kept = shape.layers if setting.checkpointing == "off" else 1
    stash = shape.layers * d * 2 if setting.checkpointing == "on" else 0
    tokens = setting.tokens
    offloaded = shape.layers * d * 2 * tokens / GiB if setting.checkpointing == "unsloth" else 0.0
    return Estimate({
        "weights": (shape.linear_params * (NF4_BYTES if four_bit else 2)
                    + shape.embedding_params * coef.embedding_bytes) / GiB,
        "LoRA+optimizer": shape.lora_params(r, targets) * LORA_BYTES / GiB,
        "activations": tokens * (layer_bytes * kept + stash) / GiB,
        "logits": tokens * coef.logit_bytes * vocab / GiB,
        "overhead": coef.fixed_gib + coef.buffer_weights * shape.largest_linear * 2 / GiB,
    }, host_gib=offloaded, generation_gib=generation_gib(shape, generation_rows, setting.seq))


@dataclass
class Plan:
    setting: Setting
    estimate: Estimate
    budget_gib: float  # memory the run may use (free memory less the safety margin)
    fits: bool
    message: str  # one line: the plan, or why nothing fits and what would
    faster_not_fitting: list[str] = field(default_factory=list)


def _divisors_desc(n: int) -> list[int]:
    return [k for k in range(n, 0, -1) if n % k == 0]


def peak_tflops(device_name: str) -> float:
    return next((v for k, v in PEAK_TFLOPS.items() if k in device_name), PEAK_TFLOPS["A100"])


def choose(shape: Shape, *, budget_gib: float, batch_size: int, seq: int,
           checkpointing: str | None = None, micro_batch: int | None = None, r: int = 16,
           targets: tuple[str, ...] = ALL_TARGETS, four_bit: bool = True,
           modes: tuple[str, ...] = MODES, tflops: float = PEAK_TFLOPS["H100"],
           host_gib: float = math.inf, row_lengths: tuple[int, ...] = (),
           generation_rows: int = 0) -> Plan:
    """The fastest (checkpointing, micro-batch) that fits `budget_gib` for batches of
    `batch_size` sequences up to `seq` tokens. An explicit `checkpointing` or `micro_batch`
    is kept as given; if it does not fit, the message names the nearest setting that does.
    `host_gib`: CPU RAM that offloaded checkpointing may fill (a Colab VM has about 12 GiB).
    `row_lengths`: the data's row lengths when micro-batches are packed (padding-free): a pass
    then holds the tokens of its rows, not rows × `seq`, and is planned for its worst case, the
    sum of the micro-batch's count of longest rows; the token budget per pass is that sum.
    `generation_rows`: completions sampled at once before each step (GRPO), up to `seq` tokens each."""
    longest_first = sorted(row_lengths, reverse=True)

    def setting(c: str, b: int, length: int) -> Setting:
        packed = min(sum(longest_first[:b]), b * length) if longest_first else 0
        return Setting(c, b, batch_size // b, length, packed)

    def est(s: Setting) -> Estimate:
        return estimate(shape, s, r=r, targets=targets, four_bit=four_bit, generation_rows=generation_rows)

    def candidates(cp: tuple[str, ...], mbs: list[int], length: int) -> list[tuple[Setting, Estimate]]:
        out = [(s, est(s)) for s in (setting(c, b, length) for c in cp for b in mbs)]
        top = max(speed(s) for s, _ in out)
        # Fastest first, in 2% steps (closer is noise); within a step, more rows per pass (fewer
        # launches, where the model is least sure), then less memory.
        return sorted(out, key=lambda se: (-round(50 * speed(se[0]) / top), -se[0].tokens, se[1].total))

    def speed(s: Setting) -> float:
        return s.tokens_per_second(shape, tflops)

    cp = (checkpointing,) if checkpointing else modes
    mbs = [micro_batch] if micro_batch else _divisors_desc(batch_size)
    ranked = candidates(cp, mbs, seq)
    def fits(e: Estimate) -> bool:
        return e.total <= budget_gib and e.host_gib <= host_gib

    fitting = [(s, e) for s, e in ranked if fits(e)]
    if fitting:
        best, best_est = fitting[0]
        offload = f" (+{best_est.host_gib:.1f} GiB offloaded to CPU RAM)" if best_est.host_gib >= 0.05 else ""
        plan = Plan(best, best_est, budget_gib, True,
                    f"{best.describe()}: ~{best_est.total:.1f} GiB of {budget_gib:.1f} GiB usable{offload}")
        plan.faster_not_fitting = [f"{s.describe()} (~{e.total:.1f} GiB)" for s, e in ranked
                                   if speed(s) > speed(best) * 1.02 and not fits(e)][:2]
        return plan

    # Nothing fits: name the nearest setting that does.
    smallest_s, smallest_e = min(ranked, key=lambda se: se[1].total)
    need = (f"needs ~{smallest_e.total:.1f} GiB even with {smallest_s.describe()}, "
            f"and {budget_gib:.1f} GiB is usable")
    free = [(s, e) for s, e in candidates(modes, _divisors_desc(batch_size), seq) if fits(e)]
    if free and (checkpointing or micro_batch):
        s, e = free[0]
        hint = (f"gradient_checkpointing={_key(s.checkpointing)} micro_batch_size={s.micro_batch} "
                f"fits (~{e.total:.1f} GiB), or leave both on auto")
    else:
        def need_at(n: int) -> float:  # GPU memory at length n, for modes whose offload fits the host
            ests = [estimate(shape, Setting(c, 1, batch_size, n), r=r, targets=targets, four_bit=four_bit,
                             generation_rows=generation_rows) for c in cp]
            return min((e.total for e in ests if e.host_gib <= host_gib), default=math.inf)

        longest = _longest_fitting(need_at, budget_gib, seq)
        if longest:
            hint = f"max_seq_length={longest} fits with micro-batch 1"
        else:
            floor = est(Setting(cp[-1], 1, batch_size, 128)).total
            hint = (f"the weights alone need ~{floor:.1f} GiB: use a smaller model, or a card with "
                    f"at least {math.ceil(floor / 0.9 + 0.5)} GB")
    return Plan(smallest_s, smallest_e, budget_gib, False, f"does not fit: {need}; {hint}")


def _longest_fitting(need_gib, budget_gib: float, seq: int, step: int = 128) -> int:
    """Longest multiple of `step` below `seq` whose need fits, or 0."""
    lo, hi = 0, seq // step  # in units of step; need grows with length
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need_gib(mid * step) <= budget_gib:
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def _key(mode: str) -> str:
    return {"off": "false", "on": "true", "unsloth": "unsloth"}[mode]


def mode_of(key: str) -> str | None:
    """The `gradient_checkpointing=` key as a plan mode; None for auto."""
    return {"false": "off", "true": "on", "unsloth": "unsloth", "auto": None}[key.lower()]


def usable_gib(free_gib: float, margin: float) -> float:
    """Memory a run may plan to use: the allocator's caching and fragmentation take the margin,
    and CUDA's own context about 0.3 GiB beyond what the card reports free before loading."""
    return max(free_gib * (1 - margin) - 0.3, 0.0)


def read_shape(model_path: str) -> Shape:
    """Shape from a local folder's config.json, or a Hub model's (config.json only is fetched)."""
    path = Path(model_path)
    if path.is_dir():
        config = path / "config.json"
    else:
        from huggingface_hub import hf_hub_download

        from kit.secrets import hub_token

        config = Path(hf_hub_download(model_path, "config.json", token=hub_token()))
    return Shape.from_config(json.loads(config.read_text()))
