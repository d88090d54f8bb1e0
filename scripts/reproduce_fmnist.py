#!/usr/bin/env python
"""Small-scale reproduction of the paper on Fashion-MNIST 32x32 (issue 8): tables 1-4, fig. 6, PULSE,
GANSpace and out-of-distribution inversion, for one baseline and one overparameterized model trained with
the same configuration.

Every measurement is an ``opstylegan`` command (invert, interpolate metrics, upsample, edit, metrics), run in
this process through the same click entry point the console script uses, so that the exact command recorded
in the results is what produced them, and tests can swap in small feature networks. This script only
prepares inputs (test images as PNGs), combines the commands' outputs (the fig. 6 plot of all four spaces,
image grids, the training-speed table from the runs' stats.jsonl) and writes:

    OUT/results.json   every figure, command, model fingerprint, dataset hash and timing (machine-readable)
    OUT/results.md     markdown tables ready for docs/RESULTS.md, each with the command that produced it

It is resumable: a step whose record (OUT/steps/<name>.json, written after it succeeded) holds the same
command is skipped; a step whose command changed is re-run from a clean output folder.

Example (tiny counts, a smoke run)::

    OMP_NUM_THREADS=1 python scripts/reproduce_fmnist.py \\
        --baseline runs/00000-fmnist32-baseline/network-latest \\
        --overparam runs/00001-fmnist32-overparam/network-latest \\
        --runs-baseline runs/00000-fmnist32-baseline --runs-overparam runs/00001-fmnist32-overparam \\
        --train-data data/fmnist32 --test-data data/fmnist32-test --outdir out/repro \\
        --num-fid 64 --num-ppl 32 --num-invert 4 --steps 20 --max-pairs 6 --threads 1
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import shlex
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OOD = REPO / "examples" / "mnist"
PARTS = ("table4", "ganspace", "table2", "table3", "pulse", "ood", "table1")
SPACE_DIRS = {"w": "w", "w+": "w-plus", "W": "W-matrix", "W+": "W-matrix-plus"}
MODEL_SPACES = {"baseline": ("w", "w+"), "overparam": ("W", "W+")}
NATIVE_SPACE = {"baseline": "w+", "overparam": "W"}
# Table 3: latents whose interpolations are measured (model, space), as in the paper's table 3.
INTERP_SETS = (("baseline", "w+"), ("overparam", "W"), ("overparam", "W+"))
GRID_MAX_ROWS = 16
RESULTS_FORMAT = 1

# The figures the paper publishes (trained on FFHQ 256 px; inversions of CelebA-HQ images), shown beside ours.
PAPER = {
    "table1": {"baseline": {"fid": 3.88, "ppl": 196.27}, "overparam": {"fid": 5.05, "ppl": 203.67}},
    "table2_image_a_lpips": {"w+": 0.146, "W": 0.051, "W+": 0.022},
    "table3": {"baseline w+": {"fid": 52.97, "path": 0.175}, "overparam W": {"fid": 53.51, "path": 0.190},
               "overparam W+": {"fid": 57.60, "path": 0.188}},
    "table4": {"baseline": {"memory_gb": 3.90, "sec_per_kimg": 8.33},
               "overparam": {"memory_gb": 4.90, "sec_per_kimg": 8.80}},
}


class ReproError(RuntimeError):
    """A step failed or an input is unusable; the message names the step or the bad value."""


@dataclass(frozen=True)
class Options:
    """Everything the reproduction depends on (the command-line options).

    Counts: ``num_fid`` generated images for each FID and precision/recall, against ``num_real`` training
    images (None: ``num_fid``; statistics cached), ``num_reference`` TEST images as the reference of the
    interpolation FID (None: ``num_fid``), ``num_ppl`` PPL pairs, ``num_invert`` TEST images inverted (the first
    ones), ``steps`` optimisation steps of every inversion / PULSE run, ``max_pairs`` interpolation pairs
    measured (None: all pairs), ``num_interp`` the first inverted latents whose pairs table 3 measures (None:
    all of them; the paper's protocol is all pairs of the first 50), ``pulse_images`` the first test images given to PULSE.
    """

    baseline: Path
    overparam: Path
    train_data: Path
    test_data: Path
    runs_baseline: Path
    runs_overparam: Path
    outdir: Path
    num_fid: int = 2048
    num_real: int | None = None
    num_reference: int | None = None
    num_ppl: int = 1000
    num_invert: int = 100
    steps: int = 1000
    max_pairs: int | None = None
    num_interp: int | None = None
    ood: Path | None = DEFAULT_OOD
    threads: int | None = None
    device: str = "auto"
    batch: int = 16
    pulse_images: int = 4
    pulse_factors: tuple[int, ...] = (4, 8)
    ganspace_samples: int = 100_000
    parts: tuple[str, ...] = PARTS

    def models(self) -> dict[str, Path]:
        return {"baseline": self.baseline, "overparam": self.overparam}

    def runs(self) -> dict[str, Path]:
        return {"baseline": self.runs_baseline, "overparam": self.runs_overparam}


# ----------------------------------------------------------------------------------------------------------
# Steps: one `opstylegan` command each, skipped when already done with the same command.

@dataclass
class StepRunner:
    """Runs `opstylegan` commands in this process and keeps one record per step under ``out/steps``.

    ``log`` receives one line per step (started, skipped, finished); ``records`` collects every step's record.
    ``inputs`` identifies what the commands read beyond their arguments (model fingerprints, dataset hashes): a
    step recorded with other inputs (e.g. a snapshot folder overwritten since) is re-run.
    """

    out: Path
    log: Callable[[str], None]
    inputs: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)

    def run(self, name: str, argv: Sequence[str], outputs: Sequence[Path], clean: Path | None = None,
            reads: Sequence[Path] = ()) -> dict:
        """Run ``opstylegan argv`` unless its record says it already ran with this exact command, the same
        ``reads`` (folders the script exported, e.g. the target images: their file names) and ``outputs`` all
        exist. ``clean`` (a folder under ``out``) is deleted first when the step has to be (re)run."""
        argv = [str(a) for a in argv]
        record_path = self.out / "steps" / f"{name}.json"
        command = shlex.join(["opstylegan", *argv])
        listing = {str(folder): sorted(f.name for f in Path(folder).iterdir()) for folder in reads}
        if record_path.is_file():
            rec = json.loads(record_path.read_text())
            if rec.get("command") == command and rec.get("inputs") == self.inputs and \
                    rec.get("reads", {}) == listing and all(Path(p).exists() for p in outputs):
                self.log(f"[{name}] done before ({rec['elapsed_s']:.1f} s), skipped")
                self.records[name] = rec
                return rec
        if clean is not None and clean.exists():
            if self.out.resolve() not in clean.resolve().parents:
                raise ReproError(f"refusing to delete {clean}: not inside the output folder {self.out}")
            shutil.rmtree(clean)
        self.log(f"[{name}] {command}")
        from opstylegan.cli.main import cli

        start = time.perf_counter()
        try:
            cli.main(args=list(argv), prog_name="opstylegan", standalone_mode=False)
        except click.ClickException as e:
            raise ReproError(f"step {name!r} failed: {e.format_message()}\n  command: {command}") from None
        except click.exceptions.Exit as e:
            if e.exit_code:
                raise ReproError(f"step {name!r} exited with status {e.exit_code}\n  command: {command}") from None
        except Exception as e:  # a bug in a command: keep its traceback, still write the results so far
            raise ReproError(f"step {name!r} crashed: {type(e).__name__}: {e}\n  command: {command}") from e
        elapsed = time.perf_counter() - start
        missing = [str(p) for p in outputs if not Path(p).exists()]
        if missing:
            raise ReproError(f"step {name!r} finished but did not write {', '.join(missing)}\n  command: {command}")
        rec = {"name": name, "command": command, "argv": argv, "inputs": self.inputs, "reads": listing,
               "elapsed_s": round(elapsed, 2),
               "finished_utc": _utc_now(), "threads": torch.get_num_threads()}
        _write_json(record_path, rec)
        self.records[name] = rec
        self.log(f"[{name}] finished in {elapsed:.1f} s")
        return rec


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_json(path: Path, obj: Any) -> None:
    from opstylegan.io.atomic import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def _read_json(path: Path) -> Any | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# Inputs.

def check_inputs(opts: Options) -> None:
    """Refuse missing folders and impossible counts before any work (FileNotFoundError / ValueError)."""
    for label, path in (("--baseline", opts.baseline), ("--overparam", opts.overparam)):
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"{label} {path}: not a model folder (expected config.json + model.safetensors)")
        over = json.loads((Path(path) / "config.json").read_text()).get("config", {}).get("overparam")
        if over is not (label == "--overparam"):
            want = "an overparameterized" if label == "--overparam" else "a baseline"
            raise ValueError(f"{label} {path}: expected {want} model, its config.json has overparam={over}")
    for label, path in (("--train-data", opts.train_data), ("--test-data", opts.test_data)):
        if not (Path(path) / "dataset.json").is_file():
            raise FileNotFoundError(f"{label} {path}: not an `opstylegan dataset` folder (no dataset.json)")
    if "table4" in opts.parts:
        for label, path in (("--runs-baseline", opts.runs_baseline), ("--runs-overparam", opts.runs_overparam)):
            if not (Path(path) / "stats.jsonl").is_file():
                raise FileNotFoundError(f"{label} {path}: not a training run folder (no stats.jsonl)")
    if "ood" in opts.parts and opts.ood is not None and not Path(opts.ood).is_dir():
        raise FileNotFoundError(f"--ood {opts.ood}: no such folder of images")
    unknown = sorted(set(opts.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    if opts.num_invert < 2 and {"table2", "table3"} & set(opts.parts):
        raise ValueError(f"--num-invert must be >= 2 (pairs are needed for table 3), got {opts.num_invert}")


def export_test_images(test_data: Path, folder: Path, count: int) -> list[str]:
    """Write the first ``count`` images of a dataset folder as ``test-NNNNN.png`` (NNNNN = index in the test set);
    returns the stems. Existing identical sets are kept; a folder with other files is rewritten."""
    from opstylegan.data.dataset import ImageDataset
    from opstylegan.data.images import save_image

    ds = ImageDataset(test_data)
    if count > len(ds):
        raise ValueError(f"{test_data} holds {len(ds)} images, fewer than the {count} asked for")
    stems = [f"test-{i:05d}" for i in range(count)]
    have = sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []
    if have == stems:
        return stems
    if folder.exists():
        shutil.rmtree(folder)
    for i, stem in enumerate(stems):
        save_image(folder / f"{stem}.png", ds[i].permute(1, 2, 0).numpy())  # [C, H, W] -> [H, W, C]
    return stems


def dataset_record(path: Path) -> dict[str, Any]:
    """What identifies a dataset folder: its dataset.json fields and the content hash FID caching uses."""
    from opstylegan.metrics.fid import dataset_content_hash

    meta = json.loads((path / "dataset.json").read_text())
    return {"path": str(path), "content_sha256": dataset_content_hash(path), "count": meta.get("count"),
            "resolution": meta.get("resolution"), "channels": meta.get("channels"), "split": meta.get("split"),
            "fit": meta.get("fit"), "source": meta.get("source"), "images_sha256": meta.get("sha256", {})}


def model_record(path: Path) -> dict[str, Any]:
    """A model folder's fingerprint (weights + config, as in latent files) and its main settings."""
    from opstylegan import Generator

    G = Generator.from_pretrained(path, device="cpu")
    cfg = json.loads((path / "config.json").read_text())
    return {"path": str(path), "fingerprint": G.fingerprint(), "overparam": bool(G.overparam),
            "img_resolution": G.img_resolution, "img_channels": G.img_channels,
            "num_parameters": sum(p.numel() for p in G.parameters()), "config": cfg}


# ----------------------------------------------------------------------------------------------------------
# Parts. Each runs its steps and returns nothing: results are read back from the files by `collect_results`.

def _dev(opts: Options) -> list[str]:
    return ["--device", opts.device]


def run_table1(opts: Options, steps: StepRunner) -> None:
    """FID and precision/recall (k = 3) against the TRAIN set (num_fid generated vs the first num_real real) and
    PPL (W, end) per model."""
    for name, model in opts.models().items():
        out = opts.outdir / "table1" / f"{name}.json"
        steps.run(f"table1-{name}", ["metrics", "--model", model, "--data", opts.train_data, "--metrics", "fid,pr,ppl",
                                     "--num", opts.num_fid, "--num-real", opts.num_real or opts.num_fid,
                                     "--num-ppl", opts.num_ppl, "--ppl-space", "w", "--ppl-sampling", "end",
                                     "--seed", 0, "--batch", opts.batch,
                                     "--out", out, *_dev(opts)], [out])


def _invert(opts: Options, steps: StepRunner, name: str, model: Path, images: Path, spaces: Sequence[str],
            outdir: Path) -> None:
    steps.run(name, ["invert", "--model", model, "--images", images, "--space", ",".join(spaces), "--steps",
                     opts.steps, "--batch", opts.batch, "--seed", 0, "--outdir", outdir, *_dev(opts)],
              [outdir / "summary.json", outdir / "lpips_per_image.csv"], clean=outdir, reads=[images])


def run_table2(opts: Options, steps: StepRunner) -> None:
    """Invert the first num_invert TEST images in w, w+ (baseline) and W, W+ (overparam); fig. 6 and a grid."""
    targets = opts.outdir / "data" / "targets"
    export_test_images(opts.test_data, targets, opts.num_invert)
    for name, model in opts.models().items():
        _invert(opts, steps, f"table2-invert-{name}", model, targets, MODEL_SPACES[name],
                opts.outdir / "table2" / name)
    runs = space_runs({name: opts.outdir / "table2" / name for name in MODEL_SPACES})
    _write_json(opts.outdir / "table2" / "unseen_measures.json", unseen_measures(targets, runs, opts.device))
    combine_curves(runs, opts.outdir / "table2" / "fig6.png", opts.outdir / "table2" / "fig6_curves.csv",
                   title=f"Fashion-MNIST test, {opts.num_invert} images: LPIPS per step (median, Q1-Q3)")
    inversion_grid(targets, runs, opts.outdir / "table2" / "grid.png")


def space_runs(runs: dict[str, Path]) -> dict[str, Path]:
    """{model name: invert run folder holding that model's spaces} -> {space: run folder}."""
    return {space: run for name, run in runs.items() for space in MODEL_SPACES[name]}


def unseen_measures(targets: Path, runs: dict[str, Path], device: str = "cpu") -> dict[str, Any]:
    """Reconstruction judged by measures the projector did not minimise (it minimises LPIPS-VGG): LPIPS-AlexNet
    (same 256 px resize as the projector's VGG) and PSNR, per image and as median / Q1 / Q3 per space, from the
    saved reconstructions (PNG, as a user gets them) against the target PNGs. ``runs``: {space: invert run}."""
    from opstylegan.cli.common import resolve_device
    from opstylegan.metrics.lpips import LPIPS

    dev = resolve_device(device)
    alex = LPIPS("alex", resize_to=256).to(dev).eval()
    out: dict[str, Any] = {"measures": "LPIPS-AlexNet (resize 256) and PSNR (dB, images in [0, 1]) of the PNGs"}
    for space, run in runs.items():
        stems = sorted(p.stem for p in (run / SPACE_DIRS[space]).glob("*.png") if (targets / p.name).is_file())
        if not stems:
            continue
        tgt = torch.stack([torch.from_numpy(np.array(_load_gray(targets / f"{s}.png"))) for s in stems])
        rec = torch.stack([torch.from_numpy(np.array(_load_gray(run / SPACE_DIRS[space] / f"{s}.png")))
                           for s in stems])  # [N, H, W, 1] uint8
        t = tgt.permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 1, H, W] in [-1, 1]
        r = rec.permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            lp = torch.cat([alex(t[i:i + 50].to(dev), r[i:i + 50].to(dev)).flatten().cpu()
                            for i in range(0, len(t), 50)])
        mse = ((t - r) / 2).square().flatten(1).mean(1)
        psnr = 10 * torch.log10(1 / mse.clamp_min(1e-10))
        out[space] = {"run": str(run), "images": len(stems), "lpips_alex": _quartiles(lp), "psnr": _quartiles(psnr),
                      "per_image": {s: {"lpips_alex": float(a), "psnr": float(b)}
                                    for s, a, b in zip(stems, lp, psnr, strict=True)}}
    return out


