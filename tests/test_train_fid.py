"""FID at training snapshots and the network-best/ it keeps (stand-in feature network: Inception is slow on CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, write_idx
from opstylegan.models.generator import Generator
from opstylegan.training import state as S
from opstylegan.training.snapshot_fid import SnapshotFID


class MeanPool:
    """4x4 average-pooled pixels as 16-d features (a deterministic stand-in for Inception)."""

    name, sha256 = "meanpool4", "0" * 64

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mean(dim=1, keepdim=True)
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


@pytest.fixture
def fast_fid(monkeypatch, tmp_path):
    monkeypatch.setattr(SnapshotFID, "detector_factory", staticmethod(lambda device: MeanPool()))
    monkeypatch.setenv("OPSTYLEGAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((12, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "fmnist16", resolution=16, channels=1)
    return root / "fmnist16"


TINY = ["--preset", "tiny", "--batch", "4", "--tick", "0.004", "--snap", "1", "--device", "cpu", "--fid-num", "8"]


def test_fid_at_snapshots_keeps_the_best_and_resumes_it(dataset_dir, tmp_path, fast_fid):
    r = CliRunner().invoke(cli, ["train", "--data", str(dataset_dir), "--outdir", str(tmp_path), "--kimg", "0.012",
                                 *TINY], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run_dir = tmp_path / "00000-fmnist16-baseline"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["kimg"] for m in lines] == [0.004, 0.008, 0.012]
    assert all(m["num_fake"] == 8 and m["num_real"] == 12 and m["feature_net"] == "meanpool4" for m in lines)
    best = min(lines, key=lambda m: m["fid"])
    assert [m["best"] for m in lines] == [m["fid"] == min(x["fid"] for x in lines[: i + 1])
                                          for i, m in enumerate(lines)]
    assert json.loads((run_dir / "best.json").read_text())["network"] == best["network"]
    G_best = Generator.from_pretrained(run_dir / "network-best")
    assert G_best.fingerprint() == Generator.from_pretrained(run_dir / best["network"]).fingerprint()
    assert "FID" in r.output
    # The state saved at a snapshot already knows that snapshot's FID.
    assert S.find_latest_state(run_dir).state["best_fid"] == pytest.approx(best["fid"])
    r = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--kimg", "0.016", "--device", "cpu"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    lines2 = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines2) == 4 and lines2[-1]["best"] == (lines2[-1]["fid"] < best["fid"])


def test_fid_num_one_is_refused(dataset_dir, tmp_path):
    r = CliRunner().invoke(cli, ["train", "--data", str(dataset_dir), "--outdir", str(tmp_path), "--kimg", "0.004",
                                 *TINY[:-1], "1"])
    assert r.exit_code != 0 and "FID needs at least 2 generated" in r.output
    assert not any(tmp_path.iterdir())


def test_precision_recall_at_snapshots(dataset_dir, tmp_path, fast_fid):
    """--snapshot-pr adds precision and recall (k = 3) to every metrics.jsonl line, equal to what
    `metrics.precision_recall` gives on the same features; without --fid-num it is refused."""
    from opstylegan.metrics.fid import compute_generator_stats
    from opstylegan.metrics.precision_recall import precision_recall

    r = CliRunner().invoke(cli, ["train", "--data", str(dataset_dir), "--outdir", str(tmp_path), "--kimg", "0.008",
                                 "--snapshot-pr", *TINY], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run_dir = tmp_path / "00000-fmnist16-baseline"
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["kimg"] for m in lines] == [0.004, 0.008]
    assert all(0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1 and m["pr_k"] == 3 for m in lines)
    assert json.loads((run_dir / "config.json").read_text())["snapshot_pr"] is True
    # Recompute the last snapshot's figures independently.
    det = MeanPool()
    G = Generator.from_pretrained(run_dir / lines[-1]["network"])
    fake = compute_generator_stats(G, det, 8, batch_size=4, seed=0, capture_features=True)
    from opstylegan.data.dataset import ImageDataset

    ds = ImageDataset(dataset_dir)
    real = det(torch.stack([ds[i] for i in range(len(ds))])).numpy()
    want = precision_recall(torch.from_numpy(real), torch.from_numpy(fake.features), k=3)
    assert (lines[-1]["precision"], lines[-1]["recall"]) == pytest.approx((want.precision, want.recall), abs=1e-6)
    r = CliRunner().invoke(cli, ["train", "--data", str(dataset_dir), "--outdir", str(tmp_path / "x"), "--kimg",
                                 "0.008", "--snapshot-pr", "--preset", "tiny", "--device", "cpu"])
    assert r.exit_code != 0 and "fid_num" in r.output
