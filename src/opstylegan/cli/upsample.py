"""`opstylegan upsample`: PULSE super-resolution (sec. 5.1) of image files with a generator."""

from __future__ import annotations

import click

from opstylegan.cli.common import device_option, model_option, resolve_device, write_json

EXAMPLES = """
\b
Examples:
  opstylegan upsample --model runs/ffhq/best --images faces/ --factor 16 --outdir out/pulse
  opstylegan upsample --model M --images tiny16.png --lowres --factor 16 --space W --outdir out/pulse
\b
Without --lowres each image is prepared like `invert` (crop, resize to the model), then downsampled by
nearest neighbour; with --lowres the image is taken as is and its size x factor must equal the model
resolution. Writes per image (one folder per kind, so no input name can collide with another output)
lowres/<stem>.png (the target, enlarged by nearest neighbour for viewing), results/<stem>.png (the result),
down/<stem>.png (the result downsampled), latents/<stem>.safetensors; then comparison.png (low-res target |
result | result downsampled, enlarged and labelled, LPIPS under each) and pulse.json. The folder is locked
while written; a folder holding another upsampling run is refused unless --overwrite is given.
"""

#: The per-image output folders, and the files written beside them.
KIND_DIRS = ("lowres", "results", "down", "latents")
OUTPUT_FILES = ("comparison.png", "pulse.json")


@click.command(name="upsample", epilog=EXAMPLES)
@model_option()
@click.option("--images", multiple=True, required=True, type=click.Path(exists=True),
              help="An image file, folder or .zip; repeat for more.")
@click.option("--factor", type=click.Choice(["2", "4", "8", "16", "32"]), default="16", help="Downsampling factor.")
@click.option("--lowres", is_flag=True, help="The images are already low-res targets (no downsampling).")
@click.option("--space", default=None, type=click.Choice(["w", "w+", "W", "W+"]),
              help="Latent space [default: W for overparam models, w+ for the baseline].")
