"""kit.hub against huggingface_hub's real client code, with only the network replaced.

huggingface_hub 1.x sends every call through one shared httpx.Client made by a factory that
`set_client_factory` replaces; ours gives that client an httpx.MockTransport whose handler plays
the Hub: it records each request and answers create-repo, validate-yaml, preupload (every file
"regular", so contents travel base64-encoded inside the commit and no LFS/Xet transfer is
needed) and commit the way the Hub does. HfApi, upload_folder and the commit code are the
library's own.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from kit import hub
from kit.errors import run_cli

TOKEN = "hf_fakeTOKEN0123456789abcdefghijklmn"
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"
LOCAL_BASE = "/root/.cache/unsloth-recipe-kit/smollm2-135m-instruct-v1"
REPO = "alice/tickets-smollm2"


class FakeHub:
    """Answers like huggingface.co for the endpoints an upload uses; keeps what was committed."""

    def __init__(self, status: int | None = None, error: str = "", network_down: bool = False):
        self.status, self.error, self.network_down = status, error, network_down
        self.requests: list[httpx.Request] = []
        self.created: dict[str, dict] = {}  # repo → create-repo payload
        self.commits: dict[str, list[dict[str, bytes]]] = {}  # repo → [{path: content}, ...]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        path = request.url.path
        if path == "/api/agent-harnesses":  # the library's own registry fetch; no token, errors ignored
            return httpx.Response(404, json={"error": "not found"})
        if self.network_down:
            raise httpx.ConnectError("[Errno 101] Network is unreachable", request=request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"error": "Invalid username or password."})
        if self.status:
            return httpx.Response(self.status, json={"error": self.error})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body['organization']}/{body['name']}"
            if repo in self.created:
                return httpx.Response(409, json={"error": "You already created this model repo",
                                                 "url": f"https://huggingface.co/{repo}"})
            self.created[repo] = body
            return httpx.Response(200, json={"url": f"https://huggingface.co/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            text = json.loads(request.content)["content"]
            front = text.split("---")[1] if text.startswith("---") else ""
            try:
                yaml.safe_load(front)
            except yaml.YAMLError as exc:
                return httpx.Response(400, json={"errors": [{"message": str(exc)}]})
            return httpx.Response(200, json={"errors": [], "warnings": []})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(preupload|commit)/main", path)
        if m and m.group(1) not in self.created:
            return httpx.Response(404, json={"error": "Repository not found"},
                                  headers={"X-Error-Code": "RepoNotFound"})
        if m and m.group(2) == "preupload":
            files = json.loads(request.content)["files"]
            return httpx.Response(200, json={"files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files]})
        if m and m.group(2) == "commit":
            assert request.headers["content-type"] == "application/x-ndjson"
            lines = [json.loads(ln) for ln in request.content.splitlines() if ln.strip()]
            assert lines[0]["key"] == "header"
            files = {}
            for line in lines[1:]:
                assert line["key"] == "file" and line["value"]["encoding"] == "base64", line
                files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            self.commits.setdefault(m.group(1), []).append(files)
            oid = f"{len(self.requests):040x}"
            return httpx.Response(200, json={"commitUrl": f"https://huggingface.co/{m.group(1)}/commit/{oid}",
                                             "commitOid": oid, "success": True})
        if re.fullmatch(r"/api/models/[^/]+/[^/]+", path) and request.method == "GET":
            return httpx.Response(404, json={"error": "Repository not found"},
                                  headers={"X-Error-Code": "RepoNotFound"})
        return httpx.Response(404, json={"error": f"no such endpoint {path}"})


@pytest.fixture
def fake_hub(monkeypatch):
    """Install a FakeHub as huggingface_hub's transport; the real client factory comes back after."""
    from huggingface_hub import constants, set_client_factory
    from huggingface_hub.utils import _http

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest makes the suite offline
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    saved = getattr(_http, "_GLOBAL_CLIENT_FACTORY", _http.default_client_factory)
    state = {"hub": FakeHub()}

    def factory() -> httpx.Client:
        # The library's own request hook stays: it is what enforces offline mode.
        return httpx.Client(transport=httpx.MockTransport(lambda r: state["hub"](r)),
                            event_hooks={"request": [_http.hf_request_event_hook]}, follow_redirects=True)

    set_client_factory(factory)
    yield state
    set_client_factory(saved)


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


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


