"""Generator forward+backward throughput and peak memory: baseline vs overparameterized, same config.

Timings of the variants are interleaved in one process (repeat k of every variant before repeat k+1) so that
a noisy, shared machine affects them alike; the figure reported is the median over repeats. Peak memory is
torch.cuda.max_memory_allocated on a GPU, and the peak RSS (VmHWM) of a fresh child process per variant on CPU.

    python benchmarks/bench_networks.py --preset small --res 64 --batch 8 --device cpu
    python benchmarks/bench_networks.py --preset auto --res 256 --batch 16 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from benchutil import peak_rss_gib

from opstylegan.config import preset
from opstylegan.models.generator import Generator

# name -> (overparam, fused). 'baseline' uses stylegan2-ada's training path (activation scaling);
# 'baseline-grouped' forces the per-sample-weight path that the style matrix needs.
VARIANTS = {"baseline": (False, None), "baseline-grouped": (False, True), "overparam": (True, None)}


def make(args, variant: str) -> tuple[Generator, bool | None]:
    overparam, fused = VARIANTS[variant]
    torch.manual_seed(0)
    cfg = preset(args.preset, img_resolution=args.res, img_channels=3, overparam=overparam).generator
    if args.fp32:
        cfg = cfg.replace(num_fp16_res=0)
    return Generator(cfg).to(args.device).train(), fused


def step(G: Generator, fused: bool | None, batch: int, device: str) -> None:
    z = G.sample_z(batch, generator=torch.Generator().manual_seed(1), device=device)
    img = G.synthesis(G.mapping(z), fused=fused)
    img.square().mean().backward()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def child_memory(args, variant: str) -> float:
    """Peak RSS (GiB) of a fresh process doing warm-up + 2 steps of one variant (CPU memory figure)."""
    cmd = [sys.executable, __file__, "--child", variant, "--preset", args.preset, "--res", str(args.res),
           "--batch", str(args.batch), "--device", args.device] + (["--fp32"] if args.fp32 else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "auto"])
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--fp32", action="store_true", help="no fp16 blocks (they only apply on CUDA anyway)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        G, fused = make(args, args.child)
        for _ in range(3):
            step(G, fused, args.batch, args.device)
        print(peak_rss_gib())
        return

    names = args.variants.split(",")
    models = {n: make(args, n) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    mem: dict[str, float] = {}
    for G, fused in models.values():  # warm-up (cudnn autotune, allocator)
        step(G, fused, args.batch, args.device)
    for _ in range(args.repeats):
        for n, (G, fused) in models.items():
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                G.zero_grad(set_to_none=True)
                step(G, fused, args.batch, args.device)
            sync(args.device)
            times[n].append((time.perf_counter() - t0) / args.steps)
            if args.device.startswith("cuda"):
                mem[n] = max(mem.get(n, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    if not args.device.startswith("cuda"):
        mem = {n: child_memory(args, n) for n in names}

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"G forward+backward, preset={args.preset} res={args.res} batch={args.batch} on {dev}, "
          f"median of {args.repeats} x {args.steps} steps")
    print(f"{'variant':18s} {'s/step':>8s} {'img/s':>8s} {'peak GiB':>9s} {'time ratio':>10s} {'mem ratio':>9s}")
    ref = "baseline" if "baseline" in names else names[0]
    rows = {}
    for n in names:
        t = statistics.median(times[n])
        rows[n] = {"s_per_step": t, "img_per_s": args.batch / t, "peak_gib": mem[n],
                   "time_ratio": t / statistics.median(times[ref]), "mem_ratio": mem[n] / mem[ref]}
        r = rows[n]
        print(f"{n:18s} {t:8.3f} {r['img_per_s']:8.1f} {mem[n]:9.2f} {r['time_ratio']:10.2f} {r['mem_ratio']:9.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": dev, "args": vars(args), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
