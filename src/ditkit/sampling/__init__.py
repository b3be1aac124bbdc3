"""Sampling: noise, classifier-free guidance, timestep grids and samplers (pure functions)."""

from .grids import make_sampling_process, sampling_timesteps, space_timesteps
from .guidance import ModelFn, classifier_free_guidance
from .noise import Generators, randn
from .samplers import SAMPLERS, get_sampler, sample_ddim, sample_ddpm

__all__ = [
    "SAMPLERS",
    "Generators",
    "ModelFn",
    "classifier_free_guidance",
    "get_sampler",
    "make_sampling_process",
    "randn",
    "sample_ddim",
    "sample_ddpm",
    "sampling_timesteps",
    "space_timesteps",
]