def _assert_token_only_in_auth_header(hub_state: FakeHub, captured: str) -> None:
    for req in hub_state.requests:
        assert TOKEN not in str(req.url)
        assert TOKEN.encode() not in req.content
        for key, value in req.headers.items():
            if key.lower() == "authorization":
                assert value == f"Bearer {TOKEN}"
            else:
                assert TOKEN not in value, key
    for commits in hub_state.commits.values():
        for files in commits:
            for name, content in files.items():
                assert TOKEN.encode() not in content, name
    assert TOKEN not in captured


def _exit(capsys, fn) -> tuple[int, str, str]:
    """Run `fn` the way a recipe's command line does: `sys.exit(run_cli(...))`."""
    with pytest.raises(SystemExit) as exc:
        sys.exit(run_cli(lambda argv: fn(), []))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


# ---------------------------------------------------------------- uploads


def test_push_adapter_and_merged(fake_hub, export_dir, capsys):
    before_config = (export_dir / "adapter" / "adapter_config.json").read_text()
    urls = hub.push(export_dir, _metrics(output_dir=export_dir), REPO, private=True)
    fake = fake_hub["hub"]

    assert urls == {"adapter": f"https://huggingface.co/{REPO}",
                    "merged": f"https://huggingface.co/{REPO}-merged"}
    assert set(fake.created) == {REPO, f"{REPO}-merged"}
    for body in fake.created.values():
        assert body["visibility"] == "private"
    # One commit per repository, holding exactly the export plus our card and metrics.
    assert {repo: len(c) for repo, c in fake.commits.items()} == {REPO: 1, f"{REPO}-merged": 1}
    adapter, merged = fake.commits[REPO][0], fake.commits[f"{REPO}-merged"][0]
    assert set(adapter) == ADAPTER_FILES | {"adapter_config.json", "README.md", "metrics.json"}
    assert set(merged) == MERGED_FILES | {"README.md", "metrics.json"}
    assert adapter["adapter_model.safetensors"] == bytes(range(256)) * 4

    # The uploaded adapter points at the Hub base; the local export is left as it was.
    assert json.loads(adapter["adapter_config.json"])["base_model_name_or_path"] == BASE
    assert (export_dir / "adapter" / "adapter_config.json").read_text() == before_config
    assert json.loads(merged["config.json"]) == {"model_type": "llama", "torch_dtype": "bfloat16"}
    assert sorted(p.name for p in export_dir.iterdir()) == ["adapter", "merged", "metrics.json"]

    card = adapter["README.md"].decode()
    meta = _front_matter(card)
    assert meta["base_model"] == BASE and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"unsloth", "trl", "lora", "classification"} <= set(meta["tags"])
    assert "license" not in meta
    assert "| accuracy | 0.25 → 0.9861 | yes |" in card
    assert "| macro_f1 | 0.1 → 0.9861 | yes |" in card
    assert "confusion" not in card.split("## Configuration")[0]  # only scalar metrics in the table
    assert "288 training examples, 72 held out" in card and "builtin:tickets" in card
    assert "r=16, alpha=32" in card and "8 (4 × 2 accumulation)" in card
    assert "| max_seq_length | 256 |" in card
    assert f'AutoPeftModelForCausalLM.from_pretrained("{REPO}")' in card
    assert f'model_name="{REPO}"' in card and "FastLanguageModel.from_pretrained" in card
    assert f"https://huggingface.co/{REPO}-merged" in card
    assert "wandb-secret-value" not in card and "hub_token" not in card and "wandb_api_key" not in card
    assert '"max_new_tokens": 48' in card  # `tokens` is not a credential
    assert "unsloth 2026.10.9" in card

    merged_card = merged["README.md"].decode()
    assert _front_matter(merged_card)["library_name"] == "transformers"
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}-merged"' in merged_card
    assert "AutoPeftModelForCausalLM" not in merged_card

    uploaded = json.loads(adapter["metrics.json"])
    assert uploaded["after"]["accuracy"] == 0.9861 and uploaded["train"]["tokens"] == 17023
    assert "hub_token" not in uploaded["config"] and uploaded["config"]["eval_data"] == "hf_***"

    out, err = capsys.readouterr()
    assert f"https://huggingface.co/{REPO}-merged" in out
    _assert_token_only_in_auth_header(fake, out + err)


