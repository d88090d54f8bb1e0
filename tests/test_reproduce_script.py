"""Smoke test of scripts/reproduce_fmnist.py on freshly initialised tiny models and tiny datasets in tmp_path.

The FID feature network is replaced by a small stand-in (as in the CLI tests); LPIPS is the real one. Checks
that every part writes its outputs and figures, that the combined fig. 6 data is the invert runs' data, that
table 4 is computed from stats.jsonl as documented, that a second run skips every finished step and a changed
option re-runs only the steps it affects, and that bad inputs are refused before any work.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from opstylegan.cli import interpolate as cli_interpolate
from opstylegan.cli import metrics as cli_metrics
from opstylegan.data.build import build_dataset
from opstylegan.data.images import save_image
from opstylegan.models.generator import Generator

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


repro = _load_script("reproduce_fmnist")
inversion_report = _load_script("inversion_report")


class MeanPool:
    """Stand-in FID detector: 4x4 average-pooled pixels as 16-d features."""

    name = "meanpool-test"
    sha256 = "cd" * 32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images[:, :1].float() / 255, 4).flatten(1)  # [N, 16]

    def to(self, device):
        return self


def _stats(path: Path, ticks: list[tuple[float, float, float]], t0: float) -> None:
    """stats.jsonl with ticks (kimg, sec_per_tick, cpu_peak_rss_gb) and a half-written last line."""
    lines = [json.dumps({"tick": i + 1, "kimg": k, "sec_per_tick": s, "sec_per_kimg": s / 4, "cpu_peak_rss_gb": m,
                         "timestamp": t0 + 60 * i}) for i, (k, s, m) in enumerate(ticks)]
    path.write_text("\n".join(lines) + '\n{"tick": 9, "kimg"')


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    before = torch.get_num_threads()
    root = tmp_path_factory.mktemp("repro")
    torch.manual_seed(0)
    models = {}
    for name, over in (("baseline", False), ("overparam", True)):
        Generator(tiny(overparam=over)).eval().save_pretrained(root / "models" / name)
        models[name] = root / "models" / name
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 6)):
        for i in range(n):  # 28x28 blobs, padded to 32x32 like Fashion-MNIST
            save_image(root / "raw" / split / f"{i:02d}.png", rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))
        build_dataset(root / "raw" / split, root / "data" / split, resolution=32, channels=1, fit="pad")
    for i in range(2):
        save_image(root / "ood" / f"digit{i}.png", rng.integers(0, 256, (28, 28, 1), dtype=np.uint8))
    runs = {}
    for name, secs, mem in (("baseline", (40.0, 48.0, 56.0), (0.5, 0.6, 0.7)),
                            ("overparam", (44.0, 52.0, 60.0, 64.0), (0.6, 0.8, 0.9, 1.0))):
        run = root / "runs" / name
        run.mkdir(parents=True)
        ticks = [(4.0 * (i + 1), s, m) for i, (s, m) in enumerate(zip(secs, mem, strict=True))]
        _stats(run / "stats.jsonl", ticks, 1000.0)
        (run / "config.json").write_text(json.dumps({"batch": 32, "overparam": name == "overparam"}))
        runs[name] = run
    yield {"root": root, "models": models, "runs": runs}
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _stand_ins(monkeypatch, world):
    monkeypatch.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: MeanPool())
    monkeypatch.setattr(cli_interpolate, "_detector", lambda device: MeanPool())
    monkeypatch.setenv("OPSTYLEGAN_CACHE", str(world["root"] / "cache"))


def _opts(world, outdir: Path, **kw):
    r = world["root"]
    base = dict(baseline=world["models"]["baseline"], overparam=world["models"]["overparam"],
                train_data=r / "data" / "train", test_data=r / "data" / "test", runs_baseline=world["runs"]["baseline"],
                runs_overparam=world["runs"]["overparam"], outdir=outdir, num_fid=4, num_ppl=2, num_invert=3, steps=2,
                max_pairs=2, ood=r / "ood", threads=1, device="cpu", batch=4, pulse_images=2,
                ganspace_samples=64)
    return repro.Options(**{**base, **kw})


@pytest.fixture(scope="module")
def first_run(world):
    out = world["root"] / "out"
    mp = pytest.MonkeyPatch()  # module-scoped run: apply the stand-ins by hand
    mp.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: MeanPool())
    mp.setattr(cli_interpolate, "_detector", lambda device: MeanPool())
    mp.setenv("OPSTYLEGAN_CACHE", str(world["root"] / "cache"))
    log: list[str] = []
    try:
        res = repro.reproduce(_opts(world, out), log=log.append)
    finally:
        mp.undo()
    return out, res, log


def test_every_part_writes_its_figures(first_run):
    out, res, _ = first_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["parts"].keys() == res["parts"].keys() == {"table1", "table2", "table3", "table4", "pulse",
                                                              "ganspace", "ood"}
    assert on_disk["error"] is None
    p = res["parts"]
    assert {n: (r["num_fake"], r["num_real"], r["ppl_samples"]) for n, r in p["table1"].items()} == \
        {"baseline": (4, 4, 2), "overparam": (4, 4, 2)}
    assert all(np.isfinite(r["fid"]) and r["ppl"] >= 0 for r in p["table1"].values())
    assert {s: (r["model"], r["images"], r["steps"]) for s, r in p["table2"].items()} == {
        "w": ("baseline", 3, 2), "w+": ("baseline", 3, 2), "W": ("overparam", 3, 2), "W+": ("overparam", 3, 2)}
    assert set(p["table2"]["W"]["per_image_lpips"]) == {"test-00000", "test-00001", "test-00002"}
    # Free numbers of each space (tiny 32 px: 8 style layers, 32 rows, w_dim 64): W has 4x the numbers of w+.
    assert {s: r["free_parameters"] for s, r in p["table2"].items()} == {"w": 64, "w+": 512, "W": 2048, "W+": 16384}
    # Measures the projector did not minimise, from the saved PNGs: PSNR matches the projector's own within the
    # PNG rounding; LPIPS-AlexNet is a different number from LPIPS-VGG.
    for s, r in p["table2"].items():
        assert 0 <= r["lpips_alex"]["q1"] <= r["lpips_alex"]["median"] <= r["lpips_alex"]["q3"]
        assert abs(r["psnr_png"]["median"] - r["psnr"]["median"]) < 0.5
        assert r["lpips_alex"]["median"] != pytest.approx(r["lpips"]["median"], abs=1e-6)
    assert all(0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in p["table1"].values())
    assert {s: r["images"] for s, r in p["ood"].items()} == {"w": 2, "w+": 2, "W": 2, "W+": 2}
    assert {k: (r["num_pairs"], r["num_reference"]) for k, r in p["table3"].items()} == {
        "baseline w+": (2, 4), "overparam W": (2, 4), "overparam W+": (2, 4)}
    assert {k: r["space"] for k, r in p["pulse"].items()} == {
        "baseline x4": "w+", "overparam x4": "W", "baseline x8": "w+", "overparam x8": "W"}
    assert len(p["ganspace"]["explained_variance_ratio"]) == 3 and len(p["ganspace"]["images"]) == 4
    for name in ("baseline", "overparam"):
        assert res["models"][name]["fingerprint"] == json.loads(
            (out / "table2" / name / "summary.json").read_text())["fingerprint"]
    assert res["datasets"]["test"]["count"] == 6 and len(res["datasets"]["train"]["content_sha256"]) == 64
    assert set(res["timings_s"]["per_part"]) == {"table1", "table2", "table3", "pulse", "ganspace", "ood"}
    # 3 targets x (target + 4 spaces) cells of 32 px with 1 px gaps.
    assert np.asarray(Image.open(out / "table2" / "grid.png")).shape == (3 * 33 - 1, 5 * 33 - 1)
    assert np.asarray(Image.open(out / "pulse" / "grid.png")).shape == (2 * 33 - 1, 7 * 33 - 1)
    assert (out / "table2" / "fig6.png").stat().st_size > 1000


def test_fig6_combines_the_invert_runs_curves(first_run):
    out, _, _ = first_run
    with open(out / "table2" / "fig6_curves.csv") as f:
        combined = list(csv.DictReader(f))
    assert len(combined) == 2  # one row per step
    for name in ("baseline", "overparam"):
        with open(out / "table2" / name / "lpips_curves.csv") as f:
            own = list(csv.DictReader(f))
        for row_c, row_o in zip(combined, own, strict=True):
            for col, v in row_o.items():
                assert float(row_c[col]) == pytest.approx(float(v), abs=2e-6), (name, col)


def test_inversion_report_gathers_separate_runs_into_table2(first_run, tmp_path):
    out, res, _ = first_run
    targets, t2 = out / "data" / "targets", out / "table2"
    runs = {"w+": t2 / "baseline", "W": t2 / "overparam", "W+": t2 / "overparam"}
    rep = inversion_report.report(targets, runs, tmp_path / "rep")
    assert list(rep["spaces"]) == ["w+", "W", "W+"] and rep["images"] == ["test-00000", "test-00001", "test-00002"]
    for space, r in rep["spaces"].items():  # the same figures as the reproduction's own table 2
        own = res["parts"]["table2"][space]
        assert (r["steps"], r["images"], r["free_numbers"]) == (own["steps"], 3, own["free_parameters"])
        assert r["lpips_vgg"]["median"] == pytest.approx(own["lpips"]["median"], abs=1e-6)
        assert r["lpips_alex"] == pytest.approx(own["lpips_alex"]) and r["psnr"] == pytest.approx(own["psnr_png"])
    # Pairs: consecutive spaces, counts of images each way (ties dropped), exact sign test.
    assert [(p["a"], p["b"]) for p in rep["pairs"]] == [("w+", "W"), ("W", "W+")]
    w, wp = rep["spaces"]["W"]["per_image"], rep["spaces"]["W+"]["per_image"]
    assert rep["pairs"][1]["psnr"]["b_better"] == sum(wp[n]["psnr"] > w[n]["psnr"] for n in w)
    assert rep["pairs"][1]["lpips_vgg"]["b_better"] == sum(wp[n]["lpips_vgg"] < w[n]["lpips_vgg"] for n in w)
    assert np.asarray(Image.open(tmp_path / "rep" / "grid.png")).shape == (3 * 33 - 1, 4 * 33 - 1)
    with open(tmp_path / "rep" / "fig6_curves.csv") as f:
        assert list(csv.DictReader(f))[0].keys() >= {"w+_median", "W_median", "W+_median"}
    assert "| W+ | " in (tmp_path / "rep" / "report.md").read_text()
    # Runs that do not fit are refused, naming the problem.
    with pytest.raises(inversion_report.ReproError, match="holds the spaces w, w\\+, not W"):
        inversion_report.report(targets, {"W": t2 / "baseline"}, tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(inversion_report.ReproError, match="images that are not in .*empty: test-00000"):
        inversion_report.report(tmp_path / "empty", {"w": t2 / "baseline"}, tmp_path / "x")
    fewer = json.loads((t2 / "overparam" / "summary.json").read_text())  # a run of 2 of the 3 images
    fewer["results"]["W"]["per_image"].popitem()
    (tmp_path / "fewer").mkdir()
    (tmp_path / "fewer" / "summary.json").write_text(json.dumps(fewer))
    with pytest.raises(inversion_report.ReproError, match="the W run .*fewer.* inverted 2 other images than the w"):
        inversion_report.report(targets, {"w": t2 / "baseline", "W": tmp_path / "fewer"}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_inversion_report_cli_refuses_a_bad_run_option(tmp_path):
    from click.testing import CliRunner

    r = CliRunner().invoke(inversion_report.main, ["--targets", str(tmp_path), "--run", "V=somewhere",
                                                   "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "'V=somewhere': expected SPACE=FOLDER with SPACE one of w, w+, W, W+" in r.output
    r = CliRunner().invoke(inversion_report.main, ["--targets", str(tmp_path), "--run", "W=a", "--run", "W=b",
                                                   "--outdir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "each space may be given once" in r.output
    assert not (tmp_path / "o").exists()


def test_sign_test_is_exact():
    assert inversion_report.sign_test(5, 0) == pytest.approx(2 / 32)
    assert inversion_report.sign_test(3, 3) == 1.0 and inversion_report.sign_test(0, 0) == 1.0
    assert inversion_report.sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 1024)


def test_table4_averages_common_ticks_without_the_first(first_run):
    t = first_run[1]["parts"]["table4"]
    # Both runs reached kimg 4, 8, 12 (the overparam run also 16, and a half-written line is ignored);
    # the first tick is left out: (48 + 56) s / 8 kimg and (52 + 60) s / 8 kimg.
    assert t["kimg_range"] == [4.0, 12.0] and t["ticks_used"] == 2 and t["first_tick_dropped"]
    assert t["models"]["baseline"]["sec_per_kimg"] == pytest.approx(13.0)
    assert t["models"]["overparam"]["sec_per_kimg"] == pytest.approx(14.0)
    assert t["models"]["baseline"]["peak_memory_gb"] == 0.7 and t["models"]["overparam"]["peak_memory_gb"] == 0.9
    assert t["runs_overlap_in_time"] is True
    assert t["config_differences"] == {"overparam": [False, True]}


def test_markdown_has_every_table_with_its_command(first_run):
    out, _, _ = first_run
    md = (out / "results.md").read_text()
    for heading in ("## Table 1", "## Table 2", "## Table 3", "## Table 4", "## PULSE", "## GANSpace",
                    "## Out-of-distribution"):
        assert heading in md
    assert "opstylegan metrics --model" in md and "opstylegan interpolate metrics" in md
    assert "python scripts/reproduce_fmnist.py --baseline" in md
    assert "| W+ | overparam | 16384 | 3 | 2 |" in md  # free numbers: 8 layers x 32 rows x 64
    assert "LPIPS-Alex" in md and "| precision | recall |" in md


def test_second_run_skips_and_a_changed_option_reruns_only_its_steps(first_run, world):
    out, res, log = first_run
    assert sum("skipped" in m for m in log) == 0
    log2: list[str] = []
    repro.reproduce(_opts(world, out), log=log2.append)
    started = [m for m in log2 if "skipped" not in m]
    assert started == [] and sum("skipped" in m for m in log2) == len(res["commands"]) == 15
    log3: list[str] = []
    repro.reproduce(_opts(world, out, steps=3, parts=("table2",)), log=log3.append)
    ran = sorted(m.split("]")[0][1:] for m in log3 if "finished in" in m)
    assert ran == ["table2-invert-baseline", "table2-invert-overparam"]
    with open(out / "table2" / "fig6_curves.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    assert json.loads((out / "results.json").read_text())["parts"]["table2"]["W"]["steps"] == 3
    # Fewer targets: same commands, but the exported folder changed, so the inversions are re-run.
    log_n: list[str] = []
    repro.reproduce(_opts(world, out, steps=3, num_invert=2, parts=("table2",)), log=log_n.append)
    assert sorted(m.split("]")[0][1:] for m in log_n if "finished in" in m) == \
        ["table2-invert-baseline", "table2-invert-overparam"]
    assert json.loads((out / "results.json").read_text())["parts"]["table2"]["W"]["images"] == 2
    # A snapshot folder overwritten with other weights: same commands, but the steps are re-run.
    torch.manual_seed(7)
    Generator(tiny(overparam=True)).eval().save_pretrained(world["models"]["overparam"])
    log4: list[str] = []
    repro.reproduce(_opts(world, out, steps=3, parts=("ganspace",)), log=log4.append)
    assert sorted(m.split("]")[0][1:] for m in log4 if "finished in" in m) == ["ganspace-fit", "ganspace-grid"]


def test_table3_can_take_the_first_latents_only(first_run, world):
    out, _, _ = first_run
    mp = pytest.MonkeyPatch()
    mp.setattr(cli_metrics, "load_feature_net", lambda cache_dir, device: MeanPool())
    mp.setattr(cli_interpolate, "_detector", lambda device: MeanPool())
    mp.setenv("OPSTYLEGAN_CACHE", str(world["root"] / "cache"))
    try:
        res = repro.reproduce(_opts(world, out, num_interp=2, max_pairs=None, parts=("table2", "table3")),
                            log=lambda m: None)
    finally:
        mp.undo()
    # 2 latents -> 1 pair; the copies are the first two inverted latents, byte for byte.
    assert {k: r["num_pairs"] for k, r in res["parts"]["table3"].items()} == {
        "baseline w+": 1, "overparam W": 1, "overparam W+": 1}
    copies = sorted((out / "table3" / "latents" / "overparam-W-matrix").iterdir())
    src = sorted((out / "table2" / "overparam" / "W-matrix").glob("*.safetensors"))[:2]
    assert [c.read_bytes() for c in copies] == [s.read_bytes() for s in src]


def test_bad_inputs_are_refused_before_any_work(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="--runs-baseline .*no stats.jsonl"):
        repro.reproduce(_opts(world, tmp_path / "a", runs_baseline=tmp_path))
    with pytest.raises(ValueError, match="unknown part.*bogus"):
        repro.reproduce(_opts(world, tmp_path / "b", parts=("table2", "bogus")))
    with pytest.raises(FileNotFoundError, match="--test-data .*no dataset.json"):
        repro.reproduce(_opts(world, tmp_path / "c", test_data=tmp_path))
    with pytest.raises(ValueError, match="--overparam .*expected an overparameterized model.*overparam=False"):
        repro.reproduce(_opts(world, tmp_path / "e", overparam=world["models"]["baseline"]))
    with pytest.raises(ValueError, match="holds 6 images, fewer than the 7"):
        repro.reproduce(_opts(world, tmp_path / "d", num_invert=7, parts=("table2",)))
    assert not any((tmp_path / d).exists() for d in "abce")
