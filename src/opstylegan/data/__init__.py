"""Image I/O, dataset building (`opstylegan dataset`) and datasets / samplers for training."""

from opstylegan.data.build import (
    BuildReport,
    DatasetError,
    SkippedFile,
    build_dataset,
    fit_image,
    read_metadata,
)
from opstylegan.data.dataset import ImageDataset, InfiniteSampler, dataset_batches, open_dataset
from opstylegan.data.idx import IDXError, read_idx, write_idx
from opstylegan.data.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    ImageFiles,
    center_crop_resize,
    from_tensor,
    list_images,
    load_image,
    make_grid,
    save_grid,
    save_image,
    to_tensor,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "BuildReport",
    "DatasetError",
    "IDXError",
    "ImageDataset",
    "ImageError",
    "ImageFiles",
    "InfiniteSampler",
    "SkippedFile",
    "build_dataset",
    "center_crop_resize",
    "fit_image",
    "from_tensor",
    "list_images",
    "load_image",
    "make_grid",
    "dataset_batches",
    "open_dataset",
    "read_idx",
    "read_metadata",
    "save_grid",
    "save_image",
    "to_tensor",
    "write_idx",
]
