"""The training loop: `train(config)`, for one process or many under torchrun. It reads top to bottom:

    run = build_run(config)           data -> effective config, codec, encoder, conditioning, model config
    state = prepare_state(run, ...)   weights, EMA, optimizer, LR schedule, generator, step (ditkit.train.state)
    folder = open_run_folder(...)     only now: a bad resume or --init-from leaves no folder behind
    probe                             one timed forward/backward (gradients discarded): the run-time estimate
    for each step: draw -> train_step -> log / checkpoint / grid / eval

Randomness. Every random draw of a step (data order, timesteps, noise, label dropout, flips) is made for the
*global* batch from one torch.Generator that is identical on every process and saved in each checkpoint;
each process then takes its slice (ditkit.train.step). So a step sees the same samples and the same noise
whatever the number of processes or the gradient-accumulation split, and a resumed run repeats an
uninterrupted one bit for bit on the CPU. (The per-rank seed of the official code is still set, for anything
rank-local.)

Bookkeeping lives on rank 0 (run folder, logs, checkpoints, grids); the other ranks only compute.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..config import RunConfig
from ..data import IndexStream, StepBatches, TensorDataset, step_batches
from . import distributed as D
from .bookkeeping import StepLog, StopFlag, TrainingDiverged
from .checkpoint import clean_stale_temporaries, save_checkpoint
from .grids import grid_labels, sample_grid
from .monitor import RunMonitor
from .objectives import build_objective
from .runs import Resume, open_run_folder, prepare_state, probe_seconds_per_step, start_lines
from .setup import RESUMABLE_KEYS, build_run, check_resume_config, effective_config
from .step import StepContext, draw, train_step

__all__ = [
    "RESUMABLE_KEYS",
    "TrainResult",
    "TrainingDiverged",
    "check_resume_config",
    "effective_config",
    "grid_labels",
    "sample_grid",
    "train",
]


@dataclass
class TrainResult:
    run_dir: Path | None
    checkpoint: Path | None
    grid: Path | None
    step: int
    wall_time: float
    status: str = "done"  # done | interrupted | stopped
    losses: list[float] = field(default_factory=list)  # global mean loss of every step run in this call
    resumed_from: Path | None = None
    num_parameters: int = 0
    precision: str = "fp32"


def train(
    config: RunConfig,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    echo: bool = True,
    stop_at: int | None = None,
    run_dir: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
    objective: Any = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train as `config` says; returns where the results are.

    `resume` is a checkpoint, a run folder, a runs folder or "auto" (`checkpoint` may pass that file already
    loaded); `stop_at` ends the run early at that step with a checkpoint, as Ctrl-C does; `run_dir` puts a
    new run in that folder instead of the next numbered one. `objective` replaces the one `process.kind`
    names (ditkit.train.objectives); `on_step(step)` is called after every step (e.g. to stop from outside).
    """
    started = time.time()
    env = runtime.dist_env()
    device = runtime.pick_device(config.train.device, env.local_rank)
    info = D.init_distributed(device)
    try:
        result = _run(config, info, device, resume, checkpoint, progress, echo, stop_at, run_dir, started,
                      objective, on_step)  # fmt: skip
    except BaseException:
        D.cleanup(clean=False)
        raise
    D.cleanup(clean=True)
    return result


@dataclass
class Session:
    """What the loop works with: the run, its state, the step context, the folder and the bookkeeping."""

    run: Any
    state: Any
    ctx: StepContext
    info: D.DistInfo
    device: torch.device
    folder: Path | None
    monitor: RunMonitor
    book: StepLog
    stream: IndexStream
    reader: StepBatches
    slices: list[slice]
    workers: int
    lock: Any
    resumed: Any
    grid_conditions: torch.Tensor | None
    progress: bool


def _run(
    config, info, device, resume, preloaded, progress, echo, stop_at, run_dir, started, objective, on_step
):
    s = _start(config, info, device, resume, preloaded, progress, echo, run_dir, objective)
    start_step = s.state.step
    try:
        status, last_grid, grid_paths = _loop(s, stop_at, on_step)
    finally:
        if info.is_main:
            s.monitor.flush()
            s.monitor.close()
        if s.lock is not None:
            s.lock.release()
    wall = time.time() - started
    if info.is_main:
        _finish(s, grid_paths, status, s.state.step - start_step, wall, last_grid)
    return TrainResult(
        run_dir=s.folder if info.is_main else None,
        checkpoint=s.book.last_ckpt if info.is_main else None,
        grid=last_grid,
        step=s.state.step,
        wall_time=wall,
        status=status,
        losses=s.book.losses,
        resumed_from=s.resumed.path if s.resumed is not None else None,
        num_parameters=s.state.net.num_parameters(),
        precision=s.state.precision,
    )


