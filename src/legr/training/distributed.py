"""Data-parallel fine-tuning with torch.distributed (issue 17): launched by ``torchrun``, one process per device.

Every process holds the whole training split (in memory, or streamed from disk, where each decodes only its
share) and the same loader (same seed: same order, same augmentation), so the ranks agree on each step's global
batch without exchanging data; each takes one contiguous equal shard of it (the loader's ``shard``), and DDP
averages the gradients. A step therefore equals one process's step on the
whole batch: same weights within float tolerance (the test: two gloo processes on CPU against one). BatchNorm is
the exception on CPUs: torch's SyncBatchNorm runs on GPUs only, so there each rank normalizes its shard with the
shard's statistics (and DDP copies rank 0's running statistics to every rank at each forward); on GPUs `wrap`
converts BatchNorm to SyncBatchNorm and the equivalence holds for BN networks too. Rank 0 writes checkpoints and
results; every rank resumes from the same checkpoint file (one filesystem).

Backends: NCCL when CUDA is available, gloo otherwise. Under ``torchrun --nproc-per-node N -m legr finetune CONFIG``
the CLI starts the process group from torchrun's environment (``WORLD_SIZE`` > 1) and binds each rank to its
``LOCAL_RANK`` GPU (`data_parallel`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from legr.errors import ConfigError

TIMEOUT = timedelta(hours=12)  # a rank may wait that long for rank 0 (cutting the members, evaluating ...)


@dataclass(frozen=True)
class World:
    """This process's ``rank`` among ``size`` data-parallel processes (a single process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, results and progress."""
        return self.rank == 0


def world() -> World:
    """The current process group's world (rank 0 of 1 when none is initialized)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


@contextmanager
def data_parallel() -> Iterator[World]:
    """The world of a job launched by torchrun with ``WORLD_SIZE`` > 1: the default process group started (NCCL with
    CUDA, else gloo; each rank on GPU ``LOCAL_RANK``) for the block and destroyed after it; rank 0 of 1 otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or dist.is_initialized():
        yield world()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, w: World) -> nn.Module:
    """``model`` itself for one process; else DDP over it (on GPUs with BatchNorm converted to SyncBatchNorm, in
    place: the parameters and statistics are the same tensors)."""
    if w.size == 1:
        return model
    if device.type == "cuda":  # converts the BatchNorm children in place, keeping their parameter tensors
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return nn.parallel.DistributedDataParallel(model, device_ids=[index])
    return nn.parallel.DistributedDataParallel(model)


def check_batch(batch_size: int, w: World) -> None:
    if batch_size % w.size:
        raise ConfigError(f"finetune.batch_size ({batch_size}) must be a multiple of the {w.size} data-parallel "
                          "processes: each takes an equal share of every batch")


def all_sum(t: torch.Tensor, w: World) -> torch.Tensor:
    """``t`` summed over the ranks (in place; ``t`` itself for one process)."""
    if w.size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()
