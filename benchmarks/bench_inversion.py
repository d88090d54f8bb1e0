"""Inversion throughput: image-steps per second vs batch size, and the batched / one-by-one ratio.

Usage:
    python benchmarks/bench_inversion.py --preset tiny --resolution 32 --overparam --space W --batches 1,4,16
    python benchmarks/bench_inversion.py --preset auto --resolution 256 --overparam --space W \
        --batches 1,4,16,32,64,100 --device cuda --autocast bf16

The generator has random weights (speed does not depend on them). Each batch size runs ``--warmup`` steps,
then ``--steps`` timed steps of the real projector (:func:`opstylegan.inversion.invert`, LPIPS-VGG loss,
paper protocol). Prints a markdown table and, with ``--json``, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from opstylegan.config import preset
from opstylegan.inversion import invert
from opstylegan.metrics.lpips import LPIPS
from opstylegan.models.generator import Generator


def measure(G: Generator, lpips: LPIPS, space: str, batch: int, steps: int, warmup: int,
            autocast: torch.dtype | None) -> float:
    """Image-steps per second of `invert` on `batch` random targets (warm-up excluded)."""
    dev = G.w_avg.device
    targets = torch.rand(batch, G.img_channels, G.img_resolution, G.img_resolution, device=dev) * 2 - 1
    fp = G.fingerprint()
    times: list[float] = []

    def tick(_p: object) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter())

    invert(G, targets, space, steps=warmup + steps, lpips=lpips, fingerprint=fp, autocast=autocast, progress=tick)
    elapsed = times[-1] - times[warmup - 1] if warmup > 0 else times[-1] - times[0]
    counted = steps if warmup > 0 else steps - 1
    return batch * counted / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "auto"])
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--overparam", action="store_true")
    ap.add_argument("--space", default=None, help="default: the model's native space")
    ap.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per batch size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--autocast", choices=["none", "fp16", "bf16"], default="none")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="write the figures here")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    G = Generator(preset(a.preset, img_resolution=a.resolution, overparam=a.overparam).generator).to(dev).eval()
    space = a.space or G.native_space
    lpips = LPIPS("vgg", resize_to=256).to(dev)
    autocast = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}[a.autocast]
    batches = [int(b) for b in a.batches.split(",")]
    rows = []
    for b in batches:
        rate = measure(G, lpips, space, b, a.steps, a.warmup, autocast)
        rows.append({"batch": b, "image_steps_per_s": rate})
    base = next((r["image_steps_per_s"] for r in rows if r["batch"] == 1), None)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or 'cpu'}, " \
                                                                               f"{torch.get_num_threads()} threads)"
    print(f"# {a.preset} {a.resolution}px overparam={a.overparam} space={space} autocast={a.autocast} on {device_name}")
    print("| batch | image-steps/s | vs one-by-one | 100 images x 1000 steps |")
    print("| ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['image_steps_per_s'] / base:.2f}x" if base else "-"
        r["speedup_vs_batch1"] = r["image_steps_per_s"] / base if base else None
        r["seconds_for_100x1000"] = 100 * 1000 / r["image_steps_per_s"]
        print(f"| {r['batch']} | {r['image_steps_per_s']:.2f} | {ratio} | {r['seconds_for_100x1000']:.0f} s |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "resolution": a.resolution, "overparam": a.overparam, "space": space,
                       "device": device_name, "autocast": a.autocast, "steps": a.steps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
