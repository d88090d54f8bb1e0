"""MNIST-style IDX files (`train-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, gzipped or not).

Format (yann.lecun.com/exdb/mnist): two zero bytes, a type code (0x08 = unsigned byte), the number of
dimensions D, then D big-endian uint32 sizes, then the data in C order. Only unsigned-byte files are
read, which is what MNIST, Fashion-MNIST, KMNIST and EMNIST ship.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from opstylegan.data.images import PathLike

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """An IDX file is malformed; the message names the file."""


def is_idx_images_name(name: str) -> bool:
    """True for names like `train-images-idx3-ubyte` or `t10k-images.idx3-ubyte.gz`."""
    base = name.lower().removesuffix(".gz")
    return "images" in base and base.endswith("idx3-ubyte")


def _read_raw(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:  # detect by content, not by extension
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise IDXError(f"{path}: corrupt gzip data ({e})") from None
    return raw


def read_idx(path: PathLike) -> np.ndarray:
    """Read an unsigned-byte IDX file (plain or gzip) into a uint8 array of its declared shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    data = _read_raw(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    dtype, ndim = data[2], data[3]
    if dtype != _UBYTE:
        raise IDXError(f"{path}: IDX type code 0x{dtype:02x} is not supported; expected 0x08 (unsigned byte)")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IDXError(f"{path}: truncated IDX header ({ndim} dimensions, {len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise IDXError(f"{path}: size {len(data)} bytes does not match shape {shape} (expected {expected} bytes)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(path: PathLike, array: np.ndarray, *, compress: bool = False) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if `compress`). Used by tests and tools."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"write_idx expects a uint8 array with >= 1 dimension, got {array.dtype} {array.shape}")
    blob = bytes([0, 0, _UBYTE, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    Path(path).write_bytes(gzip.compress(blob, mtime=0) if compress else blob)


@dataclass(frozen=True)
class IDXPair:
    """An images file and, if found beside it, the matching labels file."""

    images: Path
    labels: Path | None


def labels_path_for(images: Path) -> Path | None:
    """`x-images-idx3-ubyte[.gz]` -> the existing `x-labels-idx1-ubyte[.gz]`, or None."""
    name = images.name
    idx = name.lower().find("images")
    stem = name[:idx] + "labels" + name[idx + len("images") :]
    stem = stem.replace("idx3", "idx1").removesuffix(".gz")
    for cand in (stem, stem + ".gz"):
        if (images.parent / cand).is_file():
            return images.parent / cand
    return None


def find_idx_images(folder: Path, split: str) -> IDXPair | None:
    """The IDX images file of `split` ("train" or "test" / "t10k") in `folder`, or None if it has none.

    Raises IDXError when the folder has IDX files but none (or several) for the split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_idx_images_name(p.name))
    if not files:
        return None
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    chosen = [p for p in files if p.name.lower().startswith(prefixes)]
    # Prefer the plain file when both `x` and `x.gz` are present.
    by_stem: dict[str, Path] = {}
    for p in chosen:
        stem = p.name.removesuffix(".gz")
        if stem not in by_stem or not p.name.endswith(".gz"):
            by_stem[stem] = p
    if len(by_stem) != 1:
        found = ", ".join(p.name for p in files)
        raise IDXError(f"{folder}: expected one IDX images file for split {split!r}, found among: {found}")
    images = next(iter(by_stem.values()))
    return IDXPair(images, labels_path_for(images))
