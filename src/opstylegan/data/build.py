"""Build a training dataset directory from a folder / zip of images or MNIST-style IDX files.

On-disk format (a directory):
    images.npy    uint8 [N, C, H, W], H = W = resolution; plain `np.save` format, read with mmap_mode="r"
    labels.npy    int64 [N], only when the source has labels (IDX); stored, ignored by training
    dataset.json  {"format": "opstylegan-dataset", "version": 1, resolution, channels, count, source,
                   skipped: [{name, reason}], sha256: {"images.npy": ...}, ...}

The dataset is written into a hidden temporary directory `.DEST.building-<host>-<pid>-*` beside `dest`
and renamed onto `dest` only when complete, so an error or Ctrl-C never leaves a half-written dataset
behind; the building folders of processes that died without cleaning up (SIGKILL, power loss) are
removed by the next build of the same destination on the same host. Images are decoded one at a time
and written to `images.npy` in order; peak memory is one image (plus, for IDX sources, the decoded IDX
array itself).

Disk space: the size of `images.npy` is known before the first image is decoded (count x C x H x W
bytes), so the free space is checked up front and the file is preallocated (`os.posix_fallocate`); a
disk that still fills up (another writer) ends the build with a `DatasetError` naming the disk and
the space needed, never with a half-written file. The file is written with plain writes, not through a
memory map: a memory-mapped write to a full tmpfs kills the process with SIGBUS instead of raising.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import re
import shutil
import socket
import struct
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

from opstylegan.data.idx import find_idx_images, is_idx_images_name, labels_path_for, read_idx
from opstylegan.data.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    ImageFiles,
    PathLike,
    center_crop_resize,
    pad_to,
)
from opstylegan.io.atomic import sha256_file
from opstylegan.io.outdir import prepare_outdir

FORMAT_NAME = "opstylegan-dataset"
FORMAT_VERSION = 1
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npy"
META_FILE = "dataset.json"

ProgressFn = Callable[[int, int], None]

#: Space kept free beyond the dataset's files (dataset.json, the file system's own blocks).
SPACE_MARGIN = 1 << 20
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DatasetError(ValueError):
    """A dataset source, destination or directory is unusable; the message names the path and the problem."""


@dataclass(frozen=True)
class SkippedFile:
    """A source image left out of the dataset, and why."""

    name: str
    reason: str


@dataclass
class BuildReport:
    """What `build_dataset` wrote."""

    dest: Path
    count: int
    resolution: int
    channels: int
    source_kind: str  # "folder", "zip", "image" or "idx"
    num_candidates: int  # images considered (before max_images and skipping)
    skipped: list[SkippedFile] = field(default_factory=list)
    has_labels: bool = False
    sha256: str = ""
    removed_stale: list[Path] = field(default_factory=list)  # building folders of dead processes, removed

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


def check_resolution(resolution: int) -> None:
    """Training resolutions: a power of two in [16, 1024] (the generator's supported range)."""
    if not isinstance(resolution, int) or resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two in [16, 1024] (16, 32, ..., 1024), got {resolution!r}")


def fit_image(
    img: np.ndarray, resolution: int, *, fit: str = "resize", allow_upscale: bool = False, name: str = "<array>"
) -> np.ndarray:
    """Make a uint8 `[H, W, C]` image `[resolution, resolution, C]`.

    fit="resize": center-crop to a square and resize with Lanczos (`center_crop_resize`); an image
    smaller than `resolution` is an error unless `allow_upscale`.
    fit="pad": center-crop to a square; if it is larger than `resolution` shrink it with Lanczos,
    if smaller pad it with black on all sides (MNIST's 28 px digits in a 32 px frame).
    """
    if fit == "resize":
        return center_crop_resize(img, resolution, allow_upscale=allow_upscale, name=name)
    if fit == "pad":
        h, w = img.shape[:2]
        side = min(h, w)
        if side >= resolution:
            return center_crop_resize(img, resolution, name=name)
        top, left = (h - side) // 2, (w - side) // 2
        return pad_to(img[top : top + side, left : left + side], resolution)
    raise ValueError(f"fit must be 'resize' or 'pad', got {fit!r}")


# --------------------------------------------------------------------------------------------------
# Sources


@dataclass
class _Source:
    kind: str
    count: int
    read: Callable[[int, int], np.ndarray]  # (index, channels) -> uint8 [H, W, C]; raises ImageError
    name: Callable[[int], str]
    labels: np.ndarray | None = None
    fixed_size: bool = False  # all images one known size (IDX): resizing up is the point, not an accident


def _idx_source(images_path: Path, labels_path: Path | None) -> _Source:
    arr = read_idx(images_path)
    if arr.ndim == 4 and arr.shape[3] in (1, 3):
        pass  # [N, H, W, C]
    elif arr.ndim == 3:
        arr = arr[:, :, :, None]  # [N, H, W] -> [N, H, W, 1]
    else:
        raise DatasetError(f"{images_path}: IDX images must be [N, H, W] or [N, H, W, C], got shape {arr.shape}")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path).astype(np.int64)
        if labels.ndim != 1 or len(labels) != len(arr):
            raise DatasetError(
                f"{labels_path}: {labels.shape} labels do not match {len(arr)} images in {images_path.name}"
            )

    def read(i: int, channels: int) -> np.ndarray:
        img = arr[i]
        if channels == 3 and img.shape[2] == 1:
            return np.repeat(img, 3, axis=2)  # [H, W, 1] -> [H, W, 3]
        if channels == 1 and img.shape[2] == 3:
            return np.asarray(Image.fromarray(img, "RGB").convert("L"))[:, :, None]
        return np.ascontiguousarray(img)

    return _Source("idx", len(arr), read, lambda i: f"{images_path.name}[{i}]", labels, fixed_size=True)


