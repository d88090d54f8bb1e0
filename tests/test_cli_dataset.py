"""`opstylegan dataset` end to end through click's CliRunner, via the top-level lazy group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from opstylegan.cli.main import cli
from opstylegan.data import write_idx


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(src / "sub" / f"{i}.png")
    (src / "sub" / "broken.png").write_text("this is not a png")
    return src


def _run(*args: str):
    return CliRunner().invoke(cli, ["dataset", *args])


def test_cli_builds_and_reports_skipped(folder: Path, tmp_path: Path) -> None:
    res = _run(str(folder), str(tmp_path / "ds"), "--resolution", "16", "--channels", "3")
    assert res.exit_code == 0, res.output
    assert "Wrote 3 images of 3x16x16" in res.output
    assert "Skipped 1 file(s):" in res.output and "broken.png: not a recognised image" in res.output
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["count"] == 3 and meta["channels"] == 3
    assert np.load(tmp_path / "ds" / "images.npy").shape == (3, 3, 16, 16)


def test_cli_on_error_fail_exits_nonzero_without_traceback(folder: Path, tmp_path: Path) -> None:
    res = _run(str(folder), str(tmp_path / "ds"), "--resolution", "16", "--channels", "1", "--on-error", "fail")
    assert res.exit_code == 1
    assert "Error: bad image" in res.output and "broken.png" in res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit)
    assert not (tmp_path / "ds").exists()


def test_cli_refuses_existing_dest_then_overwrites(folder: Path, tmp_path: Path) -> None:
    dest = tmp_path / "ds"
    dest.mkdir()
    (dest / "old.txt").write_text("x")
    res = _run(str(folder), str(dest), "--resolution", "16", "--channels", "3")
    assert res.exit_code == 1 and "not empty" in res.output and "--overwrite" in res.output
    res = _run(str(folder), str(dest), "--resolution", "16", "--channels", "3", "--overwrite", "--max-images", "2")
    assert res.exit_code == 1 and "is not a dataset built by opstylegan" in res.output, res.output
    assert (dest / "old.txt").read_text() == "x"
    (dest / "old.txt").unlink()
    assert _run(str(folder), str(dest), "--resolution", "16", "--channels", "3").exit_code == 0
    res = _run(str(folder), str(dest), "--resolution", "16", "--channels", "3", "--overwrite", "--max-images", "2")
    assert res.exit_code == 0, res.output
    assert "Wrote 2 images" in res.output and json.loads((dest / "dataset.json").read_text())["count"] == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--resolution", "24", "--channels", "3"], "24 is not a power of two"),
        (["--resolution", "8", "--channels", "3"], "8 is not in the range 16<=x<=1024"),
        (["--resolution", "16", "--channels", "2"], "'2' is not one of '1', '3'"),
        (["--channels", "3"], "Missing option '--resolution'"),
    ],
)
def test_cli_usage_errors(folder: Path, tmp_path: Path, extra: list[str], message: str) -> None:
    res = _run(str(folder), str(tmp_path / "ds"), *extra)
    assert res.exit_code == 2 and message in res.output, res.output


def test_cli_missing_source(tmp_path: Path) -> None:
    res = _run(str(tmp_path / "nothing"), str(tmp_path / "ds"), "--resolution", "16", "--channels", "3")
    assert res.exit_code == 2 and "does not exist" in res.output


def test_cli_idx_split_and_pad(tmp_path: Path) -> None:
    imgs = np.random.default_rng(1).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(4, dtype=np.uint8), compress=True)
    res = _run(str(tmp_path), str(tmp_path / "out"), "--resolution", "32", "--channels", "1",
               "--split", "test", "--fit", "pad")
    assert res.exit_code == 0, res.output
    assert "Wrote 4 images of 1x32x32" in res.output and "labels stored" in res.output
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "images.npy")[:, 0, 2:30, 2:30], imgs)
    res = _run(str(tmp_path), str(tmp_path / "out2"), "--resolution", "32", "--channels", "1")
    assert res.exit_code == 1 and "split 'train'" in res.output


def test_cli_help_has_examples() -> None:
    res = CliRunner().invoke(cli, ["dataset", "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output and "--on-error" in res.output
