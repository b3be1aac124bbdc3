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


@dataclass(frozen=True)
class ModelConfig:
    depth: int = 12
    hidden_size: int = 384
    num_heads: int = 6
    patch_size: int = 2
    input_size: int = 32
    in_channels: int = 4
    num_classes: int = 1000
    learn_sigma: bool = True
    class_dropout_prob: float = 0.1
    mlp_ratio: float = 4.0
    arithmetic: str = "official"
    name: str | None = None

    def __post_init__(self) -> None:
        for field in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model {field} must be a positive integer, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0 = unconditional), got {self.num_classes!r}")
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
            raise ValueError(f"unknown arithmetic {self.arithmetic!r}; choose one of {', '.join(ARITHMETICS)}")

    # -- derived quantities -------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def has_null_label(self) -> bool:
        """A null row (index num_classes) exists only when labels were dropped in training (official)."""
        return self.num_classes > 0 and self.class_dropout_prob > 0

    @property
    def null_label(self) -> int:
        return self.num_classes

    # -- (de)serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; valid keys: {sorted(names)}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
