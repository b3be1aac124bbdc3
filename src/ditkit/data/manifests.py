"""A folder of images with a CSV / JSONL / JSON manifest: one row per image, an image-path column and label
columns (the label rules are `ditkit.data.tables.encode_column`'s).

Rows are counted as a user counts them: "row 1" is the first data row (the line after a CSV's header), and
errors about the file's text name the line as well ("row 2 (line 3)"). A malformed row is an error naming the
file and the row, never a row dropped or a manifest ignored. Paths that lead outside the manifest's folder are
refused unless `allow_outside_paths` (config: `data.allow_outside_paths`).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .images import FileImageDataset
from .tables import encode_columns, pick_image_column, pick_label_columns


def is_inside(path: Path, folder: Path) -> bool:
    """Whether `path` lies in `folder`, judged on the names (`..` resolved, symlinks not followed, so an
    image folder linked into the data folder counts as inside)."""
    p = os.path.normpath(os.path.abspath(path))
    f = os.path.normpath(os.path.abspath(folder))
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL (one object per line) file."""
    if path.suffix.lower() == ".csv" or path.suffix.lower() == ".tsv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            delimiter = (
                "\t" if path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",") else ","
            )
            reader = csv.DictReader(fh, delimiter=delimiter)
            if not reader.fieldnames:
                raise ValueError(f"{path}: empty manifest (no header line)")
            rows = []
            width = len(reader.fieldnames)
            for number, row in enumerate(reader, start=1):
                where = f"{path}: row {number} (line {reader.line_num})"
                if None in row:
                    extra = len(row[None])
                    raise ValueError(
                        f"{where} has {width + extra} fields, the header has {width}; fix the row (quote a "
                        "value that holds the delimiter)"
                    )
                if any(v is None for v in row.values()):
                    have = sum(v is not None for v in row.values())
                    raise ValueError(f"{where} has {have} field(s), the header has {width}; fix the row")
                rows.append(row)
            return rows
    rows = []
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        rows = [r for r in data if isinstance(r, dict)]
        if len(rows) != len(data):
            raise ValueError(f"{path}: a JSON manifest must be a list of objects")
        return rows
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: row {len(rows) + 1} (line {lineno})"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where} is not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where} is not a JSON object")
        rows.append(row)
    return rows


class ManifestDataset(FileImageDataset):
    """A CSV/JSONL manifest: one row per image, an image-path column (relative to the manifest's folder, or
    to `image_root`) and label columns.

    Paths that lead outside that folder (`../x.png`, `/abs/x.png` elsewhere) are refused unless
    `allow_outside_paths` (a manifest should not make training read arbitrary files)."""

    kind_description = "manifest"

    def __init__(
        self,
        manifest: str | Path,
        image_size: int,
        label_columns: Sequence[str] = (),
        image_root: str | Path | None = None,
        *,
        allow_outside_paths: bool = False,
    ) -> None:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no such manifest file")
        rows = read_manifest(manifest)
        if not rows:
            raise ValueError(f"{manifest}: the manifest lists no images")
        columns = list(dict.fromkeys(k for row in rows for k in row))
        image_col = pick_image_column(columns, str(manifest))
        chosen = pick_label_columns(label_columns, columns, str(manifest), exclude=[image_col])
        base = Path(image_root) if image_root is not None else manifest.parent
        files, missing = [], []
        for number, row in enumerate(rows, start=1):
            value = row.get(image_col)
            if value is None or not str(value).strip():
                raise ValueError(f"{manifest}: row {number} has no value in the image column {image_col!r}")
            p = Path(str(value).strip())
            p = p if p.is_absolute() else base / p
            if not allow_outside_paths and not is_inside(p, base):
                raise ValueError(
                    f"{manifest}: row {number} names {str(value).strip()!r}, outside the data folder {base}; "
                    "move the images under it, or allow it with --set data.allow_outside_paths=true"
                )
            if not p.is_file():
                missing.append(str(value))
            files.append(p)
        if missing:
            shown = ", ".join(missing[:3])
            raise ValueError(
                f"{manifest}: {len(missing)} of {len(rows)} listed files do not exist (e.g. {shown}); paths are "
                f"read relative to {base}"
            )
        self.labels, self.label_names = encode_columns(
            {c: [row.get(c) for row in rows] for c in chosen}, {}, str(manifest)
        )
        self.root, self.files, self.image_size = manifest, files, image_size
        self.label_columns = tuple(chosen)
        self.columns = columns
        self.name = manifest.parent.name or manifest.stem
