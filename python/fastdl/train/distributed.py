"""Multi-process training with torch.distributed and DistributedDataParallel, nothing else.

Launched by torchrun (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in the environment),
each process joins the process group (gloo on the CPU, nccl on CUDA, one GPU per process), draws
its share of every epoch from a DistributedSampler, and trains the model wrapped in DDP, which
averages the gradients across processes in backward. A plain launch is a world of one process with
no process group: the same sampler (one replica) and the bare model.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """The process that prints, evaluates and saves checkpoints."""
        return self.rank == 0


def join(device: str) -> World:
    """The process group torchrun's environment describes, or a world of one without torchrun."""
    if "WORLD_SIZE" not in os.environ:
        return World(device=torch.device(device))
    if device == "cuda":
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=local)
    else:
        local = torch.device("cpu")
        dist.init_process_group("gloo")
    return World(dist.get_rank(), dist.get_world_size(), local)


def leave(finished: bool = True) -> None:
    """Leave the process group. Unreachable DDP wrappers (their reducers hold the group) are collected
    first, and a finished run waits for every rank, so that no rank tears its connections down while
    another still uses them or while Python is finalizing. Before these two, a rank of a two-process
    gloo run died at exit with SIGABRT ("terminate called without an active exception") in 1 of 16
    runs of tests/test_train.py's two DDP tests on the dev machine, and once in CI; after, 0 of 20.
    After a failure (finished=False) no barrier: the other ranks may be gone."""
    if not dist.is_initialized():
        return
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def sampler(num_samples: int, world: World, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This process's share of range(num_samples); call set_epoch(e) for epoch e's order."""
    return DistributedSampler(range(num_samples), num_replicas=world.size, rank=world.rank,
                              shuffle=shuffle, seed=seed)


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The model DDP-wrapped in a process group; itself otherwise."""
    if world.size == 1:
        return model
    device_ids = [world.device] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def gather(obj: object, world: World) -> list[object]:
    """`obj` from every process, in rank order (a list of one without a process group)."""
    if world.size == 1:
        return [obj]
    gathered = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered
