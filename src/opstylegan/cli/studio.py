"""`opstylegan studio`: serve the local web app (invert, edit, interpolate, sample) over the library."""

from __future__ import annotations

import click

from opstylegan.cli.common import ModelRef, device_option, model_option, resolve_device

EXAMPLES = """
\b
Examples:
  opstylegan studio                                   # shipped models, http://127.0.0.1:7860/
  opstylegan studio --model runs/ffhq/best --baseline runs/ffhq-baseline/best --port 8000
  opstylegan studio --no-baseline --max-steps 300
\b
Everything runs on this machine: the page, its script and style come from the package, and the browser is
told (Content-Security-Policy) to load nothing from anywhere else. Binding another --host than 127.0.0.1
lets anyone who can reach this machine use the studio (and its CPU/GPU); a warning says so.
"""


@click.command(name="studio", epilog=EXAMPLES)
@model_option(help="Main model (folder or shipped name); overparameterized for the W / W+ spaces.")
@click.option("--baseline", type=ModelRef(), default=None,
              help="Baseline model shown side by side in w+ [default: fmnist32-baseline with the default --model].")
@click.option("--no-baseline", is_flag=True, help="Serve the main model alone.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=7860, show_default=True, help="Port (0: any free).")
@click.option("--max-steps", type=click.IntRange(1, 100_000), default=2000, show_default=True,
              help="Largest number of inversion steps a page may ask for.")
@click.option("--queue", "max_waiting", type=click.IntRange(1, 1000), default=32, show_default=True,
              help="Inversion jobs allowed to wait (one runs at a time on the device).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where GANSpace fits are cached [default: $OPSTYLEGAN_CACHE or ~/.cache/opstylegan].")
@device_option
def command(model, baseline, no_baseline, host, port, max_steps, max_waiting, cache_dir, device):
    """Serve a local web app: invert images (live), edit with GANSpace, interpolate, sample."""
    from opstylegan.studio import MISSING_EXTRA, studio_available

    if not studio_available():
        raise click.ClickException(MISSING_EXTRA)
    from opstylegan.pretrained import DEFAULT_MODEL

    if baseline is not None and no_baseline:
        raise click.UsageError("--baseline and --no-baseline contradict each other; give one")
    if baseline is None and not no_baseline and model == DEFAULT_MODEL:
        baseline = "fmnist32-baseline"

    from opstylegan.studio.app import is_loopback, serve
    from opstylegan.studio.engine import load_studio_model, resolve_cache_dir
    from opstylegan.studio.service import Studio

    dev = resolve_device(device)
    cache = resolve_cache_dir(cache_dir)
    models = {}
    for key, ref in (("main", model), ("baseline", baseline)):
        if ref is None:
            continue
        click.echo(f"studio: loading {key} model {ref} (GANSpace cached under {cache / 'ganspace'})", err=True)
        try:
            models[key] = load_studio_model(key, ref, dev, cache)
        except (FileNotFoundError, ValueError) as e:
            raise click.ClickException(f"cannot load {key} model {ref!r}: {e}") from None
    if "baseline" in models and models["baseline"].G.overparam:
        raise click.UsageError(f"--baseline {baseline!r} is an overparameterized model; give a baseline StyleGAN2 "
                               f"(its w+ inversion is compared with the main model's W)")
    try:
        studio = Studio(models, max_steps=max_steps, max_waiting=max_waiting)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo("studio: loading the LPIPS weights", err=True)
    studio.preload()
    if not is_loopback(host):
        click.echo(f"WARNING: listening on {host}: anyone who can reach this machine on port {port} can use the "
                   f"studio, upload images and run inversions on it. Use --host 127.0.0.1 to keep it local.",
                   err=True)
    from opstylegan.studio.engine import projector_takes_start

    for key, m in models.items():
        if m.encoder is not None:
            how = "inversions start from it" if projector_takes_start() else "the projector cannot start from it yet"
            click.echo(f"studio: the {key} model ships an encoder; {how}", err=True)

    def ready(url: str) -> None:
        click.echo(f"opstylegan studio: open {url}  (Ctrl-C to stop)")

    try:
        serve(studio, host, port, on_ready=ready)
    except OSError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        pass
