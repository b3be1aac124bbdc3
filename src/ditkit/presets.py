"""Model presets by name. The keys are what `create_model` and the CLI accept."""

from __future__ import annotations

import difflib
from typing import Any

import torch

from .models import DiT, ModelConfig

# (depth, hidden_size, num_heads) of the four official sizes; every size comes with patch 2, 4 and 8.
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    f"DiT-{size}/{patch}": {"depth": depth, "hidden_size": width, "num_heads": heads, "patch_size": patch}
    for size, (depth, width, heads) in _SIZES.items()
    for patch in (2, 4, 8)
}
# The embedded default: a small pixel-space DiT for the native 8x8 single-channel digits (see recipes), with
# the digits' own input shape and classes, so `ditkit info DiT-Digits` reports what the default run trains.
MODEL_PRESETS["DiT-Digits"] = {
    "depth": 4,
    "hidden_size": 128,
    "num_heads": 4,
    "patch_size": 2,
    "input_size": 8,
    "in_channels": 1,
    "num_classes": 10,
}

# huggan/wikiart label sets (class-label order of the dataset).
WIKIART_GENRES = (
    "abstract_painting",
    "cityscape",
    "genre_painting",
    "illustration",
    "landscape",
    "nude_painting",
    "portrait",
    "religious_painting",
    "sketch_and_study",
    "still_life",
    "Unknown Genre",
)
WIKIART_STYLES = (
    "Abstract_Expressionism",
    "Action_painting",
    "Analytical_Cubism",
    "Art_Nouveau",
    "Baroque",
    "Color_Field_Painting",
    "Contemporary_Realism",
    "Cubism",
    "Early_Renaissance",
    "Expressionism",
    "Fauvism",
    "High_Renaissance",
    "Impressionism",
    "Mannerism_Late_Renaissance",
    "Minimalism",
    "Naive_Art_Primitivism",
    "New_Realism",
    "Northern_Renaissance",
    "Pointillism",
    "Pop_Art",
    "Post_Impressionism",
    "Realism",
    "Rococo",
    "Romanticism",
    "Symbolism",
    "Synthetic_Cubism",
    "Ukiyo_e",
)
# DiT-WikiArt (seed 000): post-norm, learned position embedding, no final adaLN ("omitted final linear
# layer": the last post-norm block already normalises and modulates, so only the output projection is left),
# noise-only prediction, patch 2, genre + style conditioning on 32x32x4 SD-VAE latents.
_WIKIART = {
    "patch_size": 2,
    "input_size": 32,
    "in_channels": 4,
    "num_classes": (len(WIKIART_GENRES), len(WIKIART_STYLES)),
    "learn_sigma": False,
    "norm": "post",
    "pos_embed": "learned",
    "final_layer": "linear",
}
for _size, (_depth, _width, _heads) in {"S": (8, 384, 6), "B": (12, 640, 10), "L": (16, 896, 14)}.items():
    MODEL_PRESETS[f"DiT-WikiArt-{_size}"] = {
        "depth": _depth,
        "hidden_size": _width,
        "num_heads": _heads,
        **_WIKIART,
    }

# Label names a preset comes with: one list per attribute.
PRESET_LABELS: dict[str, dict[str, tuple[str, ...]]] = {
    name: {"genre": WIKIART_GENRES, "style": WIKIART_STYLES} for name in MODEL_PRESETS if "WikiArt" in name
}


def suggest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """' (did you mean A, B?)' for the closest choices, compared without regard to case."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(str(c).lower(), str(c))
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=n, cutoff=0.3)
    return f" (did you mean {', '.join(by_lower[c] for c in close)}?)" if close else ""


def preset_name(name: str) -> str:
    """The canonical spelling of a preset name, matched without regard to case ("dit-xl/2" -> "DiT-XL/2");
    a one-line error with the closest names otherwise."""
    if name in MODEL_PRESETS:
        return name
    lower = {k.lower(): k for k in MODEL_PRESETS}
    if isinstance(name, str) and name.strip().lower() in lower:
        return lower[name.strip().lower()]
    raise ValueError(
        f"unknown model {name!r}{suggest(str(name), list(MODEL_PRESETS))}; valid models: "
        + ", ".join(MODEL_PRESETS)
    )


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset (name in any case), with keyword overrides (input_size, num_classes, ...)."""
    name = preset_name(name)
    fields = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(fields - {'name'})}")
    values = {**MODEL_PRESETS[name], "name": name, **overrides}
    # Blocks without adaLN get a plain final layer unless asked otherwise: conditioning then enters only
    # through the design under study (extra tokens or cross-attention).
    if values.get("block") in ("in-context", "cross-attention") and "final_layer" not in overrides:
        values["final_layer"] = "norm"
    return ModelConfig(**values)


def create_model(
    name: str,
    *,
    input_size: int | None = None,
    in_channels: int | None = None,
    num_classes: int | tuple[int, ...] | None = None,
    learn_sigma: bool | None = None,
    class_dropout_prob: float | None = None,
    block: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> DiT:
    """Build a DiT by preset name, e.g. `create_model("DiT-XL/2")` (official init: outputs exactly zero).

    Unset arguments take the preset's value, else the official default (input_size 32, in_channels 4,
    num_classes 1000, learn_sigma True, class_dropout_prob 0.1, block "adaln-zero"). `block` is one of the
    paper's designs: "adaln-zero", "adaln", "cross-attention", "in-context". `device="meta"` builds a
    weightless skeleton (for shapes and parameter counts, or `to_empty` + `initialize_weights` later).
    """
    given = {
        "input_size": input_size,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "learn_sigma": learn_sigma,
        "class_dropout_prob": class_dropout_prob,
        "block": block,
    }
    config = model_config(name, **{k: v for k, v in given.items() if v is not None}, **overrides)
    return build_model(config, device=device, dtype=dtype)


def build_model(
    config: ModelConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DiT:
    if device is not None:
        with torch.device(device):
            model = DiT(config)
    else:
        model = DiT(config)
    if dtype is not None:
        model = model.to(dtype)
    return model
