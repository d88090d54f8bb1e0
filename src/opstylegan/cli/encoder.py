"""`opstylegan encoder train`: train an encoder image -> latent (W or w+) for one generator; exact --resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from opstylegan.cli.common import device_option, model_option, resolve_device

EPILOG = """\b
Examples:
  opstylegan encoder train --model fmnist32-overparam --data data/fmnist32 --outdir runs --kimg 200
  opstylegan encoder train --model fmnist32-baseline --data data/fmnist32 --outdir runs --kimg 200
  opstylegan encoder train --resume runs/00000-fmnist32_encoder-overparam --kimg 400
  opstylegan invert --images photos/ --init encoder --encoder runs/00000-fmnist32_encoder-overparam/encoder-latest \\
      --steps 100 --outdir out/inv
"""

# Options that define a run; with --resume they come from the run's config.json.
_RUN_OPTIONS = ("model", "data", "outdir", "space", "batch", "lr", "latent_weight", "lpips_weight", "mse_weight",
                "reg_weight", "lpips_net", "channel_base", "channel_max", "features", "num_basis", "tick", "snap",
                "seed", "mirror")


@click.group(name="encoder", context_settings={"show_default": True})
def command() -> None:
    """Encoders: image -> latent in one pass (W for overparameterized models, w+), to start an inversion."""


@command.command(name="train", epilog=EPILOG, context_settings={"show_default": True})
@model_option(help="The generator (folder or shipped name) the encoder is for.")
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              help="Training images: a dataset built by `opstylegan dataset` (training split only).")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              help="Parent of the auto-numbered run folder NNNNN-<dataset>_encoder-<overparam|baseline>.")
@click.option("--space", type=click.Choice(["W", "w+"]), default=None,
              help="Latent predicted [default: W for overparam models, w+ for the baseline].")
@click.option("--kimg", type=click.FloatRange(0, min_open=True), default=None,
              help="Train until this many thousand real images [default: 100; with --resume: the run's].")
@click.option("--batch", type=click.IntRange(1), default=16, help="Real images per step (plus as many generated).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.001, help="Adam learning rate.")
@click.option("--latent-weight", type=click.FloatRange(0), default=1.0, help="Latent regression (generated pairs).")
@click.option("--lpips-weight", type=click.FloatRange(0), default=1.0, help="LPIPS of the reconstructions.")
@click.option("--mse-weight", type=click.FloatRange(0), default=1.0, help="Pixel MSE of the reconstructions.")
@click.option("--lpips-net", type=click.Choice(["alex", "vgg"]), default="alex",
              help="LPIPS network of the training loss (alex: ~20x cheaper on a CPU; evaluation stays VGG).")
@click.option("--reg-weight", type=click.FloatRange(0), default=1.0,
              help="Prior: penalty on rows outside the mapping's distribution.")
@click.option("--channel-base", type=click.IntRange(1), default=None, help="Encoder width [default: the model's].")
@click.option("--channel-max", type=click.IntRange(1), default=None, help="Encoder width cap [default: the model's].")
@click.option("--features", type=click.IntRange(1), default=512, help="Feature vector length F.")
@click.option("--num-basis", type=click.IntRange(1), default=32, help="Basis rows K (rank of the offsets).")
@click.option("--tick", type=click.FloatRange(0, min_open=True), default=1.0, help="kimg per tick (one stats line).")
@click.option("--snap", type=click.IntRange(1), default=10, help="Snapshot every this many ticks.")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed of weights, generated pairs and data order.")
@click.option("--mirror", is_flag=True, help="Add x-flipped copies of the training images.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder from its newest complete training state.")
@device_option
@click.pass_context
def train(ctx: click.Context, model: str, data: Path | None, outdir: Path, space: str | None, kimg: float | None,
          batch: int, lr: float, latent_weight: float, lpips_weight: float, mse_weight: float, reg_weight: float,
          lpips_net: str, channel_base: int | None, channel_max: int | None, features: int, num_basis: int,
          tick: float, snap: int, seed: int, mirror: bool, resume: Path | None, device: str) -> None:
    """Train an encoder for a generator on real images and generated (image, latent) pairs.

    Writes into one run folder: config.json (resolved), log.txt, stats.jsonl (one line per tick),
    recon-<kimg>.png (real images | reconstructions), encoder-<kimg>/ and encoder-latest/ (safetensors + JSON;
    `opstylegan invert --init encoder --encoder DIR`), state-<kimg>.pt (exact resume). Copy a finished
    encoder to <model folder>/encoder/ to make it the model's default for `invert --init encoder`.
    """
    from opstylegan.config import ConfigError
    from opstylegan.data.build import DatasetError
    from opstylegan.encoder.train import EncoderTrainConfig, train_encoder
    from opstylegan.io.checkpoint import CheckpointError
    from opstylegan.latent import LatentError
    from opstylegan.training.state import StateError

    if resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in _RUN_OPTIONS
                 if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--resume continues a run with its own config.json; {', '.join(given)} cannot "
                                   f"be changed (only --kimg and --device can)")
    elif data is None:
        raise click.UsageError("give --data DATASET for a new run, or --resume RUN_DIR")
    dev = resolve_device(device)
    ui = _ConsoleUI()
    try:
        cfg = None
        if resume is None:
            cfg = EncoderTrainConfig(model=model, data=str(data), space=space, kimg=kimg or 100.0, batch=batch, lr=lr,
                                     latent_weight=latent_weight, lpips_weight=lpips_weight, mse_weight=mse_weight,
                                     reg_weight=reg_weight, lpips_net=lpips_net, channel_base=channel_base,
                                     channel_max=channel_max, features=features, num_basis=num_basis,
                                     tick_kimg=tick, snap=snap, seed=seed, mirror=mirror)
        result = train_encoder(cfg, outdir=outdir, resume=resume, kimg=kimg if resume is not None else None,
                               device=dev, progress=ui.progress, callback=ui.callback)
    except (ConfigError, DatasetError, StateError, CheckpointError, LatentError, FileNotFoundError, ValueError,
            FloatingPointError) as e:
        raise click.ClickException(str(e)) from None
    finally:
        ui.close()
    ui.echo(f"done: {result.run_dir} (kimg {result.last_tick.get('kimg', 'already reached')}); the encoder is "
            f"{result.run_dir / 'encoder-latest'}")


class _ConsoleUI:
    """Progress bar, console lines and log.txt."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.run_dir: Path | None = None

    def echo(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            click.echo(line)

    def log(self, line: str) -> None:
        self.echo(line)
        if self.run_dir is not None:
            with open(self.run_dir / "log.txt", "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    def progress(self, cur_nimg: int, total_nimg: int, terms: dict[str, float]) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total_nimg / 1000, initial=cur_nimg / 1000, unit="kimg", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]")
        self.bar.n = cur_nimg / 1000
        self.bar.set_postfix({k: f"{terms[k]:.3f}" for k in ("lpips_real", "latent", "reg")}, refresh=False)
        self.bar.update(0)

    def callback(self, event: str, data: dict[str, Any]) -> None:
        if event == "run_dir":
            self.run_dir = Path(data["run_dir"])
            self.log(f"run folder: {self.run_dir}")
        elif event == "resume":
            for skipped in data["skipped"]:
                self.log(f"WARNING: skipped an unreadable state: {skipped}")
            self.log(f"resuming from {data['state']} (kimg {data['cur_nimg'] / 1000:.3f})")
        elif event == "tick":
            loss = " ".join(f"{k} {v:.4f}" for k, v in data["loss"].items())
            self.log(f"tick {data['tick']} kimg {data['kimg']:.3f} sec/kimg {data['sec_per_kimg']:.2f} {loss}")
        elif event == "snapshot":
            self.log(f"snapshot kimg {data['kimg']:.3f}: {Path(data['encoder']).name}, {Path(data['state']).name}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
