"""The three distillation objectives, each implementing the trainer's Objective protocol:
`losses(model, x0, cond, *, generator=None, t=None, noise=None, **draws) -> dict` of per-sample (N,) terms
with "loss" and "t" (the noise level in [0, 1]).

`output` and `guidance` reuse the run's own objective (DDPM hybrid or flow matching) to noise the batch and
call the student once; a capturing wrapper records the student's inputs, the frozen teacher is evaluated on
exactly those inputs, and the student's raw output is regressed on the teacher's. `steps` draws a point of
the student's DDIM grid, runs `merge` teacher DDIM steps from there and regresses the student's eps on the
eps whose single DDIM step lands where the teacher did (ditkit.distill.targets); a flow teacher's Euler
steps are distilled the same way in ditkit.distill.flow_steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion.losses import mean_flat
from .student import init_student
from .targets import alpha_sigma, guided, student_target_eps, teacher_ddim
from .teacher import Teacher, null_condition

__all__ = ["GuidanceDistillation", "OutputDistillation", "ProcessObjective", "StepsDistillation"]


class ProcessObjective:
    """The DDPM hybrid loss of a GaussianDiffusion as an Objective (used when the trainer hands no base)."""

    kind = "ddpm"

    def __init__(self, process: Any) -> None:
        self.process = process

    def draw(self, n: int, shape: tuple[int, ...], generator: Any) -> tuple[Tensor, Tensor]:
        return _ddpm_draw(self.process, n, shape, generator)

    def losses(
        self, model, x0, cond=None, *, generator=None, t=None, noise=None, **_: Any
    ) -> dict[str, Tensor]:
        n, T = x0.shape[0], self.process.num_timesteps
        if t is None:
            gen_device = generator.device if generator is not None else x0.device
            t = torch.randint(0, T, (n,), generator=generator, device=gen_device).to(x0.device)
        kwargs = {} if cond is None else {"y": cond}
        terms = self.process.training_losses(model, x0, kwargs, t=t, noise=noise, generator=generator)
        terms["t"] = self.process.model_timesteps(t.long()).float() / T
        return terms


def _ddpm_draw(process: Any, n: int, shape: tuple[int, ...], generator: Any) -> tuple[Tensor, Tensor]:
    """The trainer's global-batch draws (as DDPMObjective.draw): timesteps (n,), then noise (n, *shape)."""
    t = torch.randint(0, process.num_timesteps, (n,), generator=generator)
    return t, torch.randn((n, *shape), generator=generator)


