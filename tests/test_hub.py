"""kit.hub with the Hub replaced by a recording HfApi.

`hub.push` takes the HfApi it pushes with. `RecordingHub` is huggingface_hub's own HfApi with the
two calls that reach the Hub, create_repo and create_commit, answered here the way the Hub answers
them (409 for an existing repository unless exist_ok, 404 for a commit to a missing one, the
library's own HTTP errors), keeping what was committed. conftest makes the suite offline, so any
other call that tried the network would fail the push.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import hf_raise_for_status

from kit import hub
from kit.checks import check_repo
from kit.errors import KitError, run_cli

TOKEN = "hf_fakeTOKEN0123456789abcdefghijklmn"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
LOCAL_BASE = "/root/.cache/unsloth-recipe-kit/smollm2-135m-instruct-v1"
REPO = "alice/tickets-smollm2"


def _hub_error(status: int, message: str, url: str) -> None:
    """Raise what huggingface_hub raises for that answer from the Hub."""
    hf_raise_for_status(httpx.Response(status, json={"error": message}, request=httpx.Request("POST", url)))


class RecordingHub(HfApi):
    """Answers like huggingface.co for create_repo and create_commit; keeps what was committed."""

    def __init__(self, token: str | None = TOKEN, status: int | None = None, error: str = "",
                 network_down: bool = False):
        super().__init__(token=token)
        self.status, self.error, self.network_down = status, error, network_down
        self.calls: list[str] = []
        self.created: dict[str, bool | None] = {}  # repo → private
        self.operations: dict[str, list[CommitOperationAdd]] = {}  # repo → the last commit's
        self.commits: dict[str, list[dict[str, bytes]]] = {}  # repo → [{path: content}, ...]
        self.messages: list[str] = []

    def _call(self, url: str) -> None:
        self.calls.append(url)
        if self.network_down:
            raise httpx.ConnectError("[Errno 101] Network is unreachable")
        if self.status:
            _hub_error(self.status, self.error, url)

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False,
                    **kwargs) -> RepoUrl:
        url = f"{self.endpoint}/api/repos/create"
        self._call(url)
        if repo_id in self.created and not exist_ok:
            _hub_error(409, "You already created this model repo", url)
        self.created.setdefault(repo_id, private)
        return RepoUrl(f"{self.endpoint}/{repo_id}", endpoint=self.endpoint)

    def create_commit(self, repo_id: str, operations, *, commit_message: str, **kwargs) -> None:
        url = f"{self.endpoint}/api/models/{repo_id}/commit/main"
        self._call(url)
        if repo_id not in self.created:
            _hub_error(404, "Repository not found", url)
        self.operations[repo_id] = list(operations)
        files = {}
        for op in self.operations[repo_id]:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read()
        self.commits.setdefault(repo_id, []).append(files)
        self.messages.append(commit_message)


@pytest.fixture
def api(monkeypatch) -> RecordingHub:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    return RecordingHub()


def _metrics(base: str | None = BASE, output_dir: Path | None = None) -> dict:
    cfg = {
        "model": "auto", "data": "builtin:tickets", "output_dir": str(output_dir or "/tmp/out"),
        "max_steps": 60, "export": "both", "max_seq_length": 256, "batch_size": 8,
        "learning_rate": None, "warmup_steps": 5, "seed": 3407, "save_steps": 20,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "q_proj,k_proj,v_proj,o_proj"},
        "max_new_tokens": 48, "eval_fraction": 0.2,
        # Credentials that must not reach the card or metrics.json:
        "hub_token": TOKEN, "wandb_api_key": "wandb-secret-value", "eval_data": TOKEN,
        "push": REPO, "push_private": True,
    }
    metrics = {
        "recipe": "classification", "model": "SmolLM2-135M-Instruct (embedded)", "device": "CPU (2 threads)",
        "before": {"accuracy": 0.25, "macro_f1": 0.1, "confusion": [[18, 0], [18, 0]],
                   "labels": ["billing", "shipping"], "mean_true_label_probability": 0.2186},
        "after": {"accuracy": 0.9861, "macro_f1": 0.9861, "confusion": [[17, 1], [0, 18]],
                  "labels": ["billing", "shipping"], "mean_true_label_probability": 0.8993},
        "improved": {"accuracy": True, "macro_f1": True},
        "labels": ["billing", "shipping"],
        "train": {"steps": 60, "seconds": 106.7, "tokens": 17023, "tokens_per_second": 159.5,
                  "loss_first": 2.8996, "loss_last": 0.0017, "losses": [2.8996, 1.2, 0.0017],
                  "learning_rates": [0.0, 0.001, 0.0], "peak_memory_gib": 2.16, "peak_memory_kind": "RAM"},
        "memory_plan": {"gradient_checkpointing": False, "micro_batch": 4, "grad_accum": 2},
        "trainable_parameters": 4884480, "total_parameters": 139399488, "learning_rate": 0.001,
        "exports": {"adapter": {"path": "/tmp/out/adapter", "kind": "adapter", "reply": "billing",
                                "stopped": True, "ok": True},
                    "merged": {"path": "/tmp/out/merged", "kind": "merged", "reply": "billing",
                               "stopped": True, "ok": True}},
        "wall_seconds": 203.5, "config": cfg,
        "versions": {"python": "3.11.7", "unsloth": "2026.10.9", "transformers": "5.17.0", "peft": "0.21.2"},
        "data": {"source": "builtin:tickets", "train": 288, "held_out": 72},
    }
    if base is not None:
        metrics["base_model"] = base
    return metrics


ADAPTER_FILES = {"adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "labels.json"}
MERGED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "chat_template.jinja", "labels.json"}


@pytest.fixture
def export_dir(tmp_path) -> Path:
    """An output_dir as a recipe leaves it, with small stand-ins for the weights."""
    out = tmp_path / "run"
    adapter, merged = out / "adapter", out / "merged"
    adapter.mkdir(parents=True)
    merged.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": LOCAL_BASE, "peft_type": "LORA", "r": 16, "lora_alpha": 32,
         "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}, indent=2))
    (adapter / "README.md").write_text(f"---\nbase_model: {LOCAL_BASE}\nlibrary_name: peft\n---\n# stub\n")
    for folder, names in ((adapter, ADAPTER_FILES), (merged, MERGED_FILES)):
        for name in names:
            data = bytes(range(256)) * 4 if name.endswith(".safetensors") else b'{"x": 1}\n'
            (folder / name).write_bytes(data)
    (merged / "config.json").write_text(json.dumps({"model_type": "llama", "torch_dtype": "bfloat16"}))
    (out / "metrics.json").write_text(json.dumps(_metrics(output_dir=out)))
    return out


def _card(readme: bytes | str) -> ModelCard:
    """The card as the Hub reads it: metadata (model-index included) and body."""
    return ModelCard(readme.decode() if isinstance(readme, bytes) else readme)


def _assert_no_token(api: RecordingHub, captured: str) -> None:
    for commits in api.commits.values():
        for files in commits:
            for name, content in files.items():
                assert TOKEN.encode() not in content, name
    assert not any(TOKEN in m for m in api.messages)
    assert TOKEN not in captured


def _exit(capsys, fn) -> tuple[int, str, str]:
    """Run `fn` the way a recipe's command line does: `sys.exit(run_cli(...))`."""
    with pytest.raises(SystemExit) as exc:
        sys.exit(run_cli(lambda argv: fn(), []))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# ---------------------------------------------------------------- uploads


