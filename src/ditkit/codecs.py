"""Latent codecs: the only place that knows how images become the tensors a DiT denoises.

`IdentityCodec` is pixel space. `VAECodec` wraps diffusers' `AutoencoderKL` loaded from a local folder (the
Stable Diffusion `sd-vae-ft-ema` / `sd-vae-ft-mse` VAEs DiT was trained with); the latent scale factor comes
from the VAE's own config (`scaling_factor`, 0.18215 for sd-vae-ft-*), never from a constant elsewhere.

Images are (N, 3, H, W) in [-1, 1]. Latents are the *scaled* VAE latents, what the network sees.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

# The SD VAEs' published factor, used only when a VAE config lacks `scaling_factor` (very old diffusers).
SD_VAE_SCALING_FACTOR = 0.18215
VAE_CLASS_NAMES = ("AutoencoderKL",)


@runtime_checkable
class Codec(Protocol):
    latent_channels: int | None
    downsample_factor: int
    scaling_factor: float

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class IdentityCodec:
    """Pixel space: latents are the images. `channels=None` accepts any channel count."""

    downsample_factor = 1
    scaling_factor = 1.0

    def __init__(self, channels: int | None = None) -> None:
        self.latent_channels = channels

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def __repr__(self) -> str:
        return f"IdentityCodec(channels={self.latent_channels})"


def find_vae_folder(path: str | os.PathLike) -> Path:
    """The folder holding an AutoencoderKL (config.json + weights). A pipeline folder resolves to its vae/."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such VAE folder; download one once, e.g. `hf download stabilityai/sd-vae-ft-ema "
            "--local-dir sd-vae-ft-ema`, and pass that folder"
        )
    if not path.is_dir():
        raise ValueError(
            f"{path}: a VAE must be a folder (config.json + diffusion_pytorch_model.*), not a file"
        )
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"  # a diffusers or ditkit pipeline folder
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path}: not a VAE folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise ValueError(f"{config_file}: not valid JSON ({err})") from None
    cls = config.get("_class_name") if isinstance(config, dict) else None
    if cls not in VAE_CLASS_NAMES:
        raise ValueError(f"{path}: not a VAE (config.json says _class_name={cls!r}; expected AutoencoderKL)")
    weights = [p for p in path.iterdir() if p.name.startswith("diffusion_pytorch_model")]
    if not weights:
        raise ValueError(f"{path}: VAE weights missing (no diffusion_pytorch_model.safetensors or .bin)")
    return path


class VAECodec:
    """diffusers' AutoencoderKL as a codec; batched encode/decode in the VAE's dtype (fp32 by default)."""

    def __init__(self, vae, *, batch_size: int = 16, path: Path | None = None) -> None:
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        factor = getattr(cfg, "scaling_factor", None)
        self.scaling_factor = float(factor) if factor is not None else SD_VAE_SCALING_FACTOR
        self.latent_channels = int(cfg.latent_channels)
        self.downsample_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.image_channels = int(cfg.in_channels)
        self.batch_size = batch_size
        self.path = path

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        *,
        batch_size: int = 16,
    ) -> VAECodec:
        folder = find_vae_folder(path)
        try:
            from diffusers import AutoencoderKL
        except ImportError:  # pragma: no cover - diffusers is a test dependency
            raise ValueError("the VAE codec needs diffusers: pip install 'ditkit[diffusers]'") from None
        try:
            from diffusers.utils import is_accelerate_available

            # Without accelerate, diffusers prints a notice on every load unless this is off: say it ourselves.
            quiet = {} if is_accelerate_available() else {"low_cpu_mem_usage": False}
        except ImportError:  # pragma: no cover - older diffusers
            quiet = {}
        try:
            vae = AutoencoderKL.from_pretrained(
                str(folder), torch_dtype=dtype, local_files_only=True, **quiet
            )
        except Exception as err:  # diffusers raises many types; the CLI wants one line naming the file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{folder}: could not load the VAE: {first[:200]}") from None
        if device is not None:
            vae = vae.to(device)
        return cls(vae, batch_size=batch_size, path=folder)

    # -- properties -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> VAECodec:
        # Pass only what is asked: diffusers warns about any dtype argument to `.to()`, even None.
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        if kwargs:
            self.vae.to(**kwargs)
        return self

    def __repr__(self) -> str:
        return (
            f"VAECodec(path={str(self.path) if self.path else None!r}, latent_channels={self.latent_channels}, "
            f"downsample_factor={self.downsample_factor}, scaling_factor={self.scaling_factor})"
        )

    # -- encode ---------------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise ValueError(
                f"images have shape {tuple(images.shape)}; the VAE expects (N, {self.image_channels}, H, W) in [-1, 1]"
            )
        h, w = images.shape[-2:]
        if h % self.downsample_factor or w % self.downsample_factor:
            raise ValueError(
                f"image size {h}x{w} is not a multiple of the VAE's downsampling factor {self.downsample_factor}"
            )

    @torch.no_grad()
    def encode_posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and std (unscaled, fp32) of each image; cache these to re-sample latents later."""
        self._check_images(images)
        means, stds = [], []
        for chunk in images.split(self.batch_size):
            dist = self.vae.encode(chunk.to(self.device, self.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means).to(images.device), torch.cat(stds).to(images.device)

    def latents_from_posterior(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        """Scaled latents from cached posterior moments: (mean + std * eps) * scale, or mean * scale."""
        if not sample:
            return mean * self.scaling_factor
        gen_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype).to(
            mean.device
        )
        return (mean + std * eps) * self.scaling_factor

    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (a posterior sample by default, else its mean).

        The noise is drawn once for the whole batch, so the result does not depend on `batch_size`.
        """
        mean, std = self.encode_posterior(images)
        return self.latents_from_posterior(mean, std, generator=generator, sample=sample)

    # -- decode ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (fp32, on the latents' device)."""
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents have shape {tuple(latents.shape)}; this VAE decodes (N, {self.latent_channels}, h, w)"
            )
        out = []
        for chunk in latents.split(self.batch_size):
            z = (chunk.float() / self.scaling_factor).to(self.device, self.dtype)
            out.append(self.vae.decode(z).sample.float())
        images = torch.cat(out).to(latents.device)
        return images.clamp(-1, 1) if clamp else images


def load_codec(
    path: str | os.PathLike | None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    channels: int | None = None,
) -> IdentityCodec | VAECodec:
    """`None` -> pixel space (IdentityCodec); a folder -> the AutoencoderKL in it."""
    if path is None:
        return IdentityCodec(channels)
    return VAECodec.from_pretrained(path, dtype=dtype, device=device)


def check_codec_compat(model, codec: Codec, image_size: int | None = None) -> None:
    """Raise a one-line ValueError when a model cannot run on a codec's latents (channels or resolution)."""
    cfg = model.config if hasattr(model, "config") else model
    where = f" ({codec.path})" if getattr(codec, "path", None) else ""
    if codec.latent_channels is not None and codec.latent_channels != cfg.in_channels:
        raise ValueError(
            f"the VAE{where} has {codec.latent_channels} latent channels but the model expects "
            f"{cfg.in_channels} input channels; use the VAE the model was trained with"
        )
    if image_size is not None:
        f = codec.downsample_factor
        if image_size % f or image_size // f != cfg.input_size:
            native = cfg.input_size * f
            raise ValueError(
                f"image size {image_size} does not fit this model: it works on {cfg.input_size}x{cfg.input_size} "
                f"latents, i.e. {native}x{native} images with this codec (downsampling x{f}); use "
                f"--image-size {native} or a model trained at {image_size}"
            )