class _Capture:
    """Calls the student and remembers its inputs and raw output (the base objective calls it once)."""

    def __init__(self, model: Any, **extra: Any) -> None:
        self.model, self.extra = model, extra
        self.inputs: tuple | None = None
        self.out: Tensor | None = None

    def __call__(self, x: Tensor, t: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        self.out = self.model(x, t, *args, **kwargs, **self.extra)
        self.inputs = (x.detach(), t, args, kwargs)
        return self.out


def _condition(args: tuple, kwargs: dict) -> Tensor | None:
    return args[0] if args else kwargs.get("y")


def _draw_w(lo: float, hi: float, x0: Tensor, noise: Tensor | None, generator: Any) -> Tensor:
    """One guidance weight per sample, uniform in [lo, hi]. With a generator it is drawn from it; otherwise it
    is read from the fine digits of the sample's first noise value (|z| * 1e3 mod 1 is uniform and independent
    of anything the network sees), so it follows the trainer's saved draws: same under DDP, resume and
    gradient accumulation."""
    n = x0.shape[0]
    if lo == hi:
        return torch.full((n,), float(lo), device=x0.device)
    if generator is not None:
        u = torch.rand(n, generator=generator, device=generator.device).to(x0.device)
    elif noise is not None:
        u = torch.frac(noise.reshape(n, -1)[:, 0].double().abs() * 1e3).float()
    else:
        u = torch.rand(n, device=x0.device)
    return lo + (hi - lo) * u


def split_grid(grid: Tensor, merge: int) -> tuple[Tensor, int, Tensor]:
    """A teacher grid cut into student steps of `merge` teacher steps: (the student grid, every merge-th
    point; the number of student steps S; paths (S, merge + 1), the teacher points of each student step)."""
    student = grid[::merge]
    num_steps = (len(grid) - 1) // merge
    paths = torch.stack([grid[i * merge : (i + 1) * merge + 1] for i in range(num_steps)])
    return student, num_steps, paths


class _StepsMixin:
    """What both progressive-distillation objectives (DDPM eps, flow velocity) do around their targets: the
    guidance weight of a guided teacher and the student's forward (w as an input for a w-conditioned one)."""

    teacher: Teacher
    w_min: float
    w_max: float
    student_guided: bool

    def _guidance_w(self, x0: Tensor, noise: Tensor, cond: Tensor | None, w: Tensor | None, generator: Any):
        """w (N,) for a guided teacher (drawn from the noise when not given), else None (unguided)."""
        cfg = self.teacher.config
        if not (self.w_max > 1.0 and cond is not None and (cfg.has_null_label or cfg.guidance_embed)):
            return None
        if w is None:
            w = _draw_w(self.w_min, self.w_max, x0, noise, generator)
        return w.to(x0.device)

    def _student(self, model: Any, x: Tensor, t: Tensor, cond: Tensor | None, w: Tensor | None) -> Tensor:
        extra = (
            {"w": w if w is not None else torch.ones(x.shape[0], device=x.device)}
            if self.student_guided
            else {}
        )
        return model(x, t, **extra) if cond is None else model(x, t, cond, **extra)


class _TeacherMixin:
    teacher: Teacher
    channels_only: bool
    mode = ""
    init_mode = "random"

    # -- what the trainer calls besides losses() ------------------------------------------------------
    def draw(self, n: int, shape: tuple[int, ...], generator: Any) -> tuple[Tensor, Tensor]:
        """The global batch's (t, noise): the base objective's draws (steps mode maps t onto its grid; the
        guidance weight w is read from the noise, see `_draw_w`), so no extra random state is needed."""
        base = getattr(self, "base", None)
        if base is not None and hasattr(base, "draw"):
            return base.draw(n, shape, generator)
        if base is not None and hasattr(base, "sample_t"):  # flow matching: its own time distribution
            return base.sample_t(n, generator=generator), torch.randn((n, *shape), generator=generator)
        return _ddpm_draw(self.process, n, shape, generator)

    def init_model(self, net: Any) -> list[str]:
        """Initialise a fresh student from the teacher (distill.init); returns lines for the log."""
        return init_student(net, self.teacher.model, self.init_mode)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "teacher_sha256": self.teacher.digest}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("teacher_sha256")
        if saved and self.teacher.digest and saved != self.teacher.digest:
            raise ValueError(
                f"the teacher file {self.teacher.path} changed since this distillation run started (sha256 "
                f"{self.teacher.digest[:12]} vs {saved[:12]}); resume with the original teacher"
            )

    def _guided_teacher(self, x: Tensor, t: Tensor, cond: Tensor | None, w: Tensor | None) -> Tensor:
        """The teacher's output at guidance weight w per sample (one forward of a doubled batch for a CFG
        teacher, one plain forward for a guidance-distilled teacher); variance channels stay conditional."""
        cfg = self.teacher.config
        if cfg.guidance_embed:  # a guidance-distilled teacher: w is an input (1 = unguided)
            w = torch.ones(x.shape[0], device=x.device) if w is None else w
            return self.teacher(x, t, cond, w=w) if cond is not None else self.teacher(x, t, w=w)
        if w is None or cond is None:
            return self.teacher(x, t) if cond is None else self.teacher(x, t, cond)
        both = self.teacher(
            torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null_condition(cfg, cond)])
        )
        out_c, out_u = both.chunk(2)
        return guided(out_c, out_u, w, x.shape[1])

    def _match(self, out: Tensor, ref: Tensor, c: int) -> tuple[Tensor, Tensor | None]:
        """Per-sample MSE on the prediction channels, and on the learned-variance channels where both have them."""
        out = out.float()
        main = mean_flat((out[:, :c] - ref[:, :c]) ** 2)
        both_sigma = not self.channels_only and out.shape[1] == 2 * c and ref.shape[1] == 2 * c
        var = mean_flat((out[:, c:] - ref[:, c:]) ** 2) if both_sigma else None
        return main, var


class OutputDistillation(_TeacherMixin):
    """Knowledge distillation: the student's raw output (eps or velocity, and v) matches the teacher's on the
    noised training inputs; loss = (1 - alpha) * distillation + alpha * data loss. A learned-sigma student of
    a teacher without learned sigma trains its variance channels with the data loss's VLB term."""

    mode = "output"

    def __init__(
        self, teacher: Teacher, base: Any, *, alpha: float = 0.0, student_config: Any = None
    ) -> None:
        self.teacher, self.base, self.alpha = teacher, base, float(alpha)
        self.student_config = student_config
        self.channels_only = getattr(base, "kind", "ddpm") != "ddpm"  # flow: only the velocity is trained

    def losses(
        self, model, x0, cond=None, *, generator=None, t=None, noise=None, **_: Any
    ) -> dict[str, Tensor]:
        cap = _Capture(model)
        terms = self.base.losses(cap, x0, cond, generator=generator, t=t, noise=noise)
        assert cap.inputs is not None and cap.out is not None, "the base objective did not call the network"
        x_t, t_net, args, kwargs = cap.inputs
        ref = self.teacher(x_t, t_net, *args, **kwargs)
        kd, var = self._match(cap.out, ref, x0.shape[1])
        if var is not None:
            kd = kd + var
        elif "vb" in terms and not self.channels_only:
            kd = kd + terms["vb"]  # the teacher has no variance to match: learn it from the data
        loss = (1.0 - self.alpha) * kd + self.alpha * terms["loss"] if self.alpha else kd
        out = {"loss": loss, "distill": kd, "data": terms["loss"].detach()}
        if "t" in terms:
            out["t"] = terms["t"]
        return out