def _start(config, info, device, resume, preloaded, progress, echo, run_dir, objective) -> Session:
    """Everything before step 1: checks first, then the state, and only then the run folder."""
    if device.type == "cpu":
        runtime.set_threads(config.train.threads or None)
    precision = runtime.resolve_precision(config.train.precision, device)
    if config.train.batch_size % (info.world_size * config.train.grad_accum):
        raise ValueError(
            f"train.batch_size {config.train.batch_size} must be a multiple of processes x grad_accum "
            f"({info.world_size} x {config.train.grad_accum})"
        )
    run = build_run(config, device)
    config = run.config
    resumed = Resume.read(resume, preloaded, config, run.model_config) if resume is not None else None
    objective = objective or build_objective(config.process, run.model_config)
    if config.distill.teacher:  # a distillation run: the teacher's objective wraps the process's
        from ..distill import build_distill_objective

        objective = build_distill_objective(
            config, base=objective, model_config=run.model_config, device=device
        )
    # the state before any folder exists: a bad resume or --init-from leaves nothing behind
    state, init_lines = prepare_state(run, resumed, precision, device, info, objective)
    folder, moved, lock = open_run_folder(run, resumed, run_dir, info)
    try:
        return _open_session(run, state, init_lines, objective, precision, info, device, folder, moved, lock,
                             resumed, progress, echo)  # fmt: skip
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _open_session(
    run, state, init_lines, objective, precision, info, device, folder, moved, lock, resumed, progress, echo
) -> Session:
    """The model wrappers, the data stream, the bookkeeping and the opening log lines (the folder exists)."""
    config, tcfg = run.config, run.config.train
    monitor = RunMonitor(folder if info.is_main else None, echo=echo)
    if tcfg.grad_checkpointing:
        state.net.set_grad_checkpointing(True)
    model = state.net
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(state.net, device_ids=[device.index] if device.type == "cuda" else None)
    model = runtime.maybe_compile(model, tcfg.compile, device=device, log=monitor.log)
    model.train()
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ctx = StepContext(
        model, objective, device, lambda: runtime.autocast(device, precision), scaler, info.enabled
    )
    stream = IndexStream(len(run.dataset), tcfg.seed)
    reader = StepBatches(run.dataset, stream, tcfg.batch_size, tcfg.grad_accum, info.world_size, info.rank)
    # In-memory data (digits, small latent caches) is sliced directly; images may decode ahead in workers.
    in_memory = isinstance(run.dataset, TensorDataset) or (run.is_cache and run.dataset.in_memory)
    book = StepLog(info, monitor, folder, tcfg.max_steps, in_memory)
    book.last_ckpt = resumed.path if resumed is not None else None
    s = Session(run, state, ctx, info, device, folder, monitor, book, stream, reader,
                [reader.micro_slice(m) for m in range(tcfg.grad_accum)], 0 if in_memory else config.data.num_workers,
                lock, resumed, None, progress)  # fmt: skip
    s.grid_conditions = _grid_conditions(run, device, info, book)
    if info.is_main:
        clean_stale_temporaries(folder)
        (folder / "config.yaml").write_text(config.to_yaml())
        if resumed is not None:
            monitor.truncate(state.step)
        if init_lines and resumed is None:
            (folder / "init_report.txt").write_text("\n".join(init_lines) + "\n")
        for line in [*moved, *init_lines, *start_lines(run, state, info, device, precision, resumed, folder)]:
            monitor.log(line)
    seconds, probed = probe_seconds_per_step(run, ctx, state, reader, s.slices)
    for batch in probed:
        book.note_batch(batch, config.data.image_size)
    if info.is_main:
        line, warn = _estimate(seconds, tcfg.max_steps - state.step, device)
        monitor.log(("warning: " if warn else "") + line)
    return s


def _loop(s: Session, stop_at: int | None, on_step) -> tuple[str, Path | None, list]:
    """The steps, with explicit log / checkpoint / grid calls. Returns (status, grid.png, grid paths)."""
    from tqdm.auto import tqdm

    tcfg, state, info, book = s.run.config.train, s.state, s.info, s.book
    bar = tqdm(total=tcfg.max_steps, initial=state.step, disable=not (s.progress and info.is_main),
               desc=f"train {s.run.model_config.name}", unit="step", dynamic_ncols=True)  # fmt: skip
    status, last_grid, grid_paths = "done", None, []
    check_each_step = s.device.type == "cpu" and not info.enabled
    try:
        batches = step_batches(s.reader, state.step, tcfg.max_steps, s.workers)
        with StopFlag(announce=info.is_main) as stop_flag:
            while state.step < tcfg.max_steps:
                lr = state.schedule.apply(state.optimizer, state.step)
                draws = draw(s.run, s.ctx.objective, s.stream, state.generator, state.step)
                micro = next(batches)  # this process's micro-batches of this step
                for batch in micro:
                    book.note_batch(batch, s.run.config.data.image_size)
                boundary = (state.step + 1) % tcfg.log_every == 0 or state.step + 1 == tcfg.max_steps
                result = train_step(state, s.ctx, s.run, micro, s.slices, draws, measure_grad=boundary)
                bar.update(1)
                book.add(result)
                step = state.step
                want_ckpt = step % tcfg.ckpt_every == 0 or step == tcfg.max_steps
                want_grid = (tcfg.sample_every and step % tcfg.sample_every == 0) or step == tcfg.max_steps
                if boundary:
                    book.write(step, lr, result.grad_norm, bar)
                elif want_ckpt or want_grid or check_each_step:
                    book.collect(step)  # never checkpoint or sample a model whose loss went NaN
                if on_step is not None:
                    on_step(step)
                # Ranks agree on stopping through an all-reduce: every step on the CPU (cheap), every 10 on GPUs.
                sync_now = boundary or not info.enabled or s.device.type == "cpu" or step % 10 == 0
                stop = (stop_at is not None and step >= stop_at) or (
                    sync_now and stop_flag.agreed(info, s.device)
                )
                if want_ckpt or stop:
                    _save(s)
                if tcfg.eval_every and (step % tcfg.eval_every == 0 or step == tcfg.max_steps):
                    _evaluate(s)
                if want_grid:
                    grid_paths.append(_grid(s, final=step == tcfg.max_steps))
                    last_grid = s.folder / "grid.png" if info.is_main else None
                if stop:
                    if not boundary:
                        book.report_skipped()
                    status = "interrupted" if stop_flag.requested else "stopped"
                    s.monitor.log(f"stopped at step {step}; resume with: ditkit train --resume {s.folder}")
                    break
    finally:
        bar.close()
    return status, last_grid, grid_paths