def _quartiles(v: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(v.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"q1": q[0], "median": q[1], "q3": q[2]}


def free_parameters(model: str | Path) -> dict[str, int]:
    """Free numbers of each inversion space of a model (a folder or a shipped model's name; e.g. W = R x C, w+ =
    layers x C)."""
    from opstylegan import Generator

    G = Generator.from_pretrained(model, device="cpu")
    spaces = MODEL_SPACES["overparam" if G.overparam else "baseline"]
    return {s: int(math.prod(G.latent_shape(s))) for s in spaces}


def run_table3(opts: Options, steps: StepRunner) -> None:
    """Midpoint FID (against the first num_reference TEST images) and path length of all pairs of inverted
    latents."""
    reference = opts.outdir / "data" / "reference"
    export_test_images(opts.test_data, reference, opts.num_reference or opts.num_fid)
    for name, space in INTERP_SETS:
        latents = opts.outdir / "table2" / name / SPACE_DIRS[space]
        if not latents.is_dir():
            raise ReproError(f"table 3 needs the inverted latents in {latents}: run the table2 part first")
        if opts.num_interp is not None:
            latents = _first_latents(latents, opts.num_interp,
                                     opts.outdir / "table3" / "latents" / f"{name}-{SPACE_DIRS[space]}")
        outdir = opts.outdir / "table3" / f"{name}-{SPACE_DIRS[space]}"
        pairs = [] if opts.max_pairs is None else ["--max-pairs", opts.max_pairs]
        argv = ["interpolate", "metrics", "--model", opts.models()[name], "--latents", latents, "--reference",
                reference, "--segments", 5, *pairs, "--batch", 8, "--outdir", outdir, *_dev(opts)]
        steps.run(f"table3-{name}-{SPACE_DIRS[space]}", argv, [outdir / "editability.json"], clean=outdir,
                  reads=[latents, reference])


def _first_latents(folder: Path, count: int, dest: Path) -> Path:
    """A folder holding (copies of) the first ``count`` latent files of ``folder``, in name order."""
    files = sorted(folder.glob("*.safetensors"))
    if len(files) < count:
        raise ReproError(f"{folder} holds {len(files)} latents, fewer than --num-interp {count}")
    want = files[:count]
    if dest.is_dir() and sorted(p.name for p in dest.iterdir()) == [f.name for f in want] and \
            all((dest / f.name).read_bytes() == f.read_bytes() for f in want):
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in want:
        shutil.copyfile(f, dest / f.name)
    return dest


def run_pulse(opts: Options, steps: StepRunner) -> None:
    """PULSE at each factor on the first pulse_images TEST images, each model in its native space."""
    targets = opts.outdir / "data" / "pulse-targets"
    export_test_images(opts.test_data, targets, min(opts.pulse_images, opts.num_invert))
    for factor in opts.pulse_factors:
        for name, model in opts.models().items():
            outdir = opts.outdir / "pulse" / f"{name}-x{factor}"
            steps.run(f"pulse-{name}-x{factor}", ["upsample", "--model", model, "--images", targets, "--factor",
                                                  factor, "--space", NATIVE_SPACE[name], "--steps", opts.steps,
                                                  "--batch", opts.batch, "--outdir", outdir, *_dev(opts)],
                      [outdir / "pulse.json"], clean=outdir, reads=[targets])
    pulse_grid(targets, opts.outdir / "pulse", opts.pulse_factors, opts.outdir / "pulse" / "grid.png")


def run_ganspace(opts: Options, steps: StepRunner) -> None:
    """GANSpace on the overparameterized model: PCA of W rows, strips of the top 3 components."""
    outdir = opts.outdir / "ganspace"
    comps = outdir / "ganspace.safetensors"
    steps.run("ganspace-fit", ["edit", "fit", "--model", opts.overparam, "--samples", opts.ganspace_samples,
                               "--components", 3, "--seed", 0, "--outdir", outdir, *_dev(opts)],
              [comps, outdir / "ganspace.json"], clean=outdir)
    steps.run("ganspace-grid", ["edit", "grid", "--model", opts.overparam, "--components", comps, "--seeds", "0-3",
                                "--top", 3, "--sigma", "-2..2", "--steps", 5, "--trunc", 0.7, "--outdir",
                                outdir / "grid", *_dev(opts)], [outdir / "grid" / "grid.json"], clean=outdir / "grid")


def run_ood(opts: Options, steps: StepRunner) -> None:
    """Invert out-of-distribution images (MNIST digits by default) in all four spaces."""
    if opts.ood is None:
        return
    runs = {}
    for name, model in opts.models().items():
        runs[name] = opts.outdir / "ood" / name
        _invert(opts, steps, f"ood-invert-{name}", model, Path(opts.ood), MODEL_SPACES[name], runs[name])
    inversion_grid(Path(opts.ood), space_runs(runs), opts.outdir / "ood" / "grid.png")
    combine_curves(space_runs(runs), opts.outdir / "ood" / "curves.png", opts.outdir / "ood" / "curves.csv",
                   title=f"Out of distribution ({Path(opts.ood).name}): LPIPS per step (median, Q1-Q3)")


def run_table4(opts: Options, steps: StepRunner) -> None:
    """Training s/kimg and peak memory from the runs' stats.jsonl (`training_cost`), into OUT/table4.json."""
    _write_json(opts.outdir / "table4.json", training_cost(opts.runs()))


RUNNERS: dict[str, Callable[[Options, StepRunner], None]] = {
    "table1": run_table1, "table2": run_table2, "table3": run_table3, "table4": run_table4, "pulse": run_pulse,
    "ganspace": run_ganspace, "ood": run_ood,
}


# ----------------------------------------------------------------------------------------------------------
# Combining outputs: fig. 6 of all four spaces, image grids, training cost.

def read_per_image_curves(csv_path: Path) -> dict[str, torch.Tensor]:
    """``lpips_per_image.csv`` (columns ``step, <space>:<image>``) -> {space: [steps, N]}."""
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2 or rows[0][0] != "step":
        raise ReproError(f"{csv_path}: not an lpips_per_image.csv (header {rows[0] if rows else 'missing'})")
    header, body = rows[0][1:], np.array([r[1:] for r in rows[1:]], dtype=np.float64)  # [steps, columns]
    curves: dict[str, list[int]] = {}
    for j, col in enumerate(header):
        curves.setdefault(col.split(":", 1)[0], []).append(j)
    return {space: torch.from_numpy(body[:, cols]) for space, cols in curves.items()}


def combine_curves(runs: dict[str, Path], png: Path, csv_path: Path, *, title: str) -> dict[str, torch.Tensor]:
    """One fig. 6 plot (median + Q1-Q3 band per step) of each space's curves, and its CSV. ``runs``: {space:
    the invert run holding it}; runs may differ in their number of steps."""
    from opstylegan.inversion.curves import plot_lpips_curves, write_curves_csv

    curves: dict[str, torch.Tensor] = {}
    for space, run in runs.items():
        own = read_per_image_curves(run / "lpips_per_image.csv")
        if space not in own:
            raise ReproError(f"{run / 'lpips_per_image.csv'} has no {space} curves (it has {', '.join(own)})")
        curves[space] = own[space]
    write_curves_csv(csv_path, curves)
    plot_lpips_curves(png, curves, title=title)
    return curves


def _load_gray(path: Path) -> np.ndarray:
    from opstylegan.data.images import load_image

    return load_image(path, channels=1)  # [H, W, 1] uint8


def inversion_grid(targets: Path, runs: dict[str, Path], png: Path, max_rows: int = GRID_MAX_ROWS) -> None:
    """Rows = the first ``max_rows`` targets; columns = target, then the reconstruction of each space of ``runs``
    ({space: invert run}, e.g. w | w+ | W | W+); 1 px gaps."""
    from opstylegan.data.images import center_crop_resize, save_image

    stems = sorted(p.stem for p in targets.iterdir() if p.suffix.lower() == ".png")[:max_rows]
    columns = [(run, SPACE_DIRS[s]) for s, run in runs.items()]
    rows = []
    for stem in stems:
        recon = [_load_gray(run / d / f"{stem}.png") for run, d in columns]
        target = center_crop_resize(_load_gray(targets / f"{stem}.png"), recon[0].shape[0], allow_upscale=True)
        rows.append([target, *recon])
    save_image(png, _tile(rows))


def pulse_grid(targets: Path, pulse_dir: Path, factors: Sequence[int], png: Path) -> None:
    """Rows = images; columns = target, then per factor: low-res target | baseline | overparam."""
    from opstylegan.data.images import save_image

    rows = []
    for src in sorted(p for p in targets.iterdir() if p.suffix.lower() == ".png"):
        row = [_load_gray(src)]
        for f in factors:
            row.append(_load_gray(pulse_dir / f"baseline-x{f}" / "lowres" / f"{src.stem}.png"))
            row += [_load_gray(pulse_dir / f"{name}-x{f}" / "results" / f"{src.stem}.png") for name in MODEL_SPACES]
        rows.append(row)
    save_image(png, _tile(rows))


def _tile(rows: list[list[np.ndarray]], gap: int = 1) -> np.ndarray:
    """A list of rows of equal-size uint8 [H, W, 1] images -> one [H', W', 1] image with ``gap`` px of gray."""
    h, w, c = rows[0][0].shape
    ncols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + gap) - gap, ncols * (w + gap) - gap, c), 128, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            grid[i * (h + gap): i * (h + gap) + h, j * (w + gap): j * (w + gap) + w] = img
    return grid


