"""Several LoRA adapters on one base, in Python: the base loads once, adapters are added by name,
and each call, or each row of one batch, picks its own adapter (or none).

    from kit.multi import Multi
    m = Multi.from_adapters({"pip": "outputs/chat", "other": "outputs/chat-other"})
    m.generate([{"role": "user", "content": "Who are you?"}], adapter="pip").text
    m.generate_batch([msgs, msgs, msgs], adapters=["pip", "other", None])  # one mixed batch

An adapter comes from a run folder (its `adapter/`), an adapter folder, or a Hub id. One trained
on another base is refused in one line (kit.pin's fingerprint check); adapters of different bases
are refused from their files alone, before any weights load (`same_base`). Replies go through the
chat template and stop at the model's stop set (kit.stops: the family's turn end, the EOS list
the run wrote into the adapter's generation_config.json, the tokenizer's EOS).

Why plain transformers + PEFT and not Unsloth: Unsloth's fast LoRA path on a GPU fuses each
layer's LoRA matmuls into its own kernels, which read the one active adapter and skip PEFT's
per-row hooks, so a mixed batch (`generate(adapter_names=[...])`) could silently give every row
the same adapter. Here the base loads with `AutoModelForCausalLM` (4-bit NF4 through
bitsandbytes on a GPU where the run trained in 4-bit, or where the base is stored quantized),
the adapters with PEFT's `PeftModel.from_pretrained` / `load_adapter`, a call with one adapter
uses `set_adapter` (or `disable_adapter` for the base), and a mixed batch PEFT's own
`adapter_names=` ("__base__" for a row without one). `make gpu-check` proves the rows keep their
adapters on a GPU (bench/gpu_check.py, phase `multi`). DoRA adapters, which PEFT does not mix in
one batch, run as one sub-batch per adapter.

No torch at import: kit.serve checks its words and the adapters' bases before torch loads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kit import pin
from kit.errors import fail

BASE = "__base__"  # PEFT's adapter_names entry for a row that uses no adapter


@dataclass
class Reply:
    text: str  # the decoded reply, up to (not including) its stop token
    tokens: list[int]  # its token ids
    stopped: bool  # ended at a stop token (finish_reason "stop"), not at the length limit
    prompt_tokens: int
    adapter: str | None

    @property
    def completion_tokens(self) -> int:
        """Tokens generated, the stop token included."""
        return len(self.tokens) + int(self.stopped)


# ---------------------------------------------------------------- adapters, read from their files


def adapter_dir(source: str | Path) -> Path:
    """The folder holding adapter_config.json: an adapter folder, a run folder's `adapter/`, or a
    Hub id's download (the local Hugging Face cache first)."""
    p = Path(source).expanduser()
    for folder in (p, p / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    if p.exists():
        fail(f"{source}: no adapter here (no adapter_config.json in it or in its adapter/ folder)")
    if str(source).count("/") != 1 or str(source).startswith(("/", ".", "~")):
        fail(f"{source}: no such folder, and not a Hub id (owner/name)")
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(str(source)))
    except Exception as exc:  # offline, no such repository, no access
        fail(f"{source}: not a folder here, and the Hub did not give it ({type(exc).__name__})")
    if not (folder / "adapter_config.json").is_file():
        fail(f"{source}: the Hub repository holds no adapter_config.json")
    return folder


