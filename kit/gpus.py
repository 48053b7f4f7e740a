"""How a run uses the machine's GPUs: data-parallel processes, one per GPU, or one process whose
model is split over them, settled with the memory plan before any process starts."""

from __future__ import annotations

from dataclasses import dataclass

from kit import choice as choice_mod
from kit import memory, ranks
from kit import plan as plan_mod
from kit.device import Device, detect_device, visible_gpus
from kit.errors import fail


@dataclass
class Parallel:
    processes: int  # data-parallel training processes, each with the whole model on its GPU
    split: bool  # one process, the model's layers spread over every GPU (device_map="balanced")
    why: str


def parallel(want: memory.Request, say=print, device: Device | None = None,
             gpus: int | None = None) -> Parallel:
    """`nproc` and the visible GPUs: data-parallel, one process per GPU, when the whole model
    and a share of the batch fit one card; with `nproc=0` and a model that fits only all the
    cards together, one process with its layers split over them (slower: one card works at a
    time). On CPU, `nproc=N` runs N gloo processes (how the tests exercise the path). A run
    that fits neither way stops here."""
    device = device or detect_device()
    gpus = visible_gpus(device) if gpus is None else gpus
    if not device.gpu:
        n = max(want.nproc, 1)
        ranks.check_batch(want, n)
        return Parallel(n, False, f"nproc={n}: {n} processes on CPU (gloo)" if n > 1 else "one process")
    if want.nproc > max(gpus, 1):
        fail(f"nproc={want.nproc}, but this machine shows {gpus} GPU(s); use nproc=0 (every GPU) "
             f"or at most {gpus}")
    n = want.nproc or max(gpus, 1)
    if n == 1 and not (want.nproc == 0 and gpus > 1):
        return Parallel(1, False, "one process, one GPU")
    ranks.check_batch(want, n)
    choice = choice_mod.resolve_model(want.model, device, say, want.gpu_model)
    settings = memory.decide_settings(want, device)
    try:
        shape = plan_mod.read_shape(choice.path)
    except (OSError, ValueError):
        return Parallel(n, False, f"{n} processes, one per GPU (no memory plan for this model)")
    one, _ = memory.plan_memory(want, device, shape, want.max_seq_length, settings.load_in_4bit,
                                world=n)
    if one.fits:
        return Parallel(n, False, f"data-parallel: {n} processes, one per GPU, each with the whole "
                                  f"model and {want.batch_size // n} of batch_size={want.batch_size} "
                                  f"(per GPU: {one.estimate.total:.1f} GiB)")
    if want.nproc <= 1 and gpus > 1:
        split, _ = memory.plan_memory(want, device, shape, want.max_seq_length,
                                      settings.load_in_4bit, world=1, cards=gpus)
        if split.fits:
            return Parallel(1, True, f"layers split over {gpus} GPUs in one process "
                                     f"(device_map=balanced): it needs ~{one.estimate.total:.1f} GiB, "
                                     f"more than one card's {one.budget_gib:.1f} GiB usable")
        fail(f"{choice.label} {split.message} (its layers split over {gpus} GPUs)")
    fail(f"{choice.label} {one.message}"
         + ("" if want.nproc <= 1 else "; nproc=0 lets the plan split its layers over the GPUs"))
