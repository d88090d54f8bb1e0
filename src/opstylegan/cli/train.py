"""`opstylegan train`: train a baseline or overparameterized StyleGAN2; one process, or many with torchrun."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from opstylegan.cli.common import ModelRef, device_option, resolve_device

EPILOG = """\b
Examples:
  opstylegan dataset /usr/share/datasets/fashion-mnist data/fmnist32 --resolution 32 --channels 1 --fit pad
  opstylegan train --data data/fmnist32 --outdir runs --preset tiny --kimg 4 --tick 0.5 --snap 2 --device cpu
  opstylegan train --data data/fmnist32 --outdir runs --preset tiny --kimg 4 --tick 0.5 --snap 2 --overparam
  opstylegan train --data data/ffhq256 --outdir runs --overparam --kimg 25000 --mirror
  torchrun --standalone --nproc_per_node 4 -m opstylegan train --data data/ffhq256 --outdir runs --overparam
  opstylegan train --resume runs/00003-ffhq256-overparam --kimg 30000
  opstylegan train --data data/fmnist32 --outdir runs --overparam --init-from fmnist32-baseline --kimg 50 \
      --upcycle-kimg 12.5 --device cpu
  opstylegan train --data data/ffhq256 --outdir runs --init-from models/ffhq256 --init-d models/ffhq256-D --kimg 500
