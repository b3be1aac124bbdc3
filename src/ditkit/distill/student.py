"""Starting a student from its teacher: a plain copy, or depth pruning (every k-th block).

Depth pruning keeps blocks k-1, 2k-1, ..., D-1 of a D-block teacher for a D/k-block student (the last block,
which feeds the final layer, is always kept), plus every embedder and the final layer; TinyFusion (CVPR 2025)
learns which blocks to keep, the fixed stride here is its simplest baseline. Only tensors of equal name and
shape are copied; a guidance student's `w_embedder` keeps its zero-output init, so the student starts as the
teacher's conditional model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["copy_from_teacher", "init_student", "pruned_blocks"]

# Fields that must agree for a block of the teacher to be a block of the student.
_BLOCK_FIELDS = ("hidden_size", "num_heads", "mlp_ratio", "block", "norm", "patch_size", "arithmetic")


def pruned_blocks(teacher_depth: int, student_depth: int) -> list[int]:
    """The teacher blocks a student of `student_depth` keeps: every k-th (k = teacher/student depth), ending
    at the last block; an evenly spaced choice when the depths do not divide."""
    if not 1 <= student_depth <= teacher_depth:
        raise ValueError(
            f"--init student-from-teacher needs a student no deeper than the teacher: student depth "
            f"{student_depth}, teacher depth {teacher_depth}"
        )
    if teacher_depth % student_depth == 0:
        k = teacher_depth // student_depth
        return [i * k + k - 1 for i in range(student_depth)]
    if student_depth == 1:
        return [teacher_depth - 1]
    step = (teacher_depth - 1) / (student_depth - 1)
    return [round(i * step) for i in range(student_depth)]


def _check_widths(student: Any, teacher: Any) -> None:
    diff = [f for f in _BLOCK_FIELDS if getattr(student, f) != getattr(teacher, f)]
    if diff:
        detail = ", ".join(f"{f} {getattr(student, f)!r} vs {getattr(teacher, f)!r}" for f in diff)
        raise ValueError(
            f"--init student-from-teacher needs the teacher's width and block design (student vs teacher: "
            f"{detail}); use --init random for a narrower student"
        )


@torch.no_grad()
def copy_from_teacher(
    student: nn.Module, teacher: nn.Module, block_map: list[int] | None = None
) -> list[str]:
    """Copy every teacher tensor whose name (after mapping student block i to teacher block block_map[i]) and
    shape match; returns report lines. Shape mismatches outside the blocks (e.g. a learned-sigma head the
    student lacks) are left at the student's init and reported."""
    t_state = teacher.state_dict()
    copied, kept = 0, []
    for name, tensor in student.state_dict().items():
        source = name
        if block_map is not None and name.startswith("blocks."):
            idx, rest = name.split(".", 2)[1:]
            source = f"blocks.{block_map[int(idx)]}.{rest}"
        ref = t_state.get(source)
        if ref is not None and ref.shape == tensor.shape:
            tensor.copy_(ref.to(tensor.device, tensor.dtype))
            copied += 1
        else:
            kept.append(name.rsplit(".", 1)[0])
    lines = [f"student init: copied {copied} tensors from the teacher"]
    if block_map is not None:
        lines.append(
            f"student init: blocks {block_map} of the teacher's {teacher.config.depth} (depth pruning)"
        )
    if kept:
        groups = sorted(set(kept))
        lines.append(
            f"student init: left at their own init: {', '.join(groups[:8])}"
            + (" ..." if len(groups) > 8 else "")
        )
    return lines


def init_student(student: nn.Module, teacher: nn.Module, mode: str) -> list[str]:
    """Initialise `student` from `teacher` as `distill.init` says ("random": nothing to do)."""
    s, t = student.config, teacher.config
    if mode == "random":
        return ["student init: random (the network's own init)"]
    if mode == "student-from-teacher":
        _check_widths(s, t)
        return copy_from_teacher(student, teacher, pruned_blocks(t.depth, s.depth))
    if mode == "teacher":
        if s.depth != t.depth:
            raise ValueError(
                f"--init teacher copies every block: the student has depth {s.depth}, the teacher {t.depth}; "
                "use --init student-from-teacher for a shallower student"
            )
        _check_widths(s, t)
        return copy_from_teacher(student, teacher)
    raise ValueError(f"unknown distill.init {mode!r}; choose random, teacher or student-from-teacher")
