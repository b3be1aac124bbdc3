"""Training data: the embedded digits and image folders, behind one small interface.

A data set has `len()`, `channels`, `num_classes`, `label_names` (list[str] or None) and
`load(indices) -> (images (N, C, S, S) float in [-1, 1], labels (N,) int64)`.
"""

from __future__ import annotations

from typing import Any

from .base import IndexStream, StepBatches, TensorDataset, step_batches
from .digits import DIGIT_NAMES, digits_dataset, load_digits_arrays, to_digit_space, to_model_space
from .folder import FolderDataset

__all__ = [
    "DIGIT_NAMES",
    "FolderDataset",
    "IndexStream",
    "StepBatches",
    "TensorDataset",
    "build_dataset",
    "digits_dataset",
    "load_digits_arrays",
    "step_batches",
    "to_digit_space",
    "to_model_space",
]


def build_dataset(data: Any) -> TensorDataset | FolderDataset:
    """The data set a `DataSection` describes."""
    if data.path == "digits":
        return digits_dataset(data.image_size)
    if not data.path:
        raise ValueError("this recipe needs your images: pass --data PATH (or --set data.path=PATH)")
    return FolderDataset(data.path, data.image_size)
