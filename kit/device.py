"""The device a run trains on: the GPU (or the CPU), how many GPUs are visible, memory free."""

from __future__ import annotations

import resource
from dataclasses import dataclass

import torch


@dataclass
class Device:
    kind: str  # "cuda" or "cpu"
    name: str
    memory_gib: float
    bf16: bool

    @property
    def gpu(self) -> bool:
        return self.kind == "cuda"

    def peak_memory_gib(self) -> tuple[float, str]:
        """Peak GPU memory allocated, or the process's peak resident memory on CPU."""
        if self.gpu:
            return torch.cuda.max_memory_allocated() / 2**30, "GPU"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "RAM"


def detect_device() -> Device:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Device("cuda", props.name, props.total_memory / 2**30, torch.cuda.is_bf16_supported())
    import psutil

    threads = torch.get_num_threads()  # what torch trains on (OMP_NUM_THREADS), not the core count
    return Device("cpu", f"CPU ({threads} thread{'s' if threads != 1 else ''})",
                  psutil.virtual_memory().total / 2**30, True)


def visible_gpus(device: Device) -> int:
    return torch.cuda.device_count() if device.gpu and torch.cuda.is_available() else 0


def free_memory(device: Device) -> tuple[float, str]:
    """(GiB free now on this device's card, or in CPU RAM; where that number comes from)."""
    if device.gpu and torch.cuda.is_available():
        free = torch.cuda.mem_get_info()[0] / 2**30
        return free, f"{device.name}, {free:.1f} GiB free"
    import psutil

    free = psutil.virtual_memory().available / 2**30
    return free, f"CPU RAM, {free:.1f} GiB available"


def host_free_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / 2**30
