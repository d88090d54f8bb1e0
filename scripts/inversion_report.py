"""Table 2 and fig. 6 from invert runs made separately: one run per space, with any number of steps or processes.

``reproduce_fmnist.py --parts table2`` inverts every space itself, in one run per model. Long protocols (the
paper's 1000 steps) are easier to run one space at a time, e.g. with torchrun over several processes and
resumed when stopped; this script gathers such runs into the same table, curves and grid:

    python scripts/inversion_report.py --targets out/R/data/targets \\
        --run w=out/R/table2/baseline --run w+=out/wplus-1000 --run W=out/W-1000 --run W+=out/Wplus-1000 \\
        --outdir out/table2-1000

For each space: LPIPS-VGG (what the projector minimised, from the run's summary.json), LPIPS-AlexNet and PSNR
of the saved PNG reconstructions against the targets (what it did not), median and quartiles, the free numbers
of the space, and the steps of its run; for each pair of spaces, on how many images the later one wins by each
measure, with an exact two-sided sign test. Writes OUT/report.json, OUT/report.md, OUT/fig6.png (+ CSV) and
OUT/grid.png. Every run must have inverted the same images, all found in --targets.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click
import torch

from opstylegan.io.atomic import write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce_fmnist import (  # noqa: E402  (the sibling script, imported from its folder)
    SPACE_DIRS, ReproError, _quartiles, combine_curves, free_parameters, inversion_grid, unseen_measures)

MEASURES = {"lpips_vgg": "LPIPS-VGG", "lpips_alex": "LPIPS-AlexNet", "psnr": "PSNR"}
HIGHER_IS_BETTER = {"lpips_vgg": False, "lpips_alex": False, "psnr": True}


def _run_arg(value: str) -> tuple[str, Path]:
    space, sep, folder = value.partition("=")
    if not sep or space not in SPACE_DIRS or not folder:
        raise click.BadParameter(f"{value!r}: expected SPACE=FOLDER with SPACE one of {', '.join(SPACE_DIRS)}")
    return space, Path(folder)


def read_run(space: str, run: Path, targets: Path) -> dict[str, Any]:
    """The summary of ``space`` in the invert run folder ``run``; raises ReproError naming what does not fit."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise ReproError(f"{run}: no summary.json (not an `opstylegan invert` output folder, or not finished)")
    summary = json.loads(summary_path.read_text())
    if space not in summary.get("results", {}):
        raise ReproError(f"{run} holds the spaces {', '.join(summary.get('results', {}))}, not {space}")
    per_image = {Path(k).stem: v["lpips"] for k, v in summary["results"][space]["per_image"].items()}
    missing = sorted(s for s in per_image if not (targets / f"{s}.png").is_file())
    if missing:
        raise ReproError(f"{run} inverted images that are not in {targets}: {', '.join(missing[:5])}")
    return {"run": str(run), "model": summary["model"], "fingerprint": summary["fingerprint"],
            "steps": summary["options"]["steps"], "world_size": summary.get("world_size", 1),
            "per_image_lpips_vgg": per_image}


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test (ties dropped): P(a split at least this uneven | both equally likely)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def report(targets: Path, runs: dict[str, Path], outdir: Path, device: str = "cpu") -> dict[str, Any]:
    """Check the runs, measure them, write OUT/report.json, report.md, fig6.png (+ CSV) and grid.png."""
    info = {space: read_run(space, run, targets) for space, run in runs.items()}
    images = {space: sorted(r["per_image_lpips_vgg"]) for space, r in info.items()}
    first = next(iter(images))
    for space, names in images.items():
        if names != images[first]:
            raise ReproError(f"the {space} run ({runs[space]}) inverted {len(names)} other images than the "
                             f"{first} run ({len(images[first])}): compare runs of the same images")
    outdir.mkdir(parents=True, exist_ok=True)
    unseen = unseen_measures(targets, runs, device)
    free = {model: free_parameters(model) for model in {r["model"] for r in info.values()}}  # one load per model
    spaces: dict[str, Any] = {}
    per_image: dict[str, dict[str, torch.Tensor]] = {}
    for space, r in info.items():
        names = images[space]
        per_image[space] = {
            "lpips_vgg": torch.tensor([r["per_image_lpips_vgg"][n] for n in names], dtype=torch.float64),
            "lpips_alex": torch.tensor([unseen[space]["per_image"][n]["lpips_alex"] for n in names],
                                       dtype=torch.float64),
            "psnr": torch.tensor([unseen[space]["per_image"][n]["psnr"] for n in names], dtype=torch.float64)}
        spaces[space] = {"model": r["model"], "fingerprint": r["fingerprint"], "run": r["run"], "steps": r["steps"],
                         "world_size": r["world_size"], "images": len(names),
                         "free_numbers": free[r["model"]][space],
                         **{m: _quartiles(v) for m, v in per_image[space].items()},
                         "per_image": {n: {m: float(per_image[space][m][i]) for m in MEASURES}
                                       for i, n in enumerate(names)}}
    order = list(info)
    pairs = []
    for a, b in zip(order, order[1:], strict=False):
        row: dict[str, Any] = {"a": a, "b": b}
        for m in MEASURES:
            diff = per_image[b][m] - per_image[a][m]
            if not HIGHER_IS_BETTER[m]:
                diff = -diff
            wins, losses = int((diff > 0).sum()), int((diff < 0).sum())
            row[m] = {"b_better": wins, "a_better": losses, "sign_test_p": sign_test(wins, losses)}
        pairs.append(row)
    steps = {space: r["steps"] for space, r in info.items()}
    n = len(images[first])
    title = f"LPIPS per step, {n} images (median, Q1-Q3)"
    if len(set(steps.values())) > 1:  # runs of different lengths: say which is which
        title = f"LPIPS per step, {n} images; steps {'/'.join(steps)} = {'/'.join(map(str, steps.values()))}"
    combine_curves(runs, outdir / "fig6.png", outdir / "fig6_curves.csv", title=title)
    inversion_grid(targets, runs, outdir / "grid.png")
    res = {"format": 1, "targets": str(targets), "images": images[first], "spaces": spaces, "pairs": pairs}
    write_text(outdir / "report.json", json.dumps(res, indent=1) + "\n")
    write_text(outdir / "report.md", render(res))
    return res


