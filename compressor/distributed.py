"""Multi-process training under ``torchrun``: which process this is, and the process group.

``torchrun --nproc_per_node N ...`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; ``setup`` joins the
group (gloo on CPU, NCCL on CUDA). Without torchrun everything is a single process of rank 0.
"""

from __future__ import annotations

import os


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in the process that writes files (rank 0, or the only process)."""
    return rank() == 0


def setup(device_type: str) -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world size)."""
    import torch.distributed as dist

    world = world_size()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return rank(), world


def local_device(device_type: str) -> str:
    """The device this process trains on: its own GPU under torchrun, else ``device_type``."""
    if device_type == "cuda":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device_type
