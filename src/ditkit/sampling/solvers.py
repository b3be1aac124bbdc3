"""Single-step samplers: DDPM (ancestral), DDIM, Euler, Euler-SDE (ancestral Euler) and Heun.

Every sampler is a pure function ``sample_x(denoiser, x_T, grid, *, generator=None, callback=None)`` over an
explicit descending grid (see ``grids``; an int means that many steps of the sampler's default grid). They
see only the denoiser contract, so they work for every process that implements it. All arithmetic is
float32 on tensors with float64 per-step scalars.

Relations worth knowing: Euler on the probability-flow ODE in the VE coordinates y = x / alpha,
tau = sigma / alpha is exactly the DDIM update x_s = alpha_s x0 + sigma_s eps (and, for a flow model, Euler
in t on the velocity), so "euler" and "ddim" differ only in their default grids. "euler-sde" is DDIM with
eta = 1, i.e. k-diffusion's ancestral Euler.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._loop import Callback, legacy_compatible, prepare, report, steps
from .noise import Generators, randn

__all__ = ["sample_ddim", "sample_ddpm", "sample_euler", "sample_euler_sde", "sample_heun"]


@legacy_compatible
@torch.no_grad()
def sample_ddpm(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral DDPM sampling (ADM's ``p_sample_loop``): x_s ~ N(mean, variance) of the denoiser's reverse
    step t -> s (DiT: the learned variance); the last step (to clean) returns the mean without noise."""
    times, x = prepare("ddpm", denoiser, x_T, grid)
    n = len(times) - 1
    for i, t, s in steps(times, "ddpm", progress):
        pred = denoiser(x, t)
        mean, log_var = denoiser.posterior(pred, x, t, s)
        x = mean
        if i < n - 1:
            scale = torch.exp(0.5 * log_var) if isinstance(log_var, Tensor) else math.exp(0.5 * log_var)
            x = x + scale * randn(x.shape, generator, device=x.device)
        report(callback, i, n, x)
    return x


def _check_eta(eta: float) -> float:
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta}")
    return eta


def _ddim_loop(
    name: str, denoiser: Any, x_T: Tensor, grid: Any, eta: float, generator: Generators, callback, progress
) -> Tensor:
    eta = _check_eta(eta)
    times, x = prepare(name, denoiser, x_T, grid)
    n = len(times) - 1
    for i, t, s in steps(times, name, progress):
        pred = denoiser(x, t)
        a2_t, s2_t = denoiser.alpha_sigma2(t)
        a2_s, s2_s = denoiser.alpha_sigma2(s)
        # sigma of the injected noise (DDIM eq. 16); 0 at the last step (s2_s = 0) and for eta = 0
        c = eta * math.sqrt(s2_s / s2_t) * math.sqrt(max(1.0 - a2_t / a2_s, 0.0)) if s2_s > 0 else 0.0
        direction = math.sqrt(max(s2_s - c**2, 0.0))  # max: rounding guard only
        x = math.sqrt(a2_s) * pred.x0 + direction * pred.eps
        if c > 0.0:
            x = x + c * randn(x.shape, generator, device=x.device)
        report(callback, i, n, x)
    return x


@legacy_compatible
@torch.no_grad()
def sample_ddim(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM (ADM's ``ddim_sample_loop``): x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z with
    c = eta sqrt(sigma_s^2 / sigma_t^2) sqrt(1 - alpha_t^2 / alpha_s^2). eta = 0 is deterministic, eta = 1 has
    DDPM's posterior variance. Learned-variance channels are ignored."""
    return _ddim_loop("ddim", denoiser, x_T, grid, eta, generator, callback, progress)


@torch.no_grad()
def sample_euler(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler on the probability-flow ODE (diffusers' EulerDiscreteScheduler for DDPM models; flow models:
    x_s = x_t + (s - t) v). First order; ``generator`` is unused (deterministic)."""
    return _ddim_loop("euler", denoiser, x_T, grid, 0.0, None, callback, progress)


@torch.no_grad()
def sample_euler_sde(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    eta: float = 1.0,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral Euler (k-diffusion's ``euler_ancestral``; DDIM with eta = 1): a first-order step of the
    reverse SDE that works for any Gaussian path, flow models included. ``eta`` < 1 injects less noise."""
    return _ddim_loop("euler-sde", denoiser, x_T, grid, eta, generator, callback, progress)


def _frame(denoiser: Any, a2: float, s2: float) -> tuple[float, float, float]:
    """(D, tau, k): ODE coordinates y = x / D, tau = sigma / D with dy/dtau = eps - k x0."""
    a, s = math.sqrt(a2), math.sqrt(s2)
    if denoiser.ode_frame == "flow":
        return a + s, s / (a + s), 1.0
    if a <= 0.0:
        raise ValueError("the 've' ODE frame needs alpha > 0 on the whole grid; use ode_frame = 'flow'")
    return a, s / a, 0.0


@torch.no_grad()
def sample_heun(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1; diffusers'
    HeunDiscreteScheduler): an Euler predictor and a trapezoidal corrector, 2 network calls per step except
    the last (Euler to clean), so N steps cost 2N - 1 evaluations. DDPM models step in VE coordinates
    (y = x / alpha, tau = sigma / alpha), flow models in their own (y = x, tau = t)."""
    times, x = prepare("heun", denoiser, x_T, grid)
    n = len(times) - 1
    for i, t, s in steps(times, "heun", progress):
        pred = denoiser(x, t)
        a2_t, s2_t = denoiser.alpha_sigma2(t)
        a2_s, s2_s = denoiser.alpha_sigma2(s)
        if s2_s <= 0.0:  # to clean: the Euler step lands on the prediction
            x = pred.x0
        else:
            d_t, tau_t, k = _frame(denoiser, a2_t, s2_t)
            d_s, tau_s, _ = _frame(denoiser, a2_s, s2_s)
            y, h = x / d_t, tau_s - tau_t
            slope = pred.eps - k * pred.x0
            guess = denoiser((y + h * slope) * d_s, s)
            slope2 = guess.eps - k * guess.x0
            x = (y + (0.5 * h) * (slope + slope2)) * d_s
        report(callback, i, n, x)
    return x
