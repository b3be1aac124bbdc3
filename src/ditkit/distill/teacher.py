"""The teacher: any DiT file ditkit reads (ditkit checkpoint / weights / pipeline folder, official .pt,
diffusers folder, SiT with family="sit"), frozen, plus the checks a student must pass against it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Teacher", "check_student", "file_digest", "load_teacher", "null_condition"]


@dataclass
class Teacher:
    """A frozen teacher network with what distillation needs to know about it."""

    model: nn.Module
    path: Path
    format: str
    process_kind: str = "ddpm"  # "ddpm" (eps, DDIM available) or "flow" (velocity)
    run_config: dict[str, Any] | None = None  # the teacher's own run config (ditkit checkpoints only)
    label_names: Any = None
    digest: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return self.model.config

    def to(self, device: torch.device | str) -> Teacher:
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return self.model(x, t, *args, **kwargs).float()


def file_digest(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (names and bytes, sorted), to notice a changed teacher."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _process_kind(run_config: dict[str, Any] | None, model_config: Any) -> str:
    process = (run_config or {}).get("process") or {}
    kind = process.get("kind") if isinstance(process, dict) else None
    if kind:
        return str(kind)
    return "flow" if getattr(model_config, "time_input", "ddpm") in ("flow", "sit") else "ddpm"


def load_teacher(path: str | Path, *, family: str | None = None, device: Any = "cpu") -> Teacher:
    """Load a teacher (EMA weights where the file has them), in eval mode with gradients off. A run folder
    stands for its newest checkpoint.

    Raises FileNotFoundError for a missing path and a one-line ValueError for a file that is not a DiT model
    (the message of `ditkit.io.load_any`, prefixed with "teacher")."""
    from ..io.loading import load_any

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"teacher {path}: no such file or folder (pass --teacher CHECKPOINT)")
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run folder: its newest checkpoint
        from ..train.checkpoint import find_checkpoint

        path = find_checkpoint(path)
    kwargs = {"family": family} if family is not None else {}
    try:
        loaded = load_any(path, **kwargs)
    except ValueError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise ValueError(
            f"teacher: {first} (a ditkit checkpoint, an official DiT .pt or a diffusers folder is needed)"
        ) from None
    model = loaded.model.eval().requires_grad_(False).to(device)
    run_config = loaded.extra.get("run_config") if isinstance(loaded.extra, dict) else None
    names = loaded.attributes or loaded.label_names
    return Teacher(
        model=model,
        path=path,
        format=loaded.format,
        process_kind=_process_kind(run_config, model.config),
        run_config=run_config,
        label_names=names,
        digest=file_digest(path),
        notes=list(loaded.notes),
    )


def _conditioning(cfg: Any) -> str:
    if cfg.cond_dim:
        return f"{cfg.cond_dim}-wide embeddings"
    if cfg.multi_label:
        return f"attributes with {list(cfg.label_sizes)} classes"
    if cfg.label_sizes:
        return f"{cfg.num_classes} classes"
    return "nothing (unconditional)"


def check_student(student: Any, teacher: Any) -> None:
    """A student must take the teacher's inputs and conditioning (it learns the teacher's function of them).

    One-line ValueError naming both otherwise. Widths, depths, learned sigma and block designs may differ."""
    s_in = (student.in_channels, student.input_size, student.input_size)
    t_in = (teacher.in_channels, teacher.input_size, teacher.input_size)
    if s_in != t_in:
        raise ValueError(
            "the student takes {}x{}x{} inputs but the teacher takes {}x{}x{} (in_channels x input_size^2); "
            "train the student on the teacher's data (same image size and VAE)".format(*s_in, *t_in)
        )
    if (student.label_sizes, student.cond_dim) != (teacher.label_sizes, teacher.cond_dim):
        raise ValueError(
            f"the student is conditioned on {_conditioning(student)} but the teacher on "
            f"{_conditioning(teacher)}; use the teacher's data and label columns"
        )
    if student.time_input != teacher.time_input:
        raise ValueError(
            f"the student's time input is {student.time_input!r} but the teacher's {teacher.time_input!r}; "
            "train the student with the teacher's process"
        )


def null_condition(cfg: Any, cond: Tensor) -> Tensor:
    """The null condition shaped like `cond` (null ids per attribute, or the zero embedding)."""
    if cfg.cond_dim:
        return torch.zeros_like(cond)
    null = torch.as_tensor(cfg.null_label, dtype=cond.dtype, device=cond.device)
    return null.expand_as(cond).clone()
