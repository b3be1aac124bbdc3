"""Building a run from a config: data -> effective config (what the data decides), codec, encoder,
conditioning and the model config. Nothing here trains; `ditkit.train.loop.train` calls `build_run` first.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..conditioning import Conditioning
from ..config import RunConfig, config_diff
from ..data import build_dataset, detect
from ..data.latents import LatentCache
from ..models import ModelConfig
from ..presets import model_config

# Keys a resumed run may change: bookkeeping, hardware and sampling. Anything else (model, data, optimiser)
# would silently make "resume" a different experiment, so it is refused with the list of differing keys.
RESUMABLE_KEYS = {
    "recipe",
    "train.max_steps",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_last",
    "train.sample_every",
    "train.eval_every",
    "train.threads",
    "train.device",
    "train.output_dir",
    "train.precision",
    "train.compile",
    "train.grad_checkpointing",
    "data.num_workers",
}
PIXEL_SIZE_CAP = 64  # pixel-space training infers the images' own size up to this
VAE_IMAGE_SIZE = 256  # latent training infers the SD VAE's native 256 px


@dataclass
class Run:
    """What a config builds before any weight exists."""

    config: RunConfig  # the effective config: what the data decided is filled in
    dataset: Any
    codec: Any  # the VAE (None: pixel space)
    encoder: Any  # image-embedding encoder (None: labels or unconditional)
    conditioning: Conditioning
    model_config: ModelConfig
    sample_shape: tuple[int, int, int]  # (C, H, W) of what the network sees
    notes: list[str] = field(default_factory=list)

    @property
    def is_cache(self) -> bool:
        return isinstance(self.dataset, LatentCache)


def check_resume_config(saved: RunConfig, new: RunConfig) -> None:
    conflicts = [
        k for k in config_diff(saved, new) if k not in RESUMABLE_KEYS and not k.startswith("sample.")
    ]
    if conflicts:
        a, b = saved.flat(), new.flat()
        detail = ", ".join(f"{k} (checkpoint {a.get(k)!r}, now {b.get(k)!r})" for k in conflicts[:6])
        more = f" and {len(conflicts) - 6} more" if len(conflicts) > 6 else ""
        raise ValueError(
            f"the config conflicts with the checkpoint being resumed: {detail}{more}; resume with the run's own "
            "config (drop those settings) or start a new run"
        )


def build_codec(data: Any, device: torch.device) -> Any:
    """The VAE for latent training (None: pixel space). Needs a local diffusers AutoencoderKL folder."""
    if data.vae is None:
        return None
    if not Path(data.vae).exists():
        raise FileNotFoundError(
            f"--vae {data.vae!r} is not a local folder; download it once, e.g. hf download {data.vae} "
            "--local-dir vae, and pass --vae vae"
        )
    from ..codecs import VAECodec  # the SD VAE, via diffusers (optional dependency)

    return VAECodec.from_pretrained(data.vae, device=device)


# -- what the data decides -----------------------------------------------------------------------------
def native_image_size(dataset: Any, probe: int = 8) -> int | None:
    """The smallest side among the first few images of a data set read from files, or None."""
    from PIL import Image, UnidentifiedImageError

    if not hasattr(dataset, "source"):
        return None
    import io

    sides = []
    for i in range(min(probe, len(dataset))):
        try:
            src = dataset.source(i)
            with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
                sides.append(min(im.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return min(sides) if sides else None


def infer_image_size(config: RunConfig) -> tuple[RunConfig, Any, list[str]]:
    """(config with data.image_size set, the data set, notes) when data.image_size is 0 ("infer")."""
    data = config.data
    if data.image_size:
        return config, build_dataset(data), []
    kind = detect(data.path) if data.path else None
    if kind in ("digits", "latents"):
        size, why = 8, "digits' own size"  # a cache sets its own size in effective_config
    elif data.vae:
        size, why = VAE_IMAGE_SIZE, "the VAE's native size"
    else:
        probe = build_dataset(dataclasses.replace(data, image_size=PIXEL_SIZE_CAP))
        native = native_image_size(probe)
        if native is None or native < 8:
            raise ValueError(
                f"cannot infer the image size of {data.path} (no readable image of 8 px or more); pass "
                "--image-size N"
            )
        size = min(PIXEL_SIZE_CAP, native - native % 8)
        why = f"the images' own size, {native}px"
        if native > PIXEL_SIZE_CAP:
            why += f", capped at {PIXEL_SIZE_CAP} in pixel space"
        elif size != native:
            why += ", rounded down to a multiple of 8"
    config = config.replace(data=dataclasses.replace(data, image_size=size))
    return (
        config,
        build_dataset(config.data),
        [f"data.image_size {size} (inferred: {why}; set --image-size to change)"],
    )


def effective_config(config: RunConfig, dataset: Any) -> tuple[RunConfig, list[str]]:
    """The config with what the data decides filled in (a latent cache fixes the image size and the VAE),
    so the saved config.yaml and checkpoints describe the run exactly. Returns (config, notes)."""
    notes: list[str] = []
    if not isinstance(dataset, LatentCache):
        return config, notes
    vae = config.data.vae or dataset.vae
    if vae is None or not Path(vae).exists():
        raise FileNotFoundError(
            f"{dataset.root} was encoded with the VAE {dataset.vae!r}, which is not on this machine; pass --vae "
            "PATH (the same VAE: training grids and sampling decode with it)"
        )
    if config.data.image_size != dataset.image_size:
        notes.append(f"data.image_size set to {dataset.image_size} (the cache's image size)")
    data = dataclasses.replace(config.data, image_size=dataset.image_size, vae=str(vae))
    return config.replace(data=data), notes


def model_inputs(config: RunConfig, dataset: Any, codec: Any) -> tuple[int, int]:
    """(in_channels, input_size) the network sees: pixels, latents from the VAE, or cached latents."""
    if isinstance(dataset, LatentCache):
        assert codec is not None  # effective_config resolved the cache's VAE
        if (
            abs(float(codec.scaling_factor) - dataset.scaling_factor) > 1e-9
            or codec.latent_channels != dataset.channels
        ):
            raise ValueError(
                f"{dataset.root} was encoded with a VAE of {dataset.channels} latent channels and scaling factor "
                f"{dataset.scaling_factor}, but {config.data.vae} has {codec.latent_channels} and "
                f"{codec.scaling_factor}; pass the VAE the cache was made with"
            )
        return dataset.channels, dataset.latent_size
    if codec is None:
        return dataset.channels, config.data.image_size
    if dataset.channels != codec.image_channels:
        raise ValueError(
            f"the VAE encodes {codec.image_channels}-channel images but the data has {dataset.channels} "
            "channel(s); train this data in pixel space (no --vae)"
        )
    factor = int(codec.downsample_factor)
    if config.data.image_size % factor:
        raise ValueError(
            f"data.image_size {config.data.image_size} is not a multiple of the VAE's downsampling factor "
            f"{factor}; pass --image-size {max(factor, config.data.image_size - config.data.image_size % factor)}"
        )
    return int(codec.latent_channels), config.data.image_size // factor


def build_encoder(config: RunConfig, dataset: Any, device: torch.device, notes: list[str]) -> tuple[Any, int]:
    """The image-embedding encoder and its width (None, 0 without one)."""
    if not config.model.encoder:
        return None, 0
    if isinstance(dataset, LatentCache):
        raise ValueError(
            "embedding conditioning encodes each training image; train on the images (with --vae), not on "
            "a latent cache"
        )
    from ..encoders import load_encoder

    encoder = load_encoder(config.model.encoder, device=device)
    cond_dim = int(encoder.embed_dim)
    if config.model.cond_dim and config.model.cond_dim != cond_dim:
        raise ValueError(
            f"model.cond_dim is {config.model.cond_dim} but the encoder {config.model.encoder!r} gives "
            f"{cond_dim}-wide embeddings; drop model.cond_dim or make them agree"
        )
    if dataset.num_classes:
        notes.append("the data's labels are not used: the model is conditioned on image embeddings")
    return encoder, cond_dim


def build_conditioning(config: RunConfig, dataset: Any, cond_dim: int, notes: list[str]) -> Conditioning:
    num_classes = 0 if cond_dim else dataset.num_classes
    multi = isinstance(num_classes, tuple)
    p_drop = config.model.class_dropout_prob if (num_classes or cond_dim) else 0.0
    p_attr = 0.0
    if multi and p_drop > 0:
        p_attr = config.model.attribute_dropout_prob
        p_attr = p_drop if p_attr is None else p_attr
    if config.model.attribute_dropout_prob and not multi:
        notes.append("model.attribute_dropout_prob applies to several label columns only; ignored")
    names = dataset.label_names if num_classes else None
    columns = tuple(getattr(dataset, "label_columns", ()) or ())
    return Conditioning.from_labels(
        names, num_classes, dropout=p_drop, attribute_dropout=p_attr, cond_dim=cond_dim,
        column=columns[0] if len(columns) == 1 else None,
    )  # fmt: skip


def auto_model_name(input_size: int) -> str:
    """The generic recipe's network: DiT-S with about 256 tokens or fewer."""
    return "DiT-S/2" if input_size <= 32 else "DiT-S/4"


