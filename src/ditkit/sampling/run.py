"""One sampling run from a network: denoiser, grid, guidance, sampler (or a diffusers scheduler), checks.

This is what ``DiTPipeline.__call__`` does after it has turned labels into a condition and drawn the noise;
``ditkit sample`` and bulk sampling reach it through the pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .denoiser import DDPMDenoiser, Denoiser, NFECounter
from .guidance import GuidedDenoiser, check_guidance_interval
from .registry import get_sampler
from .scheduler import check_scheduler, sample_with_scheduler

__all__ = ["SamplingRequest", "check_guide_model", "check_steps", "run_sampling"]

ETA_SAMPLERS = ("ddim", "euler-sde")


@dataclass
class SamplingRequest:
    """What to sample with: ``make_denoiser(network, cond, counter)`` builds the unguided denoiser of the
    process (DDPM or flow); ``cond``/``null`` the condition and its null (None: unconditional)."""

    make_denoiser: Callable[[Any, Any, NFECounter], Denoiser]
    network: Any
    cond: Any = None
    null: Any = None
    has_null: bool = True
    sampler: str = "ddim"
    steps: int | None = None
    spacing: str | None = None
    grid: Any = None
    guidance_scale: float = 1.0
    guidance_channels: int | None = None
    guidance_interval: Any = None
    guide_model: Any = None
    scheduler: Any = None
    eta: float = 0.0
    callback: Any = None
    progress: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def check_steps(steps: Any, limit: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= limit:
        raise ValueError(f"num_inference_steps must be an integer in 1..{limit}, got {steps!r}")
    return steps


def check_guide_model(model: Any, guide: Any) -> None:
    """The guide must be a network of the same kind: same input shape, output channels and conditioning."""
    if not hasattr(guide, "config"):
        raise ValueError(
            f"guide_model must be a ditkit DiT (load it with ditkit.load_model), got {type(guide).__name__}"
        )
    a, b = model.config, guide.config
    for name in ("in_channels", "input_size", "learn_sigma", "num_classes", "cond_dim", "time_input"):
        if getattr(a, name, None) != getattr(b, name, None):
            raise ValueError(
                f"the guide model (guide_model, --guide-ckpt) has {name} {getattr(b, name, None)!r} but the model has "
                f"{getattr(a, name, None)!r}; autoguidance needs a model of the same kind (e.g. an earlier checkpoint)"
            )


class GuidanceInput:
    """A guidance-distilled network (``config.guidance_embed``) called with w = the guidance scale: guidance
    costs no second forward."""

    def __init__(self, network: Any, scale: float) -> None:
        self.network, self.scale, self.config = network, float(scale), network.config

    def __call__(self, x: Tensor, t: Tensor, y: Any = None) -> Tensor:
        w = torch.full((x.shape[0],), self.scale, dtype=torch.float32, device=x.device)
        return self.network(x, t, y, w=w)


def _guided(req: SamplingRequest, base: Denoiser, grid: Tensor) -> tuple[Denoiser, str | None, float]:
    scale = float(req.guidance_scale)
    if not math.isfinite(scale):
        raise ValueError(f"guidance_scale must be a finite number (1 = no guidance), got {scale}")
    if isinstance(base.network, GuidanceInput):
        if req.guide_model is not None:
            raise ValueError(
                "a guidance-distilled model takes w directly; autoguidance (guide_model) does not apply"
            )
        return base, "distilled" if scale != 1.0 else None, scale
    if req.guide_model is not None:
        check_guide_model(req.network, req.guide_model)
        guide = req.make_denoiser(req.guide_model, req.cond, base.counter)
        guide = guide.for_grid(grid) if isinstance(guide, DDPMDenoiser) else guide
        mode = "autoguidance" if scale != 1.0 else None
        den = GuidedDenoiser(
            base, scale, guide=guide, guidance_channels=req.guidance_channels, interval=req.guidance_interval
        )
        return den, mode, scale
    if req.cond is None or scale == 1.0:
        return base, None, 1.0  # unconditional models are sampled unguided: the scale does not apply
    if not req.has_null:
        raise ValueError(
            "guidance needs a null label, but this model was trained without label dropout "
            "(class_dropout_prob=0); use guidance_scale=1"
        )
    den = GuidedDenoiser(
        base,
        scale,
        null_cond=req.null,
        guidance_channels=req.guidance_channels,
        interval=req.guidance_interval,
    )
    return den, "cfg", scale


def _nonfinite(out: Tensor, network: Any) -> None:
    if torch.isfinite(out).all():
        return
    bad = next((n for n, p in network.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise ValueError(
            f"the model's weight {bad!r} holds NaN/inf, so every sample is NaN; the checkpoint is damaged or its "
            "training diverged: load another checkpoint"
        )
    raise ValueError(
        "sampling produced NaN/inf values; lower the guidance scale, use more steps or another sampler"
    )


def run_sampling(req: SamplingRequest, x_T: Tensor, generator: Any = None) -> tuple[Tensor, dict[str, Any]]:
    """Sample from noise ``x_T``; returns (x_0, info) with info = sampler, steps, guidance_scale,
    guidance_interval, guidance, grid, nfe."""
    counter = NFECounter()
    network = req.network
    if getattr(network.config, "guidance_embed", False):
        scale = float(req.guidance_scale)
        if not math.isfinite(scale):
            raise ValueError(f"guidance_scale must be a finite number (1 = no guidance), got {scale}")
        network = GuidanceInput(network, scale)
    base = req.make_denoiser(network, req.cond, counter)
    interval = check_guidance_interval(req.guidance_interval)
    if req.scheduler is not None:
        check_scheduler(req.scheduler)
        steps = check_steps(
            50 if req.steps is None else req.steps, getattr(base, "num_train_timesteps", 1000)
        )
        den, mode, scale = _guided(req, base, torch.tensor([0.0]))
        single = generator if isinstance(generator, torch.Generator) else None
        out = sample_with_scheduler(
            den, x_T, req.scheduler, steps, generator=single, callback=req.callback, progress=req.progress
        )
        name = type(req.scheduler).__name__
        grid = [float(t) for t in req.scheduler.timesteps]
        spacing = None
    else:
        spec = get_sampler(req.sampler)
        spec.check_kind(base)
        limit = getattr(base, "num_train_timesteps", 100_000)
        steps = check_steps(spec.default_steps if req.steps is None else req.steps, limit)
        if req.eta and req.sampler not in ETA_SAMPLERS:
            raise ValueError(f"eta applies to the {' and '.join(ETA_SAMPLERS)} samplers only")
        if req.grid is not None:
            from .grids import check_grid

            grid_t = check_grid(base, req.grid)
            steps = len(grid_t) - 1
        else:
            grid_t = spec.make_grid(base, steps, req.spacing)
        if isinstance(base, DDPMDenoiser):
            base = base.for_grid(grid_t)
        den, mode, scale = _guided(req, base, grid_t)
        # ddim: eta as given (0 = deterministic); euler-sde: its own eta = 1 unless one > 0 is given
        kwargs = (
            {"eta": req.eta} if req.sampler == "ddim" or (req.sampler in ETA_SAMPLERS and req.eta) else {}
        )
        out = spec.fn(
            den, x_T, grid_t, generator=generator, callback=req.callback, progress=req.progress, **kwargs
        )
        name, grid = spec.name, [float(t) for t in grid_t]
        spacing = req.spacing or (spec.spacing if base.kind == "ddpm" else None)
    _nonfinite(out, req.network)
    info = {
        "sampler": name,
        "steps": steps,
        "guidance_scale": scale,
        "guidance": mode,
        "guidance_interval": list(interval) if interval is not None and mode else None,
        "grid": grid,
        "spacing": spacing,
        "nfe": counter.calls,
    }
    return out, info
