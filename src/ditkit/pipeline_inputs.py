"""Input resolution for `ditkit.pipeline.DiTPipeline`: what a call's arguments become before sampling.

Call options checked, attribute names checked against the model, class labels / embeddings / prompts /
images turned into the condition and its null, the number of images of an unconditional call, and the
initial noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .pipeline_output import check_output_type
from .sampling import get_sampler, randn


def check_call(output_type: str, sampler: str, scheduler: Any) -> None:
    """Unknown output types and sampler names fail before any work (a scheduler object replaces the sampler)."""
    check_output_type(output_type)
    if scheduler is None:
        get_sampler(sampler)


def check_attributes(cfg: Any, attributes: dict[str, Sequence[str]] | None) -> dict[str, list[str]] | None:
    """A multi-attribute model's class names, one ordered list per attribute, checked against its label sizes."""
    if not attributes:
        return None
    if not cfg.multi_label or len(attributes) != len(cfg.label_sizes):
        raise ValueError(
            f"attributes name {len(attributes)} label sets but the model has label sizes {cfg.label_sizes}"
        )
    for (attr, names), size in zip(attributes.items(), cfg.label_sizes):
        if len(names) != size:
            raise ValueError(f"attribute {attr!r} has {len(names)} names but the model has {size} classes")
    return {str(k): [str(n) for n in v] for k, v in attributes.items()}


def embedding_condition(cfg: Any, encoder: Any, condition: Any, prompt: Any, image: Any) -> torch.Tensor:
    """The (N, cond_dim) condition of an embedding-conditioned model: given, or encoded from prompts/images."""
    given = [v is not None for v in (condition, prompt, image)]
    if sum(given) != 1:
        raise ValueError(
            "this model is conditioned on an embedding: pass exactly one of condition=, prompt=, image="
        )
    if condition is not None:
        cond = torch.as_tensor(condition, dtype=torch.float32)
    else:
        if encoder is None:
            raise ValueError("prompts and images need an encoder: DiTPipeline(..., encoder=...) or --encoder")
        if prompt is not None:
            cond = encoder.encode_text([prompt] if isinstance(prompt, str) else list(prompt))
        else:
            cond = encoder.encode_image(images_to_tensor(image))
    if cond.ndim != 2 or cond.shape[1] != cfg.cond_dim:
        raise ValueError(
            f"the condition has shape {tuple(cond.shape)}; this model expects (N, {cfg.cond_dim}) embeddings"
        )
    return cond.float()


def label_condition(conditioning: Any, cfg: Any, class_labels: Any, device: torch.device) -> tuple:
    """(cond, null, ids, n) of a class-conditional model from ids or names (dicts/rows for multi-attribute)."""
    if class_labels is None:
        raise ValueError("this model is class-conditional: pass class_labels (ids or names)")
    if cfg.multi_label:
        ids = conditioning.rows(class_labels)
        y = torch.tensor(ids, dtype=torch.long, device=device).view(-1, len(cfg.label_sizes))
        null = torch.tensor(cfg.label_sizes, dtype=torch.long, device=device).expand_as(y)
    else:
        ids = conditioning.class_ids(class_labels)
        y = torch.tensor(ids, dtype=torch.long, device=device)
        null = cfg.null_label
    if not ids:
        raise ValueError("nothing to sample: class_labels is empty")
    return y, null, ids, len(ids)


def unconditional_count(class_labels: Any, num_images: Any, latents: torch.Tensor | None) -> int:
    """How many images an unconditional call makes: num_images, else one per given latent, else one."""
    if class_labels is not None:
        raise ValueError("this model is unconditional: pass num_images=N instead of class_labels")
    n = num_images if num_images is not None else (latents.shape[0] if latents is not None else 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"num_images must be a positive integer, got {n!r}")
    return n


def initial_noise(
    cfg: Any, n: int, generator: Any, latents: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """The starting noise: drawn from the generator(s) (one per image when a list), or the given latents."""
    shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
    if latents is None:
        if isinstance(generator, (list, tuple)) and len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for {n} images; pass one per image")
        return randn(shape, generator, device=device)
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape}")
    return latents.to(device=device, dtype=torch.float32)


def images_to_tensor(image: Any) -> torch.Tensor:
    """PIL images / arrays / tensors -> (N, 3, H, W) float in [-1, 1] (tensors are taken as already scaled)."""
    if isinstance(image, torch.Tensor):
        return image if image.ndim == 4 else image.unsqueeze(0)
    items = image if isinstance(image, (list, tuple)) else [image]
    out = []
    for item in items:
        arr = np.asarray(item.convert("RGB") if hasattr(item, "convert") else item, dtype=np.float32)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out.append(torch.from_numpy(arr / 127.5 - 1.0).permute(2, 0, 1))
    sizes = {tuple(t.shape) for t in out}
    if len(sizes) > 1:
        raise ValueError(f"images of different sizes {sorted(sizes)}; resize them to one size first")
    return torch.stack(out)
