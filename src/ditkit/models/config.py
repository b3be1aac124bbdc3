"""The model configuration: one frozen dataclass that is the single source of truth for a network.

It is serialised into every checkpoint ditkit writes, so a file always knows how to rebuild its model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# How a network does its arithmetic. The official DiT and diffusers' DiTTransformer2DModel differ in two
# small places (dit-facts §2.2): the timestep-frequency divisor (half vs half - 1) and the LayerNorm eps in
# front of the MLP (1e-6 vs 1e-5). A converted checkpoint keeps the arithmetic it was trained with.
ARITHMETICS = ("official", "diffusers")

# The four block designs of the DiT paper (§3.2). Only adaLN-Zero has an official checkpoint layout.
BLOCKS = ("adaln-zero", "adaln", "cross-attention", "in-context")
NORMS = ("pre", "post")
POS_EMBEDS = ("sincos", "learned")
# "adaln": official (LayerNorm, shift/scale from the conditioning, linear); "norm": LayerNorm + linear;
# "linear": the output projection alone (the DiT-WikiArt reading of "omitted final linear layer").
FINAL_LAYERS = ("adaln", "norm", "linear")
# What the timestep input of the network means, and the range the forward accepts:
# "ddpm": DDPM timesteps 0..999 (official DiT); "flow": ditkit-native flow-matching models, t scaled to
# 0..1000 before the embedder; "sit": SiT's t in [0, 1] (0 = noise, 1 = data), fed unscaled.
TIME_INPUTS = {"ddpm": (0.0, 999.0), "flow": (0.0, 1000.0), "sit": (0.0, 1.0)}


@dataclass(frozen=True)
class ModelConfig:
    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    patch_size: int = 2
    input_size: int = 32
    in_channels: int = 4
    # An int for one label (ImageNet classes), or a tuple of class counts for several attributes (e.g. WikiArt
    # genre and style), each with its own table and null row; y is then (N, K).
    num_classes: int | tuple[int, ...] = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    mlp_ratio: float = 4.0
    arithmetic: str = "official"
    block: str = "adaln-zero"
    norm: str = "pre"
    pos_embed: str = "sincos"
    final_layer: str = "adaln"
    # > 0: the condition is a vector of this width (an image/text embedding) instead of class labels.
    cond_dim: int = 0
    time_input: str = "ddpm"
    # True: the network also takes the guidance scale w (a guidance-distilled student, Meng et al. 2023),
    # embedded like t by `w_embedder` and added to the conditioning vector.
    guidance_embed: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        for field in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model {field} must be a positive integer, got {value!r}")
        if isinstance(self.num_classes, list):
            object.__setattr__(self, "num_classes", tuple(self.num_classes))
        sizes = self.num_classes if isinstance(self.num_classes, tuple) else (self.num_classes,)
        if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in sizes):
            raise ValueError(
                f"num_classes must be an integer >= 0 (0 = unconditional) or a tuple of positive class counts "
                f"(one per attribute), got {self.num_classes!r}"
            )
        if isinstance(self.num_classes, tuple) and 0 in self.num_classes:
            raise ValueError(f"every attribute needs at least one class, got num_classes={self.num_classes}")
        for field, valid in (
            ("block", BLOCKS),
            ("norm", NORMS),
            ("pos_embed", POS_EMBEDS),
            ("final_layer", FINAL_LAYERS),
        ):
            if getattr(self, field) not in valid:
                raise ValueError(
                    f"unknown {field} {getattr(self, field)!r}; choose one of {', '.join(valid)}"
                )
        if self.time_input not in TIME_INPUTS:
            raise ValueError(
                f"unknown time_input {self.time_input!r}; choose one of {', '.join(TIME_INPUTS)}"
            )
        if not isinstance(self.guidance_embed, bool):
            raise ValueError(f"guidance_embed must be true or false, got {self.guidance_embed!r}")
        if not isinstance(self.cond_dim, int) or self.cond_dim < 0:
            raise ValueError(f"cond_dim must be an integer >= 0, got {self.cond_dim!r}")
        if self.cond_dim and self.label_sizes:
            raise ValueError(
                "a model is conditioned on class labels or on an embedding (cond_dim), not both; "
                "set num_classes=0 for an embedding-conditioned model"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                "pick a head count that divides the width"
            )
        if self.input_size % self.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}; use an "
                f"input size that is a multiple of {self.patch_size} (e.g. "
                f"{self.input_size - self.input_size % self.patch_size or self.patch_size})"
            )
        if not 0.0 <= self.class_dropout_prob < 1.0:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(
                f"unknown arithmetic {self.arithmetic!r}; choose one of {', '.join(ARITHMETICS)}"
            )

    # -- derived quantities -------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def time_range(self) -> tuple[float, float]:
        """The timesteps the network accepts (inclusive), from `time_input`."""
        return TIME_INPUTS[self.time_input]

    @property
    def label_sizes(self) -> tuple[int, ...]:
        """Class count of each label attribute: () unconditional, (1000,) ImageNet, (11, 27) WikiArt."""
        if isinstance(self.num_classes, tuple):
            return self.num_classes
        return (self.num_classes,) if self.num_classes > 0 else ()

    @property
    def multi_label(self) -> bool:
        return isinstance(self.num_classes, tuple)

    @property
    def conditional(self) -> bool:
        return bool(self.label_sizes) or self.cond_dim > 0

    @property
    def has_null_label(self) -> bool:
        """A null row exists only when conditions were dropped in training (official); guidance needs it."""
        return self.conditional and self.class_dropout_prob > 0

    @property
    def null_label(self) -> int | tuple[int, ...]:
        """Index of the null row: num_classes (official), one per attribute for multi-label models; for an
        embedding-conditioned model the null condition is an all-zero vector (see `null_condition`)."""
        return self.num_classes

    @property
    def is_official_layout(self) -> bool:
        """True when the network has exactly the official DiT structure (exportable to official/diffusers)."""
        return (
            self.block == "adaln-zero"
            and self.norm == "pre"
            and self.pos_embed == "sincos"
            and self.final_layer == "adaln"
            and not self.multi_label
            and self.cond_dim == 0
            and not self.guidance_embed
        )

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        data = dict(data)
        if isinstance(data.get("num_classes"), list):
            data["num_classes"] = tuple(data["num_classes"])
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
