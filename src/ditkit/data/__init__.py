"""Training data behind one small interface: the embedded digits, your images in any of the layouts of
`ditkit.data.sources` (class folders, manifests, Parquet/Arrow tables, Hugging Face datasets folders,
CelebA), and latent caches written by `ditkit encode`.

A data set has `len()`, `channels`, `num_classes` (0, an int, or a tuple for several attributes),
`label_names` (None, a list, or a dict attribute -> list), `labels` ((N,) or (N, K) int64, or None) and
`load(indices) -> (images (N, C, S, S) in [-1, 1], labels)`; image data sets also have `load_batch`, which
reports unreadable files instead of failing, and latent caches `load_moments`.
"""

from __future__ import annotations

from typing import Any

from .base import IndexStream, StepBatches, TensorDataset, step_batches
from .digits import DIGIT_NAMES, digits_dataset, load_digits_arrays, to_digit_space, to_model_space
from .folder import FolderDataset
from .images import ImageBatch, ImageDataset, UnreadableImage, center_crop_arr, decode_image, to_rgb
from .latents import LatentCache, encode_to_cache
from .sources import detect, open_dataset

__all__ = [
    "DIGIT_NAMES",
    "FolderDataset",
    "ImageBatch",
    "ImageDataset",
    "IndexStream",
    "LatentCache",
    "StepBatches",
    "TensorDataset",
    "UnreadableImage",
    "build_dataset",
    "center_crop_arr",
    "decode_image",
    "detect",
    "digits_dataset",
    "encode_to_cache",
    "load_digits_arrays",
    "open_dataset",
    "step_batches",
    "to_digit_space",
    "to_model_space",
    "to_rgb",
]


def build_dataset(data: Any) -> Any:
    """The data set a `DataSection` describes."""
    if not data.path:
        raise ValueError("this recipe needs your images: pass --data PATH (or --set data.path=PATH)")
    return open_dataset(
        data.path,
        data.image_size,
        tuple(getattr(data, "label_columns", ()) or ()),
        # manifests naming files outside their folder are refused unless the config opts in
        allow_outside_paths=bool(getattr(data, "allow_outside_paths", False)),
    )
