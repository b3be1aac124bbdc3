"""The `distill` section of a run config: which teacher, which mode, and the mode's few options.

Stdlib imports only (ditkit.config imports this module). Every value is a plain scalar or a tuple, so the
section round-trips through YAML and through a `weights_only=True` checkpoint like the other sections; a run
is a distillation run exactly when `teacher` is set, and resuming rebuilds the objective from this section.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("output", "guidance", "steps")
# How the student's weights start: "random" (the network's own init), "teacher" (a copy of the teacher's
# weights; shapes must match) or "student-from-teacher" (every k-th block of the teacher: depth pruning).
INITS = ("random", "teacher", "student-from-teacher")
FAMILIES = ("dit", "sit")


@dataclass(frozen=True)
class DistillSection:
    """Distillation from a teacher (`ditkit distill`); `teacher` None = an ordinary training run.

    output:   the student matches the teacher's network output (eps / velocity, and the learned variance
              where both have it) on noised training inputs; `alpha` mixes in the data loss.
    guidance: the student takes the guidance weight w (uniform in [guidance_min, guidance_max]) as an extra
              input and matches the teacher's classifier-free-guided output in one forward (Meng et al. 2023).
    steps:    progressive distillation (Salimans & Ho 2022): one student DDIM step on `grid` matches `merge`
              teacher DDIM steps on `teacher_grid` (merge 2 = one halving round); for a flow-matching
              teacher the steps are Euler steps x + (s' - s) v on noise levels (ditkit.distill.flow_steps).
    """

    teacher: str | None = None
    mode: str = "output"
    teacher_family: str | None = None  # None = detect; "sit" for SiT files
    # sha256 of the teacher file when the run started (set by the CLI): a resume refuses a changed teacher
    teacher_sha256: str | None = None
    init: str = "random"
    alpha: float = 0.0  # output mode: loss = (1 - alpha) * distillation + alpha * data loss
    guidance_min: float = 1.0
    guidance_max: float = 4.0
    merge: int = 2  # steps mode: teacher steps per student step
    # steps mode: the teacher's grid in its sampler's own time (DDPM: descending timesteps ending at the clean
    # point -1, as ditkit.sampling.grids builds them; flow: noise levels s from 1 down to the clean point 0,
    # the network seeing 1000 s) and the student's, every `merge`-th point of it (set by the CLI; the
    # student's checkpoint records it as sample.grid and sampling uses it by default).
    teacher_grid: tuple[float, ...] = ()
    grid: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distill.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.init not in INITS:
            raise ValueError(f"distill.init must be one of {', '.join(INITS)}; got {self.init!r}")
        if self.teacher_family is not None and self.teacher_family not in FAMILIES:
            raise ValueError(
                f"distill.teacher_family must be one of {', '.join(FAMILIES)}; got {self.teacher_family!r}"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distill.alpha must be in [0, 1] (weight of the data loss), got {self.alpha!r}")
        if self.alpha and self.mode != "output":
            raise ValueError("distill.alpha (the data-loss weight) applies to --mode output only")
        if not 1.0 <= self.guidance_min <= self.guidance_max:
            raise ValueError(
                "distill.guidance_min/max must satisfy 1 <= min <= max, got "
                f"{self.guidance_min!r}, {self.guidance_max!r}"
            )
        if self.merge < 2:
            raise ValueError(
                f"distill.merge must be >= 2 (teacher steps per student step), got {self.merge!r}"
            )
        for name in ("teacher_grid", "grid"):
            grid = [float(t) for t in getattr(self, name)]
            if grid and not _valid_grid(grid):
                raise ValueError(
                    f"distill.{name} must be strictly descending and end at the clean point: DDPM timesteps "
                    f">= 0 then -1, or flow noise levels in (0, 1] then 0; got {grid}"
                )
        if self.mode != "steps" and (self.grid or self.teacher_grid):
            raise ValueError(
                "distill.grid/teacher_grid belong to a steps student; set them with distill.mode=steps"
            )
        if self.teacher_grid:
            steps = len(self.teacher_grid) - 1
            if steps % self.merge:
                raise ValueError(
                    f"distill.teacher_grid has {steps} steps, not a multiple of distill.merge={self.merge}"
                )
            student = tuple(float(t) for t in self.teacher_grid[:: self.merge])
            if self.grid and tuple(float(t) for t in self.grid) != student:
                raise ValueError(
                    f"distill.grid must be every {self.merge}-th point of distill.teacher_grid ({list(student)})"
                )

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)


def _valid_grid(grid: list[float]) -> bool:
    """A DDPM grid (timesteps >= 0, then the clean point -1) or a flow grid (noise levels in (0, 1], then 0),
    strictly descending, at least two points."""
    if len(grid) < 2 or any(b >= a for a, b in zip(grid, grid[1:])):
        return False
    if grid[-1] == -1:
        return grid[-2] >= 0
    return grid[-1] == 0 and grid[0] <= 1
