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
# The embedded default: a small pixel-space DiT for 16x16 single-channel digits (see recipes).
MODEL_PRESETS["DiT-Digits"] = {"depth": 4, "hidden_size": 128, "num_heads": 4, "patch_size": 2}


def suggest(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a preset, with keyword overrides (input_size, num_classes, ...)."""
    if name not in MODEL_PRESETS:
        raise ValueError(
            f"unknown model {name!r}{suggest(name, list(MODEL_PRESETS))}; valid models: "
            + ", ".join(MODEL_PRESETS)
        )
    fields = set(ModelConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(fields - {'name'})}")
    return ModelConfig(**{**MODEL_PRESETS[name], "name": name, **overrides})


def create_model(
    name: str,
    *,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    class_dropout_prob: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> DiT:
    """Build a DiT by preset name, e.g. `create_model("DiT-XL/2")` (official init: outputs exactly zero).

    `device="meta"` builds a weightless skeleton (for shapes and parameter counts, or `to_empty` later).
    """
    config = model_config(
        name,
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=learn_sigma,
        class_dropout_prob=class_dropout_prob,
        **overrides,
    )
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
