"""Grids for people to look at: small images enlarged, columns labelled, a caption under each cell.

A 32 px reconstruction is unreadable in a plain tile of images. :func:`labelled_grid` enlarges every cell by
an integer factor with nearest neighbour (each pixel becomes a k x k block, so nothing is smoothed away and the
pixels can still be compared one by one) until its longer side is at least ``min_size`` (128 by default),
writes a label above each column, an optional label left of each row and an optional caption (e.g. the
LPIPS) under each cell. Text uses Pillow's built-in bitmap font, so no font file is needed. Text is white on
black, like the padding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["MIN_CELL_SIZE", "enlarge", "enlarge_factor", "labelled_grid"]

#: Cells are enlarged until their longer side reaches this many pixels.
MIN_CELL_SIZE = 128
_PAD = 2  # pixels around every cell and text line


def enlarge_factor(size: int, min_size: int = MIN_CELL_SIZE) -> int:
    """The smallest integer k >= 1 with ``size * k >= min_size``."""
    if size < 1 or min_size < 1:
        raise ValueError(f"size and min_size must be >= 1, got {size} and {min_size}")
    return max(1, math.ceil(min_size / size))


def enlarge(img: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement of a uint8 ``[H, W, C]`` image: ``[H * k, W * k, C]``."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return img
    return np.repeat(np.repeat(img, factor, axis=0), factor, axis=1)  # [H, W, C] -> [kH, kW, C]


def _font() -> ImageFont.ImageFont:
    load = getattr(ImageFont, "load_default_imagefont", None)  # Pillow >= 10.1; before, load_default() is it
    return load() if load is not None else ImageFont.load_default()  # type: ignore[return-value]


def _text_size(font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def labelled_grid(cells: Sequence[Sequence[np.ndarray | None]], *, col_labels: Sequence[str] | None = None,
                  row_labels: Sequence[str] | None = None, captions: Sequence[Sequence[str]] | None = None,
                  min_size: int = MIN_CELL_SIZE) -> np.ndarray:
    """Tile rows of images into one labelled uint8 ``[H', W', C]`` picture.

    Args:
        cells: Rows of uint8 ``[H, W, C]`` images, all of one shape (``None`` leaves a cell black).
        col_labels: One label per column, written above it.
        row_labels: One label per row, written left of it.
        captions: Per row, one caption per cell (``""`` for none), written under the cell.
        min_size: Cells are enlarged (nearest neighbour, integer factor) to at least this many pixels.
    """
    images = [c for row in cells for c in row if c is not None]
    if not images:
        raise ValueError("labelled_grid needs at least one image")
    shape = images[0].shape
    if any(c.dtype != np.uint8 or c.shape != shape for c in images) or len(shape) != 3 or shape[2] not in (1, 3):
        raise ValueError(f"every cell must be a uint8 [H, W, C] image (C = 1 or 3) of one shape, first is {shape}")
    ncols = max(len(row) for row in cells)
    if col_labels is not None and len(col_labels) != ncols:
        raise ValueError(f"{len(col_labels)} column labels for {ncols} columns")
    if row_labels is not None and len(row_labels) != len(cells):
        raise ValueError(f"{len(row_labels)} row labels for {len(cells)} rows")
    if captions is not None and (len(captions) != len(cells) or any(len(c) > ncols for c in captions)):
        raise ValueError("captions must give one list of strings per row, at most one per cell")
    k = enlarge_factor(max(shape[0], shape[1]), min_size)
    h, w, c = shape[0] * k, shape[1] * k, shape[2]
    font = _font()
    line = max(_text_size(font, "Ag+|")[1], 8) + 2 * _PAD  # height of one text line
    column_texts = [*(col_labels or []), *(t for row in captions or [] for t in row)]
    cell_w = max([w, *(_text_size(font, t)[0] + 2 * _PAD for t in column_texts)])
    left = max((_text_size(font, t)[0] for t in row_labels), default=0) + 2 * _PAD if row_labels else 0
    top = line if col_labels else 0
    row_h = h + _PAD + (line if captions else 0)
    canvas = Image.new("L" if c == 1 else "RGB", (left + ncols * (cell_w + _PAD) + _PAD, top + len(cells) * row_h
                                                   + _PAD))
    draw = ImageDraw.Draw(canvas)
    white = 255 if c == 1 else (255, 255, 255)

    def centered(text: str, x0: int, width: int, y: int) -> None:
        draw.text((x0 + (width - _text_size(font, text)[0]) // 2, y + _PAD), text, fill=white, font=font)

    for j, label in enumerate(col_labels or []):
        centered(label, left + _PAD + j * (cell_w + _PAD), cell_w, 0)
    for i, row in enumerate(cells):
        y = top + _PAD + i * row_h
        if row_labels:
            draw.text((_PAD, y + (h - line) // 2 + _PAD), row_labels[i], fill=white, font=font)
        for j, img in enumerate(row):
            x = left + _PAD + j * (cell_w + _PAD)
            if img is not None:
                big = enlarge(img, k)
                canvas.paste(Image.fromarray(big[:, :, 0] if c == 1 else big), (x + (cell_w - w) // 2, y))
            if captions and j < len(captions[i]) and captions[i][j]:
                centered(captions[i][j], x, cell_w, y + h)
    out = np.asarray(canvas, dtype=np.uint8)
    return out[:, :, None] if c == 1 else out  # [H', W'] -> [H', W', 1]
