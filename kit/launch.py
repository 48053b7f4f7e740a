"""Every GPU on the machine: data-parallel training, one process per GPU, started by torch's own
elastic launcher (what `torchrun` runs), never a home-made one.

`nproc=0` (auto) starts one process per visible GPU when there is more than one; `nproc=N`
forces N (gloo on a CPU machine, which is how the tests exercise this path). The process the
user started checks the config, the data and the memory plan first, so bad input stops before
any process group exists; it then waits for the ranks and returns rank 0's metrics. A user's
own `torchrun --nproc_per_node N recipes/chat.py ...` or `accelerate launch recipes/chat.py ...`
skips that step: the recipe finds RANK and WORLD_SIZE set and runs as one rank. Several
machines are always the user's own torchrun, one per machine (docs/multi-gpu.md), with one
output_dir shared by all (kit.ranks.check_shared).

Inside the ranks, each loads the whole model on its own GPU (Unsloth places it by LOCAL_RANK),
the trainer shards the data and averages gradients; rank 0 alone evaluates, writes and pushes
(`on_main`), and the other ranks wait for its results. A rank that dies makes the launcher stop
the others (SIGTERM, then SIGKILL after `SHUTDOWN_S`), and the launching process says so in one
line and where to resume from.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kit.errors import KitError
from kit.ranks import LAUNCHED, SHUTDOWN_S, Stopped, in_ranks

# ---------------------------------------------------------------- the launching process


def processes(cfg, say=print) -> int:
    """How many processes this run trains in: 1 inside a rank; otherwise `nproc`, or one per
    visible GPU when the memory plan puts the whole model on each (kit.gpus.parallel)."""
    if in_ranks():
        return 1
    from kit import gpus, memory

    return gpus.parallel(memory.Request.of(cfg), say).processes


def as_args(cfg) -> list[str]:
    """The config as the `key=value` words that rebuild it (for the ranks' command line)."""
    from kit.config import describe

    def word(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return "none" if value is None else str(value)

    return [f"{key}={word(value)}" for key, value, _ in describe(cfg)]


def run_ranks(cfg, recipe_file: str, n: int, say=print) -> dict:
    """Start `n` ranks of the recipe through torch's elastic launcher, wait for them, and return
    rank 0's metrics.json; a failed rank becomes one line with where to resume."""
    import json
    import logging
    import time
    import uuid

    import torch
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from kit.errors import Terminated

    backend = "NCCL" if torch.cuda.is_available() else "gloo"
    say(f"launching {n} processes ({backend}), one per {'GPU' if backend == 'NCCL' else 'rank'}; "
        f"batch_size={cfg.batch_size} is split {cfg.batch_size // n} per process")
    os.environ[LAUNCHED] = "1"
    cores = os.cpu_count() or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(cores // n, 1)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5, shutdown_timeout=SHUTDOWN_S)
    metrics = Path(cfg.output_dir) / "metrics.json"
    started = time.time()
    # The launcher logs each rank's exit and its stop signals; the failure line below says it.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith(_LAUNCHER_LOGS)]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        elastic_launch(config, entrypoint=sys.executable)(recipe_file, *as_args(cfg))
    except ChildFailedError as exc:
        if metrics.is_file() and metrics.stat().st_mtime >= started:
            # The run finished and rank 0 said what failed its check (an export): exit 1 quietly.
            raise Stopped("rank 0 failed a check after training") from None
        error = KitError(_failure_line(exc, cfg))
        error.exit_code = 2 if _first(exc).exitcode == 2 else 1  # bad input found in a rank: 2
        raise error from None
    except SignalException:  # SIGTERM to this process: the launcher has stopped the ranks
        raise Terminated from None
    finally:
        os.environ.pop(LAUNCHED, None)
    return json.loads(metrics.read_text())


_LAUNCHER_LOGS = ("torch.distributed.elastic", "torch.distributed.launcher")


def _first(exc):
    """The rank that failed first. A rank the launcher stopped (SIGTERM) or one that stopped
    because a peer died (PEER_GONE) is the cause only if nothing else failed: failure times
    are whole seconds, and such a rank often exits within the same second as the cause."""
    import signal

    from kit.ranks import PEER_GONE

    return min(exc.failures.values(),
               key=lambda f: (f.exitcode in (-signal.SIGTERM, PEER_GONE), f.timestamp))


def _failure_line(exc, cfg) -> str:
    import signal

    from kit import checkpoints

    failure = _first(exc)
    rank_id, code = failure.local_rank, failure.exitcode
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}" + (" (its error is above)" if code in (1, 2) else "")
    best = checkpoints.latest(cfg.output_dir, cfg.checkpoint_mirror)[0]
    where = (f"the last complete checkpoint is {best}; run the same command again to resume"
             if best else "no checkpoint was complete yet")
    return f"rank {rank_id} {how}; the launcher stopped the other processes; {where}"