def render(res: dict[str, Any]) -> str:
    """The table (one row per space) and the pairwise comparisons, as Markdown."""
    def q(d: dict[str, float], digits: int) -> str:
        return f"{d['median']:.{digits}f} ({d['q1']:.{digits}f}-{d['q3']:.{digits}f})"

    md = ["| space | model | steps | free numbers | LPIPS-VGG median (Q1-Q3) | LPIPS-AlexNet median (Q1-Q3) "
          "| PSNR median (Q1-Q3, dB) |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for space, r in res["spaces"].items():
        md.append(f"| {space} | {r['model']} | {r['steps']} | {r['free_numbers']} | {q(r['lpips_vgg'], 3)} "
                  f"| {q(r['lpips_alex'], 3)} | {q(r['psnr'], 2)} |")
    md += ["", f"Images: {len(res['images'])}. Pairs (images where the second space is better / worse, exact sign "
           "test p):", ""]
    for p in res["pairs"]:
        cells = [f"{MEASURES[m]} {p[m]['b_better']}/{p[m]['a_better']} (p = {p[m]['sign_test_p']:.1g})"
                 for m in MEASURES]
        md.append(f"- {p['b']} vs {p['a']}: " + ", ".join(cells))
    return "\n".join(md) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--targets", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The target PNGs the runs inverted (e.g. out/R/data/targets of reproduce_fmnist.py).")
@click.option("--run", "runs", multiple=True, required=True, callback=lambda c, p, v: [_run_arg(x) for x in v],
              help="SPACE=FOLDER: an `opstylegan invert` output folder holding SPACE; repeat, in table order.")
@click.option("--outdir", type=click.Path(file_okay=False, path_type=Path), required=True, help="Where to write.")
@click.option("--device", default="cpu", help="Device for LPIPS-AlexNet.")
def main(targets: Path, runs: list[tuple[str, Path]], outdir: Path, device: str) -> None:
    """Gather separate invert runs (one per space) into table 2, fig. 6 and the inversion grid."""
    by_space = dict(runs)
    if len(by_space) != len(runs):
        raise click.BadParameter("each space may be given once", param_hint="--run")
    try:
        res = report(targets, by_space, outdir, device)
    except (ReproError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(render(res), nl=False)
    click.echo(f"wrote {outdir}: report.json, report.md, fig6.png, fig6_curves.csv, grid.png")


if __name__ == "__main__":
    main()
