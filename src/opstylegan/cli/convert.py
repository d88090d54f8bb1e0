"""`opstylegan convert`: an NVIDIA StyleGAN2 network pickle -> an opstylegan model folder, no code executed."""

from __future__ import annotations

from pathlib import Path

import click

EXAMPLES = """
\b
Examples:
  opstylegan convert ffhq.pkl models/ffhq                      # G_ema, NVIDIA's noise_mode='const'
  opstylegan convert ffhq.pkl models/ffhq-D --which D          # the discriminator (to fine-tune)
  opstylegan convert network-snapshot-001000.pkl models/mine --noise none
  opstylegan invert --model models/ffhq --images faces/ --space w+ --outdir out/proj
"""


@click.command(name="convert", epilog=EXAMPLES)
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--which", type=click.Choice(["G_ema", "G", "D"]), default="G_ema",
              help="Which network of the snapshot to convert.")
@click.option("--noise", type=click.Choice(["const", "none"]), default="const",
              help="const: keep each layer's fixed noise image, so G(z) equals NVIDIA's noise_mode='const' "
                   "(their generate.py default); none: leave the noise out (noise_mode='none').")
@click.option("--overwrite/--no-overwrite", default=False, help="Replace DEST if it exists.")
def command(src, dest, which, noise, overwrite):
    """Convert an NVIDIA stylegan2-ada / stylegan3 (StyleGAN2) pickle into a model folder, safely."""
    from opstylegan.io.nvidia import NvidiaPickleError, convert_pickle

    out = Path(dest)
    if out.exists() and not overwrite:
        raise click.UsageError(f"{str(out)!r} exists; pass --overwrite to replace it")
    if which == "D" and noise != "const":
        raise click.UsageError("--noise applies to generators only; leave it out with --which D")
    try:
        path = convert_pickle(src, out, which=which, noise=noise)
    except (NvidiaPickleError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    from opstylegan.io.checkpoint import read_model_json

    cfg = read_model_json(path)["config"]
    shape = f"{cfg['img_channels']}x{cfg['img_resolution']}x{cfg['img_resolution']}"
    if which == "D":
        click.echo(f"wrote the discriminator ({shape}) to {path}")
    else:
        click.echo(f"wrote {which} ({shape}, z {cfg['z_dim']}, w {cfg['w_dim']}, {cfg['mapping_layers']} mapping "
                   f"layers, noise {'const' if cfg.get('const_noise') else 'none'}) to {path}")
        click.echo(f"use it as --model {path} (e.g. opstylegan generate --model {path} --seeds 0-7 --outdir out)")
