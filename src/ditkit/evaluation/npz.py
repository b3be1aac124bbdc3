"""Read sample / reference batches (`.npz`, ADM layout) in batches without loading 50K images at once.

`arr_0`: uint8 N×H×W×3 images; `arr_1` (optional): labels; ADM reference batches add `mu`, `sigma`
(pool_3) and `mu_s`, `sigma_s` (spatial). An `.npz` is a zip of `.npy` files; an uncompressed or deflated
member is streamed batch by batch from its header (numpy's format), without reading the rest.
"""

from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class ImageBatch:
    """The `arr_0` member of an npz: shape, dtype, and `batches(size)` (fresh stream each call)."""

    def __init__(self, path: str | Path, key: str = "arr_0") -> None:
        self.path = Path(path)
        self.key = key
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        try:
            with zipfile.ZipFile(self.path) as zf:
                self.keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                if f"{key}.npy" not in zf.namelist():
                    raise ValueError(
                        f"{self.path}: no {key} array (found {', '.join(self.keys) or 'none'}); "
                        "expected an .npz with arr_0 = uint8 N×H×W×3 images"
                    )
                with zf.open(f"{key}.npy") as fh:
                    self.shape, self.fortran, self.dtype = _read_header(fh)
        except zipfile.BadZipFile:
            raise ValueError(f"{self.path}: not an .npz file (np.savez writes one)") from None

    def __len__(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    @property
    def resolution(self) -> tuple[int, int]:
        return int(self.shape[1]), int(self.shape[2])

    def batches(self, size: int) -> Iterator[np.ndarray]:
        if self.fortran or self.dtype.hasobject:
            arr = self.load_array(self.key)
            for i in range(0, len(arr), size):
                yield arr[i : i + size]
            return
        per_item = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as fh:
            _read_header(fh)
            for start in range(0, len(self), size):
                n = min(size, len(self) - start)
                data = fh.read(n * per_item)
                if len(data) != n * per_item:
                    raise ValueError(f"{self.path}: {self.key} is truncated (file cut short?)")
                yield np.frombuffer(data, dtype=self.dtype).reshape(n, *self.shape[1:])

    def load_array(self, key: str) -> np.ndarray | None:
        if key not in self.keys:
            return None
        with np.load(self.path, allow_pickle=False) as data:
            return np.asarray(data[key])

    def check_images(self, what: str) -> None:
        """One-line errors for arrays that are not uint8 N×H×W×3 images."""
        if len(self.shape) != 4 or self.shape[-1] != 3:
            hint = (
                " (channels first? transpose to N×H×W×3)"
                if len(self.shape) == 4 and self.shape[1] == 3
                else ""
            )
            raise ValueError(f"{self.path}: {what} {self.key} has shape {self.shape}; expected N×H×W×3{hint}")
        if self.dtype != np.uint8:
            lo_hi = ""
            if self.dtype.kind in "fiu" and len(self) > 0:
                first = next(self.batches(min(256, len(self))))
                lo_hi = f" with values in [{first.min():.3g}, {first.max():.3g}]"
            raise ValueError(
                f"{self.path}: {what} {self.key} is {self.dtype}{lo_hi}; expected uint8 in 0..255 "
                "(convert with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8) for [-1, 1] floats)"
            )
        if len(self) == 0:
            raise ValueError(f"{self.path}: {what} {self.key} holds no images")


def _read_header(fh):
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fh)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(fh)
    raise ValueError(f"unsupported .npy format version {version}")


def read_reference_stats(path: str | Path) -> dict[str, np.ndarray]:
    """mu/sigma (and mu_s/sigma_s) an ADM reference batch carries, else {}."""
    with contextlib.suppress(zipfile.BadZipFile), np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k]) for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data.files}
    return {}
