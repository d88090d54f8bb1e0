"""`opstylegan dataset` under hostile conditions: zip bombs, a full disk, SIGTERM, leftovers of killed builds."""

from __future__ import annotations

import errno
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import opstylegan.data.build as build_mod
from opstylegan.cli.main import cli
from opstylegan.data import DatasetError, ImageDataset, ImageError, ImageFiles, build_dataset
from opstylegan.data.images import max_image_file_bytes

BOMB_BYTES = 64 << 20  # 64 MiB of zeros deflate to about 64 KB


def _png(seed: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(_png(i))
    return folder


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small zip: one good image and a 64 MiB member of zeros named like an image."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a_good.png", _png(0))
        zf.writestr("b_big.png", bytes(BOMB_BYTES))
    assert path.stat().st_size < 1 << 20
    return path


def _lying_copy(src: Path, dest: Path, member: str, declared: int) -> Path:
    """A copy of the zip whose headers declare `declared` bytes for `member` (the data still inflates to more)."""
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo(member)
    # Local header: uncompressed size at offset 22; central directory entry: at offset 24.
    struct.pack_into("<I", data, info.header_offset + 22, declared)
    central = data.find(b"PK\x01\x02" + data[info.header_offset + 4 : info.header_offset + 6])
    while central != -1:
        name_len = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_len].decode() == member:
            struct.pack_into("<I", data, central + 24, declared)
            break
        central = data.find(b"PK\x01\x02", central + 1)
    dest.write_bytes(bytes(data))
    return dest


# --------------------------------------------------------------------------------------------------
# Zip bombs


def test_limit_follows_pillows_pixel_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    assert max_image_file_bytes() == 2 * 1_000_000 * 4 + (1 << 20)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert max_image_file_bytes() is None


