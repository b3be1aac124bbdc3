"""The images of `ditkit sample` and what is said about them: batched sampling with one generator per image,
the uint8 arrays and meta of samples.npz, and the lines printed after the folder is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sample_all(pipe, columns: list[dict[str, Any]], order: list[int], s: dict[str, Any], args) -> tuple:
    """(images N×H×W×C in [0, 1], the pipeline's info of the last batch) with one generator per image."""
    import numpy as np
    import torch

    cfg = pipe.transformer.config
    images, info = [], {}
    for start in range(0, len(order), args.batch_size):
        chunk = order[start : start + args.batch_size]
        gens = [torch.Generator().manual_seed(s["seed"] * 1_000_003 + start + i) for i in range(len(chunk))]
        if cfg.cond_dim:
            kwargs: dict[str, Any] = {"condition": torch.cat([columns[c]["condition"] for c in chunk])}
        elif cfg.label_sizes:
            kwargs = {"class_labels": [columns[c]["class_labels"][0] for c in chunk]}
        else:
            kwargs = {"num_images": len(chunk)}
        out = pipe(
            **kwargs,
            num_inference_steps=s["steps"],
            guidance_scale=s["guidance_scale"],
            guidance_interval=s["guidance_interval"],
            generator=gens,
            output_type="np",
            sampler=s["sampler"],
            grid_spacing=s["grid"],
            progress=not args.no_progress,
        )
        images.append(out.images)
        info = out.info
    return np.concatenate(images), info


def to_uint8_rgb(arr):
    """Images in [0, 1] as uint8 with three channels (one-channel images repeated)."""
    import numpy as np

    u8 = (arr * 255).round().clip(0, 255).astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    return u8


def sample_meta(pipe, s: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """The `meta` JSON of samples.npz: the settings used and where the weights came from."""
    from ditkit.runtime import precision_name

    src = pipe.source
    return {
        "sampler": info.get("sampler", s["sampler"]),
        "steps": s["steps"],
        "guidance_scale": s["guidance_scale"],
        "guidance": s["guidance"],
        "guidance_interval": list(s["guidance_interval"])
        if s["guidance"] and s["guidance_interval"]
        else None,
        "grid": info.get("grid"),
        "spacing": info.get("spacing"),
        "nfe": info.get("nfe"),
        "seed": s["seed"],
        "checkpoint": src.get("path"),
        "step": src.get("step"),
        "ema": src.get("ema"),
        "precision": info.get("precision") or precision_name(pipe.dtype),
    }


def print_outputs(out_dir: Path, names: list[str], shape: tuple[int, ...]) -> None:
    """The grid, PNG and npz lines printed once the folder is written."""
    print(f"grid        {out_dir / 'grid.png'}")
    print(f"images      {out_dir}/{names[0]} ... ({len(names)} PNGs)")
    print(
        f"arrays      {out_dir / 'samples.npz'} (arr_0 uint8 {tuple(shape)}, arr_1 int64 labels, meta JSON)"
    )


def print_columns(pipe, tags: list[str], columns: list[dict[str, Any]]) -> None:
    """Multi-attribute models: one line per column naming its attribute values."""
    attrs = list(pipe.attributes)
    for tag, col in zip(tags, columns):
        row = col["class_labels"][0]
        shown = ", ".join(
            f"{a}={'(free)' if v is None else pipe.attributes[a][v]}" for a, v in zip(attrs, row)
        )
        print(f"column {tag:<12} {shown}")