class GuidanceDistillation(_TeacherMixin):
    """Meng et al. (CVPR 2023) stage 1: a w-conditioned student matches the teacher's classifier-free-guided
    output in one forward; w ~ U[w_min, w_max] per sample (passed as `w=` or drawn)."""

    mode = "guidance"

    def __init__(self, teacher: Teacher, base: Any, *, w_min: float, w_max: float) -> None:
        self.teacher, self.base = teacher, base
        self.w_min, self.w_max = float(w_min), float(w_max)
        self.channels_only = getattr(base, "kind", "ddpm") != "ddpm"

    def losses(
        self, model, x0, cond=None, *, generator=None, t=None, noise=None, w=None, **_: Any
    ) -> dict[str, Tensor]:
        if w is None:
            w = _draw_w(self.w_min, self.w_max, x0, noise, generator)
        cap = _Capture(model, w=w.to(x0.device))
        terms = self.base.losses(cap, x0, cond, generator=generator, t=t, noise=noise)
        assert cap.inputs is not None and cap.out is not None, "the base objective did not call the network"
        x_t, t_net, args, kwargs = cap.inputs
        ref = self._guided_teacher(x_t, t_net, _condition(args, kwargs), w.to(x0.device))
        main, var = self._match(cap.out, ref, x0.shape[1])
        loss = main if var is None else main + var
        out = {"loss": loss, "distill": main, "w": w.float()}
        if "t" in terms:
            out["t"] = terms["t"]
        return out


class StepsDistillation(_StepsMixin, _TeacherMixin):
    """Progressive distillation (Salimans & Ho, ICLR 2022): one student DDIM step from a point of
    `student_grid` matches `merge` deterministic teacher DDIM steps on `teacher_grid` (of which the student's
    grid is every merge-th point). The student predicts eps; the loss is the eps MSE against the closed-form
    target (the x_s-space error of the step, rescaled). A guided teacher is guided at w (fixed, or drawn per
    sample for a w-conditioned student, as in Meng et al.'s stage 2)."""

    channels_only = False
    mode = "steps"

    def __init__(
        self,
        teacher: Teacher,
        process: Any,
        teacher_grid: list[float],
        merge: int,
        *,
        w_min: float = 1.0,
        w_max: float = 1.0,
        student_guided: bool = False,
    ) -> None:
        self.teacher, self.process, self.merge = teacher, process, int(merge)
        grid = torch.tensor([round(float(v)) for v in teacher_grid], dtype=torch.long)
        steps = len(grid) - 1
        assert steps % self.merge == 0 and int(grid[-1]) == -1
        self.student_grid, self.num_steps, self.paths = split_grid(grid, self.merge)
        self.alphas_cumprod = torch.tensor(np.array(process.alphas_cumprod, dtype=np.float64))
        self.w_min, self.w_max, self.student_guided = float(w_min), float(w_max), bool(student_guided)

    def losses(
        self, model, x0, cond=None, *, generator=None, t=None, noise=None, w=None, **_: Any
    ) -> dict[str, Tensor]:
        n, c, device, T = x0.shape[0], x0.shape[1], x0.device, self.process.num_timesteps
        gen_device = generator.device if generator is not None else device
        if t is None:
            idx = torch.randint(0, self.num_steps, (n,), generator=generator, device=gen_device).cpu()
        else:  # the trainer's uniform timestep draw, mapped onto the student's steps (exactly uniform)
            idx = (t.long().cpu() * self.num_steps) // T
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(device)
        w = self._guidance_w(x0, noise, cond, w, generator)
        x_t, t_start, target, teacher_raw = self.targets(x0, noise, idx, cond, w)
        out = self._student(model, x_t, t_start, cond, w)
        main, var = self._match(out, torch.cat([target, teacher_raw[:, c:]], dim=1), c)
        loss = main if var is None else main + var
        return {"loss": loss, "distill": main, "t": t_start.float().clamp(min=0) / T}

    @torch.no_grad()
    def targets(
        self, x0: Tensor, noise: Tensor, idx: Tensor, cond: Tensor | None, w: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For student step indices `idx` (N,): the noised input x_t at the step's start, its timesteps, the
        student's eps target and the teacher's raw output at the start (for the variance channels)."""
        device, c = x0.device, x0.shape[1]
        path = self.paths[idx.cpu()].to(device)  # (N, merge + 1)
        t_start = path[:, 0]
        ac = self.alphas_cumprod.to(device)
        at, st = alpha_sigma(ac, t_start)
        x_t = (at * x0.double() + st * noise.double()).float()
        first: dict[str, Tensor] = {}

        def eps_fn(x: Tensor, tt: Tensor) -> Tensor:
            raw = self._guided_teacher(x, tt, cond, w)
            first.setdefault("raw", raw)
            return raw[:, :c]

        x_s = teacher_ddim(eps_fn, x_t, t_start, ac, path)
        as_, ss = alpha_sigma(ac, path[:, -1])
        return x_t, t_start, student_target_eps(x_t, x_s, at, st, as_, ss), first["raw"]
