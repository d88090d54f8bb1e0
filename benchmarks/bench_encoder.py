"""The encoder against the projector: speed of the encoder alone, and LPIPS / PSNR of the encoder alone, of
encoder + N refinement steps and of N steps from w_avg (the paper's protocol), on the same images.

Every configuration is its own projector run (the pull of the first half depends on the number of steps, so
"25 steps" is a 25-step run, not step 25 of a longer one). The pull ablation runs encoder +
``--ablation-steps`` with the pull toward the encoder's answer (the default), toward w_avg, and without a pull.

    OMP_NUM_THREADS=1 python benchmarks/bench_encoder.py --model fmnist32-overparam \\
        --encoder runs/00000-fmnist32_encoder-overparam/encoder-latest --images examples/fmnist \\
        --out out/bench_encoder.json

Speed: the median over ``--reps`` timed calls of ``encode`` after 2 warm-up calls, at batch 1 and batch 32 (the
images repeated to 32), in ms per image and images/s, with the thread count and the machine's load average.
Figures are written to ``--out`` (JSON) after every configuration, so a stopped run keeps what it measured.

``--outdir DIR`` runs every configuration as a resumable ``opstylegan invert`` run folder under DIR (one per
configuration, latents and per-image figures kept, a stopped benchmark resumes where it was): the issue's
protocol, the first 100 test images, with the paper's 1000 steps from w_avg as ``--reference-steps``:

    OMP_NUM_THREADS=1 python benchmarks/bench_encoder.py --model fmnist32-overparam --images data/targets \
        --num 100 --steps 25,50,100,200 --reference-steps 1000 --ablation-steps 0 --batch 50 \
        --outdir out/bench-W --out out/bench_encoder_W.json

``--paper-size`` times an untrained encoder of the paper's configuration instead (256 px RGB, W with R = 512,
C = 512; speed depends on the architecture only) at batch 1 and 8:

    OMP_NUM_THREADS=1 python benchmarks/bench_encoder.py --paper-size --reps 5 --out out/bench_encoder_256.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def timed_encode(E: Any, x: torch.Tensor, reps: int) -> float:
    """Median seconds of one ``encode(E, x)`` call."""
    from opstylegan.encoder import encode

    for _ in range(2):
        encode(E, x)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        encode(E, x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def summary(res: Any) -> dict[str, float]:
    q = torch.quantile(res.lpips.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    psnr = float(torch.quantile(res.psnr.double(), 0.5))
    return {"lpips_median": q[1], "lpips_q1": q[0], "lpips_q3": q[2], "psnr_median": psnr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fmnist32-overparam")
    p.add_argument("--encoder", default=None, help="encoder folder [default: the model folder's encoder/]")
    p.add_argument("--images", default="examples/fmnist")
    p.add_argument("--steps", default="25,50,100", help="refinement / projector step counts")
    p.add_argument("--ablation-steps", type=int, default=50,
                   help="steps of the pull ablation (0: skip it)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--skip-quality", action="store_true", help="speed only")
    p.add_argument("--paper-size", action="store_true", help="speed of a 256 px, R = 512 encoder only")
    p.add_argument("--reference-steps", default="",
                   help="step counts run from w_avg only, e.g. 1000 (the paper's protocol)")
    p.add_argument("--encoder-steps", default="", help="step counts run from the encoder only")
    p.add_argument("--add-run", nargs=2, action="append", default=[], metavar=("STEPS", "FOLDER"),
                   help="add an existing `opstylegan invert` run folder of the same images, started at w_avg with "
                        "STEPS steps and the default protocol (e.g. table 2's), as the row 'w_avg, STEPS steps'")
    p.add_argument("--num", type=int, default=0, help="the first N images only [default: all]")
    p.add_argument("--outdir", type=Path, default=None,
                   help="run each configuration as a resumable invert run folder under this folder")
    p.add_argument("--batch", type=int, default=50, help="images per chunk with --outdir")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from opstylegan.encoder import Encoder, EncoderConfig, load_encoder, model_encoder_path

    if args.paper_size:
        E = Encoder(EncoderConfig()).eval()
        res: dict[str, Any] = {"config": E.cfg.to_dict(), "parameters": sum(p.numel() for p in E.parameters()),
                               "threads": torch.get_num_threads()}
        for b in (1, 8):
            sec = timed_encode(E, torch.rand(b, 3, 256, 256) * 2 - 1, args.reps)
            res[f"batch{b}"] = {"ms_per_image": 1000 * sec / b, "images_per_s": b / sec}
        res["load_average"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        return
    from opstylegan.inversion import invert
    from opstylegan.inversion.projector import InversionOptions
    from opstylegan.inversion.runs import collect_images, invert_images, load_target
    from opstylegan.metrics.lpips import LPIPS
    from opstylegan.models.generator import Generator
    from opstylegan.pretrained import resolve_model

    model_dir = resolve_model(args.model)
    G = Generator.from_pretrained(model_dir)
    enc_path = Path(args.encoder) if args.encoder else model_encoder_path(model_dir)
    E = load_encoder(enc_path, G)
    items = collect_images([args.images])
    if args.num:
        items = items[:args.num]
    x = torch.cat([load_target(it, G) for it in items])
    out: dict[str, Any] = {"model": str(args.model), "encoder": str(enc_path), "images": args.images, "n": len(x),
                           "space": E.space, "threads": torch.get_num_threads(),
                           "encoder_parameters": sum(p.numel() for p in E.parameters())}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    speed = {}
    for b in (1, 32):
        xb = x[:1] if b == 1 else x.repeat(-(-32 // len(x)), 1, 1, 1)[:32]
        sec = timed_encode(E, xb, args.reps)
        speed[f"batch{b}"] = {"ms_per_image": 1000 * sec / b, "images_per_s": b / sec}
    out["speed"] = {**speed, "load_average": os.getloadavg()}
    save()
    if args.skip_quality:
        return

    lpips = LPIPS("vgg", resize_to=256)
    fp = G.fingerprint()
    rows: dict[str, Any] = {}
    out["quality"] = rows

    def run(name: str, **kw: Any) -> None:
        t = time.perf_counter()
        if args.outdir is None:
            res = invert(G, x, E.space, lpips=lpips, fingerprint=fp, **kw)
            rows[name] = {**summary(res), "seconds": time.perf_counter() - t}
        else:
            rows[name] = run_folder(name, **kw)
            # a run resumed from finished chunks did not take its whole time here
            rows[name]["seconds"] = time.perf_counter() - t if not rows[name]["reused_images"] else None
        save()

    def run_folder(name: str, **kw: Any) -> dict[str, Any]:
        if kw.get("encoder") is not None:
            kw["encoder"] = str(enc_path.resolve())
        folder = args.outdir / name.replace(" + ", "+").replace(", ", "-").replace(" ", "-")
        summ = invert_images(G, items, [E.space], folder, InversionOptions(**kw), batch=args.batch, lpips=lpips,
                             model_source=str(args.model), on_error="fail")
        assert summ is not None
        return row_of(summ, folder)

    def row_of(summ: dict[str, Any], folder: Path) -> dict[str, Any]:
        r = summ["results"][E.space]
        return {"lpips_median": r["lpips"]["median"], "lpips_q1": r["lpips"]["q1"], "lpips_q3": r["lpips"]["q3"],
                "psnr_median": r["psnr"]["median"], "folder": str(folder), "reused_images": summ["reused_images"],
                "per_image_lpips": [v["lpips"] for v in r["per_image"].values()]}

    def step_list(text: str) -> list[int]:
        return [int(s) for s in text.split(",") if s]

    steps = step_list(args.steps)
    run("encoder alone", init="encoder", encoder=E, steps=0)
    for s in steps:
        run(f"encoder + {s} steps", init="encoder", encoder=E, steps=s)
        run(f"w_avg, {s} steps", steps=s)
    for s in step_list(args.encoder_steps):
        run(f"encoder + {s} steps", init="encoder", encoder=E, steps=s)
    for s in step_list(args.reference_steps):
        run(f"w_avg, {s} steps", steps=s)
    for s, folder in args.add_run:
        summ = json.loads((Path(folder) / "summary.json").read_text())
        o, done = summ["options"], summ["results"].get(E.space, {}).get("images")
        protocol = InversionOptions(steps=int(s)).to_dict()  # the defaults: the paper's protocol from w_avg
        same = {k: protocol[k] for k in ("steps", "init", "lr", "reg_strength", "reg_until", "loss")}
        if summ["fingerprint"] != fp or any(o.get(k) != v for k, v in same.items()) or done != len(items):
            raise SystemExit(f"{folder}: not a finished {s}-step run from w_avg of these {len(items)} images in "
                             f"{E.space} with this model and the default protocol")
        rows[f"w_avg, {s} steps"] = {**row_of(summ, Path(folder)), "seconds": None, "added_from": str(folder)}
        save()
    if args.ablation_steps:
        s = args.ablation_steps
        run(f"encoder + {s} steps, pull toward w_avg", init="encoder", encoder=E, steps=s, reg_toward="w_avg")
        run(f"encoder + {s} steps, no pull", init="encoder", encoder=E, steps=s, reg_strength=1.0)


if __name__ == "__main__":
    main()
