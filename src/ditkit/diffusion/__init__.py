"""Diffusion process: noise schedules, respacing, the Gaussian DDPM process and its hybrid loss."""

from .losses import approx_standard_normal_cdf, discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .process import VARIANCE_TYPES, GaussianDiffusion
from .schedules import SCHEDULES, get_betas, space_timesteps

__all__ = [
    "SCHEDULES",
    "VARIANCE_TYPES",
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "get_betas",
    "mean_flat",
    "normal_kl",
    "space_timesteps",
]
