"""The flow-matching training objective (``process.kind: flow``; ``ditkit train --process flow``).

Velocity regression on the linear interpolant x_s = (1 - s) x0 + s eps (see :mod:`ditkit.diffusion.flow`
for the conventions): the network gets ``1000 s`` and is trained with MSE towards eps - x0; no learned sigma
(a 2C-channel network is trained on its first C channels only). Time sampling from the config's process
section: ``time_sampling`` ("uniform" | "logit-normal", with ``logit_mean`` / ``logit_std``) and ``shift``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..diffusion.flow import FlowProcess, flow_model_config

__all__ = ["FlowObjective", "make_flow_objective"]


class FlowObjective:
    """Implements the trainer's Objective protocol for flow matching.

    Args:
        process: the run config's process section (a dataclass or a dict; missing flow fields take their
            defaults), or None for uniform time sampling without shift.
        time_input: the network's time convention: "flow" (1000 s, ditkit-native) or "sit" (fine-tuning a
            SiT checkpoint in its own convention).
    """

    name = "flow"
    kind = "flow"

    def __init__(self, process: Any = None, *, time_input: str = "flow") -> None:
        self.flow = FlowProcess.from_config(process, time_input=time_input)

    def __repr__(self) -> str:
        f = self.flow
        return f"FlowObjective(time_sampling={f.time_sampling!r}, shift={f.shift:g})"

    def sample_t(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n noise levels s in [0, 1] (float32) — for loops that draw the global batch's t and slice it."""
        return self.flow.sample_t(n, generator=generator, device=device)

    def draw(self, n: int, shape: tuple[int, ...], generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The global batch's random inputs, in this order: noise levels s (n,) float32, then noise (n, *shape)."""
        t = self.flow.sample_t(n, generator=generator)
        noise = torch.randn((n, *shape), generator=generator, device=t.device)
        return t, noise

    def losses(
        self,
        model: Any,
        x0: Tensor,
        cond: Any = None,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample terms ``{"loss", "mse", "t"}`` (N,) float32; ``t`` = the noise level s in [0, 1]
        (given, or drawn with ``generator``); ``noise`` = eps (given, or drawn). The network is called as
        ``model(x_s, 1000 s, cond)`` (``model(x_s, 1000 s)`` when cond is None)."""
        return self.flow.training_losses(model, x0, cond, t=t, noise=noise, generator=generator)

    def model_config(self, config: Any, *, keep_learn_sigma: bool = False) -> Any:
        """The ModelConfig a flow run trains: ``time_input="flow"``, no sigma channels unless kept."""
        return flow_model_config(config, keep_learn_sigma=keep_learn_sigma)

    def denoiser(self, network: Any, cond: Any = None, **kwargs: Any) -> Any:
        """A :class:`~ditkit.sampling.flow.FlowDenoiser` for the trained network (sample grids)."""
        from ..sampling.flow import FlowDenoiser

        return FlowDenoiser(network, cond, time_input="flow", shift=self.flow.shift, **kwargs)


def make_flow_objective(process: Any = None, model_config: Any = None) -> FlowObjective:
    """The registry factory ``(process section, ModelConfig)``. The network must take flow time: a model
    config with ``time_input="ddpm"`` (timesteps 0..999) is refused — build it with
    :func:`ditkit.diffusion.flow.flow_model_config`."""
    time_input = getattr(model_config, "time_input", "flow")
    if time_input not in ("flow", "sit"):
        raise ValueError(
            f"process.kind=flow needs a network with time_input 'flow' (or 'sit'), got {time_input!r}; "
            "build its ModelConfig with ditkit.diffusion.flow.flow_model_config"
        )
    return FlowObjective(process, time_input=time_input)


def _register() -> None:
    from .objectives import register_objective

    register_objective("flow", make_flow_objective)


_register()