def base_of(folder: Path) -> dict:
    """What an adapter folder says of its base: `name` (the Hub id or folder name it records),
    `sha256` (base_fingerprint.json, None if absent) and `path` (where to load it: this machine's
    copy the kit recorded, else the name)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    pinned_file = folder / pin.FILE
    pinned = json.loads(pinned_file.read_text()) if pinned_file.is_file() else {}
    name = pinned.get("base_model") or config.get("base_model_name_or_path") or ""
    return {"name": name, "sha256": pinned.get("sha256"), "path": pin.local_base(folder) or name}


def same_base(folders: dict[str, Path]) -> dict:
    """The base all these adapters were trained on (base_of's dict), from their files alone;
    refused in one line when two name different bases (different fingerprints, or different
    names where one has no fingerprint)."""
    items = list(folders.items())
    first_name, first = items[0][0], base_of(items[0][1])
    for name, folder in items[1:]:
        other = base_of(folder)
        both = first["sha256"] and other["sha256"]
        if (first["sha256"] != other["sha256"]) if both else (first["name"] != other["name"]):
            def said(n, b):
                return f"{n} on {b['name']}" + (f" (fingerprint {b['sha256'][:12]})" if b["sha256"] else "")
            fail(f"adapters of different bases cannot share one base: {said(first_name, first)}, "
                 f"{said(name, other)}; serve each base on its own")
    return first


def _four_bit_run(folder: Path) -> bool:
    """Whether the run that wrote this adapter trained on a 4-bit base (its run folder's
    metrics.json memory plan)."""
    metrics = folder.parent / "metrics.json"
    if not metrics.is_file():
        return False
    plan = json.loads(metrics.read_text()).get("memory_plan") or {}
    return bool(plan.get("load_in_4bit"))


# ---------------------------------------------------------------- the base and its adapters


class Multi:
    """One base, loaded once, with named PEFT adapters on it."""

    def __init__(self, base: str, name: str | None = None, load_in_4bit: bool = False,
                 tokenizer_from: str | Path | None = None):
        """`base`: a folder or Hub id; `name`: what the base answers to (default: `base`);
        `load_in_4bit`: NF4 through bitsandbytes, on a GPU only; `tokenizer_from`: a folder with
        the tokenizer and generation_config.json to use (an adapter folder the kit wrote;
        default: the base's)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from kit import stops

        self.base, self.name = str(base), name or str(base)
        self.gpu = torch.cuda.is_available()
        kwargs: dict = {"dtype": "auto" if self.gpu else torch.float32}
        if self.gpu:
            kwargs["device_map"] = {"": 0}
            if load_in_4bit:
                from transformers import BitsAndBytesConfig

                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.bfloat16)
        self.model = AutoModelForCausalLM.from_pretrained(self.base, **kwargs).eval()
        source = str(tokenizer_from or self.base)
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        own = Path(source) / "generation_config.json"
        config = GenerationConfig.from_pretrained(source) if own.is_file() else self.model.generation_config
        self.stops = stops.stop_ids(self.tokenizer, config)
        self.adapters: dict[str, Path] = {}

    @classmethod
    def from_adapters(cls, sources: dict[str, str | Path], base: str | None = None,
                      load_in_4bit: bool | None = None) -> Multi:
        """The base these adapters share (refused before loading when they do not), loaded once,
        with each adapter on it under its name. `load_in_4bit` None: 4-bit on a GPU where a run
        trained in 4-bit."""
        folders = {name: adapter_dir(src) for name, src in sources.items()}
        shared = same_base(folders)
        if load_in_4bit is None:
            load_in_4bit = any(_four_bit_run(f) for f in folders.values())
        first = next(iter(folders.values()))
        own = (first / "tokenizer_config.json").is_file()  # the run's tokenizer, beside its adapter
        multi = cls(base or shared["path"], name=shared["name"] or None, load_in_4bit=load_in_4bit,
                    tokenizer_from=first if own else None)
        for name, folder in folders.items():
            multi.add(name, folder)
        return multi

    def add(self, name: str, source: str | Path) -> None:
        """Put an adapter on the base under `name`: refused in one line if it was trained on
        another base (kit.pin)."""
        from peft import PeftModel

        if not name or name == BASE or name in self.adapters:
            fail(f"adapter name {name!r} is empty, reserved or taken")
        folder = adapter_dir(source)
        pin.check(folder, self.base)
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name).eval()
        self.adapters[name] = folder

    # ------------------------------------------------------------ generation

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation through the chat template, with the assistant turn opened."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(self, messages: list[dict], adapter: str | None = None, max_new_tokens: int = 256,
                 temperature: float = 0.0) -> Reply:
        """One reply with the named adapter, or the base alone (None)."""
        return self.generate_batch([messages], [adapter], max_new_tokens, temperature)[0]

    def generate_batch(self, conversations: list[list[dict]], adapters: list[str | None],
                       max_new_tokens: int | list[int] = 256, temperature: float = 0.0,
                       on_token: Callable[[int, int], None] | None = None) -> list[Reply]:
        """One batch, each row with its own adapter (None: the base). `max_new_tokens` per row
        or for all; `temperature` 0 is greedy. `on_token(row, token_id)` is called for each
        reply token as it is generated (the stop token not included)."""
        for a in adapters:
            if a is not None and a not in self.adapters:
                fail(f"no adapter named {a!r}; have: {', '.join(self.adapters) or 'none'}")
        limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(adapters)
        prompts = [self.prompt_ids(m) for m in conversations]
        rows = [None] * len(prompts)
        for index in self._groups(adapters):
            got = self._run([prompts[i] for i in index], [adapters[i] for i in index],
                            [limits[i] for i in index], temperature,
                            (lambda r, t, index=index: on_token(index[r], t)) if on_token else None)
            for i, reply in zip(index, got):
                rows[i] = reply
        return rows  # type: ignore[return-value]

    def _groups(self, adapters: list[str | None]) -> list[list[int]]:
        """Rows that run as one batch: all of them, unless a DoRA adapter is among several."""
        names = set(adapters)
        dora = any(getattr(self.model.peft_config[a], "use_dora", False) for a in names if a)
        if len(names) == 1 or not dora:
            return [list(range(len(adapters)))]
        return [[i for i, a in enumerate(adapters) if a == n] for n in dict.fromkeys(adapters)]

    def _run(self, prompts, adapters, limits, temperature, on_token) -> list[Reply]:
        import contextlib

        import torch
        from peft import PeftModel
        from transformers import StoppingCriteria, StoppingCriteriaList

        from kit import stops

        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        device = self.model.device
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        streamer = _RowStreamer(self.stops, limits, on_token)

        class RowLimits(StoppingCriteria):  # each row ends at its own max_new_tokens
            def __call__(self, input_ids, scores, **kwargs):
                made = input_ids.shape[1] - width
                return torch.tensor([made >= n for n in limits], device=input_ids.device)

        kwargs = {"max_new_tokens": max(limits), "pad_token_id": pad, "eos_token_id": self.stops,
                  "stopping_criteria": StoppingCriteriaList([RowLimits()]), "streamer": streamer}
        kwargs.update({"do_sample": True, "temperature": float(temperature)} if temperature > 0
                      else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None})
        context = contextlib.nullcontext()
        if isinstance(self.model, PeftModel):
            if len(set(adapters)) > 1:  # a mixed batch: PEFT routes each row to its adapter
                kwargs["adapter_names"] = [a or BASE for a in adapters]
            elif adapters[0] is None:
                context = self.model.disable_adapter()
            else:
                self.model.set_adapter(adapters[0])
        with torch.no_grad(), context:
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        replies = []
        for p, row, adapter, limit in zip(prompts, out[:, width:].tolist(), adapters, limits):
            row, stopped = stops.cut_at_stop(row[:limit], self.stops)  # past it: padding
            replies.append(Reply(self.tokenizer.decode(row, skip_special_tokens=True), row, stopped,
                                 len(p), adapter))
        return replies

    def switch_ms(self, adapter: str | None, repeats: int = 20) -> float:
        """Milliseconds a call with `adapter` spends switching to it before it generates: one
        `set_adapter(adapter)`, or for the base (None) entering and leaving `disable_adapter()`;
        the mean of `repeats`."""
        start = time.perf_counter()
        for _ in range(repeats):
            if adapter is None:
                with self.model.disable_adapter():
                    pass
            else:
                self.model.set_adapter(adapter)
        return (time.perf_counter() - start) * 1000 / repeats


class _RowStreamer:
    """transformers' streamer interface (put/end) for a batch: each row's reply tokens, up to its
    stop token or its own limit, handed to `on_token(row, token_id)`."""

    def __init__(self, stops: list[int], limits: list[int], on_token):
        self.stops, self.limits, self.on_token = set(stops), limits, on_token
        self.made = [0] * len(limits)
        self.done = [False] * len(limits)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate() first puts the prompt
            self.prompt_seen = True
            return
        for row, tok in enumerate(value.reshape(len(self.limits), -1)[:, -1].tolist()):
            if self.done[row]:
                continue
            if tok in self.stops:
                self.done[row] = True
                continue
            self.made[row] += 1
            self.done[row] = self.made[row] >= self.limits[row]
            if self.on_token:
                self.on_token(row, tok)

    def end(self) -> None:
        pass
