"""`opstylegan metrics`: FID, KID and PPL of a generator, written to a JSON that says what was measured.

A thin layer over :mod:`opstylegan.metrics`: every input is checked (metric names, sample counts, model,
dataset, image size, weights) before any image is generated; then the real-data statistics (cached by the
dataset's content hash and the feature network's sha256), the generated images' statistics and the PPL
samples are computed with progress bars; the results go atomically into one JSON file and a short table is
printed. The JSON format is described in docs/METRICS.md.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from opstylegan.cli.common import device_option, load_generator, model_option, resolve_device, write_json

#: The metrics this command computes, in the order they are run and reported.
METRICS: tuple[str, ...] = ("fid", "kid", "pr", "ppl")
#: Names of the feature networks as recorded in the JSON.
LPIPS_NAME = "lpips-v0.1-vgg16"
#: Version of the JSON layout written by this command.
RESULTS_FORMAT = 1

EXAMPLES = """
\b
Examples:
  opstylegan metrics --model runs/00000-ffhq/best --data data/ffhq256 --metrics fid,kid,ppl --num 50000
  opstylegan metrics --model runs/00001-fmnist/best --data data/fmnist32 --metrics fid --num 2000 \\
      --out fid.json
  opstylegan metrics --model m --metrics ppl --num-ppl 1000 --ppl-space z --ppl-sampling full
  opstylegan metrics --model fmnist32-overparam --data data/fmnist32 --metrics fid,pr --num 5000 --num-real 10000
