"""Datasets for training, metrics and inversion targets, and the training loop's infinite sampler.

`ImageDataset` reads either a built dataset directory (`opstylegan dataset`; memory-mapped, fast)
or raw images (a folder, a .zip or one file; decoded on the fly, for metrics and inversion targets).
Items are uint8 tensors `[C, H, W]`; `to_tensor` turns a batch into floats in [-1, 1].
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from opstylegan.data.build import IMAGES_FILE, LABELS_FILE, META_FILE, DatasetError, read_metadata
from opstylegan.data.images import ImageError, ImageFiles, PathLike, center_crop_resize


class ImageDataset(Dataset):
    """Images as uint8 tensors `[C, H, W]`, from a dataset directory or raw image files.

    Args:
        path: a directory built by `build_dataset` (has dataset.json), or a folder / .zip / image
            file of raw images.
        xflip: double the dataset with mirrored copies: index i < n is image i, index n + i is image i
            flipped left-right (as stylegan2-ada's --mirror).
        max_size: use a random subset of at most this many images (chosen with `seed`, kept in order).
        seed: seed of the `max_size` subset.
        resolution: for raw images, center-crop and resize every image to this size (Lanczos; smaller
            images are an error); None requires all raw images to be square and of one size. For a
            dataset directory, the expected resolution (checked).
        channels: 1 or 3; for raw images the conversion applied, None = that of the first image. For a
            dataset directory, the expected channel count (checked).

    Attributes: `resolution`, `num_channels`, `image_shape` ([C, H, W]), `labels` (int64 [n] or None),
    `kind` ("dataset", "folder", "zip" or "image").
    Workers: the memory map / zip file is opened lazily in each process, so instances pickle cheaply.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        xflip: bool = False,
        max_size: int | None = None,
        seed: int = 0,
        resolution: int | None = None,
        channels: int | None = None,
    ) -> None:
        self.path = Path(path)
        if max_size is not None and (not isinstance(max_size, int) or max_size < 1):
            raise ValueError(f"max_size must be a positive int or None, got {max_size!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
        if not self.path.exists():
            raise FileNotFoundError(f"dataset not found: {self.path}")
        self._images: np.ndarray | None = None
        self._files: ImageFiles | None = None
        self.labels: np.ndarray | None = None
        self._fit = resolution
        if self.path.is_dir() and (self.path / META_FILE).exists():
            raw_len = self._init_built(resolution, channels)
        else:
            raw_len = self._init_raw(resolution, channels)

        # Subset and mirroring over raw indices; self._raw_idx[i] is the stored image behind item i.
        raw_idx = np.arange(raw_len, dtype=np.int64)
        if max_size is not None and raw_len > max_size:
            np.random.RandomState(seed).shuffle(raw_idx)
            raw_idx = np.sort(raw_idx[:max_size])
        flip = np.zeros(len(raw_idx), dtype=bool)
        if xflip:
            raw_idx = np.tile(raw_idx, 2)
            flip = np.concatenate([flip, np.ones_like(flip)])
        self._raw_idx, self._xflip = raw_idx, flip

    # -- construction ------------------------------------------------------------------------------

    def _init_built(self, resolution: int | None, channels: int | None) -> int:
        meta = read_metadata(self.path)
        self.kind = "dataset"
        images_path = self.path / IMAGES_FILE
        if not images_path.is_file():
            raise DatasetError(f"{self.path}: {IMAGES_FILE} is missing")
        try:
            arr = np.load(images_path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"{images_path}: unreadable ({e})") from None
        expected = (meta["count"], meta["channels"], meta["resolution"], meta["resolution"])
        if arr.dtype != np.uint8 or arr.shape != expected:
            raise DatasetError(f"{images_path}: {arr.dtype} {arr.shape} does not match {META_FILE} "
                               f"(uint8 {expected})")
        if arr.shape[0] == 0:
            raise DatasetError(f"{self.path}: the dataset is empty")
        self.num_channels, self.resolution = int(arr.shape[1]), int(arr.shape[2])
        if resolution is not None and resolution != self.resolution:
            raise DatasetError(f"{self.path}: resolution is {self.resolution}, expected {resolution}")
        if channels is not None and channels != self.num_channels:
            raise DatasetError(f"{self.path}: has {self.num_channels} channels, expected {channels}")
        if (self.path / LABELS_FILE).is_file():
            self.labels = np.load(self.path / LABELS_FILE, allow_pickle=False)
        return int(arr.shape[0])

    def _init_raw(self, resolution: int | None, channels: int | None) -> int:
        self._files = ImageFiles(self.path)
        self.kind = self._files.kind
        if len(self._files) == 0:
            if self.kind == "folder":
                raise DatasetError(f"{self.path}: not a dataset: no {META_FILE} and no image files")
            raise DatasetError(f"{self.path}: contains no image files")
        first = self._load_raw(0, channels)  # fixes the shape every other image must have
        self.num_channels, self.resolution = first.shape[2], first.shape[0]
        return len(self._files)

    def _load_raw(self, raw: int, channels: int | None) -> np.ndarray:
        assert self._files is not None
        img = self._files.load(raw, channels=channels)
        name = self._files.display_name(raw)
        if self._fit is not None:
            return center_crop_resize(img, self._fit, name=name)
        h, w = img.shape[:2]
        if h != w:
            raise ImageError(name, f"is {w}x{h}, not square; pass resolution= to center-crop and resize")
        if raw != 0 and (h != self.resolution):
            raise ImageError(name, f"is {w}x{h}, but the first image is {self.resolution}x{self.resolution}; "
                                   "all images must have one size (or pass resolution=)")
        return img

    # -- access ------------------------------------------------------------------------------------

    @property
    def image_shape(self) -> list[int]:
        return [self.num_channels, self.resolution, self.resolution]

    def __len__(self) -> int:
        return len(self._raw_idx)

    def image_name(self, idx: int) -> str:
        """A human name for item `idx`: the file name for raw images, `#k` for dataset directories."""
        raw = int(self._raw_idx[idx])
        suffix = " (mirrored)" if self._xflip[idx] else ""
        if self._files is not None:
            return self._files.names[raw] + suffix
        return f"#{raw}{suffix}"

    def get_label(self, idx: int) -> int | None:
        """The stored label of item `idx` (IDX sources), or None."""
        return None if self.labels is None else int(self.labels[self._raw_idx[idx]])

    def __getitem__(self, idx: int) -> torch.Tensor:
        n = len(self)
        if not -n <= idx < n:
            raise IndexError(f"index {idx} out of range for a dataset of {n} items")
        raw = int(self._raw_idx[idx])
        if self._files is not None:
            img = self._load_raw(raw, self.num_channels).transpose(2, 0, 1)  # [H, W, C] -> [C, H, W]
        else:
            if self._images is None:
                self._images = np.load(self.path / IMAGES_FILE, mmap_mode="r", allow_pickle=False)
            img = self._images[raw]
        if self._xflip[idx]:
            img = img[:, :, ::-1]
        return torch.from_numpy(np.array(img, order="C"))  # always a copy: the memmap is read-only

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_images": None}

    def __repr__(self) -> str:
        return (f"ImageDataset({str(self.path)!r}, kind={self.kind!r}, len={len(self)}, "
                f"shape={self.image_shape})")


def _image_size(files: ImageFiles, index: int) -> tuple[int, int]:
    """(width, height) of image `index` from its header; files in a folder are not read beyond it."""
    name = files.display_name(index)
    try:
        if files.kind == "zip":
            with Image.open(io.BytesIO(files.read_bytes(index))) as img:
                return img.size
        with Image.open(files.path / files.names[index] if files.kind == "folder" else files.path) as img:
            return img.size
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ImageError(name, f"not a readable image ({e})") from None


def check_raw_training_images(path: PathLike) -> None:
    """Raw images (a folder, a .zip or one file) can be trained on only when every one is readable, square and of
    one power-of-two size in [16, 1024]: training cannot crop or resize them. Raises DatasetError naming the
    sizes found (with an example of each) and the `opstylegan dataset` command that fixes it. Reads only the
    image headers of files in a folder.
    """
    files = ImageFiles(path)
    if len(files) == 0:
        raise DatasetError(f"{path}: not a dataset: no {META_FILE} and no image files")
    sizes: dict[tuple[int, int], list[str]] = defaultdict(list)
    bad: list[str] = []
    for i in range(len(files)):
        try:
            sizes[_image_size(files, i)].append(files.display_name(i))
        except ImageError as e:
            bad.append(str(e))
    fix = (f"build a training set of one size with `opstylegan dataset {path} DEST --resolution R --channels C` "
           f"(it crops, resizes and checks every image), then train on DEST")
    if bad:
        raise DatasetError(f"{path}: {len(bad)} of {len(files)} images cannot be read ({'; '.join(bad[:3])}); {fix}")
    if len(sizes) > 1:
        found = ", ".join(f"{w}x{h} ({len(names)}, e.g. {names[0]})" for (w, h), names in
                          sorted(sizes.items(), key=lambda kv: -len(kv[1]))[:5])
        raise DatasetError(f"{path}: the images differ in size: {found}; {fix}")
    ((w, h),) = sizes
    if w != h or w < 16 or w > 1024 or w & (w - 1):
        raise DatasetError(f"{path}: the images are {w}x{h} px; training needs square images of a power-of-two "
                           f"size in [16, 1024]; {fix}")


def open_dataset(path: PathLike, **kwargs: Any) -> ImageDataset:
    """Open a dataset directory or raw images as an `ImageDataset` (keyword arguments as its)."""
    return ImageDataset(path, **kwargs)


def dataset_batches(ds: Dataset, count: int, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 batches ``[B, C, H, W]`` of the first ``count`` images of ``ds``, in order (for feature statistics)."""
    for start in range(0, count, batch_size):
        yield torch.stack([ds[i] for i in range(start, min(start + batch_size, count))])


class InfiniteSampler(Sampler[int]):
    """Endless stream of dataset indices, shuffled per epoch, sharded across ranks, resumable.

    The global stream is the concatenation of epochs; epoch e is a permutation of range(n) drawn from
    `np.random.default_rng([seed, e])` (or range(n) itself if not `shuffle`). Rank r yields the
    global positions p with p % world_size == r, so ranks see disjoint items of every epoch, and the
    stream does not depend on batch size. `start_index` (or `load_state_dict`) resumes at a global
    position: pass the number of images the whole job has consumed.
    """

    def __init__(
        self,
        dataset: Dataset | int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start_index: int = 0,
    ) -> None:
        super().__init__()
        self.num_items = dataset if isinstance(dataset, int) else len(dataset)  # type: ignore[arg-type]
        if self.num_items < 1:
            raise ValueError(f"InfiniteSampler needs a non-empty dataset, got {self.num_items} items")
        if not isinstance(world_size, int) or world_size < 1:
            raise ValueError(f"world_size must be an int >= 1, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size - 1}], got {rank!r}")
        if not isinstance(start_index, int) or start_index < 0:
            raise ValueError(f"start_index must be an int >= 0, got {start_index!r}")
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.start_index = start_index
        self.num_yielded = 0  # by this rank's iterator since start_index
        self._epoch_cache: tuple[int, np.ndarray] | None = None

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_items)
            else:
                order = np.arange(self.num_items)
            self._epoch_cache = (epoch, order)
        return self._epoch_cache[1]

    def __iter__(self) -> Iterator[int]:
        # First global position >= start_index that belongs to this rank.
        pos = self.start_index + (self.rank - self.start_index) % self.world_size + self.num_yielded * self.world_size
        while True:
            epoch, offset = divmod(pos, self.num_items)
            index = int(self._order(epoch)[offset])
            # Count before yielding: a consumer that saves state_dict() after receiving k items
            # must see k, while this generator is still suspended at the yield.
            self.num_yielded += 1
            pos += self.world_size
            yield index

    def state_dict(self) -> dict[str, Any]:
        """The global position reached (assuming all ranks advance in lockstep, as in DDP)."""
        return {"seed": self.seed, "shuffle": self.shuffle, "num_items": self.num_items,
                "index": self.start_index + self.num_yielded * self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()`; the world size may differ, the dataset and seed may not."""
        for key in ("seed", "shuffle", "num_items"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"InfiniteSampler state has {key}={state.get(key)!r}, "
                                 f"but this sampler has {key}={getattr(self, key)!r}")
        index = state.get("index")
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"InfiniteSampler state has an invalid index {index!r}; expected an int >= 0")
        self.start_index, self.num_yielded = index, 0
