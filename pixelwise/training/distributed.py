"""Distributed data-parallel training: the process group, the device, and rank-aware helpers.

The same ``pixelwise train`` runs as one process or under ``torchrun``. torchrun sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``); when ``WORLD_SIZE`` is
above 1, :func:`distributed_session` joins the process group (NCCL on CUDA, Gloo on CPU), puts
each process on ``cuda:LOCAL_RANK`` (or the CPU) and leaves the group at the end. Every helper
here is a no-op in a single process, so the training loop has one code path.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from pixelwise.errors import InputError
from pixelwise.runtimes.compiled import eager_module


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process takes part."""
        return self.world_size > 1


def environment_ranks() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment; ``(0, 1, 0)`` without it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    """Rank 0, judged from the environment (usable before the process group exists, e.g. in the CLI)."""
    return environment_ranks()[0] == 0


@contextmanager
def distributed_session(device: str | torch.device = "cpu",
                        timeout_min: float = 30.0) -> Iterator[DistributedContext]:
    """Join the process group torchrun describes, if any, and leave it on exit.

    A group the caller already initialised is used as is and left open.

    Args:
        device: ``"cpu"`` or ``"cuda"``; under torchrun a CUDA device becomes ``cuda:LOCAL_RANK``
            (an index given here is ignored, since each process must own its own GPU).
        timeout_min: how long a collective may wait for the other processes before failing.
    """
    device = torch.device(device)
    rank, world_size, local_rank = environment_ranks()
    if world_size <= 1 and not dist.is_initialized():
        yield DistributedContext(device=device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL and the object collectives use the current device
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    try:
        yield DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, device)
    finally:
        if owns_group:
            dist.destroy_process_group()


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when several processes train; ``model`` otherwise."""
    if not context.distributed:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a ``torch.compile`` and a ``DistributedDataParallel`` wrapper
    (checkpoints store its state, with no ``_orig_mod.`` or ``module.`` prefix, so they load into a
    plain model)."""
    model = eager_module(model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def convert_sync_batchnorm(model: nn.Module, context: DistributedContext) -> nn.Module:
    """Batch norms that normalise over the global batch (all processes) instead of each process's share.

    Raises:
        ValueError: on the CPU with several processes: PyTorch's ``SyncBatchNorm`` runs on GPUs
            only (``DistributedDataParallel`` refuses it on CPU modules).
    """
    if not context.distributed:
        return model  # one process already normalises over the whole batch
    if context.device.type != "cuda":
        raise InputError("train.sync_batchnorm needs CUDA devices: PyTorch's SyncBatchNorm does not run on "
                         "the CPU; set train.sync_batchnorm=false (each process then normalises its own share "
                         "of the batch)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def sync_buffers(model: nn.Module, context: DistributedContext) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every process.

    ``DistributedDataParallel`` broadcasts them at the start of each forward pass, but that pass
    then updates each process's copy from its own share of the batch; evaluating without this
    would score slightly different models on different processes.
    """
    if not context.distributed:
        return
    for buffer in unwrap(model).buffers():
        dist.broadcast(buffer, src=0)


def mean_over_processes(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """The average of a scalar tensor over every process (the tensor itself in one process)."""
    if not context.distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / context.world_size


def broadcast_object(value: Any, context: DistributedContext) -> Any:
    """Rank 0's ``value`` on every process (picklable objects; tensors travel on the CPU)."""
    if not context.distributed:
        return value
    holder = [value if context.is_main else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` in one process)."""
    if not context.distributed:
        return [value]
    values: list[Any] = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values