def test_push_adapter_and_merged(api, export_dir, capsys):
    before_config = (export_dir / "adapter" / "adapter_config.json").read_text()
    urls = hub.push(export_dir, _metrics(output_dir=export_dir), REPO, private=True, api=api)

    assert urls == {"adapter": f"https://huggingface.co/{REPO}",
                    "merged": f"https://huggingface.co/{REPO}-merged"}
    assert api.created == {REPO: True, f"{REPO}-merged": True}
    # One commit per repository, holding exactly the export plus our card and metrics.
    assert {repo: len(c) for repo, c in api.commits.items()} == {REPO: 1, f"{REPO}-merged": 1}
    adapter, merged = api.commits[REPO][0], api.commits[f"{REPO}-merged"][0]
    assert set(adapter) == ADAPTER_FILES | {"adapter_config.json", "README.md", "metrics.json"}
    assert set(merged) == MERGED_FILES | {"README.md", "metrics.json"}
    assert adapter["adapter_model.safetensors"] == bytes(range(256)) * 4
    # The weights go from the export itself: no staging copy beside it.
    weights = [op for op in api.operations[f"{REPO}-merged"] if op.path_in_repo == "model.safetensors"]
    assert [Path(op.path_or_fileobj) for op in weights] == [export_dir / "merged" / "model.safetensors"]
    assert sorted(p.name for p in export_dir.iterdir()) == ["adapter", "merged", "metrics.json"]

    # The uploaded adapter points at the Hub base; the local export is left as it was.
    assert json.loads(adapter["adapter_config.json"])["base_model_name_or_path"] == BASE
    assert (export_dir / "adapter" / "adapter_config.json").read_text() == before_config
    assert json.loads(merged["config.json"]) == {"model_type": "llama", "torch_dtype": "bfloat16"}

    card = _card(adapter["README.md"])
    meta = card.data
    assert meta.base_model == BASE and meta.library_name == "peft"
    assert meta.pipeline_tag == "text-generation" and meta.datasets is None  # builtin: not a Hub dataset
    assert {"unsloth", "trl", "lora", "classification"} <= set(meta.tags)
    assert "license" not in meta.to_dict()
    # The run's scalar after-metrics as evaluation results; before values only in the body.
    assert meta.model_name == REPO
    assert {(r.metric_type, r.metric_value) for r in meta.eval_results} == {
        ("accuracy", 0.9861), ("macro_f1", 0.9861), ("mean_true_label_probability", 0.8993)}
    assert {(r.task_type, r.dataset_type) for r in meta.eval_results} == {("text-classification",
                                                                          "builtin:tickets")}
    text = card.text
    assert "| accuracy | 0.25 → 0.9861 | yes |" in text
    assert "| macro_f1 | 0.1 → 0.9861 | yes |" in text
    assert "confusion" not in text.split("## Configuration")[0]  # only scalar metrics in the table
    assert "288 training examples, 72 held out" in text and "builtin:tickets" in text
    assert "r=16, alpha=32" in text and "8 (4 × 2 accumulation)" in text
    assert "| max_seq_length | 256 |" in text
    assert f'AutoPeftModelForCausalLM.from_pretrained("{REPO}")' in text
    assert f'model_name="{REPO}"' in text and "FastLanguageModel.from_pretrained" in text
    assert f"https://huggingface.co/{REPO}-merged" in text
    assert "wandb-secret-value" not in text and "hub_token" not in text and "wandb_api_key" not in text
    assert '"max_new_tokens": 48' in text  # `tokens` is not a credential
    assert "unsloth 2026.10.9" in text

    merged_card = _card(merged["README.md"])
    assert merged_card.data.library_name == "transformers" and merged_card.data.base_model == BASE
    assert len(merged_card.data.eval_results) == 3
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}-merged"' in merged_card.text
    assert "AutoPeftModelForCausalLM" not in merged_card.text

    uploaded = json.loads(adapter["metrics.json"])
    assert uploaded["after"]["accuracy"] == 0.9861 and uploaded["train"]["tokens"] == 17023
    assert "hub_token" not in uploaded["config"] and uploaded["config"]["eval_data"] == "hf_***"

    out, err = capsys.readouterr()
    assert f"https://huggingface.co/{REPO}-merged" in out
    _assert_no_token(api, out + err)


