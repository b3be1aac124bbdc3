"""Closed-form arithmetic of distillation targets (fp32, no network inside).

DDPM time is the original timestep t in 0..999 with x_t = a_t x0 + s_t eps, a_t = sqrt(abar_t),
s_t = sqrt(1 - abar_t); `CLEAN` (-1) is the terminal point of a grid (a = 1, s = 0), where DDIM's last step
lands.

Progressive distillation (Salimans & Ho 2022, eq. 8 in our notation): if the teacher goes from x_t to x_s in
several deterministic DDIM steps, the one-step DDIM update x_s = a_s x0 + s_s (x_t - a_t x0) / s_t is linear
in x0, so the x0 (and hence the eps) that makes ONE student step land on the teacher's x_s is
    x0~ = (x_s - (s_s / s_t) x_t) / (a_s - s_s a_t / s_t),      eps~ = (x_t - a_t x0~) / s_t.
The denominator is positive because the signal-to-noise ratio falls with t.

Flow matching (ditkit.diffusion.flow: x_s = (1 - s) x0 + s eps, s = 1 is noise, velocity v = eps - x0) is
sampled deterministically by Euler on dx/ds = v, x_{s'} = x_s + (s' - s) v (which is also DDIM on this path).
Flow grids are noise levels s, descending from 1 to the clean point 0. The velocity whose single Euler step
from (x_s, s) lands on the teacher's x_{s'} is, exactly,
    v~ = (x_{s'} - x_s) / (s' - s)
(a weighted average of the teacher's velocities along its sub-steps, weights (s_{k+1} - s_k) / (s' - s)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "CLEAN",
    "FLOW_CLEAN",
    "alpha_sigma",
    "ddim_step",
    "euler_step",
    "guided",
    "student_target_eps",
    "student_target_velocity",
    "teacher_ddim",
    "teacher_euler",
]

CLEAN = -1  # the clean end of a grid: alpha 1, sigma 0
FLOW_CLEAN = 0.0  # the clean end of a flow grid (noise level 0)


def alpha_sigma(alphas_cumprod: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(a_t, s_t) per sample as (N, 1, 1, 1) float64 tensors; t = CLEAN gives (1, 0)."""
    t = t.long()
    table = alphas_cumprod.to(device=t.device, dtype=torch.float64)
    abar = torch.where(t < 0, torch.ones((), dtype=torch.float64, device=t.device), table[t.clamp(min=0)])
    shape = (-1, 1, 1, 1)
    return abar.sqrt().view(shape), (1.0 - abar).clamp(min=0).sqrt().view(shape)


def ddim_step(x_t: Tensor, eps: Tensor, at: Tensor, st: Tensor, as_: Tensor, ss: Tensor) -> Tensor:
    """One deterministic DDIM step: x_s = a_s x0 + s_s eps with x0 = (x_t - s_t eps) / a_t."""
    x0 = (x_t - st * eps) / at
    return (as_ * x0 + ss * eps).float()


def student_target_eps(x_t: Tensor, x_s: Tensor, at: Tensor, st: Tensor, as_: Tensor, ss: Tensor) -> Tensor:
    """The eps whose single DDIM step from (x_t, t) lands exactly on x_s (see the module docstring)."""
    ratio = ss / st
    x0 = (x_s.double() - ratio * x_t.double()) / (as_ - ratio * at)
    return ((x_t.double() - at * x0) / st).float()


EpsFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> eps (fp32), t: (N,) timesteps


@torch.no_grad()
def teacher_ddim(eps_fn: EpsFn, x_t: Tensor, starts: Tensor, alphas_cumprod: Tensor, path: Tensor) -> Tensor:
    """Run the teacher's deterministic DDIM from x_t along per-sample paths.

    `path` is (N, merge + 1): each row lists the sample's start timestep and the points it steps through, the
    last being where the student's single step must land (CLEAN allowed). `starts` equals path[:, 0].
    """
    assert torch.equal(starts, path[:, 0])
    x = x_t.float()
    for k in range(path.shape[1] - 1):
        t, s = path[:, k], path[:, k + 1]
        at, st = alpha_sigma(alphas_cumprod, t)
        as_, ss = alpha_sigma(alphas_cumprod, s)
        x = ddim_step(x.double(), eps_fn(x, t).double(), at, st, as_, ss)
    return x


def _level(s: Tensor) -> Tensor:
    """Noise levels (N,) as (N, 1, 1, 1) float64."""
    return s.to(torch.float64).view(-1, 1, 1, 1)


def euler_step(x: Tensor, v: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """One Euler step of the flow ODE from noise level s to s_next (N,): x + (s_next - s) v, fp32 result."""
    return (x.double() + (_level(s_next) - _level(s)) * v.double()).float()


def student_target_velocity(x_s: Tensor, x_next: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """The velocity whose single Euler step from (x_s, s) lands exactly on x_next at s_next (s_next < s)."""
    return ((x_next.double() - x_s.double()) / (_level(s_next) - _level(s))).float()


VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_s, s) -> v (fp32), s: (N,) noise levels in [0, 1]


@torch.no_grad()
def teacher_euler(v_fn: VelocityFn, x_s: Tensor, path: Tensor) -> Tensor:
    """Run the teacher's Euler sampler from x_s along per-sample paths of noise levels: `path` is
    (N, merge + 1), row i = sample i's start level and the levels it steps through (the last one is where the
    student's single step must land; FLOW_CLEAN allowed)."""
    x = x_s.float()
    for k in range(path.shape[1] - 1):
        s, s_next = path[:, k], path[:, k + 1]
        x = euler_step(x, v_fn(x, s), s, s_next)
    return x


def guided(cond_out: Tensor, uncond_out: Tensor, w: Tensor, channels: int) -> Tensor:
    """Classifier-free guidance with a per-sample weight w (N,): uncond + w (cond - uncond) on the first
    `channels` (eps) channels; the rest (learned variance) stays conditional. fp32."""
    cond_out, uncond_out = cond_out.float(), uncond_out.float()
    scale = w.float().view(-1, 1, 1, 1)
    out = cond_out.clone()
    out[:, :channels] = uncond_out[:, :channels] + scale * (cond_out[:, :channels] - uncond_out[:, :channels])
    return out