def _files_source(files: ImageFiles) -> _Source:
    return _Source(files.kind, len(files), lambda i, c: files.load(i, channels=c), files.display_name)


def _open_source(source: Path, split: str) -> _Source:
    if not source.exists():
        raise FileNotFoundError(f"dataset source not found: {source}")
    if source.is_dir():
        pair = find_idx_images(source, split)
        if pair is not None:
            return _idx_source(pair.images, pair.labels)
        files = ImageFiles(source)
        if len(files) == 0:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(f"{source}: no image files found (looked recursively for {exts}; or IDX files)")
        return _files_source(files)
    if is_idx_images_name(source.name):
        return _idx_source(source, labels_path_for(source))
    suffix = source.suffix.lower()
    if suffix == ".zip" or suffix in IMAGE_EXTENSIONS:
        files = ImageFiles(source)
        if len(files) == 0:
            raise DatasetError(f"{source}: the zip contains no image files")
        return _files_source(files)
    raise DatasetError(
        f"{source}: unsupported source; expected a folder, a .zip, an image file, or an IDX "
        f"'*-images-idx3-ubyte[.gz]' file"
    )


# --------------------------------------------------------------------------------------------------
# Output


def is_dataset_dir(path: PathLike) -> bool:
    """True when `path` is a folder holding a dataset.json of this format (what `overwrite` may replace)."""
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT_NAME


