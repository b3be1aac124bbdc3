"""Multistep exponential-integrator samplers on the data prediction: DPM-Solver++(2M) and UniPC (bh2).

Both work in lambda = log(alpha / sigma) with the denoiser's x0 prediction, one network call per step, and
reproduce diffusers' ``DPMSolverMultistepScheduler`` / ``UniPCMultistepScheduler`` with their default options
(order 2, final sigma zero, lower-order final step) on the same grid ("uniform" spacing there).
A step whose history touches lambda = -inf (a flow model's pure-noise start) drops to first order.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._loop import Callback, lam, prepare, report, steps
from .noise import Generators

__all__ = ["sample_dpmpp_2m", "sample_unipc"]


def _coords(denoiser: Any, t: float) -> tuple[float, float, float]:
    a2, s2 = denoiser.alpha_sigma2(t)
    return math.sqrt(a2), math.sqrt(s2), lam(a2, s2)


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "midpoint" form): with h = lambda_s - lambda_t and
    r = (lambda_t - lambda_prev) / h, x_s = sigma_s / sigma_t x_t - alpha_s (e^-h - 1) (D0 + D1 / 2),
    D0 = x0_t, D1 = (x0_t - x0_prev) / r. The first step and the last (to clean) are first order (= DDIM)."""
    times, x = prepare("dpm++2m", denoiser, x_T, grid)
    n = len(times) - 1
    prev: tuple[Tensor, float] | None = None
    for i, t, s in steps(times, "dpm++2m", progress):
        m = denoiser(x, t).x0
        a_t, s_t, lam_t = _coords(denoiser, t)
        a_s, s_s, lam_s = _coords(denoiser, s)
        if s_s == 0.0:
            x = m
        else:
            h = lam_s - lam_t
            phi = math.exp(-h) - 1.0
            x_new = (s_s / s_t) * x - (a_s * phi) * m
            if prev is not None and math.isfinite(prev[1]) and math.isfinite(lam_t):
                r = (lam_t - prev[1]) / h
                x_new = x_new - (0.5 * a_s * phi) * ((1.0 / r) * (m - prev[0]))
            x = x_new
        prev = (m, lam_t)
        report(callback, i, n, x)
    return x


def _unip(
    x: Tensor, hist: list[tuple[Tensor, float]], order: int, a_s: float, s_s: float, s_t: float, lam_s: float
):
    """UniP-bh2 predictor from time t (hist[-1] = (x0_t, lambda_t)) to s."""
    m0, lam_t = hist[-1]
    if s_s == 0.0:
        return m0
    h = lam_s - lam_t
    b_h = math.expm1(-h)  # bh2: B(h) = e^-h - 1 (= h phi_1 with predict_x0)
    x_new = (s_s / s_t) * x - (a_s * b_h) * m0
    if order == 2:
        m1, lam_1 = hist[-2]
        r = (lam_1 - lam_t) / h
        x_new = x_new - (a_s * b_h * 0.5) * ((m1 - m0) / r)
    return x_new


def _unic(
    x_last: Tensor,
    hist: list[tuple[Tensor, float]],
    m_new: Tensor,
    order: int,
    a_t: float,
    s_t: float,
    s_prev: float,
    lam_t: float,
) -> Tensor:
    """UniC-bh2 corrector of the sample at t (predicted from x_last at the previous time, hist[-1]) with the
    fresh model output m_new at t; ``order`` is the predictor's order (the corrector is one order higher)."""
    m0, lam_0 = hist[-1]
    h = lam_t - lam_0
    hh = -h
    phi1 = math.expm1(hh)
    b_h = phi1
    x_base = (s_t / s_prev) * x_last - (a_t * phi1) * m0
    d1_t = m_new - m0
    if order == 1:
        return x_base - (a_t * b_h * 0.5) * d1_t
    m1, lam_1 = hist[-2]
    rk = (lam_1 - lam_0) / h
    d1 = (m1 - m0) / rk
    phi_k = phi1 / hh - 1.0
    b1 = phi_k / b_h
    phi_k = phi_k / hh - 0.5
    b2 = phi_k * 2.0 / b_h
    # solve [[1, 1], [rk, 1]] rho = [b1, b2]
    rho0 = (b1 - b2) / (1.0 - rk)
    rho1 = b1 - rho0
    return x_base - (a_t * b_h) * (rho0 * d1 + rho1 * d1_t)


@torch.no_grad()
def sample_unipc(
    denoiser: Any,
    x_T: Tensor,
    grid: Any,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """UniPC (Zhao et al. 2023), B(h) = e^-h - 1 ("bh2"), order 2 on x0: at each time the fresh model output
    first corrects the sample it was evaluated at (UniC, no extra call), then the UniP predictor steps on.
    Orders: 1 at the first and last steps, 2 in between (diffusers' warm-up and lower_order_final)."""
    times, x = prepare("unipc", denoiser, x_T, grid)
    n = len(times) - 1
    hist: list[tuple[Tensor, float]] = []
    x_last, last_order = x, 1
    for i, t, s in steps(times, "unipc", progress):
        m = denoiser(x, t).x0
        a_t, s_t, lam_t = _coords(denoiser, t)
        if hist:
            _, s_prev, _ = _coords(denoiser, times[i - 1])
            order_c = last_order if all(math.isfinite(v) for _, v in hist[-2:]) else 1
            x = _unic(x_last, hist, m, order_c, a_t, s_t, s_prev, lam_t)
        hist = (hist + [(m, lam_t)])[-2:]
        order = min(2, n - i, len(hist))
        if order == 2 and not all(math.isfinite(v) for _, v in hist):
            order = 1
        a_s, s_s, lam_s = _coords(denoiser, s)
        x_last = x
        x = _unip(x, hist, order, a_s, s_s, s_t, lam_s)
        last_order = order
        report(callback, i, n, x)
    return x
