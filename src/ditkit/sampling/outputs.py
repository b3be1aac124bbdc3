"""Sample folders: PNGs, grid.png and samples.npz (ADM layout plus a JSON ``meta``), and a manifest of what
ditkit wrote, so a second run into the same folder replaces its own outputs and never leaves stale ones.

Policy: a folder that does not exist or is empty is used; a folder with a valid ``.ditkit-samples.json`` has
the files listed there replaced (files ditkit did not write are left alone); any other non-empty folder is
refused with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["MANIFEST", "previous_outputs", "read_meta", "write_sample_folder"]

MANIFEST = ".ditkit-samples.json"


def previous_outputs(out: str | Path, flag: str = "--out") -> list[str]:
    """The files an earlier `ditkit sample` wrote into --out (to replace); a one-line error for a file, or a
    non-empty folder ditkit did not write."""
    import json

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file; pass a folder")
    if not folder.exists() or not any(folder.iterdir()):
        return []
    manifest = folder / MANIFEST
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) and f and Path(f).name == f for f in files):
        raise ValueError(
            f"{flag} {folder} is not empty and was not written by ditkit sample (no valid {MANIFEST}); pass a new "
            "or empty folder"
        ) from None
    return files


def write_sample_folder(
    out_dir: Path, u8, labels, meta: dict[str, Any], grid_image, names: list[str], stale: list[str]
) -> None:
    """Write the PNGs ``names`` of ``u8`` (N×H×W×3), samples.npz (arr_0, arr_1 int64 ``labels``, meta JSON),
    grid.png and the manifest, atomically file by file, after removing the ``stale`` files of an earlier run."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from ditkit.io.native import atomic_write

    keep = set(names) | {"grid.png", "samples.npz", MANIFEST}
    for name in stale:  # only what an earlier `ditkit sample` wrote here
        if name not in keep and (out_dir / name).is_file():
            (out_dir / name).unlink()
    for img, name in zip(u8, names):
        atomic_write(out_dir / name, lambda tmp, img=img: Image.fromarray(img).save(tmp, format="PNG"))
    buf = io.BytesIO()
    np.savez(buf, arr_0=u8, arr_1=np.asarray(labels, dtype=np.int64), meta=np.asarray([json.dumps(meta)]))
    atomic_write(out_dir / "samples.npz", lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    atomic_write(out_dir / "grid.png", lambda tmp: grid_image.save(tmp, format="PNG"))
    files = {"written_by": "ditkit sample", "files": [*names, "grid.png", "samples.npz"]}
    atomic_write(out_dir / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(files, indent=1)))


def read_meta(npz_path: str | Path) -> dict[str, Any]:
    """The ``meta`` dict of a samples.npz ditkit wrote ({} when it has none). Also reads the ``metadata``
    key that `ditkit sample --num` wrote before both used ``meta``."""
    import json

    import numpy as np

    with np.load(npz_path, allow_pickle=False) as data:
        key = next((k for k in ("meta", "metadata") if k in data.files), None)
        if key is None:
            return {}
        text = data[key]
        return json.loads(str(text.reshape(-1)[0]))
