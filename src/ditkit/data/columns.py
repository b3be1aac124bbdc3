"""Which columns of tabular data (Parquet/Arrow tables, CSV/JSONL manifests, CelebA's attribute list) hold
the images and the labels, and how label columns become class ids with names (`encode_column`), never
silently:
- class-label integers with names (Hugging Face `ClassLabel`): ids as stored, names from the features;
  -1 (the Hugging Face "no label") is an error naming the column;
- strings: sorted unique values (all-digit strings are read as integers, below);
- non-negative integers without names: the integer is the class id, its name is the number as text;
- ±1 or true/false (CelebA attributes): "not COL" / "COL" (`--label-columns Male` gives "not Male" and
  "Male", with the synonyms "female" / "male");
- anything else (floats, negative integers, empty cells) is a one-line error naming the column and row.

Rows are counted as a user counts them: "row 1" is the first data row (the line after a CSV's header), and
errors about the file's text name the line as well ("row 2 (line 3)").
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch

# Column names taken as the image (a file path, or encoded bytes in tables), in order of preference.
IMAGE_COLUMNS = ("image", "img", "file_name", "filename", "file", "path", "image_path", "image_file", "dir")
# Columns used as the label when --label-columns is not given; other sources train unconditionally.
DEFAULT_LABEL_COLUMNS = ("label", "labels", "class", "class_label", "category")
# Extra names for ±1 attributes (CelebA): (name of -1, name of +1).
ATTRIBUTE_SYNONYMS = {"male": ("female", "male"), "young": ("old", "young")}


def _binary_names(column: str) -> list[str]:
    extra = ATTRIBUTE_SYNONYMS.get(column.lower())
    if extra:
        return [f"not {column}, {extra[0]}", f"{column}, {extra[1]}"]
    return [f"not {column}", column]


def encode_column(
    column: str, values: Sequence[Any], names: Sequence[str] | None = None, where: str = "data"
) -> tuple[torch.Tensor, list[str]]:
    """Class ids (N,) int64 and the class names of one label column (rules in the module docstring)."""
    values = list(values)
    for row, v in enumerate(values, start=1):
        if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and v != v):
            raise ValueError(f"{where}: row {row} has no value in label column {column!r}")
    if names is not None:
        names = [str(n) for n in names]
        ids = []
        for row, v in enumerate(values, start=1):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}: column {column!r} should hold class ids, row {row} holds {v!r}")
            if v == -1:
                raise ValueError(f"{where}: row {row} has no label (-1) in column {column!r}")
            if not 0 <= v < len(names):
                raise ValueError(
                    f"{where}: row {row} has class id {v} in column {column!r}, which has {len(names)} names"
                )
            ids.append(v)
        return torch.tensor(ids, dtype=torch.long), names
    if all(isinstance(v, bool) for v in values):
        return torch.tensor([int(v) for v in values], dtype=torch.long), _binary_names(column)
    if all(isinstance(v, str) for v in values):
        stripped = [v.strip() for v in values]
        if all(s.lstrip("+-").isdigit() for s in stripped):
            values = [int(s) for s in stripped]  # numbers written as text (CSV): read as integers below
        elif {s.lower() for s in stripped} <= {"true", "false"}:
            return torch.tensor(
                [int(s.lower() == "true") for s in stripped], dtype=torch.long
            ), _binary_names(column)
        else:
            vocab = sorted(set(stripped))
            lookup = {n: i for i, n in enumerate(vocab)}
            return torch.tensor([lookup[s] for s in stripped], dtype=torch.long), vocab
    if all(isinstance(v, float) and float(v).is_integer() for v in values):
        values = [int(v) for v in values]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        distinct = set(values)
        if distinct <= {-1, 1} and -1 in distinct:  # CelebA-style attribute
            return torch.tensor([int(v == 1) for v in values], dtype=torch.long), _binary_names(column)
        low = min(values) if values else 0
        if low < 0:
            raise ValueError(
                f"{where}: label column {column!r} holds negative integers ({low}); use class ids 0..K-1, "
                "names, or ±1 attributes"
            )
        top = max(values) if values else -1
        if top >= 100_000:
            raise ValueError(
                f"{where}: label column {column!r} holds ids up to {top}; is it really a class label?"
            )
        return torch.tensor(values, dtype=torch.long), [str(i) for i in range(top + 1)]
    kinds = sorted({type(v).__name__ for v in values})
    raise ValueError(
        f"{where}: column {column!r} is not a class label (it holds {', '.join(kinds)}); label columns hold "
        "names, class ids or ±1 attributes"
    )


def pick_label_columns(
    requested: Sequence[str], available: Sequence[str], where: str, *, exclude: Sequence[str] = ()
) -> list[str]:
    """The label columns to use: the requested ones (each must exist), else a default-named column, else none.

    `requested == ["none"]` forces unconditional training."""
    candidates = [c for c in available if c not in exclude]
    if list(requested) == ["none"]:
        return []
    if requested:
        lower = {c.lower(): c for c in candidates}
        out = []
        for col in requested:
            if col in candidates:
                out.append(col)
            elif col.lower() in lower:
                out.append(lower[col.lower()])
            else:
                close = difflib.get_close_matches(col, candidates, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(
                    f"{where}: no label column {col!r}{hint}; columns: {', '.join(candidates) or '(none)'}"
                )
        if len(set(out)) != len(out):
            raise ValueError(f"{where}: label column given twice in {list(requested)}")
        return out
    for name in DEFAULT_LABEL_COLUMNS:
        for c in candidates:
            if c.lower() == name:
                return [c]
    return []


def encode_columns(
    columns: dict[str, Sequence[Any]], names: dict[str, Sequence[str] | None], where: str
) -> tuple[torch.Tensor | None, list[str] | dict[str, list[str]] | None]:
    """Labels (N,) for one column or (N, K) for several, with a list or a dict of class names."""
    if not columns:
        return None, None
    encoded = {c: encode_column(c, v, names.get(c), where) for c, v in columns.items()}
    if len(encoded) == 1:
        ((ids, vocab),) = encoded.values()
        return ids, vocab
    labels = torch.stack([ids for ids, _ in encoded.values()], dim=1)
    return labels, {c: vocab for c, (_, vocab) in encoded.items()}


def pick_image_column(columns: Sequence[str], where: str, types: dict[str, str] | None = None) -> str:
    """The column holding the images: an Image feature / binary column, else a conventional name."""
    types = types or {}
    for c in columns:
        if types.get(c) == "image":
            return c
    lower = {c.lower(): c for c in columns}
    for name in IMAGE_COLUMNS:
        if name in lower:
            return lower[name]
    raise ValueError(
        f"{where}: no image column (looked for {', '.join(IMAGE_COLUMNS)}); columns: {', '.join(columns)}"
    )
