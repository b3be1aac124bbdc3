"""Samplers: pure functions of (model_fn, process, x_T) over a (respaced) GaussianDiffusion.

``model_fn(x, t)`` returns the raw network output and receives ORIGINAL timesteps (0..999 for DiT): the
samplers step through the indices of ``process`` and map them with ``process.timestep_map``. All sampler
arithmetic is float32 whatever the network's dtype; both samplers use clip_denoised=False, as DiT does for
latents.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..diffusion.process import GaussianDiffusion
from .guidance import ModelFn
from .noise import Generators, randn

__all__ = ["SAMPLERS", "get_sampler", "sample_ddim", "sample_ddpm"]


def _prepare(
    process: GaussianDiffusion, x_T: Tensor, timesteps: Iterable[int] | None
) -> tuple[GaussianDiffusion, Tensor]:
    if not isinstance(process, GaussianDiffusion):
        raise ValueError(f"process must be a GaussianDiffusion, got {type(process).__name__}")
    if timesteps is not None:
        process = process.respace(timesteps)
    return process, x_T.detach().to(torch.float32).clone()


@torch.no_grad()
def sample_ddpm(
    model_fn: ModelFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    timesteps: Iterable[int] | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral DDPM sampling (ADM ``p_sample_loop``) from noise ``x_T`` to x_0.

    Each step draws x_{i-1} ~ N(mean, variance) from :meth:`GaussianDiffusion.p_mean_variance` (the learned
    variance for DiT); the last step (index 0) returns the mean without noise. ``process`` is usually respaced
    by the caller (``base.respace(space_timesteps(1000, "250"))``); alternatively ``timesteps`` (indices of
    ``process`` to keep) respaces it here. ``generator``: None, one generator, or one per sample (see
    :func:`randn`).
    """
    process, x = _prepare(process, x_T, timesteps)
    n = x.shape[0]
    for i in tqdm(range(process.num_timesteps - 1, -1, -1), desc="ddpm", disable=not progress, leave=False):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        out = process.p_mean_variance(model_fn(x, process.model_timesteps(t)), x, t)
        x = out["mean"]
        if i > 0:
            x = x + torch.exp(0.5 * out["log_variance"]) * randn(x.shape, generator, device=x.device)
    return x


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    process: GaussianDiffusion,
    x_T: Tensor,
    *,
    eta: float = 0.0,
    timesteps: Iterable[int] | None = None,
    generator: Generators = None,
    progress: bool = False,
) -> Tensor:
    """DDIM sampling (ADM ``ddim_sample_loop``) over the steps of ``process``.

    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_prev) / (1 - abar)) sqrt(1 - abar / abar_prev) and abar_prev = 1 after the last
    step. eta = 0 is deterministic; eta = 1 has DDPM's posterior variance. The learned-variance channels are
    ignored. Respace ``process`` with ``"ddimN"`` (or pass ``timesteps``) to get fewer network calls.
    """
    eta = float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like noise), got {eta}")
    process, x = _prepare(process, x_T, timesteps)
    n = x.shape[0]
    for i in tqdm(range(process.num_timesteps - 1, -1, -1), desc="ddim", disable=not progress, leave=False):
        t = torch.full((n,), i, device=x.device, dtype=torch.long)
        out = process.p_mean_variance(model_fn(x, process.model_timesteps(t)), x, t)
        # Per-step scalars in float64 (python floats); multiplying fp32 tensors keeps them fp32.
        abar = float(process.alphas_cumprod[i])
        abar_prev = float(process.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar)) * math.sqrt(1.0 - abar / abar_prev)
        direction = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))  # max: rounding guard only
        x = math.sqrt(abar_prev) * out["pred_xstart"] + direction * out["eps"]
        if sigma > 0.0:  # sigma is exactly 0 at the last step (abar_prev = 1) and for eta = 0
            x = x + sigma * randn(x.shape, generator, device=x.device)
    return x


Sampler = Callable[..., Tensor]

SAMPLERS: dict[str, Sampler] = {"ddpm": sample_ddpm, "ddim": sample_ddim}


def get_sampler(name: str) -> Sampler:
    """The sampler function registered under ``name`` (see ``SAMPLERS``)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(sorted(SAMPLERS))}") from None