def build_model_config(
    config: RunConfig, cond: Conditioning, in_channels: int, input_size: int
) -> ModelConfig:
    from ..models.config import TIME_INPUTS

    kind, extra = config.process.kind, {}
    if kind != "ddpm" and kind in TIME_INPUTS:
        extra["time_input"] = kind  # e.g. flow: the network's time range for that process
    if kind == "flow" and config.model.learn_sigma is None:
        extra["learn_sigma"] = False  # flow matching predicts a velocity, no variance channels
    return model_config(
        config.model.name,
        input_size=input_size,
        in_channels=in_channels,
        num_classes=tuple(cond.sizes) if cond.kind == "attributes" else (cond.sizes[0] if cond.sizes else 0),
        cond_dim=cond.cond_dim,
        class_dropout_prob=cond.dropout,
        **extra,
        **config.model.architecture(),
    )


DIGITS_DDPM_NOTE = (
    "the digits default is tuned for flow matching; `ditkit train digits-ddpm` is the tuned DDPM recipe "
    "(1500 steps at batch 128, sampled with 100 DDPM steps)"
)


def _grid_sampler(config: RunConfig, notes: list[str]) -> RunConfig:
    """A sampler for the run's grids that samples its process: for a flow run whose sample.sampler is
    DDPM-only, dpm++2m with 10 steps (FD 0.40 on the embedded default, benchmarks/process_quality.py)."""
    from ..sampling import SAMPLERS

    kind, name = config.process.kind, config.sample.sampler
    spec = SAMPLERS.get(name)
    if spec is None or kind in spec.kinds:
        return config
    notes.append(
        f"sample.sampler {name} does not sample {kind} models; grids and samples use dpm++2m, 10 steps"
    )
    return config.replace(sample=dataclasses.replace(config.sample, sampler="dpm++2m", steps=10))


