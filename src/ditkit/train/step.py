"""One optimisation step: the random draws of the global batch, forward/backward over the micro-batches
(gradient accumulation, DDP's no_sync, autocast, the fp16 loss scaler), clipping, the optimizer, EMA.

Every random draw of a step is made for the *global* batch from the run's generator, in a fixed order
(objective draws, label dropout, flips, the VAE posterior sample); each process takes its slice. So a step
sees the same samples and noise whatever the number of processes or the accumulation split.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .ema import ema_decay, update_ema
from .objectives import draw_inputs


@dataclass
class Draws:
    """The random inputs of one global batch."""

    idx: Tensor  # (B,) data-set indices
    t: Tensor | None  # (B,) objective time (None: the objective draws inside `losses`)
    noise: Tensor | None  # (B, C, H, W)
    drop: Tensor | None  # (B,) or (B, K) booleans: conditions replaced by the null
    flip: Tensor | None  # (B,) booleans: horizontal flips
    posterior: Tensor | None  # (B, C, H, W) N(0, I) for the VAE posterior sample


@dataclass
class StepResult:
    loss: Tensor  # () this process's mean loss of the step (not yet all-reduced)
    grad_norm: Tensor | None  # the global gradient norm when measured
    t: Tensor  # (n,) noise levels in [0, 1] of this process's samples
    losses: Tensor  # (n,) their per-sample losses
    bad_index: Tensor  # () the data-set index of the first non-finite input of this process, or -1


def draw(run: Any, objective: Any, stream: Any, generator: torch.Generator, step: int) -> Draws:
    """The global batch's random draws for `step`, always in this order (checkpoints rely on it)."""
    config, n = run.config, run.config.train.batch_size
    idx = stream.batch(step, n)
    t, noise = draw_inputs(objective, n, run.sample_shape, generator)
    labels = run.dataset.labels[idx] if run.conditioning.has_labels else None
    drop = run.conditioning.drop_mask(labels, n, generator)
    flip = torch.rand(n, generator=generator) < 0.5 if config.data.hflip else None
    post = torch.randn((n, *run.sample_shape), generator=generator) if run.codec is not None else None
    return Draws(idx, t, noise, drop, flip, post)


def micro_inputs(
    run: Any, batch: Any, part: slice, draws: Draws, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """(x0, condition) of one micro-batch on `device`: flips, the VAE posterior sample, embeddings, dropout."""
    x, cond, codec = batch.images, None, run.codec
    if run.is_cache:
        # (n, 2, 2, C, h, w): pick the stored mirror for flipped samples, then a fresh posterior sample
        rows = torch.arange(x.shape[0])
        orient = draws.flip[part].long() if draws.flip is not None else torch.zeros_like(rows)
        moments = x[rows, orient].to(device, non_blocking=True)  # (n, 2, C, h, w)
        x = (moments[:, 0] + moments[:, 1] * draws.posterior[part].to(device)) * codec.scaling_factor
    else:
        if draws.flip is not None:
            x = torch.where(draws.flip[part].view(-1, 1, 1, 1), x.flip(-1), x)
        x = x.to(device, non_blocking=True)
        if run.encoder is not None:  # the embedding of the image the model sees, in [-1, 1] pixels
            with torch.no_grad():
                cond = run.encoder.encode_image(x).float().to(device)
        if codec is not None:
            with torch.no_grad():
                mean, std = codec.encode_posterior(x)
                x = (mean + std * draws.posterior[part].to(device)) * codec.scaling_factor
    if run.conditioning.has_labels:
        cond = batch.labels  # the labels of the images actually read (replacements bring their own)
    if cond is not None and draws.drop is not None:
        cond = run.conditioning.apply_drop(cond, draws.drop[part])
    return x, (cond.to(device) if cond is not None else None)


@dataclass
class StepContext:
    """What the step function needs besides the state: the wrapped model, precision and settings."""

    model: nn.Module  # the network, or its DDP wrapper
    objective: Any
    device: torch.device
    autocast: Any  # a callable returning a fresh autocast context
    scaler: Any = None  # torch.amp.GradScaler for fp16
    distributed: bool = False


def _first_bad(x: Tensor, idx: Tensor) -> Tensor:
    bad = ~torch.isfinite(x.flatten(1)).all(1)
    return torch.where(bad.any(), idx.to(x.device)[bad.int().argmax()], torch.tensor(-1, device=x.device))


def train_step(state: Any, ctx: StepContext, run: Any, micro: list, slices: list[slice], draws: Draws,
               *, measure_grad: bool) -> StepResult:  # fmt: skip
    """Forward/backward over this process's micro-batches, then clip, step, EMA; advances state.step."""
    tcfg, accum = run.config.train, len(micro)
    params = [p for p in state.net.parameters() if p.requires_grad]
    step_loss = torch.zeros((), device=ctx.device)
    bad = torch.tensor(-1, device=ctx.device)
    ts, losses = [], []
    for m, (batch, part) in enumerate(zip(micro, slices)):
        x, cond = micro_inputs(run, batch, part, draws, ctx.device)
        bad = torch.where(bad >= 0, bad, _first_bad(x, draws.idx[part]))
        last = not ctx.distributed or m == accum - 1
        with contextlib.nullcontext() if last else ctx.model.no_sync():
            with ctx.autocast():
                terms = ctx.objective.losses(
                    ctx.model, x, cond,
                    t=draws.t[part].to(ctx.device) if draws.t is not None else None,
                    noise=draws.noise[part].to(ctx.device) if draws.noise is not None else None,
                    generator=None if draws.t is not None else state.generator,
                )  # fmt: skip
            loss = terms["loss"].float().mean()  # fp32: the objective casts the network output first
            scaled = loss / accum
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        step_loss += loss.detach() / accum
        losses.append(terms["loss"].detach().float())
        ts.append(terms.get("t", torch.full_like(losses[-1], float("nan"))).detach().float())
    grad_norm = _clip_and_step(state, ctx, params, tcfg.grad_clip, measure_grad)
    update_ema(state.ema, state.net, ema_decay(state.step, tcfg.ema_decay, tcfg.ema_warmup))
    state.step += 1
    return StepResult(step_loss, grad_norm, torch.cat(ts), torch.cat(losses), bad)


def _clip_and_step(state: Any, ctx: StepContext, params: list, clip: float, measure: bool) -> Tensor | None:
    if ctx.scaler is not None:
        ctx.scaler.unscale_(state.optimizer)
    grad_norm = None
    if clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
    elif measure:
        grads = [p.grad.detach().float() for p in params if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if ctx.scaler is not None:
        ctx.scaler.step(state.optimizer)
        ctx.scaler.update()
    else:
        state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return grad_norm
