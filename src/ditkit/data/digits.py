"""The embedded default data set: scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes).

Nothing is downloaded: the data ships inside scikit-learn. Pixels are integers 0..16, scaled to [-1, 1].

Why the default trains at the native 8x8 rather than an upscaled 16x16 (`--image-size 16` still works, by
bicubic upscaling). Measured with benchmarks/digits_quality.py, same model budget (~78 ms/step, 2000 steps,
batch 128, lr 1e-3), accuracy of an SVC on the samples at guidance 1 / 2:

    8x8,   patch 2 (16 tokens)                  95.0% / 100%
    16x16, patch 4 (16 tokens), bicubic up      63.4% / 89.0%   (95.9% at guidance 3)
    16x16, patch 4 (16 tokens), nearest up      39.6% / 67.8%

Upscaling adds no information but makes every original pixel count several times, which raises the
signal-to-noise ratio at each timestep of the fixed linear schedule (the resolution shift of "simple
diffusion" / SD3): the coarse structure of a digit is then decided in the few high-noise steps and the
model learns it worse. A 16x16 model with patch 2 (64 tokens) costs 4x per step. So the model sees the
digits at their own resolution, and the grids are enlarged for viewing (`make_grid`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TensorDataset

DIGIT_NAMES = [str(i) for i in range(10)]


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    """Raw digits: (1797, 8, 8) float32 in 0..16 and (1797,) int64 labels.

    Read straight from the CSV that ships inside scikit-learn (64 pixel columns, then the label), which is
    what `sklearn.datasets.load_digits` reads too: importing scikit-learn costs ~1.5 s of a ~60 s default
    run. Falls back to `load_digits` if the file is not where scikit-learn keeps it."""
    table = _bundled_digits_table()
    if table is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return (
            torch.from_numpy(bunch.images.astype("float32")),
            torch.from_numpy(bunch.target.astype("int64")),
        )
    return torch.from_numpy(table[:, :64].reshape(-1, 8, 8).astype("float32")), torch.from_numpy(
        table[:, 64].astype("int64")
    )


def _bundled_digits_table():
    """(1797, 65) array of sklearn/datasets/data/digits.csv.gz, located without importing scikit-learn."""
    import importlib.util
    from pathlib import Path

    import numpy as np

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        return None
    try:
        table = np.loadtxt(path, delimiter=",")
    except ValueError:
        return None
    return table if table.shape == (1797, 65) else None


def to_model_space(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, 8, 8) in 0..16 -> (N, 1, S, S) in [-1, 1]."""
    x = images.float().unsqueeze(1) / 8.0 - 1.0
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bicubic", align_corners=False)
    return x.clamp(-1.0, 1.0).contiguous()


def to_digit_space(images: torch.Tensor) -> torch.Tensor:
    """Model-space images (N, C, S, S) in [-1, 1] -> (N, 8, 8) in 0..16, the scale of the raw digits
    (channels averaged, area-downsampled): what a classifier trained on the raw digits expects."""
    x = images.float()
    if x.ndim == 4:
        x = x.mean(dim=1, keepdim=True)
    else:
        x = x.unsqueeze(1)
    if x.shape[-1] != 8:
        x = F.adaptive_avg_pool2d(x, 8)
    return ((x.clamp(-1.0, 1.0) + 1.0) * 8.0).squeeze(1)


def digits_dataset(image_size: int = 16) -> TensorDataset:
    images, labels = load_digits_arrays()
    return TensorDataset(to_model_space(images, image_size), labels, list(DIGIT_NAMES), name="digits")
