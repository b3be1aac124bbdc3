"""A run's bookkeeping between steps: losses gathered over processes, the divergence check, log lines and
scalars, unreadable and upscaled images, Ctrl-C / SIGTERM, and the run-time estimate."""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed as D


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the run stopped without saving over the last good checkpoint."""


class StepLog:
    """Per-step losses not yet all-reduced (`window`), all-reduced losses not yet logged (`pending`)."""

    def __init__(self, info: D.DistInfo, monitor: Any, folder: Path | None, max_steps: int, in_memory: bool):
        self.info, self.monitor, self.folder, self.max_steps = info, monitor, folder, max_steps
        self.in_memory = in_memory
        self.losses: list[float] = []
        self.window: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, first bad input index)
        self.pending: list[float] = []
        self.levels: list[torch.Tensor] = []  # (t, per-sample loss) pairs since the last log line
        self.t_window = time.time()
        self.skipped_seen: set[str] = set()
        self.skipped_new: list[tuple[str, str]] = []
        self.skipped_listed: set[str] = set()
        self.upscaled: set[str] = set()
        self.last_ckpt: Path | None = None

    # -- images met while reading --------------------------------------------------------------------
    def note_batch(self, batch: Any, image_size: int) -> None:
        for name, why in batch.skipped:
            if name not in self.skipped_seen:
                self.skipped_seen.add(name)
                self.skipped_new.append((name, why))
        for name in batch.upscaled:
            if not self.upscaled and self.info.is_main:
                self.monitor.log(
                    f"warning: images smaller than {image_size}px are upscaled (first: {name}); "
                    "their samples will look soft"
                )
            self.upscaled.add(name)

    def report_skipped(self) -> None:
        """Gather the unreadable files met since the last call (every process calls this at the same steps)."""
        if self.in_memory:
            return
        gathered = D.gather_objects(list(self.skipped_new), self.info)
        self.skipped_new.clear()
        if not self.info.is_main:
            return
        fresh = [(n, why) for items in gathered for n, why in items if n not in self.skipped_listed]
        fresh = list(dict(fresh).items())  # the same file met by two processes is listed once
        if fresh:
            skip_file = self.folder / "skipped_images.txt"
            self.skipped_listed.update(n for n, _ in fresh)
            with open(skip_file, "a") as fh:
                fh.writelines(f"{name}\t{why}\n" for name, why in fresh)
            self.monitor.log(
                f"skipped {len(self.skipped_listed)} unreadable image(s) so far (listed in {skip_file})"
            )

    # -- losses ----------------------------------------------------------------------------------------
    def add(self, result: Any) -> None:
        self.window.append((result.loss, result.bad_index))
        self.levels.append(torch.stack([result.t.detach().cpu(), result.losses.detach().cpu()]))

    def collect(self, step: int) -> None:
        """All-reduce the losses of the steps since the last call; stop on NaN/inf, naming the cause."""
        if not self.window:
            return
        values = D.all_reduce_mean(torch.stack([w[0] for w in self.window]).float(), self.info).tolist()
        bads = D.all_reduce_max(torch.stack([w[1] for w in self.window]).float(), self.info).tolist()
        first = step - len(values)
        self.window = []
        self.losses.extend(values)
        self.pending.extend(values)
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is None:
            return
        where = (
            f"the last good checkpoint is {self.last_ckpt}"
            if self.last_ckpt
            else "no checkpoint was written yet"
        )
        at = f"at step {first + bad + 1}; stopped without saving ({where})"
        if bads[bad] >= 0:
            raise TrainingDiverged(
                f"non-finite data (NaN/inf) at index {int(bads[bad])} of the data set: the loss is {values[bad]} {at}; "
                "fix or remove that sample (a latent cache: run `ditkit encode` again)"
            )
        raise TrainingDiverged(
            f"training diverged: the loss is {values[bad]} {at}; try a lower --lr, --set train.grad_clip=1.0 or "
            "--precision fp32"
        )

    def write(self, step: int, lr: float, grad_norm: torch.Tensor | None, bar: Any) -> None:
        """All-reduce, then one log line, the scalars and the progress bar's postfix (rank 0)."""
        self.collect(step)
        self.report_skipped()
        if not self.pending:
            return
        now = time.time()
        rate = len(self.pending) / max(now - self.t_window, 1e-9)
        mean = sum(self.pending) / len(self.pending)
        self.t_window, self.pending = now, []
        levels, self.levels = self.levels, []
        if not self.info.is_main:
            return
        values = {"loss": mean, "lr": lr, "steps_per_s": rate}
        line = f"step {step:>7d}/{self.max_steps} loss {mean:.4f} lr {lr:.3e}"
        if grad_norm is not None:
            values["grad_norm"] = gn = float(grad_norm)
            line += f" grad {gn:.3f}"
        bins = _loss_bins(levels)
        values.update({f"loss_t/{k}": v for k, v in bins.items()})
        self.monitor.scalars(step, values)
        with open(self.folder / "log.txt", "a") as fh:
            fh.write(f"{line} {rate:.2f} steps/s\n")
        bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", refresh=False)


def _loss_bins(levels: list[torch.Tensor]) -> dict[str, float]:
    """Mean loss per quarter of the noise level t (H5's monitor.loss_by_timestep_bin when present)."""
    if not levels:
        return {}
    both = torch.cat(levels, dim=1)
    t, loss = both[0], both[1]
    keep = torch.isfinite(t)
    if not bool(keep.any()):
        return {}
    from . import monitor

    fn = getattr(monitor, "loss_by_timestep_bin", None)
    if fn is not None:
        return dict(fn(t[keep], loss[keep], bins=4))
    out = {}
    for k in range(4):
        lo, hi = k / 4, (k + 1) / 4
        sel = keep & (t >= lo) & ((t < hi) if k < 3 else (t <= hi))
        if bool(sel.any()):
            out[f"{lo:.2f}-{hi:.2f}"] = float(loss[sel].mean())
    return out


class StopFlag:
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM asks for a checkpoint and a clean stop at the end of the step;
    a second Ctrl-C aborts at once. A context manager: the previous handlers come back on exit."""

    def __init__(self, announce: bool) -> None:
        self.requested, self.announce = False, announce
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            from tqdm.auto import tqdm

            name = signal.Signals(signum).name
            tqdm.write(f"{name}: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # signal handlers can only be set in the main thread
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def agreed(self, info: D.DistInfo, device: torch.device) -> bool:
        """Whether any process was asked to stop (an all-reduce)."""
        flag = torch.tensor(float(self.requested), device=device)
        return bool(D.all_reduce_max(flag, info).item())


def estimate_line(seconds_per_step: float, steps_left: int, device: torch.device) -> tuple[str, bool]:
    """('measured 0.21 s/step; 1500 steps: about 5 min', warn) — warn when a CPU run exceeds an hour."""
    total = seconds_per_step * steps_left
    if total < 90:
        when = f"{total:.0f} s"
    elif total < 5400:
        when = f"{total / 60:.0f} min"
    else:
        when = f"{total / 3600:.1f} h"
    line = f"measured {seconds_per_step:.3g} s/step; {steps_left} steps: about {when}"
    return line, device.type == "cpu" and total > 3600
