"""`opstylegan edit`: GANSpace (paper sec. 5.2) — fit principal directions of w / W, apply them, show them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import click
import torch

from opstylegan.cli.common import SeedList, device_option, load_generator, resolve_device, write_json
from opstylegan.cli.common import model_option as common_model_option

EXAMPLES = """
\b
Examples:
  opstylegan edit fit --model runs/ffhq/best --samples 100000 --components 16 --outdir out/ganspace
  opstylegan edit apply --model runs/ffhq/best --components out/ganspace/ganspace.safetensors \\
      --latent inv/a.safetensors --component 3 --sigma -3..3 --steps 7 --outdir out/edit
  opstylegan edit apply --model runs/ffhq/best --components out/ganspace/ganspace.safetensors \\
      --seeds 0-3 --component 0 --sigma -2..2 --layers 0-3 --outdir out/edit
  opstylegan edit grid --model runs/ffhq/best --components out/ganspace/ganspace.safetensors --seeds 0-3 --top 7 \\
      --outdir out/grid
"""


class SigmaRange(click.ParamType):
    """'LO..HI' (a range sampled at --steps points) or a single number."""

    name = "LO..HI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        num = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
        m = re.fullmatch(rf"({num})(?:\.\.({num}))?", text)
        try:
            lo = float(m.group(1)) if m else math.nan
            hi = float(m.group(2)) if m and m.group(2) is not None else lo
        except ValueError:
            lo = hi = math.nan
        if not (math.isfinite(lo) and math.isfinite(hi)):
            self.fail(f"bad sigma {text!r}; expected LO..HI such as -3..3, or one number such as 2", param, ctx)
        if hi < lo:
            self.fail(f"bad sigma range {text!r}: the end ({hi}) is below the start ({lo})", param, ctx)
        return lo, hi


def sigma_values(sigma: tuple[float, float], steps: int) -> list[float]:
    lo, hi = sigma
    if lo == hi:
        return [lo]
    return torch.linspace(lo, hi, steps, dtype=torch.float64).tolist()


@click.group(name="edit", epilog=EXAMPLES)
def command() -> None:
    """GANSpace: principal directions of the w / W distribution, and edits along them."""


components_file_option = click.option(
    "--components", "components_path", type=click.Path(exists=True, dir_okay=False), required=True,
    help="ganspace.safetensors written by `opstylegan edit fit` for this model.")
model_option = common_model_option()
outdir_option = click.option("--outdir", type=click.Path(file_okay=False), required=True,
                             help="Where to write the results.")
sigma_option = click.option("--sigma", type=SigmaRange(), default="-3..3", show_default=True,
                            help="Edit strengths in units of the component's standard deviation: LO..HI or one value.")
steps_option = click.option("--steps", type=click.IntRange(2, 101), default=7, show_default=True,
                            help="Values sampled in the --sigma range (ends included).")
layers_option = click.option("--layers", default=None, metavar="A-B",
                             help="Edit only style layers A..B (w / W become w+ / W+); default: all layers.")
trunc_option = click.option("--trunc", "truncation_psi", type=click.FloatRange(-1, 2), default=1.0,
                            show_default=True, help="With --seeds: truncation psi of the sampled latents.")


def _load_components(path: str, G: Any) -> Any:
    from opstylegan.editing.ganspace import GANSpaceError, load_ganspace

    try:
        return load_ganspace(path, G)
    except (GANSpaceError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None


def _layers(spec: str | None, G: Any) -> range | None:
    from opstylegan.editing.ganspace import parse_layers

    if spec is None:
        return None
    try:
        return parse_layers(spec, G.num_ws)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--layers") from None


def _outdir(path: str) -> Path:
    """Create --outdir and prove it writable, before any work."""
    from opstylegan.io.outdir import prepare_outdir

    try:
        return prepare_outdir(path)
    except OSError as e:
        raise click.ClickException(str(e)) from None


def _sigma_labels(sigmas: list[float]) -> list[str]:
    return [f"sigma {v:+.3g}" for v in sigmas]


# ----------------------------------------------------------------------------------------------------------

@command.command(name="fit", epilog=EXAMPLES)
@model_option
@click.option("--samples", type=click.IntRange(2), default=100_000, show_default=True,
              help="Vectors analysed (overparam: rows of sampled W matrices, see --rows-per-matrix).")
@click.option("--components", type=click.IntRange(1), default=16, show_default=True, help="Components kept.")
@click.option("--rows-per-matrix", type=click.IntRange(1), default=None,
              help="Overparam models: rows used from each sampled W [default: all R].")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Sample m uses seed + m.")
@trunc_option
@click.option("--batch", type=click.IntRange(1), default=64, show_default=True, help="Samples mapped at once.")
@outdir_option
@device_option
def fit_command(model, samples, components, rows_per_matrix, seed, truncation_psi, batch, outdir, device):
    """PCA of mapped latents: writes ganspace.safetensors (components [K, C], mean, std, explained variance
    ratio, model fingerprint) and ganspace.json."""
    from opstylegan.editing.ganspace import fit_ganspace

    dev = resolve_device(device)
    G = load_generator(model, dev)
    if components > G.w_avg.shape[0]:
        raise click.BadParameter(f"at most w_dim = {G.w_avg.shape[0]} components, got {components}",
                                 param_hint="--components")
    if samples <= components:
        raise click.BadParameter(f"need more samples than components ({components}), got {samples}",
                                 param_hint="--samples")
    if rows_per_matrix is not None and G.overparam and rows_per_matrix > G.rows:
        raise click.BadParameter(f"this model has R = {G.rows} rows, got {rows_per_matrix}",
                                 param_hint="--rows-per-matrix")
    out = _outdir(outdir)
    with click.progressbar(length=samples, label="sampling", file=None) as bar:
        gs = fit_ganspace(G, samples, components, seed=seed, rows_per_matrix=rows_per_matrix,
                          truncation_psi=truncation_psi, batch_size=batch,
                          progress=lambda done, _n: bar.update(done - bar.pos))
    try:
        st_path, json_path = gs.save(out / "ganspace.safetensors")
    except OSError as e:
        from opstylegan.io.outdir import describe_os_error

        click.echo(json.dumps({**gs.info(), "components": gs.components.tolist(), "mean": gs.mean.tolist()}))
        why = describe_os_error(e, e.filename or out)
        raise click.ClickException(f"{why}; the fitted components are printed above") from None
    ratio = gs.explained_variance_ratio
    click.echo(f"wrote {st_path} and {json_path.name}: top {gs.num_components} components explain "
               f"{float(ratio.sum()):.1%} of the variance (first: {float(ratio[0]):.1%})")


# ----------------------------------------------------------------------------------------------------------

@command.command(name="apply", epilog=EXAMPLES)
@model_option
@components_file_option
@click.option("--latent", "latent_paths", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Latent file(s) to edit (repeatable); or use --seeds.")
@click.option("--seeds", type=SeedList(), default=None, help="Edit random samples of these seeds instead.")
@click.option("--component", type=click.IntRange(0), required=True, help="Component index k (0 = top).")
@sigma_option
@steps_option
@layers_option
@trunc_option
@click.option("--gif/--no-gif", default=False, show_default=True, help="Also a GIF per strip.")
@outdir_option
@device_option
def apply_command(model, components_path, latent_paths, seeds, component, sigma, steps, layers, truncation_psi, gif,
                  outdir, device):
    """Add sigma * std_k * c_k to every vector / row of each latent and write one strip per latent.

    Strips are named <n>_<latent name>_<space>_c<k>.png (n: the latent's position in the command, so the same
    name in two spaces, or a seed given twice, never shares a file); edit.json lists them.
    """
    from opstylegan.data.images import from_tensor, save_image
    from opstylegan.editing.ganspace import edit_latents
    from opstylegan.editing.interpolate import render_latents, save_gif
    from opstylegan.inversion.latents_io import LatentFileError, load_latent
    from opstylegan.inversion.runs import SPACE_DIRS
    from opstylegan.io.images_out import labelled_grid
    from opstylegan.io.outdir import describe_os_error

    if bool(latent_paths) == (seeds is not None):
        raise click.UsageError("give exactly one of --latent FILE or --seeds LIST")
    dev = resolve_device(device)
    G = load_generator(model, dev)
    gs = _load_components(components_path, G)
    if component >= gs.num_components:
        raise click.BadParameter(f"the components file holds {gs.num_components} components (0..."
                                 f"{gs.num_components - 1}), got {component}", param_hint="--component")
    layer_range = _layers(layers, G)
    sigmas = sigma_values(sigma, steps)
    items: list[tuple[str, torch.Tensor, str]] = []
    if latent_paths:
        for p in latent_paths:
            try:
                lf = load_latent(p, G, device=dev)
            except (LatentFileError, FileNotFoundError) as e:
                raise click.ClickException(str(e)) from None
            items.append((Path(p).stem, lf.latent, lf.space))
    else:
        with torch.no_grad():
            w = G.mapping(G.z_from_seeds(seeds), truncation_psi=truncation_psi)
        items = [(f"seed{s:04d}", w[i], G.native_space) for i, s in enumerate(seeds)]
    out = _outdir(outdir)
    records = []
    try:
        for n, (name, latent, space) in enumerate(items):
            edited, out_space = edit_latents(G, latent, space, gs, component, sigmas, layers=layer_range)
            try:
                frames = from_tensor(render_latents(G, edited, out_space))  # [S, H, W, C]
            except ValueError as e:
                raise click.ClickException(f"{name}: {e}") from None
            stem = f"{n:03d}_{name}_{SPACE_DIRS[space]}_c{component:02d}"
            save_image(out / f"{stem}.png", labelled_grid([list(frames)], col_labels=_sigma_labels(sigmas)))
            rec = {"name": name, "space": space, "edited_space": out_space, "strip": f"{stem}.png"}
            if gif:
                save_gif(out / f"{stem}.gif", frames, pingpong=True)
                rec["gif"] = f"{stem}.gif"
            records.append(rec)
        write_json(out / "edit.json", {"model": str(model), "components": str(components_path),
                                       "component": component, "std": float(gs.std[component]), "sigmas": sigmas,
                                       "layers": [layer_range.start, layer_range.stop - 1] if layer_range else None,
                                       "truncation_psi": truncation_psi if seeds is not None else None,
                                       "items": records})
    except OSError as e:
        why = describe_os_error(e, e.filename or out)
        raise click.ClickException(f"{why}; {len(records)} strip(s) were written") from None
    click.echo(f"wrote {len(records)} strip(s) of {len(sigmas)} images to {out}")


# ----------------------------------------------------------------------------------------------------------

@command.command(name="grid", epilog=EXAMPLES)
@model_option
@components_file_option
@click.option("--seeds", type=SeedList(), default="0-3", show_default=True, help="Random samples to edit.")
@click.option("--top", type=click.IntRange(1), default=7, show_default=True, help="Show components 0..top-1.")
@click.option("--sigma", type=SigmaRange(), default="-2..2", show_default=True,
              help="Edit strengths (in std units): LO..HI or one value.")
@click.option("--steps", type=click.IntRange(2, 101), default=5, show_default=True, help="Columns per component.")
@layers_option
@click.option("--trunc", "truncation_psi", type=click.FloatRange(-1, 2), default=0.7, show_default=True,
              help="Truncation psi of the random samples.")
@outdir_option
@device_option
def grid_command(model, components_path, seeds, top, sigma, steps, layers, truncation_psi, outdir, device):
    """Grids of the top principal components on random samples: one grid per seed, a row per component and
    a column per sigma (paper figs. 9 and 10; the middle column is the unedited image for a symmetric range).

    Small images are enlarged (nearest neighbour, to >= 128 px); rows are labelled with the component and its
    share of the variance, columns with sigma. Files are <n>_seed<s>.png, n the seed's position in --seeds."""
    from opstylegan.data.images import from_tensor, save_image
    from opstylegan.editing.ganspace import edit_latents
    from opstylegan.editing.interpolate import render_latents
    from opstylegan.io.images_out import labelled_grid
    from opstylegan.io.outdir import describe_os_error

    dev = resolve_device(device)
    G = load_generator(model, dev)
    gs = _load_components(components_path, G)
    top = min(top, gs.num_components)
    layer_range = _layers(layers, G)
    sigmas = sigma_values(sigma, steps)
    out = _outdir(outdir)
    with torch.no_grad():
        w = G.mapping(G.z_from_seeds(seeds), truncation_psi=truncation_psi)
    ratio = gs.explained_variance_ratio
    row_labels = [f"c{k} {float(ratio[k]):.1%}" for k in range(top)]
    files = []
    try:
        with click.progressbar(length=len(seeds), label="editing", file=None) as bar:
            for i, s in enumerate(seeds):
                rows = []
                for k in range(top):
                    edited, out_space = edit_latents(G, w[i], G.native_space, gs, k, sigmas, layers=layer_range)
                    rows.append(list(from_tensor(render_latents(G, edited, out_space))))  # S x [H, W, C]
                name = f"{i:03d}_seed{s:04d}.png"
                save_image(out / name, labelled_grid(rows, col_labels=_sigma_labels(sigmas), row_labels=row_labels))
                files.append(name)
                bar.update(1)
        write_json(out / "grid.json", {"model": str(model), "components": str(components_path), "seeds": seeds,
                                       "rows": list(range(top)), "sigmas": sigmas, "truncation_psi": truncation_psi,
                                       "std": gs.std[:top].tolist(),
                                       "explained_variance_ratio": gs.explained_variance_ratio[:top].tolist(),
                                       "layers": [layer_range.start, layer_range.stop - 1] if layer_range else None,
                                       "files": files})
    except OSError as e:
        why = describe_os_error(e, e.filename or out)
        raise click.ClickException(f"{why}; {len(files)} grid(s) were written") from None
    except ValueError as e:  # a component edit that renders non-finite images
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {len(files)} grid(s) ({top} components x {len(sigmas)} sigmas) to {out}")
