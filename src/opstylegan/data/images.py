"""Image I/O: decode any common image file to uint8 HWC, crop/resize, save atomically, tensor conversion.

Decoding goes through Pillow, but no Pillow exception escapes: every unreadable input (missing decoder,
zero-byte file, text file named .png, truncated stream, decompression bomb) becomes an `ImageError`
that names the file and says why. Encoded bytes are bounded too (`max_image_file_bytes`): a file or zip
member larger than any image Pillow would decode is refused from its declared size, and reads stop
there, so a zip bomb never inflates into memory. Pillow's global `ImageFile.LOAD_TRUNCATED_IMAGES` is
never touched, so a truncated file is an error here, not a silently grey-filled image.

Conventions: numpy images are uint8 `[H, W, C]` (C = 1 or 3, never a 2-D array); torch images are
`[N, C, H, W]`, float in [-1, 1] (the StyleGAN convention) or uint8 in [0, 255].
"""

from __future__ import annotations

import io
import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from opstylegan.io.atomic import atomic_path

PathLike = Union[str, "os.PathLike[str]"]

#: File name extensions (lower case) treated as images when listing folders and zips.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})


class ImageError(ValueError):
    """An image could not be used. `path` names the file (or zip member); `reason` says why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


_READ_CHUNK = 1 << 20


def max_image_file_bytes() -> int | None:
    """The largest encoded image file (or zip member) that is read, in bytes; None when unlimited.

    Derived from Pillow's decompression-bomb limit, which refuses images of more than
    2 * `PIL.Image.MAX_IMAGE_PIXELS` pixels: such an image stored uncompressed as 8-bit RGBA (4 bytes a
    pixel), plus 1 MiB for headers and metadata. With the default limit this is about 717 MB. Raise
    `Image.MAX_IMAGE_PIXELS` to read larger files; setting it to None lifts both limits.
    """
    if Image.MAX_IMAGE_PIXELS is None:
        return None
    return 2 * int(Image.MAX_IMAGE_PIXELS) * 4 + (1 << 20)


MaxBytes = Union[int, None, Literal["auto"]]


def _limit(max_bytes: MaxBytes) -> int | None:
    return max_image_file_bytes() if max_bytes == "auto" else max_bytes  # type: ignore[return-value]


def _too_large(what: str, limit: int) -> str:
    return (f"refused: {what}, more than any image Pillow decodes ({limit / 1e6:.1f} MB at "
            f"PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}); a decompression bomb?")


def _read_bounded(f: BinaryIO, limit: int | None, label: str) -> bytes:
    """All bytes of `f`, read in 1 MiB chunks; ImageError as soon as more than `limit` bytes arrive."""
    chunks, total = [], 0
    while chunk := f.read(_READ_CHUNK):
        total += len(chunk)
        if limit is not None and total > limit:
            raise ImageError(label, _too_large(f"its data exceeds {limit / 1e6:.1f} MB", limit))
        chunks.append(chunk)
    return b"".join(chunks)


def read_image_file(path: PathLike, *, name: str | None = None, max_bytes: MaxBytes = "auto") -> bytes:
    """The bytes of an image file, refused (ImageError) when larger than `max_bytes`.

    `max_bytes="auto"` (the default) means `max_image_file_bytes()`; None reads any size.
    """
    path = Path(path)
    label = name or str(path)
    limit = _limit(max_bytes)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if limit is not None and size > limit:
                raise ImageError(label, _too_large(f"the file is {size / 1e6:.1f} MB", limit))
            return _read_bounded(f, limit, label)
    except OSError as e:
        raise ImageError(label, f"cannot read file ({e.strerror or e})") from None


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")


def _is_16bit(mode: str) -> bool:
    return mode == "I" or mode.startswith("I;16")


def _to_array(img: Image.Image, channels: int | None, name: str) -> np.ndarray:
    """Convert a fully loaded Pillow image to uint8 [H, W, C]; see `load_image` for the rules."""
    mode = img.mode
    if mode == "P" or mode == "PA":
        # Palette images: expand the palette; keep transparency if the file declares some.
        has_alpha = mode == "PA" or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if _is_16bit(mode):
        # 16-bit grayscale (PNG/TIFF): full range 0..65535 maps to 0..255 by rounding x / 257.
        arr16 = np.asarray(img, dtype=np.int64).clip(0, 65535)
        arr = ((arr16 + 128) // 257).astype(np.uint8)[:, :, None]  # [H, W] -> [H, W, 1]
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64).clip(0, 255).round().astype(np.uint8)[:, :, None]
    elif mode in ("1", "L"):
        arr = np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
    elif mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = np.asarray(img.convert("LA" if mode in ("LA", "La") else "RGBA"), dtype=np.uint16)
        if mode in ("La", "RGBa"):
            color = rgba[:, :, :-1]  # already premultiplied by alpha
        else:
            # Composite on black: color * alpha / 255, rounded. Transparent pixels become black.
            color = (rgba[:, :, :-1] * rgba[:, :, -1:] + 127) // 255
        arr = color.astype(np.uint8)
    else:
        try:
            arr = np.asarray(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
        except (ValueError, OSError) as e:
            raise ImageError(name, f"cannot convert image mode {mode!r} to RGB ({e})") from None
    if channels == 1 and arr.shape[2] == 3:
        # ITU-R 601-2 luma, as Pillow's convert("L").
        arr = np.asarray(Image.fromarray(arr, "RGB").convert("L"), dtype=np.uint8)[:, :, None]
    elif channels == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)  # [H, W, 1] -> [H, W, 3]
    return np.ascontiguousarray(arr)


def load_image(
    source: PathLike | bytes, *, channels: int | None = None, name: str | None = None
) -> np.ndarray:
    """Decode an image file (or its bytes) to a uint8 array `[H, W, C]`.

    Args:
        source: a path, or the encoded bytes of an image file.
        channels: 1 (grayscale), 3 (RGB) or None (1 for grayscale files, 3 for everything else).
        name: how to name the image in errors (default: the path, or "<bytes>").

    Modes: RGB as is; L / 1 / I;16 / I / F as grayscale (16-bit values are scaled by 1/257 to 8 bit);
    P is expanded through its palette; CMYK, YCbCr, LAB, HSV are converted to RGB by Pillow.
    Alpha (RGBA, LA, PA, P with transparency) is composited on black, i.e. color * alpha / 255, so
    transparent pixels become black instead of revealing whatever color data they hide. RGB -> 1
    channel uses ITU-R 601-2 luma; 1 -> 3 channels repeats the gray value. The EXIF orientation tag
    is applied (a phone photo stored sideways comes out upright).

    Raises:
        FileNotFoundError: `source` is a path that does not exist.
        ImageError: the data is empty, not an image, truncated, corrupt, or too large to decode safely.
        ValueError: `channels` is not None, 1 or 3.
    """
    _check_channels(channels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        data = bytes(source)
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ImageError(label, "is a directory, expected an image file")
        data = read_image_file(path, name=label)
    if not data:
        raise ImageError(label, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: lazily opened images fail later, far from the file name
            img = ImageOps.exif_transpose(img) or img
            return _to_array(img, channels, label)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(label, "not a recognised image format (corrupt, or not an image)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(label, f"refused: too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError) as e:
        # Pillow reports truncated/corrupt data with any of these, depending on the codec.
        reason = str(e) or type(e).__name__
        if "truncated" in reason.lower():
            reason = "truncated file (image data ends early)"
        raise ImageError(label, f"corrupt image data: {reason}") from None


def center_crop_resize(
    img: np.ndarray, resolution: int, *, allow_upscale: bool = False, name: str = "<array>"
) -> np.ndarray:
    """Center-crop a uint8 `[H, W, C]` image to a square, then resize it to `resolution` x `resolution`.

    The crop keeps the central min(H, W) square (as stylegan2-ada's dataset_tool "center-crop").
    Resizing uses Pillow's Lanczos filter, which widens its support when shrinking, so downscaling is
    properly anti-aliased (area-like) and upscaling is sharp. An image whose short side is smaller
    than `resolution` raises ImageError("too small ...") unless `allow_upscale=True`.
    """
    _check_image(img)
    h, w = img.shape[:2]
    side = min(h, w)
    if side < resolution and not allow_upscale:
        raise ImageError(
            name, f"too small: {w}x{h} px, needs at least {resolution}x{resolution} (or allow upscaling)"
        )
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top : top + side, left : left + side]
    if side != resolution:
        img = resize(img, resolution)
    return np.ascontiguousarray(img)


def resize(img: np.ndarray, resolution: int) -> np.ndarray:
    """Resize a square uint8 `[S, S, C]` image to `[resolution, resolution, C]` with Lanczos."""
    _check_image(img)
    c = img.shape[2]
    pil = Image.fromarray(img[:, :, 0] if c == 1 else img, "L" if c == 1 else "RGB")
    out = np.asarray(pil.resize((resolution, resolution), Image.Resampling.LANCZOS), dtype=np.uint8)
    return out.reshape(resolution, resolution, c)  # [R, R] or [R, R, 3] -> [R, R, C]


def pad_to(img: np.ndarray, resolution: int) -> np.ndarray:
    """Pad a uint8 `[H, W, C]` image with black on all sides to `[resolution, resolution, C]`, centered."""
    _check_image(img)
    h, w = img.shape[:2]
    if h > resolution or w > resolution:
        raise ValueError(f"cannot pad a {w}x{h} image to {resolution}x{resolution}: it is larger")
    top, left = (resolution - h) // 2, (resolution - w) // 2
    out = np.zeros((resolution, resolution, img.shape[2]), dtype=np.uint8)
    out[top : top + h, left : left + w] = img
    return out


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        desc = f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise ValueError(f"expected a uint8 array [H, W, C] with C in (1, 3), got {desc}")


def save_image(path: PathLike, img: np.ndarray) -> None:
    """Write a uint8 `[H, W, C]` (C = 1, 3 or 4) or `[H, W]` image; the format follows the extension.

    The file is written to a temporary name in the same folder and renamed over `path`, so a reader
    never sees a half-written image and an interrupted save leaves the old file intact.
    """
    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {path}: unknown image extension {path.suffix!r}; use e.g. .png or .jpg")
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ValueError(f"save_image expects a uint8 numpy array, got {getattr(img, 'dtype', type(img))}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]  # [H, W, 1] -> [H, W]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4))):
        raise ValueError(f"save_image expects [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {img.shape}")
    pil = Image.fromarray(np.ascontiguousarray(img))
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt)


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 `[N, C, H, W]` in [-1, 1] (x / 127.5 - 1).

    Accepts numpy `[H, W, C]` / `[N, H, W, C]` (Pillow layout) or torch uint8 `[C, H, W]` /
    `[N, C, H, W]` (torch layout, e.g. items of `ImageDataset`).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"to_tensor expects uint8 [H, W, C] or [N, H, W, C], got {images.dtype} {images.shape}")
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.unsqueeze(0) if x.ndim == 3 else x
        x = x.permute(0, 3, 1, 2)  # [N, H, W, C] -> [N, C, H, W]
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"to_tensor expects a uint8 tensor [C, H, W] or [N, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        x = images.unsqueeze(0) if images.ndim == 3 else images
    else:
        raise TypeError(f"to_tensor expects a numpy array or torch tensor, got {type(images).__name__}")
    return x.to(torch.float32).div(127.5).sub(1.0).contiguous()


def from_tensor(images: torch.Tensor) -> np.ndarray:
    """float `[N, C, H, W]` (or `[C, H, W]`) in [-1, 1] -> uint8 numpy `[N, H, W, C]`.

    Uses x * 127.5 + 128 truncated and clamped (stylegan2-ada's convention), so that
    `from_tensor(to_tensor(a))` returns `a` exactly.
    """
    if not isinstance(images, torch.Tensor) or images.ndim not in (3, 4) or not images.is_floating_point():
        desc = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"from_tensor expects a float tensor [N, C, H, W] or [C, H, W], got {desc}")
    x = images.detach().unsqueeze(0) if images.ndim == 3 else images.detach()
    x = (x.to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()  # [N, C, H, W] -> [N, H, W, C]


def make_grid(images: np.ndarray | torch.Tensor, *, ncols: int | None = None, padding: int = 0) -> np.ndarray:
    """Tile images into one uint8 `[H', W', C]` grid, row by row; `ncols` defaults to ceil(sqrt(N)).

    `images` is a float tensor `[N, C, H, W]` in [-1, 1], a uint8 tensor `[N, C, H, W]`, or a uint8
    numpy array `[N, H, W, C]`. Empty cells and padding are black.
    """
    if isinstance(images, torch.Tensor):
        if images.dtype == torch.uint8:
            images = images.detach().permute(0, 2, 3, 1).cpu().numpy()  # [N, C, H, W] -> [N, H, W, C]
        else:
            images = from_tensor(images)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(f"make_grid expects a non-empty batch of images, got {getattr(images, 'shape', images)}")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    if ncols < 1 or padding < 0:
        raise ValueError(f"make_grid: ncols must be >= 1 and padding >= 0, got ncols={ncols}, padding={padding}")
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        y, x = padding + (i // ncols) * (h + padding), padding + (i % ncols) * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_grid(
    path: PathLike, images: np.ndarray | torch.Tensor, *, ncols: int | None = None, padding: int = 0
) -> None:
    """Tile a batch of images with `make_grid` and save it atomically with `save_image`."""
    save_image(path, make_grid(images, ncols=ncols, padding=padding))


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


class ImageFiles:
    """The images of a folder (recursive), a .zip, or a single image file, readable by index.

    `names` are posix paths relative to the folder / zip root (the file name for a single file),
    sorted. Hidden files, `__MACOSX` folders and non-image extensions are ignored. A zip is opened on
    first read and re-opened after pickling, so instances can be sent to DataLoader workers.

    `max_bytes` bounds the bytes read for one image (a file, or a zip member's declared and actual
    size): "auto" (default) = `max_image_file_bytes()`, None = no bound.
    """

    def __init__(self, path: PathLike, *, max_bytes: MaxBytes = "auto") -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        if not self.path.exists():
            raise FileNotFoundError(f"no such file or folder: {self.path}")
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            self.kind = "folder"
            names = [
                p.relative_to(self.path).as_posix()
                for p in self.path.rglob("*")
                if p.is_file() and _is_image_name(p.relative_to(self.path).as_posix())
                and not any(part.startswith(".") for part in p.relative_to(self.path).parts[:-1])
            ]
        elif self.path.suffix.lower() == ".zip":
            self.kind = "zip"
            try:
                with zipfile.ZipFile(self.path) as zf:
                    names = [
                        n for n in zf.namelist()
                        if not n.endswith("/") and _is_image_name(n) and not n.startswith("__MACOSX/")
                    ]
            except (zipfile.BadZipFile, OSError) as e:
                raise ImageError(str(self.path), f"not a readable zip file ({e})") from None
        else:
            self.kind = "image"
            names = [self.path.name]
        self.names: list[str] = sorted(names)

    def __len__(self) -> int:
        return len(self.names)

    def display_name(self, index: int) -> str:
        """The name used in messages: `folder/sub/a.png`, `archive.zip:sub/a.png` or the file path."""
        if self.kind == "zip":
            return f"{self.path.name}:{self.names[index]}"
        if self.kind == "folder":
            return str(self.path / self.names[index])
        return str(self.path)

    def read_bytes(self, index: int) -> bytes:
        """The encoded bytes of image `index`; unreadable data raises ImageError naming it."""
        name, label = self.names[index], self.display_name(index)
        limit = _limit(self.max_bytes)
        if self.kind != "zip":
            return read_image_file(self.path / name if self.kind == "folder" else self.path, name=label,
                                   max_bytes=limit)
        try:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.path)
            info = self._zip.getinfo(name)
            # The declared size first (free), then the bytes really inflated (the header may lie).
            if limit is not None and info.file_size > limit:
                raise ImageError(label, _too_large(f"the zip declares {info.file_size / 1e6:.1f} MB", limit))
            with self._zip.open(info) as f:
                return _read_bounded(f, limit, label)
        except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
            raise ImageError(label, f"cannot read ({e})") from None

    def load(self, index: int, *, channels: int | None = None) -> np.ndarray:
        """Decode image `index` with `load_image`."""
        return load_image(self.read_bytes(index), channels=channels, name=self.display_name(index))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_zip": None}


def list_images(path: PathLike) -> list[str]:
    """Image names under `path`: a folder (recursive, sorted, by extension), a .zip, or a single file.

    Names are relative posix paths inside the folder / zip; for a single file, its file name.
    """
    return list(ImageFiles(path).names)

