"""Run folders and training checkpoints: numbered runs, atomic saves, keep-last-K, finding what to resume.

A run lives in `<output_dir>/NNN-<model>/` (e.g. `runs/003-DiT-Digits/`) with `config.yaml`, `log.txt`,
`metrics.jsonl`, `loss_curve.png`, `grid.png`, `samples/`, `tb/` and `checkpoints/NNNNNNN.pt`.

A checkpoint is a dict of tensors and plain containers only (it loads with `weights_only=True`):
`{"format", "version", "model_config", "model", "ema", "optimizer", "scheduler", "step", "rng", "config",
"label_names", "ditkit_version"}`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..io.native import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_torch_save, safe_torch_load

CHECKPOINT_KEYS = (
    "format",
    "version",
    "model_config",
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "step",
    "rng",
    "config",
    "label_names",
    "ditkit_version",
)
_RUN_RE = re.compile(r"^(\d{3,})-")
_CKPT_RE = re.compile(r"^(\d+)\.pt$")


# -- run folders ------------------------------------------------------------------------------------
def run_number(path: Path) -> int | None:
    m = _RUN_RE.match(path.name)
    return int(m.group(1)) if m and path.is_dir() else None


def list_runs(root: str | Path) -> list[Path]:
    """Numbered run folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [(run_number(p), p) for p in root.iterdir()]
    return [p for n, p in sorted((n, p) for n, p in runs if n is not None)]


def new_run_dir(root: str | Path, model_name: str) -> Path:
    """Create the next numbered folder `root/NNN-<model>` (slashes in the name become dashes)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", model_name).strip("-") or "run"
    number = max([run_number(p) or 0 for p in list_runs(root)] + [0]) + 1
    while True:  # another process may take the number first
        path = root / f"{number:03d}-{tag}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


# -- checkpoint files -------------------------------------------------------------------------------
def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{step:07d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run, oldest first (temporary files of interrupted saves are ignored)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file from a file, a run folder (its newest checkpoint) or a runs folder (the newest
    checkpoint of the newest run that has one)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint, run folder or runs folder")
    if path.is_file():
        return path
    ckpts = list_checkpoints(path)
    if ckpts:
        return ckpts[-1]
    for run in reversed(list_runs(path)):
        ckpts = list_checkpoints(run)
        if ckpts:
            return ckpts[-1]
    raise FileNotFoundError(
        f"{path}: no checkpoints found (looked in checkpoints/ and in numbered run folders)"
    )


def resolve_resume(resume: str, output_dir: str | Path) -> Path:
    """`--resume auto`: the newest checkpoint under output_dir; otherwise a file, run folder or runs folder."""
    if resume == "auto":
        if not list_runs(output_dir):
            raise FileNotFoundError(f"--resume auto: no runs in {output_dir}/ to resume")
        return find_checkpoint(output_dir)
    return find_checkpoint(resume)


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (`<run>/checkpoints/N.pt` -> `<run>`)."""
    checkpoint = Path(checkpoint).resolve()
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint.parent


def clean_stale_temporaries(run_dir: str | Path) -> None:
    """Remove temporary files left by a save that was killed (they were never renamed into place)."""
    folder = Path(run_dir) / "checkpoints"
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


def save_checkpoint(ckpt: dict[str, Any], run_dir: str | Path, keep_last: int) -> Path:
    """Write atomically (temporary file, fsync, rename), then delete all but the newest `keep_last`."""
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    assert not missing, f"checkpoint lacks {missing}"
    path = atomic_torch_save(ckpt, checkpoint_path(run_dir, int(ckpt["step"])))
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ditkit training checkpoint (weights_only) and check its format, version and keys."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a ditkit training checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt.get('version')!r}; this ditkit reads version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return ckpt
