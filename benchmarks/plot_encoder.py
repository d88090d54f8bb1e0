"""Figures of ``bench_encoder.py --outdir`` runs: LPIPS per step count (encoder start vs w_avg start, median
and quartiles) and a grid of reconstructions (target, encoder alone, refined, from w_avg).

    python benchmarks/plot_encoder.py --bench "W (fmnist32-overparam)" out/bench_encoder_W.json \\
        --bench "w+ (fmnist32-baseline)" out/bench_encoder_wplus.json --targets data/targets \\
        --curves docs/results/encoder-curves.png --grid docs/results/encoder-grid.png

Needs matplotlib (the ``plots`` extra). The grid takes the reconstructions of the first bench's run folders.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

GRID_COLUMNS = ("encoder alone", "encoder + 25 steps", "encoder + 100 steps", "w_avg, 100 steps", "w_avg, 1000 steps")


def curve(rows: dict[str, Any], prefix: str) -> list[tuple[int, dict[str, Any]]]:
    """(steps, row) of the configurations named ``<prefix>N steps``, sorted by N."""
    out = []
    for name, row in rows.items():
        m = re.fullmatch(re.escape(prefix) + r"(\d+) steps", name)
        if m:
            out.append((int(m.group(1)), row))
    return sorted(out, key=lambda t: t[0])


def plot_curves(benches: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(benches), figsize=(5.2 * len(benches), 4), squeeze=False)
    for ax, (label, bench) in zip(axes[0], benches, strict=True):
        rows = bench["quality"]
        enc = curve(rows, "encoder + ")
        if "encoder alone" in rows:
            enc = [(0, rows["encoder alone"])] + enc
        for pts, name, color in ((enc, "encoder start", "tab:red"), (curve(rows, "w_avg, "), "w_avg start (paper)",
                                                                         "tab:blue")):
            if not pts:
                continue
            x = [max(s, 1) for s, _ in pts]  # the encoder alone drawn at 1 on the log axis
            ax.plot(x, [r["lpips_median"] for _, r in pts], "o-", color=color, label=name)
            ax.fill_between(x, [r["lpips_q1"] for _, r in pts], [r["lpips_q3"] for _, r in pts], color=color,
                            alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("refinement steps (encoder alone at 1)")
        ax.set_ylabel("LPIPS-VGG, median and quartiles")
        ax.set_title(f"{label}, {bench['n']} test images")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grid(bench: dict[str, Any], targets: Path, path: Path, num: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from opstylegan.data.images import load_image
    from opstylegan.inversion.runs import SPACE_DIRS

    rows = bench["quality"]
    cols = [c for c in GRID_COLUMNS if c in rows]
    names = sorted(p.name for p in targets.iterdir() if p.suffix == ".png")[:num]
    labels = ["target"] + [c.replace(" steps", "").replace("w_avg, ", "w_avg ") for c in cols]
    fig, axes = plt.subplots(len(cols) + 1, len(names), figsize=(1.1 * len(names) + 1.2, 1.1 * (len(cols) + 1)),
                             squeeze=False)
    for j, name in enumerate(names):  # one column per image, one row per start / step count
        imgs = [load_image(targets / name)]
        for c in cols:
            imgs.append(load_image(Path(rows[c]["folder"]) / SPACE_DIRS[bench["space"]] / name))
        for i, img in enumerate(imgs):
            ax = axes[i][j]
            ax.imshow(img.squeeze(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i], fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", nargs=2, action="append", metavar=("LABEL", "JSON"), required=True,
                   help="a bench_encoder.py --out file (repeat)")
    p.add_argument("--targets", type=Path, help="the target images (for --grid)")
    p.add_argument("--curves", type=Path, help="write the LPIPS-per-step figure here")
    p.add_argument("--grid", type=Path, help="write the reconstruction grid of the first bench here")
    p.add_argument("--num-grid", type=int, default=8, help="images in the grid")
    args = p.parse_args()
    benches = [(label, json.loads(Path(f).read_text())) for label, f in args.bench]
    if args.curves:
        plot_curves(benches, args.curves)
    if args.grid:
        if args.targets is None:
            p.error("--grid needs --targets")
        plot_grid(benches[0][1], args.targets, args.grid, args.num_grid)


if __name__ == "__main__":
    main()
