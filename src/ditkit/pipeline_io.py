"""Loading and saving helpers for `ditkit.pipeline.DiTPipeline`.

What a model file brings besides its weights (process, VAE, encoder, guide model, the run's sample section
and a record of what was loaded), the device/dtype that `precision=` asks for, the VAE argument as a codec,
and the `extra` section a saved pipeline folder keeps.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .diffusion import GaussianDiffusion


def device_and_dtype(
    device: torch.device | str | None, dtype: torch.dtype | None, precision: str | None
) -> tuple[Any, torch.dtype | None]:
    """`precision=` ("auto", "fp32", "bf16", "fp16") resolved against the device into a dtype, as the CLI does."""
    if precision is None:
        return device, dtype
    from .runtime import pick_device, precision_dtype, resolve_precision

    if dtype is not None:
        raise ValueError("pass dtype= or precision=, not both")
    device = pick_device(str(device) if device is not None else "auto")
    return device, precision_dtype(resolve_precision(precision, device))


def run_config(loaded: Any) -> dict[str, Any]:
    """A ditkit training checkpoint's resolved config ({} for other files)."""
    return (loaded.extra or {}).get("run_config") or {}


def processes(loaded: Any, run: dict[str, Any]) -> tuple[GaussianDiffusion | None, dict[str, Any] | None]:
    """(process, flow_process): the DDPM process the file records (None: the pipeline's default) or, for a
    flow-matching run, its process section."""
    proc = run.get("process") or (loaded.extra or {}).get("process") or {}
    if proc.get("kind", "ddpm") == "flow":
        return None, dict(proc)
    if proc:
        process = GaussianDiffusion.from_schedule(
            proc.get("schedule", "linear"),
            proc.get("num_timesteps", 1000),
            learn_sigma=loaded.config.learn_sigma,
        )
        return process, None
    return None, None


def default_vae(loaded: Any, run: dict[str, Any]) -> Any:
    """The VAE a file brings: a pipeline folder's vae/, else the VAE a latent run was trained with."""
    if loaded.vae_path is not None:
        return loaded.vae_path
    return (run.get("data") or {}).get("vae") or None


def default_encoder(run: dict[str, Any]) -> Any:
    """The condition encoder a training run names, loaded (None when it names none)."""
    spec = (run.get("model") or {}).get("encoder")
    if not spec:
        return None
    from .encoders import load_encoder

    return load_encoder(spec)


def load_guide_model(guide_model: Any, use_ema: bool, family: str | None) -> Any:
    """A guide model given as a path is loaded like the main model; a DiT (or None) is returned as is."""
    if isinstance(guide_model, (str, os.PathLike)):
        from .io import load_any

        return load_any(guide_model, use_ema=use_ema, family=family).model
    return guide_model


def sample_grid(sample_defaults: dict[str, Any], run: dict[str, Any]) -> list[float] | None:
    """An explicit timestep grid the checkpoint records (sample.grid, or a steps-distilled student's grid)."""
    recorded = sample_defaults.get("grid") or (run.get("distill") or {}).get("grid")
    return [float(v) for v in recorded] if recorded else None


def source_info(path: str | os.PathLike, loaded: Any, use_ema: bool, run: dict[str, Any]) -> dict[str, Any]:
    """What was loaded: path, format, training step, whether EMA weights, image size, loader notes."""
    return {
        "path": str(path),
        "format": loaded.format,
        "step": (loaded.extra or {}).get("step"),
        "ema": bool(use_ema and loaded.has_ema is not False),
        "image_size": (run.get("data") or {}).get("image_size"),
        "notes": list(loaded.notes),
    }


def folder_extra(attributes: Any, flow_process: Any) -> dict[str, Any] | None:
    """The `extra` section a saved pipeline folder keeps: attribute names and a flow run's process."""
    extra = {"attributes": attributes} if attributes else {}
    if flow_process:
        extra["process"] = dict(flow_process)
    return extra or None


def as_codec(vae: Any) -> Any:
    """None stays None (pixel space); paths and diffusers AutoencoderKL become a VAECodec."""
    if vae is None:
        return None
    from . import codecs

    if isinstance(vae, (str, os.PathLike)):
        return codecs.VAECodec.from_pretrained(vae)
    if hasattr(vae, "decode") and hasattr(vae, "encode") and hasattr(vae, "scaling_factor"):
        return vae  # already a codec
    return codecs.VAECodec(vae)