def read_stats(run: Path) -> list[dict[str, Any]]:
    """A run's stats.jsonl as a list of ticks (the last record wins when a resumed run repeated a tick)."""
    ticks: dict[float, dict[str, Any]] = {}
    for n, line in enumerate((run / "stats.jsonl").read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len((run / "stats.jsonl").read_text().splitlines()):
                continue  # a line being written by a running training
            raise ReproError(f"{run / 'stats.jsonl'} line {n}: not JSON") from None
        ticks[round(float(rec["kimg"]), 3)] = rec
    return [ticks[k] for k in sorted(ticks)]


def training_cost(runs: dict[str, Path]) -> dict[str, Any]:
    """Table 4: s/kimg (total time / kimg) over the ticks every run has reached, leaving out each run's first tick
    (start-up), and the peak memory over those ticks (GPU: max allocated; CPU: peak RSS of the process)."""
    stats = {name: read_stats(run) for name, run in runs.items()}
    for name, ticks in stats.items():
        if not ticks:
            raise ReproError(f"{runs[name] / 'stats.jsonl'} has no ticks yet")
    ends = {name: [round(t["kimg"], 3) for t in ticks] for name, ticks in stats.items()}
    common = sorted(set.intersection(*(set(e) for e in ends.values())))
    if not common:
        raise ReproError(f"the runs share no tick: {', '.join(f'{n} at kimg {e}' for n, e in ends.items())}")
    use = common[1:] if len(common) > 1 else common
    out: dict[str, Any] = {"kimg_range": [None, use[-1]], "ticks_used": len(use),
                           "first_tick_dropped": len(common) > 1, "models": {}}
    for name, ticks in stats.items():
        prev = {round(t["kimg"], 3): (round(ticks[i - 1]["kimg"], 3) if i else 0.0) for i, t in enumerate(ticks)}
        chosen = [t for t in ticks if round(t["kimg"], 3) in use]
        kimg = sum(round(t["kimg"], 3) - prev[round(t["kimg"], 3)] for t in chosen)
        secs = sum(float(t["sec_per_tick"]) for t in chosen)
        gpu = [t["gpu_peak_mem_gb"] for t in chosen if "gpu_peak_mem_gb" in t]
        cpu = [t["cpu_peak_rss_gb"] for t in chosen if "cpu_peak_rss_gb" in t]
        out["kimg_range"][0] = min(prev[round(t["kimg"], 3)] for t in chosen)
        stamps = [t.get("timestamp") for t in ticks if t.get("timestamp") is not None]
        out["models"][name] = {
            "sec_per_kimg": secs / kimg if kimg > 0 else math.nan, "kimg_measured": round(kimg, 3),
            "peak_memory_gb": max(gpu) if gpu else (max(cpu) if cpu else None),
            "memory_kind": "gpu max_memory_allocated" if gpu else "cpu peak RSS (whole process)",
            "kimg_reached": ends[name][-1], "time_span": [min(stamps), max(stamps)] if stamps else None}
    spans = [m["time_span"] for m in out["models"].values()]
    if all(spans):
        out["runs_overlap_in_time"] = max(s[0] for s in spans) < min(s[1] for s in spans)
    configs = {name: _read_json(run / "config.json") or {} for name, run in runs.items()}
    out["config_differences"] = _config_diff(configs.get("baseline", {}), configs.get("overparam", {}))
    return out


def _config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    """Keys whose values differ between two nested configs: {dotted key: [a, b]}."""
    diff: dict[str, list[Any]] = {}
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            diff.update(_config_diff(va, vb, f"{prefix}{k}."))
        elif va != vb:
            diff[f"{prefix}{k}"] = [va, vb]
    return diff


# ----------------------------------------------------------------------------------------------------------
# Results.

def collect_results(opts: Options, steps: StepRunner, meta: dict[str, Any]) -> dict[str, Any]:
    """Read every finished part's outputs back from OUT into one dict (parts not run yet are absent)."""
    out = opts.outdir
    res: dict[str, Any] = {"format": RESULTS_FORMAT, **meta, "paper": PAPER, "parts": {}}
    parts = res["parts"]
    t1 = {n: _read_json(out / "table1" / f"{n}.json") for n in MODEL_SPACES}
    if all(t1.values()):
        parts["table1"] = {n: {"fid": j["metrics"]["fid"]["value"], "num_fake": j["metrics"]["fid"]["num_fake"],
                               "precision": j["metrics"].get("pr", {}).get("value", {}).get("precision"),
                               "recall": j["metrics"].get("pr", {}).get("value", {}).get("recall"),
                               "num_real": j["metrics"]["fid"]["num_real"], "ppl": j["metrics"]["ppl"]["value"],
                               "ppl_samples": j["metrics"]["ppl"]["num_samples"], "warnings": j.get("warnings", [])}
                           for n, j in t1.items()}
    parts.update(_inversion_part("table2", out / "table2", steps))
    unseen = _read_json(out / "table2" / "unseen_measures.json")
    if "table2" in parts:
        free = {**free_parameters(opts.baseline), **free_parameters(opts.overparam)}
        for space, r in parts["table2"].items():
            r["free_parameters"] = free.get(space)
            if unseen and space in unseen:
                r["lpips_alex"] = unseen[space]["lpips_alex"]
                r["psnr_png"] = unseen[space]["psnr"]
    parts.update(_inversion_part("ood", out / "ood", steps))
    t3 = {}
    for name, space in INTERP_SETS:
        j = _read_json(out / "table3" / f"{name}-{SPACE_DIRS[space]}" / "editability.json")
        if j:
            t3[f"{name} {space}"] = {"midpoint_fid": j["fid"], "path_length": j["ppl"], "num_pairs": j["num_pairs"],
                                     "num_latents": j.get("num_latents"), "num_reference": j.get("num_reference")}
    if t3:
        parts["table3"] = t3
    if (out / "table4.json").is_file():
        parts["table4"] = _read_json(out / "table4.json")
    pulse = {}
    for f in opts.pulse_factors:
        for name in MODEL_SPACES:
            j = _read_json(out / "pulse" / f"{name}-x{f}" / "pulse.json")
            if j:
                pulse[f"{name} x{f}"] = {"space": j["space"], "factor": f,
                                         "lpips_lowres_median": j["lpips_lowres_median"],
                                         "per_image": {Path(i["image"]).stem: i["lpips_lowres"] for i in j["images"]}}
    if pulse:
        parts["pulse"] = pulse
    gs = _read_json(out / "ganspace" / "ganspace.json")
    if gs and (out / "ganspace" / "grid" / "grid.json").is_file():
        grid = _read_json(out / "ganspace" / "grid" / "grid.json")
        strips = sorted(str(p.relative_to(out)) for p in (out / "ganspace" / "grid").glob("*.png"))
        parts["ganspace"] = {"explained_variance_ratio": grid.get("explained_variance_ratio"), "images": strips}
    timings: dict[str, float] = {}
    for rec in steps.records.values():
        part = rec["name"].split("-", 1)[0]
        timings[part] = round(timings.get(part, 0.0) + rec["elapsed_s"], 2)
    res["timings_s"] = {"per_part": timings, "per_step": {n: r["elapsed_s"] for n, r in steps.records.items()}}
    res["commands"] = {n: r["command"] for n, r in steps.records.items()}
    return res


def _inversion_part(part: str, folder: Path, steps: StepRunner) -> dict[str, Any]:
    spaces: dict[str, Any] = {}
    for name in MODEL_SPACES:
        summary = _read_json(folder / name / "summary.json")
        if not summary:
            continue
        for space, r in summary["results"].items():
            spaces[space] = {"model": name, "images": r["images"], "lpips": r["lpips"], "mse": r["mse"],
                             "psnr": r["psnr"], "steps": summary["options"]["steps"],
                             "per_image_lpips": {Path(k).stem: v["lpips"] for k, v in r["per_image"].items()}}
    return {part: spaces} if spaces else {}


def _f(x: Any, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cmds(steps: StepRunner, prefix: str) -> str:
    lines = [r["command"] for n, r in steps.records.items() if n.startswith(prefix)]
    return "```\n" + "\n".join(lines) + "\n```\n" if lines else ""


def render_markdown(res: dict[str, Any], steps: StepRunner, script_command: str) -> str:
    """results.md: one section per part, a table next to the paper's figures, and the commands."""
    p = res["parts"]
    md = [f"# Fashion-MNIST 32x32 reproduction ({res['created_utc']})\n",
          f"Produced by\n```\n{script_command}\n```\n",
          f"Models: baseline `{res['models']['baseline']['fingerprint'][:16]}`, overparam "
          f"`{res['models']['overparam']['fingerprint'][:16]}`; train set "
          f"`{res['datasets']['train']['content_sha256'][:16]}`, test set "
          f"`{res['datasets']['test']['content_sha256'][:16]}`. Device: {res['device']}, "
          f"{res['threads']} thread(s). Paper figures: FFHQ 256 px (tables 1, 4), CelebA-HQ (tables 2, 3).\n"]
    if "table1" in p:
        t = p["table1"]
        md += ["## Table 1: generation\n", "| model | FID (vs train) | images gen / real | precision | recall | "
               "PPL (W, end) | pairs | paper FID / PPL |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for n, r in t.items():
            pp = PAPER["table1"][n]
            md.append(f"| {n} | {_f(r['fid'], 2)} | {r['num_fake']} / {r['num_real']} | {_f(r.get('precision'))} | "
                      f"{_f(r.get('recall'))} | {_f(r['ppl'], 2)} | {r['ppl_samples']} | {pp['fid']} / {pp['ppl']} |")
        md += ["", _cmds(steps, "table1")]
    for part, title in (("table2", "Table 2: inversion of Fashion-MNIST test images"),
                        ("ood", "Out-of-distribution inversion")):
        if part not in p:
            continue
        md += [f"## {title}\n", "| space | model | free numbers | images | steps | LPIPS-VGG median (Q1-Q3) | "
               "LPIPS-Alex median (Q1-Q3) | MSE median | PSNR median (dB) | paper LPIPS (image A) |",
               "| --- | --- |" + " ---: |" * 8]
        for space, r in p[part].items():
            paper = PAPER["table2_image_a_lpips"].get(space) if part == "table2" else None
            alex = r.get("lpips_alex")
            alex_s = f"{_f(alex['median'])} ({_f(alex['q1'])}-{_f(alex['q3'])})" if alex else "—"
            md.append(f"| {space} | {r['model']} | {r.get('free_parameters') or '—'} | {r['images']} | "
                      f"{r['steps']} | "                      f"{_f(r['lpips']['median'])} ({_f(r['lpips']['q1'])}-{_f(r['lpips']['q3'])}) | {alex_s} | "
                      f"{_f(r['mse']['median'], 4)} | {_f(r['psnr']['median'], 2)} | {_f(paper)} |")
        figs = ("table2/fig6.png", "table2/grid.png") if part == "table2" else ("ood/curves.png", "ood/grid.png")
        md += ["", f"Curves (fig. 6): `{figs[0]}`; grid (target | w | w+ | W | W+): `{figs[1]}`.\n",
               _cmds(steps, f"{part}-")]
    if "table3" in p:
        md += ["## Table 3: interpolation between inverted latents\n",
               "| latents | pairs | midpoint FID (vs test) | reference images | path length | paper FID / path |",
               "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for k, r in p["table3"].items():
            pp = PAPER["table3"][k]
            md.append(f"| {k} | {r['num_pairs']} | {_f(r['midpoint_fid'], 2)} | {r['num_reference']} | "
                      f"{_f(r['path_length'])} | {pp['fid']} / {pp['path']} |")
        md += ["", _cmds(steps, "table3")]
    if "table4" in p:
        t = p["table4"]
        lo, hi = t["kimg_range"]
        md += ["## Table 4: training cost\n", f"Averaged over kimg {lo}-{hi} ({t['ticks_used']} tick(s) reached by "
               f"both runs{', first tick left out' if t['first_tick_dropped'] else ''}); the runs "
               f"{'ran at the same time' if t.get('runs_overlap_in_time') else 'did not overlap in time'}. "
               f"Config differences: {t['config_differences'] or 'none'}.\n",
               "| model | s / kimg | peak memory (GB) | memory measured | paper GB / s per kimg (4xA100) |",
               "| --- | ---: | ---: | --- | ---: |"]
        for n, r in t["models"].items():
            pp = PAPER["table4"][n]
            md.append(f"| {n} | {_f(r['sec_per_kimg'], 2)} | {_f(r['peak_memory_gb'], 3)} | {r['memory_kind']} | "
                      f"{pp['memory_gb']} / {pp['sec_per_kimg']} |")
        md += ["", f"From the runs' stats.jsonl by\n```\n{script_command}\n```\n"]
    if "pulse" in p:
        md += ["## PULSE (sec. 5.1; 16x would leave 2x2 px at 32 px, so 4x and 8x)\n",
               "| model | space | factor | low-res LPIPS median |", "| --- | --- | ---: | ---: |"]
        md += [f"| {k.split()[0]} | {r['space']} | {r['factor']}x | {_f(r['lpips_lowres_median'])} |"
               for k, r in p["pulse"].items()]
        md += ["", "Grid `pulse/grid.png`: target, then per factor low-res | baseline | overparam.\n",
               _cmds(steps, "pulse")]
    if "ganspace" in p:
        evr = p["ganspace"]["explained_variance_ratio"] or []
        md += ["## GANSpace (overparam, top 3 components)\n", f"Explained variance: {', '.join(_f(v) for v in evr)}; "
               f"strips: {', '.join(f'`{i}`' for i in p['ganspace']['images'])}.\n", _cmds(steps, "ganspace")]
    t = res["timings_s"]["per_part"]
    md += ["## Wall time per part (s)\n", "| " + " | ".join(t) + " |", "|" + " ---: |" * len(t),
           "| " + " | ".join(_f(v, 1) for v in t.values()) + " |", ""]
    return "\n".join(md)


# ----------------------------------------------------------------------------------------------------------
# Entry points.

def script_command(opts: Options) -> str:
    """The full command line that reproduces ``opts`` (every option explicit)."""
    argv = ["python", "scripts/reproduce_fmnist.py"]
    for f in dataclasses.fields(opts):
        v = getattr(opts, f.name)
        flag = "--" + f.name.replace("_", "-")
        if v is None:
            continue
        argv += [flag, ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return shlex.join(argv)


def reproduce(opts: Options, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected parts (skipping finished steps), then write OUT/results.json and OUT/results.md.

    Returns the results dict. Raises FileNotFoundError / ValueError for bad inputs (before any work) and
    ReproError when a step fails; results.json is still written with the parts finished so far.
    """
    check_inputs(opts)
    log = log or (lambda _msg: None)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    opts.outdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta = {"created_utc": _utc_now(), "script_command": script_command(opts), "device": opts.device,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(opts).items()},
            "models": {n: model_record(p) for n, p in opts.models().items()},
            "datasets": {"train": dataset_record(opts.train_data), "test": dataset_record(opts.test_data)}}
    inputs = {**{f"model:{n}": m["fingerprint"] for n, m in meta["models"].items()},
              **{f"data:{n}": d["content_sha256"] for n, d in meta["datasets"].items()}}
    steps = StepRunner(opts.outdir, log, inputs)
    own: dict[str, float] = {}
    failure: ReproError | None = None
    try:
        for part in PARTS:
            if part in opts.parts:
                t0 = time.perf_counter()
                RUNNERS[part](opts, steps)
                own[part] = round(time.perf_counter() - t0, 2)
    except ReproError as e:
        failure = e
    changed = [n for n, p in opts.models().items() if model_record(p)["fingerprint"] != inputs[f"model:{n}"]]
    if changed and failure is None:
        failure = ReproError(f"the {' and '.join(changed)} model folder(s) changed during the run (a training "
                             "writing into it?): use a fixed snapshot folder, e.g. network-000400.000")
    # Records of steps done in earlier invocations (skipped parts included) count in the timings too.
    for rec_path in sorted((opts.outdir / "steps").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        steps.records.setdefault(rec["name"], rec)
    res = collect_results(opts, steps, meta)
    res["timings_s"]["this_invocation_per_part"] = own
    res["timings_s"]["this_invocation_total"] = round(time.perf_counter() - start, 2)
    res["error"] = str(failure) if failure else None
    _write_json(opts.outdir / "results.json", res)
    from opstylegan.io.atomic import write_text

    write_text(opts.outdir / "results.md", render_markdown(res, steps, meta["script_command"]))
    if failure:
        raise failure
    return res


def _parts(value: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise click.BadParameter(f"{value!r}: expected a comma-separated subset of {','.join(PARTS)}")
    return parts


def _factors(value: str) -> tuple[int, ...]:
    try:
        f = tuple(int(v) for v in value.split(","))
    except ValueError:
        f = ()
    if not f or any(v not in (2, 4, 8, 16, 32) for v in f):
        raise click.BadParameter(f"{value!r}: expected comma-separated factors from 2, 4, 8, 16, 32")
    return f


_dir = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--baseline", type=_dir, required=True, help="Baseline model folder (G_ema snapshot).")
@click.option("--overparam", type=_dir, required=True, help="Overparameterized model folder.")
@click.option("--train-data", type=_dir, required=True, help="Training set (`opstylegan dataset` folder), for FID.")
@click.option("--test-data", type=_dir, required=True, help="Test set: inversion targets and interpolation reference.")
@click.option("--runs-baseline", type=_dir, required=True, help="The baseline's training run folder (stats.jsonl).")
@click.option("--runs-overparam", type=_dir, required=True, help="The overparam model's training run folder.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Where to write.")
@click.option("--num-fid", type=click.IntRange(2), default=2048, help="Generated images for each FID / PR.")
@click.option("--num-real", type=click.IntRange(2), default=None, help="Training images for FID / PR [--num-fid].")
@click.option("--num-reference", type=click.IntRange(2), default=None,
              help="Test images as the interpolation-FID reference [--num-fid].")
@click.option("--num-ppl", type=click.IntRange(2), default=1000, help="PPL pairs per model.")
@click.option("--num-invert", type=click.IntRange(2), default=100, help="First K test images inverted.")
@click.option("--steps", type=click.IntRange(1), default=1000, help="Steps of each inversion / PULSE run.")
@click.option("--max-pairs", type=click.IntRange(1), default=None, help="Interpolation pairs measured [all].")
@click.option("--num-interp", type=click.IntRange(2), default=None,
              help="Table 3 measures the pairs of the first K inverted latents [all inverted].")
@click.option("--ood", type=click.Path(path_type=Path), default=DEFAULT_OOD, help="Out-of-distribution images.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads [torch's default].")
@click.option("--device", default="auto", help="Device for every command: auto, cpu, cuda[:N].")
@click.option("--batch", type=click.IntRange(1), default=16, help="Images per batch (invert, PULSE, metrics).")
@click.option("--pulse-images", type=click.IntRange(1), default=4, help="First test images given to PULSE.")
@click.option("--pulse-factors", type=str, default="4,8", callback=lambda c, p, v: _factors(v),
              help="PULSE downsampling factors.")
@click.option("--ganspace-samples", type=click.IntRange(2), default=100_000, help="W rows for the PCA.")
@click.option("--parts", type=str, default=",".join(PARTS), callback=lambda c, p, v: _parts(v),
              help="Parts to run (finished steps of any part are skipped anyway).")
def main(**kwargs: Any) -> None:
    """Reproduce the paper's tables 1-4, fig. 6, PULSE, GANSpace and OOD inversion on Fashion-MNIST 32x32."""
    opts = Options(**kwargs)
    try:
        res = reproduce(opts, log=lambda m: click.echo(m, err=True))
    except (ReproError, FileNotFoundError, ValueError) as e:
        if e.__cause__ is not None:  # a command crashed: its traceback is what the maintainers need
            traceback.print_exception(e.__cause__)
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {opts.outdir / 'results.json'} and {opts.outdir / 'results.md'} "
               f"({res['timings_s']['this_invocation_total']:.0f} s)")


if __name__ == "__main__":
    main()
