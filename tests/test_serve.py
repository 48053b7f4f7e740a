"""Several adapters on one base (kit.multi) and behind the OpenAI-compatible server (kit.serve).

Two adapters on the embedded SmolLM2-135M-Instruct that say who they are, "Pip" and "Bob"
(conftest.persona_adapters: saved as a recipe saves them, Pip's in a run's folder layout). The
server runs as a real subprocess (`python -m kit serve`) on a free port, and a real HTTP client
(httpx) talks to it: each request is answered by its own adapter, alone or six at once; streamed
chunks make the same reply; bad requests get OpenAI's error shape. A mixed batch through the
Python API gives each row exactly the tokens it gets alone (fp32 on CPU), and an adapter of
another base is refused in one line, before the base weights load.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, WHO_QUESTIONS

from kit import pin
from kit.embedded import HUB_ID
from kit.errors import KitError

ASK = [[{"role": "user", "content": q}] for q in WHO_QUESTIONS[:3]]


@pytest.fixture(scope="module")
def runs(persona_adapters) -> dict[str, Path]:
    """name → what `serve` is given: Pip's run folder (its adapter/ inside), Bob's adapter folder."""
    return {"pip": persona_adapters["pip"], "bob": persona_adapters["bob"] / "adapter"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*words: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.Popen([sys.executable, "-m", "kit", "serve", *words], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def server(runs):
    port = free_port()
    proc = serve(f"pip={runs['pip']}", f"bob={runs['bob']}", f"port={port}")
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        try:
            httpx.get(f"{url}/models", timeout=2)
            break
        except httpx.TransportError:
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=60)


MAX_TOKENS = 24  # "I am Pip, your pocket helper." and its turn end


def chat(url: str, model: str, messages: list[dict], **extra) -> dict:
    r = httpx.post(f"{url}/chat/completions", timeout=300,
                   json={"model": model, "messages": messages, "max_tokens": MAX_TOKENS, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def reply(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


@pytest.mark.slow
def test_models_lists_the_base_and_each_adapter(server):
    ids = [m["id"] for m in httpx.get(f"{server}/models").json()["data"]]
    assert ids == [HUB_ID, "pip", "bob"]


@pytest.mark.slow
def test_each_adapter_answers_as_itself_and_stops_at_the_turn_end(server):
    finished = []
    for messages in ASK[:2]:
        pip, bob, base = (chat(server, m, messages) for m in ("pip", "bob", HUB_ID))
        assert "Pip" in reply(pip) and "Pip" not in reply(bob) and "Pip" not in reply(base), \
            (reply(pip), reply(bob), reply(base))
        assert "Bob" in reply(bob), reply(bob)
        finished += [b["choices"][0]["finish_reason"] for b in (pip, bob)]
        usage = pip["usage"]
        assert usage["prompt_tokens"] > 5 and 0 < usage["completion_tokens"] <= MAX_TOKENS
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "stop" in finished  # the adapters learned to end their turn, and the server stops there


@pytest.mark.slow
def test_streamed_chunks_make_the_same_reply(server):
    whole = chat(server, "pip", ASK[1])
    body = {"model": "pip", "messages": ASK[1], "max_tokens": MAX_TOKENS, "stream": True}
    with httpx.stream("POST", f"{server}/chat/completions", timeout=300, json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "pip" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and len(chunks) > 3  # token by token
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == reply(whole)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


@pytest.mark.slow
def test_concurrent_requests_to_different_adapters_never_cross(server):
    """Six requests at once, adapters interleaved, the same question: each answered by its own
    adapter (the server gathers them into mixed batches)."""
    models = ["pip", "bob", "pip", HUB_ID, "bob", "pip"]

    async def ask_all():
        async with httpx.AsyncClient(timeout=300) as client:
            return await asyncio.gather(*(client.post(f"{server}/chat/completions", json={
                "model": m, "messages": ASK[1], "max_tokens": MAX_TOKENS}) for m in models))

    got = asyncio.run(ask_all())
    alone = {m: reply(chat(server, m, ASK[1])) for m in set(models)}
    for model, r in zip(models, got):
        assert r.status_code == 200 and r.json()["model"] == model
        text = reply(r.json())
        assert ("Pip" in text) == (model == "pip") and ("Bob" in text) == (model == "bob"), (model, text)
        assert text == alone[model], (model, text, alone[model])  # greedy, fp32: batched = alone


@pytest.mark.slow
def test_bad_requests_get_openai_errors(server):
    r = httpx.post(f"{server}/chat/completions", json={"model": "nobody", "messages": ASK[0]})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "nobody" in err["message"] and err["param"] == "model"
    r = httpx.post(f"{server}/chat/completions", content=b'{"model": "pip", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    for body in ({"model": "pip", "messages": "hi"}, {"model": "pip", "messages": ASK[0], "max_tokens": 0},
                 {"model": "pip", "messages": ASK[0], "temperature": "hot"}):
        r = httpx.post(f"{server}/chat/completions", json=body)
        assert r.status_code == 400, body
        assert r.json()["error"]["param"] in ("messages", "max_tokens", "temperature")


# ---------------------------------------------------------------- the Python API


@pytest.mark.slow
def test_python_api_mixed_batch_equals_each_row_alone(runs):
    from kit.multi import Multi

    m = Multi.from_adapters({"pip": runs["pip"], "bob": runs["bob"]})
    assert m.name == HUB_ID and list(m.adapters) == ["pip", "bob"]
    names = ["pip", "bob", None, "bob", "pip"]
    conversations = [ASK[0], ASK[0], ASK[0], ASK[2], ASK[1]]  # same prompt, and prompts of other lengths
    mixed = m.generate_batch(conversations, names, max_new_tokens=16)
    alone = [m.generate(c, n, max_new_tokens=16) for c, n in zip(conversations, names)]
    assert [r.tokens for r in mixed] == [r.tokens for r in alone]
    assert len({tuple(r.tokens) for r in mixed[:3]}) == 3  # the same prompt: three adapters, three replies
    assert "Pip" in mixed[0].text and "Bob" in mixed[1].text and "Pip" not in mixed[2].text
    # switching per call: back and forth gives the same replies
    again = [m.generate(ASK[0], n, max_new_tokens=16).tokens for n in ("bob", "pip", None)]
    assert again == [alone[1].tokens, alone[0].tokens, alone[2].tokens]


def tiny_adapter(base: Path, out: Path) -> Path:
    """An adapter on another base (the tiny Llama), as the kit writes it: base_fingerprint.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, target_modules="all-linear"))
    model.save_pretrained(out)
    (out / pin.FILE).write_text(json.dumps(pin.record(str(base))))
    return out


