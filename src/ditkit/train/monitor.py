"""What a run writes besides checkpoints: log.txt, metrics.jsonl, a TensorBoard log, the loss-curve PNG and
sample grids. Only rank 0 writes; the other ranks get a monitor that does nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_grid(images: np.ndarray, ncol: int, min_cell: int = 64, pad: int = 2):
    """N×H×W×C floats in [0, 1] -> one PIL image, `ncol` images per row (column-major callers transpose).

    Tiny images (8-32 px digits) are enlarged with nearest-neighbour to at least `min_cell` pixels, so a grid
    is readable without zooming.
    """
    from PIL import Image

    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    scale = max(1, -(-min_cell // max(h, w)))
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    ch, cw = h * scale + pad, w * scale + pad
    canvas = np.ones((nrow * ch + pad, ncol * cw + pad, c), dtype=np.uint8) * 255
    arr = (images.clip(0, 1) * 255).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    for i in range(n):
        r, col = divmod(i, ncol)
        canvas[pad + r * ch : pad + r * ch + h * scale, pad + col * cw : pad + col * cw + w * scale] = arr[i]
    if c == 1:
        return Image.fromarray(canvas[..., 0], mode="L")
    return Image.fromarray(canvas[..., :3])


def save_loss_curve(metrics_path: Path, out_path: Path, title: str = "") -> Path | None:
    """Plot loss (and LR on a second axis) from metrics.jsonl into a PNG (matplotlib, Agg backend)."""
    rows = read_metrics(metrics_path)
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, [r["loss"] for r in rows], color="tab:blue", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if any("lr" in r for r in rows):
        ax2 = ax.twinx()
        ax2.plot(steps, [r.get("lr", float("nan")) for r in rows], color="tab:orange", alpha=0.6, label="lr")
        ax2.set_ylabel("learning rate", color="tab:orange")
        ax2.set_ylim(bottom=0)
    ax.set_title(title or "training loss")
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out_path)
    return out_path


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return rows


class RunMonitor:
    """log.txt + metrics.jsonl + TensorBoard (`tb/`) in a run folder. `echo` sends log lines to the console
    (through tqdm, so they do not break the progress bar)."""

    def __init__(self, run_dir: Path | None, echo: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.echo = echo
        self._tb = None
        if run_dir is not None and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a dependency, but a missing one should not stop a run
                self.log("tensorboard is not installed; scalars go to metrics.jsonl only")

    @property
    def active(self) -> bool:
        return self.run_dir is not None

    def log(self, message: str) -> None:
        if self.run_dir is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.run_dir / "log.txt", "a") as fh:
            fh.write(f"[{stamp}] {message}\n")
        if self.echo:
            from tqdm.auto import tqdm

            tqdm.write(message)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.run_dir is None:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"train/{key}", value, step)

    def truncate(self, step: int) -> None:
        """Drop metrics logged after `step` (a resumed run repeats those steps)."""
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.jsonl"
        rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def loss_curve(self, title: str = "") -> Path | None:
        if self.run_dir is None:
            return None
        return save_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png", title)

    def image(self, tag: str, image, step: int) -> None:
        if self._tb is not None:
            arr = np.asarray(image)
            if arr.ndim == 2:
                arr = arr[..., None]
            self._tb.add_image(tag, arr, step, dataformats="HWC")

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def write_progress_gif(
    grid_paths, out_path, duration_ms: int = 600, last_frame_ms: int = 2000
) -> Path | None:
    """One GIF of the sample grids saved over a run (oldest first), e.g. the EMA grids -> progress.gif.

    Frames of another size (a grid re-laid out) are padded with white to the largest one; the last frame is
    held longer. Returns None when there is no grid yet. Written atomically."""
    from PIL import Image

    from ditkit.io.native import atomic_write

    paths = [Path(p) for p in grid_paths if Path(p).is_file()]
    if not paths:
        return None
    frames = []
    for p in paths:
        with Image.open(p) as im:
            frames.append(im.convert("RGB"))
    width, height = max(f.width for f in frames), max(f.height for f in frames)
    padded = []
    for f in frames:
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        canvas.paste(f, (0, 0))
        padded.append(canvas)
    durations = [duration_ms] * (len(padded) - 1) + [last_frame_ms]

    def write(tmp: str) -> None:
        padded[0].save(tmp, format="GIF", save_all=True, append_images=padded[1:], duration=durations, loop=0)

    return atomic_write(Path(out_path), write)


def loss_by_timestep_bin(t_levels, losses, bins: int = 4) -> dict[str, float]:
    """Mean per-sample loss in `bins` equal bins of the noise level t in [0, 1] (0 = clean, 1 = pure noise).

    Keys "loss_t0.00-0.25", ... (empty bins are left out), so the logs show which noise levels lag."""
    import torch

    t = torch.as_tensor(t_levels, dtype=torch.float64).detach().flatten().cpu()
    loss = torch.as_tensor(losses, dtype=torch.float64).detach().flatten().cpu()
    if t.shape != loss.shape:
        raise ValueError(f"{t.numel()} noise levels but {loss.numel()} losses; pass one of each per sample")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    index = (t.clamp(0, 1) * bins).long().clamp_max(bins - 1)
    out = {}
    for b in range(bins):
        mask = index == b
        if mask.any():
            out[f"loss_t{b / bins:.2f}-{(b + 1) / bins:.2f}"] = float(loss[mask].mean())
    return out
