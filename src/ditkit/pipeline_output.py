"""Output decoding for `ditkit.pipeline.DiTPipeline`: final latents -> PIL images, numpy arrays or tensors.

The codec (None in pixel space, a VAE in latent space) decodes to [-1, 1]; the images come back in [0, 1].
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")


def decode_output(out: torch.Tensor, output_type: str, vae: Any) -> Any:
    """The sampler's final `out` as `output_type` ("latent" returns it as is)."""
    if output_type == "latent":
        return out
    decoded = vae.decode(out) if vae is not None else out
    pt = (decoded.float() / 2 + 0.5).clamp(0, 1)  # (N, C, H, W) in [0, 1]
    if output_type == "pt":
        return pt
    images = _to_numpy(pt)
    return numpy_to_pil(images) if output_type == "pil" else images


def _to_numpy(pt: torch.Tensor) -> np.ndarray:
    return pt.permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)  # (N, H, W, C)


def numpy_to_pil(images: np.ndarray) -> list:
    """N×H×W×C floats in [0, 1] -> PIL images (mode L for one channel, RGB for three; other channel
    counts are refused rather than shown as RGBA or garbage)."""
    from PIL import Image

    channels = images.shape[-1]
    if channels not in (1, 3):
        raise ValueError(
            f"{channels}-channel images have no PIL mode (1 = grayscale, 3 = RGB); a {channels}-channel "
            "model usually works in a VAE's latent space: pass vae= (a local AutoencoderKL folder), or ask "
            "for output_type='np', 'pt' or 'latent'"
        )
    arr = (images * 255).round().clip(0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        return [Image.fromarray(a[..., 0], mode="L") for a in arr]
    return [Image.fromarray(a) for a in arr]
