"""`opstylegan generate`: one PNG per seed (and an optional grid) from a model or a fresh tiny one."""

from __future__ import annotations

import math
from pathlib import Path

import click
import numpy as np
import torch

from opstylegan.cli.common import SeedList, device_option, load_generator, model_option, resolve_device, write_json
from opstylegan.cli.dataset import power_of_two
from opstylegan.pretrained import DEFAULT_MODEL

def _finite(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number; give e.g. 0.7 (1 = no truncation)")
    return value


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
@click.option("--resolution", type=click.IntRange(16, 1024), default=32, callback=power_of_two,
              help="With --init: image size, a power of two.")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", help="With --init: image channels.")
@click.option("--init-seed", type=click.IntRange(0), default=0, help="With --init: seed of the weights.")
@click.option("--seeds", type=SeedList(), default="0-7", help="Seeds, e.g. '0-7,12': one image per seed.")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(-1, 2), default=1.0, callback=_finite,
              help="Truncation psi (1 = none, 0 = the mean image).")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to write the images.")
@click.option("--grid/--no-grid", default=False, help="Also write grid.png with all images.")
@click.option("--batch", type=click.IntRange(1), default=16, help="Images per forward pass (does not change them).")
@device_option
def command(model, init_preset, overparam, resolution, channels, init_seed, seeds, truncation_psi, outdir, grid,
            batch, device):
    """Sample images from a generator, one PNG per seed named seedNNNN.png."""
    from opstylegan.config import ConfigError, preset
    from opstylegan.data.images import from_tensor, save_grid, save_image
    from opstylegan.io.outdir import OutputPathError, describe_os_error, prepare_outdir
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
        try:
            cfg = preset(init_preset, img_resolution=resolution, img_channels=int(channels),
                         overparam=overparam).generator
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        G = Generator(cfg).to(dev).eval()
        source = f"init:{init_preset}(seed={init_seed})"
    try:
        out = prepare_outdir(outdir)  # a file in the way, no permission: refused before generating
    except OutputPathError as e:
        raise click.ClickException(str(e)) from None
    images = []
    written = 0
    try:
        with torch.no_grad(), click.progressbar(length=len(seeds), label="generating", file=None) as bar:
            for i in range(0, len(seeds), batch):
                chunk = seeds[i:i + batch]
                img = from_tensor(G(G.z_from_seeds(chunk), truncation_psi=truncation_psi))  # [b, H, W, C] uint8
                for seed, im in zip(chunk, img, strict=True):
                    save_image(out / f"seed{seed:04d}.png", im)
                    written += 1
                    if grid:
                        images.append(im)
                bar.update(len(chunk))
        if grid:
            save_grid(out / "grid.png", np.stack(images))
        write_json(out / "generate.json", {"model": source, "fingerprint": G.fingerprint(), "seeds": seeds,
                                           "truncation_psi": truncation_psi, "space": G.native_space,
                                           "config": G.cfg.to_dict()})
    except OSError as e:  # the disk filled up, or the folder was made read-only meanwhile
        raise click.ClickException(f"{describe_os_error(e, out)} ({written} of {len(seeds)} image(s) were written "
                                   f"to {out})") from None
    click.echo(f"wrote {len(seeds)} image(s){' and grid.png' if grid else ''} to {out}")
