"""An OpenAI-compatible server for one base with several LoRA adapters (kit.multi), on aiohttp.

    python -m kit serve NAME=FOLDER [NAME=FOLDER ...] port=N [host=127.0.0.1] [max_batch=8]

    GET  /v1/models            the base (under its own name, e.g. its Hub id) and each adapter
    POST /v1/chat/completions  `model` picks the adapter (or the base); `messages`, `max_tokens`
                               (or `max_completion_tokens`), `temperature` (0: greedy), `stream`

Requests waiting at the same time are gathered into one mixed batch (each row its own adapter,
PEFT's `adapter_names`), run one batch at a time in a worker thread, never on the event loop:
concurrent requests to different adapters cannot cross. Bad words, a missing adapter, or
adapters of different bases are one `error:` line and exit 2 before the base weights load.
No torch at import (the console's `python -m kit serve --help` loads none).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field

from kit.errors import fail

USAGE = """usage: python -m kit serve NAME=FOLDER [NAME=FOLDER ...] port=N [host=127.0.0.1] [max_batch=8]

Serve one base with several LoRA adapters behind an OpenAI-compatible API.

  NAME=FOLDER   an adapter under the name requests use as `model`: a run folder (its
                adapter/), an adapter folder, or a Hub id. All must share one base; the base
                itself answers to its own name (its Hub id, listed by GET /v1/models).
  port=N        the TCP port to listen on (required).
  host=ADDR     the address to listen on (default 127.0.0.1: this machine only).
  max_batch=N   the most requests generated together in one mixed batch (default 8).

Endpoints: GET /v1/models; POST /v1/chat/completions with `model`, `messages`, `max_tokens`
(default 256), `temperature` (0 = greedy, the default), `stream` (server-sent events ending
with `data: [DONE]`). Generation stops at the model's end-of-turn token. See docs/serve.md."""

DEFAULT_MAX_TOKENS = 256
GATHER_S = 0.005  # how long the batcher waits for more requests once one is in


def parse(argv: list[str]) -> tuple[dict[str, str], dict]:
    """({name: source}, {"port", "host", "max_batch"}) from the command line's words."""
    options = {"port": None, "host": "127.0.0.1", "max_batch": 8}
    adapters: dict[str, str] = {}
    for word in argv:
        key, eq, value = word.partition("=")
        if not eq or not key or not value:
            fail(f"{word!r}: expected NAME=FOLDER or port=N; see python -m kit serve --help")
        if key in ("port", "max_batch"):
            if not value.isdigit() or int(value) < 1 or (key == "port" and int(value) > 65535):
                limits = " from 1 to 65535" if key == "port" else " above 0"
                fail(f"{word}: {key} must be a whole number{limits}")
            options[key] = int(value)
        elif key == "host":
            options[key] = value
        elif key in adapters:
            fail(f"adapter name {key!r} given twice")
        else:
            adapters[key] = value
    if not adapters:
        fail("no adapter given (NAME=FOLDER); see python -m kit serve --help")
    if options["port"] is None:
        fail("no port given (port=N); see python -m kit serve --help")
    return adapters, options


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before minutes go into loading the weights."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror}")


def cli(argv: list[str]) -> None:
    if not argv or any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return
    sources, options = parse(argv)
    from kit import multi

    folders = {name: multi.adapter_dir(src) for name, src in sources.items()}
    base = multi.same_base(folders)  # before any weights load
    if base["name"] in folders:
        fail(f"adapter name {base['name']!r} is the base's own name; pick another")
    check_port(options["host"], options["port"])
    print(f"loading {base['name']} with adapters {', '.join(folders)}", flush=True)
    engine = multi.Multi.from_adapters(folders)
    from aiohttp import web

    app = make_app(engine, options["max_batch"])
    print(f"serving {engine.name} and adapters {', '.join(folders)} on "
          f"http://{options['host']}:{options['port']}/v1", flush=True)
    web.run_app(app, host=options["host"], port=options["port"], print=None, access_log=None)


# ---------------------------------------------------------------- requests and the batcher


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


@dataclass
class Job:
    messages: list[dict]
    adapter: str | None  # None: the base
    max_tokens: int
    temperature: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # ("token", id) ... ("done", Reply)


