"""Starting a run: the checkpoint to resume (checked before anything is created), the training state
(fresh, resumed or initialised from other weights), the run folder (never a user's own folder) and its
lock, the lines that open the log, and the measured seconds per step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig
from ..io.native import prepare_output_dir
from ..models import ModelConfig
from ..presets import build_model
from . import distributed as D
from .checkpoint import RunLock, is_run_dir, mark_run_dir, new_run_dir, resolve_resume, run_dir_of
from .ema import make_ema
from .optim import LRSchedule, build_optimizer
from .setup import Run, check_resume_config
from .state import TrainState, check_weights, describe_schedule, read_checkpoint, validate_checkpoint
from .step import draw, micro_inputs


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first tensor holding NaN/inf, or None."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


@dataclass
class Resume:
    path: Path
    ckpt: dict[str, Any]

    @classmethod
    def read(cls, resume: Any, preloaded: dict | None, config: RunConfig, mcfg: ModelConfig) -> Resume:
        """Read and check the checkpoint to resume before anything is created, so a bad file fails early."""
        path = resolve_resume(str(resume), config.train.output_dir)
        ckpt = validate_checkpoint(preloaded, path) if preloaded is not None else read_checkpoint(path)
        check_weights(ckpt, path)  # checksums, then names/shapes/dtypes against the stored config
        check_resume_config(RunConfig.from_dict(ckpt["config"], origin=str(path)), config)
        if ckpt["step"] >= config.train.max_steps:
            raise ValueError(
                f"{path} is at step {ckpt['step']}, which reaches train.max_steps={config.train.max_steps}; "
                "pass a larger --max-steps to train further"
            )
        if ModelConfig.from_dict(ckpt["model_config"]) != mcfg:
            raise ValueError(
                f"{path}: its model config differs from the one this config builds; start a new run"
            )
        for key in ("model", "ema"):
            bad = first_non_finite(ckpt[key] or {})
            if bad is not None:
                raise ValueError(
                    f"{path}: non-finite weights (NaN/inf) in {key} key {bad!r}; resume from an earlier checkpoint"
                )
        return cls(Path(path), ckpt)


def prepare_state(
    run: Run,
    resumed: Resume | None,
    precision: str,
    device: torch.device,
    info: D.DistInfo,
    objective: Any = None,
):
    """(TrainState, log lines): fresh weights, a resumed state, or weights initialised from another model
    (`model.init_from`, then the objective's `init_model`, e.g. a student copied from its teacher)."""
    tcfg = run.config.train
    torch.manual_seed(tcfg.seed)  # the same initial weights on every rank
    net = build_model(run.model_config).to(device)
    lines: list[str] = []
    if resumed is None and run.config.model.init_from:
        lines = init_weights(net, run.config.model.init_from, run.conditioning.label_names())
    if resumed is None and hasattr(objective, "init_model"):
        lines += list(objective.init_model(net))
    state = TrainState(
        net, make_ema(net), build_optimizer(net, tcfg), LRSchedule.from_config(tcfg),
        torch.Generator().manual_seed(tcfg.seed),  # global-batch randomness, identical on every rank
        run.config, run.conditioning, precision,
    )  # fmt: skip
    torch.manual_seed(tcfg.seed * info.world_size + info.rank)  # per-rank seed for anything rank-local
    state.objective = objective
    if resumed is not None:
        lines += state.load_dict(
            resumed.ckpt, origin=str(resumed.path), restore_torch_rng=not info.enabled, checked=True
        )
        if resumed.ckpt["ema"] is None:
            state.ema.load_state_dict(state.net.state_dict())
    return state, lines


def init_weights(net: torch.nn.Module, path: str, label_names: Any) -> list[str]:
    """Start from another model's weights (ditkit.finetune); the report lines go to the log."""
    from ..finetune import init_from

    report = init_from(net, path, label_names=label_names)
    return report.lines()


def open_run_folder(run: Run, resumed: Resume | None, run_dir: Any, info: D.DistInfo):
    """(folder, notes, lock): where this run writes. A resume writes into the checkpoint's run folder only
    when it is a ditkit run folder; a checkpoint sitting in a folder of the user's own is resumed into a new
    run folder, so their files are never overwritten."""
    notes: list[str] = []
    folder = None
    if info.is_main:
        name, root = run.model_config.name or "DiT", run.config.train.output_dir
        if resumed is not None:
            folder = run_dir_of(resumed.path)
            if not is_run_dir(folder):
                new = new_run_dir(prepare_output_dir(root, "--output-dir"), name)
                notes.append(
                    f"{folder} is not a ditkit run folder, so nothing in it is touched: this run continues in {new}"
                )
                folder = new
        elif run_dir is not None:
            folder = prepare_output_dir(run_dir, "run folder")
        else:
            folder = new_run_dir(prepare_output_dir(root, "--output-dir"), name)
        folder = mark_run_dir(folder)
    folder = D.broadcast_object(folder, info)
    lock = RunLock(folder).acquire() if info.is_main else None
    return folder, notes, lock


def start_lines(
    run: Run, state: TrainState, info, device, precision: str, resumed, folder: Path
) -> list[str]:
    """The lines that open a run's log."""
    mcfg, ds = run.model_config, run.dataset
    c, s, _ = run.sample_shape
    n = ds.num_classes if run.conditioning.has_labels else 0
    lines = [f"resumed from {resumed.path} at step {state.step}"] if resumed is not None else []
    lines.append(
        f"run folder {folder}; {mcfg.name} ({state.net.num_parameters():,} parameters) on {ds.name} ({len(ds)} "
        f"images, {n or 'no'} classes, {c}x{s}x{s}); {info.world_size} process(es) on {device}; precision "
        f"{precision}"
        + (" (autocast)" if precision != "fp32" else "")
        + f"; process {run.config.process.kind}"
    )
    lines.append(f"lr schedule: {describe_schedule(state.schedule.state_dict())}")
    if hasattr(ds, "summary"):
        lines.append(f"data: {ds.summary()}")
    lines += [f"note: {note}" for note in [*getattr(ds, "notes", []), *run.notes]]
    cond = run.conditioning
    if cond.kind == "attributes" and cond.dropout > 0:
        lines.append(
            f"label dropout: all attributes together {cond.dropout:g}, each attribute alone {cond.attribute_dropout:g}"
        )
    if run.encoder is not None:
        lines.append(f"conditioning on {cond.cond_dim}-wide image embeddings from {run.config.model.encoder}")
    return lines


def probe_seconds_per_step(run: Run, ctx: Any, state: TrainState, reader: Any, slices: list[slice]):
    """(seconds, micro-batches read): a timed forward/backward of the next step's data with noise from a
    separate generator, after one untimed warm-up pass (first-call costs — DataLoader workers starting,
    kernel set-up, lazy imports — would otherwise inflate the estimate many times over on a fresh install).
    The gradients are discarded, so the run itself is unchanged (its generator and weights are not touched).
    The caller notes the batches (files found unreadable are met only once)."""
    gen = torch.Generator().manual_seed(0)
    draws = draw(run, ctx.objective, reader.stream, gen, state.step)
    micro = reader[state.step]

    def one_pass() -> None:
        for batch, part in zip(micro, slices):
            x, cond = micro_inputs(run, batch, part, draws, ctx.device)
            with ctx.model.no_sync() if ctx.distributed else _null():
                with ctx.autocast():
                    terms = ctx.objective.losses(
                        ctx.model, x, cond,
                        t=draws.t[part].to(ctx.device) if draws.t is not None else None,
                        noise=draws.noise[part].to(ctx.device) if draws.noise is not None else None,
                        generator=gen,
                    )  # fmt: skip
                terms["loss"].float().mean().backward()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)

    one_pass()  # warm-up, untimed
    started = time.perf_counter()
    one_pass()
    seconds = time.perf_counter() - started
    state.optimizer.zero_grad(set_to_none=True)
    for p in state.net.parameters():
        p.grad = None
    return seconds, micro


def _null():
    import contextlib

    return contextlib.nullcontext()