def test_push_gguf_public_and_existing_repo(api, export_dir, capsys):
    gguf = export_dir / "gguf"
    gguf.mkdir()
    (gguf / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(200))
    (gguf / ".model.gguf.part").write_bytes(b"half-written")  # a writer's temp file: not uploaded
    api.created[f"{REPO}-GGUF"] = None  # already there: create answers 409 unless exist_ok

    urls = hub.push(export_dir, _metrics(), REPO, kinds=["gguf"], api=api)

    assert urls == {"gguf": f"https://huggingface.co/{REPO}-GGUF"}
    assert list(api.commits) == [f"{REPO}-GGUF"]
    files = api.commits[f"{REPO}-GGUF"][0]
    assert set(files) == {"model-Q4_K_M.gguf", "README.md", "metrics.json"}
    card = _card(files["README.md"])
    assert card.data.library_name == "gguf"
    assert f"llama-cli -hf {REPO}-GGUF" in card.text and f"ollama run hf.co/{REPO}-GGUF" in card.text
    _assert_no_token(api, "".join(capsys.readouterr()))


def test_push_gguf_lora_uploads_the_adapter_not_the_base(api, export_dir, capsys):
    """export=gguf-lora leaves the base GGUF, the adapter GGUF and a Modelfile naming the base's
    file: `repo-LoRA-GGUF` gets the adapter alone, and a card that says how to put it on a base."""
    folder = export_dir / "gguf-lora"
    folder.mkdir()
    (folder / "SmolLM2-135M-Instruct-f16.gguf").write_bytes(b"GGUF" + bytes(400))  # the base: stays local
    (folder / "run-lora-f16.gguf").write_bytes(b"GGUF" + bytes(100))
    (folder / "Modelfile").write_text("FROM ./SmolLM2-135M-Instruct-f16.gguf\nADAPTER ./run-lora-f16.gguf\n")
    metrics = _metrics()
    metrics["exports"]["gguf-lora"] = {"path": str(folder / "run-lora-f16.gguf"), "ok": True,
                                       "base": str(folder / "SmolLM2-135M-Instruct-f16.gguf")}

    urls = hub.push(export_dir, metrics, REPO, api=api)

    assert urls["gguf-lora"] == f"https://huggingface.co/{REPO}-LoRA-GGUF" and set(urls) == {
        "adapter", "merged", "gguf-lora"}  # every export present, by default
    files = api.commits[f"{REPO}-LoRA-GGUF"][0]
    assert set(files) == {"run-lora-f16.gguf", "README.md", "metrics.json"}
    card = _card(files["README.md"])
    assert card.data.library_name == "gguf" and card.data.base_model == BASE
    assert f"hf download {REPO}-LoRA-GGUF run-lora-f16.gguf" in card.text
    assert "--lora run-lora-f16.gguf" in card.text and "ADAPTER ./run-lora-f16.gguf" in card.text
    assert "gave the PEFT adapter's greedy tokens" in card.text
    adapter_card = _card(api.commits[REPO][0]["README.md"]).text
    assert f"https://huggingface.co/{REPO}-LoRA-GGUF" in adapter_card  # the siblings link to it
    _assert_no_token(api, "".join(capsys.readouterr()))
    long_name = "a/" + "x" * 90  # room for the longest suffix, -LoRA-GGUF
    with pytest.raises(KitError, match="at most 86 characters, leaving room for the -LoRA-GGUF suffix"):
        check_repo(long_name)


@pytest.mark.parametrize("recipe, words, tag", [
    ("dpo", "preference tuning with DPO and LoRA", "dpo"),
    ("grpo", "reinforcement learning from verifiable rewards with GRPO and LoRA", "grpo"),
    ("chat", "supervised fine-tuning with LoRA", "sft")])
def test_card_names_how_the_recipe_trained(recipe, words, tag):
    card = _card(hub.model_card({**_metrics(), "recipe": recipe}, "adapter", REPO, token=TOKEN))
    assert f"(Unsloth and TRL: {words})" in card.text
    assert tag in card.data.tags and not ({"sft", "dpo", "grpo"} - {tag}) & set(card.data.tags)


def test_push_public_flag(api, export_dir):
    hub.push(export_dir, _metrics(), REPO, private=False, kinds=["merged"], api=api)
    assert api.created == {f"{REPO}-merged": False}


def test_local_base_is_not_rewritten_or_claimed(api, export_dir, capsys):
    """Without a Hub id for the base, the adapter keeps its path and the card says so plainly."""
    metrics = _metrics(base=None)
    metrics["config"]["model"] = str(export_dir)  # a local folder: exists, so not a Hub id
    hub.push(export_dir, metrics, REPO, kinds=["adapter"], api=api)
    files = api.commits[REPO][0]
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == LOCAL_BASE
    card = _card(files["README.md"])
    assert card.data.base_model is None and "base_model" not in card.data.to_dict()
    assert "PeftModel.from_pretrained(base" in card.text and "AutoPeftModelForCausalLM" not in card.text
    assert "not a Hub id" in capsys.readouterr().out


