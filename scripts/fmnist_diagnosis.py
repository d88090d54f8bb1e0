#!/usr/bin/env python
"""One-change-at-a-time diagnosis of generators trained on Fashion-MNIST: the same five measurements for each
snapshot, side by side in one table.

For every ``--entry LABEL MODEL RUN KIMG`` (a G_ema folder, the training run folder it comes from, and the
kimg it was taken at):

- FID and precision / recall (k = 3) of ``--num-fid`` generated images against the first ``--num-real``
  training images (``opstylegan metrics --metrics fid,pr``; the real features are cached once for all entries);
- the class histogram of ``--num-classes`` samples by the small Fashion-MNIST classifier of
  ``scripts/fmnist_coverage.py`` (KL to uniform, the rarest class, classes never drawn), and on the same samples
  the share of fine-detail power in thin horizontal / vertical lines, relative to the test split's
  (``fmnist_coverage.axis_line_energy``; 1 = as much as real images have);
- the ADA probability and the settings that differ between runs (path-length rows, row spread, style
  mixing, ...) from the run's stats.jsonl and config.json at that kimg;
- the median LPIPS of inverting the first ``--num-invert`` TEST images in the model's native space
  (``opstylegan invert``, ``--steps`` steps).

Writes OUT/diagnosis.json (every figure, with the command of each step) and OUT/diagnosis.md (the table).
Resumable like ``reproduce_fmnist.py``: a step recorded with the same command and inputs is skipped.

    python scripts/fmnist_diagnosis.py --train-data data/fmnist32 --test-data data/fmnist32-test \\
        --classifier benchmarks/data/fmnist-classifier --outdir out/diagnosis \\
        --entry "rows summed" runs/00000-fmnist32-overparam/network-000100.000 runs/00000-fmnist32-overparam 100 \\
        --entry "row spread 0.1" runs/00002-fmnist32-overparam/network-000100.000 runs/00002-fmnist32-overparam 100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fmnist_coverage import (axis_line_energy, generated_images, histogram, load_classifier, load_images,  # noqa: E402
                             predict)
from reproduce_fmnist import (ReproError, StepRunner, _f, _read_json, _write_json, dataset_record,  # noqa: E402
                              export_test_images, model_record, read_stats)

#: Run settings shown beside every entry (dotted keys of the run's config.json), with how a missing key reads.
SETTINGS = {"pl_rows": "mean", "generator.row_spread": 0.5, "style_mixing_prob": None, "pl_weight": None,
            "init_from": None, "generator.num_rows": None, "seed": None, "batch": None}


def _lookup(cfg: dict[str, Any], dotted: str, missing: Any) -> Any:
    cur: Any = cfg
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return missing
        cur = cur[part]
    return cur


def run_settings(run: Path, kimg: float) -> dict[str, Any]:
    """The run's settings of interest and its ADA p at ``kimg`` (the tick at exactly that kimg)."""
    cfg = _read_json(run / "config.json")
    if cfg is None:
        raise ReproError(f"{run}: no config.json (not a training run folder)")
    ticks = {round(float(t["kimg"]), 3): t for t in read_stats(run)}
    tick = ticks.get(round(kimg, 3))
    if tick is None:
        near = sorted(ticks, key=lambda k: abs(k - kimg))[:3]
        raise ReproError(f"{run}/stats.jsonl has no tick at kimg {kimg:g} (nearest: {near})")
    return {"settings": {k: _lookup(cfg, k, missing) for k, missing in SETTINGS.items()},
            "ada_p": tick.get("ada_p"), "pl_mean": tick.get("pl_mean"), "kimg": kimg}


