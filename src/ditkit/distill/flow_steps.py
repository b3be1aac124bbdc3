"""Progressive distillation of a flow-matching teacher (Salimans & Ho 2022 on the linear interpolant).

A flow model (ditkit.diffusion.flow) samples deterministically with Euler on dx/ds = v over a grid of noise
levels descending from 1 to 0 (ditkit's "euler" and "ddim" samplers take exactly this step on a flow model).
One student Euler step from a point s of the student's grid to the next point s' must land where `merge`
teacher Euler steps over the teacher's grid land; the student's velocity target is then the closed form
v~ = (x_target - x_s) / (s' - s) (ditkit.distill.targets) and the loss is the velocity MSE, as in flow
matching itself. Guidance composes as in the DDPM case: a CFG teacher is guided on its velocity at w, a
w-conditioned student takes w as an input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..diffusion.flow import interpolate, network_time, velocity_from_output
from ..diffusion.losses import mean_flat
from .objectives import _StepsMixin, _TeacherMixin, split_grid
from .targets import FLOW_CLEAN, student_target_velocity, teacher_euler
from .teacher import Teacher

__all__ = ["FlowStepsDistillation", "check_flow_grid", "is_flow_grid"]


def is_flow_grid(grid: Any) -> bool:
    """Whether a recorded grid is in flow noise levels (ends at 0) rather than DDPM timesteps (ends at -1)."""
    return bool(len(grid)) and float(grid[-1]) == FLOW_CLEAN


def check_flow_grid(grid: Any, name: str = "teacher_grid") -> list[float]:
    """A flow grid as floats: strictly descending noise levels in (0, 1] ending at the clean point 0."""
    g = [float(v) for v in grid]
    ok = (
        len(g) >= 2
        and all(math.isfinite(v) for v in g)
        and g[-1] == FLOW_CLEAN
        and g[0] <= 1.0
        and all(b < a for a, b in zip(g, g[1:]))
    )
    if not ok:
        raise ValueError(
            f"distill.{name} of a flow teacher must be strictly descending noise levels in (0, 1] ending at the "
            f"clean point 0, got {g}"
        )
    return g


class FlowStepsDistillation(_StepsMixin, _TeacherMixin):
    """Progressive distillation of a flow teacher: one student Euler step on `student_grid` (every merge-th
    point of `teacher_grid`, noise levels from 1 to 0) matches `merge` teacher Euler steps. The student
    predicts a velocity (in its own time convention, as the teacher: ditkit "flow" or SiT "sit")."""

    channels_only = True  # a flow model has no variance channels to train
    mode = "steps"

    def __init__(
        self,
        teacher: Teacher,
        teacher_grid: list[float],
        merge: int,
        *,
        w_min: float = 1.0,
        w_max: float = 1.0,
        student_guided: bool = False,
    ) -> None:
        self.teacher, self.merge = teacher, int(merge)
        grid = torch.tensor(check_flow_grid(teacher_grid), dtype=torch.float64)
        steps = len(grid) - 1
        if self.merge < 1 or steps % self.merge:
            raise ValueError(f"the teacher grid's {steps} steps do not split into groups of {self.merge}")
        self.student_grid, self.num_steps, self.paths = split_grid(grid, self.merge)
        self.time_input = getattr(teacher.config, "time_input", "flow")
        if self.time_input not in ("flow", "sit"):
            self.time_input = "flow"
        self.w_min, self.w_max, self.student_guided = float(w_min), float(w_max), bool(student_guided)

    def draw(self, n: int, shape: tuple[int, ...], generator: Any) -> tuple[Tensor, Tensor]:
        """The global batch's draws: u ~ U[0, 1) (n,), which picks the student step floor(u S) uniformly
        whatever the run's flow time sampling, then the noise (n, *shape)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64).float()
        return u, torch.randn((n, *shape), generator=generator)

    def _step_index(self, n: int, t: Tensor | None, generator: Any, device: Any) -> Tensor:
        if t is None:
            gen_device = generator.device if generator is not None else device
            return torch.randint(0, self.num_steps, (n,), generator=generator, device=gen_device).cpu()
        t = t.detach().cpu()
        if not t.dtype.is_floating_point:
            raise ValueError(
                "a flow steps objective takes t as uniform draws in [0, 1) (floats), got integers"
            )
        return (t.double() * self.num_steps).floor().long().clamp(0, self.num_steps - 1)

    def losses(
        self, model, x0, cond=None, *, generator=None, t=None, noise=None, w=None, **_: Any
    ) -> dict[str, Tensor]:
        n, c, device = x0.shape[0], x0.shape[1], x0.device
        idx = self._step_index(n, t, generator, device)
        if noise is None:
            gen_device = generator.device if generator is not None else device
            noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)
        w = self._guidance_w(x0, noise, cond, w, generator)
        x_s, s_start, target = self.targets(x0, noise, idx, cond, w)
        out = self._student(model, x_s, network_time(s_start, self.time_input).to(device), cond, w)
        v_hat = velocity_from_output(out.float(), c, self.time_input)
        loss = mean_flat((v_hat - target) ** 2)
        return {"loss": loss, "distill": loss.detach(), "t": s_start.float()}

    @torch.no_grad()
    def targets(
        self, x0: Tensor, noise: Tensor, idx: Tensor, cond: Tensor | None, w: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """For student step indices `idx` (N,): the noised input x_s at the step's start, its noise levels s
        (N,) and the student's velocity target (ditkit's sign: d x / d s)."""
        device, c = x0.device, x0.shape[1]
        path = self.paths[idx.cpu()].to(device)  # (N, merge + 1) float64
        s_start = path[:, 0]
        x_s = interpolate(x0.double(), noise.double(), s_start.double())

        def v_fn(x: Tensor, s: Tensor) -> Tensor:
            raw = self._guided_teacher(x, network_time(s, self.time_input).to(device), cond, w)
            return velocity_from_output(raw, c, self.time_input)

        x_end = teacher_euler(v_fn, x_s, path)
        return x_s, s_start, student_target_velocity(x_s, x_end, s_start, path[:, -1])
