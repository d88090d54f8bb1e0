#!/usr/bin/env python
"""Trains an encoder for a model and ships it in the model's folder (``<model>/encoder/``) with a model card and
the reference latents that tests/test_encoder.py checks.

    OMP_NUM_THREADS=1 python scripts/ship_encoder.py fmnist32-overparam --data data/fmnist32 --kimg 100 --outdir runs
    OMP_NUM_THREADS=1 python scripts/ship_encoder.py fmnist32-baseline --data data/fmnist32 --kimg 100 --outdir runs
    python scripts/ship_encoder.py fmnist32-overparam --resume runs/00003-fmnist32_encoder-overparam --kimg 150

MODEL is a shipped model's name (its folder in src/opstylegan/pretrained) or a model folder. The data must be
a dataset built by ``opstylegan dataset`` from a training split (its dataset.json says ``"split": "train"``):
test images are never trained on. The training run is an ordinary ``opstylegan encoder train`` run folder under
--outdir (resume it with --resume). When it is done, its ``encoder-latest`` is written to ``<model>/encoder/``
(or --dest) with: config.json + model.safetensors (training config recorded without machine paths: the
dataset by name and sha256), reference.json (latents of seeds 0-3's images), and MODEL_CARD.md (architecture,
data, training, the encoder-alone LPIPS / PSNR on --examples, its speed at batch 1 and 32).

Ship the model first, then its encoder: shipping a model (scripts/ship_model.py) rewrites the model folder,
encoder/ included, and a retrained model refuses an encoder trained for the old one (fingerprint).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ship_model import dataset_identity  # noqa: E402

from opstylegan.data.build import DatasetError, read_metadata  # noqa: E402
from opstylegan.encoder import (  # noqa: E402
    ENCODER_DIR,
    Encoder,
    EncoderTrainConfig,
    check_reference,
    encode,
    load_encoder,
    train_encoder,
    write_reference,
)
from opstylegan.io.atomic import write_text  # noqa: E402
from opstylegan.models.generator import Generator  # noqa: E402
from opstylegan.pretrained import SHIPPED, resolve_model  # noqa: E402


def check_training_split(data: Path) -> None:
    """Refuses a dataset that is not a training split (test images must stay unseen)."""
    meta = read_metadata(data)
    if meta.get("split") != "train":
        raise DatasetError(f"{data}: its dataset.json records split {meta.get('split')!r}; ship encoders trained on a "
                           f"training split only (build one with `opstylegan dataset` from the train files)")


def encoder_figures(E: Encoder, G: Generator, examples: Path) -> dict[str, Any]:
    """LPIPS (VGG) / PSNR of G(E(x)) on the example images, and the encoder's CPU speed at batch 1 and 32."""
    from opstylegan.inversion.projector import mse_psnr
    from opstylegan.inversion.runs import collect_images, load_target
    from opstylegan.metrics.lpips import LPIPS

    items = collect_images([examples])
    x = torch.cat([load_target(it, G) for it in items])
    with torch.no_grad():
        rec = G.synthesis(encode(E, x), E.space, force_fp32=True).clamp(-1, 1)
        lp = LPIPS("vgg", resize_to=256)(rec, x)
    _, psnr = mse_psnr(rec, x)
    speed = {}
    for b in (1, 32):
        xb = x.repeat(-(-b // len(x)), 1, 1, 1)[:b]
        encode(E, xb)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            encode(E, xb)
            times.append(time.perf_counter() - t)
        sec = sorted(times)[len(times) // 2]
        speed[b] = {"ms_per_image": 1000 * sec / b, "images_per_s": b / sec}
    def median(v: torch.Tensor) -> float:  # interpolated, as summary.json
        return float(torch.quantile(v.double(), 0.5))

    return {"images": len(x), "lpips_median": median(lp), "psnr_median": median(psnr),
            "speed": speed, "threads": torch.get_num_threads(), "load_average": os.getloadavg()}


def model_card(name: str, E: Encoder, G: Generator, run: Path, cfg: dict[str, Any], figs: dict[str, Any],
               examples: Path) -> str:
    c = E.cfg
    params = sum(p.numel() for p in E.parameters())
    ds = cfg["dataset"]
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]
    seconds = sum(s["sec_per_tick"] for s in stats)
    last = stats[-1]["loss"] if stats else {}
    s1, s32 = figs["speed"][1], figs["speed"][32]
    rows = [
        ("network", f"residual conv backbone {c.img_resolution} px -> 4x4 (channel_base {c.channel_base}, channel_max "
                    f"{c.channel_max}), {c.features} features, head of {c.num_basis} basis rows mixed per row, "
                    f"offsets from w_avg in units of the mapping's std; {params:,} parameters"),
        ("data", f"`{ds['name']}`: {ds['count']:,} training images ({ds['channels']} x {ds['resolution']} px), "
                 f"images.npy sha256 `{ds['sha256']['images.npy'][:16]}...`; test images never seen"),
        ("training", f"{cfg['kimg']:g} kimg of real images + as many generated pairs, batch {cfg['batch']}, Adam lr "
                     f"{cfg['lr']:g}; loss = {cfg['latent_weight']:g} latent + {cfg['lpips_weight']:g} "
                     f"LPIPS-{cfg['lpips_net']} + {cfg['mse_weight']:g} MSE + {cfg['reg_weight']:g} prior; seed "
                     f"{cfg['seed']}; {seconds / 60:.1f} minutes"),
        ("last tick's losses", ", ".join(f"{k} {v:.4f}" for k, v in last.items())),
        (f"encoder alone, {figs['images']} images of `{examples.as_posix()}`",
         f"LPIPS (VGG) median {figs['lpips_median']:.4f}, PSNR median {figs['psnr_median']:.2f} dB"),
        (f"speed (CPU, {figs['threads']} thread(s), load average {figs['load_average'][0]:.1f})",
         f"batch 1: {s1['ms_per_image']:.2f} ms/image ({s1['images_per_s']:.0f} images/s); batch 32: "
         f"{s32['ms_per_image']:.2f} ms/image ({s32['images_per_s']:.0f} images/s)"),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return f"""# Encoder for {name}

An encoder image -> {c.space} latent ({c.num_rows} x {c.w_dim}) for the model in the folder above (generator
fingerprint `{c.generator_fingerprint[:16]}...`; refused by any other model). Use it with
`opstylegan invert --model {name} --init encoder` (then `--steps 0` for the encoder's answer alone), or
`opstylegan.encoder.encode(E, images)`. Design and losses: docs/ENCODER.md.

| | |
| --- | --- |
{table}

Reproduce: `python scripts/ship_encoder.py {name} --data data/{ds['name']} --kimg {cfg['kimg']:g} --outdir runs`
(training run `{run.name}`). `reference.json` holds the latents of the images of seeds 0-3
(truncation 0.7); tests/test_encoder.py checks that the encoder still predicts them.
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="shipped model name or model folder")
    p.add_argument("--data", type=Path, help="training split built by `opstylegan dataset` (new runs)")
    p.add_argument("--outdir", type=Path, default=Path("runs"), help="parent of the training run folder")
    p.add_argument("--resume", type=Path, default=None, help="continue this encoder run instead of starting one")
    p.add_argument("--kimg", type=float, default=None, help="thousands of real images [default: 100]")
    p.add_argument("--space", choices=["W", "w+"], default=None, help="[default: W overparam, w+ baseline]")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "fmnist",
                   help="images for the model card's encoder-alone figures")
    p.add_argument("--dest", type=Path, default=None, help="where to write the encoder [default: <model>/encoder]")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    model_dir = resolve_model(args.model).resolve()
    dest = args.dest or model_dir / ENCODER_DIR
    name = args.model if args.model in SHIPPED else model_dir.name

    def on_event(event: str, data: dict[str, Any]) -> None:
        if event in ("run_dir", "resume", "snapshot"):
            print(f"{event}: {data}", flush=True)
        elif event == "tick":
            print(f"tick {data['tick']} kimg {data['kimg']:.3f} " +
                  " ".join(f"{k} {v:.4f}" for k, v in data["loss"].items()), flush=True)

    try:
        if args.resume is not None:
            result = train_encoder(resume=args.resume, kimg=args.kimg, device=args.device, callback=on_event)
        else:
            if args.data is None:
                sys.exit("error: give --data (a training split) for a new run, or --resume RUN")
            check_training_split(args.data)
            cfg = EncoderTrainConfig(model=str(model_dir), data=str(args.data), space=args.space,
                                     kimg=args.kimg or 100.0, batch=args.batch, seed=args.seed)
            result = train_encoder(cfg, outdir=args.outdir, device=args.device, callback=on_event)
        data = Path(result.config.data)
        check_training_split(data)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

    G = Generator.from_pretrained(model_dir)
    E = load_encoder(result.run_dir / "encoder-latest", G)
    training_config = {**result.config.to_dict(), "adam_betas": list(result.config.adam_betas),
                       "model": name, "data": data.name, "dataset": dataset_identity(data)}
    E.save_pretrained(dest, metadata={"shipped_for": name, "run": result.run_dir.name,
                                      "kimg": result.config.kimg, "training_config": training_config})
    E = load_encoder(dest, G)
    write_reference(dest, E, G)
    check_reference(dest, G)
    figs = encoder_figures(E, G, args.examples)
    examples = args.examples.resolve()
    repo = Path(__file__).resolve().parent.parent
    shown = examples.relative_to(repo) if examples.is_relative_to(repo) else Path(examples.name)
    write_text(dest / "MODEL_CARD.md", model_card(name, E, G, result.run_dir, training_config, figs, shown))
    print(f"shipped the encoder of {result.run_dir} as {dest}: LPIPS median {figs['lpips_median']:.4f} on "
          f"{figs['images']} example images; {figs['speed'][1]['ms_per_image']:.2f} ms/image at batch 1")


if __name__ == "__main__":
    main()
