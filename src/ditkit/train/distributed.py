"""torchrun support: process group setup, rank-0 helpers and all-reduces.

`ditkit train` reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...). Without
it, everything here degrades to single-process no-ops, so the training loop has no special cases.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (NCCL for CUDA, gloo otherwise); no-op when not launched."""
    if not launched_by_torchrun():
        return DistInfo()
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if world == 1:
        return DistInfo(0, 1, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=collective_timeout())
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group(backend, device_id=device, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    return DistInfo(rank, world, local_rank)


def collective_timeout() -> int:
    """Seconds a collective may wait for the other processes (DITKIT_DIST_TIMEOUT, default 600): a rank
    that died makes the others fail within this bound instead of hanging for torch's default 30 minutes."""
    value = os.environ.get("DITKIT_DIST_TIMEOUT", "600")
    try:
        seconds = int(value)
    except ValueError:
        raise ValueError(f"DITKIT_DIST_TIMEOUT={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"DITKIT_DIST_TIMEOUT must be > 0 seconds, got {seconds}")
    return seconds


def cleanup(clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first meets at a barrier, so no rank tears
    down its communication threads while another still talks to it (gloo then aborts the process with
    "terminate called without an active exception"); after an error the group is destroyed at once."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's value on every rank (small Python objects: a run folder path, a flag)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's value, in rank order, on every rank (small Python objects: lists of file names)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
