"""Timestep grids: the explicit descending times a sampler visits, ending at the denoiser's clean point.

A grid for N sampler steps is a float64 tensor of N + 1 times ``[t_0 > t_1 > ... > t_N]`` in the denoiser's
own time variable; ``t_N`` is the clean point (DDPM: -1, where alpha = 1 and sigma = 0). Each step goes from
``t_i`` to ``t_{i+1}`` and evaluates the network at ``t_i`` (Heun also at ``t_{i+1}``).

DDPM spacings (T = 1000 training steps; the names follow the projects they reproduce):

* ``"official"``: ``space_timesteps(T, "N")`` -- evenly strided with both ends (official DiT "250").
* ``"ddim"``: the official integer stride ``"ddimN"`` (= diffusers' DDIMScheduler "leading"), falling back to
  ``"official"`` when no integer stride gives exactly N steps.
* ``"leading"``: ``(arange(N) * (T // N))`` (diffusers' DDIM / Euler "leading").
* ``"linspace"``: ``linspace(0, T - 1, N)`` in float32, fractional times allowed (diffusers' Euler / Heun).
* ``"uniform"``: ``linspace(0, T - 1, N + 1).round()`` without its 0 (diffusers' DPM-Solver / UniPC
  "linspace": the last step goes straight from t ~ T/N to clean).
* ``"trailing"``: ``arange(T, 0, -T / N).round() - 1``.
* ``"karras"``: Karras et al.'s rho = 7 spacing of the VE noise scale sigma/alpha between its values at T-1 and
  0, mapped back to (fractional) t exactly through the denoiser's own interpolation.
* ``"logsnr"``: uniform in log(sigma/alpha) between the same ends (DPM-Solver's choice for pixel space).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diffusion.process import GaussianDiffusion
from ..diffusion.schedules import space_timesteps

__all__ = [
    "DDPM_SPACINGS",
    "check_grid",
    "continuous_grid",
    "ddpm_grid",
    "make_sampling_process",
    "sampling_timesteps",
    "space_timesteps",
]

DDPM_SPACINGS: tuple[str, ...] = (
    "official",
    "ddim",
    "leading",
    "linspace",
    "uniform",
    "trailing",
    "karras",
    "logsnr",
)
CONTINUOUS_SPACINGS: tuple[str, ...] = ("linspace",)


def _check_steps(num_steps: Any, limit: int) -> int:
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or not 1 <= num_steps <= limit
    ):
        raise ValueError(f"the number of steps must be an integer in 1..{limit}, got {num_steps!r}")
    return int(num_steps)


def _ddpm_times(T: int, n: int, spacing: str) -> np.ndarray:
    """Descending float64 network times (without the clean point) for a DDPM spacing."""
    if spacing == "official":
        return np.asarray(space_timesteps(T, str(n)), dtype=np.float64)[::-1]
    if spacing == "ddim":
        try:
            kept = space_timesteps(T, f"ddim{n}")
        except ValueError:
            kept = space_timesteps(T, str(n))
        return np.asarray(kept, dtype=np.float64)[::-1]
    if spacing == "leading":
        return (np.arange(n) * (T // n)).astype(np.float64)[::-1]
    if spacing == "linspace":
        return np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "uniform":
        return np.linspace(0, T - 1, n + 1).round()[::-1][:-1].astype(np.float64)
    if spacing == "trailing":
        return (np.arange(T, 0, -T / n).round() - 1).astype(np.float64)
    raise ValueError(f"unknown grid spacing {spacing!r}; valid spacings: {', '.join(DDPM_SPACINGS)}")


def ddpm_grid(num_train_timesteps: int, num_steps: int, spacing: str = "ddim", **options: Any) -> Tensor:
    """The grid of ``num_steps`` steps over a DDPM process of ``num_train_timesteps`` steps (see the module doc).

    ``options`` for "karras": ``sigmas`` (the VE sigma table at t = 0..T-1) and ``rho`` (default 7)."""
    T = int(num_train_timesteps)
    n = _check_steps(num_steps, T)
    if spacing in ("karras", "logsnr"):
        rho = float(options.get("rho", 7.0)) if spacing == "karras" else None
        times = _karras_times(options["sigmas"], n, rho)
    else:
        times = _ddpm_times(T, n, spacing)
    if len(np.unique(times)) != n:
        raise ValueError(f"the {spacing!r} spacing repeats timesteps for {n} of {T} steps; use fewer steps")
    return torch.from_numpy(np.append(times, -1.0).copy())


def _karras_times(sigmas: np.ndarray, n: int, rho: float | None) -> np.ndarray:
    """Times of the Karras (rho) or, for rho None, log-uniform VE sigmas between sigma(T-1) and sigma(0)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    s_min, s_max = sigmas[0], sigmas[-1]
    ramp = np.linspace(0.0, 1.0, n)
    if rho is None:
        karras = np.exp(np.log(s_max) + ramp * (np.log(s_min) - np.log(s_max)))
    else:
        karras = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    # invert the piecewise-linear sigma(t) (monotone increasing) exactly
    times = np.interp(karras, sigmas, np.arange(len(sigmas), dtype=np.float64))
    times[0], times[-1] = len(sigmas) - 1, 0.0  # no rounding drift at the ends
    return times


