"""Data-parallel training under ``torchrun``: one process per GPU (or per CPU slot), gradients averaged.

``torchrun --nproc_per_node N --no-python smoothseg_train 7 tumor 0`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set; :func:`from_environment` reads them, and :func:`start` joins the process group
(NCCL on CUDA, one GPU per local rank; gloo on the CPU). Without those variables training runs as one process,
exactly as before. Only rank 0 writes files; the helpers below let the trainer share what rank 0 computed (the TLVR
weak labels) and agree on validation numbers, so every rank makes the same decisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from smoothseg.errors import SmoothSegError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> DistributedContext:
    """The context ``torchrun`` describes in ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; a single process otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise SmoothSegError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from None
    if world < 1 or not 0 <= rank < world:
        raise SmoothSegError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistributedContext(rank, local, world)


def start(ctx: DistributedContext, device: torch.device) -> torch.device:
    """Join the process group; returns this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
    if not ctx.enabled:
        return device
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise SmoothSegError(f"local rank {ctx.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                                 "start at most one process per GPU")
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise SmoothSegError(f"data-parallel training runs on CUDA or the CPU, not on {device.type}")
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return device


def stop(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_from_main(ctx: DistributedContext, value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if not ctx.enabled:
        return value
    box = [value if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(ctx: DistributedContext, values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``values`` over all ranks (``values`` itself when alone)."""
    if not ctx.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def wrap(network: torch.nn.Module, ctx: DistributedContext, device: torch.device) -> torch.nn.Module:
    """The module to train with: ``DistributedDataParallel`` around ``network`` in a torchrun job."""
    if not ctx.enabled:
        return network
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=ids, output_device=ids[0] if ids else None)