def test_card_without_new_keys_or_data():
    """metrics.json from before `base_model` and `data` existed still makes a card."""
    metrics = _metrics(base=None)
    del metrics["data"]
    metrics["config"]["model"] = BASE
    text = hub.model_card(metrics, "merged", f"{REPO}-merged", token=TOKEN)
    assert _card(text).data.base_model == BASE
    assert "- Source: `builtin:tickets`" in text and "held out for" not in text
    assert TOKEN not in text and "wandb-secret-value" not in text
    bare = _card(hub.model_card({"recipe": "chat"}, "adapter", REPO, token=TOKEN))
    assert bare.data.library_name == "peft" and bare.data.eval_results is None


def test_card_for_a_chat_run_on_hub_data():
    """A chat run on a Hub dataset: generation metrics, the dataset linked in the metadata."""
    metrics = {"recipe": "chat", "base_model": BASE, "data": {"source": "HuggingFaceH4/no_robots"},
               "before": {"loss": 2.1, "reply_f1": 0.12}, "after": {"loss": 1.4, "reply_f1": 0.31,
                                                                     "note": "text is not a metric"}}
    card = _card(hub.model_card(metrics, "adapter", REPO, token=TOKEN))
    assert card.data.datasets == ["HuggingFaceH4/no_robots"]
    assert {(r.task_type, r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results} == {
        ("text-generation", "HuggingFaceH4/no_robots", "loss", 1.4),
        ("text-generation", "HuggingFaceH4/no_robots", "reply_f1", 0.31)}
    assert "| loss | 2.1 → 1.4 |" in card.text


# ---------------------------------------------------------------- errors: one line, exit code 2


@pytest.mark.parametrize(("status", "error", "expect"), [
    (401, "Invalid credentials in Authorization header", "rejected the token (401)"),
    (403, 'You don\'t have the rights to create a model under the namespace "alice"', "(403)"),
])
def test_http_errors_are_one_line(api, export_dir, capsys, status, error, expect):
    api = RecordingHub(status=status, error=f"{error} (token {TOKEN})")
    code, out, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO, api=api))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: push={REPO}") and expect in err
    assert error.split()[0] in err  # the Hub's own reason is kept
    assert not api.commits
    _assert_no_token(api, out + err)


def test_network_down_is_one_line(api, export_dir, capsys):
    api = RecordingHub(network_down=True)
    code, out, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO, api=api))
    assert code == 2 and err.count("\n") == 1 and "cannot reach the Hugging Face Hub" in err
    assert TOKEN not in out + err


