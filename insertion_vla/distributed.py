"""torchrun / DDP plumbing: one process per GPU (nccl), or per CPU process (gloo) when there is no CUDA.

Without torchrun (no WORLD_SIZE in the environment) everything degrades to a single process and the
collectives below are no-ops, so the training loop has one code path.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but CUDA is not available; use training.device=cpu or auto.")
    return torch.device("cuda", local_rank)


def setup(requested_device: str = "auto") -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30), device_id=device if backend == "nccl" else None)
    return DistInfo(rank, world_size, local_rank, device)


def teardown():
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    if dist.is_initialized():
        dist.barrier()


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """Elementwise mean of a tensor over all ranks (one all_reduce)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def sum_over_ranks(values: list, device) -> list:
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gather_lists(items: list) -> list:
    """Concatenate a list from every rank, in rank order (for naming the episodes of a spiking batch)."""
    if not dist.is_initialized():
        return list(items)
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]
