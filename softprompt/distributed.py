"""Process-group setup for data-parallel training under torchrun.

`torchrun --nproc_per_node N [--nnodes M ...] -m softprompt.cli train ...` starts N x M copies of
the command with WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in the environment.
`process_group()` joins them into one group (NCCL on CUDA, gloo on CPU) and pins each process to
its own GPU; the training loop (softprompt.training.loop) then shards every batch over the group
and all-reduces the gradient with the helpers below. Without torchrun (WORLD_SIZE unset or 1) it
does nothing, and the helpers see one process.

Every process reads and resumes from the same run directory, so a multi-node run needs it on
storage all nodes share (see infra/k8s/training/).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

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
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer (set by torchrun)"
        ) from None


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


class World(NamedTuple):
    """How many processes train together, and which one this is."""

    size: int
    rank: int


SINGLE_PROCESS = World(1, 0)


def world() -> World:
    """(size, rank) under torch.distributed (torchrun), else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_world_size(), torch.distributed.get_rank())
    return SINGLE_PROCESS


def sum_across_processes(params: list[torch.nn.Parameter], loss: float) -> float:
    """All-reduces (sums) the parameters' gradients and the logged loss. Every process normalized
    its loss by the whole step's target-token count, so the sum is exactly the single-process
    update."""
    for param in params:
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad)
    total = torch.tensor([loss], device=params[0].device)
    torch.distributed.all_reduce(total)
    return float(total)


def from_rank0(value: float, device: torch.device) -> float:
    """Rank 0's value on every process. Stop decisions must agree: a process that left the loop
    alone would leave the others waiting in all_reduce forever."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor)


def barrier() -> None:
    """Waits for every process of the group; nothing to wait for in a single process."""
    if world().size > 1:
        torch.distributed.barrier()
