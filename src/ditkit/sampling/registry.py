"""The sampler registry: the one list of sampler names that the config, the CLI and the pipeline read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .multistep import sample_dpmpp_2m, sample_unipc
from .solvers import sample_ddim, sample_ddpm, sample_euler, sample_euler_sde, sample_heun

__all__ = ["SAMPLERS", "SamplerSpec", "get_sampler", "register_sampler", "sampler_names"]


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, default steps and DDPM grid spacing, and the process kinds
    (``Denoiser.kind``) it supports. Calling the spec calls the function."""

    name: str
    fn: Callable[..., Tensor]
    default_steps: int
    spacing: str
    kinds: tuple[str, ...]
    order: int
    stochastic: bool
    summary: str
    calls_per_step: int = 1

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.fn(*args, **kwargs)

    def check_kind(self, denoiser: Any) -> None:
        if denoiser.kind not in self.kinds:
            valid = ", ".join(n for n, s in SAMPLERS.items() if denoiser.kind in s.kinds)
            raise ValueError(
                f"sampler {self.name!r} does not sample {denoiser.kind!r} models; choose one of: {valid}"
            )

    def make_grid(self, denoiser: Any, num_steps: int | None = None, spacing: str | None = None) -> Tensor:
        """The grid this sampler uses by default (``num_steps`` None: its default steps)."""
        self.check_kind(denoiser)
        steps = self.default_steps if num_steps is None else num_steps
        if spacing is None and denoiser.kind == "ddpm":
            spacing = self.spacing
        return denoiser.make_grid(steps, spacing)

    def nfe(self, num_steps: int) -> int:
        """Network evaluations per image for ``num_steps`` steps (unguided or CFG-batched)."""
        return self.calls_per_step * num_steps - (self.calls_per_step - 1)


_BOTH = ("ddpm", "flow")
SAMPLERS: dict[str, SamplerSpec] = {}


def register_sampler(spec: SamplerSpec) -> SamplerSpec:
    """Add a sampler to the registry (its name becomes a valid choice everywhere)."""
    if not isinstance(spec, SamplerSpec):
        raise ValueError(f"register a SamplerSpec, got {type(spec).__name__}")
    SAMPLERS[spec.name] = spec
    return spec


for _spec in (
    SamplerSpec("ddpm", sample_ddpm, 250, "official", ("ddpm",), 1, True, "ancestral DDPM, learned variance"),
    SamplerSpec("ddim", sample_ddim, 50, "ddim", _BOTH, 1, False, "DDIM (eta 0), official 'ddimN' grid"),
    SamplerSpec("euler", sample_euler, 50, "linspace", _BOTH, 1, False, "Euler on the probability-flow ODE"),
    SamplerSpec(
        "heun", sample_heun, 25, "linspace", _BOTH, 2, False, "Heun (2 calls/step)", calls_per_step=2
    ),
    SamplerSpec("dpm++2m", sample_dpmpp_2m, 20, "uniform", _BOTH, 2, False, "DPM-Solver++(2M) multistep"),
    SamplerSpec("unipc", sample_unipc, 20, "uniform", _BOTH, 2, False, "UniPC bh2, order 2"),
    SamplerSpec("euler-sde", sample_euler_sde, 100, "linspace", _BOTH, 1, True, "ancestral Euler (SDE)"),
):
    register_sampler(_spec)


def sampler_names(kind: str | None = None) -> tuple[str, ...]:
    """Registered sampler names in registry order (only those supporting ``kind`` when given)."""
    return tuple(n for n, s in SAMPLERS.items() if kind is None or kind in s.kinds)


def get_sampler(name: str) -> SamplerSpec:
    """The spec registered under ``name``; an unknown name raises a ValueError listing the valid ones."""
    try:
        return SAMPLERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}") from None
