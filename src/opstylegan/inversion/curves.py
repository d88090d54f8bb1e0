"""Fig. 6 of the paper: LPIPS per optimisation step, median and quartile band, one curve per latent space.

Writes the curves as CSV (always) and draws them with matplotlib's Agg canvas (imported lazily; no global
``matplotlib.use`` call, no pyplot state). matplotlib is optional: :func:`plot_lpips_curves` raises ImportError
without it, and callers skip the plot with :data:`PLOTS_HINT`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping

import torch

from opstylegan.inversion.projector import lpips_quartiles
from opstylegan.io.atomic import write_bytes, write_text

__all__ = ["PLOTS_HINT", "plot_lpips_curves", "write_curves_csv", "write_per_image_csv"]

#: How to get the plots when matplotlib is missing.
PLOTS_HINT = "matplotlib is not installed; `pip install opstylegan[plots]` adds it"

_COLORS = {"w": "tab:gray", "w+": "tab:blue", "W": "tab:orange", "W+": "tab:red"}


def write_curves_csv(path: str | os.PathLike[str], curves: Mapping[str, torch.Tensor]) -> None:
    """One row per step: ``step, <space>_q1, <space>_median, <space>_q3`` for every space (curves: [steps, N])."""
    spaces = list(curves)
    stats = {s: lpips_quartiles(curves[s]) for s in spaces}  # [steps, 3] each
    steps = max(c.shape[0] for c in curves.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step"] + [f"{s}_{k}" for s in spaces for k in ("q1", "median", "q3")])
    for t in range(steps):
        row: list[object] = [t]
        for s in spaces:
            row += [f"{v:.6f}" for v in stats[s][t].tolist()] if t < len(stats[s]) else ["", "", ""]
        w.writerow(row)
    write_text(path, buf.getvalue())


def write_per_image_csv(path: str | os.PathLike[str], curves: Mapping[str, torch.Tensor],
                        names: Mapping[str, list[str]]) -> None:
    """The raw curves: one row per step, one column ``<space>:<image>`` per space and image."""
    cols = [(s, j, f"{s}:{n}") for s in curves for j, n in enumerate(names[s])]
    steps = max(c.shape[0] for c in curves.values())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["step"] + [c for _, _, c in cols])
    for t in range(steps):
        w.writerow([t] + [f"{float(curves[s][t, j]):.6f}" for s, j, _ in cols])
    write_text(path, buf.getvalue())


def plot_lpips_curves(path: str | os.PathLike[str], curves: Mapping[str, torch.Tensor], *,
                      title: str = "Inversion: LPIPS per step (median, Q1-Q3 band)") -> None:
    """Draw fig. 6 into a PNG: x = step, y = LPIPS, one line (median) and band (Q1-Q3) per space.

    Raises ImportError (before writing anything) when matplotlib is not installed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for space, curve in curves.items():
        q = lpips_quartiles(curve).numpy()  # [steps, 3]
        x = range(1, len(q) + 1)
        color = _COLORS.get(space)
        ax.plot(x, q[:, 1], label=f"{space} (N={curve.shape[1]})", color=color)
        ax.fill_between(x, q[:, 0], q[:, 2], alpha=0.25, color=color, linewidth=0)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("LPIPS (VGG)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes(path, buf.getvalue())