def test_offline_mode_is_one_line(api, export_dir, capsys, monkeypatch):
    """The default HfApi, with the library's own offline guard: nothing leaves the machine."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO))
    assert code == 2 and err.count("\n") == 1 and "HF_HUB_OFFLINE" in err
    assert TOKEN not in out + err


@pytest.mark.parametrize("repo", ["tickets", "alice/bob/tickets", "alice/my model", "alice/-x", "alice/x..y",
                                  "alice/x.git", "", "alice/" + "x" * 95])
def test_bad_repo_name(api, export_dir, capsys, repo):
    code, _, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), repo, api=api))
    assert code == 2 and err.count("\n") == 1 and ("owner/name" in err or "too long" in err)
    assert not api.calls


def test_no_token(export_dir, capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    api = RecordingHub(token=None)
    code, _, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO, api=api))
    assert code == 2 and err.count("\n") == 1
    assert "needs a Hugging Face token" in err and "HF_TOKEN" in err
    assert not api.calls


def test_missing_export(api, tmp_path, capsys):
    code, _, err = _exit(capsys, lambda: hub.push(tmp_path, _metrics(), REPO, api=api))
    assert code == 2 and "nothing to push" in err
    code, _, err = _exit(capsys, lambda: hub.push(tmp_path, _metrics(), REPO, kinds=["merged"], api=api))
    assert code == 2 and "no merged export" in err
    assert not api.calls


# ---------------------------------------------------------------- before training: can we push?


class WhoamiHub(RecordingHub):
    """Answers whoami as the Hub does (huggingface_hub's dict), or hangs like a dead network."""

    def __init__(self, answer: dict | None = None, hang: bool = False, **kw):
        super().__init__(**kw)
        self.answer, self.hang = answer, hang

    def whoami(self, token=None, **kwargs) -> dict:
        import threading

        self._call(f"{self.endpoint}/api/whoami-v2")
        if self.hang:
            threading.Event().wait(60)
        return self.answer


def _whoami(name="alice", role="write", orgs=()):
    return {"type": "user", "name": name, "orgs": [{"name": o, "roleInOrg": r} for o, r in orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "kit", "role": role}}}


@pytest.fixture
def online(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize(("answer", "repo", "expect"), [
    (_whoami(role="read"), REPO, "the token of alice is read-only"),
    (_whoami(name="bob"), REPO, "the token belongs to bob, who is not a member of alice"),
    (_whoami(name="bob", orgs=[("alice", "read")]), REPO, "bob may only read in the organization alice"),
])
def test_push_that_cannot_write_fails_before_training(online, answer, repo, expect):
    from kit.errors import KitError

    with pytest.raises(KitError, match=expect):
        hub.check_access(repo, TOKEN, api=WhoamiHub(answer))


def test_push_access_that_is_fine(online):
    assert hub.check_access(REPO, TOKEN, api=WhoamiHub(_whoami())) == "alice"
    member = WhoamiHub(_whoami(name="bob", orgs=[("alice", "write")]))
    assert hub.check_access(REPO, TOKEN, api=member) == "bob"


def test_push_to_a_hub_that_does_not_answer_fails_in_bounded_time(online):
    import time

    from kit.errors import KitError

    started = time.perf_counter()
    with pytest.raises(KitError, match="did not answer within 1 s"):
        hub.check_access(REPO, TOKEN, api=WhoamiHub(hang=True), timeout=1)
    assert time.perf_counter() - started < 5
    api = WhoamiHub(status=401, error="Invalid credentials in Authorization header")
    with pytest.raises(KitError, match=r"rejected the token \(401\)"):
        hub.check_access(REPO, TOKEN, api=api)


@pytest.mark.parametrize("offline", [False, True])
def test_push_without_network_fails_before_training(offline, tmp_path, capsys, monkeypatch):
    """This machine has no route to the Hub (real DNS, real HTTP client); with HF_HUB_OFFLINE
    the library's own guard. One line in seconds, before the data is read or anything written."""
    import time

    from huggingface_hub import constants

    from kit.recipe import recipe

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "out"
    started = time.perf_counter()
    code = run_cli(recipe("chat").cli, [f"push={REPO}", f"output_dir={out}",
                                        f"data={tmp_path / 'typo.jsonl'}"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    expect = ("needs the network, but HF_HUB_OFFLINE is set" if offline
              else "cannot reach the Hugging Face Hub")
    assert err.startswith(f"error: push={REPO}") and expect in err, err
    assert "data file not found" not in err and not out.exists()  # before the data, before the folder
    assert seconds < 20 and TOKEN not in err
