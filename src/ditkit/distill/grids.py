"""The grids of `ditkit distill --mode steps`: a fresh teacher grid for the teacher's process, and the line
that reports a student's grid. DDPM grids are timesteps ending at -1 (ditkit.sampling.grids.ddpm_grid);
flow grids are noise levels s from 1 down to 0 (the flow samplers' "linspace", warped by the teacher's
process.shift as its own sampling grids are), so a recorded grid is what the student's pipeline samples."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from .build import STEPS_KINDS
from .flow_steps import is_flow_grid

__all__ = ["STEPS_SAMPLER", "check_steps_teacher", "grid_summary", "steps_teacher_grid"]

# The sampler a steps student records: on a DDPM model it is deterministic DDIM, on a flow model its step on
# an explicit grid is exactly the Euler step x + (s' - s) v the student was distilled for (as is "euler").
STEPS_SAMPLER = "ddim"


def check_steps_teacher(teacher: Any) -> None:
    """One line when `--mode steps` cannot distil this teacher's process."""
    if teacher.process_kind not in STEPS_KINDS:
        raise ValueError(
            f"--mode steps needs a teacher with a deterministic sampler (a DDPM or flow-matching model); this "
            f"teacher is a {teacher.process_kind!r} model"
        )


def steps_teacher_grid(teacher: Any, config: Any, num_steps: int, spacing: str | None = None) -> list[float]:
    """The teacher's grid of `num_steps` steps. `spacing` None: "ddim" for DDPM, "linspace" for flow (the
    only flow spacing; the teacher's `process.shift` warps it as in sampling)."""
    from ..sampling.grids import CONTINUOUS_SPACINGS, continuous_grid, ddpm_grid

    check_steps_teacher(teacher)
    if teacher.process_kind == "ddpm":
        return ddpm_grid(config.process.num_timesteps, num_steps, spacing or "ddim").tolist()
    spacing = spacing or "linspace"
    if spacing not in CONTINUOUS_SPACINGS:
        raise ValueError(
            f"--spacing {spacing} is a DDPM grid; a flow teacher's grid is {', '.join(CONTINUOUS_SPACINGS)} "
            "(uniform in the noise level, warped by process.shift): drop --spacing"
        )
    shift = float(getattr(config.process, "shift", 1.0) or 1.0)
    ends = SimpleNamespace(t_max=1.0, t_clean=0.0)  # the flow denoiser's time: noise level 1 -> 0
    return continuous_grid(ends, num_steps, spacing, shift=shift).tolist()


def grid_summary(grid: Any) -> str:
    """The CLI's report of a student's grid, e.g. `[999, 499, -1] (2 DDIM steps)` or
    `[1, 0.5, 0] (2 Euler steps on noise levels)`."""
    points = [float(t) for t in grid]
    steps = len(points) - 1
    if is_flow_grid(points):
        text = ", ".join(f"{t:.4g}" for t in points)
        return f"[{text}] ({steps} Euler steps on noise levels)"
    return f"[{', '.join(str(int(t)) for t in points)}] ({steps} DDIM steps)"
