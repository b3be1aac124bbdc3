"""Training objectives: what a step asks of the network, as per-sample losses.

An objective answers `losses(model, x0, cond, *, generator=None, t=None, noise=None)` with a dict of
per-sample (N,) tensors: "loss" (what is minimised), optional named terms ("mse", "vb") and "t", the noise
level of each sample in [0, 1] (1 = pure noise), for loss-by-timestep logging.

For exact resume and DDP equivalence the trainer draws the random inputs of the *global* batch itself, from
the run's generator, and hands each process its slice: an objective with a `draw(n, shape, generator) ->
(t, noise)` method says how (in the objective's own time variable), or with `sample_t(n, generator=...)`
(then the noise is N(0, I) of the batch shape); `losses` then receives them. An objective with neither
draws inside `losses` from `generator` (simpler, but then a step's noise depends on the split over
processes and micro-batches).

Objectives are built by name from `config.process.kind` through `OBJECTIVES` (`register_objective` adds one;
the flow-matching objective registers as "flow"). A factory takes (process section, ModelConfig).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..diffusion import GaussianDiffusion

__all__ = ["OBJECTIVES", "DDPMObjective", "Objective", "build_objective", "register_objective"]


@runtime_checkable
class Objective(Protocol):
    def losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        cond: Tensor | None,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]: ...


class DDPMObjective:
    """DiT's loss: epsilon MSE, plus the variational bound for the learned variance (Nichol & Dhariwal's
    hybrid), on a discrete DDPM process. Time is the timestep index 0..T-1; its noise level is t / T."""

    kind = "ddpm"

    def __init__(self, process: GaussianDiffusion) -> None:
        self.process = process

    def draw(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Timesteps (n,) uniform over 0..T-1 and noise (n, *shape), in this order (checkpoints rely on it)."""
        t = torch.randint(0, self.process.num_timesteps, (n,), generator=generator)
        noise = torch.randn((n, *shape), generator=generator)
        return t, noise

    def losses(self, model, x0, cond, *, generator=None, t=None, noise=None) -> dict[str, Tensor]:
        if t is None:
            n = x0.shape[0]
            t = torch.randint(0, self.process.num_timesteps, (n,), generator=generator).to(x0.device)
        terms = self.process.training_losses(
            model,
            x0,
            model_kwargs={"y": cond} if cond is not None else {},
            t=t,
            noise=noise,
            generator=generator,
        )
        terms["t"] = t.to(terms["loss"].device).float() / self.process.num_timesteps
        return terms


def _ddpm(process: Any, model_config: Any) -> DDPMObjective:
    return DDPMObjective(
        GaussianDiffusion.from_schedule(
            process.schedule, process.num_timesteps, learn_sigma=bool(model_config.learn_sigma)
        )
    )


# process.kind -> factory(process section, ModelConfig) -> Objective
OBJECTIVES: dict[str, Callable[[Any, Any], Objective]] = {"ddpm": _ddpm}


def register_objective(kind: str, factory: Callable[[Any, Any], Objective]) -> None:
    """Make `--process KIND` train with `factory(process_section, model_config)`."""
    OBJECTIVES[str(kind)] = factory


def _load_plugins() -> None:
    """Objectives that live in their own module register on import."""
    import importlib

    for module in ("ditkit.train.objectives_flow",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def objective_kinds() -> list[str]:
    _load_plugins()
    return list(OBJECTIVES)


def check_kind(kind: str) -> None:
    """A one-line ValueError listing the choices for an unknown process kind."""
    kinds = objective_kinds()
    if kind not in kinds:
        close = difflib.get_close_matches(kind, kinds, n=1, cutoff=0.4)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"process.kind must be one of {', '.join(kinds)}; got {kind!r}{hint}")


def build_objective(process: Any, model_config: Any) -> Objective:
    """The objective `process.kind` names (default "ddpm"). A factory takes (process section, ModelConfig)
    or just the process section."""
    import inspect

    kind = getattr(process, "kind", "ddpm")
    check_kind(kind)
    factory = OBJECTIVES[kind]
    try:
        takes_two = len(inspect.signature(factory).parameters) >= 2
    except (TypeError, ValueError):
        takes_two = True
    return factory(process, model_config) if takes_two else factory(process)


def draw_inputs(objective: Any, n: int, shape: tuple[int, ...], generator: torch.Generator):
    """(t, noise) of a global batch from the objective's `draw`, or its `sample_t` plus N(0, I) noise;
    (None, None) when it draws inside `losses`."""
    if hasattr(objective, "draw"):
        return objective.draw(n, shape, generator)
    if hasattr(objective, "sample_t"):
        t = objective.sample_t(n, generator=generator)
        return t, torch.randn((n, *shape), generator=generator)
    return None, None