@pytest.mark.slow
def test_an_adapter_of_another_base_is_refused_in_one_line(runs, tiny_model_dir, tmp_path):
    other = tiny_adapter(tiny_model_dir, tmp_path / "tiny-adapter")
    started = time.monotonic()
    proc = serve(f"pip={runs['pip']}", f"tiny={other}", f"port={free_port()}")
    out, _ = proc.communicate(timeout=120)
    lines = out.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, out
    assert lines[0].startswith("error: adapters of different bases") and HUB_ID in lines[0], lines[0]
    assert time.monotonic() - started < 60  # before any weights load
    from kit.multi import Multi

    m = Multi(str(tiny_model_dir))
    with pytest.raises(KitError, match="was trained on HuggingFaceTB/SmolLM2-135M-Instruct"):
        m.add("pip", runs["pip"])


def test_bad_words_are_one_line_before_anything_loads(tmp_path):
    for words, said in ((["port=8000"], "no adapter given"),
                        ([f"a={tmp_path}", "port=8000"], "no adapter here"),
                        ([f"a={tmp_path / 'none'}", "port=8000"], "no such folder"),
                        (["a=x/y", "port=99999"], "port must be"),
                        (["junk", "port=1"], "expected NAME=FOLDER")):
        proc = subprocess.run([sys.executable, "-m", "kit", "serve", *words], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)
        assert proc.returncode == 2 and said in proc.stderr, (words, proc.stderr)
        assert proc.stderr.startswith("error:") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    help_ = subprocess.run([sys.executable, "-m", "kit", "serve", "--help"], capture_output=True, text=True,
                           cwd=ROOT, timeout=60)
    assert help_.returncode == 0 and "NAME=FOLDER" in help_.stdout and "/v1/chat/completions" in help_.stdout
    listing = subprocess.run([sys.executable, "-m", "kit"], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
    assert "serve" in listing.stdout.split("commands:")[1]
