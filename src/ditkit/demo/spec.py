"""What the demo page offers for one pipeline: the label picker, samplers, input bounds and the model card.

Pure functions of the pipeline (no Gradio), so the page, the API and the tests share one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ANY = "any"  # the attribute dropdowns' choice for "leave this attribute free" (unguided)
ANY_ID = -1
DEFAULT_SAMPLER = "ddim"


@dataclass(frozen=True)
class Bounds:
    """Limits on every input; the page's widgets and `validate` in `generate` both use them."""

    max_steps: int = 100
    max_images: int = 10
    min_guidance: float = 0.0
    max_guidance: float = 10.0
    max_prompt_chars: int = 300
    max_upload_bytes: int = 10 * 2**20
    max_upload_pixels: int = 4096 * 4096
    upload_types: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


@dataclass
class LabelPicker:
    """kind: "classes" (one searchable dropdown), "attributes" (one dropdown per attribute, "any" first),
    "embedding" (a prompt box and an image upload) or "none" (unconditional). Choices are (name, id)."""

    kind: str
    classes: list[tuple[str, int]] = field(default_factory=list)
    attributes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    cond_dim: int = 0
    has_encoder: bool = False


@dataclass
class DemoSpec:
    name: str
    picker: LabelPicker
    samplers: list[str]
    default_sampler: str
    default_steps: dict[str, int]
    max_steps: int
    guidance: bool  # False: the model has no null label (or no condition), guidance is fixed at 1
    resolution: tuple[int, int]
    channels: int
    card: dict[str, str]
    bounds: Bounds = field(default_factory=Bounds)
    default_guidance: float = 4.0  # the run's own sample.guidance_scale when the checkpoint records one

    def card_markdown(self) -> str:
        return " · ".join(f"**{k}** {v}" for k, v in self.card.items())


def label_picker(pipe: Any) -> LabelPicker:
    cfg = pipe.transformer.config
    if cfg.cond_dim:
        return LabelPicker("embedding", cond_dim=int(cfg.cond_dim), has_encoder=pipe.encoder is not None)
    if not cfg.label_sizes:
        return LabelPicker("none")
    if cfg.multi_label:
        names = (
            list(pipe.attributes) if pipe.attributes else [f"attr{k}" for k in range(len(cfg.label_sizes))]
        )
        attributes = {}
        for attr, size in zip(names, cfg.label_sizes):
            values = pipe.attributes[attr] if pipe.attributes else [str(i) for i in range(size)]
            attributes[attr] = [(ANY, ANY_ID)] + [(str(v), i) for i, v in enumerate(values)]
        return LabelPicker("attributes", attributes=attributes)
    id2label = pipe.id2label or {}
    classes = [(str(id2label.get(i, i)), i) for i in range(int(cfg.num_classes))]
    return LabelPicker("classes", classes=classes)


def process_kind(pipe: Any) -> str:
    """ "flow" for flow-matching pipelines, else "ddpm"."""
    flow = getattr(pipe, "is_flow", None)
    if isinstance(flow, bool):
        return "flow" if flow else "ddpm"
    return "flow" if "flow" in type(getattr(pipe, "process", None)).__name__.lower() else "ddpm"


def sampler_choices(kind: str = "ddpm") -> dict[str, int]:
    """Sampler name -> its default number of steps, for the samplers that support this process kind."""
    from ..sampling import SAMPLERS

    out = {}
    for name, spec in SAMPLERS.items():
        kinds = getattr(spec, "kinds", None) or getattr(spec, "processes", None)
        if kinds is not None and kind not in kinds:
            continue
        steps = getattr(spec, "default_steps", None)
        out[name] = int(steps) if isinstance(steps, int) and steps > 0 else (250 if name == "ddpm" else 50)
    return out


def resolution(pipe: Any) -> tuple[int, int]:
    cfg = pipe.transformer.config
    factor = int(getattr(pipe.vae, "downsample_factor", 1)) if pipe.vae is not None else 1
    side = int(cfg.input_size) * factor
    return side, side


def _precision(dtype: Any) -> str:
    from ..runtime import precision_name

    return precision_name(dtype)


def _conditioning(picker: LabelPicker) -> str:
    if picker.kind == "classes":
        return f"{len(picker.classes)} classes"
    if picker.kind == "attributes":
        return ", ".join(f"{a} ({len(c) - 1})" for a, c in picker.attributes.items())
    if picker.kind == "embedding":
        return f"{picker.cond_dim}-d embeddings" + ("" if picker.has_encoder else " (no encoder)")
    return "unconditional"


def build_spec(pipe: Any, name: str, bounds: Bounds | None = None) -> DemoSpec:
    bounds = bounds or Bounds()
    cfg = pipe.transformer.config
    picker = label_picker(pipe)
    kind = process_kind(pipe)
    samplers = sampler_choices(kind)
    if not samplers:
        raise ValueError(f"no sampler supports this model's {kind!r} process")
    num_timesteps = getattr(pipe.process, "num_timesteps", None)
    max_steps = (
        min(bounds.max_steps, int(num_timesteps)) if kind == "ddpm" and num_timesteps else bounds.max_steps
    )
    default_steps = {k: min(v, max_steps) for k, v in samplers.items()}
    # A ditkit run records how it samples (e.g. the digits default: dpm++2m, 10 steps, guidance 1.5): start there.
    run = getattr(pipe, "sample_defaults", None) or {}
    default_sampler = DEFAULT_SAMPLER if DEFAULT_SAMPLER in samplers else next(iter(samplers))
    if run.get("sampler") in samplers:
        default_sampler = run["sampler"]
        if isinstance(run.get("steps"), int) and 1 <= run["steps"] <= max_steps:
            default_steps[default_sampler] = run["steps"]
    guidance_default = float(run.get("guidance_scale", 4.0))
    if not 0 <= guidance_default <= bounds.max_guidance:
        guidance_default = 4.0
    params = sum(p.numel() for p in pipe.transformer.parameters())
    res = resolution(pipe)
    channels = 3 if pipe.vae is not None else int(cfg.in_channels)
    card = {
        "checkpoint": name,
        "parameters": f"{params / 1e6:.2f}M ({params:,})",
        "resolution": f"{res[0]}x{res[1]} px, {channels} channel{'s' if channels > 1 else ''}"
        + (f" (latent {cfg.input_size}x{cfg.input_size})" if pipe.vae is not None else ""),
        "precision": _precision(pipe.dtype),
        "device": str(pipe.device),
        "conditioning": _conditioning(picker),
        "process": kind,
    }
    return DemoSpec(
        name=name,
        picker=picker,
        samplers=list(samplers),
        default_sampler=default_sampler,
        default_steps=default_steps,
        max_steps=max_steps,
        guidance=picker.kind != "none" and bool(cfg.has_null_label),
        resolution=res,
        channels=channels,
        card=card,
        bounds=bounds,
        default_guidance=guidance_default,
    )