def diagnose(opts: dict[str, Any], log=print) -> dict[str, Any]:
    out = Path(opts["outdir"])
    entries = opts["entry"]
    labels = [e[0] for e in entries]
    if len(set(labels)) != len(labels):
        raise ReproError(f"entry labels must differ, got {labels}")
    # Check every input before any work.
    from opstylegan.io.checkpoint import CheckpointError, read_model_json

    for label, model, run, kimg in entries:
        try:
            read_model_json(Path(model))
        except CheckpointError as e:
            raise ReproError(f"entry {label!r}: {model} is not a model folder: {e}") from None
        run_settings(Path(run), kimg)
    for key in ("train_data", "test_data"):
        if not (Path(opts[key]) / "dataset.json").is_file():
            raise ReproError(f"--{key.replace('_', '-')} {opts[key]}: not an `opstylegan dataset` folder")
    clf, clf_info = load_classifier(opts["classifier"])
    lines_ref = axis_line_energy(load_images(opts["test_data"], opts["num_classes"]))

    steps = StepRunner(out, log, {"train_data": dataset_record(Path(opts["train_data"]))["content_sha256"]})
    targets = out / "data" / "targets"
    export_test_images(Path(opts["test_data"]), targets, opts["num_invert"])
    dev = ["--device", opts["device"]]
    res: dict[str, Any] = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()
                                       if k != "entry"},
                           "classifier": {"path": str(opts["classifier"]), "test_accuracy": clf_info["test_accuracy"]},
                           "entries": {}}
    info = {}
    # Classes and inversion of every entry first, then the FIDs (which share the cached real features).
    for label, model, run, kimg in entries:
        slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
        rec = model_record(Path(model))
        steps.inputs = {"model": rec["fingerprint"]}
        space = "W" if rec["overparam"] else "w+"
        mdir = out / slug
        classes_path = mdir / "classes.json"
        classes = _read_json(classes_path)
        if classes is None or classes.get("fingerprint") != rec["fingerprint"] or \
                classes.get("num") != opts["num_classes"] or "lines" not in classes:
            from opstylegan import Generator

            G = Generator.from_pretrained(model, device="cpu").eval()
            images = generated_images(G, opts["num_classes"], seed=0)
            pred = predict(clf, images)
            classes = {"fingerprint": rec["fingerprint"], **histogram(pred), "lines": axis_line_energy(images)}
            _write_json(classes_path, classes)
        inv = mdir / "invert"
        steps.run(f"{slug}-invert", ["invert", "--model", model, "--images", targets, "--space", space,
                                     "--steps", opts["steps"], "--batch", opts["batch"], "--seed", 0,
                                     "--outdir", inv, *dev], [inv / "summary.json"], clean=inv, reads=[targets])
        info[label] = (slug, rec, space, mdir, classes, inv)
    for label, model, run, kimg in entries:
        slug, rec, space, mdir, classes, inv = info[label]
        steps.inputs = {"model": rec["fingerprint"]}
        metrics = mdir / "metrics.json"
        if opts["num_fid"]:
            steps.run(f"{slug}-metrics", ["metrics", "--model", model, "--data", opts["train_data"], "--metrics",
                                          "fid,pr", "--num", opts["num_fid"], "--num-real", opts["num_real"], "--seed",
                                          0, "--batch", opts["batch"], "--out", metrics, *dev], [metrics])
            m = _read_json(metrics)["metrics"]
        else:  # --num-fid 0: no Inception features (about 3 images/s per CPU core)
            m = {"fid": {"value": None}, "pr": {"value": {"precision": None, "recall": None}}}
        summary = _read_json(inv / "summary.json")
        res["entries"][label] = {
            "model": str(model), "run": str(run), "fingerprint": rec["fingerprint"], **run_settings(Path(run), kimg),
            "fid": m["fid"]["value"], "precision": m["pr"]["value"]["precision"], "recall": m["pr"]["value"]["recall"],
            "num_fid": m["fid"].get("num_fake"), "num_real": m["fid"].get("num_real"),
            "classes": {k: classes[k] for k in ("kl_to_uniform", "rarest", "missing", "fractions")},
            "lines_vs_test": classes["lines"] / lines_ref,
            "invert": {"space": space, "steps": opts["steps"], "num": opts["num_invert"],
                       "lpips_median": _summary_median(summary, space)},
            "commands": {k: steps.records[f"{slug}-{k}"]["command"] for k in ("metrics", "invert")
                         if f"{slug}-{k}" in steps.records}}
    _write_json(out / "diagnosis.json", res)
    (out / "diagnosis.md").write_text(markdown(res))
    return res


def _summary_median(summary: dict[str, Any], space: str) -> float:
    """The median final LPIPS of one space from an invert run's summary.json."""
    r = summary.get("results", {}).get(space)
    if r is None:
        raise ReproError(f"invert summary has no results for space {space!r}: {sorted(summary.get('results', {}))}")
    return float(r["lpips"]["median"])


def markdown(res: dict[str, Any]) -> str:
    """The table; without FID (``--num-fid 0``) its three columns are left out."""
    o = res["options"]
    fid = bool(o["num_fid"])
    head = ["run", "kimg", "pl rows", "row spread", "style mixing"]
    if fid:
        head += [f"FID ({o['num_fid']} / {o['num_real']})", "precision", "recall"]
    head += ["KL to uniform", "rarest class", "never drawn", "lines vs test", "ADA p",
             f"inversion LPIPS (median, {o['num_invert']} test images, {o['steps']} steps)"]
    lines = ["| " + " | ".join(head) + " |",
             "| --- | ---: | --- | ---: | ---: |" + (" ---: | ---: | ---: |" if fid else "")
             + " ---: | --- | ---: | ---: | ---: | ---: |"]
    for label, e in res["entries"].items():
        s, c = e["settings"], e["classes"]
        cells = [label, f"{e['kimg']:g}", str(s["pl_rows"]), str(s["generator.row_spread"]), str(s["style_mixing_prob"])]
        if fid:
            cells += [_f(e["fid"], 2), _f(e["precision"]), _f(e["recall"])]
        cells += [f"{c['kl_to_uniform']:.3f}", f"{c['rarest']['class']} {100 * c['rarest']['fraction']:.1f}%",
                  str(len(c["missing"])), f"{e['lines_vs_test']:.2f}", f"{e['ada_p']:.3f}",
                  f"{e['invert']['lpips_median']:.4f} ({e['invert']['space']})"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--entry", type=(str, click.Path(exists=True, file_okay=False, path_type=Path),
                               click.Path(exists=True, file_okay=False, path_type=Path), float), multiple=True,
              required=True, help="LABEL MODEL_FOLDER RUN_FOLDER KIMG (repeat).")
@click.option("--train-data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--test-data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--classifier", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True)
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--num-fid", type=click.IntRange(0), default=2000,
              help="Generated images per FID / PR; 0 leaves FID and PR out.")
@click.option("--num-real", type=click.IntRange(4), default=10000, help="Training images per FID / PR (cached).")
@click.option("--num-classes", type=click.IntRange(1), default=5000, help="Samples classified per entry.")
@click.option("--num-invert", type=click.IntRange(1), default=100, help="First K test images inverted.")
@click.option("--steps", type=click.IntRange(1), default=100, help="Inversion steps.")
@click.option("--batch", type=click.IntRange(1), default=50)
@click.option("--device", default="cpu")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads [torch's default].")
def main(**opts: Any) -> None:
    """Measure FID, precision/recall, class coverage, ADA p and inversion LPIPS of each entry."""
    threads = opts.pop("threads")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        res = diagnose(opts, log=lambda m: click.echo(m, err=True))
    except ReproError as e:
        raise click.ClickException(str(e)) from None
    click.echo(markdown(res))


if __name__ == "__main__":
    main()
