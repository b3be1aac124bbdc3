"""Shared plumbing of the samplers: grid preparation, the legacy call form, progress and callbacks."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import DDPMDenoiser, Denoiser
from .grids import check_grid

# callback(step_index, num_steps, x) after every sampler step
Callback = Callable[[int, int, Tensor], Any]


def prepare(name: str, denoiser: Any, x_T: Tensor, grid: Any) -> tuple[list[float], Tensor]:
    """The grid as Python floats (an int = that many steps of the sampler's default grid) and x_T in fp32."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(
            f"{name} samples a ditkit.sampling.Denoiser, got {type(denoiser).__name__}; wrap a network with "
            "DDPMDenoiser(network, process)"
        )
    if not isinstance(x_T, Tensor):
        raise ValueError(f"x_T must be a tensor (N, C, H, W), got {type(x_T).__name__}")
    if isinstance(grid, int) and not isinstance(grid, bool):
        from .registry import get_sampler

        grid = get_sampler(name).make_grid(denoiser, grid)
    g = check_grid(denoiser, grid)
    return g.tolist(), x_T.detach().to(torch.float32).clone()


def steps(times: list[float], name: str, progress: bool) -> Iterator[tuple[int, float, float]]:
    n = len(times) - 1
    for i in tqdm(range(n), desc=name, disable=not progress, leave=False):
        yield i, times[i], times[i + 1]


def report(callback: Callback | None, i: int, n: int, x: Tensor) -> None:
    if callback is not None:
        callback(i, n, x)


def lam(a2: float, s2: float) -> float:
    """Half the log-SNR, log(alpha / sigma), with +-inf at the ends."""
    if s2 <= 0.0:
        return math.inf
    if a2 <= 0.0:
        return -math.inf
    return 0.5 * (math.log(a2) - math.log(s2))


def legacy_compatible(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Also accept the first-round form ``fn(model_fn, process, x_T, *, timesteps=None, ...)`` where
    ``model_fn(x, t)`` is a raw network function and ``process`` a (respaced) ``GaussianDiffusion``."""
    from ..diffusion.process import GaussianDiffusion

    @functools.wraps(fn)
    def wrapper(first: Any, second: Any, *args: Any, **kwargs: Any) -> Tensor:
        if not isinstance(second, GaussianDiffusion):
            return fn(first, second, *args, **kwargs)
        if args:
            x_T, args = args[0], args[1:]
        else:
            x_T = kwargs.pop("x_T")
        process = second
        timesteps = kwargs.pop("timesteps", None)
        if timesteps is not None:
            process = process.respace(timesteps)
        den = first if isinstance(first, Denoiser) else DDPMDenoiser(first, process)
        grid = torch.cat([process.timestep_map.flip(0).double(), torch.tensor([-1.0], dtype=torch.float64)])
        return fn(den, x_T, grid, *args, **kwargs)

    return wrapper
