"""End-to-end runs of `opstylegan interpolate` and `opstylegan edit` on tiny saved models (CPU)."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny
from PIL import Image

from opstylegan.cli import interpolate as cli_interpolate
from opstylegan.cli.main import cli
from opstylegan.data.images import from_tensor, save_image
from opstylegan.editing import interpolate as interp_mod
from opstylegan.inversion.latents_io import load_latent, save_latent
from opstylegan.io.images_out import labelled_grid
from opstylegan.models.generator import Generator


def _model(root, name, overparam, seed):
    torch.manual_seed(seed)
    G = Generator(tiny(overparam=overparam)).eval()
    G.save_pretrained(root / name)
    return G


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    G = _model(root, "over", True, 0)
    other = _model(root, "other", True, 1)
    fp = G.fingerprint()
    W = G.mapping(G.z_from_seeds([0, 1, 2, 3])).detach()
    lat = root / "lat"
    for i in range(4):
        save_latent(lat / f"img{i}.safetensors", W[i], space="W", fingerprint=fp)
    save_latent(root / "wplus.safetensors", W[0, 0].expand(G.num_ws, -1).clone(), space="w+", fingerprint=fp)
    save_latent(root / "foreign.safetensors", other.mapping(other.z_from_seeds([0])).detach()[0], space="W",
                fingerprint=other.fingerprint())
    with torch.no_grad():
        real = from_tensor(G(G.z_from_seeds(range(50, 56))))  # [6, 32, 32, 1]
    for i, im in enumerate(real):
        save_image(root / "real" / f"r{i}.png", im)
    return {"root": root, "G": G, "W": W, "model": str(root / "over"), "lat": lat}


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def test_interpolate_default_subcommand_writes_strips_gifs_and_midpoints(world, tmp_path):
    lat = world["lat"]
    out = tmp_path / "out"
    r = run("interpolate", "--model", world["model"], "--latents", lat / "img0.safetensors", lat / "img1.safetensors",
            lat / "img2.safetensors", "--all-pairs", "--steps", 4, "--gif", "--outdir", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    info = json.loads((out / "interpolate.json").read_text())
    assert info["space"] == "W" and info["names"] == ["img0", "img1", "img2"] and len(info["pairs"]) == 3
    assert [p["index"] for p in info["pairs"]] == [[0, 1], [0, 2], [1, 2]]
    with Image.open(out / "strips" / "pair0000-0002.png") as im:
        strip = np.asarray(im)[:, :, None]
    G = world["G"]
    with torch.no_grad():  # the path from image 0 to image 2 at t = 0, 1/3, 2/3, 1
        path = world["W"][0] + torch.tensor([0, 1 / 3, 2 / 3, 1]).view(-1, 1, 1) * (world["W"][2] - world["W"][0])
        frames = from_tensor(G.synthesis(path).clamp(-1, 1))  # [4, 32, 32, 1]
    expected = labelled_grid([list(frames)], col_labels=["t=0.00", "t=0.33", "t=0.67", "t=1.00"])
    assert strip.shape == expected.shape and strip.shape[0] >= 128  # 32 px frames enlarged 4x, labelled
    assert np.abs(strip.astype(int) - expected).max() <= 1
    with Image.open(out / "animations" / "pair0001-0002.gif") as im:
        assert im.n_frames == 4 and im.size == (32, 32)
    with Image.open(out / "midpoints_000.png") as im:
        assert im.size[0] > 2 * 128 and im.size[1] > 2 * 128  # 3 midpoints on a 2x2 grid, enlarged
    # Consecutive pairs through the explicit subcommand, latents from a folder.
    r = run("interpolate", "paths", "--model", world["model"], "--latents", lat, "--steps", 3, "--no-strips",
            "--outdir", tmp_path / "c")
    assert r.exit_code == 0, r.output
    assert [p["index"] for p in json.loads((tmp_path / "c" / "interpolate.json").read_text())["pairs"]] == \
        [[0, 1], [1, 2], [2, 3]]
    assert not (tmp_path / "c" / "strips").exists()


def test_interpolate_refuses_mismatched_latents(world, tmp_path):
    lat, root = world["lat"], world["root"]
    r = run("interpolate", "--model", world["model"], "--latents", lat / "img0.safetensors",
            root / "wplus.safetensors", "--outdir", tmp_path)
    assert r.exit_code != 0
    assert "different spaces" in r.output and "img0.safetensors" in r.output and "wplus.safetensors" in r.output
    r = run("interpolate", "--model", world["model"], "--latents", lat / "img0.safetensors",
            root / "foreign.safetensors", "--outdir", tmp_path)
    assert r.exit_code != 0 and "different models" in r.output and "foreign.safetensors" in r.output
    r = run("interpolate", "--model", str(root / "other"), "--latents", lat / "img0.safetensors",
            lat / "img1.safetensors", "--outdir", tmp_path)
    assert r.exit_code != 0 and "another model" in r.output
    r = run("interpolate", "--model", world["model"], "--latents", lat / "img0.safetensors", "--outdir", tmp_path)
    assert r.exit_code != 0 and "at least 2 latents" in r.output


def test_interpolate_mp4_without_backend_is_a_clear_error(world, tmp_path, monkeypatch):
    monkeypatch.setattr(interp_mod, "mp4_available", lambda: False)
    r = run("interpolate", "--model", world["model"], "--latents", world["lat"], "--mp4", "--outdir", tmp_path)
    assert r.exit_code == 2 and "imageio-ffmpeg" in r.output


class PixelFeatures:
    name = "pixel-projection"
    sha256 = "1" * 64

    def __init__(self) -> None:
        self.proj = torch.randn(32 * 32, 8, generator=torch.Generator().manual_seed(0))

    def __call__(self, images):
        return (images.float().flatten(1) / 255) @ self.proj

    def to(self, device):
        return self


def test_interpolate_metrics_json(world, tmp_path, monkeypatch):
    # Inception on CPU takes about a second per image; the command's logic is tested with a small detector.
    monkeypatch.setattr(cli_interpolate, "_detector", lambda device: PixelFeatures())
    out = tmp_path / "m"
    r = run("interpolate", "metrics", "--model", world["model"], "--latents", world["lat"], "--reference",
            world["root"] / "real", "--max-pairs", 4, "--segments", 5, "--no-cache", "--batch", 3, "--outdir", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "editability.json").read_text())
    assert m["num_pairs"] == 4 and m["num_latents"] == 4 and m["num_reference"] == 6 and m["space"] == "W"
    assert math.isfinite(m["fid"]) and math.isfinite(m["ppl"]) and m["ppl"] > 0
    assert len(m["path_lengths"]) == 4 and m["feature_net"] == "pixel-projection"
    np.testing.assert_allclose(np.mean(m["path_lengths"]), m["ppl"], rtol=1e-9)


def test_interpolate_injectivity(world, tmp_path):
    out = tmp_path / "inj"
    r = run("interpolate", "injectivity", "--model", world["model"], "--target", world["root"] / "real" / "r0.png",
            "--steps", 1, "--points", 3, "--seed", 5, "--outdir", out)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "injectivity.json").read_text())
    assert s["space"] == "W" and s["num_points"] == 3 and s["per_target"][0]["seeds"] == [5, 6]
    assert len(s["per_target"][0]["lpips_to_target"]) == 3
    a = load_latent(out / "target000_a.safetensors", world["G"])
    assert a.space == "W" and a.metadata["init"] == "random"
    with Image.open(out / "target000_path.png") as im:
        assert im.size[0] > 4 * 128 and im.size[1] > 128  # target + 3 path images, enlarged and labelled


def test_edit_fit_apply_grid(world, tmp_path):
    model, G = world["model"], world["G"]
    gs_dir = tmp_path / "gs"
    r = run("edit", "fit", "--model", model, "--samples", 256, "--components", 4, "--outdir", gs_dir)
    assert r.exit_code == 0, r.output
    info = json.loads((gs_dir / "ganspace.json").read_text())
    assert info["num_components"] == 4 and info["rows_per_matrix"] == G.rows and info["num_samples"] == 256
    assert info["fingerprint"] == G.fingerprint() and len(info["explained_variance_ratio"]) == 4
    comps = gs_dir / "ganspace.safetensors"

    r = run("edit", "apply", "--model", model, "--components", comps, "--latent", world["lat"] / "img1.safetensors",
            "--component", 2, "--sigma", "-3..3", "--steps", 3, "--layers", "0-2", "--outdir", tmp_path / "a")
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "a" / "edit.json").read_text())
    assert e["sigmas"] == [-3.0, 0.0, 3.0] and e["items"][0]["edited_space"] == "W+" and e["layers"] == [0, 2]
    assert e["items"][0]["strip"] == "000_img1_W-matrix_c02.png"
    with Image.open(tmp_path / "a" / "000_img1_W-matrix_c02.png") as im:
        strip = np.asarray(im)[:, :, None]
    with torch.no_grad():
        orig = from_tensor(G.synthesis(world["W"][1:2]))[0]
    same = labelled_grid([[orig, orig, orig]], col_labels=["sigma -3", "sigma +0", "sigma +3"])
    assert strip.shape == same.shape
    diff = np.abs(strip.astype(int) - same)[..., 0]
    cell = [diff[:, 2 + j * 130:2 + j * 130 + 128] for j in range(3)]  # 128 px cells after 2 px of padding
    assert cell[1].max() <= 1  # sigma 0: the unedited image
    assert cell[0].max() > 5  # sigma -3 changes it

    r = run("edit", "apply", "--model", model, "--components", comps, "--seeds", "0-1", "--component", 0,
            "--sigma", "1", "--outdir", tmp_path / "s")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "s").glob("*.png")) == ["000_seed0000_W-matrix_c00.png",
                                                                      "001_seed0001_W-matrix_c00.png"]

    # The same name in two spaces (and twice in one) gives one strip each, never a shared file.
    r = run("edit", "apply", "--model", model, "--components", comps, "--latent", world["lat"] / "img0.safetensors",
            "--latent", world["root"] / "wplus.safetensors", "--latent", world["lat"] / "img0.safetensors",
            "--component", 0, "--sigma", "1", "--outdir", tmp_path / "d")
    assert r.exit_code == 0, r.output
    strips = [i["strip"] for i in json.loads((tmp_path / "d" / "edit.json").read_text())["items"]]
    assert strips == ["000_img0_W-matrix_c00.png", "001_wplus_w-plus_c00.png", "002_img0_W-matrix_c00.png"]
    assert all((tmp_path / "d" / f).is_file() for f in strips)

    r = run("edit", "grid", "--model", model, "--components", comps, "--seeds", "3", "--top", 3, "--sigma", "-2..2",
            "--steps", 3, "--outdir", tmp_path / "g")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "g" / "000_seed0003.png") as im:
        assert im.size[0] > 3 * 128 and im.size[1] > 3 * 128  # 3 x 3 cells enlarged 4x, labelled

    # User mistakes.
    r = run("edit", "apply", "--model", model, "--components", comps, "--seeds", "0", "--latent",
            world["lat"] / "img0.safetensors", "--component", 0, "--outdir", tmp_path / "x")
    assert r.exit_code == 2 and "exactly one of --latent" in r.output
    r = run("edit", "apply", "--model", str(world["root"] / "other"), "--components", comps, "--seeds", "0",
            "--component", 0, "--outdir", tmp_path / "x")
    assert r.exit_code == 1 and "another model" in r.output
    r = run("edit", "apply", "--model", model, "--components", comps, "--seeds", "0", "--component", 4,
            "--outdir", tmp_path / "x")
    assert r.exit_code == 2 and "holds 4 components" in r.output
    r = run("edit", "apply", "--model", model, "--components", comps, "--seeds", "0", "--component", 0,
            "--sigma", "3..-3", "--outdir", tmp_path / "x")
    assert r.exit_code == 2 and "below the start" in r.output
    r = run("edit", "apply", "--model", model, "--components", comps, "--seeds", "0", "--component", 0,
            "--layers", "5-40", "--outdir", tmp_path / "x")
    assert r.exit_code == 2 and f"[0, {G.num_ws - 1}]" in r.output


def test_nan_latents_are_refused_not_drawn_black(world, tmp_path):
    G, lat = world["G"], world["lat"]
    bad = world["W"][1].clone()
    bad[0, 3] = float("nan")
    save_latent(tmp_path / "nan.safetensors", bad, space="W", fingerprint=G.fingerprint())
    r = run("interpolate", "--model", world["model"], "--latents", lat / "img0.safetensors",
            tmp_path / "nan.safetensors", "--outdir", tmp_path / "out")
    assert r.exit_code == 1 and "nan.safetensors" in r.output and "1 of its" in r.output and "NaN" in r.output
    assert not (tmp_path / "out" / "strips").exists()
    with pytest.raises(ValueError, match=r"latent\(s\) \[1\] hold NaN"):
        interp_mod.render_latents(G, torch.stack([world["W"][0], bad]), "W")


def test_outdir_under_a_file_is_refused_before_any_work(world, tmp_path):
    (tmp_path / "file").write_text("x")
    under = tmp_path / "file" / "out"
    for args in (["interpolate", "--latents", world["lat"]], ["edit", "fit", "--samples", 256, "--components", 2],
                 ["interpolate", "injectivity", "--target", world["root"] / "real" / "r0.png", "--steps", 1]):
        r = run(*args, "--model", world["model"], "--outdir", under)
        assert r.exit_code == 1 and "lies under" in r.output and "Traceback" not in r.output, (args, r.output)
