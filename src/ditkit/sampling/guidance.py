"""Guidance: classifier-free guidance (with an optional guidance interval) and autoguidance as wrappers.

:class:`GuidedDenoiser` turns a conditional denoiser into another denoiser (what every sampler takes);
:func:`classifier_free_guidance` is the first-round form on raw network functions ``model_fn(x, t)``. Both
combine RAW network outputs on the first ``guidance_channels`` channels (eps for DDPM, velocity for flow:
both are affine in x0, so this is the same as guiding the prediction) and take every other channel, including
DiT's learned-variance channels, from the conditional output; ``guidance_channels=3`` is the official DiT
``forward_with_cfg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .denoiser import Denoiser, Prediction

__all__ = ["GuidedDenoiser", "ModelFn", "check_guidance_interval", "classifier_free_guidance", "combine"]

# The sampler contract: raw network output (N, C or 2C, H, W) for x (N, C, H, W) and ORIGINAL timesteps (N,).
ModelFn = Callable[[Tensor, Tensor], Tensor]


def _null_like(null_cond: Any, cond: Tensor) -> Tensor:
    # An int / 0-d null (e.g. the null class index) is broadcast to the conditioning's shape for convenience.
    null = torch.as_tensor(null_cond, device=cond.device)
    if null.ndim == 0:
        return torch.full_like(cond, null.item())
    null = null.to(dtype=cond.dtype)
    try:
        broadcastable = torch.broadcast_shapes(null.shape, cond.shape) == cond.shape
    except RuntimeError:
        broadcastable = False
    if not broadcastable:
        raise ValueError(
            f"null_cond shape {tuple(null.shape)} must match (or broadcast to) cond shape {tuple(cond.shape)}"
        )
    # A shared null embedding of shape (D,) or (1, D) is expanded to one row per sample.
    return null.expand_as(cond)


def classifier_free_guidance(
    model: Callable[[Tensor, Tensor, Tensor], Tensor],
    cond: Tensor,
    null_cond: Tensor | int,
    scale: float,
    guidance_channels: int | None = None,
) -> ModelFn:
    """Wrap ``model(x, t, cond)`` into a guided ``model_fn(x, t)``.

    Each call runs ONE forward pass on the doubled batch ``cat([x, x])`` with ``cat([cond, null_cond])`` and
    returns ``uncond + scale * (cond - uncond)`` on the first ``guidance_channels`` output channels (default:
    all ``x.shape[1]`` epsilon channels); every other channel, including the learned-variance channels, is the
    conditional output. ``guidance_channels=3`` reproduces the official DiT ``forward_with_cfg`` (which guides
    3 of the 4 latent channels, a leftover from GLIDE's RGB code) for exact comparison with published samples.

    With ``scale == 1`` guidance is a no-op, so the plain conditional model is returned (no doubled batch), as
    the official sampler does. ``cond`` may be class ids (N,), multi-label ids (N, K) or float embeddings; a
    scalar ``null_cond`` (e.g. the null class index ``num_classes``) or a shared null embedding is broadcast
    to cond's shape.
    """
    if not isinstance(cond, Tensor):
        raise ValueError("cond must be a tensor with the batch on dim 0")
    if guidance_channels is not None and guidance_channels < 1:
        raise ValueError(
            f"guidance_channels must be None (all epsilon channels) or >= 1, got {guidance_channels}"
        )
    scale = float(scale)
    null = _null_like(null_cond, cond)

    if scale == 1.0:

        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return model(x, t, cond)

        return conditional

    both_cond = torch.cat([cond, null], dim=0)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        n = x.shape[0]
        if cond.shape[0] != n:
            raise ValueError(f"cond has batch {cond.shape[0]} but x has batch {n}; they must match")
        out = model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both_cond)
        out_cond, out_uncond = out.float().chunk(2, dim=0)
        return combine(out_cond, out_uncond, scale, guidance_channels, x.shape[1])

    return guided


def combine(
    out_cond: Tensor, out_ref: Tensor, scale: float, guidance_channels: int | None, channels: int
) -> Tensor:
    """``ref + scale * (cond - ref)`` on the first ``guidance_channels`` channels (None: all ``channels``);
    every other channel is the conditional output. fp32 even for a bf16 network: scale * (cond - ref)
    amplifies rounding error."""
    k = channels if guidance_channels is None else guidance_channels
    if k > channels:
        raise ValueError(f"guidance_channels={k} exceeds the {channels} epsilon channels of x")
    out_cond, out_ref = out_cond.float(), out_ref.float()
    result = out_cond.clone()
    result[:, :k] = out_ref[:, :k] + scale * (out_cond[:, :k] - out_ref[:, :k])
    return result


def check_guidance_interval(interval: Any) -> tuple[float, float] | None:
    """None, or (lo, hi) with 0 <= lo <= hi <= 1 (fractions of the noise range; lo == hi is empty)."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(
            f"guidance_interval must be two numbers (lo, hi) in [0, 1], e.g. (0.0, 0.7), got {interval!r}"
        ) from None
    if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
        raise ValueError(
            f"guidance_interval ({lo:g}, {hi:g}) must lie in [0, 1] (fractions of the noise range)"
        )
    if lo > hi:
        raise ValueError(f"guidance_interval ({lo:g}, {hi:g}) has lo > hi; give (lo, hi) with lo <= hi")
    return lo, hi


