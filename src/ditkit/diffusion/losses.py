"""Likelihood helpers for the variational bound: Gaussian KL and the discretized decoder NLL (in nats)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["approx_standard_normal_cdf", "discretized_gaussian_log_likelihood", "mean_flat", "normal_kl"]


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension except the batch dimension: (N, ...) -> (N,)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (broadcasting)."""
    # Working with log-variances keeps this finite for the tiny variances near t = 0.
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """The tanh approximation of the standard normal CDF used by ADM.

    Kept (rather than the exact erf) so that our VLB values match the official training losses.
    """
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: Tensor, *, means: Tensor, log_scales: Tensor) -> Tensor:
    """Elementwise log-likelihood (nats) of data ``x`` in [-1, 1] under a Gaussian discretized into 256 bins.

    Each value owns a bin of width 2/255 centred on it; the outermost bins extend to +-infinity. DiT applies
    this to continuous latents, which is only a rough stand-in for a decoder likelihood, but it is the
    official t = 0 term and only affects the (tiny) variance gradient at t = 0.
    """
    if not (x.shape == means.shape == log_scales.shape):
        raise ValueError(
            f"x, means and log_scales must have the same shape, got {tuple(x.shape)}, "
            f"{tuple(means.shape)}, {tuple(log_scales.shape)}"
        )
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    # Clamp before the log: far in the tails the CDF difference underflows to 0.
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )
