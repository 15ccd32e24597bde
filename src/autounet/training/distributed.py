"""Data-parallel training over several processes started by torchrun.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT); without them the
context is a single process and every helper here is a no-op. The plan's batch is split
across ranks, losses and Dice statistics are summed over ranks, and only rank 0 writes files.
NCCL is used on CUDA, gloo on CPU (so the same code path is testable on a laptop).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from autounet.errors import AutounetError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env() -> DistributedContext:
    """The torchrun environment, or a single-process context."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise AutounetError(f"RANK/WORLD_SIZE/LOCAL_RANK environment variables are not integers ({exc})") from None
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def init_distributed(device_type: str) -> DistributedContext:
    """Join the process group torchrun prepared (nccl on CUDA, gloo otherwise)."""
    ctx = context_from_env()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend)
    log.info("distributed training: rank %d of %d (backend %s)", ctx.rank, ctx.world_size, backend)
    return ctx


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch_size(batch_size: int, world_size: int) -> int:
    """The plan's (global) batch divided over ranks; every rank needs at least one sample."""
    per_rank = batch_size // world_size
    if per_rank < 1:
        raise AutounetError(
            f"plans.json: batch_size {batch_size} cannot be split over {world_size} processes; "
            f"use at most {batch_size} processes or re-plan with a larger batch"
        )
    if batch_size % world_size:
        log.warning("batch size %d is not divisible by %d processes; each uses %d (global batch %d)",
                    batch_size, world_size, per_rank, per_rank * world_size)
    return per_rank


def wrap_model(model: nn.Module, ctx: DistributedContext, device: torch.device) -> nn.Module:
    if not ctx.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor, ctx: DistributedContext) -> torch.Tensor:
    """Sum over ranks (returns the input unchanged on a single process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(value: float, ctx: DistributedContext, device: torch.device) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float32 if device.type == "mps" else torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / ctx.world_size


def barrier(ctx: DistributedContext) -> None:
    if ctx.enabled:
        dist.barrier()


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible loader seed per (run seed, starting epoch, rank)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
