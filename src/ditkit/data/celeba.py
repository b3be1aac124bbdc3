"""The CelebA layout: `img_align_celeba/` (the JPEGs; the Kaggle copy nests a second `img_align_celeba/`)
and `list_attr_celeba.txt` (a count line, a line of 40 attribute names, then `000001.jpg -1 1 ...`), or the
Kaggle `list_attr_celeba.csv` (`image_id,5_o_Clock_Shadow,...`). The attribute files may also sit in `Anno/`.

Attributes are ±1; `--label-columns Male` conditions on one of them, with the class names "not Male" (also
"female") and "Male" (also "male"); several attributes give a multi-attribute model. Without
--label-columns the images train unconditionally. Every image of the attribute file is used (the official
train/val/test partition is not applied).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .images import FileImageDataset
from .tables import encode_columns, pick_label_columns

ATTR_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")


def find_attr_file(root: Path) -> Path | None:
    for folder in (root, root / "Anno", root / "anno"):
        for name in ATTR_FILES:
            if (folder / name).is_file():
                return folder / name
    return None


def is_celeba_folder(root: Path) -> bool:
    return root.is_dir() and find_attr_file(root) is not None and (root / "img_align_celeba").is_dir()


def read_attr_file(path: Path) -> tuple[list[str], list[str], list[list[int]]]:
    """(file names, attribute names, rows of ±1 values)."""
    text = path.read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    files, rows = [], []
    if path.suffix.lower() == ".csv":
        header = [h.strip() for h in lines[0].split(",")]
        attrs = header[1:]
        body = [ln.split(",") for ln in lines[1:]]
    else:
        if len(lines) < 2:
            raise ValueError(f"{path}: expected a count line and a line of attribute names")
        attrs = lines[1].split()
        body = [ln.split() for ln in lines[2:]]
    for lineno, parts in enumerate(body, start=3):
        if len(parts) != len(attrs) + 1:
            raise ValueError(f"{path}: line {lineno} has {len(parts) - 1} values for {len(attrs)} attributes")
        try:
            values = [int(v) for v in parts[1:]]
        except ValueError:
            raise ValueError(f"{path}: line {lineno} holds a value that is not -1/1") from None
        bad = [v for v in values if v not in (-1, 1, 0)]
        if bad:
            raise ValueError(f"{path}: line {lineno} holds {bad[0]}; CelebA attributes are -1 or 1")
        files.append(parts[0].strip())
        rows.append([1 if v == 1 else -1 for v in values])
    if not files:
        raise ValueError(f"{path}: no images listed")
    return files, attrs, rows


class CelebADataset(FileImageDataset):
    kind_description = "CelebA"

    def __init__(self, root: str | Path, image_size: int, label_columns: Sequence[str] = ()) -> None:
        root = Path(root)
        attr_file = find_attr_file(root)
        if attr_file is None:
            raise FileNotFoundError(f"{root}: no list_attr_celeba.txt (or .csv) found")
        images = root / "img_align_celeba"
        if (images / "img_align_celeba").is_dir():
            images = images / "img_align_celeba"  # the Kaggle copy
        files, attrs, rows = read_attr_file(attr_file)
        chosen = pick_label_columns(label_columns, attrs, str(attr_file))
        missing = [f for f in files if not (images / f).is_file()]
        if missing:
            raise ValueError(
                f"{attr_file}: {len(missing)} of {len(files)} listed images are not in {images} (e.g. "
                f"{', '.join(missing[:3])})"
            )
        col = {a: i for i, a in enumerate(attrs)}
        self.labels, self.label_names = encode_columns(
            {a: [r[col[a]] == 1 for r in rows] for a in chosen}, {}, str(attr_file)
        )
        self.root, self.image_size, self.name = root, image_size, root.name
        self.files = [images / f for f in files]
        self.label_columns = tuple(chosen)
        self.columns = attrs
