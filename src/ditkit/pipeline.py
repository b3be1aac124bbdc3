"""DiTPipeline: class labels in, images out, with the call users know from diffusers' DiTPipeline.

The pipeline owns no arithmetic of its own: it turns labels into a conditioning tensor, wraps the network
into a (guided) model function, picks a timestep grid and a sampler from `ditkit.sampling`, and decodes the
result through a codec (identity in pixel space, the SD VAE in latent space).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .diffusion import GaussianDiffusion
from .models import DiT
from .runtime import precision_name
from .sampling import randn

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class ImagePipelineOutput:
    """`images`: a list of PIL images, an N×H×W×C numpy array in [0, 1], an N×C×H×W tensor in [0, 1], or
    the final latents (output_type "latent"); `labels`: the class ids that were sampled; `info`: sampler,
    steps, guidance_scale, guidance ("cfg", "autoguidance" or None), guidance_interval, grid, nfe (network
    evaluations per image, a batched cond + null forward counting one) and precision."""

    images: Any
    labels: list[int] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class DiTPipeline:
    """Sample a class-conditional DiT.

    `transformer` is a `ditkit.DiT`; `vae` is None (pixel space: the model's inputs are images in [-1, 1]),
    a `ditkit.codecs` codec, or a diffusers `AutoencoderKL`; `id2label` maps class ids to names
    (comma-separated synonyms allowed, as in diffusers).
    """

    def __init__(
        self,
        transformer: DiT,
        vae: Any = None,
        id2label: dict[int, str] | None = None,
        *,
        attributes: dict[str, Sequence[str]] | None = None,
        encoder: Any = None,
        process: GaussianDiffusion | None = None,
        guide_model: DiT | None = None,
        flow_process: Any = None,
    ) -> None:
        if not isinstance(transformer, DiT):
            raise ValueError(
                f"transformer must be a ditkit DiT, got {type(transformer).__name__}; load foreign weights "
                "with ditkit.load_model(path) or DiTPipeline.from_pretrained(path)"
            )
        self.transformer = transformer.eval()
        self.vae = _as_codec(vae)
        if self.vae is not None:
            from .codecs import check_codec_compat

            check_codec_compat(transformer, self.vae)
        self.id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self._label_map = None
        cfg = transformer.config
        # Multi-attribute models: one ordered list of class names per attribute, e.g. {"genre": [...], ...}.
        self.attributes = None
        if attributes:
            if not cfg.multi_label or len(attributes) != len(cfg.label_sizes):
                raise ValueError(
                    f"attributes name {len(attributes)} label sets but the model has label sizes {cfg.label_sizes}"
                )
            for (attr, names), size in zip(attributes.items(), cfg.label_sizes):
                if len(names) != size:
                    raise ValueError(
                        f"attribute {attr!r} has {len(names)} names but the model has {size} classes"
                    )
            self.attributes = {str(k): [str(n) for n in v] for k, v in attributes.items()}
        self._attribute_maps: dict[str, Any] = {}
        # Embedding-conditioned models: an encoder (encode_image / encode_text) turns prompts into conditions.
        self.encoder = encoder
        # The training process: DiT's linear 1000-step schedule unless the checkpoint says otherwise.
        self.process = process or GaussianDiffusion.from_schedule(
            "linear", 1000, learn_sigma=transformer.config.learn_sigma
        )
        # A flow-matching run's process section (dict); None for DDPM models and SiT files.
        self.flow_process = flow_process
        # Autoguidance: a weaker model of the same kind (e.g. an earlier checkpoint) guides every call.
        if guide_model is not None:
            from .sampling.run import check_guide_model

            check_guide_model(transformer, guide_model)
            guide_model = guide_model.eval()
        self.guide_model = guide_model
        # What from_pretrained read: the run's sample section (ditkit checkpoints), the source, the image size.
        self.sample_defaults: dict[str, Any] = {}
        self.sample_grid: list[float] | None = None  # an explicit grid the checkpoint records (sample.grid)
        self.source: dict[str, Any] = {}

    # -- labels -------------------------------------------------------------------------------------
    @property
    def labels(self) -> dict[str, int]:
        """Every name (each comma-separated synonym) -> class id, sorted by name, like diffusers."""
        if not self.id2label:
            return {}
        table = {name.strip(): idx for idx, label in self.id2label.items() for name in label.split(",")}
        return dict(sorted(table.items()))

    def _labels(self):
        from .labels import LabelMap

        if self._label_map is None:
            if not self.id2label:
                raise ValueError("this pipeline has no label names; pass class ids, or give id2label")
            self._label_map = LabelMap.from_id2label(self.id2label)
        return self._label_map

    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Map names to class ids; an unknown name raises a ValueError naming the closest valid names.

        A bare string is one name (diffusers would split it into characters).
        """
        names = [label] if isinstance(label, str) else list(label)
        return self._labels().ids(names)

    @property
    def conditioning(self):
        """The model's conditioning schema (`ditkit.conditioning.Conditioning`): the one place that decides what
        a name, an id, an unknown name, a free attribute and a missing null row mean."""
        from .conditioning import Conditioning

        cfg = self.transformer.config
        key = (id(cfg), id(self.id2label), id(self.attributes))
        if getattr(self, "_conditioning_key", None) != key:
            if cfg.multi_label:
                names: Any = dict(self.attributes) if self.attributes else None
            elif self.id2label and cfg.label_sizes:
                # a partial id2label (diffusers allows it) names the rest of the classes by their ids
                names = [self.id2label.get(i, str(i)) for i in range(int(cfg.num_classes))]
            else:
                names = None
            self._conditioning = Conditioning.from_model_config(cfg, names)
            self._conditioning_key = key
        return self._conditioning

    def _class_ids(self, class_labels: Any) -> list[int]:
        return self.conditioning.class_ids(class_labels)

    def _attribute_names(self) -> list[str]:
        return self.conditioning.attributes

    def _attribute_id(self, k: int, value: Any) -> int:
        """One attribute's class id from an id or a name; None means the attribute's null (unguided)."""
        return self.conditioning.attribute_id(k, value)

    def _multi_ids(self, class_labels: Any) -> list[tuple[int, ...]]:
        """Rows of per-attribute ids from dicts ({"genre": "landscape"}; missing attributes are left free),
        sequences (one entry per attribute, None = free) or an (N, K) tensor."""
        return self.conditioning.rows(class_labels)

    def _embedding_condition(self, condition: Any, prompt: Any, image: Any) -> torch.Tensor:
        cfg = self.transformer.config
        given = [v is not None for v in (condition, prompt, image)]
        if sum(given) != 1:
            raise ValueError(
                "this model is conditioned on an embedding: pass exactly one of condition=, prompt=, image="
            )
        if condition is not None:
            cond = torch.as_tensor(condition, dtype=torch.float32)
        else:
            if self.encoder is None:
                raise ValueError(
                    "prompts and images need an encoder: DiTPipeline(..., encoder=...) or --encoder"
                )
            if prompt is not None:
                cond = self.encoder.encode_text([prompt] if isinstance(prompt, str) else list(prompt))
            else:
                cond = self.encoder.encode_image(_images_to_tensor(image))
        if cond.ndim != 2 or cond.shape[1] != cfg.cond_dim:
            raise ValueError(
                f"the condition has shape {tuple(cond.shape)}; this model expects (N, {cfg.cond_dim}) embeddings"
            )
        return cond.float()

    # -- devices ------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.transformer.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.pos_embed.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiTPipeline:
        """Move the transformer (device and dtype) and the VAE (device only: it stays fp32 by default)."""
        self.transformer.to(device=device, dtype=dtype)
        if self.vae is not None and device is not None:
            self.vae.to(device)
        return self

    # -- loading and saving -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        vae: Any = None,
        use_ema: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        encoder: Any = None,
        family: str | None = None,
        guide_model: Any = None,
        precision: str | None = None,
    ) -> DiTPipeline:
        """Load any model file or folder ditkit understands (see `ditkit.io.load_any`).

        `vae` overrides the VAE: a folder path, a codec or an AutoencoderKL. A diffusers pipeline folder brings
        its own vae/; a ditkit pipeline folder may too. `family="sit"` reads SiT files. `guide_model`: a DiT or
        a path, for autoguidance. A ditkit training checkpoint also brings its process, VAE, encoder and its
        sample section (`pipe.sample_defaults`); `pipe.source` says what was loaded.

        The weights keep their stored dtype unless asked (as in diffusers): `dtype=torch.bfloat16`, or
        `precision="auto"` for the CLI's policy (bf16 where the device is fast at it, else fp32; also "fp32",
        "bf16", "fp16", checked against the device).
        """
        from .io import load_any

        if precision is not None:
            from .runtime import pick_device, precision_dtype, resolve_precision

            if dtype is not None:
                raise ValueError("pass dtype= or precision=, not both")
            device = pick_device(str(device) if device is not None else "auto")
            dtype = precision_dtype(resolve_precision(precision, device))

        loaded = load_any(path, use_ema=use_ema, family=family)
        extra = loaded.extra or {}
        if vae is None and loaded.vae_path is not None:
            vae = loaded.vae_path
        run = extra.get("run_config") or {}  # a ditkit training checkpoint's resolved config
        proc = run.get("process") or extra.get("process") or {}
        process = flow_process = None
        if proc.get("kind", "ddpm") == "flow":
            flow_process = dict(proc)
        elif proc:
            process = GaussianDiffusion.from_schedule(
                proc.get("schedule", "linear"),
                proc.get("num_timesteps", 1000),
                learn_sigma=loaded.config.learn_sigma,
            )
        if vae is None and (run.get("data") or {}).get("vae"):
            vae = run["data"]["vae"]  # latent run: the VAE it was trained with
        if encoder is None and (run.get("model") or {}).get("encoder"):
            from .encoders import load_encoder

            encoder = load_encoder(run["model"]["encoder"])
        if isinstance(guide_model, (str, os.PathLike)):
            guide_model = load_any(guide_model, use_ema=use_ema, family=family).model
        pipe = cls(
            loaded.model,
            vae=vae,
            id2label=loaded.id2label,
            attributes=loaded.attributes or extra.get("attributes"),
            encoder=encoder,
            process=process,
            guide_model=guide_model,
            flow_process=flow_process,
        )
        pipe.sample_defaults = dict(run.get("sample") or {})
        recorded = pipe.sample_defaults.get("grid") or (run.get("distill") or {}).get("grid")
        pipe.sample_grid = [float(v) for v in recorded] if recorded else None
        pipe.source = {
            "path": str(path),
            "format": loaded.format,
            "step": extra.get("step"),
            "ema": bool(use_ema and loaded.has_ema is not False),
            "image_size": (run.get("data") or {}).get("image_size"),
            "notes": list(loaded.notes),
        }
        if device is not None or dtype is not None:
            pipe.to(device, dtype)
        return pipe

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> Path:
        """Write a ditkit pipeline folder (transformer.safetensors with its config, label names, vae/)."""
        from .io import save_ditkit_pipeline

        extra = {"attributes": self.attributes} if self.attributes else {}
        if self.flow_process:
            extra["process"] = dict(self.flow_process)
        return save_ditkit_pipeline(path, self.transformer, self.id2label, vae=self.vae, extra=extra or None)

    # -- sampling -----------------------------------------------------------------------------------
    @property
    def is_flow(self) -> bool:
        """Whether this is a flow-matching model (sampled with the flow denoiser)."""
        from .sampling.flow import is_flow

        return is_flow(self.flow_process, self.transformer.config)

    def make_denoiser(
        self, network: DiT, cond: Any = None, counter: Any = None, variance_type: str | None = None
    ):
        """The unguided denoiser of ``network`` (this pipeline's model or a guide) bound to ``cond``."""
        from .sampling import DDPMDenoiser
        from .sampling.flow import denoiser_for

        if self.is_flow:
            if variance_type is not None:
                raise ValueError("variance_type applies to DDPM models only; this is a flow model")
            return denoiser_for(
                self.flow_process, network, cond, model_config=network.config, counter=counter
            )
        return DDPMDenoiser(network, self.process, cond, variance_type=variance_type, counter=counter)

    def _condition(self, class_labels, condition, prompt, image, num_images, latents):
        """(cond, null, ids, n) for the model's kind of conditioning."""
        cfg = self.transformer.config
        device = self.device
        if cfg.cond_dim:
            if class_labels is not None:
                raise ValueError(
                    "this model is conditioned on embeddings: pass condition=, prompt= or image="
                )
            y = self._embedding_condition(condition, prompt, image).to(device)
            return y, torch.zeros_like(y), None, y.shape[0]
        if cfg.label_sizes:
            if class_labels is None:
                raise ValueError("this model is class-conditional: pass class_labels (ids or names)")
            if cfg.multi_label:
                ids = self._multi_ids(class_labels)
                y = torch.tensor(ids, dtype=torch.long, device=device).view(-1, len(cfg.label_sizes))
                null = torch.tensor(cfg.label_sizes, dtype=torch.long, device=device).expand_as(y)
            else:
                ids = self._class_ids(class_labels)
                y = torch.tensor(ids, dtype=torch.long, device=device)
                null = cfg.null_label
            if not ids:
                raise ValueError("nothing to sample: class_labels is empty")
            return y, null, ids, len(ids)
        if class_labels is not None:
            raise ValueError("this model is unconditional: pass num_images=N instead of class_labels")
        n = num_images if num_images is not None else (latents.shape[0] if latents is not None else 1)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"num_images must be a positive integer, got {n!r}")
        return None, None, None, n

    def _initial_noise(self, n: int, generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        cfg = self.transformer.config
        shape = (n, cfg.in_channels, cfg.input_size, cfg.input_size)
        if latents is None:
            if isinstance(generator, (list, tuple)) and len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} images; pass one per image")
            return randn(shape, generator, device=self.device)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {shape}")
        return latents.to(device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Any = None,
        num_inference_steps: int | None = None,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        sampler: str = "ddim",
        guidance_channels: int | None = None,
        *,
        scheduler: Any = None,
        guidance_interval: tuple[float, float] | None = None,
        guide_model: DiT | None = None,
        callback: Any = None,
        grid_spacing: str | None = None,
        timesteps: Any = None,
        eta: float = 0.0,
        variance_type: str | None = None,
        num_images: int | None = None,
        condition: torch.Tensor | None = None,
        prompt: str | list[str] | None = None,
        image: Any = None,
        progress: bool = False,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Sample one image per class label.

        class_labels: ids or names (a list, or one). Multi-attribute models take one dict per image
        ({"genre": "landscape", "style": "Impressionism"}; a missing attribute is left free) or one sequence
        per image. Embedding-conditioned models take `condition` (N, cond_dim), or `prompt` / `image` through
        the pipeline's encoder. Unconditional models: leave it None and pass `num_images` (guidance_scale
        does not apply to them, except with a guide_model).
        sampler: a name of `ditkit.sampling.SAMPLERS` ("ddpm", "ddim", "euler", "heun", "dpm++2m", "unipc",
        "euler-sde"); num_inference_steps None = the sampler's default (ddpm 250, ddim 50, dpm++2m 20, ...).
        scheduler: a diffusers scheduler object instead (`set_timesteps` + `step`; default 50 steps).
        grid_spacing: the timestep grid (`ditkit.sampling.DDPM_SPACINGS`: official, ddim, leading, linspace,
        uniform, trailing, karras, logsnr); None = the sampler's own (ddpm official, ddim ddim, euler/heun
        linspace, dpm++2m/unipc uniform, as diffusers).
        guidance_scale: classifier-free guidance, active when != 1 (cond and null batched in one forward);
        guidance_interval=(lo, hi): guide only where the noise level (t/1000 for DDPM) is in [lo, hi];
        timesteps: an explicit descending grid ending at the clean point (DDPM: -1); a checkpoint that records
        one (sample.grid, a steps-distilled student) uses it by default. Guidance-distilled models
        (guidance_embed) get w = guidance_scale instead of a second forward.
        guide_model: autoguidance with a weaker model of the same kind (default: the pipeline's guide_model).
        guidance_channels: None guides every channel; 3 reproduces the official sampler.
        generator: one torch.Generator, or one per image (image k then depends on its own generator only).
        latents: the initial noise (N, C, H, W). callback(step_index, num_steps, x) after every step.
        eta: DDIM's noise (0 = deterministic, 1 = DDPM-like); for "euler-sde" a value > 0 replaces its 1.
        variance_type: None uses the model's; "fixed_small" is diffusers' DDPM scheduler (no learned sigma).
        The output's `.info` records sampler, steps, guidance, interval, grid, nfe and precision. A sample
        with NaN/inf raises a ValueError (naming a non-finite weight when there is one).
        """
        from .sampling.run import SamplingRequest, run_sampling

        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"unknown output_type {output_type!r}; choose one of {', '.join(OUTPUT_TYPES)}")
        if scheduler is None:
            from .sampling import get_sampler

            get_sampler(sampler)  # unknown names fail before any work
        y, null, ids, n = self._condition(class_labels, condition, prompt, image, num_images, latents)
        x = self._initial_noise(n, generator, latents)
        recorded = self.sample_grid
        if (
            timesteps is None
            and recorded
            and scheduler is None
            and grid_spacing is None
            and sampler == self.sample_defaults.get("sampler", sampler)
            and num_inference_steps in (None, len(recorded) - 1)
        ):
            timesteps = recorded
        request = SamplingRequest(
            make_denoiser=lambda net, cond, counter: self.make_denoiser(net, cond, counter, variance_type),
            network=self.transformer,
            cond=y,
            null=null,
            has_null=self.transformer.config.has_null_label,
            sampler=sampler,
            steps=num_inference_steps,
            spacing=grid_spacing,
            grid=timesteps,
            guidance_scale=guidance_scale,
            guidance_channels=guidance_channels,
            guidance_interval=guidance_interval,
            guide_model=guide_model if guide_model is not None else self.guide_model,
            scheduler=scheduler,
            eta=eta,
            callback=callback,
            progress=progress,
        )
        out, info = run_sampling(request, x, generator)
        info["precision"] = precision_name(self.dtype)
        images = self._decode(out, output_type)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images, labels=ids, info=info)

    def _decode(self, out: torch.Tensor, output_type: str) -> Any:
        if output_type == "latent":
            return out
        decoded = self.vae.decode(out) if self.vae is not None else out
        pt = (decoded.float() / 2 + 0.5).clamp(0, 1)  # (N, C, H, W) in [0, 1]
        if output_type == "pt":
            return pt
        images = _to_numpy(pt)
        return numpy_to_pil(images) if output_type == "pil" else images


def _images_to_tensor(image: Any) -> torch.Tensor:
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


def _as_codec(vae: Any) -> Any:
    """None stays None (pixel space); paths and diffusers AutoencoderKL become a VAECodec."""
    if vae is None:
        return None
    from . import codecs

    if isinstance(vae, (str, os.PathLike)):
        return codecs.VAECodec.from_pretrained(vae)
    if hasattr(vae, "decode") and hasattr(vae, "encode") and hasattr(vae, "scaling_factor"):
        return vae  # already a codec
    return codecs.VAECodec(vae)
