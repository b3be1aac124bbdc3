"""`--data PATH`: find out what kind of data set a path is and build it, with its label columns.

Checked in this order:
    digits                      the embedded scikit-learn digits
    DIR/index.json              a latent cache written by `ditkit encode` (training skips the VAE encoder)
    DIR/dataset_info.json       a Hugging Face `datasets` folder (save_to_disk), e.g. huggan/wikiart
      + state.json, or DIR/dataset_dict.json
    DIR/list_attr_celeba.txt    CelebA (+ DIR/img_align_celeba/); also .csv, also under DIR/Anno/
    DIR/*.csv, *.jsonl          a folder of images with a manifest naming each image and its labels
                                (one manifest with an image column; several: pass the file itself)
    DIR/*.parquet, DIR/data/*.parquet   Parquet shards of one table
    DIR/<class>/...images       one subfolder per class (the ImageNet layout)
    DIR/*.png ...               a folder of images without labels (unconditional)
    FILE.parquet                a Parquet table
    FILE.arrow / .feather       an Arrow IPC table
    FILE.csv / .jsonl / .json   a manifest (image paths relative to its folder)

Anything else is a one-line error listing these layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .celeba import CelebADataset, is_celeba_folder
from .folder import FolderDataset
from .images import IMAGE_SUFFIXES
from .latents import LatentCache, is_latent_cache
from .manifests import ManifestDataset
from .tables import (
    TableDataset,
    hf_dataset,
    is_hf_dataset_folder,
    pick_image_column,
)

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow"}
LAYOUTS = (
    "a folder with one subfolder of images per class, a folder of images (optionally with a CSV/JSONL "
    "manifest of labels), a .parquet/.arrow file, a Hugging Face datasets folder (save_to_disk), a CelebA "
    "folder (img_align_celeba/ + list_attr_celeba.txt) or a latent cache from `ditkit encode`"
)


def _header_columns(p: Path) -> list[str]:
    """The column names a manifest declares, from its first line (CSV header, first JSON object) only, so
    that a malformed row further down is reported by the reader instead of hiding the manifest."""
    import csv
    import json

    with open(p, encoding="utf-8-sig", newline="") as fh:
        if p.suffix.lower() in (".csv", ".tsv"):
            first = fh.readline()
            delimiter = "\t" if p.suffix.lower() == ".tsv" or first.count("\t") > first.count(",") else ","
            return next(csv.reader([first], delimiter=delimiter), [])
        text = fh.read(1 << 16).lstrip()
    if text.startswith("["):  # a JSON list of objects: its first object
        text = text[1:].lstrip()
    decoded, _ = json.JSONDecoder().raw_decode(text)
    return list(decoded) if isinstance(decoded, dict) else []


def _manifests_in(folder: Path) -> list[Path]:
    """Manifest files at the top of a folder whose header names an image column."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES and not p.name.startswith("."):
            if p.name in ("dataset_info.json", "state.json", "dataset_dict.json", "index.json", "plan.json"):
                continue
            try:
                pick_image_column([c.strip() for c in _header_columns(p)], str(p))
            except (ValueError, OSError, UnicodeDecodeError, StopIteration):
                continue  # not a manifest (no image column, or not text): the folder's images decide
            out.append(p)
    return out


def _has_images(folder: Path) -> bool:
    """Any image in the folder or below (stops at the first one: ImageNet has 1.28M files)."""
    for p in folder.rglob("*"):
        if p.suffix.lower() in IMAGE_SUFFIXES and not any(
            part.startswith(".") for part in p.relative_to(folder).parts
        ):
            return True
    return False


def detect(path: str | Path) -> str:
    """The kind of data set at `path` (see the module docstring); raises a one-line error otherwise."""
    if str(path) == "digits":
        return "digits"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or folder (--data takes {LAYOUTS}, or 'digits')")
    if p.is_file():
        suffix = p.suffix.lower()
        if suffix in TABLE_SUFFIXES:
            return TABLE_SUFFIXES[suffix]
        if suffix in MANIFEST_SUFFIXES:
            return "manifest"
        if suffix in IMAGE_SUFFIXES:
            raise ValueError(f"{p}: one image is not a data set; pass the folder that holds the images")
        raise ValueError(f"{p}: not a data set ditkit reads; --data takes {LAYOUTS}")
    if is_latent_cache(p):
        return "latents"
    if is_hf_dataset_folder(p):
        return "hf-datasets"
    if is_celeba_folder(p):
        return "celeba"
    if _manifests_in(p):
        return "manifest"
    if sorted(p.glob("*.parquet")) or sorted(p.glob("data/*.parquet")):
        return "parquet-folder"
    if _has_images(p):
        return "folder"
    raise ValueError(f"{p}: no images found (nor tables or manifests); --data takes {LAYOUTS}")


def open_dataset(
    path: str | Path,
    image_size: int,
    label_columns: Sequence[str] = (),
    *,
    split: str | None = None,
    allow_outside_paths: bool = False,
) -> Any:
    """The data set at `path`: an ImageDataset (images decoded on demand) or a LatentCache.

    label_columns: the attributes to condition on (e.g. ["genre", "style"] or ["Male"]); () takes the
    source's default (class folders, or a column named label/class), ["none"] trains unconditionally.
    allow_outside_paths: let a manifest name images outside its folder (refused by default)."""
    label_columns = [c for c in (label_columns or ()) if c]
    kind = detect(path)
    if kind == "digits":
        from .digits import digits_dataset

        if label_columns and label_columns != ["none"]:
            raise ValueError("the digits data set has one label (the digit); drop --label-columns")
        ds = digits_dataset(image_size)
        if label_columns == ["none"]:
            ds.label_names = None
        return ds
    p = Path(path)
    if kind == "latents":
        return LatentCache(p, label_columns)
    if kind == "hf-datasets":
        return hf_dataset(p, image_size, label_columns, split=split, allow_outside_paths=allow_outside_paths)
    if kind == "celeba":
        return CelebADataset(p, image_size, label_columns)
    if kind == "manifest":
        if p.is_file():
            return ManifestDataset(p, image_size, label_columns, allow_outside_paths=allow_outside_paths)
        found = _manifests_in(p)
        if len(found) > 1:
            raise ValueError(
                f"{p}: several manifests ({', '.join(f.name for f in found)}); pass the one to use as --data"
            )
        return ManifestDataset(found[0], image_size, label_columns, allow_outside_paths=allow_outside_paths)
    if kind in ("parquet", "arrow"):
        return TableDataset(
            [p], image_size, label_columns, root=p, fmt=kind, allow_outside_paths=allow_outside_paths
        )
    if kind == "parquet-folder":
        files = sorted(p.glob("*.parquet")) or sorted(p.glob("data/*.parquet"))
        train = [f for f in files if f.name.startswith("train")]
        if train and len(train) != len(files):
            files = train  # the Hugging Face hub layout: data/train-00000-of-00003.parquet, data/test-...
        return TableDataset(
            files, image_size, label_columns, root=p, fmt="parquet", allow_outside_paths=allow_outside_paths
        )
    return FolderDataset(p, image_size, label_columns)
