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

import torch

from . import pipeline_inputs as inputs
from . import pipeline_io
from .diffusion import GaussianDiffusion
from .models import DiT
from .pipeline_output import OUTPUT_TYPES, decode_output, numpy_to_pil
from .runtime import precision_name
from .sampling.run import SamplingRequest, run_sampling

__all__ = ["OUTPUT_TYPES", "DiTPipeline", "ImagePipelineOutput", "numpy_to_pil"]


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
        self.vae = pipeline_io.as_codec(vae)
        if self.vae is not None:
            from .codecs import check_codec_compat

            check_codec_compat(transformer, self.vae)
        self.id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self._label_map = None
        cfg = transformer.config
        # Multi-attribute models: one ordered list of class names per attribute, e.g. {"genre": [...], ...}.
        self.attributes = inputs.check_attributes(cfg, attributes)
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

        device, dtype = pipeline_io.device_and_dtype(device, dtype, precision)
        loaded = load_any(path, use_ema=use_ema, family=family)
        run = pipeline_io.run_config(loaded)
        process, flow_process = pipeline_io.processes(loaded, run)
        pipe = cls(
            loaded.model,
            vae=vae if vae is not None else pipeline_io.default_vae(loaded, run),
            id2label=loaded.id2label,
            attributes=loaded.attributes or (loaded.extra or {}).get("attributes"),
            encoder=encoder if encoder is not None else pipeline_io.default_encoder(run),
            process=process,
            guide_model=pipeline_io.load_guide_model(guide_model, use_ema, family),
            flow_process=flow_process,
        )
        pipe.sample_defaults = dict(run.get("sample") or {})
        pipe.sample_grid = pipeline_io.sample_grid(pipe.sample_defaults, run)
        pipe.source = pipeline_io.source_info(path, loaded, use_ema, run)
        if device is not None or dtype is not None:
            pipe.to(device, dtype)
        return pipe

    def save_pretrained(self, path: str | os.PathLike, *, safe_serialization: bool = True) -> Path:
        """Write a ditkit pipeline folder (transformer.safetensors with its config, label names, vae/)."""
        from .io import save_ditkit_pipeline

        extra = pipeline_io.folder_extra(self.attributes, self.flow_process)
        return save_ditkit_pipeline(path, self.transformer, self.id2label, vae=self.vae, extra=extra)

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
        if cfg.cond_dim:
            if class_labels is not None:
                raise ValueError(
                    "this model is conditioned on embeddings: pass condition=, prompt= or image="
                )
            y = inputs.embedding_condition(cfg, self.encoder, condition, prompt, image).to(self.device)
            return y, torch.zeros_like(y), None, y.shape[0]
        if cfg.label_sizes:
            return inputs.label_condition(self.conditioning, cfg, class_labels, self.device)
        return None, None, None, inputs.unconditional_count(class_labels, num_images, latents)

    def _timesteps(self, timesteps: Any, scheduler: Any, spacing: Any, sampler: str, steps: Any) -> Any:
        """The call's explicit grid; else, when it asks for no spacing or scheduler either, the grid the
        checkpoint records if the call samples as recorded (same sampler, default or matching step count)."""
        if timesteps is not None or scheduler is not None or spacing is not None:
            return timesteps
        recorded = self.sample_grid
        if (
            recorded
            and sampler == self.sample_defaults.get("sampler", sampler)
            and steps in (None, len(recorded) - 1)
        ):
            return recorded
        return None

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
        inputs.check_call(output_type, sampler, scheduler)
        y, null, ids, n = self._condition(class_labels, condition, prompt, image, num_images, latents)
        x = inputs.initial_noise(self.transformer.config, n, generator, latents, self.device)
        timesteps = self._timesteps(timesteps, scheduler, grid_spacing, sampler, num_inference_steps)
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
        return self._output(out, info, ids, output_type, return_dict)

    def _output(self, out: torch.Tensor, info: dict, ids: Any, output_type: str, return_dict: bool) -> Any:
        """The call's result: the decoded images, with the labels and the info (plus the precision)."""
        info["precision"] = precision_name(self.dtype)
        images = decode_output(out, output_type, self.vae)
        return ImagePipelineOutput(images=images, labels=ids, info=info) if return_dict else (images,)
