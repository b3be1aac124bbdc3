"""Exponential moving average of the weights, with a warmup so short runs are not dominated by the init."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """Decay for the update after optimizer step number `step` (0 for the first update).

    With warmup: min(decay, (1 + step) / (10 + step)), i.e. 0.1, 0.18, 0.25, ... rising towards `decay`.
    A fixed 0.9999 averages over ~10K steps, so a 2K-step run sampled from it would still be mostly its
    random init (the official code has no warmup because its runs last 400K+ steps).
    """
    if not warmup:
        return decay
    return min(decay, (1.0 + step) / (10.0 + step))


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of the model (all parameters and buffers)."""
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, for every parameter; buffers are copied."""
    ema_params = [p for _, p in sorted(ema.named_parameters())]
    params = [p.detach() for _, p in sorted(model.named_parameters())]
    if len(ema_params) != len(params):
        raise ValueError("the EMA model and the model have different parameters")
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for (_, eb), (_, b) in zip(sorted(ema.named_buffers()), sorted(model.named_buffers())):
        eb.copy_(b)