"""


def parse_metrics(spec: str) -> list[str]:
    """'fid, KID' -> ['fid', 'kid'] (lower-cased, duplicates dropped, in :data:`METRICS` order).

    Raises:
        ValueError: Empty list, or a name not in :data:`METRICS` (the message lists the valid ones).
    """
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    if not names:
        raise ValueError(f"no metric given; choose from {', '.join(METRICS)}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(repr(n) for n in unknown)}; valid metrics: "
                         f"{', '.join(METRICS)}")
    return [m for m in METRICS if m in names]


class MetricList(click.ParamType):
    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[str]:
        if isinstance(value, list):
            return value
        try:
            return parse_metrics(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


def load_feature_net(cache_dir: Path | None, device: torch.device) -> torch.nn.Module:
    """The FID / KID detector (Inception-v3); a module-level hook so tests can swap in a fast stand-in."""
    from opstylegan.metrics.inception import InceptionFeatures

    return InceptionFeatures(cache_dir=cache_dir).to(device)


def load_lpips(cache_dir: Path | None, device: torch.device) -> torch.nn.Module:
    """LPIPS (VGG16) for PPL; a module-level hook like :func:`load_feature_net`."""
    from opstylegan.metrics.lpips import LPIPS

    return LPIPS("vgg", cache_dir=cache_dir).to(device)


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state (names sorted, float32 little-endian bytes): identifies the weights in use
    whichever file they were loaded from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + b"\0")
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class _Bar:
    """A tqdm bar drawn from the first ``progress(done, total)`` call on (so a cache hit draws nothing), timed
    from its creation (so the first batch counts in the rate)."""

    def __init__(self, desc: str, total: int | None, unit: str = "img") -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.bar: tqdm | None = None
        self.t0 = time.time()

    def __call__(self, done: int, total: int | None = None) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total or self.total, desc=self.desc, unit=self.unit, dynamic_ncols=True)
            self.bar.start_t = self.bar.last_print_t = self.t0  # tqdm times from here
        self.bar.update(done - self.bar.n)

    @property
    def used(self) -> bool:
        return self.bar is not None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(bar: _Bar, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    finally:
        bar.close()


def _open_data(data: str, G: Any, num_real: int | None) -> Any:
    """Open the real images and check them against the model before any work."""
    from opstylegan.data.build import DatasetError
    from opstylegan.data.dataset import open_dataset
    from opstylegan.data.images import ImageError

    try:
        ds = open_dataset(data)
    except (DatasetError, ImageError, FileNotFoundError) as e:
        raise click.ClickException(f"cannot read --data {data}: {e}") from None
    want = [G.img_channels, G.img_resolution, G.img_resolution]
    if list(ds.image_shape) != want:
        c, r = want[0], want[1]
        raise click.ClickException(
            f"the dataset {data} has {ds.image_shape[0]}-channel {ds.image_shape[1]}x{ds.image_shape[2]} images, "
            f"but the model generates {c}-channel {r}x{r} images; build a matching set with "
            f"`opstylegan dataset SOURCE DEST --resolution {r} --channels {c}`")
    if len(ds) < 2:
        raise click.ClickException(f"the dataset {data} has {len(ds)} image(s); FID and KID need at least 2")
    if num_real is not None and num_real > len(ds):
        raise click.BadParameter(f"{num_real} real images requested, but {data} has only {len(ds)}",
                                 param_hint="--num-real")
    return ds


def _table(results: dict[str, dict[str, Any]]) -> str:
    rows = [("metric", "value", "details")]
    for name, r in results.items():
        if name == "ppl":
            detail = (f"{r['num_samples']} samples ({r['num_kept']} kept), {r['space']} space, {r['sampling']}, "
                      f"{r['feature_net']}")
        else:
            detail = f"{r['num_real']} real / {r['num_fake']} generated, {r['feature_net']}"
        value = r["value"]
        shown = (f"P {value['precision']:.4f} / R {value['recall']:.4f}" if name == "pr" else f"{value:.6g}")
        rows.append((name, shown, detail + (f", k={r['k']}" if name == "pr" else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c}" for a, b, c in rows)


@click.command(name="metrics", epilog=EXAMPLES, context_settings={"show_default": True})
@model_option()
@click.option("--data", type=click.Path(exists=True), default=None,
              help="Real images for FID / KID: a built dataset folder, or a folder / .zip of same-size images.")
@click.option("--metrics", "metric_names", type=MetricList(), default="fid",
              help=f"Comma-separated metrics: {', '.join(METRICS)}.")
@click.option("--num", type=int, default=50000, help="Generated images for FID / KID (50000 as in the paper).")
@click.option("--num-real", type=int, default=None, help="Real images for FID / KID (default: the whole dataset).")
@click.option("--num-ppl", type=int, default=None, help="PPL samples (latent pairs); default: --num.")
@click.option("--ppl-space", type=click.Choice(["w", "z"]), default="w",
              help="PPL interpolation space: lerp after the mapping (w / W matrix) or slerp in z.")
@click.option("--ppl-sampling", type=click.Choice(["end", "full"]), default="end",
              help="PPL: t = 0 (end) or t ~ U(0, 1) (full).")
@click.option("--ppl-crop/--no-ppl-crop", default=False, help="PPL: crop to the face region (FFHQ protocol).")
@click.option("--trunc", "truncation_psi", type=click.FloatRange(-1, 2), default=1.0,
              help="Truncation psi of the generated images for FID / KID (1 = none). PPL is untruncated.")
@click.option("--batch", type=click.IntRange(1), default=16,
              help="Images per forward pass (changes results only by float rounding).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0,
              help="Generated image i uses seed SEED + i; also seeds PPL and the KID subsets.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Weights and dataset-statistics cache [default: $OPSTYLEGAN_CACHE or ~/.cache/opstylegan].")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("metrics.json"),
              help="Where to write the results (JSON, written atomically).")
@device_option
def command(model: str, data: str | None, metric_names: list[str], num: int, num_real: int | None,
            num_ppl: int | None, ppl_space: str, ppl_sampling: str, ppl_crop: bool, truncation_psi: float,
            batch: int, seed: int, cache_dir: Path | None, out: Path, device: str) -> None:
    """Measure FID, KID and / or PPL of the generator in --model against the real images in --data.

    FID and KID use NVIDIA's Inception-v3 (inception-2015-12-05) as stylegan2-ada; PPL uses LPIPS (VGG16)
    with epsilon 1e-4 as StyleGAN2. Real-data statistics are cached by the dataset's content hash. Values
    from fewer than 50000 images are biased; use small counts only for smoke tests.
    """
    import opstylegan
    from opstylegan.data.build import DatasetError
    from opstylegan.data.dataset import dataset_batches
    from opstylegan.data.images import ImageError
    from opstylegan.metrics.fid import (
        cached_dataset_stats,
        compute_generator_stats,
        dataset_content_hash,
        fid_from_stats,
        kid_from_stats,
    )
    from opstylegan.metrics.precision_recall import pr_from_stats
    from opstylegan.io.outdir import check_output_file, describe_os_error
    from opstylegan.metrics.ppl import perceptual_path_length
    from opstylegan.metrics.weights import WeightsError

    # 1. Arguments, model and data: all checked before any image is generated.
    want_fid, want_kid, want_pr, want_ppl = (m in metric_names for m in METRICS)
    need_data = want_fid or want_kid or want_pr
    capture = want_kid or want_pr  # KID and precision/recall need every feature, not only the moments
    num_ppl = num if num_ppl is None else num_ppl
    if need_data:
        if num < 2:
            raise click.BadParameter(f"FID and KID need at least 2 generated images, got {num}", param_hint="--num")
        if num_real is not None and num_real < 2:
            raise click.BadParameter(f"FID and KID need at least 2 real images, got {num_real}",
                                     param_hint="--num-real")
        if data is None:
            raise click.UsageError(f"--data is required for {', '.join(m for m in metric_names if m != 'ppl')}")
    if want_pr and (num < 4 or (num_real is not None and num_real < 4)):
        raise click.BadParameter(f"precision/recall (k=3) needs at least 4 generated and 4 real images, got "
                                 f"--num {num}, --num-real {num_real}", param_hint="--num / --num-real")
    if want_ppl and num_ppl < 2:
        raise click.BadParameter(f"PPL needs at least 2 samples, got {num_ppl}",
                                 param_hint="--num-ppl" if num_ppl != num else "--num / --num-ppl")
    if out.exists() and out.is_dir():
        raise click.BadParameter(f"{out} is a directory; give a file name", param_hint="--out")
    try:
        check_output_file(out)  # the results must not be lost after hours of work
    except OSError as e:
        raise click.BadParameter(str(e), param_hint="--out") from None
    dev = resolve_device(device)
    G = load_generator(model, dev)
    ds = _open_data(data, G, num_real) if need_data else None
    try:
        detector = load_feature_net(cache_dir, dev) if need_data else None
        lpips = load_lpips(cache_dir, dev) if want_ppl else None
    except WeightsError as e:
        raise click.ClickException(str(e)) from None

    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    record: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "opstylegan_version": opstylegan.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"path": str(Path(model).resolve()), "fingerprint": G.fingerprint(), "overparam": G.overparam,
                  "img_resolution": G.img_resolution, "img_channels": G.img_channels},
        "dataset": None,
        "options": {"metrics": metric_names, "num": num, "num_real": num_real, "num_ppl": num_ppl,
                    "ppl_space": ppl_space, "ppl_sampling": ppl_sampling, "ppl_crop": ppl_crop,
                    "truncation_psi": truncation_psi, "batch": batch, "seed": seed, "device": str(dev)},
    }

    # 2. FID / KID: real statistics (cached), then the generated images' statistics.
    if need_data:
        assert ds is not None and detector is not None
        n_real = len(ds) if num_real is None else num_real
        t0 = time.perf_counter()
        click.echo(f"hashing {data} ...", err=True)
        data_hash = dataset_content_hash(data)
        record["dataset"] = {"path": str(Path(data).resolve()), "content_sha256": data_hash, "kind": ds.kind,
                             "num_images": len(ds), "image_shape": list(ds.image_shape)}
        real_bar = _Bar("real images", n_real)
        try:
            real = _run(real_bar, lambda: cached_dataset_stats(
                data_hash, lambda: dataset_batches(ds, n_real, batch), detector, cache_dir=cache_dir,
                max_items=None if n_real == len(ds) else n_real, capture_features=capture, progress=real_bar))
        except (DatasetError, ImageError) as e:
            raise click.ClickException(f"cannot read --data {data}: {e}") from None
        if not real_bar.used:
            click.echo(f"real-image statistics: from the cache ({real.num_items} images)", err=True)
        fake_bar = _Bar("generated images", num)
        fake = _run(fake_bar, lambda: compute_generator_stats(
            G, detector, num, batch_size=batch, seed=seed, truncation_psi=truncation_psi,
            capture_features=capture, device=dev, progress=fake_bar))
        common = {"feature_net": real.feature_net, "feature_net_sha256": real.feature_net_sha256,
                  "truncation_psi": truncation_psi, "seed": seed, "real_stats_cached": not real_bar.used}
        elapsed = time.perf_counter() - t0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if want_fid:
                r = fid_from_stats(real, fake).to_dict()
                results["fid"] = {"value": r.pop("fid"), **r, **common, "elapsed_s": round(elapsed, 3)}
            if want_kid:
                r = kid_from_stats(real, fake, seed=seed).to_dict()
                results["kid"] = {"value": r.pop("kid"), **r, **common, "elapsed_s": round(elapsed, 3)}
            if want_pr:
                r = pr_from_stats(real, fake, k=3).to_dict()
                results["pr"] = {"value": {"precision": r.pop("precision"), "recall": r.pop("recall")}, **r,
                                 **common, "elapsed_s": round(elapsed, 3)}
        notes.extend(dict.fromkeys(str(w.message) for w in caught))

    # 3. PPL.
    if want_ppl:
        assert lpips is not None
        t0 = time.perf_counter()
        ppl_bar = _Bar("ppl pairs", num_ppl, unit="pair")
        r = _run(ppl_bar, lambda: perceptual_path_length(
            G, num_samples=num_ppl, space=ppl_space, sampling=ppl_sampling, crop=ppl_crop, batch_size=batch,
            seed=seed, lpips=lpips, device=dev, progress=ppl_bar)).to_dict()
        results["ppl"] = {"value": r.pop("ppl"), **r, "feature_net": LPIPS_NAME,
                          "feature_net_sha256": weights_sha256(lpips),
                          "elapsed_s": round(time.perf_counter() - t0, 3)}

    record["metrics"] = results
    record["warnings"] = notes
    try:
        write_json(out, record)
    except OSError as e:
        click.echo(json.dumps(record, indent=2))
        raise click.ClickException(f"{describe_os_error(e, out)}; the results are printed above") from None
    for note in notes:
        click.echo(f"warning: {note}", err=True)
    click.echo(_table(results))
    click.echo(f"wrote {out}")
