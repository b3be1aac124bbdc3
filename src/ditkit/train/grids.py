"""The EMA sample grids a run draws: one column per label (its name written above it), the config's
sampler, steps, guidance and seed; the same seed gives the same noise, so successive grids compare."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..conditioning import Conditioning
from .monitor import make_grid

GRID_PAD = 2  # make_grid's padding


def grid_labels(config: Any, num_classes: int) -> list[int]:
    if num_classes == 0:
        return []
    if config.sample.labels:
        bad = [i for i in config.sample.labels if not 0 <= i < num_classes]
        if bad:
            raise ValueError(f"sample.labels {bad} out of range 0..{num_classes - 1}")
        return list(config.sample.labels)
    return list(range(num_classes)) if num_classes <= 16 else list(range(8))


def _columns(model: nn.Module, config: Any, cond: Conditioning, rows: int, labels, conditions):
    """(number of columns, pipeline keyword arguments, column titles)."""
    cfg = model.config
    if cfg.cond_dim:
        if conditions is None:
            raise ValueError("an embedding-conditioned model needs conditions for its sample grid")
        n = len(conditions)
        return n, {"condition": conditions.float().repeat(rows, 1)}, [f"image {i}" for i in range(n)]
    if cfg.multi_label:
        first = labels if labels is not None else grid_labels(config, cfg.label_sizes[0])
        free = None if cfg.has_null_label else 0  # None: the attribute's null row (left free)
        rest = [free] * (len(cfg.label_sizes) - 1)
        class_labels = [[lab, *rest] for _ in range(rows) for lab in first]
        return len(first), {"class_labels": class_labels}, [cond.column_name(i, 0) for i in first]
    if cfg.label_sizes:
        labels = labels if labels is not None else grid_labels(config, cfg.num_classes)
        class_labels = [lab for _ in range(rows) for lab in labels]
        return len(labels), {"class_labels": class_labels}, [cond.column_name(i, 0) for i in labels]
    return 8, {"num_images": 8 * rows}, []


def sample_grid(
    model: nn.Module,
    config: Any,
    conditioning: Conditioning | Any = None,
    process: Any = None,
    labels: list[int] | None = None,
    vae: Any = None,
    conditions: torch.Tensor | None = None,
    *,
    progress: bool = False,
):
    """A PIL grid from `model` (one column per label with its name on top, sample.num_per_label rows).

    Multi-attribute models get one column per class of the first attribute (the others left free);
    embedding-conditioned models one column per row of `conditions` (embeddings of training images).
    `conditioning` may also be legacy label names (a list or a dict)."""
    from ..pipeline import DiTPipeline

    cfg = model.config
    if not isinstance(conditioning, Conditioning):
        conditioning = Conditioning.from_model_config(cfg, conditioning)
    attributes = conditioning.label_names() if conditioning.kind == "attributes" else None
    flow = dict(vars(config.process)) if config.process.kind == "flow" else None
    pipe = DiTPipeline(
        model, vae=vae, id2label=conditioning.id2label(), attributes=attributes, flow_process=flow
    )
    if process is not None and flow is None:
        pipe.process = process
    rows = config.sample.num_per_label
    ncol, kwargs, titles = _columns(model, config, conditioning, rows, labels, conditions)
    guidance = config.sample.guidance_scale if (cfg.has_null_label and titles) else 1.0
    n = rows * ncol
    gens = [torch.Generator().manual_seed(config.sample.seed * 100_003 + i) for i in range(n)]
    bar = _bar(progress, config.sample.steps)
    try:
        out = pipe(
            **kwargs,
            num_inference_steps=config.sample.steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
            sampler=config.sample.sampler,
            progress=False,
            callback=(lambda i, total, x: bar.update(1)) if bar is not None else None,
        )
    finally:
        if bar is not None:
            bar.close()
    return with_titles(make_grid(out.images, ncol), titles, ncol)


def _bar(progress: bool, steps: int):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=steps, desc="sample grid", unit="step", dynamic_ncols=True, leave=False)


def with_titles(grid, titles: list[str], ncol: int):
    """The grid with each column's title written in a strip above it (nothing when there are no titles)."""
    if not titles:
        return grid
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    cell = (grid.width - GRID_PAD) / max(1, ncol)
    strip = 14
    out = Image.new(
        grid.mode, (grid.width, grid.height + strip), 255 if grid.mode == "L" else (255, 255, 255)
    )
    out.paste(grid, (0, strip))
    draw = ImageDraw.Draw(out)
    black = 0 if grid.mode == "L" else (0, 0, 0)
    for k, title in enumerate(titles):
        text = _fit(draw, str(title), font, int(cell) - 2)
        width = draw.textlength(text, font=font)
        draw.text((GRID_PAD + k * cell + (cell - GRID_PAD - width) / 2, 1), text, fill=black, font=font)
    return out


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + ".", font=font) > width:
        text = text[:-1]
    return text + "."


def judge_samples(
    model: nn.Module, config: Any, conditioning: Conditioning, vae: Any = None, per_class: int = 20
):
    """Sample `per_class` images of each digit with the EMA model (the config's sampler, steps, guidance)
    and judge them (ditkit.evaluation.digits): {"accuracy", "fd", ...}. Only the digits data has a judge."""
    from ..evaluation.digits import judge_digits
    from ..pipeline import DiTPipeline

    if conditioning.kind != "class" or conditioning.sizes != (10,):
        raise ValueError("train.eval_every judges digits samples; this run is not a 10-class digits run")
    flow = dict(vars(config.process)) if config.process.kind == "flow" else None
    pipe = DiTPipeline(model, vae=vae, id2label=conditioning.id2label(), flow_process=flow)
    labels = [k for _ in range(per_class) for k in range(10)]
    gens = [torch.Generator().manual_seed(10_007 + i) for i in range(len(labels))]
    out = pipe(
        class_labels=labels,
        num_inference_steps=config.sample.steps,
        guidance_scale=config.sample.guidance_scale if conditioning.has_null else 1.0,
        generator=gens,
        output_type="np",
        sampler=config.sample.sampler,
        progress=False,
    )
    return judge_digits(out.images, labels)
