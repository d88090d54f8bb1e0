"""`opstylegan train` end to end on a tiny dataset: run folders, outputs, resume, and user errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, write_idx
from opstylegan.models.generator import Generator
from opstylegan.training import state as S


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(3)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((12, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "fmnist16", resolution=16, channels=1)
    return root / "fmnist16"


TINY = ["--preset", "tiny", "--batch", "4", "--tick", "0.004", "--snap", "1", "--device", "cpu"]


def run(*args: str):
    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def test_train_writes_a_complete_run_folder_and_resumes(dataset_dir, tmp_path):
    res = run("--data", str(dataset_dir), "--outdir", str(tmp_path), "--kimg", "0.008", "--mirror", *TINY)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "00000-fmnist16-baseline"
    assert run_dir.is_dir()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["batch"] == 4 and cfg["gamma"] == pytest.approx(0.0002 * 16**2 / 4) and cfg["ema_kimg"] == 1.25
    assert cfg["mirror"] is True and cfg["generator"]["img_resolution"] == 16 and not cfg["overparam"]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [s["kimg"] for s in stats] == [0.004, 0.008]
    assert {"sec_per_kimg", "loss", "ada_p", "pl_mean", "cpu_peak_rss_gb"} <= set(stats[0])
    assert set(stats[0]["loss"]) == {"Gmain", "Gpl", "Dmain", "Dr1"}
    for name in ("reals.png", "fakes-init.png", "fakes-000000.004.png", "fakes-000000.008.png", "log.txt"):
        assert (run_dir / name).is_file(), name
    assert "tick 2 kimg 0.008" in (run_dir / "log.txt").read_text()
    latest = json.loads((run_dir / "latest.json").read_text())
    assert latest == {"kimg": 0.008, "network": "network-000000.008", "state": "state-000000.008.pt"}
    G = Generator.from_pretrained(run_dir / "network-latest")
    assert G.fingerprint() == Generator.from_pretrained(run_dir / "network-000000.008").fingerprint()
    assert G(G.z_from_seeds([0])).shape == (1, 1, 16, 16)

    res = run("--resume", str(run_dir), "--kimg", "0.012", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "resuming from" in res.output and "state-000000.008.pt" in res.output
    assert S.find_latest_state(run_dir).state["cur_nimg"] == 12
    assert json.loads((run_dir / "config.json").read_text())["kimg"] == 0.012
    assert len((run_dir / "stats.jsonl").read_text().splitlines()) == 3


def test_overparam_run_is_numbered_after_existing_ones(dataset_dir, tmp_path):
    (tmp_path / "00007-old-baseline").mkdir()
    res = run("--data", str(dataset_dir), "--outdir", str(tmp_path), "--kimg", "0.004", "--overparam",
              "--aug", "noaug", *TINY)
    assert res.exit_code == 0, res.output
    run_dir = tmp_path / "00008-fmnist16-overparam"
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["overparam"] and cfg["aug"] == "noaug"
    G = Generator.from_pretrained(run_dir / "network-latest")
    assert G.overparam and G.rows == cfg["generator"]["channel_max"]
    assert json.loads((run_dir / "stats.jsonl").read_text())["ada_p"] is None


def test_user_errors_are_precise(dataset_dir, tmp_path):
    res = CliRunner().invoke(cli, ["train", "--outdir", str(tmp_path)])
    assert res.exit_code == 2 and "give --data DATASET for a new run, or --resume RUN_DIR" in res.output
    res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--batch", "8"])
    assert res.exit_code == 2 and "--batch cannot be changed" in res.output
    res = CliRunner().invoke(cli, ["train", "--resume", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 1 and "a run folder of `opstylegan train`?" in res.output
    res = CliRunner().invoke(cli, ["train", "--data", str(dataset_dir), "--batch", "1", "--device", "cpu"])
    assert res.exit_code == 2 and "--batch" in res.output
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path), "--outdir", str(tmp_path / "r"),
                                   "--device", "cpu", "--preset", "tiny"])
    assert res.exit_code == 1 and "not a dataset" in res.output
    assert not (tmp_path / "r").exists()  # nothing is created for a run that cannot start
