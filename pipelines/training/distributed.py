"""Data parallelism across Ray Train workers, done by hand where DDP cannot reach.

Every torch fit of hyvid splits an epoch over its ranks with `shard_indices` (equal counts, so
every rank joins every all-reduce), averages gradients with `average_gradients` and starts from
rank 0's weights (`broadcast_parameters`). With one worker each is a no-op.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> np.ndarray:
    """This rank's indices of a per-epoch shuffle; every rank gets the same count.

    Equal counts matter: every rank must take part in every gradient all-reduce.
    """
    perm = np.random.default_rng(seed + epoch).permutation(n)
    per = -(-n // world)
    perm = np.resize(perm, per * world)  # wrap around so the shards are equal
    return perm[rank::world]


def average_gradients(model: torch.nn.Module | Iterable[torch.nn.Parameter], world: int) -> None:
    """Data parallelism across Ray Train workers: average the gradients of all ranks in one all-reduce.

    Done by hand rather than with DistributedDataParallel because the models' own loss helpers
    (``sequence_loss``-style pooling, ``mlp_loss``'s heads, ``fusion_objective``) call the module's
    methods, which a DDP wrapper would bypass.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    params = model.parameters() if isinstance(model, torch.nn.Module) else model
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()

def broadcast_parameters(model: torch.nn.Module, world: int) -> None:
    """Start every rank from rank 0's weights (after init or a checkpoint restore)."""
    if world <= 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            dist.broadcast(t.data, src=0)


def allreduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum per-worker counters over the worker group (a no-op with one worker)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    if torch.distributed.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def agree_on(flag: bool, world: int) -> bool:
    """Rank 0's value of `flag` on every rank (decisions every rank must take together)."""
    if world <= 1:
        return bool(flag)
    from ray.train.collective import broadcast_from_rank_zero

    return bool(broadcast_from_rank_zero(flag))