"""

# Options that define a run; with --resume they come from the run's config.json instead.
_RUN_OPTIONS = ("data", "outdir", "overparam", "preset", "batch", "gamma", "snap", "tick", "seed", "aug", "mirror",
                "fp32", "workers", "lr", "fid_num", "snapshot_pr", "pl_rows", "pl_weight", "row_spread", "style_mixing",
                "init_from", "init_d", "upcycle_kimg", "d_warmup_kimg")


@click.command(name="train", epilog=EPILOG, context_settings={"show_default": True})
@click.option("--data", type=click.Path(exists=True, path_type=Path),
              help="Training set folder built by `opstylegan dataset` (or a folder / zip of square images).")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs"),
              help="Parent of the auto-numbered run folder NNNNN-<dataset>-<baseline|overparam>.")
@click.option("--overparam/--baseline", default=False,
              help="Overparameterized latent matrix, or the StyleGAN2 baseline.")
@click.option("--preset", type=click.Choice(["auto", "small", "tiny"]), default="auto",
              help="Network size: auto = stylegan2-ada 'auto' (the paper), small = one small GPU, tiny = CPU tests.")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train until this many thousand real images (default 25000; with --resume: keep the run's, or "
                   "extend / shorten it, never below where the run already is).")
@click.option("--batch", type=click.IntRange(min=2), default=None,
              help="Total batch over all processes [default: max(min(gpus * min(4096 // res, 32), 64), gpus)].")
@click.option("--gamma", type=click.FloatRange(min=0), default=None,
              help="R1 weight [default: 0.0002 * res^2 / batch]; 0 disables R1.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Adam learning rate [default: 0.0025, 0.002 at 1024 px].")
@click.option("--snap", type=click.IntRange(min=1), default=50, help="Snapshot every this many ticks.")
@click.option("--tick", type=click.FloatRange(min=0, min_open=True), default=4.0,
              help="kimg per tick (one stats line per tick).")
@click.option("--seed", type=click.IntRange(min=0), default=0, help="Seed of weights, latents and augmentation.")
@click.option("--aug", type=click.Choice(["ada", "noaug"]), default="ada", help="ADA augmentation or none.")
@click.option("--mirror", is_flag=True, help="Add x-flipped copies of the training images.")
@click.option("--fp32", is_flag=True, help="No fp16 in the highest-resolution blocks (CUDA mixed precision off).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Data-loading processes [default: 3 on CUDA, 0 on CPU].")
@click.option("--fid-num", type=click.IntRange(min=0), default=0,
              help="At every snapshot, FID of G_ema on this many generated images against the training set "
                   "(Inception, real statistics cached); keeps network-best/ and metrics.jsonl. 0 = off.")
@click.option("--snapshot-pr", is_flag=True,
              help="With --fid-num: also precision and recall (k = 3) at every snapshot, in metrics.jsonl (keeps the "
                   "Inception features of the real images: 8 KB each).")
@click.option("--pl-weight", type=click.FloatRange(min=0), default=2.0, help="Path-length regularizer weight; 0 = off.")
@click.option("--pl-rows", type=click.Choice(["sum", "mean"]), default="sum",
              help="Path length of a latent matrix: 'sum' = each layer's R x C matrix is its latent (the baseline's "
                   "formula); 'mean' = rows averaged like extra layers (pre-0.2 runs; ~sqrt(R) smaller, for ablations).")
@click.option("--row-spread", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              help="Overparam only: each latent row's own share of variance (rows correlated 1 - this); 0.5 is the "
                   "paper's. For ablations.")
@click.option("--style-mixing", type=click.FloatRange(0, 1), default=0.9, help="Style-mixing probability.")
@click.option("--init-from", type=ModelRef(), default=None,
              help="Start from pretrained weights: a generator folder (e.g. from `opstylegan convert`), a shipped "
                   "model's name, or a run folder (G, G_ema, D of its newest state). With --overparam and a "
                   "baseline: upcycling. The networks' config comes from it (--preset is not used).")
@click.option("--init-d", type=ModelRef(), default=None,
              help="With --init-from: a discriminator folder to start D from (`opstylegan convert --which D`).")
@click.option("--upcycle-kimg", type=click.FloatRange(min=0), default=None,
              help="Upcycling: ramp the latent rows from all equal (the baseline's images) to the paper's "
                   "correlation over this many kimg, Z_i = sqrt(1-a) z + sqrt(a) z_i, a: 0 -> 0.5 "
                   "[default: a quarter of --kimg].")
@click.option("--d-warmup-kimg", type=click.FloatRange(min=0), default=0.0,
              help="With --init-from: train only D for this many kimg first (G frozen), so that a D without "
                   "pretrained weights learns to judge the pretrained G before G follows it; the ramp starts after.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Continue the run in this folder from its newest complete training state.")
@device_option
@click.pass_context
def command(ctx: click.Context, data: Path | None, outdir: Path, overparam: bool, preset: str, kimg: float | None,
            batch: int | None, gamma: float | None, lr: float | None, snap: int, tick: float, seed: int, aug: str,
            mirror: bool, fp32: bool, workers: int | None, fid_num: int, snapshot_pr: bool, pl_weight: float,
            pl_rows: str, row_spread: float, style_mixing: float, init_from: str | None, init_d: str | None,
            upcycle_kimg: float | None, d_warmup_kimg: float, resume: Path | None, device: str) -> None:
    """Train a StyleGAN2 (baseline) or the overparameterized StyleGAN2 on a dataset.

    Writes into one run folder: config.json (resolved), log.txt, stats.jsonl (one line per tick), reals.png,
    fakes-<kimg>.png, network-<kimg>/ and network-latest/ (G_ema, loadable by `opstylegan generate --model`),
    and state-<kimg>.pt (everything needed to resume exactly). On N GPUs (or N CPU processes with gloo):
    `torchrun --standalone --nproc_per_node N -m opstylegan train ...` with the same options.
    """
    from opstylegan.config import ConfigError
    from opstylegan.data.build import DatasetError
    from opstylegan.data.images import ImageError
    from opstylegan.io.outdir import OutputPathError, describe_os_error
    from opstylegan.io.lock import RunLockedError
    from opstylegan.training.config import TrainConfig
    from opstylegan.training.distributed import init_distributed, shutdown
    from opstylegan.training.loop import TrainingDiverged, train
    from opstylegan.training.state import StateError

    if resume is not None:
        given = [f"--{k}" for k in _RUN_OPTIONS if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"--resume continues a run with its own config.json; {', '.join(given)} cannot "
                                   f"be changed (only --kimg and --device can)")
    elif data is None:
        raise click.UsageError("give --data DATASET for a new run, or --resume RUN_DIR")
    elif init_from is not None and ctx.get_parameter_source("preset") == ParameterSource.COMMANDLINE:
        raise click.UsageError("--preset cannot be combined with --init-from: the network comes from the model")

    info = init_distributed(resolve_device(device))
    ui = _ConsoleUI(enabled=info.is_main)
    try:
        cfg = None
        if resume is None:
            cfg = TrainConfig(data=str(data), preset=preset, overparam=overparam, kimg=kimg or 25000.0, batch=batch,
                              gamma=gamma, lr=lr, snap=snap, tick_kimg=tick, seed=seed, aug=aug, mirror=mirror,
                              fp32=fp32, workers=workers if workers is not None else
                              (3 if info.device.type == "cuda" else 0), fid_num=fid_num, snapshot_pr=snapshot_pr,
                              pl_weight=pl_weight, pl_rows=pl_rows, row_spread=row_spread,
                              style_mixing_prob=style_mixing, init_from=init_from, init_d=init_d,
                              upcycle_kimg=upcycle_kimg, d_warmup_kimg=d_warmup_kimg)
            _check_outdir(outdir)
        result = train(cfg, outdir=outdir, resume=resume, kimg=kimg if resume is not None else None, info=info,
                       progress=ui.progress, callback=ui.callback)
    except TrainingDiverged as e:
        ui.log(f"ERROR: {e}")
        raise click.ClickException(str(e)) from None
    except (ConfigError, DatasetError, StateError, FileNotFoundError, RunLockedError, OutputPathError,
            ImageError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a disk that fills up, a folder made read-only during the run
        run = ui.run_dir or resume
        hint = (f"; the last complete snapshot is kept: fix this, then continue with `opstylegan train --resume {run}`"
                if run is not None else "")
        ui.log(f"ERROR: {describe_os_error(e)}")
        raise click.ClickException(f"{describe_os_error(e)}{hint}") from None
    finally:
        ui.close()
        shutdown()
    ui.echo(f"done: {result.run_dir} (kimg {result.last_tick.get('kimg', 'already reached')})")


def _check_outdir(outdir: Path) -> None:
    """A file in the way or no permission is refused before the dataset is read; nothing is created (a run that
    cannot start leaves no folder): the nearest existing folder on the way is probed instead."""
    from opstylegan.io.outdir import prepare_outdir

    existing = next(p for p in (outdir, *outdir.parents) if p.exists())
    prepare_outdir(existing if existing.is_dir() else outdir)


class _ConsoleUI:
    """Progress bar, console lines, log.txt and optional TensorBoard scalars (rank 0 only)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.run_dir: Path | None = None
        self.tb: Any = None

    def echo(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            click.echo(line)

    def log(self, line: str) -> None:
        self.echo(line)
        if self.enabled and self.run_dir is not None:
            try:
                with open(self.run_dir / "log.txt", "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
            except OSError:  # a full disk: the line is on the console; the error itself is reported by the caller
                if line.startswith("ERROR"):
                    return
                raise

    def progress(self, cur_nimg: int, total_nimg: int, info: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total_nimg / 1000, initial=(cur_nimg / 1000), unit="kimg", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]")
        self.bar.n = cur_nimg / 1000  # then update(0): redraws at most every mininterval seconds
        post = {"s/kimg": f"{info['sec_per_kimg']:.1f}", "ada_p": f"{info['ada_p']:.3f}"}
        post.update({k: f"{info[k]:.3f}" for k in ("Gmain", "Dmain", "Gpl", "Dr1") if k in info})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(0)

    def callback(self, event: str, data: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if event == "run_dir":
            self.run_dir = Path(data["run_dir"])
            self._open_tensorboard()
            self.log(f"run folder: {self.run_dir}")
        elif event == "start":
            c = data["config"]
            net = "pretrained" if c.get("init_from") else c["preset"]
            self.log(f"training {'overparam' if c['overparam'] else 'baseline'} {net} "
                     f"{c['generator']['img_channels']}x{c['generator']['img_resolution']}px, batch {c['batch']}, "
                     f"gamma {c['gamma']:g}, lr {c['lr']:g}, from kimg {data['cur_nimg'] / 1000:.3f} to {c['kimg']:g}")
            if c.get("init_from"):
                from opstylegan.training.config import TrainConfig
                from opstylegan.training.upcycle import describe

                self.log(describe(TrainConfig.from_dict({**c, "adam_betas": tuple(c["adam_betas"])})))
        elif event == "resume":
            for skipped in data["skipped"]:
                self.log(f"WARNING: skipped an unreadable state: {skipped}")
            if data.get("dropped_stats_lines"):
                self.log(f"WARNING: dropped {data['dropped_stats_lines']} incomplete line(s) of stats.jsonl (written "
                         f"when the run was stopped)")
            self.log(f"resuming from {data['state']} (kimg {data['cur_nimg'] / 1000:.3f})")
            if not data["exact"]:
                self.log(f"WARNING: the state was saved by {data['saved_world_size']} process(es); continuing with "
                         f"fresh per-rank random streams, so this resume is not bit-exact")
        elif event == "tick":
            loss = " ".join(f"{k} {v:.4f}" for k, v in data["loss"].items() if v is not None)
            mem = f"gpumem {data['gpu_peak_mem_gb']:.2f} GB" if "gpu_peak_mem_gb" in data else \
                f"rss {data['cpu_peak_rss_gb']:.2f} GB"
            ada = f" ada_p {data['ada_p']:.3f}" if data["ada_p"] is not None else ""
            self.log(f"tick {data['tick']} kimg {data['kimg']:.3f} sec/kimg {data['sec_per_kimg']:.2f} {loss}"
                     f"{ada} pl_mean {data['pl_mean']:.4f} {mem}")
            if self.tb is not None:
                for k, v in data["loss"].items():
                    if v is not None:
                        self.tb.add_scalar(f"Loss/{k}", v, int(data["kimg"] * 1000))
                for k in ("sec_per_kimg", "ada_p", "pl_mean"):
                    if data.get(k) is not None:
                        self.tb.add_scalar(f"Progress/{k}", data[k], int(data["kimg"] * 1000))
                self.tb.flush()
        elif event == "snapshot":
            self.log(f"snapshot kimg {data['kimg']:.3f}: {Path(data['network']).name}, {Path(data['state']).name}")
            if "fid" in data:
                fid = data["fid"]
                self.log(f"FID {fid['fid']:.3f} ({fid['num_fake']} generated vs {fid['num_real']} real)"
                         f"{' -> network-best' if fid['best'] else ''}")

    def _open_tensorboard(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
        except Exception:  # noqa: BLE001 - any import failure means "not installed"
            return
        self.tb = SummaryWriter(str(self.run_dir))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
