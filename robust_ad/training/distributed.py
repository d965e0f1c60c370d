"""Training on several processes started by ``torchrun``: DistributedDataParallel on NCCL (GPUs) or Gloo (CPUs).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``. Started plainly, a process is a world of one and
everything here is a no-op. Each process trains on its share of every batch (the recipe's batch size is the
global one) and DDP averages the gradients, so every process holds the same weights; process 0 alone writes.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from robust_ad.errors import ConfigError


def world_size() -> int:
    """How many processes train together (1 outside :func:`process_group`)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 outside :func:`process_group`)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes (rank 0)."""
    return rank() == 0


@contextmanager
def process_group(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the block (a no-op alone); yields this process's device: its own GPU
    (``cuda:LOCAL_RANK``) on CUDA."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    use_loopback_on_one_machine()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


LOOPBACK_NAMES = ("lo", "lo0")  # Linux, macOS


def use_loopback_on_one_machine() -> None:
    """When every process runs on this machine (``torchrun --standalone``, or one node), Gloo and NCCL's socket
    bootstrap talk over the loopback interface unless ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` say otherwise.
    By default they bind to the address the hostname resolves to, which in containers and sandboxed machines can be
    unreachable even from the machine itself: the processes then wait for each other until the timeout."""
    if os.environ.get("LOCAL_WORLD_SIZE") != os.environ.get("WORLD_SIZE", "1"):
        return
    loopback = next((name for _, name in socket.if_nameindex() if name in LOOPBACK_NAMES), None)
    if loopback is not None:
        for variable in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(variable, loopback)


@contextmanager
def main_first() -> Iterator[None]:
    """Process 0 runs the block first (e.g. a download into a shared cache), then the others."""
    waits = dist.is_initialized() and not is_main()
    if waits:
        dist.barrier()
    try:
        yield
    finally:  # also when process 0 fails: the others then run the block and report for themselves
        if dist.is_initialized() and not waits:
            dist.barrier()


def local_batch_size(batch_size: int) -> int:
    """Each process's share of a global batch; the batch must split evenly."""
    world = world_size()
    if batch_size % world:
        raise ConfigError(f"batch size {batch_size} does not split over {world} processes: use a multiple of {world}")
    return batch_size // world


def sampler(dataset: Dataset, seed: int) -> DistributedSampler | None:
    """This process's shuffled share of ``dataset`` (None alone: the engine shuffles itself)."""
    if not dist.is_initialized():
        return None
    return DistributedSampler(dataset, world_size(), rank(), shuffle=True, seed=seed)


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` as a training step calls it: in DDP when there are several processes and it has trainable
    parameters (its gradients are then averaged over the processes in the backward pass)."""
    if not dist.is_initialized() or not any(p.requires_grad for p in module.parameters()):
        return module
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def total(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each value summed over the processes (one collective for all)."""
    if not dist.is_initialized() or not values:
        return values
    stacked = torch.stack([value.float() for value in values.values()])
    dist.all_reduce(stacked)
    return dict(zip(values, stacked, strict=True))


def gathered(value: object) -> list[object]:
    """Every process's ``value`` (picklable), in rank order; ``[value]`` alone."""
    if not dist.is_initialized():
        return [value]
    values: list[object] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def share_buffers(module: nn.Module) -> None:
    """Process 0's buffers (batch-norm statistics) in every process."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
