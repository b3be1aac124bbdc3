"""Run folders and training checkpoints: numbered runs, atomic saves, keep-last-K, finding what to resume.

A run lives in `<output_dir>/NNN-<model>/` (e.g. `runs/003-DiT-Digits/`) with `config.yaml`, `log.txt`,
`metrics.jsonl`, `loss_curve.png`, `grid.png`, `samples/`, `tb/` and `checkpoints/NNNNNNN.pt`.

A run folder is marked by a `.ditkit-run` file; a resume writes only into a marked folder (or an older
ditkit run: `NNN-name/checkpoints/`), never into a folder of the user's own: a checkpoint found elsewhere
is resumed into a new run folder. While a run trains, it holds `.lock` in its folder (an OS lock that dies
with the process), so a second `train --resume` of the same run stops with one line.

The checkpoint schema (its fields and their validation) lives in `ditkit.train.state`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..io.native import atomic_torch_save
from .state import REQUIRED as CHECKPOINT_KEYS
from .state import read_checkpoint

MARKER = ".ditkit-run"
LOCK = ".lock"
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
            return mark_run_dir(path)
        except FileExistsError:
            number += 1


def mark_run_dir(path: str | Path) -> Path:
    """Mark `path` as a ditkit run folder (what a resume may write into)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    marker = path / MARKER
    if not marker.exists():
        marker.write_text("a ditkit run folder: `ditkit train --resume` writes here\n")
    return path


def is_run_dir(path: str | Path) -> bool:
    """A marked run folder, or one an older ditkit wrote (NNN-name/ with config.yaml and checkpoints/)."""
    path = Path(path)
    if (path / MARKER).is_file():
        return True
    return (
        bool(_RUN_RE.match(path.name))
        and (path / "config.yaml").is_file()
        and (path / "checkpoints").is_dir()
    )


_HELD: set = set()  # lock files this process holds open


def _close_in_child() -> None:
    """A forked child (a DataLoader worker) must not keep its parent's run lock alive after the parent ends."""
    for fh in list(_HELD):
        try:
            fh.close()
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """An exclusive OS lock on a run folder, released when the process ends (even by kill -9); forked
    children (data-loader workers) close their copy, so the lock ends with the run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fh = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        fh = open(self.path, "a+")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            fh.close()
            raise ValueError(
                f"{self.path.parent} is in use by another `ditkit train` ({owner}); wait for it to finish or "
                "stop it, then resume"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh
        _HELD.add(fh)
        return self

    def release(self) -> None:
        if self._fh is not None:
            _HELD.discard(self._fh)
            self._fh.close()  # closing drops the lock
            self._fh = None


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


def model_path(path: str | Path, flag: str | None = None) -> Path:
    """What to load for a model argument: a file or a model folder as given; a run folder or a runs folder
    becomes its newest checkpoint. `flag` (e.g. "--ckpt") prefixes the message for a missing path."""
    path = Path(path)
    if not path.exists():
        where = f"{flag} {path}" if flag else str(path)
        raise FileNotFoundError(f"{where}: no such checkpoint, run folder or model folder")
    if path.is_dir() and (list_checkpoints(path) or list_runs(path)):
        path = find_checkpoint(path)
    return path


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
    """Read a ditkit training checkpoint (weights_only) and validate every field (ditkit.train.state)."""
    return read_checkpoint(path)
