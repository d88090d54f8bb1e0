"""scripts/fmnist_diagnosis.py on tiny random models: every entry gets its five measurements from the right
places (FID/PR from `opstylegan metrics`, ADA p from the run's tick at that kimg, the class histogram, the
inversion median from `opstylegan invert`), finished steps are skipped, and bad entries are refused first."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from opstylegan.cli import metrics as cli_metrics
from opstylegan.data.build import build_dataset
from opstylegan.data.images import save_image
from opstylegan.models.generator import Generator

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


diag = _load("fmnist_diagnosis")
cov = sys.modules["fmnist_coverage"]


class MeanPool:
    name = "meanpool-test"
    sha256 = "ef" * 32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images[:, :1].float() / 255, 4).flatten(1)

    def to(self, device):
        return self


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i in range(6):
            save_image(root / "raw" / split / f"{i:02d}.png", rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))
        build_dataset(root / "raw" / split, root / "data" / split, resolution=32, channels=1, fit="pad")
    torch.manual_seed(0)
    cov.save_classifier(cov.Classifier(), root / "clf", {"test_accuracy": 0.1})
    entries = []
    for label, spread, ada in (("rows summed", None, [0.01, 0.02]), ("row spread 0.1", 0.1, [0.0, 0.005])):
        run = root / "runs" / label.replace(" ", "-")
        run.mkdir(parents=True)
        cfg = tiny(overparam=True) if spread is None else tiny(overparam=True, row_spread=spread)
        Generator(cfg).eval().save_pretrained(run / "network-000008.000")
        (run / "config.json").write_text(json.dumps({"pl_rows": "sum", "style_mixing_prob": 0.9, "seed": 0,
                                                     "batch": 32, "generator": cfg.to_dict()}))
        (run / "stats.jsonl").write_text("".join(json.dumps({"kimg": 4.0 * (i + 1), "ada_p": a}) + "\n"
                                                 for i, a in enumerate(ada)))
        entries.append((label, run / "network-000008.000", run, 8.0))
    return {"root": root, "entries": entries}


def _opts(world, out, **kw):
    r = world["root"]
    base = dict(entry=world["entries"], train_data=r / "data" / "train", test_data=r / "data" / "test",
                classifier=r / "clf", outdir=out, num_fid=4, num_real=4, num_classes=8, num_invert=2, steps=2,
                batch=4, device="cpu")
    return {**base, **kw}


def test_every_entry_gets_its_measurements_and_reruns_skip(world, monkeypatch):
    monkeypatch.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: MeanPool())
    monkeypatch.setenv("OPSTYLEGAN_CACHE", str(world["root"] / "cache"))
    out = world["root"] / "out"
    res = diag.diagnose(_opts(world, out), log=lambda m: None)
    a, b = res["entries"]["rows summed"], res["entries"]["row spread 0.1"]
    assert (a["ada_p"], b["ada_p"]) == (0.02, 0.005)  # the tick at kimg 8, not the last or the first
    assert a["settings"]["generator.row_spread"] == 0.5 and b["settings"]["generator.row_spread"] == 0.1
    for e, label in ((a, "rows summed"), (b, "row spread 0.1")):
        slug = label.replace(" ", "-").replace(".", "-")
        m = json.loads((out / slug / "metrics.json").read_text())["metrics"]
        assert e["fid"] == m["fid"]["value"] and e["recall"] == m["pr"]["value"]["recall"]
        s = json.loads((out / slug / "invert" / "summary.json").read_text())
        assert e["invert"]["lpips_median"] == s["results"]["W"]["lpips"]["median"] and s["inverted"] == 2
        assert sum(e["classes"]["fractions"]) == pytest.approx(1, abs=1e-3) and e["lines_vs_test"] > 0
        assert e["fingerprint"] == Generator.from_pretrained(e["model"]).fingerprint()
    md = (out / "diagnosis.md").read_text()
    assert md.count("\n| rows summed | 8 | sum | 0.5 |") == 1 and "| row spread 0.1 | 8 | sum | 0.1 |" in md
    log: list[str] = []
    diag.diagnose(_opts(world, out), log=log.append)
    assert sum("skipped" in line for line in log) == 4  # 2 entries x (metrics, invert)
    # One target fewer: the invert commands are the same, but the exported targets changed, so they re-run.
    log = []
    res = diag.diagnose(_opts(world, out, num_invert=1), log=log.append)
    assert sorted(line.split("]")[0][1:] for line in log if "finished in" in line) == \
        ["row-spread-0-1-invert", "rows-summed-invert"]
    assert json.loads((out / "rows-summed" / "invert" / "summary.json").read_text())["inverted"] == 1


def test_without_fid(world, tmp_path):
    res = diag.diagnose(_opts(world, tmp_path / "nofid", num_fid=0), log=lambda m: None)
    e = res["entries"]["rows summed"]
    assert e["fid"] is None and e["recall"] is None and e["invert"]["lpips_median"] > 0
    md = (tmp_path / "nofid" / "diagnosis.md").read_text()
    assert "FID" not in md and "| rows summed | 8 | sum | 0.5 | 0.9 | " in md
    assert all(line.count("|") == md.splitlines()[0].count("|") for line in md.splitlines())
    assert not (tmp_path / "nofid" / "rows-summed" / "metrics.json").exists()


def test_bad_entries_are_refused_before_any_work(world, tmp_path):
    label, model, run, _ = world["entries"][0]
    with pytest.raises(diag.ReproError, match="no tick at kimg 6"):
        diag.diagnose(_opts(world, tmp_path / "a", entry=[(label, model, run, 6.0)]), log=lambda m: None)
    with pytest.raises(diag.ReproError, match="labels must differ"):
        diag.diagnose(_opts(world, tmp_path / "b", entry=[world["entries"][0]] * 2), log=lambda m: None)
    with pytest.raises(diag.ReproError, match="not a model folder"):
        diag.diagnose(_opts(world, tmp_path / "c", entry=[(label, run, run, 8.0)]), log=lambda m: None)
    assert not any((tmp_path / d).exists() for d in "abc")
