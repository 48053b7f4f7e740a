"""Push a run's exports to the Hugging Face Hub, each with a model card written from metrics.json.

adapter/ → `repo`, merged/ → `repo-merged`, gguf/ → `repo-GGUF`, gguf-lora/ → `repo-LoRA-GGUF`
(the GGUF adapter alone, not the base GGUF beside it): one repository per kind, so each loads
with the library it is made for. Each upload is one `create_commit`: the export's files go
straight from disk, our README.md, metrics.json and (for an adapter) adapter_config.json as bytes.
The card's metadata, evaluation results included, is written by huggingface_hub's ModelCardData.
The token is sent only as the HTTP Authorization header: it is never printed, and it is scrubbed
from every file we write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kit.checks import REPO, SUFFIX, check_repo, lora_gguf_name
from kit.errors import KitError, fail
from kit.secrets import hub_token, redact

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, EvalResult, HfApi

KINDS = ("adapter", "merged", "gguf", "gguf-lora")
LIBRARY = {"adapter": "peft", "merged": "transformers", "gguf": "gguf", "gguf-lora": "gguf"}
WHAT = {"adapter": "LoRA adapter (PEFT)", "merged": "merged 16-bit model",
        "gguf": "GGUF model for llama.cpp and Ollama",
        "gguf-lora": "LoRA adapter as GGUF, for llama.cpp and Ollama on the base model's GGUF"}
INTRO = {"adapter": "A LoRA adapter (PEFT) for", "merged": "A fine-tune of",
         "gguf": "A GGUF build (for llama.cpp and Ollama) of a fine-tune of",
         "gguf-lora": "A LoRA adapter in GGUF (for llama.cpp and Ollama) for"}
# What each export's check did (kit.export), for the card.
CHECKED = {"adapter": "loaded in a fresh process with plain peft, answered and stopped at the "
                      "end-of-turn token",
           "merged": "loaded in a fresh process with plain transformers, answered and stopped at the "
                     "end-of-turn token",
           "gguf": "loaded in llama.cpp, answered through its chat template and stopped at the end of "
                   "its turn",
           "gguf-lora": "llama.cpp with this adapter on the base's GGUF gave the PEFT adapter's greedy "
                        "tokens"}
# How each recipe trains, for the card's first line and tags.
METHOD = {"dpo": ("preference tuning with DPO and LoRA", "dpo"),
          "grpo": ("reinforcement learning from verifiable rewards with GRPO and LoRA", "grpo")}
SFT = ("supervised fine-tuning with LoRA", "sft")
PROJECT = "unsloth-recipe-kit"
# The task a recipe's held-out metrics measure, for the model-index metadata.
TASK = {"classification": ("text-classification", "Text Classification")}

# Key names that hold credentials. `token` as a word only, so `max_new_tokens` or `tokens` stay.
_SECRET_KEY = re.compile(r"(^|[_.-])token($|[_.-])|secret|passw|api_?key|credential", re.IGNORECASE)


# ---------------------------------------------------------------- small helpers


def is_hub_id(name: str | None) -> bool:
    """`owner/name` that is not a local folder: something the Hub (and `base_model`) can resolve."""
    if not name or name.startswith(("/", ".", "~")) or not REPO.match(name) or "--" in name:
        return False
    return not Path(name).expanduser().exists()


def scrub(value: Any, token: str | None) -> Any:
    """A copy of `value` without credential-named keys, with the token redacted from strings and
    absolute paths on this machine cut to their last part (nothing for the Hub names a local path)."""
    if isinstance(value, dict):
        return {k: scrub(v, token) for k, v in value.items() if not _SECRET_KEY.search(str(k))}
    if isinstance(value, list | tuple):
        return [scrub(v, token) for v in value]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value:
        value = Path(value).name
    if isinstance(value, str) and token:
        return redact(value, token)
    return value


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _base(metrics: dict) -> str:
    """The Hub id (or local path) of the base model; older metrics.json files lack `base_model`."""
    model = (metrics.get("config") or {}).get("model")
    return str(metrics.get("base_model") or (model if model != "auto" else None) or metrics.get("model", ""))


def _scalars(d: dict | None) -> dict:
    return {k: v for k, v in (d or {}).items() if not isinstance(v, dict | list)}


# ---------------------------------------------------------------- model card


def _eval_results(metrics: dict, source: str | None) -> list[EvalResult]:
    """The fine-tuned model's numeric held-out metrics as model-index entries, which the Hub lists
    as evaluation results; the values before fine-tuning stay in the card's table."""
    from huggingface_hub import EvalResult

    task, task_name = TASK.get(str(metrics.get("recipe")), ("text-generation", "Text Generation"))
    dataset = str(source or "held-out data")
    return [EvalResult(task_type=task, task_name=task_name, dataset_type=dataset, dataset_name=dataset,
                       dataset_split="held-out", metric_type=name, metric_value=value)
            for name, value in _scalars(metrics.get("after")).items()
            if isinstance(value, int | float) and not isinstance(value, bool)]


