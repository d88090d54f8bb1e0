"""`opstylegan dataset`: turn a folder / zip of images or MNIST-style IDX files into a training set."""

from __future__ import annotations

import signal
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

import click
from tqdm import tqdm

from opstylegan.data.build import DatasetError, build_dataset
from opstylegan.data.idx import IDXError
from opstylegan.data.images import ImageError
from opstylegan.io.outdir import OutputPathError

EPILOG = """\b
Examples:
  opstylegan dataset ~/ffhq/images1024x1024 data/ffhq256 --resolution 256 --channels 3
  opstylegan dataset celebahq.zip data/celebahq256 --resolution 256 --channels 3 --on-error fail
  opstylegan dataset ~/fashion-mnist data/fmnist32 --resolution 32 --channels 1 --split train --fit pad
  opstylegan dataset photos/ data/try --resolution 64 --channels 3 --max-images 1000 --overwrite
"""

_SHOW_SKIPPED = 20


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the build is, so that it cleans up exactly as after Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM (`kill`, a job scheduler's stop) raises `_Terminated` instead of ending the
    process on the spot, which would leave the hidden building folder behind."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def power_of_two(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """click callback: an image resolution must be a power of two (range checked by the option's type)."""
    if value is not None and value & (value - 1):
        raise click.BadParameter(f"{value} is not a power of two (16, 32, 64, ..., 1024)")
    return value


@click.command(name="dataset", epilog=EPILOG, context_settings={"show_default": True})
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--resolution", type=click.IntRange(16, 1024), required=True, callback=power_of_two,
              help="Output size in pixels, a power of two.")
@click.option("--channels", type=click.Choice(["1", "3"]), required=True,
              help="1 = grayscale, 3 = RGB (alpha is composited on black).")
@click.option("--split", type=click.Choice(["train", "test"]), default="train",
              help="Which IDX files to use when SOURCE is a folder of MNIST-style files.")
@click.option("--fit", type=click.Choice(["resize", "pad"]), default="resize",
              help="resize: center-crop and Lanczos-resize; pad: center-crop, pad smaller images with black.")
@click.option("--allow-upscale", is_flag=True,
              help="With --fit resize, upscale images smaller than --resolution instead of skipping them.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip",
              help="skip: leave out unreadable / too-small images and list them; fail: stop at the first one.")
@click.option("--max-images", type=click.IntRange(min=1), default=None, help="Stop after this many images.")
@click.option("--overwrite", is_flag=True,
              help="Replace DEST if it is a dataset built by this command (has its dataset.json); any other "
                   "non-empty folder is refused.")
def command(
    source: Path, dest: Path, resolution: int, channels: str, split: str, fit: str, allow_upscale: bool,
    on_error: str, max_images: int | None, overwrite: bool,
) -> None:
    """Build a training dataset DEST (images.npy + dataset.json) from SOURCE.

    SOURCE is a folder of images (searched recursively), a .zip of images, an IDX
    '*-images-idx3-ubyte[.gz]' file, or a folder of MNIST-style IDX files. Images are center-cropped
    to a square and resized; bad files are reported by name and skipped (or stop the build with
    --on-error fail). DEST appears only when the build is complete.
    """
    bar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="img", desc="dataset", dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        with _terminate_as_interrupt():
            report = build_dataset(
                source, dest, resolution=resolution, channels=int(channels),
                on_error=on_error, max_images=max_images, split=split, fit=fit,  # type: ignore[arg-type]
                allow_upscale=allow_upscale, overwrite=overwrite, progress=progress,
            )
    except _Terminated as e:
        if bar is not None:
            bar.close()
        click.echo(f"stopped by {e}: nothing was written to {dest}", err=True)
        sys.exit(128 + e.signum)
    except ImageError as e:
        raise click.ClickException(f"bad image {e.path}: {e.reason} (use --on-error skip to leave it out)") from None
    except (DatasetError, IDXError, FileNotFoundError, OutputPathError) as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:  # a read or write failure the library does not name itself (permission, I/O error)
        raise click.ClickException(f"{e.filename or dest}: {e.strerror or e}") from None
    finally:
        if bar is not None:
            bar.close()

    for stale in report.removed_stale:
        click.echo(f"Removed {stale}, left by an earlier build that was killed.")
    click.echo(f"Wrote {report.count} images of {report.channels}x{report.resolution}x{report.resolution} "
               f"to {report.dest} (source: {report.source_kind}, {report.num_candidates} candidates"
               f"{', labels stored' if report.has_labels else ''}).")
    if report.skipped:
        click.echo(f"Skipped {report.num_skipped} file(s):")
        for s in report.skipped[:_SHOW_SKIPPED]:
            click.echo(f"  {s.name}: {s.reason}")
        if report.num_skipped > _SHOW_SKIPPED:
            reasons = Counter(s.reason.split(":")[0] for s in report.skipped)
            summary = ", ".join(f"{n} x {r}" for r, n in reasons.most_common(5))
            click.echo(f"  ... and {report.num_skipped - _SHOW_SKIPPED} more ({summary}); "
                       f"all are listed in {report.dest / 'dataset.json'}")
