"""`opstylegan generate`: one PNG per seed (and an optional grid) from a model or a fresh tiny one."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from opstylegan.cli.common import SeedList, device_option, load_generator, model_option, resolve_device, write_json
from opstylegan.pretrained import DEFAULT_MODEL

EXAMPLES = """
\b
Examples:
  opstylegan generate --model runs/00000-fmnist/best --seeds 0-7 --trunc 0.7 --outdir out
  opstylegan generate --init tiny --overparam --seeds 0-15 --grid --outdir out/random
"""


@click.command(name="generate", epilog=EXAMPLES)
@model_option(default=None, help="Model folder or shipped model name [default: fmnist32-overparam, unless --init].")
@click.option("--init", "init_preset", type=click.Choice(["tiny", "small", "auto"]),
              help="Instead of --model: a freshly initialised network of this preset (for smoke tests).")
@click.option("--overparam/--baseline", default=False, help="With --init: the overparameterized latent or not.")
@click.option("--resolution", type=click.IntRange(16, 1024), default=32, help="With --init: image size.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", help="With --init: image channels.")
@click.option("--init-seed", type=click.IntRange(0), default=0, help="With --init: seed of the weights.")
@click.option("--seeds", type=SeedList(), default="0-7", help="Seeds, e.g. '0-7,12': one image per seed.")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(-1, 2), default=1.0,
              help="Truncation psi (1 = none, 0 = the mean image).")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to write the images.")
@click.option("--grid/--no-grid", default=False, help="Also write grid.png with all images.")
@click.option("--batch", type=click.IntRange(1), default=16, help="Images per forward pass (does not change them).")
@device_option
def command(model, init_preset, overparam, resolution, channels, init_seed, seeds, truncation_psi, outdir, grid,
            batch, device):
    """Sample images from a generator, one PNG per seed named seedNNNN.png."""
    from opstylegan.config import preset
    from opstylegan.data.images import from_tensor, save_grid, save_image
    from opstylegan.models.generator import Generator

    if model is not None and init_preset is not None:
        raise click.UsageError("give either --model or --init PRESET, not both")
    if init_preset is None:
        model = model or DEFAULT_MODEL
    dev = resolve_device(device)
    if model is not None:
        G = load_generator(model, dev)
        source = str(model)
    else:
        torch.manual_seed(init_seed)
        cfg = preset(init_preset, img_resolution=resolution, img_channels=int(channels), overparam=overparam).generator
        G = Generator(cfg).to(dev).eval()
        source = f"init:{init_preset}(seed={init_seed})"
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    with torch.no_grad(), click.progressbar(length=len(seeds), label="generating", file=None) as bar:
        for i in range(0, len(seeds), batch):
            chunk = seeds[i:i + batch]
            img = from_tensor(G(G.z_from_seeds(chunk), truncation_psi=truncation_psi))  # [b, H, W, C] uint8
            for seed, im in zip(chunk, img, strict=True):
                save_image(out / f"seed{seed:04d}.png", im)
                if grid:
                    images.append(im)
            bar.update(len(chunk))
    if grid:
        save_grid(out / "grid.png", np.stack(images))
    write_json(out / "generate.json", {"model": source, "fingerprint": G.fingerprint(), "seeds": seeds,
                                       "truncation_psi": truncation_psi, "space": G.native_space,
                                       "config": G.cfg.to_dict()})
    click.echo(f"wrote {len(seeds)} image(s){' and grid.png' if grid else ''} to {out}")
