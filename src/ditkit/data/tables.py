"""Images with label columns: a Parquet or Arrow file, or a Hugging Face `datasets` folder written by
`save_to_disk` (the huggan/wikiart layout: `image`, `artist`, `genre`, `style`, with class-label integers whose
names live in the dataset's features). The label rules, shared with CSV/JSONL manifests
(`ditkit.data.manifests`), are `ditkit.data.columns`'.

Parquet and Arrow need `pyarrow` (`pip install 'ditkit[data]'`); nothing else from Hugging Face is needed to
read a saved `datasets` folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .columns import (
    ATTRIBUTE_SYNONYMS,
    DEFAULT_LABEL_COLUMNS,
    IMAGE_COLUMNS,
    encode_column,
    encode_columns,
    pick_image_column,
    pick_label_columns,
)
from .images import ImageDataset

# The column rules live in .columns; they stay importable from here, where manifests and sources look.
__all__ = [
    "ATTRIBUTE_SYNONYMS",
    "DEFAULT_LABEL_COLUMNS",
    "IMAGE_COLUMNS",
    "TableDataset",
    "encode_column",
    "encode_columns",
    "hf_dataset",
    "is_hf_dataset_folder",
    "pick_image_column",
    "pick_label_columns",
    "require_pyarrow",
]


def require_pyarrow(what: str):
    try:
        import pyarrow
    except ImportError:
        raise ValueError(
            f"reading {what} needs pyarrow: pip install 'ditkit[data]' (or pip install pyarrow)"
        ) from None
    return pyarrow


# -- Arrow / Parquet tables and Hugging Face `datasets` folders -----------------------------------------
def _hf_features(info: dict[str, Any] | None) -> dict[str, Any]:
    if not isinstance(info, dict):
        return {}
    feats = info.get("features")
    return feats if isinstance(feats, dict) else {}


def _feature_kind(feature: Any) -> tuple[str, list[str] | None]:
    """("image" | "class_label" | "other", names) for a Hugging Face feature description."""
    if isinstance(feature, dict):
        t = feature.get("_type")
        if t == "Image":
            return "image", None
        if t == "ClassLabel":
            return "class_label", [str(n) for n in feature.get("names") or []]
    return "other", None


def _schema_features(schema) -> dict[str, Any]:
    """Features from the `huggingface` metadata that datasets writes into Parquet/Arrow schemas."""
    meta = schema.metadata or {}
    raw = meta.get(b"huggingface")
    if not raw:
        return {}
    try:
        return _hf_features(json.loads(raw).get("info"))
    except (json.JSONDecodeError, AttributeError):
        return {}


class TableDataset(ImageDataset):
    """One or more Arrow/Parquet files with an image column (encoded bytes, a {bytes, path} struct as the
    Hugging Face Image feature stores it, or a path relative to the table) and label columns.

    Label columns are read into memory at once; image bytes are read on demand: Arrow files through a
    memory map, Parquet one row group at a time (kept in a small cache). For large Parquet data sets, cache
    the latents once with `ditkit encode` (a sequential pass) rather than training on the table directly.
    """

    kind_description = "table"

    def __init__(
        self,
        files: Sequence[str | Path],
        image_size: int,
        label_columns: Sequence[str] = (),
        *,
        root: str | Path | None = None,
        features: dict[str, Any] | None = None,
        fmt: str = "parquet",
        allow_outside_paths: bool = False,
    ) -> None:
        require_pyarrow("Parquet/Arrow data")
        self.allow_outside_paths = allow_outside_paths
        self.paths = [Path(f) for f in files]
        self.fmt = fmt
        self.root = Path(root) if root is not None else self.paths[0]
        self.image_size = image_size
        where = str(self.root)
        schema = self._schema(self.paths[0])
        feats = dict(features or {}) or _schema_features(schema)
        columns = list(schema.names)
        types = {}
        for c in columns:
            kind, _ = _feature_kind(feats.get(c))
            if kind == "image" or _is_image_type(schema.field(c).type):
                types[c] = "image"
        self.image_column = pick_image_column(columns, where, types)
        chosen = pick_label_columns(label_columns, columns, where, exclude=[self.image_column])
        values: dict[str, list] = {c: [] for c in chosen}
        self._offsets = [0]
        for p in self.paths:
            table = self._read_columns(p, chosen)
            for c in chosen:
                values[c].extend(table.column(c).to_pylist())
            self._offsets.append(self._offsets[-1] + table.num_rows)
        names = {c: _feature_kind(feats.get(c))[1] for c in chosen}
        for c in chosen:
            field_type = schema.field(c).type
            if names[c] is None and _is_dictionary(field_type):
                values[c] = [None if v is None else str(v) for v in values[c]]
        self.labels, self.label_names = encode_columns(values, names, where)
        self.label_columns = tuple(chosen)
        self.columns = columns
        self.name = self.root.stem if self.root.is_file() else self.root.name
        if len(self) == 0:
            raise ValueError(f"{where}: the table has no rows")

    # -- file access ------------------------------------------------------------------------------------
    def _schema(self, path: Path):
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_schema(path)
            except Exception as err:
                raise ValueError(f"{path}: not a readable Parquet file ({str(err)[:160]})") from None
        return self._arrow(path).schema

    def _arrow(self, path: Path):
        """An Arrow IPC file (random-access or stream format) as a memory-mapped table."""
        import pyarrow as pa

        cache = self.__dict__.setdefault("_handle_arrow", {})
        if path not in cache:
            try:
                source = pa.memory_map(str(path), "r")
                try:
                    table = pa.ipc.open_file(source).read_all()
                except pa.ArrowInvalid:
                    source = pa.memory_map(str(path), "r")
                    table = pa.ipc.open_stream(source).read_all()
            except Exception as err:
                raise ValueError(f"{path}: not a readable Arrow file ({str(err)[:160]})") from None
            cache[path] = table
        return cache[path]

    def _read_columns(self, path: Path, columns: list[str]):
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path, columns=columns)
        return self._arrow(path).select(columns)

    def __len__(self) -> int:
        return self._offsets[-1]

    def _locate(self, index: int) -> tuple[int, int]:
        import bisect

        f = bisect.bisect_right(self._offsets, index) - 1
        return f, index - self._offsets[f]

    def _cell(self, index: int) -> Any:
        f, row = self._locate(index)
        path = self.paths[f]
        if self.fmt != "parquet":
            return self._arrow(path).column(self.image_column)[row].as_py()
        import pyarrow.parquet as pq

        files = self.__dict__.setdefault("_handle_parquet", {})
        if path not in files:
            files[path] = pq.ParquetFile(path)
        pf = files[path]
        starts = self.__dict__.setdefault("_row_group_starts", {})
        if path not in starts:
            bounds, total = [], 0
            for g in range(pf.num_row_groups):
                bounds.append(total)
                total += pf.metadata.row_group(g).num_rows
            starts[path] = bounds
        import bisect

        g = bisect.bisect_right(starts[path], row) - 1
        cache = self.__dict__.setdefault("_handle_groups", {})
        key = (path, g)
        if key not in cache:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            cache[key] = pf.read_row_group(g, columns=[self.image_column]).column(0)
        return cache[key][row - starts[path][g]].as_py()

    def source(self, index: int) -> bytes | Path:
        cell = self._cell(index)
        if isinstance(cell, dict):  # the Hugging Face Image feature: {"bytes": ..., "path": ...}
            if cell.get("bytes"):
                return cell["bytes"]
            cell = cell.get("path")
        if isinstance(cell, bytes | bytearray):
            return bytes(cell)
        if isinstance(cell, str) and cell:
            from .images import UnreadableImage
            from .manifests import is_inside

            p = Path(cell)
            base = self.root if self.root.is_dir() else self.root.parent
            p = p if p.is_absolute() else base / p
            if not getattr(self, "allow_outside_paths", False) and not is_inside(p, base):
                raise UnreadableImage(
                    f"{cell} is outside the data folder {base}; allow it with --set data.allow_outside_paths=true"
                )
            return p
        return b""  # an empty cell: reported as unreadable

    def describe(self, index: int) -> str:
        try:
            cell = self._cell(index)
        except Exception:
            cell = None
        path = cell.get("path") if isinstance(cell, dict) else cell if isinstance(cell, str) else None
        return f"{self.name}[{index}]" + (f" ({path})" if path else "")


def _is_image_type(t) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return True
    if pa.types.is_struct(t):
        names = {t.field(i).name for i in range(t.num_fields)}
        return "bytes" in names
    return False


def _is_dictionary(t) -> bool:
    import pyarrow as pa

    return pa.types.is_dictionary(t)


# -- Hugging Face `save_to_disk` folders ---------------------------------------------------------------
def is_hf_dataset_folder(path: Path) -> bool:
    return (
        (path / "state.json").is_file()
        and (path / "dataset_info.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


def hf_dataset(
    folder: Path,
    image_size: int,
    label_columns: Sequence[str] = (),
    split: str | None = None,
    *,
    allow_outside_paths: bool = False,
):
    """A folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict's: its `train` split)."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits") or []
        pick = split or ("train" if "train" in splits else (splits[0] if len(splits) == 1 else None))
        if pick is None or not (folder / pick).is_dir():
            raise ValueError(
                f"{folder}: a dataset with splits {', '.join(splits)}; pass the split folder, e.g. {folder / splits[0]}"
                if splits
                else f"{folder}: dataset_dict.json lists no splits"
            )
        folder = folder / pick
    try:
        state = json.loads((folder / "state.json").read_text())
        info = json.loads((folder / "dataset_info.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{folder}: unreadable datasets metadata ({err})") from None
    files = [folder / f["filename"] for f in state.get("_data_files", []) if "filename" in f]
    if not files:
        files = sorted(folder.glob("*.arrow"))
    if not files:
        raise ValueError(f"{folder}: a datasets folder without .arrow data files")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(f"{folder}: data files missing: {', '.join(missing[:3])}")
    ds = TableDataset(
        files,
        image_size,
        label_columns,
        root=folder,
        features=_hf_features(info),
        fmt="arrow",
        allow_outside_paths=allow_outside_paths,
    )
    ds.kind_description = "datasets folder"
    return ds
