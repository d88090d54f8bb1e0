"""The cost of the host syncs in a distributed training step: `float(loss)` once per phase (up to 4 per step).

`Trainer._finish_phase` all-reduces the gradients together with the loss (`sync_grads`) and then reads the
loss on the host (`float(...)`) to stop every rank at the same step when it is not finite. On an asynchronous
device (CUDA) that read waits for the device to finish; on the CPU every op, the all-reduce included, has
already finished when it returns. This script runs `world` gloo processes on the CPU and, side by side in the
same processes, times training steps

* `sync`: the loop as it is (the loss read with `float()` after every phase), and
* `nosync`: the same step with the reads removed (the loss stays a tensor; the finite check is skipped),

interleaved in blocks (`--block` steps of one variant, then of the other, `--blocks` times each, the order
swapped every round: A B, B A, ...), so that a noisy, shared machine affects both alike. Reported: the median seconds per step of each variant over the
blocks, on rank 0 (the ranks are in lockstep through the all-reduces).

    OMP_NUM_THREADS=1 python benchmarks/bench_ddp_sync.py                   # 2 gloo processes, tiny, 32 px
    OMP_NUM_THREADS=1 python benchmarks/bench_ddp_sync.py --world 2 --batch 8 --block 8 --blocks 6
    python benchmarks/bench_ddp_sync.py --device cuda --world 4 --preset auto --res 256 --batch 64   # NCCL, 4 GPUs

With `--device cuda` each process takes the GPU of its rank (NCCL), and the timed blocks end with
`torch.cuda.synchronize()`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp
from benchutil import RandomImages


def _finish_phase_nosync(self, term, loss, module, opt) -> None:  # type: ignore[no-untyped-def]
    """`Trainer._finish_phase` without any host read: all-reduce (gradients + loss), clean, step."""
    import torch.distributed as dist

    params = list(module.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.flatten() for g in grads] + [loss.detach().reshape(1).to(grads[0].dtype)])
    if self.info.enabled:
        dist.all_reduce(flat)
        flat /= self.info.world_size
    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
    offset = 0
    for p in params:
        if p.grad is None:
            p.grad = torch.empty_like(p)
        p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))  # flat [N] -> p's shape
        offset += p.numel()
    opt.step()


def _worker(rank: int, args: argparse.Namespace, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(args.world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import barrier, init_distributed, shutdown
    from opstylegan.training.loop import Trainer

    info = init_distributed(torch.device(args.device))  # gloo on CPU; NCCL and the GPU of LOCAL_RANK on CUDA
    cfg = TrainConfig(data="<random>", preset=args.preset, overparam=args.overparam, batch=args.batch, workers=0,
                      aug="noaug", seed=0)
    data = RandomImages(args.batch, args.channels, args.res)
    tr = Trainer(cfg, info=info, dataset=data)  # type: ignore[arg-type]
    reals = data.images[rank * tr.batch_gpu:(rank + 1) * tr.batch_gpu].to(info.device).float() / 127.5 - 1

    def wait() -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        barrier(info)

    original = type(tr)._finish_phase
    variants = {"sync": original, "nosync": _finish_phase_nosync}
    for _ in range(2):  # warm-up, both variants
        for fn in variants.values():
            tr._finish_phase = fn.__get__(tr)  # type: ignore[method-assign]
            tr.train_step(reals)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for block in range(args.blocks):
        order = list(variants.items())
        for name, fn in order if block % 2 == 0 else order[::-1]:  # ABBA: neither variant always goes first
            tr._finish_phase = fn.__get__(tr)  # type: ignore[method-assign]
            wait()
            t0 = time.perf_counter()
            for _ in range(args.block):
                tr.train_step(reals)
            wait()
            times[name].append((time.perf_counter() - t0) / args.block)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)
    shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=int, default=2, help="gloo processes")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--overparam", action="store_true")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8, help="global batch (split over the processes)")
    ap.add_argument("--block", type=int, default=8, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=6, help="blocks per variant (even: each order equally often)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = f"/tmp/bench_ddp_sync-{os.getpid()}.json"
    mp.start_processes(_worker, args=(args, port, out), nprocs=args.world, join=True, start_method="spawn")
    with open(out) as f:
        times = json.load(f)
    os.unlink(out)
    print(f"{args.world} {'gloo' if args.device == 'cpu' else 'NCCL'} processes, {args.preset} {'overparam' if args.overparam else 'baseline'}, "
          f"{args.res} px, global batch {args.batch}, {args.blocks} blocks of {args.block} steps per variant")
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, v in times.items():
        print(f"{name:7s} median {med[name] * 1000:8.1f} ms/step   blocks: "
              + ", ".join(f"{t * 1000:.1f}" for t in v))
    print(f"sync / nosync = {med['sync'] / med['nosync']:.3f}")


if __name__ == "__main__":
    main()
