"""Bring your own scheduler: run any diffusers-style scheduler object (``set_timesteps`` + ``step``) over a
ditkit denoiser, the way diffusers' pipelines drive one."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._loop import Callback, report
from .denoiser import Denoiser

__all__ = ["check_scheduler", "sample_with_scheduler"]


def check_scheduler(scheduler: Any) -> None:
    """A one-line ValueError unless ``scheduler`` has callable ``set_timesteps`` and ``step``."""
    missing = [m for m in ("set_timesteps", "step") if not callable(getattr(scheduler, m, None))]
    if missing:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} has no {' or '.join(m + '()' for m in missing)}; pass a diffusers scheduler "
            "such as DPMSolverMultistepScheduler, or use sampler=NAME"
        )


@torch.no_grad()
def sample_with_scheduler(
    denoiser: Denoiser,
    x_T: Tensor,
    scheduler: Any,
    num_inference_steps: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """diffusers' loop: x = x_T * init_noise_sigma; for each t: the (guided) raw network output at
    ``scale_model_input(x, t)``, its first C channels unless the scheduler's variance is learned, then
    ``x = scheduler.step(out, t, x).prev_sample``. The scheduler should carry the model's betas (DiT: linear
    1e-4 .. 0.02 over 1000 steps). DDPM-kind denoisers only (their time is the scheduler's timestep)."""
    check_scheduler(scheduler)
    if denoiser.kind != "ddpm":
        raise ValueError(
            f"scheduler= drives DDPM models only; this is a {denoiser.kind!r} model, use sampler=NAME"
        )
    scheduler.set_timesteps(num_inference_steps)
    timesteps = list(scheduler.timesteps)
    x = x_T.detach().float() * float(getattr(scheduler, "init_noise_sigma", 1.0))
    variance = getattr(getattr(scheduler, "config", None), "variance_type", None)
    keep_all = variance in ("learned", "learned_range")
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generator} if takes_generator and isinstance(generator, torch.Generator) else {}
    n, c = x.shape[0], x.shape[1]
    for i, t in enumerate(tqdm(timesteps, desc="scheduler", disable=not progress, leave=False)):
        inp = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        tt = torch.full((n,), float(t), dtype=torch.float64, device=x.device)
        raw = denoiser.raw_output(inp.float(), tt).float()
        out = raw if keep_all else raw[:, :c]
        x = scheduler.step(out, t, x, **kwargs).prev_sample.float()
        report(callback, i, len(timesteps), x)
    return x
