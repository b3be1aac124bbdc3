"""Timestep grids: which steps of the 1000-step training process a sampler visits."""

from __future__ import annotations

from ..diffusion.process import GaussianDiffusion
from ..diffusion.schedules import space_timesteps
from .samplers import get_sampler

__all__ = ["make_sampling_process", "sampling_timesteps", "space_timesteps"]


def sampling_timesteps(num_timesteps: int, sampler: str, num_steps: int) -> list[int]:
    """Kept original timesteps (ascending) for ``sampler`` with ``num_steps`` network calls.

    "ddpm": ``space_timesteps(T, str(num_steps))``, evenly strided with both ends (official DiT, 250 steps).
    "ddim": the integer DDIM stride ``"ddim{num_steps}"`` (identical to diffusers' DDIMScheduler with
    "leading" spacing). When no integer stride yields exactly ``num_steps`` steps (e.g. 300 of 1000) it falls
    back to the evenly strided grid ``str(num_steps)``, so every requested step count works and gives exactly
    that many calls.
    """
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
    """Respace the training process ``base`` for ``sampler`` with ``num_steps`` steps (see
    :func:`sampling_timesteps`)."""
    return base.respace(sampling_timesteps(base.num_timesteps, sampler, num_steps))
