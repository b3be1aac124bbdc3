"""Classifier-free guidance as a wrapper that turns a conditional network into a guided ``model_fn``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["ModelFn", "classifier_free_guidance"]

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
        n, channels = x.shape[0], x.shape[1]
        if cond.shape[0] != n:
            raise ValueError(f"cond has batch {cond.shape[0]} but x has batch {n}; they must match")
        k = channels if guidance_channels is None else guidance_channels
        if k > channels:
            raise ValueError(f"guidance_channels={k} exceeds the {channels} epsilon channels of x")
        out = model(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), both_cond)
        # Guidance arithmetic in fp32 even for a bf16 network: s * (cond - uncond) amplifies rounding error.
        out_cond, out_uncond = out.float().chunk(2, dim=0)
        result = out_cond.clone()
        result[:, :k] = out_uncond[:, :k] + scale * (out_cond[:, :k] - out_uncond[:, :k])
        return result

    return guided
