"""`opstylegan invert`: invert image files into w, w+, W or W+ (the paper's projector), batched, shardable."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from opstylegan.cli.common import device_option, model_option, resolve_device

EXAMPLES = """
\b
Examples:
  opstylegan invert --model runs/ffhq/best --images photos/ --space W --outdir out/inv
  opstylegan invert --model M --images a.png --images b.jpg --space w+,W,W+ --steps 1000 --batch 16 --outdir out
  opstylegan invert --model M --images photos/ --space W --init random --reg-strength 1 --reg-until 0 --outdir fig11
  torchrun --nproc_per_node 4 -m opstylegan invert --model M --images photos/ --space W --outdir out
\b
Images of any mode and size are accepted: converted to the model's channels (alpha composited on black),
center-cropped to a square and resized to the model resolution (Lanczos; small images are upscaled).
\b
A folder holds one run and is locked while it is written. Repeating the command resumes an interrupted run
(finished chunks are reused); a different run into the same folder is refused unless --overwrite is given.
"""

AUTOCAST = {"none": None, "fp16": "float16", "bf16": "bfloat16"}


def parse_spaces(value: str) -> list[str]:
    """'w+,W' -> ['w+', 'W']; unknown names raise ValueError listing the valid ones."""
    from opstylegan.latent import SPACES

    spaces = [s.strip() for s in value.split(",") if s.strip()]
    if not spaces:
        raise ValueError(f"no latent space given; choose from {list(SPACES)}, e.g. 'W' or 'w+,W,W+'")
    bad = [s for s in spaces if s not in SPACES]
    if bad:
        raise ValueError(f"unknown latent space(s) {bad}; choose from {list(SPACES)} (comma-separated)")
    return list(dict.fromkeys(spaces))


def _spaces_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    try:
        return parse_spaces(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


@click.command(name="invert", epilog=EXAMPLES)
@model_option()
@click.option("--images", multiple=True, required=True, type=click.Path(exists=True),
              help="An image file, folder (recursive) or .zip; repeat for more.")
@click.option("--space", "--space-list", "spaces", callback=_spaces_callback, default=None, metavar="SPACES",
              help="Latent space(s), comma-separated: w, w+ (any model), W, W+ (overparam). "
                   "[default: W for overparam models, w+ for the baseline]")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Run folder to write.")
@click.option("--steps", type=click.IntRange(0), default=1000,
              help="Optimisation steps (0 with --init encoder: the encoder's answer alone).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.05, help="Adam learning rate.")
@click.option("--beta1", type=click.FloatRange(0, 1, max_open=True), default=0.9, help="Adam beta1.")
@click.option("--beta2", type=click.FloatRange(0, 1, max_open=True), default=0.999, help="Adam beta2.")
@click.option("--loss", type=click.Choice(["lpips", "mse"]), default="lpips", help="Loss (LPIPS is VGG16).")
@click.option("--mse-weight", type=click.FloatRange(0), default=0.0, help="Extra pixel-MSE weight (with lpips).")
@click.option("--init", "init", type=click.Choice(["w_avg", "random", "encoder"]), default="w_avg",
              help="Start at w_avg, at a mapped random z (seeded; fig. 11), or at an encoder's prediction.")
@click.option("--encoder", type=click.Path(exists=True), default=None,
              help="With --init encoder: the encoder folder [default: the one in the model's folder, <model>/encoder].")
@click.option("--reg-toward", type=click.Choice(["auto", "w_avg", "init"]), default="auto",
              help="Target of the pull: w_avg, or the starting latent (auto: the start with --init encoder).")
@click.option("--reg-strength", type=click.FloatRange(0, 1), default=0.9,
              help="Pull x <- w_avg + s (x - w_avg) before each step; 1 = off.")
@click.option("--reg-until", type=click.FloatRange(0, 1), default=0.5,
              help="Fraction of the steps with the pull (0 = never, 1 = throughout).")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed of image i's random init is seed + i.")
@click.option("--batch", type=click.IntRange(1), default=16, help="Images optimised (and written) at a time.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              help="Unreadable images: report and skip them, or refuse the run before any work.")
@click.option("--autocast", type=click.Choice(list(AUTOCAST)), default="none", help="Mixed precision.")
@click.option("--overwrite", is_flag=True,
              help="Replace another run found in --outdir (default: refuse it; the same run is resumed).")
@device_option
def command(model, images, spaces, outdir, steps, lr, beta1, beta2, loss, mse_weight, init, encoder, reg_toward,
            reg_strength,
            reg_until, seed, batch, on_error, autocast, overwrite, device):
    """Invert images into a latent space with the paper's projector (Adam on LPIPS, init at w_avg)."""
    import torch
    from tqdm import tqdm

    from opstylegan.cli.common import load_generator
    from opstylegan.inversion.projector import InversionOptions
    from opstylegan.inversion.runs import (
        OUTPUT_NAMES,
        InputError,
        RunFolderError,
        SummaryWriteError,
        collect_images,
        invert_images,
    )
    from opstylegan.io.lock import RunLockedError
    from opstylegan.io.outdir import describe_os_error, prepare_outdir
    from opstylegan.latent import LatentError, check_space
    from opstylegan.metrics.weights import WeightsError, require_weights
    from opstylegan.training.distributed import barrier as dist_barrier
    from opstylegan.training.distributed import init_distributed, shutdown

    # Under torchrun: join the process group (NCCL on CUDA, gloo on CPU) and take the GPU of LOCAL_RANK; the
    # group is destroyed when the command ends, whatever the outcome. One process otherwise.
    try:
        dinfo = init_distributed(resolve_device(device))
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    click.get_current_context().call_on_close(shutdown)
    rank, world_size, dev = dinfo.rank, dinfo.world_size, dinfo.device
    try:
        if init == "encoder" and encoder is None:
            from opstylegan.encoder.api import model_encoder_path
            from opstylegan.pretrained import resolve_model

            encoder = str(model_encoder_path(resolve_model(model)))
        options = InversionOptions(steps=steps, lr=lr, betas=(beta1, beta2), loss=loss, mse_weight=mse_weight,
                                   init=init, reg_strength=reg_strength, reg_until=reg_until, seed=seed,
                                   encoder=None if encoder is None else str(Path(encoder).resolve()),
                                   reg_toward=None if reg_toward == "auto" else reg_toward,
                                   autocast=None if AUTOCAST[autocast] is None else getattr(torch, AUTOCAST[autocast]))
    except (ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    try:
        require_weights("lpips-vgg")
    except WeightsError as e:
        raise click.ClickException(str(e)) from None
    G = load_generator(model, dev)
    spaces = spaces or (["W"] if G.overparam else ["w+"])
    if options.encoder is not None:
        from opstylegan.encoder.api import check_encoder_for_spaces

        try:
            check_encoder_for_spaces(options.encoder, G, spaces)  # a foreign encoder is refused before any work
        except (ValueError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
    try:
        for s in spaces:
            check_space(s, overparam=G.overparam)
        items = collect_images(images, exclude=[Path(outdir) / n for n in OUTPUT_NAMES])
    except (LatentError, ValueError, FileNotFoundError) as e:
        raise click.UsageError(str(e)) from None
    try:
        prepare_outdir(outdir)
    except OSError as e:
        raise click.ClickException(str(e)) from None

    barrier = (lambda: dist_barrier(dinfo)) if dinfo.enabled else None
    n_mine = len(items[rank::world_size])
    total = -(-n_mine // batch) * len(spaces) * steps
    # delay: a run refused at once (folder locked or holding another run) draws no empty bar.
    bar = tqdm(total=total, desc="inverting", unit="step", disable=rank != 0, dynamic_ncols=True, delay=2)
    last = [0.0]

    def progress(space, p):
        bar.update(1)
        now = time.monotonic()
        if now - last[0] > 0.5 or p.step == p.steps:
            last[0] = now
            bar.set_description(f"inverting {space}", refresh=False)
            bar.set_postfix_str(f"median LPIPS {float(p.lpips.float().quantile(0.5)):.4f}")  # as summary.json

    def on_skip(name, reason):
        bar.clear()
        click.echo(f"skipped {reason}", err=True)

    try:
        summary = invert_images(G, items, spaces, outdir, options, batch=batch, on_error=on_error, rank=rank,
                                world_size=world_size, barrier=barrier, model_source=str(model),
                                overwrite=overwrite, progress=progress, on_skip=on_skip,
                                on_reuse=lambda n: bar.update(len(spaces) * steps))
    except InputError as e:
        raise click.ClickException(f"{e} (use --on-error skip to leave it out)") from None
    except (RunFolderError, RunLockedError) as e:
        raise click.ClickException(str(e)) from None
    except SummaryWriteError as e:
        bar.close()
        click.echo(json.dumps(e.summary, indent=1))
        raise click.ClickException(f"{e}; the results are printed above (latents and images of finished chunks "
                                   "are in place)") from None
    except OSError as e:
        why = describe_os_error(e, e.filename or outdir)
        raise click.ClickException(f"{why}; finished chunks are kept, and repeating the command "
                                   "resumes the run") from None
    finally:
        bar.close()
    if summary is None:
        return
    if summary["inverted"] == 0:
        raise click.ClickException(f"none of the {len(items)} image(s) could be read; nothing was inverted")
    skipped = f", skipped {len(summary['skipped'])}" if summary["skipped"] else ""
    reused = (f" (resumed: {summary['reused_chunks']} finished chunk(s) of {summary['reused_images']} image(s) "
              "reused)" if summary["reused_chunks"] else "")
    click.echo(f"inverted {summary['inverted']} image(s){skipped} in {', '.join(summary['results'])}{reused}")
    click.echo(f"{'space':6s} {'LPIPS median':>12s} {'Q1':>7s} {'Q3':>7s} {'PSNR median':>12s}")
    for s, r in summary["results"].items():
        q = r["lpips"]
        click.echo(f"{s:6s} {q['median']:12.4f} {q['q1']:7.4f} {q['q3']:7.4f} {r['psnr']['median']:10.2f} dB")
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
    plot = summary.get("curves", {}).get("plot")
    click.echo(f"wrote {outdir}/: {summary.get('comparison', '')} (targets | each space), "
               + (f"{plot} (LPIPS per step, fig. 6), " if plot else "lpips_curves.csv (LPIPS per step), ")
               + "summary.json, and per space a folder of latents, reconstructions and pairs/")
