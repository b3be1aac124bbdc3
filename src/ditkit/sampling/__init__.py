"""Sampling: the denoiser contract, guidance wrappers, explicit timestep grids and samplers (pure functions
over one registry, ``SAMPLERS``)."""

from .denoiser import DDPMDenoiser, Denoiser, NFECounter, Prediction
from .grids import (
    DDPM_SPACINGS,
    check_grid,
    ddpm_grid,
    make_sampling_process,
    sampling_timesteps,
    space_timesteps,
)
from .guidance import GuidedDenoiser, ModelFn, check_guidance_interval, classifier_free_guidance
from .multistep import sample_dpmpp_2m, sample_unipc
from .noise import Generators, randn
from .registry import SAMPLERS, SamplerSpec, get_sampler, register_sampler, sampler_names
from .scheduler import check_scheduler, sample_with_scheduler
from .solvers import sample_ddim, sample_ddpm, sample_euler, sample_euler_sde, sample_heun

__all__ = [
    "DDPM_SPACINGS",
    "SAMPLERS",
    "DDPMDenoiser",
    "Denoiser",
    "Generators",
    "GuidedDenoiser",
    "ModelFn",
    "NFECounter",
    "Prediction",
    "SamplerSpec",
    "check_grid",
    "check_guidance_interval",
    "check_scheduler",
    "classifier_free_guidance",
    "ddpm_grid",
    "get_sampler",
    "make_sampling_process",
    "randn",
    "register_sampler",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_euler",
    "sample_euler_sde",
    "sample_heun",
    "sample_unipc",
    "sample_with_scheduler",
    "sampler_names",
    "sampling_timesteps",
    "space_timesteps",
]

try:  # the flow-matching denoiser (ditkit.sampling.flow), where present
    from .flow import FlowDenoiser  # noqa: F401

    __all__ += ["FlowDenoiser"]
except ModuleNotFoundError as err:  # pragma: no cover - only while the module does not exist
    if err.name not in (f"{__name__}.flow", "ditkit.diffusion.flow"):
        raise
