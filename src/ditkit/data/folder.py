"""A folder of images: one subfolder per class (the ImageNet layout; names from the sorted folder names), or
images directly in the folder for unconditional training. ADM centre crop to the training resolution,
scaled to [-1, 1]. Richer sources (manifests, Parquet, CelebA, cached latents) belong here too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def center_crop_arr(pil_image, image_size: int):
    """ADM's centre crop (dit-facts §1.5): BOX-halve while the short side >= 2x, BICUBIC-resize the short
    side to image_size, crop the centre."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


class FolderDataset:
    def __init__(self, root: str | Path, image_size: int) -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such data folder")
        if not root.is_dir():
            raise ValueError(f"{root}: expected a folder of images (one subfolder per class)")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        files: list[Path] = []
        labels: list[int] = []
        if classes:
            for i, name in enumerate(classes):
                found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
                files += found
                labels += [i] * len(found)
        else:
            files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            labels = [0] * len(files)
        if not files:
            raise ValueError(f"{root}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files)")
        self.root, self.files, self.image_size = root, files, image_size
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.label_names = classes or None
        self.name = root.name

    def __len__(self) -> int:
        return len(self.files)

    channels = 3

    @property
    def num_classes(self) -> int:
        return len(self.label_names) if self.label_names else 0

    def read(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as im:
            arr = center_crop_arr(im.convert("RGB"), self.image_size)
        return torch.from_numpy(arr).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, S, S) in [-1, 1]

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.stack([self.read(int(i)) for i in indices])
        return images, self.labels[indices]