def test_zip_member_refused_by_declared_size_before_reading(bomb_zip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # limit ~9 MB, below the 64 MiB member
    files = ImageFiles(bomb_zip)
    assert files.names == ["a_good.png", "b_big.png"]
    assert files.load(0).shape == (20, 20, 3)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=r"bomb.zip:b_big.png: refused: the zip declares 67.1 MB"):
            files.read_bytes(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the member was inflated


def test_zip_member_with_lying_header_is_bounded(bomb_zip: Path, tmp_path: Path) -> None:
    liar = _lying_copy(bomb_zip, tmp_path / "liar.zip", "b_big.png", declared=1000)
    files = ImageFiles(liar, max_bytes=4 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match="liar.zip:b_big.png"):
            files.read_bytes(1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_actual_bytes_are_counted_when_the_declared_size_passes(bomb_zip: Path) -> None:
    # The declared size (64 MiB) is checked against the limit; the bytes read are counted too, in chunks.
    files = ImageFiles(bomb_zip, max_bytes=BOMB_BYTES - 1)
    with pytest.raises(ImageError, match="declares 67.1 MB"):
        files.read_bytes(1)
    files = ImageFiles(bomb_zip, max_bytes=None)
    assert len(files.read_bytes(1)) == BOMB_BYTES


def test_bounded_read_stops_past_the_limit() -> None:
    from opstylegan.data.images import _read_bounded

    with pytest.raises(ImageError, match="x.png: refused: its data exceeds 3.0 MB"):
        _read_bounded(io.BytesIO(bytes(5 << 20)), 3_000_000, "x.png")
    assert _read_bounded(io.BytesIO(b"abc"), 3, "x.png") == b"abc"


def test_dataset_from_a_zip_bomb_names_the_member(bomb_zip: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    rep = build_dataset(bomb_zip, tmp_path / "ds", resolution=16, channels=3)
    assert rep.count == 1 and [s.name for s in rep.skipped] == ["bomb.zip:b_big.png"]
    assert "refused" in rep.skipped[0].reason
    res = CliRunner().invoke(cli, ["dataset", str(bomb_zip), str(tmp_path / "ds2"), "--resolution", "16",
                                   "--channels", "3", "--on-error", "fail"])
    assert res.exit_code == 1 and "bad image bomb.zip:b_big.png: refused" in res.output, res.output


def test_oversized_file_in_a_folder_is_refused_by_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # limit 80 kB + 1 MiB
    src = _images(tmp_path / "src", 1)
    (src / "huge.bmp").write_bytes(bytes(2 << 20))
    with pytest.raises(ImageError, match="huge.bmp: refused: the file is 2.1 MB"):
        ImageFiles(src).read_bytes(ImageFiles(src).names.index("huge.bmp"))


# --------------------------------------------------------------------------------------------------
# A full disk


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_not_enough_space_is_refused_up_front(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _images(tmp_path / "src", 3)
    real = build_mod.shutil.disk_usage

    def small_disk(path):  # 2 MB free, as on a nearly full tmpfs
        return real(path)._replace(free=2_000_000)

    monkeypatch.setattr(build_mod.shutil, "disk_usage", small_disk)
    called = []
    with pytest.raises(DatasetError, match=r"not enough space on the disk holding .*\(mounted at /.*\): the dataset "
                                           r"needs 4\.2 MB, 2\.0 MB are free"):  # 3 x 1024^2 bytes + 1 MiB
        build_dataset(src, tmp_path / "ds", resolution=1024, channels=1, allow_upscale=True,
                      progress=lambda d, t: called.append(d))
    assert called == []  # refused before any image was decoded
    assert _listing(tmp_path) == ["src"]
    # 16 px images fit: 3 * 256 bytes + 1 MiB margin
    assert build_dataset(src, tmp_path / "ds", resolution=16, channels=1).count == 3


def test_preallocation_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _images(tmp_path / "src", 3)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(build_mod.os, "posix_fallocate", full, raising=False)
    with pytest.raises(DatasetError, match=r"needs 1\.0 MB, .* were free at the start, but the disk filled up "
                                           r"while writing \(No space left on device\); nothing was written"):
        build_dataset(src, tmp_path / "ds", resolution=16, channels=1)
    assert _listing(tmp_path) == ["src"]  # no hidden .ds.building-* folder


def test_disk_filling_up_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without fallocate: the writes themselves fail (an OSError, never a SIGBUS)."""
    src = _images(tmp_path / "src", 3)
    real_open = build_mod._open_images_file

    class FillsUp:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if self.writes == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(build_mod, "_open_images_file", lambda path, shape: FillsUp(real_open(path, shape)))
    with pytest.raises(DatasetError, match="disk filled up while writing"):
        build_dataset(src, tmp_path / "ds", resolution=16, channels=1)
    assert _listing(tmp_path) == ["src"]


def test_images_file_is_written_without_a_memory_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """np.memmap writes to a full tmpfs end in SIGBUS; the build must not use one to write."""
    src = _images(tmp_path / "src", 3)

    def no_memmap(*a, **k):
        raise AssertionError("images.npy must not be written through a memory map")

    with monkeypatch.context() as m:
        m.setattr(np.lib.format, "open_memmap", no_memmap)
        m.setattr(np, "memmap", no_memmap)
        rep = build_dataset(src, tmp_path / "ds", resolution=16, channels=3, max_images=2)
    arr = np.load(tmp_path / "ds" / "images.npy")
    assert rep.count == 2 and arr.shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(arr[1], ImageDataset(tmp_path / "ds")[1].numpy())


def test_cli_destination_under_a_file(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", 1)
    (tmp_path / "f").write_text("a file")
    res = CliRunner().invoke(cli, ["dataset", str(src), str(tmp_path / "f" / "ds"), "--resolution", "16",
                                   "--channels", "1"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"cannot write to {tmp_path / 'f'}: it is a file, not a folder" in res.output, res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_cli_destination_without_permission(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", 1)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        res = CliRunner().invoke(cli, ["dataset", str(src), str(locked / "ds"), "--resolution", "16",
                                       "--channels", "1"])
    finally:
        locked.chmod(0o700)
    assert res.exit_code == 1 and "permission denied" in res.output, res.output


# --------------------------------------------------------------------------------------------------
# Killed builds


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_building_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", 2)
    host = socket.gethostname()
    dead = tmp_path / f".ds.building-{host}-{_dead_pid()}-abc_12"
    alive = tmp_path / f".ds.building-{host}-{os.getpid()}-xyz_34"
    foreign = tmp_path / f".ds.building-elsewhere-{_dead_pid()}-qrs_56"
    other = tmp_path / f".other.building-{host}-{_dead_pid()}-tuv_78"
    for d in (dead, alive, foreign, other):
        d.mkdir()
        (d / "images.npy").write_bytes(bytes(100))
    rep = build_dataset(src, tmp_path / "ds", resolution=16, channels=1)
    assert rep.removed_stale == [dead]
    assert not dead.exists() and alive.exists() and foreign.exists() and other.exists()
    res = CliRunner().invoke(cli, ["dataset", str(src), str(tmp_path / "other"), "--resolution", "16",
                                   "--channels", "1"])
    assert res.exit_code == 0 and f"Removed {other}, left by an earlier build that was killed." in res.output


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path) -> None:
    src = _images(tmp_path / "src", 40)
    script = textwrap.dedent(f"""
        import time
        import opstylegan.data.build as b
        fit = b.fit_image
        def slow(*a, **k):
            time.sleep(0.05)
            return fit(*a, **k)
        b.fit_image = slow
        from opstylegan.cli.main import cli
        cli(["dataset", {str(src)!r}, {str(tmp_path / "ds")!r}, "--resolution", "16", "--channels", "1"])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".ds.building-") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.2)  # inside the image loop
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert "stopped by SIGTERM: nothing was written" in err and "Traceback" not in err
    assert _listing(tmp_path) == ["src"]