def build_run(config: RunConfig, device: torch.device) -> Run:
    """Data first: what it holds decides the model's inputs and labels."""
    config, dataset, notes = infer_image_size(config)
    config, more = effective_config(config, dataset)
    notes += more
    codec = build_codec(config.data, device)
    in_channels, input_size = model_inputs(config, dataset, codec)
    if config.model.name == "auto":
        name = auto_model_name(input_size)
        notes.append(f"model {name} (the generic recipe's network for {input_size}x{input_size} inputs)")
        config = config.replace(model=dataclasses.replace(config.model, name=name))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if config.data.num_workers > cores:
        notes.append(f"data.num_workers {config.data.num_workers} capped at the {cores} usable core(s)")
        config = config.replace(data=dataclasses.replace(config.data, num_workers=cores))
    config = _grid_sampler(config, notes)
    if config.process.kind == "ddpm" and config.recipe == "digits" and config.data.path == "digits":
        notes.append(DIGITS_DDPM_NOTE)
    encoder, cond_dim = build_encoder(config, dataset, device, notes)
    cond = build_conditioning(config, dataset, cond_dim, notes)
    mcfg = build_model_config(config, cond, in_channels, input_size)
    return Run(config, dataset, codec, encoder, cond, mcfg, (in_channels, input_size, input_size), notes)