def continuous_grid(denoiser: Any, num_steps: int, spacing: str = "linspace", **options: Any) -> Tensor:
    """Uniform in the noise level from ``t_max`` to ``t_clean`` (N + 1 points); ``shift`` s warps the noise
    fraction u as s u / (1 + (s - 1) u) (s > 1 spends more steps at high noise)."""
    n = _check_steps(num_steps, 100_000)
    if spacing not in CONTINUOUS_SPACINGS:
        raise ValueError(
            f"unknown grid spacing {spacing!r}; valid spacings: {', '.join(CONTINUOUS_SPACINGS)}"
        )
    u = np.linspace(1.0, 0.0, n + 1)
    shift = float(options.get("shift", 1.0))
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    u = shift * u / (1.0 + (shift - 1.0) * u)
    t_max, t_clean = float(denoiser.t_max), float(denoiser.t_clean)
    return torch.from_numpy(t_clean + u * (t_max - t_clean))


def check_grid(denoiser: Any, grid: Any) -> Tensor:
    """A validated float64 grid: 1-D, at least two points, strictly descending, finite, ending at clean."""
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu().flatten()
    if g.numel() < 2:
        raise ValueError(
            "a grid needs at least two times (start and the clean point); build one with make_grid"
        )
    if not torch.isfinite(g).all():
        raise ValueError("the grid has non-finite times")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("the grid must be strictly descending (noisiest time first)")
    if float(g[-1]) != float(denoiser.t_clean):
        raise ValueError(f"the grid must end at the denoiser's clean point t = {denoiser.t_clean:g}")
    return g


# ------------------------------------------------------------------------------------------ legacy API
def sampling_timesteps(num_timesteps: int, sampler: str, num_steps: int) -> list[int]:
    """Kept original timesteps (ascending) of the legacy respaced process for ``sampler`` ("ddpm": the
    evenly strided ``"N"``; "ddim": the integer stride ``"ddimN"``, falling back to ``"N"``)."""
    from .registry import get_sampler

    get_sampler(sampler)  # validates the name
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be an integer in [1, {num_timesteps}], got {num_steps!r}")
    if sampler == "ddim":
        try:
            return space_timesteps(num_timesteps, f"ddim{num_steps}")
        except ValueError:
            pass
    return space_timesteps(num_timesteps, str(num_steps))


def make_sampling_process(base: GaussianDiffusion, sampler: str, num_steps: int) -> GaussianDiffusion:
    """Respace ``base`` for the legacy ``sample_x(model_fn, process, x_T)`` calls (see sampling_timesteps)."""
    return base.respace(sampling_timesteps(base.num_timesteps, sampler, num_steps))
