"""The config.json of a diffusers `DiTTransformer2DModel`, both ways: read into a ditkit `ModelConfig` (with
`arithmetic="diffusers"`, refusing variants ditkit cannot reproduce exactly), and written from one.
"""

from __future__ import annotations

import json
from typing import Any

from ..models import ModelConfig
from .layouts import require_official_layout

# Written into config.json; diffusers ignores keys that start with "_".
ARITHMETIC_KEY = "_ditkit_arithmetic"
# A model's time convention when it is not DDPM's ("flow": 1000 s, velocity out; "sit"), and a flow-matching
# run's process section, so ditkit reads an exported flow model back as one.
TIME_INPUT_KEY = "_ditkit_time_input"
PROCESS_KEY = "_ditkit_process"
# DiTTransformer2DModel's constructor defaults (dit-facts §2.1), for keys a config.json leaves out.
_DIT_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": None,
    "num_layers": 28,
    "attention_bias": True,
    "sample_size": 32,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
}
# The sizes of a config.json, each a whole number.
_INT_KEYS = (
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "num_layers",
    "sample_size",
    "patch_size",
    "num_embeds_ada_norm",
)
# The legacy Transformer2DModel has other defaults, so its config must spell these out.
_LEGACY_REQUIRED = _INT_KEYS + ("activation_fn", "norm_type")


def diffusers_version() -> str:
    try:
        import diffusers

        return diffusers.__version__
    except ImportError:  # pragma: no cover
        return "0.29.0"  # the first release with DiTTransformer2DModel


def _check_types(c: dict[str, Any], where: str) -> None:
    """Every size in a config.json must be a whole number (JSON null, text or 2.5 is a damaged config)."""
    for key in _INT_KEYS + ("out_channels",):
        value = c.get(key)
        if value is None and key in ("out_channels", "num_embeds_ada_norm"):
            continue  # meaningful nulls, handled below
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(
                f"{where}: config.json has {key}={json.dumps(value)}; it must be a positive whole number"
            )
        if value <= 0 and key not in ("num_embeds_ada_norm",):
            raise ValueError(f"{where}: config.json has {key}={value}; it must be positive")


def config_from_diffusers(cfg: dict[str, Any], mlp_rows: int | None, where: str) -> ModelConfig:
    """ModelConfig (arithmetic="diffusers") of a DiTTransformer2DModel config.json; refuses variants ditkit
    cannot reproduce exactly."""
    cls = cfg.get("_class_name")
    if cls == "Transformer2DModel":
        missing = [k for k in _LEGACY_REQUIRED if cfg.get(k) is None]
        if missing:
            raise ValueError(f"{where}: a Transformer2DModel config without {missing}; is this a DiT?")
    c = {**_DIT_DEFAULTS, **cfg}
    _check_types(c, where)
    checks = {
        "norm_type": "ada_norm_zero",
        "activation_fn": "gelu-approximate",
        "norm_elementwise_affine": False,
        "attention_bias": True,
    }
    for key, want in checks.items():
        if c[key] != want:
            raise ValueError(f"{where}: {key}={c[key]!r} is not a DiT (ditkit reads {key}={want!r} only)")
    if c.get("cross_attention_dim") is not None:
        raise ValueError(
            f"{where}: cross_attention_dim is set; a class-conditional DiT has no cross-attention"
        )
    if not isinstance(c["norm_eps"], (int, float)) or abs(float(c["norm_eps"]) - 1e-5) > 1e-12:
        raise ValueError(
            f"{where}: norm_eps={c['norm_eps']!r}; ditkit reproduces diffusers' DiT with its default 1e-5 only"
        )
    if c["num_embeds_ada_norm"] is None:
        raise ValueError(f"{where}: num_embeds_ada_norm is null; a DiT needs a class count")
    hidden = int(c["num_attention_heads"]) * int(c["attention_head_dim"])
    in_ch = int(c["in_channels"])
    out_ch = in_ch if c.get("out_channels") is None else int(c["out_channels"])
    if out_ch not in (in_ch, 2 * in_ch):
        raise ValueError(
            f"{where}: out_channels={out_ch} for in_channels={in_ch}; ditkit supports {in_ch} (eps) or "
            f"{2 * in_ch} (eps + learned variance)"
        )
    mlp_ratio = mlp_rows / hidden if mlp_rows else 4.0
    try:
        return ModelConfig(
            depth=int(c["num_layers"]),
            hidden_size=hidden,
            num_heads=int(c["num_attention_heads"]),
            patch_size=int(c["patch_size"]),
            input_size=int(c["sample_size"]),
            in_channels=in_ch,
            num_classes=int(c["num_embeds_ada_norm"]),
            learn_sigma=out_ch == 2 * in_ch,
            class_dropout_prob=0.1,  # diffusers' LabelEmbedding always has the null row
            mlp_ratio=mlp_ratio,
            arithmetic="diffusers",
            time_input=c.get(TIME_INPUT_KEY, "ddpm"),
        )
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def diffusers_config(config: ModelConfig) -> dict[str, Any]:
    """The config.json of the DiTTransformer2DModel equivalent to a ditkit ModelConfig."""
    require_official_layout(config, "diffusers' DiTTransformer2DModel")
    if config.mlp_ratio != 4.0:
        raise ValueError(
            f"diffusers' DiTTransformer2DModel has a fixed MLP ratio of 4; this model has {config.mlp_ratio}"
        )
    out = {
        "_class_name": "DiTTransformer2DModel",
        "_diffusers_version": diffusers_version(),
        ARITHMETIC_KEY: config.arithmetic,
        "activation_fn": "gelu-approximate",
        "attention_bias": True,
        "attention_head_dim": config.hidden_size // config.num_heads,
        "dropout": 0.0,
        "in_channels": config.in_channels,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-5,
        "norm_num_groups": 32,
        "norm_type": "ada_norm_zero",
        "num_attention_heads": config.num_heads,
        "num_embeds_ada_norm": config.num_classes,
        "num_layers": config.depth,
        "out_channels": config.out_channels,
        "patch_size": config.patch_size,
        "sample_size": config.input_size,
        "upcast_attention": False,
    }
    if config.time_input != "ddpm":
        out[TIME_INPUT_KEY] = config.time_input
    return out