class Batcher:
    """Takes the jobs waiting, runs them as one mixed batch per temperature in the one worker
    thread, and hands each job its tokens and its reply through its event queue."""

    def __init__(self, engine, max_batch: int):
        from concurrent.futures import ThreadPoolExecutor

        self.engine, self.max_batch = engine, max_batch
        self.queue: asyncio.Queue[Job] = asyncio.Queue()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self.batches = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            await asyncio.sleep(GATHER_S)
            while not self.queue.empty() and len(jobs) < self.max_batch:
                jobs.append(self.queue.get_nowait())
            for temperature in dict.fromkeys(j.temperature for j in jobs):
                group = [j for j in jobs if j.temperature == temperature]
                await loop.run_in_executor(self.pool, self._generate, loop, group, temperature)

    def _generate(self, loop, jobs: list[Job], temperature: float) -> None:
        """In the worker thread: one batch; events go back to the loop thread-safely."""
        def send(job, event):
            loop.call_soon_threadsafe(job.events.put_nowait, event)

        self.batches += 1
        try:
            replies = self.engine.generate_batch(
                [j.messages for j in jobs], [j.adapter for j in jobs], [j.max_tokens for j in jobs],
                temperature, on_token=lambda row, tok: send(jobs[row], ("token", tok)))
        except Exception as exc:  # reported to each request, the server goes on
            for job in jobs:
                send(job, ("error", f"{type(exc).__name__}: {exc}"))
            return
        for job, reply in zip(jobs, replies):
            send(job, ("done", reply))


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _content(message, i: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: the text ones
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise BadRequest(f"messages[{i}].content: only text parts are supported", param="messages")
        return "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string", param="messages")
    return content


def read_request(body, models: dict[str, str | None]) -> tuple[Job, bool, str, bool]:
    """(job, stream, model, include_usage) from a chat-completions body, or BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str):
        raise BadRequest("`model` must be a string", param="model")
    if model not in models:
        raise BadRequest(f"The model `{model}` does not exist; have: {', '.join(models)}", status=404,
                         param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise BadRequest(f"messages[{i}] needs a role of system, user or assistant", param="messages")
        clean.append({"role": m["role"], "content": _content(m, i)})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise BadRequest("`max_tokens` must be a whole number above 0", param="max_tokens")
    temperature = body.get("temperature", 0.0)
    temperature = 0.0 if temperature is None else temperature
    if not isinstance(temperature, int | float) or isinstance(temperature, bool) or not 0 <= temperature <= 2:
        raise BadRequest("`temperature` must be a number from 0 to 2", param="temperature")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false", param="stream")
    if body.get("n", 1) != 1:
        raise BadRequest("only n=1 is supported", param="n")
    usage = bool((body.get("stream_options") or {}).get("include_usage")) if stream else False
    return Job(clean, models[model], max_tokens, float(temperature)), stream, model, usage


def make_app(engine, max_batch: int = 8):
    """The aiohttp application serving `engine` (a kit.multi.Multi)."""
    from aiohttp import web

    models: dict[str, str | None] = {engine.name: None, **{n: n for n in engine.adapters}}
    created = int(time.time())

    async def list_models(request):
        data = [{"id": name, "object": "model", "created": created, "owned_by": "kit",
                 **({"parent": engine.name} if adapter else {})} for name, adapter in models.items()]
        return web.json_response({"object": "list", "data": data})

    def refuse(exc: BadRequest):
        return web.json_response(error_body(str(exc), exc.status, exc.param, exc.code), status=exc.status)

    async def chat(request):
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return refuse(BadRequest(f"the body is not valid JSON: {exc}"))
        try:
            job, stream, model, include_usage = read_request(body, models)
            engine.prompt_ids(job.messages)  # a template that refuses these messages: 400
        except BadRequest as exc:
            return refuse(exc)
        except Exception as exc:
            return refuse(BadRequest(f"the chat template refused these messages: {exc}", param="messages"))
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": model}
        await request.app["batcher"].queue.put(job)
        if not stream:
            while True:
                kind, value = await job.events.get()
                if kind == "error":
                    return web.json_response(error_body(value, 500), status=500)
                if kind == "done":
                    return web.json_response({
                        **head, "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": value.text},
                                     "finish_reason": "stop" if value.stopped else "length"}],
                        "usage": usage(value)})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(delta: dict, finish: str | None = None, **extra):
            chunk = {**head, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        await send({"role": "assistant", "content": ""})
        tokens: list[int] = []
        sent = ""
        while True:
            kind, value = await job.events.get()
            if kind == "error":
                await response.write(f"data: {json.dumps(error_body(value, 500))}\n\n".encode())
                break
            if kind == "token":
                tokens.append(value)
                text = engine.tokenizer.decode(tokens, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # a character cut between tokens: wait for the rest
                    continue
                if len(text) > len(sent):
                    await send({"content": text[len(sent):]})
                    sent = text
                continue
            if len(value.text) > len(sent):
                await send({"content": value.text[len(sent):]})
            await send({}, "stop" if value.stopped else "length")
            if include_usage:
                chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage(value)}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            break
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def usage(reply) -> dict:
        return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                "total_tokens": reply.prompt_tokens + reply.completion_tokens}

    async def start(app):
        app["batcher"] = Batcher(engine, max_batch)
        app["batcher_task"] = asyncio.create_task(app["batcher"].run())

    async def stop(app):
        app["batcher_task"].cancel()
        app["batcher"].pool.shutdown(wait=True)

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/chat/completions", chat)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


if __name__ == "__main__":
    from kit.errors import run_cli

    sys.exit(run_cli(cli))
