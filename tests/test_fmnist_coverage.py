"""scripts/fmnist_coverage.py: the classifier learns a labelled toy set, the histogram statistics are exact,
generated samples are classified by seed, and the command line writes the JSON."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny

from opstylegan import Generator

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fmnist_coverage.py"


@pytest.fixture(scope="module")
def cov():
    spec = importlib.util.spec_from_file_location("fmnist_coverage", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class k = a bright square of side 4 + 2k at a random place, plus noise (the classifier pools globally,
    so the class is in the shape, not the position)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, [n], generator=g)
    x = torch.randn(n, 1, 32, 32, generator=g) * 0.2 - 0.6
    for i, k in enumerate(y.tolist()):
        side = 4 + 2 * k
        r, c = torch.randint(0, 33 - side, [2], generator=g).tolist()
        x[i, 0, r:r + side, c:c + side] += 1.5
    return x.clamp(-1, 1), y


def test_histogram_statistics(cov):
    h = cov.histogram(torch.tensor([0, 0, 1, 1] * 5))
    assert h["counts"][:2] == [10, 10] and sum(h["counts"]) == 20
    assert h["missing"] == list(cov.CLASSES[2:])
    assert h["kl_to_uniform"] == pytest.approx(math.log(5), abs=1e-4)  # two of ten classes, equally
    assert cov.histogram(torch.arange(10).repeat(3))["kl_to_uniform"] == 0.0


def test_classifier_learns_and_round_trips(cov, tmp_path):
    x, y = _toy(1500, 0)
    xt, yt = _toy(300, 1)
    model = cov.train_classifier(x, y, epochs=3, batch=64, seed=0)
    acc = cov.accuracy(model, xt, yt)
    assert acc > 0.6, acc  # chance is 0.1; neighbouring sizes differ by 2 px only
    cov.save_classifier(model, tmp_path / "clf", {"test_accuracy": acc})
    again, info = cov.load_classifier(tmp_path / "clf")
    assert info["test_accuracy"] == acc and info["classes"][1] == "Trouser"
    torch.testing.assert_close(again(xt[:8]), model(xt[:8]))


def test_generated_samples_by_seed_and_cli(cov, tmp_path, capsys):
    torch.manual_seed(0)
    G = Generator(tiny(True)).eval()
    clf = cov.Classifier().eval()
    a = cov.classify_generator(clf, G, 12, seed=3, batch=5)
    b = cov.classify_generator(clf, G, 12, seed=3, batch=12)
    assert a.shape == (12,) and torch.equal(a, b)  # same seeds, same classes, whatever the batch
    cov.save_classifier(clf, tmp_path / "clf", {"test_accuracy": 0.1})
    G.save_pretrained(tmp_path / "m")
    cov.main(["histogram", "--classifier", str(tmp_path / "clf"), "--model", str(tmp_path / "m"), "--num", "12",
              "--seed", "3", "--out", str(tmp_path / "h.json")])
    res = json.loads((tmp_path / "h.json").read_text())
    assert res["models"][str(tmp_path / "m")]["counts"] == torch.bincount(a, minlength=10).tolist()
    with pytest.raises(SystemExit):
        cov.main(["histogram", "--classifier", str(tmp_path / "nothing"), "--model", str(tmp_path / "m")])
    cov.main(["grid", "--classifier", str(tmp_path / "clf"), "--model", str(tmp_path / "m"), "--model",
              str(tmp_path / "m"), "--label", "a", "--label", "b", "--num", "8", "--out", str(tmp_path / "g.png")])
    from PIL import Image

    w, h = Image.open(tmp_path / "g.png").size
    assert w >= 2 * 8 * 32 and h > 8 * 32  # two labelled 8x8 grids of 32 px samples


def test_axis_line_energy_sees_stripes_not_blobs(cov):
    """Vertical stripes put their fine-detail power on the fx axis (share ~1); a smooth blob with random texture
    spreads it (share ~ the axes' share of the frequency plane); the measure does not depend on the set's order."""
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(16, 1, 32, 32, generator=g) * 2 - 1
    cols = torch.arange(32).float()
    stripes = torch.cos(2 * torch.pi * 8 * cols / 32).expand(16, 1, 32, 32) * torch.rand(16, 1, 1, 1, generator=g)
    assert cov.axis_line_energy(stripes) > 0.99
    share = cov.axis_line_energy(noise)
    high = 32 * 32 - 11 * 11  # frequencies with max(|fx|, |fy|) >= 6 on a 32 x 32 grid
    assert share == pytest.approx(2 * 21 / high, rel=0.3)  # 21 axis frequencies >= 6 on each axis
    assert cov.axis_line_energy(noise.flip(0)) == pytest.approx(share, rel=1e-5)
    assert cov.axis_line_energy(noise + 0.5 * stripes) > 3 * share
