"""torch.distributed helpers: the same code path on one process and under torchrun.

Gradients are synchronised by hand (one flattened all-reduce per optimizer step) rather than by DDP: the
four phases of a StyleGAN2 step (G main, lazy path length, D main, lazy R1) each run their own backward,
two of them with double backward, and run the networks on different inputs and sub-batches. DDP's hooks
would need `find_unused_parameters`, `no_sync` juggling and the static-graph caveats of double backward.
(stylegan2-ada-pytorch wraps its networks in DistributedDataParallel; stylegan3 dropped DDP and all-reduces
the flattened gradients by hand, as here.) The manual all-reduce also carries the loss value in the same
buffer, so that a NaN on any rank stops every rank at the same step (no deadlock); reading that value on the
host costs one device sync per phase (benchmarks/bench_ddp_sync.py measures it).

`torchrun_env` is the one parser of torchrun's environment (training and `opstylegan invert` use it through
`init_distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def torchrun_env(env: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when launched by torchrun (RANK and WORLD_SIZE set), else None.

    ``env`` defaults to ``os.environ``. LOCAL_RANK defaults to RANK (one node).

    Raises:
        ValueError: The variables are not integers, or not 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0.
    """
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    got = (f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, LOCAL_RANK={env.get('LOCAL_RANK')!r}")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them), "
                         f"got {got}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun environment out of range: need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE and "
                         f"LOCAL_RANK >= 0, got {got}")
    return rank, world, local


def init_distributed(device: torch.device) -> DistInfo:
    """Joins the process group if launched by torchrun (NCCL on CUDA, gloo on CPU); one process otherwise.

    On CUDA each process takes the GPU of its LOCAL_RANK (``torch.cuda.set_device``), so NCCL collectives and
    ``.cuda()`` calls go to that GPU. `device` is the device asked for ('cuda' or 'cpu'). Call
    :func:`shutdown` when done.

    Raises:
        ValueError: A malformed torchrun environment (see :func:`torchrun_env`).
    """
    env = torchrun_env()
    if env is None or env[1] == 1:
        return DistInfo(device=device)
    rank, world, local = env
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown() -> None:
    """Destroys the process group, if one was joined (safe to call in every case)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """A per-rank 32-bit seed derived from (seed, rank): independent streams, the same on every run."""
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    """Copies rank 0's parameters and buffers to every rank."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def sync_grads(params: list[nn.Parameter], loss: torch.Tensor, info: DistInfo) -> float:
    """Averages the gradients over ranks (one flat all-reduce that also carries the loss) and cleans
    non-finite gradient entries (fp16 overflow, as stylegan2-ada). Returns the rank-averaged loss."""
    if not info.enabled:  # one process: no copy, just the clean-up
        for p in params:
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0, posinf=1e5, neginf=-1e5, out=p.grad)
        return float(loss.detach())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
    dist.all_reduce(flat)
    flat /= info.world_size
    value = float(flat[-1])
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            p.grad = torch.empty_like(p)
        p.grad.copy_(flat[offset:offset + n].view_as(p))  # flat [N] -> p's shape
        offset += n
    return value


def mean_over_ranks(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of a tensor over all ranks (identity on one process)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / info.world_size


def gather_objects(obj: object, info: DistInfo) -> list[object]:
    """Every rank's `obj`, in rank order (a one-element list on one process)."""
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, info: DistInfo) -> object:
    """rank 0's `obj` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