class GuidedDenoiser(Denoiser):
    """A denoiser guided by the null condition (classifier-free guidance) or by a weaker model (autoguidance).

    CFG: one forward on the doubled batch ``[x; x]`` with ``[cond; null]`` (one NFE per image pair).
    Autoguidance (Karras et al. 2024): ``guide`` is a denoiser of the same process and condition (e.g. an
    earlier checkpoint); the result is ``guide + scale * (model - guide)``; it costs two calls per step (the
    model's and the guide's, both counted). ``interval=(lo, hi)``: only steps whose noise level (1 = noise)
    lies in [lo, hi] are guided, the others run the plain conditional model once; (0, 1) guides every
    step, lo == hi none. Everything but the raw output (the process, grids, posterior) is the base's.
    """

    def __init__(
        self,
        base: Denoiser,
        scale: float,
        *,
        null_cond: Any = None,
        guide: Denoiser | None = None,
        guidance_channels: int | None = None,
        interval: Any = None,
    ) -> None:
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"the guidance scale must be a finite number, got {scale}")
        if guidance_channels is not None and guidance_channels < 1:
            raise ValueError(
                f"guidance_channels must be None (all channels) or >= 1, got {guidance_channels}"
            )
        if guide is None and base.cond is None and scale != 1.0:
            raise ValueError(
                "classifier-free guidance needs a conditional denoiser; pass guide= for autoguidance"
            )
        self.base, self.scale, self.guide = base, scale, guide
        self.guidance_channels = guidance_channels
        self.interval = check_guidance_interval(interval)
        self.null = None if guide is not None or base.cond is None else _null_like(null_cond, base.cond)
        self.network, self.cond, self.counter = base.network, base.cond, base.counter
        for name in ("kind", "ode_frame", "t_max", "t_clean"):
            setattr(self, name, getattr(base, name))

    def guided_at(self, t: float) -> bool:
        if self.scale == 1.0:
            return False
        if self.interval is None:
            return True
        lo, hi = self.interval
        return lo < hi and lo <= self.base.noise_level(t) <= hi

    def raw_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The (guided) raw network output at x_t, t (t: one float64 time per sample)."""
        base = self.base
        if not self.guided_at(float(t[0])):
            return base.forward_raw(x_t, t, base.cond)
        if self.guide is not None:
            out_cond = base.forward_raw(x_t, t, base.cond)
            out_ref = self.guide.forward_raw(x_t, t, self.guide.cond)
        else:
            out = base.forward_raw(
                torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([base.cond, self.null])
            )
            out_cond, out_ref = out.chunk(2, dim=0)
        return combine(out_cond, out_ref, self.scale, self.guidance_channels, x_t.shape[1])

    # the process is the base's
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return self.base.alpha_sigma(t)

    def alpha_sigma2(self, t: float) -> tuple[float, float]:
        return self.base.alpha_sigma2(t)

    def noise_level(self, t: float | Tensor) -> float:
        return self.base.noise_level(t)

    def network_time(self, t: Tensor) -> Tensor:
        return self.base.network_time(t)

    def predict(self, raw: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        return self.base.predict(raw, x_t, t)

    def make_grid(self, num_steps: int, spacing: str | None = None, **options: Any) -> Tensor:
        return self.base.make_grid(num_steps, spacing, **options)

    def posterior(self, pred: Prediction, x_t: Tensor, t: float, s: float) -> tuple[Tensor, Tensor | float]:
        return self.base.posterior(pred, x_t, t, s)
