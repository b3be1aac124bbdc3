"""A folder of images: one subfolder per class (the ImageNet layout; names from the folder names), or
images directly in the folder for unconditional training. Reading and the ADM centre crop are in
`ditkit.data.images`; manifests, tables, CelebA and cached latents in the modules next to this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .images import IMAGE_SUFFIXES, FileImageDataset, center_crop_arr, list_images
from .tables import pick_label_columns

__all__ = ["IMAGE_SUFFIXES", "FolderDataset", "center_crop_arr"]


class FolderDataset(FileImageDataset):
    """One subfolder per class (names from the folders), or images directly in the folder (unconditional).

    Classes are the sorted folder names, as torchvision's ImageFolder orders them, except that all-numeric
    folder names ("0" ... "10") sort as numbers, so class "10" is id 10. Images are found recursively inside
    each class folder; empty class folders are ignored (with a note), hidden files and folders too."""

    kind_description = "image folder"

    def __init__(self, root: str | Path, image_size: int, label_columns: Sequence[str] = ()) -> None:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such data folder")
        if not root.is_dir():
            raise ValueError(f"{root}: expected a folder of images (one subfolder per class)")
        self.notes: list[str] = []
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        found = {p.name: list_images(p) for p in subdirs}
        empty = sorted(n for n, f in found.items() if not f)
        classes = [n for n, f in found.items() if f]
        if all(n.isdigit() for n in classes):
            classes.sort(key=int)
        else:
            classes.sort()
        top = list_images(root, recursive=False)
        files: list[Path] = []
        labels: list[int] = []
        if classes:
            if empty:
                self.notes.append(f"ignored {len(empty)} folder(s) without images: {', '.join(empty[:5])}")
            if top:
                self.notes.append(f"ignored {len(top)} image(s) directly in {root} (not in a class folder)")
            for i, name in enumerate(classes):
                files += found[name]
                labels += [i] * len(found[name])
        else:
            files, labels = top, [0] * len(top)
        if not files:
            raise ValueError(
                f"{root}: no images found (expected {', '.join(sorted(IMAGE_SUFFIXES))} files, in one "
                "subfolder per class or directly in the folder)"
            )
        columns = ["class"] if classes else []
        chosen = pick_label_columns(label_columns, columns, str(root)) if label_columns else columns
        self.root, self.files, self.image_size, self.name = root, files, image_size, root.name
        if chosen:
            self.labels = torch.tensor(labels, dtype=torch.long)
            self.label_names = list(classes)
            self.label_columns = ("class",)
        else:
            self.labels, self.label_names, self.label_columns = None, None, ()
        self.columns = columns
