"""Reading training images robustly, and the base class of every image data set.

- Any PIL mode becomes 8-bit RGB: alpha (RGBA, LA, PA, palette with transparency) is composited on white,
  16-bit and 32-bit integer images are rescaled (not clipped, as PIL's own `convert` does), float images are
  taken as [0, 1] (a float image with a NaN/inf pixel is unreadable: skipped with a warning naming the file,
  never decoded to black), CMYK/YCbCr/LAB/HSV go through PIL's conversion. The EXIF orientation is applied, so a
  phone photo is upright. Multi-frame files (GIF, TIFF) give their first frame.
- Then the ADM centre crop of the official recipe (dit-facts §1.5): BOX-halve while the short side is at
  least twice the target, BICUBIC-resize the short side to the target, crop the centre. An image smaller than
  the target is upscaled by that resize; the data set reports it (a warning in the run log).
- Pixels are scaled to [-1, 1].

A file that cannot be decoded (not an image, truncated, corrupt) raises `UnreadableImage`. Data sets never
let it escape in the middle of an epoch: `ImageDataset.load_batch` replaces the sample by the next readable
one (with *its* label: an image never travels with another image's label) and reports the skipped file, so
the trainer can count them in the log and list them in `skipped_images.txt`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message says why in one line."""


# -- decoding ---------------------------------------------------------------------------------------
def _open(source: str | os.PathLike | bytes):
    from PIL import Image

    if isinstance(source, bytes | bytearray | memoryview):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(source)


def to_rgb(im):
    """Any PIL image as an 8-bit RGB image (see the module docstring for each mode)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
        mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        # 16-bit data stored as mode I (PNG) reaches 65535; 8-bit data promoted to I stays <= 255.
        top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            raise UnreadableImage(
                f"{bad} non-finite pixel value(s) (NaN/inf) in a floating-point image; fix or remove the file"
            )
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        arr = np.clip(arr * scale + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, RGBX, ...


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's centre crop (dit-facts §1.5): BOX-halve while the short side >= 2x, BICUBIC-resize the short
    side to image_size, crop the centre. Returns an (S, S, C) uint8 array."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def decode_image(source: str | os.PathLike | bytes, image_size: int) -> tuple[np.ndarray, bool]:
    """(S, S, 3) uint8 after the ADM crop, and whether the image had to be upscaled.

    Raises UnreadableImage for anything that does not decode completely."""
    from PIL import Image, ImageOps

    try:
        with _open(source) as im:
            im.load()  # decode fully now: a truncated file fails here, not later
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block is not a broken image
                pass
            rgb = to_rgb(im)
            upscaled = min(rgb.size) < image_size
            arr = center_crop_arr(rgb, image_size)
    except UnreadableImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnreadableImage(reason[:200]) from None
    except Exception as err:  # PIL plugins raise many types on junk (struct.error, IndexError, ...)
        raise UnreadableImage(f"{type(err).__name__}: {str(err)[:160]}") from None
    if arr.shape != (image_size, image_size, 3):
        raise UnreadableImage(f"decoded to shape {arr.shape}")
    return arr, upscaled


def to_model_space(arr: np.ndarray) -> torch.Tensor:
    """(S, S, 3) uint8 -> (3, S, S) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1.0


# -- the base data set ------------------------------------------------------------------------------
@dataclass
class ImageBatch:
    """What `ImageDataset.load_batch` returns: images (N, 3, S, S) in [-1, 1], labels (N,) or (N, K) int64
    (empty (N, 0) when unconditional), and the files skipped or upscaled while reading them."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    upscaled: list[str] = field(default_factory=list)


class Labelled:
    """Label bookkeeping shared by image data sets and latent caches: `labels` ((N,) or (N, K) int64, or None
    when unconditional) and `label_names` (a list for one attribute, a dict attribute -> list for several)."""

    labels: torch.Tensor | None = None
    label_names: list[str] | dict[str, list[str]] | None = None

    @property
    def num_classes(self) -> int | tuple[int, ...]:
        """0 (unconditional), the class count of one attribute, or a tuple of counts for several."""
        if not self.label_names:
            return 0
        if isinstance(self.label_names, dict):
            return tuple(len(v) for v in self.label_names.values())
        return len(self.label_names)

    @property
    def multi_label(self) -> bool:
        return isinstance(self.label_names, dict)

    def label_rows(self, indices: torch.Tensor) -> torch.Tensor:
        if self.labels is None:
            return torch.zeros(len(indices), dtype=torch.long)
        return self.labels[indices]

    def describe_labels(self) -> str:
        """How the data is labelled, for the run log."""
        n = self.num_classes
        if not n:
            return "no labels (unconditional)"
        if isinstance(self.label_names, dict):
            return ", ".join(f"{k} ({len(v)} classes)" for k, v in self.label_names.items())
        columns = getattr(self, "label_columns", ())
        return f"{columns[0] + ': ' if columns else ''}{n} classes"


class ImageDataset(Labelled):
    """Images read on demand, with integer labels held in memory.

    Subclasses set `root` (a Path, for messages), `name`, `image_size`, `labels` ((N,) or (N, K) int64, or
    None when unconditional), `label_names` (a list for one attribute, a dict attribute -> list for several,
    None when unconditional), `label_columns` (tuple of attribute names) and implement `__len__`,
    `source(i)` (a path or encoded bytes) and `describe(i)` (a file name for messages).
    """

    channels = 3
    kind = "images"
    name = "images"
    image_size = 0
    label_columns: tuple[str, ...] = ()

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def source(self, index: int) -> str | os.PathLike | bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"

    # -- reading --------------------------------------------------------------------------------------
    def read_array(self, index: int) -> tuple[np.ndarray, bool]:
        """(S, S, 3) uint8 and whether it was upscaled; raises UnreadableImage."""
        return decode_image(self.source(index), self.image_size)

    def read(self, index: int) -> torch.Tensor:
        """One image (3, S, S) in [-1, 1]; raises UnreadableImage."""
        return to_model_space(self.read_array(index)[0])

    def _bad(self) -> set[int]:
        bad = self.__dict__.get("_bad_indices")
        if bad is None:
            bad = self.__dict__["_bad_indices"] = set()
        return bad

    def load_batch(self, indices: torch.Tensor) -> ImageBatch:
        """Read a batch; an unreadable file is replaced by the next readable index (deterministically, with
        that image's own label) and reported in `skipped`."""
        n = len(self)
        bad = self._bad()
        images, used, skipped, upscaled = [], [], [], []
        for i in indices.tolist():
            j, tries = int(i), 0
            while True:
                if j not in bad:
                    try:
                        arr, up = self.read_array(j)
                        break
                    except UnreadableImage as err:
                        bad.add(j)
                        skipped.append((self.describe(j), str(err)))
                tries += 1
                if tries >= n or len(bad) >= n:
                    raise ValueError(
                        f"{self.root}: none of the {n} images could be read (e.g. {skipped[0][0]}: "
                        f"{skipped[0][1]})"
                        if skipped
                        else f"{self.root}: no readable images"
                    )
                j = (j + 1) % n
            if up:
                upscaled.append(self.describe(j))
            images.append(to_model_space(arr))
            used.append(j)
        idx = torch.tensor(used, dtype=torch.long)
        stacked = torch.stack(images) if images else torch.zeros(0, 3, self.image_size, self.image_size)
        return ImageBatch(stacked, self.label_rows(idx), skipped, upscaled)

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.load_batch(indices)
        return batch.images, batch.labels

    # -- pickling (DataLoader workers): drop open handles, subclasses reopen lazily ------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_handle")}

    def summary(self) -> str:
        """One line for the run log: what was found and how it is labelled."""
        labels = self.describe_labels()
        return f"{self.kind_description} {self.root}: {len(self)} images, {labels}"

    kind_description = "images"


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under a folder (hidden files and folders skipped), sorted."""
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in it
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


class FileImageDataset(ImageDataset):
    """An ImageDataset over a list of image files (`self.files`)."""

    files: list[Path]

    def __len__(self) -> int:
        return len(self.files)

    def source(self, index: int) -> Path:
        return self.files[index]

    def describe(self, index: int) -> str:
        return str(self.files[index])
