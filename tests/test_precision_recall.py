"""Improved precision / recall: closed-form toy sets, and a collapsed generator loses recall, not precision."""

import numpy as np
import pytest
import torch

from opstylegan.metrics.fid import FeatureStats
from opstylegan.metrics.precision_recall import inside_manifold, manifold_radii, pr_from_stats, precision_recall


def test_radii_closed_form():
    # Points on a line at 0, 1, 3, 7: distances to the 1st / 2nd nearest other point are known.
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    torch.testing.assert_close(manifold_radii(x, 1), torch.tensor([1.0, 1.0, 2.0, 4.0]))
    torch.testing.assert_close(manifold_radii(x, 2), torch.tensor([3.0, 2.0, 3.0, 6.0]))
    inside = inside_manifold(torch.tensor([[0.5], [12.0], [10.9]]), x, manifold_radii(x, 1))
    assert inside.tolist() == [True, False, True]  # 10.9 is within 4 of 7


def test_identical_sets_are_perfect_and_batching_does_not_matter():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 8)).astype(np.float32)
    r = precision_recall(a, a, k=3)
    assert (r.precision, r.recall) == (1.0, 1.0)
    b = rng.normal(size=(200, 8)).astype(np.float32)
    r1, r2 = precision_recall(a, b, batch_size=7), precision_recall(a, b, batch_size=4096)
    assert (r1.precision, r1.recall) == (r2.precision, r2.recall)


def test_mode_collapse_loses_recall_not_precision():
    # Ten well separated clusters; the "collapsed" generator draws from two of them only.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(10, 16)) * 20
    real = (centres[rng.integers(0, 10, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    full = (centres[rng.integers(0, 10, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    collapsed = (centres[rng.integers(0, 2, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    good, bad = precision_recall(real, full), precision_recall(real, collapsed)
    assert good.recall > 0.7 and good.precision > 0.7  # k-NN balls in 16-d cover most, not all
    assert bad.precision > 0.7
    assert bad.recall < 0.3  # ~2/10 of the real images are covered


def test_errors():
    with pytest.raises(ValueError, match="at least k \\+ 1"):
        manifold_radii(np.zeros((3, 2)), 3)
    stats = FeatureStats(feature_dim=2)
    stats.append(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="capture_features"):
        pr_from_stats(stats, stats)


def test_metrics_cli_pr(tmp_path, monkeypatch):
    """`opstylegan metrics --metrics pr`: the model's own images are covered exactly; another model's are not."""
    import json

    from click.testing import CliRunner
    from conftest import tiny
    from test_cli_metrics import MeanPool, save_generated

    from opstylegan import Generator
    from opstylegan.cli import metrics as cli_metrics
    from opstylegan.cli.main import cli

    monkeypatch.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: MeanPool())
    torch.manual_seed(0)
    G = Generator(tiny()).eval()
    G.save_pretrained(tmp_path / "m")
    own = save_generated(G, range(12), tmp_path / "own")
    torch.manual_seed(7)
    other = save_generated(Generator(tiny()).eval(), range(12), tmp_path / "other")
    values = {}
    for name, data in (("own", own), ("other", other)):
        out = tmp_path / f"{name}.json"
        r = CliRunner().invoke(cli, ["metrics", "--model", str(tmp_path / "m"), "--data", str(data), "--metrics",
                                     "pr", "--num", "12", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                                     "--out", str(out)])
        assert r.exit_code == 0, r.output
        assert "P 1.0000 / R 1.0000" in r.output if name == "own" else "pr" in r.output
        values[name] = json.loads(out.read_text())["metrics"]["pr"]
    assert values["own"]["value"] == {"precision": 1.0, "recall": 1.0} and values["own"]["k"] == 3
    assert values["other"]["value"]["recall"] < 1.0 or values["other"]["value"]["precision"] < 1.0
    r = CliRunner().invoke(cli, ["metrics", "--model", str(tmp_path / "m"), "--data", str(own), "--metrics", "pr",
                                 "--num", "3", "--device", "cpu", "--out", str(tmp_path / "x.json")])
    assert r.exit_code != 0 and "at least 4 generated" in r.output
