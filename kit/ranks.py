"""Inside several training processes (ranks): who is rank 0, waiting for each other, running a
step on rank 0 alone and handing its result to all, and the checks that they stayed in step.

Every helper here is a no-op in a single process, so the recipes and the kit call them
unconditionally. The ranks are started by kit.launch (or the user's own torchrun/accelerate).
"""

from __future__ import annotations

import os
from datetime import timedelta

from kit.errors import KitError


class Stopped(KitError):
    """This rank stops because rank 0 did; rank 0 has said why (so this one prints nothing)."""

    quiet = True
    exit_code = 1

# How long the other ranks wait for rank 0's evaluation, export or push, and for each other at a
# collective: long enough for a HumanEval pass on a T4, short of forever.
WAIT = timedelta(hours=4)
SHUTDOWN_S = 10  # after a rank dies, the others get this long to exit on SIGTERM before SIGKILL
LAUNCHED = "KIT_LAUNCHED"  # set for ranks kit.launch started: their parent holds output_dir


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def in_ranks() -> bool:
    """Is this process one of several ranks (started by us, torchrun or accelerate)?"""
    return world_size() > 1


def per_rank_batch(cfg, world: int | None = None) -> int:
    """Rows per optimizer step on each rank: `batch_size` is the effective batch."""
    return cfg.batch_size // (world or world_size())


def check_batch(cfg, world: int) -> None:
    """batch_size must split evenly over the ranks (and micro_batch_size over each share)."""
    from kit.errors import fail

    if world <= 1:
        return
    if cfg.batch_size % world:
        fail(f"batch_size={cfg.batch_size} does not split over {world} processes: "
             f"use a multiple of {world} (it is the effective batch, all processes together)")
    share = cfg.batch_size // world
    if cfg.micro_batch_size and share % cfg.micro_batch_size:
        fail(f"micro_batch_size={cfg.micro_batch_size} does not divide each process's share of "
             f"batch_size={cfg.batch_size} ({share} rows over {world} processes)")


# ---------------------------------------------------------------- inside the ranks


def join() -> None:
    """Join the process group (once): NCCL between GPUs, gloo on CPU."""
    import torch
    import torch.distributed as dist

    if not in_ranks() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend, timeout=WAIT)


def barrier() -> None:
    if in_ranks():
        import torch.distributed as dist

        join()
        dist.barrier()


def on_main(fn, *args, **kwargs):
    """Run `fn` on rank 0 alone and hand its result to every rank (the others wait for it).
    An error on rank 0 reaches the others as a KitError, so every rank stops alike."""
    if not in_ranks():
        return fn(*args, **kwargs)
    import torch.distributed as dist

    join()
    box: list = [None]
    if is_main():
        try:
            box[0] = ("ok", fn(*args, **kwargs))
        except BaseException as exc:
            box[0] = ("error", f"{type(exc).__name__}: {exc}")
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise Stopped(f"rank 0 stopped ({value})")
    return value


def check_shared(folder) -> None:
    """Every rank must see the output_dir rank 0 writes: each rank saves its RNG state into the
    checkpoints there, and a resumed run reads the checkpoint on every rank. On one machine it
    is the same folder; across machines it must be a shared one. Rank 0 leaves a file in it;
    if a rank does not find it, every rank stops with one line (rank 0 says it)."""
    if not in_ranks():
        return
    import socket
    import uuid
    from pathlib import Path

    import torch.distributed as dist

    def leave_mark() -> str:
        name = f".kit-shared-{uuid.uuid4().hex}"
        (Path(folder) / name).write_text("")
        return name

    mark = Path(folder) / on_main(leave_mark)
    every: list = [None] * world_size()
    dist.all_gather_object(every, (mark.is_file(), socket.gethostname()))
    if is_main():
        mark.unlink(missing_ok=True)
    blind: dict[str, list[str]] = {}
    for r, (seen, host) in enumerate(every):
        if not seen:
            blind.setdefault(host, []).append(str(r))
    if blind:
        who = "; ".join(f"{host} (rank{'s' * (len(rs) > 1)} {', '.join(rs)})" for host, rs in blind.items())
        error = KitError(f"output_dir {folder} is not one folder for every process: the processes "
                         f"on {who} cannot see what rank 0 writes there; on several machines "
                         "output_dir must be a shared folder (NFS or the like) at the same path "
                         "on each")
        error.quiet = not is_main()
        raise error


def total(value: int) -> int:
    """A count summed over the ranks (tokens seen, rows)."""
    if not in_ranks():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.long,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return int(t.item())


def ranks_agree(model) -> bool:
    """Do all ranks hold the same trainable weights (DDP keeps them in step)? Compared by a
    float64 fingerprint of every trainable tensor, gathered from each rank."""
    if not in_ranks():
        return True
    import torch
    import torch.distributed as dist

    parts = [p.detach().double() for p in model.parameters() if p.requires_grad]
    mine = torch.stack([torch.stack([t.sum(), t.square().sum()]) for t in parts]).flatten()
    if dist.get_backend() == "nccl":
        mine = mine.cuda()
    every = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(every, mine)
    return all(torch.equal(every[0], other) for other in every[1:])


# What a collective raises when another rank is gone (gloo's socket errors; NCCL's abort).
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe",
              "remote process exited", "communicator was aborted")


PEER_GONE = 3  # a rank's exit code when it stopped only because another rank died


def peer_lost(exc: BaseException) -> bool:
    """Did this rank fail only because another rank died (which the launcher reports)?"""
    return in_ranks() and isinstance(exc, RuntimeError) and any(s in str(exc) for s in _PEER_GONE)


def leave() -> None:
    """The end of a run: every rank meets here, so none exits while another still needs it.
    The process group is not destroyed: the rank's process ends without tearing it down
    (kit.errors.run_cli says why)."""
    if in_ranks():
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