def _check_dest(source: Path, dest: Path, overwrite: bool) -> None:
    if dest.exists() and not dest.is_dir():
        raise DatasetError(f"destination {dest} exists and is not a directory")
    src, dst = source.resolve(), dest.resolve()
    if src == dst or dst in src.parents:
        raise DatasetError(f"destination {dest} would replace the source {source}; choose another destination")
    if dest.is_dir() and any(dest.iterdir()):
        if not overwrite:
            raise DatasetError(
                f"destination {dest} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not is_dataset_dir(dest):
            raise DatasetError(
                f"destination {dest} is not a dataset built by opstylegan (no {META_FILE} of format "
                f"{FORMAT_NAME!r}), so it is not replaced, even with overwrite; delete it yourself or choose "
                f"another destination")


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _no_space_message(folder: Path, needed: int, free: int, *, while_writing: str = "") -> str:
    state = (f"{free / 1e6:.1f} MB were free at the start, but the disk filled up while writing ({while_writing})"
             if while_writing else f"{free / 1e6:.1f} MB are free")
    return (f"not enough space on the disk holding {folder} (mounted at {_mount_point(folder)}): the dataset "
            f"needs {needed / 1e6:.1f} MB, {state}; nothing was written; free some space or choose another "
            f"destination")


def _building_prefix(dest: Path) -> str:
    return f".{dest.name}.building-{socket.gethostname()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_builds(dest: PathLike) -> list[Path]:
    """Removes `.DEST.building-<host>-<pid>-*` folders beside `dest` left by dead processes of this host.

    A build killed without a chance to clean up (SIGKILL, a power loss) leaves its temporary folder;
    a folder of a live process (or of another host sharing the file system) is never touched.
    """
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.building-(?P<host>.+)-(?P<pid>\d+)-[^-]+$")
    removed = []
    for p in dest.parent.iterdir():
        m = pattern.match(p.name)
        if m and p.is_dir() and m["host"] == socket.gethostname() and not _pid_alive(int(m["pid"])):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return sorted(removed)


def _open_images_file(path: Path, shape: tuple[int, int, int, int]) -> BinaryIO:
    """Create an .npy file for uint8 `shape`, preallocated on disk; returns it open for writing at the data."""
    f = open(path, "wb")  # noqa: SIM115 - returned to the caller, who closes it
    try:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        f.flush()
        size = f.tell() + int(np.prod(shape, dtype=np.int64))
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise  # ENOSPC surfaces here, before any image is decoded
    except BaseException:
        f.close()
        raise
    return f


def _shrink_npy(path: Path, count: int) -> None:
    """Cut an .npy file written for N rows down to its first `count` rows, in place (no copy).

    The data is C-ordered, so the first rows are a prefix: rewrite the header's shape (padded with
    spaces to the same length, which the shorter shape always fits) and truncate the file.
    """
    with open(path, "r+b") as f:
        major = f.read(8)[6]
        size_fmt = "<H" if major == 1 else "<I"
        prefix = 8 + struct.calcsize(size_fmt)
        header_len = struct.unpack(size_fmt, f.read(struct.calcsize(size_fmt)))[0]
        header = ast.literal_eval(f.read(header_len).decode("latin1"))
        shape = (count, *header["shape"][1:])
        new = repr({"descr": header["descr"], "fortran_order": False, "shape": shape}).encode("latin1")
        if len(new) + 1 > header_len:  # cannot happen: fewer digits than the original shape
            raise RuntimeError(f"cannot rewrite the header of {path}")
        f.seek(prefix)
        f.write(new + b" " * (header_len - len(new) - 1) + b"\n")
        f.truncate(prefix + header_len + int(np.prod(shape, dtype=np.int64)))


def _install(tmp: Path, dest: Path) -> None:
    """Move the finished dataset onto `dest`, replacing an empty or (already approved) existing one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private (0700); a dataset gets the usual permissions
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.replace(dest, old / "d")
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def build_dataset(
    source: PathLike,
    dest: PathLike,
    *,
    resolution: int,
    channels: int,
    on_error: Literal["skip", "fail"] = "skip",
    max_images: int | None = None,
    split: Literal["train", "test"] = "train",
    fit: Literal["resize", "pad"] = "resize",
    allow_upscale: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> BuildReport:
    """Convert `source` into a dataset directory at `dest` (format in the module docstring).

    Args:
        source: a folder of images (searched recursively: FFHQ / CelebA-HQ nested folders work),
            a .zip of images, a single image, an IDX `*-images-idx3-ubyte[.gz]` file, or a folder
            holding IDX files (then `split` picks `train-*` or `t10k-*`/`test-*`).
        dest: the output directory; must not exist or be empty, unless `overwrite` and it holds a dataset
            (a dataset.json of this format): any other folder is never replaced.
        resolution: output size, a power of two in [16, 1024].
        channels: 1 (grayscale) or 3 (RGB); sources are converted as in `load_image`.
        on_error: "skip" leaves out unreadable / too-small images and lists them in the report;
            "fail" raises ImageError for the first one, naming it.
        max_images: stop after this many images (in sorted order).
        fit: how images are made square at `resolution`; see `fit_image`.
        allow_upscale: with fit="resize", upscale image files smaller than `resolution` instead of
            skipping them as "too small". IDX sources are always resized (they are all one known
            size, so the chosen resolution is deliberate; MNIST's 28 px -> 32 px is the usual case).
        progress: called as progress(done, total) after each source image (with max_images: images kept
            out of max_images).

    Raises:
        FileNotFoundError: `source` does not exist.
        DatasetError: unusable source or destination (also: `overwrite` of a folder that is not a dataset,
            not enough disk space up front or a disk that fills up while writing), or no image survived.
        OutputPathError: the folder of `dest` cannot be created or written (permission, a file in the way).
        ImageError: with on_error="fail", the first bad image.
        ValueError: an invalid argument.
    """
    check_resolution(resolution)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if fit not in ("resize", "pad"):
        raise ValueError(f"fit must be 'resize' or 'pad', got {fit!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
    source, dest = Path(source), Path(dest)
    src = _open_source(source, split)
    _check_dest(source, dest, overwrite)
    prepare_outdir(dest.parent)  # a file in the way, no permission, read-only: refused before any work
    removed_stale = remove_stale_builds(dest)

    capacity = src.count if max_images is None else min(src.count, max_images)
    upscale = allow_upscale or src.fixed_size
    shape = (capacity, channels, resolution, resolution)
    needed = int(np.prod(shape, dtype=np.int64)) + (8 * capacity if src.labels is not None else 0) + SPACE_MARGIN
    free = shutil.disk_usage(dest.parent).free
    if free < needed:
        raise DatasetError(_no_space_message(dest.parent, needed, free))
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_building_prefix(dest), dir=dest.parent))
        try:
            report = _write_dataset(src, source, dest, tmp, shape, on_error=on_error, max_images=max_images,
                                    fit=fit, split=split, upscale=upscale, progress=progress)
            _install(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        if e.errno not in _NO_SPACE:
            raise
        raise DatasetError(_no_space_message(dest.parent, needed, free, while_writing=e.strerror or "ENOSPC")) from None
    report.removed_stale = removed_stale
    return report


def _write_dataset(src: _Source, source: Path, dest: Path, tmp: Path, shape: tuple[int, int, int, int], *,
                   on_error: str, max_images: int | None, fit: str, split: str, upscale: bool,
                   progress: ProgressFn | None) -> BuildReport:
    """Decode, fit and write every image of `src` into the folder `tmp`; returns the report (see build_dataset)."""
    capacity, channels, resolution = shape[0], shape[1], shape[2]
    images_path = tmp / IMAGES_FILE
    with _open_images_file(images_path, shape) as out:
        kept: list[int] = []
        skipped: list[SkippedFile] = []
        # Progress counts source images looked at; with max_images, images kept (skips may follow).
        total = src.count if max_images is None else capacity
        for i in range(src.count):
            if len(kept) == capacity:
                break
            try:
                img = fit_image(src.read(i, channels), resolution, fit=fit, allow_upscale=upscale, name=src.name(i))
            except ImageError as e:
                if on_error == "fail":
                    raise
                skipped.append(SkippedFile(e.path, e.reason))
            else:
                out.write(np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes())  # [H, W, C] -> [C, H, W]
                kept.append(i)
            if progress is not None:
                progress(i + 1 if max_images is None else len(kept), total)
        out.flush()
        os.fsync(out.fileno())
    if not kept:
        first = "; ".join(f"{s.name}: {s.reason}" for s in skipped[:3])
        raise DatasetError(f"{source}: no usable images ({len(skipped)} skipped; {first})")
    if len(kept) < capacity:
        _shrink_npy(images_path, len(kept))
    if src.labels is not None:
        np.save(tmp / LABELS_FILE, src.labels[np.asarray(kept)])
    report = BuildReport(
        dest=dest, count=len(kept), resolution=resolution, channels=channels, source_kind=src.kind,
        num_candidates=src.count, skipped=skipped, has_labels=src.labels is not None,
        sha256=sha256_file(images_path),
    )
    meta = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "resolution": resolution, "channels": channels,
        "count": report.count, "source": str(source.resolve()), "source_kind": src.kind, "fit": fit,
        "split": split if src.kind == "idx" else None, "has_labels": report.has_labels,
        "num_skipped": len(skipped), "skipped": [asdict(s) for s in skipped],
        "sha256": {IMAGES_FILE: report.sha256},
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return report


def read_metadata(path: PathLike) -> dict[str, Any]:
    """Read and validate `dataset.json` of a dataset directory."""
    meta_path = Path(path) / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: not a dataset directory (no {META_FILE}; build one with `opstylegan dataset`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{meta_path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path}: format is {meta.get('format') if isinstance(meta, dict) else meta!r}, "
                           f"expected {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{meta_path}: format version {meta.get('version')!r} is not supported "
                           f"(this opstylegan reads version {FORMAT_VERSION})")
    for key in ("resolution", "channels", "count"):
        if not isinstance(meta.get(key), int):
            raise DatasetError(f"{meta_path}: missing or non-integer {key!r}")
    return meta