def test_push_gguf_public_and_existing_repo(fake_hub, export_dir, capsys):
    gguf = export_dir / "gguf"
    gguf.mkdir()
    (gguf / "model-Q4_K_M.gguf").write_bytes(b"GGUF" + bytes(200))
    fake = fake_hub["hub"]
    fake.created[f"{REPO}-GGUF"] = {}  # already there: create answers 409, exist_ok carries on

    urls = hub.push(export_dir, _metrics(), REPO, kinds=["gguf"])

    assert urls == {"gguf": f"https://huggingface.co/{REPO}-GGUF"}
    assert list(fake.commits) == [f"{REPO}-GGUF"]
    files = fake.commits[f"{REPO}-GGUF"][0]
    assert set(files) == {"model-Q4_K_M.gguf", "README.md", "metrics.json"}
    card = files["README.md"].decode()
    assert _front_matter(card)["library_name"] == "gguf"
    assert f"llama-cli -hf {REPO}-GGUF" in card and f"ollama run hf.co/{REPO}-GGUF" in card
    _assert_token_only_in_auth_header(fake, "".join(capsys.readouterr()))


def test_push_public_flag(fake_hub, export_dir):
    hub.push(export_dir, _metrics(), REPO, private=False, kinds=["merged"])
    assert fake_hub["hub"].created[f"{REPO}-merged"]["visibility"] == "public"


def test_local_base_is_not_rewritten_or_claimed(fake_hub, export_dir, capsys):
    """Without a Hub id for the base, the adapter keeps its path and the card says so plainly."""
    metrics = _metrics(base=None)
    metrics["config"]["model"] = str(export_dir)  # a local folder: exists, so not a Hub id
    hub.push(export_dir, metrics, REPO, kinds=["adapter"])
    files = fake_hub["hub"].commits[REPO][0]
    assert json.loads(files["adapter_config.json"])["base_model_name_or_path"] == LOCAL_BASE
    card = files["README.md"].decode()
    assert "base_model" not in _front_matter(card)
    assert "PeftModel.from_pretrained(base" in card and "AutoPeftModelForCausalLM" not in card
    assert "not a Hub id" in capsys.readouterr().out


def test_card_without_new_keys_or_data():
    """metrics.json from before `base_model` and `data` existed still makes a card."""
    metrics = _metrics(base=None)
    del metrics["data"]
    metrics["config"]["model"] = BASE
    card = hub.model_card(metrics, "merged", f"{REPO}-merged", token=TOKEN)
    assert _front_matter(card)["base_model"] == BASE
    assert "- Source: `builtin:tickets`" in card and "held out for" not in card
    assert TOKEN not in card and "wandb-secret-value" not in card
    bare = hub.model_card({"recipe": "chat"}, "adapter", REPO, token=TOKEN)
    assert _front_matter(bare)["library_name"] == "peft"


# ---------------------------------------------------------------- errors: one line, exit code 2


@pytest.mark.parametrize(("status", "error", "expect"), [
    (401, "Invalid credentials in Authorization header", "rejected the token (401)"),
    (403, 'You don\'t have the rights to create a model under the namespace "alice"', "(403)"),
])
def test_http_errors_are_one_line(fake_hub, export_dir, capsys, status, error, expect):
    fake_hub["hub"] = FakeHub(status=status, error=error)
    code, out, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: push={REPO}") and expect in err
    assert error.split()[0] in err  # the Hub's own reason is kept
    assert not fake_hub["hub"].commits
    _assert_token_only_in_auth_header(fake_hub["hub"], out + err)


def test_network_down_is_one_line(fake_hub, export_dir, capsys):
    fake_hub["hub"] = FakeHub(network_down=True)
    code, out, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO))
    assert code == 2 and err.count("\n") == 1 and "cannot reach the Hugging Face Hub" in err
    assert TOKEN not in out + err


def test_offline_mode_is_one_line(fake_hub, export_dir, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO))
    assert code == 2 and err.count("\n") == 1 and "HF_HUB_OFFLINE" in err


@pytest.mark.parametrize("repo", ["tickets", "alice/bob/tickets", "alice/my model", "alice/-x", "alice/x..y",
                                  "alice/x.git", "", "alice/" + "x" * 95])
def test_bad_repo_name(fake_hub, export_dir, capsys, repo):
    code, _, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), repo))
    assert code == 2 and err.count("\n") == 1 and ("owner/name" in err or "too long" in err)
    assert not fake_hub["hub"].requests


def test_no_token(fake_hub, export_dir, capsys, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = _exit(capsys, lambda: hub.push(export_dir, _metrics(), REPO))
    assert code == 2 and err.count("\n") == 1
    assert "needs a Hugging Face token" in err and "HF_TOKEN" in err
    assert not fake_hub["hub"].requests


def test_missing_export(fake_hub, tmp_path, capsys):
    code, _, err = _exit(capsys, lambda: hub.push(tmp_path, _metrics(), REPO))
    assert code == 2 and "nothing to push" in err
    code, _, err = _exit(capsys, lambda: hub.push(tmp_path, _metrics(), REPO, kinds=["merged"]))
    assert code == 2 and "no merged export" in err
