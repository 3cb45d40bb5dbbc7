"""Process-group setup for data-parallel training under torchrun.

`torchrun --nproc_per_node N [--nnodes M ...] -m softprompt.cli train ...` starts N x M copies of
the command with WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment.
`process_group()` joins them into one group (NCCL on CUDA, gloo on CPU) and pins each process to
its own GPU; `softprompt.train.train` then shards every batch over the group and all-reduces the
prompt gradient. Without torchrun (WORLD_SIZE unset or 1) it does nothing.

Every process reads and resumes from the same run directory, so a multi-node run needs it on
storage all nodes share (see infra/k8s/training/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def backend_for(device: str | None) -> str:
    """NCCL when the run is on CUDA (`device` None means CUDA if present), else gloo."""
    on_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    return "nccl" if on_cuda else "gloo"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


@contextmanager
def process_group(device: str | None = None) -> Iterator[int]:
    """Joins the torchrun process group for the duration of the block; yields this process's rank
    (0 when not under torchrun). `device` is the run's device ("cuda", "cpu" or None for auto)."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        yield 0
        return
    if torch.distributed.is_initialized():
        raise RuntimeError("a torch.distributed process group is already initialized")
    backend = backend_for(device)
    if backend == "nccl":
        # Before init: NCCL binds each process to the current device. "cuda" then means this one.
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    torch.distributed.init_process_group(backend=backend)  # rendezvous from the torchrun env vars
    try:
        yield torch.distributed.get_rank()
    finally:
        torch.distributed.destroy_process_group()
