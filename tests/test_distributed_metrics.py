"""Metric work spread over ranks (snapshot FID under torchrun) and feature statistics that merge exactly."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from opstylegan.data import build_dataset, write_idx
from opstylegan.metrics.fid import FeatureStats, compute_feature_stats, fid_from_stats


class CountingMeanPool:
    """4x4 average-pooled pixels as 16-d features (a deterministic stand-in for Inception); counts its images."""

    name, sha256 = "meanpool4", "0" * 64

    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.seen += images.shape[0]
        x = images.float().mean(dim=1, keepdim=True)
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NUM_FAKE, NUM_REAL = 7, 9  # not multiples of the world size: the ranks' shares differ in size


def _measure(rank: int, world: int, data: str, out: str, cache: str) -> None:
    """Snapshot FID of a fixed tiny generator on `world` processes; writes what each rank measured and saw."""
    os.environ["OPSTYLEGAN_CACHE"] = cache
    torch.set_num_threads(1)
    from opstylegan.config import preset
    from opstylegan.data.dataset import ImageDataset
    from opstylegan.models.generator import Generator
    from opstylegan.training.distributed import DistInfo, init_distributed, shutdown
    from opstylegan.training.snapshot_fid import SnapshotFID

    info = init_distributed(torch.device("cpu")) if world > 1 else DistInfo()
    torch.manual_seed(0)
    G = Generator(preset("tiny", img_resolution=16, img_channels=1).generator).eval()
    detectors: list[CountingMeanPool] = []
    SnapshotFID.detector_factory = staticmethod(lambda device: detectors.append(CountingMeanPool()) or detectors[-1])
    run_dir = Path(out) / f"run-{world}"
    run_dir.mkdir(exist_ok=True)
    fid = SnapshotFID(ImageDataset(data), data, num_fake=NUM_FAKE, num_real=NUM_REAL, batch_size=2,
                      device=torch.device("cpu"), info=info)
    first = fid.at_snapshot(run_dir, G, 0.004, "network-000000.004")  # real statistics computed (cache miss)
    again = SnapshotFID(ImageDataset(data), data, num_fake=NUM_FAKE, num_real=NUM_REAL, batch_size=3,
                        device=torch.device("cpu"), info=info).measure(G)  # real statistics from the cache
    with open(os.path.join(out, f"world{world}-rank{rank}.json"), "w") as f:
        json.dump({"first": first, "again": again, "seen": [d.seen for d in detectors]}, f)
    if world > 1:
        shutdown()


def _worker(rank: int, world: int, port: int, data: str, out: str, cache: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    _measure(rank, world, data, out, cache)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.filterwarnings("ignore:FID on .* feature dimensions")  # tiny sets, on purpose
def test_snapshot_fid_is_spread_over_ranks_and_equals_the_one_process_value(tmp_path):
    rng = np.random.default_rng(7)
    write_idx(tmp_path / "train-images-idx3-ubyte", (rng.random((12, 16, 16)) * 255).astype(np.uint8))
    build_dataset(tmp_path / "train-images-idx3-ubyte", tmp_path / "ds", resolution=16, channels=1)
    data, out = str(tmp_path / "ds"), str(tmp_path)
    _measure(0, 1, data, out, str(tmp_path / "cache1"))
    mp.start_processes(_worker, args=(2, _free_port(), data, out, str(tmp_path / "cache2")), nprocs=2,
                       join=True, start_method="spawn")
    one = json.loads((tmp_path / "world1-rank0.json").read_text())
    two = [json.loads((tmp_path / f"world2-rank{r}.json").read_text()) for r in range(2)]
    assert one["first"]["num_fake"] == NUM_FAKE and one["first"]["num_real"] == NUM_REAL
    for key in ("first", "again"):
        assert two[0][key] == two[1][key]  # every rank gets the same value (and the same `best` decision)
        assert two[0][key]["fid"] == pytest.approx(one[key]["fid"], rel=1e-6, abs=1e-9)
        assert two[0][key]["num_fake"] == NUM_FAKE and two[0][key]["num_real"] == NUM_REAL
    assert one["again"]["fid"] == pytest.approx(one["first"]["fid"], rel=1e-6)
    # The work is shared: 1 process embeds 9 reals + 7 fakes, then 7 fakes with cached reals; the two ranks
    # embed blocks of 4 + 5 reals and 3 + 4 fakes.
    assert one["seen"] == [NUM_REAL + NUM_FAKE, NUM_FAKE]
    assert [r["seen"] for r in two] == [[4 + 3, 3], [5 + 4, 4]]
    # Only rank 0 writes: one metrics line.
    lines = (tmp_path / "run-2" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["fid"] == two[0]["first"]["fid"]


def _stream(n: int, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, 1, 8, 8)) * 255).astype(np.uint8)
    return [torch.from_numpy(images[i:i + batch]) for i in range(0, n, batch)]


def test_merged_shares_equal_the_whole_stream():
    det = CountingMeanPool()
    whole = compute_feature_stats(_stream(11, 3), det, capture_features=True)
    batches = _stream(11, 1)
    parts = [compute_feature_stats(batches[:4], det, capture_features=True),
             compute_feature_stats(batches[4:], det, capture_features=True)]
    merged = FeatureStats.merge(parts)
    assert merged.num_items == 11 and merged.image_shape == whole.image_shape
    np.testing.assert_allclose(merged.feature_sum, whole.feature_sum, rtol=1e-12)
    np.testing.assert_allclose(merged.feature_outer, whole.feature_outer, rtol=1e-12)
    np.testing.assert_array_equal(merged.features, whole.features)
    with pytest.warns(UserWarning, match="rank deficient"):  # 11 images, 16 features
        assert fid_from_stats(merged, parts[0]).fid == pytest.approx(fid_from_stats(whole, parts[0]).fid, rel=1e-9)
    with pytest.raises(ValueError, match="every part is empty"):
        FeatureStats.merge([FeatureStats(16)])
    with pytest.raises(ValueError, match="different feature networks"):
        FeatureStats.merge([parts[0], FeatureStats(16, 2, feature_net_sha256="1" * 64)])


def test_captured_features_are_concatenated_once(monkeypatch):
    """Capturing features for KID keeps the batches and concatenates them once (it was once per batch: O(N^2))."""
    calls = []
    concatenate = np.concatenate

    def counting(*args, **kwargs):
        calls.append(1)
        return concatenate(*args, **kwargs)

    stream = _stream(200, 1)
    monkeypatch.setattr(np, "concatenate", counting)
    stats = compute_feature_stats(stream, CountingMeanPool(), capture_features=True)
    assert calls == []
    assert stats.features.shape == (200, 16) and stats.features.dtype == np.float32
    assert len(calls) == 1
    assert stats.features.shape == (200, 16) and len(calls) == 1  # concatenated once, then kept