@click.option("--outdir", type=click.Path(file_okay=False), required=True, help="Where to write.")
@click.option("--steps", type=click.IntRange(1), default=1000, help="Optimisation steps.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.05, help="Adam learning rate.")
@click.option("--reg-strength", type=click.FloatRange(0, 1), default=0.9, help="Pull toward w_avg (every step).")
@click.option("--seed", type=click.IntRange(0), default=0, help="Seed (for --init random).")
@click.option("--init", "init", type=click.Choice(["w_avg", "random"]), default="w_avg", help="Initial latent.")
@click.option("--batch", type=click.IntRange(1), default=16, help="Images optimised at a time.")
@click.option("--on-error", type=click.Choice(["skip", "fail"]), default="skip", help="Unreadable images.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier run's outputs in --outdir (default: refuse).")
@device_option
def command(model, images, factor, lowres, space, outdir, steps, lr, reg_strength, seed, init, batch, on_error,
            overwrite, device):
    """PULSE: find high-res images whose nearest-neighbour downsampled versions match the targets (LPIPS)."""
    import json
    import shutil
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from opstylegan.cli.common import load_generator
    from opstylegan.data.images import ImageError, from_tensor, load_image, save_image, to_tensor
    from opstylegan.inversion.latents_io import save_latent
    from opstylegan.inversion.projector import InversionOptions
    from opstylegan.inversion.pulse import pulse, upsample_nearest
    from opstylegan.inversion.runs import collect_images, load_target
    from opstylegan.io.images_out import enlarge, labelled_grid
    from opstylegan.io.lock import RunLock, RunLockedError
    from opstylegan.io.outdir import describe_os_error, prepare_outdir
    from opstylegan.latent import LatentError, check_space
    from opstylegan.metrics.weights import WeightsError, require_weights

    f = int(factor)
    try:
        InversionOptions(steps=steps, lr=lr, reg_strength=reg_strength, init=init, seed=seed)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    try:
        require_weights("lpips-vgg")
    except WeightsError as e:
        raise click.ClickException(str(e)) from None
    G = load_generator(model, resolve_device(device))
    space = space or ("W" if G.overparam else "w+")
    res = G.img_resolution
    out = Path(outdir)
    try:
        check_space(space, overparam=G.overparam)
        if res % f:
            raise ValueError(f"--factor {f} does not divide the model resolution {res}")
        items = collect_images(images, exclude=[out / n for n in (*KIND_DIRS, *OUTPUT_FILES)])
    except (LatentError, ValueError) as e:
        raise click.UsageError(str(e)) from None
    try:
        prepare_outdir(out)
        lock = RunLock(out).acquire()  # released when the command ends, however it ends
    except (OSError, RunLockedError) as e:
        raise click.ClickException(str(e)) from None
    click.get_current_context().call_on_close(lock.release)
    used = [n for n in (*KIND_DIRS, *OUTPUT_FILES) if (out / n).exists()]
    if used and not overwrite:
        raise click.ClickException(f"{out} holds an earlier run's outputs ({', '.join(used)}); write to another "
                                   "--outdir or add --overwrite to replace them")

    def load(item) -> torch.Tensor:
        if not lowres:
            return load_target(item, G)
        img = load_image(item.files.read_bytes(item.file_index), channels=G.img_channels, name=item.name)
        if img.shape[:2] != (res // f, res // f):
            raise ImageError(item.name, f"is {img.shape[1]}x{img.shape[0]} px; with --lowres and --factor {f} "
                                        f"it must be {res // f}x{res // f} (model resolution {res} / {f})")
        return to_tensor(img)

    loaded, skipped = [], []
    for item in items:
        try:
            loaded.append((item, load(item)))
        except (ImageError, FileNotFoundError) as e:
            if on_error == "fail":
                raise click.ClickException(f"cannot use input image {item.name}: {e}") from None
            skipped.append({"image": item.name, "reason": str(e)})
            click.echo(f"skipped {e}", err=True)
    if not loaded:
        raise click.ClickException("none of the images could be read; nothing to do")
    try:
        for name in used:
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
    except OSError as e:
        raise click.ClickException(describe_os_error(e, e.filename or out)) from None
    fingerprint = G.fingerprint()
    records = []
    rows, captions = [], []
    chunks = -(-len(loaded) // batch)
    try:
        with tqdm(total=chunks * steps, desc="pulse", unit="step", dynamic_ncols=True) as bar:
            for start in range(0, len(loaded), batch):
                part = loaded[start:start + batch]
                x = torch.cat([t for _, t in part]).to(G.w_avg.device)
                r = pulse(G, x, f, space, lowres=lowres, steps=steps, lr=lr, reg_strength=reg_strength, init=init,
                          seed=[seed + it.index for it, _ in part], fingerprint=fingerprint,
                          progress=lambda p: bar.update(1))
                for j, (item, _) in enumerate(part):
                    name = f"{item.stem}.png"
                    low = from_tensor(upsample_nearest(r.lowres_targets[j:j + 1], f))[0]
                    result = from_tensor(r.images[j:j + 1])[0]
                    down = from_tensor(r.downsampled[j:j + 1])[0]
                    save_image(out / "lowres" / name, low)
                    save_image(out / "results" / name, result)
                    save_image(out / "down" / name, down)
                    save_latent(out / "latents" / f"{item.stem}.safetensors", r.latents[j], space=space,
                                fingerprint=fingerprint, metadata={"source": item.name, "task": f"pulse x{f}",
                                                                   "steps": steps,
                                                                   "lpips_lowres": f"{float(r.lpips[j]):.6f}"})
                    records.append({"image": item.name, "lpips_lowres": float(r.lpips[j]),
                                    "mse_lowres": float(r.inversion.mse[j]),
                                    "psnr_lowres": float(r.inversion.psnr[j]), "result": f"results/{name}",
                                    "lowres_target": f"lowres/{name}", "downsampled": f"down/{name}",
                                    "latent": f"latents/{item.stem}.safetensors"})
                    if len(rows) < 16:
                        rows.append([low, result, enlarge(down, f)])
                        captions.append(["", "", f"LPIPS {float(r.lpips[j]):.4f}"])
                bar.set_postfix_str(f"median LPIPS {float(r.lpips.median()):.4f}")
    except OSError as e:
        why = describe_os_error(e, e.filename or out)
        raise click.ClickException(f"{why}; {len(records)} image(s) were finished") from None
    lp = torch.tensor([rec["lpips_lowres"] for rec in records])
    median = float(torch.quantile(lp, 0.5))
    summary = {
        "model": str(model), "fingerprint": fingerprint, "space": space, "factor": f, "lowres_input": lowres,
        "steps": steps, "lr": lr, "reg_strength": reg_strength, "init": init, "seed": seed, "batch_size": batch,
        "lpips_note": "LPIPS-VGG between the nearest-downsampled result and the low-res target, both enlarged by "
                      "nearest neighbour to >= 32 px first",
        "lpips_lowres_median": median, "comparison": "comparison.png", "images": records, "skipped": skipped}
    try:
        save_image(out / "comparison.png", labelled_grid(rows, col_labels=[f"target 1/{f}", "result", f"result 1/{f}"],
                                                          captions=captions))
        write_json(out / "pulse.json", summary)
    except OSError as e:
        click.echo(json.dumps(summary, indent=1))
        why = describe_os_error(e, e.filename or out)
        raise click.ClickException(f"{why}; the results are printed above") from None
    click.echo(f"upsampled {len(records)} image(s) x{f}; median low-res LPIPS {median:.4f}; wrote {out}")