def model_card(metrics: dict, kind: str, repo_id: str, *, siblings: dict[str, str] | None = None,
               token: str | None = None) -> str:
    """README.md for the `kind` export in `repo_id`: metadata with the evaluation results, then
    results, training, data, config (credentials removed), versions and how to load it.
    `siblings`: kind → repo id of the other exports pushed with it, linked from the card."""
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    token = token if token is not None else hub_token()
    metrics = scrub(metrics, token)
    cfg, train, data = (metrics.get(k) or {} for k in ("config", "train", "data"))
    lora = cfg.get("lora") or {}
    source = data.get("source") or cfg.get("data")  # older metrics.json files only know the source
    recipe = str(metrics.get("recipe", "custom"))
    method = METHOD.get(recipe, SFT)
    base = _base(metrics)
    on_hub = is_hub_id(base)
    # base_model and datasets must be Hub ids: the Hub rejects a local path in the metadata.
    meta = ModelCardData(
        base_model=base if on_hub else None, datasets=[source] if is_hub_id(source) else None,
        library_name=LIBRARY[kind], license=metrics.get("license"), pipeline_tag="text-generation",
        tags=list(dict.fromkeys([LIBRARY[kind], "unsloth", "trl", "lora", method[1], recipe, PROJECT])),
        model_name=repo_id, eval_results=_eval_results(metrics, source) or None)
    base_md = f"[{base}](https://huggingface.co/{base})" if on_hub else f"`{base}` (a local model)"

    out = [f"# {repo_id.split('/')[1]}", "",
           f"{INTRO[kind]} {base_md}, trained with the **{recipe}** recipe of {PROJECT} "
           f"(Unsloth and TRL: {method[0]}).", "",
           f"- Base model: {base_md}", f"- This repository: {WHAT[kind]}"]
    out += [f"- Also published: [{rid}](https://huggingface.co/{rid}) ({WHAT[other]})"
            for other, rid in (siblings or {}).items() if rid != repo_id]
    if not on_hub:
        out.append("- Note: the base model is not on the Hub under a known id; load it yourself first.")
    if ((metrics.get("exports") or {}).get(kind) or {}).get("ok"):
        out.append(f"- Checked after export: {CHECKED[kind]}.")
    out.append("")

    # Results: only the scalar metrics; confusion matrices and label lists live in metrics.json.
    before, after = _scalars(metrics.get("before")), _scalars(metrics.get("after"))
    improved = metrics.get("improved") or {}
    if before or after:
        out += ["## Results", "",
                "On the held-out set: the base model before fine-tuning, then the fine-tuned model.", "",
                "| metric | before → after | better |", "|---|---|---|"]
        for name in list(before) + [k for k in after if k not in before]:
            mark = {True: "yes", False: "no"}.get(improved.get(name), "")
            out.append(f"| {name} | {_fmt(before.get(name, '-'))} → {_fmt(after.get(name, '-'))} | {mark} |")
        if "loss_first" in train and "loss_last" in train:
            out += ["", f"Training loss: {_fmt(train['loss_first'])} → {_fmt(train['loss_last'])}."]
        out.append("")

    rows = _training_rows(metrics, cfg, train, lora)
    if rows:
        out += ["## Training", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]
    if source:
        out += ["## Data", "", f"- Source: `{source}`"]
        if "train" in data or "held_out" in data:
            out.append(f"- {_fmt(data.get('train', '?'))} training examples, "
                       f"{_fmt(data.get('held_out', '?'))} held out for the results above")
        out.append("")
    if metrics.get("labels"):
        out += ["## Labels", "", ", ".join(f"`{lab}`" for lab in metrics["labels"]), "",
                "The model answers with exactly one label; `labels.json` lists them with the prompt.", ""]
    out += ["## How to load", ""] + _how_to_load(metrics, kind, repo_id, on_hub)
    config = scrub(cfg, token)
    if config:
        out += ["## Configuration", "", "Every setting of the run (credentials removed):", "",
                "```json", json.dumps(config, indent=2, default=str), "```", ""]
    if metrics.get("versions"):
        out += ["## Versions", "", ", ".join(f"{k} {v}" for k, v in metrics["versions"].items()), ""]
    # Parsing the card back checks its metadata (model-index included) the way the Hub reads it.
    card = str(ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n".join(out).rstrip() + "\n"))
    return redact(card, token) if token else card


def _training_rows(metrics: dict, cfg: dict, train: dict, lora: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if "steps" in train:
        warm = cfg.get("warmup_steps")
        rows.append(("steps", f"{train['steps']:,}" + (f" ({warm} warm-up)" if warm else "")))
    if "seconds" in train:
        device = metrics.get("device")
        rows.append(("training time", _duration(train["seconds"]) + (f" on {device}" if device else "")))
    if "tokens_per_second" in train:
        rows.append(("throughput", f"{train['tokens_per_second']:,.0f} tokens/s"
                     + (f" ({train['tokens']:,} tokens)" if "tokens" in train else "")))
    if "peak_memory_gib" in train:
        kind_of = train.get("peak_memory_kind", "")
        rows.append(("peak memory", f"{train['peak_memory_gib']} GiB {kind_of}".strip()))
    if metrics.get("trainable_parameters") and metrics.get("total_parameters"):
        n, total = metrics["trainable_parameters"], metrics["total_parameters"]
        rows.append(("trainable parameters", f"{n:,} of {total:,} ({100 * n / total:.2f}%)"))
    if lora:
        rows.append(("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}"))
        rows.append(("LoRA targets", f"`{lora.get('target_modules')}`"))
        variant = metrics.get("lora") or lora
        if "variant" in variant:
            rows.append(("LoRA variant", f"{variant['variant']}, init {variant.get('init', 'default')}"
                         + (f", LoRA+ ratio {variant['plus_ratio']:g}" if variant.get("plus_ratio") else "")))
    merge = metrics.get("merge") or {}
    if merge.get("dtype"):
        lost = merge.get("update_lost")
        rows.append(("merge", f"float32, saved as {merge['dtype']}: "
                     f"{'all' if lost is None else f'{lost:.2%}'} of the LoRA update lost to the cast; "
                     f"held-out loss {merge.get('loss_adapter', 0):.4f} (adapter) → "
                     f"{merge.get('loss_merged', 0):.4f} (merged); greedy agreement "
                     f"{merge.get('greedy_agreement', 0):.1%}"))
    lr = metrics.get("learning_rate", cfg.get("learning_rate"))
    if lr is not None:
        rows.append(("learning rate", f"{lr:g} (peak; linear warm-up, then linear decay)"))
    plan = metrics.get("memory_plan") or {}
    if "batch_size" in cfg:  # batch_size is the effective batch; the memory plan split it
        micro, accum = plan.get("micro_batch", cfg["batch_size"]), plan.get("grad_accum", 1)
        rows.append(("effective batch", f"{cfg['batch_size']} ({micro} × {accum} accumulation)"))
    if plan.get("gradient_checkpointing") is not None:
        rows.append(("gradient checkpointing", str(plan["gradient_checkpointing"])))
    if "max_seq_length" in cfg:
        rows.append(("max_seq_length", str(cfg["max_seq_length"])))
    return rows


def _chat_example(metrics: dict) -> str:
    """A first user message that fits the recipe: the classification prompt lists its labels."""
    if metrics.get("recipe") == "classification" and metrics.get("labels"):
        from kit.classify import INSTRUCTION

        text = INSTRUCTION.format(labels=", ".join(metrics["labels"]), text="My card was charged twice.")
        return json.dumps(text)
    if metrics.get("recipe") == "code":
        return json.dumps("Write a Python function that reverses a string.")
    return json.dumps("Hello! Who are you?")


def _how_to_load(metrics: dict, kind: str, repo_id: str, on_hub: bool) -> list[str]:
    seq = (metrics.get("config") or {}).get("max_seq_length", 2048)
    message = _chat_example(metrics)
    generate = [
        f'messages = [{{"role": "user", "content": {message}}}]',
        "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\",",
        "                                       return_dict=True).to(model.device)",
        "out = model.generate(**inputs, max_new_tokens=128)",
        'print(tokenizer.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]
    if kind == "gguf":
        return ["With llama.cpp:", "", "```bash", f"llama-cli -hf {repo_id}", "```", "",
                "With Ollama:", "", "```bash", f"ollama run hf.co/{repo_id}", "```", ""]
    if kind == "gguf-lora":
        name = Path(str(((metrics.get("exports") or {}).get(kind) or {}).get("path") or "ADAPTER.gguf")).name
        return ["This repository holds the adapter only. It needs the base model as a GGUF, converted "
                "from the exact base it was trained on (llama.cpp's `convert_hf_to_gguf.py`; the run "
                "wrote one beside the adapter, in `gguf-lora/`).", "",
                "With llama.cpp:", "", "```bash", f"hf download {repo_id} {name} --local-dir .",
                f"llama-cli -m BASE.gguf --lora {name} -cnv", "```", "",
                "With Ollama, a Modelfile:", "", "```", "FROM ./BASE.gguf", f"ADAPTER ./{name}", "```", ""]
    lines: list[str] = []
    if kind == "adapter":
        if on_hub:
            lines += ["With peft (downloads the base model, then applies this adapter):", "", "```python",
                      "from peft import AutoPeftModelForCausalLM",
                      "from transformers import AutoTokenizer", "",
                      f'model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")',
                      f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', *generate, "```", ""]
        else:
            lines += ["With peft, on top of your copy of the base model:", "", "```python",
                      "from peft import PeftModel",
                      "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                      'base = AutoModelForCausalLM.from_pretrained("path/to/base-model")',
                      f'model = PeftModel.from_pretrained(base, "{repo_id}")',
                      f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', *generate, "```", ""]
    else:
        lines += ["With transformers (no peft needed: the adapter is merged in):", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}", dtype="auto")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', *generate, "```", ""]
    if kind == "merged" or on_hub:
        lines += ["With Unsloth (fast inference, or to keep training):", "", "```python",
                  "from unsloth import FastLanguageModel", "",
                  "model, tokenizer = FastLanguageModel.from_pretrained(",
                  f'    model_name="{repo_id}", max_seq_length={seq}, load_in_4bit=False,', ")",
                  "FastLanguageModel.for_inference(model)", *generate, "```", ""]
    return lines


# ---------------------------------------------------------------- push


def _operations(folder: Path, kind: str, card: str, metrics_text: str, base: str) -> list[CommitOperationAdd]:
    """One commit's files: the export's by path (nothing is copied, a multi-GB model included),
    then ours as bytes. For an adapter whose base is on the Hub, adapter_config.json names that id
    instead of the local cache path, so peft can fetch the base; the local export stays as it is."""
    from huggingface_hub import CommitOperationAdd

    ours = {"README.md": card, "metrics.json": metrics_text}
    skip = set()
    if kind == "gguf-lora":  # the adapter alone: not the base GGUF, nor the Modelfile that names it
        bases = {f.name for f in folder.glob("*.gguf") if not f.name.endswith(lora_gguf_name(""))}
        skip = bases | {"Modelfile"}
    config = folder / "adapter_config.json"
    if kind == "adapter" and config.is_file() and is_hub_id(base):
        ours["adapter_config.json"] = json.dumps({**json.loads(config.read_text()),
                                                  "base_model_name_or_path": base}, indent=2) + "\n"
    ops = []
    for src in sorted(folder.rglob("*")):
        rel = src.relative_to(folder)
        # Dot-named files and folders are temp files and buffers left by writers.
        if (src.is_file() and rel.as_posix() not in ours.keys() | skip
                and not any(p.startswith(".") for p in rel.parts)):
            ops.append(CommitOperationAdd(path_in_repo=rel.as_posix(), path_or_fileobj=src))
    return ops + [CommitOperationAdd(path_in_repo=name, path_or_fileobj=text.encode())
                  for name, text in ours.items()]


def _one_line(text: str, token: str | None) -> str:
    lines = [ln.strip() for ln in redact(str(text), token).splitlines() if ln.strip()]
    return (lines[0] if lines else "")[:240]


def _http_error(exc: Exception, repo: str, token: str | None) -> str:
    """One line for a failed Hub call: what went wrong and what to do, never the token."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return f"push={repo} needs the network, but HF_HUB_OFFLINE is set: unset it to push"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        detail = _one_line(exc.server_message or "", token)
        detail = f" ({detail})" if detail else ""
        if status == 401:
            return (f"push={repo}: the Hub rejected the token (401){detail}; check HF_TOKEN "
                    "or run `hf auth login`")
        if status == 403:
            return (f"push={repo}: this token may not write to {repo} (403){detail}; use a token with "
                    "write access to that owner")
        if status == 404:
            return f"push={repo}: not found on the Hub (404){detail}; check the owner name"
        return f"push={repo}: the Hub answered HTTP {status}{detail}"
    if isinstance(exc, ValueError) and "README" in str(exc):
        return f"push={repo}: the Hub rejected the model card metadata: {_one_line(exc, token)}"
    import httpx

    if isinstance(exc, httpx.HTTPError | ConnectionError | TimeoutError):
        return (f"push={repo}: cannot reach the Hugging Face Hub ({type(exc).__name__}: "
                f"{_one_line(exc, token)}); check the network")
    return f"push={repo} failed: {type(exc).__name__}: {_one_line(exc, token)}"


WHOAMI_SECONDS = 15.0  # the Hub's whoami answers in well under a second when it can be reached


def check_access(repo: str, token: str, api: HfApi | None = None, timeout: float = WHOAMI_SECONDS) -> str:
    """Before training, what `push=repo` will need at the end: the Hub reachable, the token
    valid (huggingface_hub's whoami), and its owner one this token may write to (the token's
    role is not read-only, the owner is its user or one of its organizations, where it is more
    than a reader). A failure is one line, within `timeout` seconds whatever the network does
    (the library's HTTP client has no timeout of its own: the call runs in a daemon thread that
    is left behind if it hangs). Returns who the token belongs to."""
    import threading

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        fail(f"push={repo} needs the network, but HF_HUB_OFFLINE is set: unset it to push")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            answer["info"] = api.whoami(token=token)
        except Exception as exc:  # reported below, in one line
            answer["error"] = exc

    thread = threading.Thread(target=ask, name="kit-hub-whoami", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        fail(f"push={repo}: the Hugging Face Hub did not answer within {timeout:.0f} s; check the "
             "network, or run without push= and push later")
    if "error" in answer:
        fail(_http_error(answer["error"], repo, token))
    info = answer.get("info") or {}
    name = str(info.get("name", ""))
    owner = repo.split("/")[0]
    access = (info.get("auth") or {}).get("accessToken") or {}
    if access.get("role") == "read":
        fail(f"push={repo}: the token of {name} is read-only; use a token with write access "
             "(https://huggingface.co/settings/tokens)")
    orgs = {str(o.get("name")): o for o in info.get("orgs") or [] if isinstance(o, dict)}
    if owner != name and owner not in orgs:
        fail(f"push={repo}: the token belongs to {name}, who is not a member of {owner}; push to "
             f"{name}/{repo.split('/')[1]} or use a token of {owner}")
    if owner in orgs and orgs[owner].get("roleInOrg") == "read":
        fail(f"push={repo}: {name} may only read in the organization {owner}; ask for write access "
             "or push to your own account")
    return name


def push(output_dir: Path, metrics: dict, repo: str, private: bool = False, kinds: list[str] | None = None,
         progress: Callable[[str], object] = print, api: HfApi | None = None) -> dict[str, str]:
    """Upload the exports in `output_dir` (default: every one present) and return kind → URL.

    adapter → `repo`, merged → `repo-merged`, gguf → `repo-GGUF`, gguf-lora → `repo-LoRA-GGUF`
    (the GGUF adapter; the base GGUF stays local); each repository is created if
    needed (`private` only applies to new ones) and gets one commit with a generated README.md
    and metrics.json. `api`: the HfApi to push with (default: one holding the user's token)."""
    output_dir = Path(output_dir)
    check_repo(repo)
    if not kinds:  # None or empty: every export that is there
        kinds = [k for k in KINDS if (output_dir / k).is_dir()]
        if not kinds:
            fail(f"push={repo}: nothing to push, {output_dir} has no adapter/, merged/, gguf/ or gguf-lora/ "
                 "folder")
    for kind in kinds:
        if kind not in KINDS:
            fail(f"push={repo}: unknown export {kind!r}; expected one of {', '.join(KINDS)}")
        if not (output_dir / kind).is_dir():
            fail(f"push={repo}: no {kind} export at {output_dir / kind}")

    own = getattr(api, "token", None)  # a caller's HfApi may hold a token of its own
    token = own if isinstance(own, str) and own else hub_token()
    if not token:
        fail(f"push={repo} needs a Hugging Face token: set HF_TOKEN or run `hf auth login`")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    base = _base(metrics)
    targets = {kind: repo + SUFFIX[kind] for kind in kinds}
    clean = scrub(metrics, token)
    metrics_text = json.dumps(clean, indent=2, default=str) + "\n"
    if "adapter" in kinds and not is_hub_id(base):
        progress(f"note: the base model {base!r} is not a Hub id, so the pushed adapter still names "
                 "that local path as its base")
    urls: dict[str, str] = {}
    for kind, target in targets.items():
        card = model_card(clean, kind, target, siblings=targets, token=token)
        progress(f"Pushing {kind} to {api.endpoint}/{target}{' (private)' if private else ''}")
        try:
            operations = _operations(output_dir / kind, kind, card, metrics_text, base)
            url = api.create_repo(target, private=private, exist_ok=True)
            api.create_commit(target, operations, commit_message=f"Upload {kind} from the "
                              f"{metrics.get('recipe', '')} recipe ({PROJECT})")
        except KitError:
            raise
        except Exception as exc:  # any Hub, network or upload failure: one line for the user
            fail(_http_error(exc, target, token))
        urls[kind] = str(url)
        progress(f"{kind}: {urls[kind]}")
    return urls
