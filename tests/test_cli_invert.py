"""`opstylegan invert` and `opstylegan upsample` end to end (tiny models, 32 px, CPU, a few steps)."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny
from PIL import Image

from opstylegan import Generator
from opstylegan.cli.main import cli
from opstylegan.inversion import LatentFileError, load_latent


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    torch.manual_seed(3)
    G = Generator(tiny(True, channels=3))
    G.save_pretrained(root / "op")
    Generator(tiny(False, channels=3)).save_pretrained(root / "base")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(imgs / "a.png")  # non-square RGB
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), dtype=np.uint8), "RGBA").save(imgs / "sub" / "b.png")
    Image.fromarray(rng.integers(0, 256, (64, 48), dtype=np.uint8), "L").save(imgs / "c.jpg")  # grayscale
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root, G


def run(*args):
    return CliRunner().invoke(cli, list(map(str, args)))


def test_invert_two_spaces_skips_the_broken_image(setup):
    root, G = setup
    out = root / "out"
    r = run("invert", "--model", root / "op", "--images", root / "imgs", "--space", "w+,W", "--steps", 3,
            "--batch", 2, "--outdir", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "broken.png" in r.output and "inverted 3 image(s), skipped 1" in r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["inverted"] == 3 and [k["image"] for k in s["skipped"]] == [str(root / "imgs" / "broken.png")]
    for space, folder in (("w+", "w-plus"), ("W", "W-matrix")):
        res = s["results"][space]
        assert res["images"] == 3 and res["lpips"]["q1"] <= res["lpips"]["median"] <= res["lpips"]["q3"]
        for stem in ("a", "sub__b", "c"):
            assert np.asarray(Image.open(out / folder / f"{stem}.png")).shape == (32, 32, 3)
            assert np.asarray(Image.open(out / folder / "pairs" / f"{stem}.png")).shape == (32, 64, 3)
            lat = load_latent(out / folder / f"{stem}.safetensors", G)
            assert lat.space == space and lat.latent.shape == G.latent_shape(space)
            source = f"{stem.replace('__', '/')}{'.jpg' if stem == 'c' else '.png'}"
            assert lat.metadata["steps"] == "3" and lat.metadata["source"] == str(root / "imgs" / source)
        per = res["per_image"][str(root / "imgs" / "a.png")]
        assert float(load_latent(out / folder / "a.safetensors").metadata["lpips"]) == pytest.approx(per["lpips"],
                                                                                                    abs=1e-6)
    rows = (out / "lpips_curves.csv").read_text().splitlines()
    assert rows[0] == "step,w+_q1,w+_median,w+_q3,W_q1,W_median,W_q3" and len(rows) == 4
    assert (out / "lpips_per_image.csv").read_text().splitlines()[0].count(",") == 6
    assert Image.open(out / "lpips_curves.png").size[0] > 100 and s["curves"]["plot"] == "lpips_curves.png"
    # comparison.png: 3 rows (one per image) of target | w+ | W, each cell enlarged 4x to 128 px, labelled.
    comp = np.asarray(Image.open(out / "comparison.png"))
    assert comp.shape[0] > 3 * 128 and comp.shape[1] > 3 * 128 and s["comparison"] == "comparison.png"
    assert s["batch_size"] == 2 and s["options"]["batch_size"] == 2 and s["reused_chunks"] == 0
    other = Generator(tiny(True, channels=3))
    with pytest.raises(LatentFileError, match="another model"):
        load_latent(out / "W-matrix" / "a.safetensors", other)


def test_invert_on_error_fail_refuses_before_any_work(setup):
    root, _ = setup
    out = root / "fail"
    r = run("invert", "--model", root / "op", "--images", root / "imgs", "--space", "W", "--steps", 2,
            "--on-error", "fail", "--outdir", out)
    assert r.exit_code != 0 and "broken.png" in r.output and "--on-error skip" in r.output
    assert not (out / "W-matrix").exists()


@pytest.mark.parametrize("args,msg", [
    (["--steps", "0"], "0 is not in the range x>=1"),
    (["--lr", "-1"], "-1.0 is not in the range x>0"),
    (["--space", "W,Q"], "unknown latent space(s) ['Q']"),
    (["--model", "{base}", "--space", "W"], "needs an overparameterized model"),
    (["--reg-strength", "2"], "2.0 is not in the range 0<=x<=1"),
])
def test_invert_bad_options_fail_before_any_work(setup, args, msg):
    root, _ = setup
    out = root / "bad"
    args = [a.replace("{base}", str(root / "base")) for a in args]
    model = [] if "--model" in args else ["--model", str(root / "op")]
    r = run("invert", *model, "--images", root / "imgs" / "a.png", *args, "--outdir", out)
    assert r.exit_code != 0 and msg in r.output, r.output
    assert not out.exists()


def test_upsample(setup):
    root, G = setup
    out = root / "pulse"
    r = run("upsample", "--model", root / "op", "--images", root / "imgs" / "a.png", "--factor", 4, "--steps", 3,
            "--outdir", out)
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "pulse.json").read_text())
    assert meta["factor"] == 4 and meta["space"] == "W" and len(meta["images"]) == 1
    assert np.asarray(Image.open(out / "results" / "a.png")).shape == (32, 32, 3)
    low = np.asarray(Image.open(out / "lowres" / "a.png"))
    assert low.shape == (32, 32, 3) and np.array_equal(low[::4, ::4], low[3::4, 3::4])  # 4x4 blocks
    assert np.asarray(Image.open(out / "down" / "a.png")).shape == (8, 8, 3)
    load_latent(out / "latents" / "a.safetensors", G)
    assert np.asarray(Image.open(out / "comparison.png")).shape[0] >= 128
    # --lowres takes the image as is: its size x factor must be the model resolution.
    r = run("upsample", "--model", root / "op", "--images", root / "imgs" / "a.png", "--factor", 4, "--lowres",
            "--steps", 1, "--on-error", "fail", "--outdir", root / "pulse2")
    assert r.exit_code != 0 and "must be 8x8" in r.output


def test_two_ranks_write_disjoint_shards_and_rank0_merges(setup):
    from opstylegan.inversion.projector import InversionOptions
    from opstylegan.inversion.runs import collect_images, invert_images

    root, G = setup
    out = root / "ranks"
    items = collect_images([root / "imgs" / "a.png", root / "imgs" / "c.jpg", root / "imgs" / "sub"])
    opts = InversionOptions(steps=2)
    called = []

    def barrier():  # rank 0 has prepared the folder (first call): rank 1 runs its share, c.jpg only
        called.append(1)
        if len(called) == 1:
            assert invert_images(G, items, ["W"], out, opts, rank=1, world_size=2) is None
            assert sorted(p.name for p in (out / "W-matrix").glob("*.safetensors")) == ["c.safetensors"]

    s = invert_images(G, items, ["W"], out, opts, rank=0, world_size=2, barrier=barrier)
    assert called == [1, 1] and s["world_size"] == 2 and s["inverted"] == 3  # start, and before the merge
    assert list(s["results"]["W"]["per_image"]) == [it.name for it in items]  # global order, not rank order
    assert json.loads((out / "summary.json").read_text())["results"]["W"]["images"] == 3
    (out / "partial" / "rank1.json").unlink()
    with pytest.raises(RuntimeError, match="rank 1 wrote no results"):
        invert_images(G, items, ["W"], out, opts, rank=0, world_size=2)
