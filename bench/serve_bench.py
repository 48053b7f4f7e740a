"""Measure several adapters on one base (docs/serve.md): the cost of a switch, and tokens/s through
the OpenAI-compatible server with one adapter and with mixed requests.

    .venv/bin/python bench/serve_bench.py outputs/chat outputs/chat-other [--requests 8] [--max-tokens 32]

Two run (or adapter) folders on one base. The server (kit.serve's app) runs in this process on a
free port; requests go through a real HTTP client (aiohttp). Prints one JSON object:

- switch_ms: one `set_adapter` (what a call with an adapter does before it generates), and
  `to_base_ms`: entering and leaving `disable_adapter()` (a call to the base);
- call_switch_ms: the median short call (4 tokens) after a switch minus the median without;
- one request at a time (one adapter), N concurrent requests to one adapter, and N concurrent
  requests alternating over the two adapters (mixed batches): completion tokens/s and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTION = [{"role": "user", "content": "Tell me about yourself in two sentences."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call_switch_ms(m, a: str, b: str, calls: int = 8) -> float:
    """Median 4-token call right after a switch (a, b, a, b, ...) minus the median call with no
    switch (a, a, ...): medians, as other processes on the machine make single calls noisy."""
    import statistics

    def timed(names):
        times = []
        for n in names:
            start = time.perf_counter()
            m.generate(QUESTION, n, max_new_tokens=4)
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])  # the first sets the adapter up

    same = timed([a] * (calls + 1))
    switching = timed([a, b] * (calls // 2) + [a])
    return round((switching - same) * 1000, 1)


async def load(url: str, models: list[str], max_tokens: int, concurrent: bool) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(model):
            async with session.post(f"{url}/chat/completions", json={
                    "model": model, "messages": QUESTION, "max_tokens": max_tokens}) as r:
                return (await r.json())["usage"]["completion_tokens"]

        start = time.perf_counter()
        if concurrent:
            tokens = await asyncio.gather(*(one(m) for m in models))
        else:
            tokens = [await one(m) for m in models]
        seconds = time.perf_counter() - start
    return {"requests": len(models), "models": sorted(set(models)), "completion_tokens": sum(tokens),
            "seconds": round(seconds, 2), "tokens_per_s": round(sum(tokens) / seconds, 1)}


async def serve_and_measure(m, a: str, b: str, n: int, max_tokens: int) -> dict:
    from aiohttp import web

    from kit.serve import make_app

    app = make_app(m, max_batch=n)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        await load(url, [a, b], max_tokens, concurrent=False)  # warm
        out = {}
        for key, models, concurrent in (("one_at_a_time_one_adapter", [a] * n, False),
                                        ("concurrent_one_adapter", [a] * n, True),
                                        ("concurrent_mixed", [a, b] * (n // 2), True)):
            before = app["batcher"].batches
            out[key] = await load(url, models, max_tokens, concurrent)
            out[key]["batches"] = app["batcher"].batches - before  # generate() calls it took
        return out
    finally:
        await runner.cleanup()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first")
    ap.add_argument("second")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    a = ap.parse_args()
    import torch

    from kit.multi import Multi

    started = time.perf_counter()
    m = Multi.from_adapters({"a": a.first, "b": a.second})
    record = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads, {'GPU' if m.gpu else 'CPU'}",
              "versions": {p: __import__(p).__version__
                           for p in ("torch", "transformers", "peft", "aiohttp")},
              "base": m.name, "load_s": round(time.perf_counter() - started, 1),
              "switch_ms": round(m.switch_ms("b"), 2), "to_base_ms": round(m.switch_ms(None), 2),
              "call_switch_ms": call_switch_ms(m, "a", "b"), "max_tokens": a.max_tokens}
    record.update(asyncio.run(serve_and_measure(m, "a", "b", a.requests, a.max_tokens)))
    record["load_average_1min"] = round(os.getloadavg()[0], 1)  # other processes on this machine
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