def _save(s: Session) -> None:
    if s.info.is_main:
        path = save_checkpoint(s.state.to_dict(s.device), s.folder, s.run.config.train.keep_last)
        s.monitor.log(f"step {s.state.step}: checkpoint {path}")
        s.monitor.loss_curve(f"{s.run.model_config.name} on {s.run.dataset.name}")
        s.book.last_ckpt = path
    D.barrier(s.info)


def _evaluate(s: Session) -> None:
    """Judge EMA samples (train.eval_every): accuracy and FD to the log, metrics.jsonl and TensorBoard."""
    if s.info.is_main:
        from .grids import judge_samples

        try:
            scores = judge_samples(s.state.ema, s.run.config, s.run.conditioning, vae=s.run.codec)
        except (ValueError, ImportError) as err:
            s.monitor.log(f"note: no evaluation at step {s.state.step}: {err}")
        else:
            s.monitor.scalars(s.state.step, {f"eval/{k}": float(v) for k, v in scores.items()})
            s.monitor.log(
                f"step {s.state.step}: eval accuracy {scores['accuracy']:.4f} fd {scores['fd']:.3f}"
            )
    D.barrier(s.info)


def _grid(s: Session, final: bool) -> Path | None:
    path = None
    if s.info.is_main:
        run = s.run
        image = sample_grid(s.state.ema, run.config, run.conditioning, getattr(s.ctx.objective, "process", None),
                            vae=run.codec, conditions=s.grid_conditions, progress=s.progress and final)  # fmt: skip
        (s.folder / "samples").mkdir(exist_ok=True)
        path = s.folder / "samples" / f"{s.state.step:07d}.png"
        image.save(path)
        image.save(s.folder / "grid.png")
        s.monitor.image("samples/ema", image, s.state.step)
        s.monitor.log(f"step {s.state.step}: EMA samples {path}")
    D.barrier(s.info)
    return path


def _estimate(seconds: float, steps_left: int, device: torch.device) -> tuple[str, bool]:
    from .bookkeeping import estimate_line

    line, warn = estimate_line(seconds, steps_left, device)
    if warn:
        line += " on the CPU; use a GPU, a smaller --model or fewer --max-steps"
    return line, warn


def _grid_conditions(run, device, info, book) -> torch.Tensor | None:
    """Embedding models: the grid conditions on the embeddings of the first few training images."""
    if run.encoder is None or not info.is_main:
        return None
    from ..data.base import read_batch

    first = read_batch(run.dataset, torch.arange(min(8, len(run.dataset))))
    book.note_batch(first, run.config.data.image_size)
    with torch.no_grad():
        return run.encoder.encode_image(first.images.to(device)).float().cpu()


def _finish(s: Session, grid_paths, status, steps, wall, last_grid) -> None:
    book, folder, log = s.book, s.folder, s.monitor.log
    size = s.run.config.data.image_size
    if book.upscaled:
        log(f"warning: {len(book.upscaled)} image(s) were smaller than {size}px and upscaled")
    from . import monitor

    gif = getattr(monitor, "write_progress_gif", None)
    paths = [p for p in grid_paths if p is not None]
    if gif is not None and len(paths) > 1 and status == "done":
        try:
            gif(paths, folder / "progress.gif")
            log(f"progress of the EMA samples: {folder / 'progress.gif'}")
        except (OSError, ValueError) as err:
            log(f"note: no progress.gif ({err})")
    if status == "done":
        log(f"finished {steps} steps in {wall:.1f} s; checkpoint {book.last_ckpt}; grid {last_grid}")
