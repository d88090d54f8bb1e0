"""`opstylegan generate`: bad numbers, bad sizes and unwritable outputs end in a message, never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import opstylegan.data.images as image_io
from opstylegan.cli.main import cli


def _generate(*args: str | Path):
    return CliRunner().invoke(cli, ["generate", *map(str, args)])


@pytest.mark.parametrize("args, message", [
    (["--trunc", "nan"], "nan is not a number"),
    (["--resolution", "48"], "48 is not a power of two"),
])
def test_bad_values_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    res = _generate("--init", "tiny", "--seeds", "0", *args, "--outdir", tmp_path / "out")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_outdir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file")
    res = _generate("--init", "tiny", "--seeds", "0", "--outdir", tmp_path / "f" / "out")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"lies under {tmp_path / 'f'}, which is a file" in res.output, res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_outdir_without_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        res = _generate("--init", "tiny", "--seeds", "0", "--outdir", locked / "out")
    finally:
        locked.chmod(0o700)
    assert res.exit_code == 1 and "permission denied" in res.output, res.output


def test_disk_full_while_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = image_io.save_image
    calls = []

    def fills_up(path, img):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, img)

    monkeypatch.setattr(image_io, "save_image", fills_up)
    res = _generate("--init", "tiny", "--seeds", "0-2", "--outdir", tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.output and not isinstance(res.exception, OSError)
    assert f"cannot write {tmp_path / 'out'}: the disk is full" in res.output, res.output
    assert "(1 of 3 image(s) were written" in res.output


def test_unwritable_outdir_is_refused_before_generating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root the permission test above cannot run: a refused probe file stands for a folder without permission."""
    import opstylegan.io.outdir as outdir

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "out"))

    monkeypatch.setattr(outdir.tempfile, "mkstemp", denied)
    generated = []
    monkeypatch.setattr(image_io, "from_tensor", lambda x: generated.append(x))
    res = _generate("--init", "tiny", "--seeds", "0", "--outdir", tmp_path / "out")
    assert res.exit_code == 1 and f"cannot write {tmp_path / 'out'}: permission denied" in res.output, res.output
    assert generated == []
