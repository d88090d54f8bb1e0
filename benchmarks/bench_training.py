"""Training throughput (s/kimg) and peak memory: baseline vs overparameterized, same config, one run.

Each timed repeat is `--steps` full training steps (G main, lazy path length, D main, lazy R1, EMA, ADA) of
`Trainer.train_step` on a fixed batch of random "real" images, so data loading is left out. The default 16
steps contain exactly one R1 step and four path-length steps, i.e. the lazy regularizers at their real
frequency. Repeats of the variants are interleaved (repeat k of every variant before repeat k+1) so a noisy,
shared machine affects them alike; the figure is the median over repeats. Peak memory is
torch.cuda.max_memory_allocated on a GPU (the paper's table 4 measure), the peak RSS of a fresh child process
per variant on CPU.

    python benchmarks/bench_training.py                       # CPU: tiny preset, 32 px, batch 16
    python benchmarks/bench_training.py --preset auto --res 256 --batch 16 --device cuda   # the paper's setting
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from benchutil import RandomImages, peak_rss_gib

from opstylegan.training.config import TrainConfig
from opstylegan.training.distributed import DistInfo
from opstylegan.training.loop import Trainer

VARIANTS = ("baseline", "overparam")


def make(args: argparse.Namespace, variant: str) -> tuple[Trainer, torch.Tensor]:
    cfg = TrainConfig(data="<random>", preset=args.preset, overparam=variant == "overparam", batch=args.batch,
                      aug=args.aug, fp32=args.fp32, workers=0, seed=0)
    data = RandomImages(args.batch, args.channels, args.res)
    tr = Trainer(cfg, info=DistInfo(device=torch.device(args.device)), dataset=data)  # type: ignore[arg-type]
    reals = data.images.to(args.device).to(torch.float32) / 127.5 - 1
    return tr, reals


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_memory(args: argparse.Namespace, variant: str) -> float:
    """Peak RSS (GiB) of a fresh process doing `--steps` training steps of one variant (CPU memory figure)."""
    cmd = [sys.executable, __file__, "--child", variant, "--preset", args.preset, "--res", str(args.res),
           "--channels", str(args.channels), "--batch", str(args.batch), "--device", args.device,
           "--steps", str(args.steps), "--aug", args.aug] + (["--fp32"] if args.fp32 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    p.add_argument("--preset", default="auto" if cuda else "tiny", choices=["tiny", "small", "auto"])
    p.add_argument("--res", type=int, default=256 if cuda else 32)
    p.add_argument("--channels", type=int, default=3, choices=[1, 3])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=16, help="training steps per timed repeat (16 = one R1 cycle)")
    p.add_argument("--aug", default="ada", choices=["ada", "noaug"])
    p.add_argument("--fp32", action="store_true", help="no fp16 blocks (they only apply on CUDA anyway)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        tr, reals = make(args, args.child)
        for _ in range(args.steps):
            tr.train_step(reals)
        print(peak_rss_gib())
        return

    trainers = {n: make(args, n) for n in VARIANTS}
    for tr, reals in trainers.values():  # warm-up: allocator, cudnn autotune, the first (regularized) step
        tr.train_step(reals)
    times: dict[str, list[float]] = {n: [] for n in VARIANTS}
    mem: dict[str, float] = {}
    for _ in range(args.repeats):
        for n, (tr, reals) in trainers.items():
            while tr.batch_idx % 16:  # start every repeat at the same point of the lazy-regularizer cycle
                tr.train_step(reals)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                tr.train_step(reals)
            sync(args.device)
            times[n].append((time.perf_counter() - t0) / (args.steps * args.batch) * 1000)  # s per kimg
            if args.device.startswith("cuda"):
                mem[n] = max(mem.get(n, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    if not args.device.startswith("cuda"):
        mem = {n: child_memory(args, n) for n in VARIANTS}

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    g = trainers["baseline"][0].cfg
    print(f"training step, preset={args.preset} res={args.res} channels={args.channels} batch={args.batch} "
          f"aug={args.aug} gamma={g.gamma:g} on {dev}, median of {args.repeats} x {args.steps} steps")
    print(f"{'variant':10s} {'s/kimg':>9s} {'peak GiB':>9s} {'time ratio':>10s} {'mem ratio':>9s}")
    rows = {}
    for n in VARIANTS:
        t = statistics.median(times[n])
        rows[n] = {"s_per_kimg": t, "peak_gib": mem[n], "time_ratio": t / statistics.median(times["baseline"]),
                   "mem_ratio": mem[n] / mem["baseline"], "all_s_per_kimg": times[n]}
        print(f"{n:10s} {t:9.2f} {mem[n]:9.3f} {rows[n]['time_ratio']:10.3f} {rows[n]['mem_ratio']:9.3f}")
    print(f"overparam / baseline: time x{rows['overparam']['time_ratio']:.3f}, "
          f"memory x{rows['overparam']['mem_ratio']:.3f} (paper, 4xA100 at 256 px: x1.056 time, x1.256 memory)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
