"""`opstylegan train` when things go wrong: a full disk, a torn stats.jsonl, a shrinking --kimg, bad raw images,
an output path under a file, an unreadable newer state at pruning time (CPU, tiny networks)."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from opstylegan.cli.main import cli
from opstylegan.data import build_dataset, write_idx
from opstylegan.training import state as S

TINY = ["--preset", "tiny", "--batch", "4", "--tick", "0.004", "--snap", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(5)
    write_idx(root / "train-images-idx3-ubyte", (rng.random((12, 16, 16)) * 255).astype(np.uint8))
    build_dataset(root / "train-images-idx3-ubyte", root / "ds", resolution=16, channels=1)
    return root / "ds"


def _train(*args: str | Path):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


# --------------------------------------------------------------------------------------------------
# Pruning


def _state(run: Path, kimg_nimg: int, *, good: bool = True) -> Path:
    path = S.state_path(run, kimg_nimg)
    if good:
        S.save_state(path, {"cur_nimg": kimg_nimg, "x": torch.zeros(3)})
    else:
        path.write_bytes(b"PK\x03\x04 half a state")
    return path


def test_pruning_counts_only_states_that_load(tmp_path: Path) -> None:
    old, good, new = _state(tmp_path, 4000), _state(tmp_path, 6000), _state(tmp_path, 8000, good=False)
    assert S.prune_states(tmp_path, keep=2) == []
    assert old.exists() and good.exists() and new.exists()  # the unreadable newest state did not take a place
    _state(tmp_path, 10000)
    stale = _state(tmp_path, 2000, good=False)
    assert S.prune_states(tmp_path, keep=2) == [old, stale]  # older than the two kept good ones: deleted
    assert [p.name for p in S.list_states(tmp_path)] == ["state-000010.000.pt", "state-000008.000.pt",
                                                          "state-000006.000.pt"]
    assert S.find_latest_state(tmp_path).path.name == "state-000010.000.pt"


# --------------------------------------------------------------------------------------------------
# stats.jsonl and --kimg on resume


def test_resume_refuses_a_lower_kimg_and_tolerates_a_half_written_stats_line(dataset_dir: Path,
                                                                            tmp_path: Path) -> None:
    res = _train("--data", dataset_dir, "--outdir", tmp_path / "runs", "--kimg", "0.008", *TINY)
    assert res.exit_code == 0, res.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    # --kimg below where the run is: refused before anything is rewritten
    config, stats = (run_dir / "config.json").read_bytes(), (run_dir / "stats.jsonl").read_bytes()
    res = _train("--resume", run_dir, "--kimg", "0.004", "--device", "cpu")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "kimg=0.004 is below where the run" in res.output and "(kimg 0.008, state-000000.008.pt)" in res.output
    assert "give kimg >= 0.008" in res.output
    assert (run_dir / "config.json").read_bytes() == config and (run_dir / "stats.jsonl").read_bytes() == stats
    res = _train("--resume", run_dir, "--kimg", "0.008", "--device", "cpu")  # already there: nothing to do
    assert res.exit_code == 0 and "already reached" in res.output, res.output
    # a process that died in the middle of appending a stats line
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write('{"tick": 3, "kimg": 0.0')
    res = _train("--resume", run_dir, "--kimg", "0.012", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "WARNING: dropped 1 incomplete line(s) of stats.jsonl" in res.output
    lines = (run_dir / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["kimg"] for line in lines] == [0.004, 0.008, 0.012]


# --------------------------------------------------------------------------------------------------
# A full disk, an output path under a file


def test_disk_full_at_a_snapshot_then_resume(dataset_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = S._write_bytes, []

    def fills_up(path: Path, data: bytes) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(S, "_write_bytes", fills_up)
    res = _train("--data", dataset_dir, "--outdir", tmp_path / "runs", "--kimg", "0.008", *TINY)
    (run,) = (tmp_path / "runs").iterdir()
    assert res.exit_code == 1 and "Traceback" not in res.output and not isinstance(res.exception, OSError)
    assert "the disk is full" in res.output, res.output
    assert f"the last complete snapshot is kept: fix this, then continue with `opstylegan train --resume {run}`" \
        in res.output
    assert [p.name for p in S.list_states(run)] == ["state-000000.004.pt"]
    monkeypatch.setattr(S, "_write_bytes", real)  # space freed
    res = _train("--resume", run, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert S.find_latest_state(run).state["cur_nimg"] == 8


def test_outdir_under_a_file_is_refused_before_any_work(dataset_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    res = _train("--data", dataset_dir, "--outdir", tmp_path / "f" / "runs", "--kimg", "0.004", *TINY)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"lies under {tmp_path / 'f'}, which is a file" in res.output, res.output


# --------------------------------------------------------------------------------------------------
# Raw images that cannot be trained on


def _raw(folder: Path, sizes: list[int]) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, s in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (s, s), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("sizes, message", [
    ([32, 40, 32], r"the images differ in size: 32x32 \(2, e.g. .*0.png\), 40x40 \(1, e.g. .*1.png\)"),
    ([40, 40], r"the images are 40x40 px; training needs square images of a power-of-two size in \[16, 1024\]"),
])
def test_raw_images_of_mixed_or_odd_size_point_to_the_dataset_command(tmp_path: Path, sizes: list[int],
                                                                      message: str) -> None:
    raw = _raw(tmp_path / "raw", sizes)
    res = _train("--data", raw, "--outdir", tmp_path / "runs", "--kimg", "0.004", *TINY)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    out = " ".join(res.output.split())
    assert re.search(message, out), out
    assert f"opstylegan dataset {raw} DEST --resolution R --channels C" in out
    assert not any((tmp_path / "runs").glob("0*"))  # no run folder was made


def test_raw_images_of_one_size_still_train(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "raw", [16] * 4)
    (raw / "broken.png").write_text("not an image")
    res = _train("--data", raw, "--outdir", tmp_path / "runs", "--kimg", "0.004", *TINY)
    assert res.exit_code == 1 and "1 of 5 images cannot be read" in res.output and "broken.png" in res.output
    (raw / "broken.png").unlink()
    res = _train("--data", raw, "--outdir", tmp_path / "runs", "--kimg", "0.004", *TINY)
    assert res.exit_code == 0, res.output
