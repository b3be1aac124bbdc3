"""The flow-matching denoiser: a velocity network on the linear interpolant, seen through the denoiser contract.

Its time ``t`` is the noise level s in [0, 1] (1 = pure noise, 0 = data) of
:mod:`ditkit.diffusion.flow`: x_t = (1 - t) x0 + t eps, so ``alpha_sigma(t) = (1 - t, t)`` and a grid runs
from ``t_max = 1`` to ``t_clean = 0``. ``Prediction.velocity`` is d x_t / d t = eps - x0, whichever
convention the network was trained in:

* ``time_input="flow"`` (ditkit-native): the network gets ``1000 t`` and predicts eps - x0;
* ``time_input="sit"`` (SiT checkpoints): the network gets SiT's ``1 - t`` (0 = noise) unscaled and predicts
  x0 - eps, which is negated here.

A network with 2C output channels (learned sigma) is read on its first C channels only.

It works with every sampler whose registry entry lists the "flow" kind (euler, heun, euler-sde, ...) and
with guidance; DDPM-only samplers refuse it with one line.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..diffusion.flow import FLOW_TIME_INPUTS, network_time, velocity_from_output
from .denoiser import Denoiser, Network, NFECounter, Prediction

__all__ = ["FlowDenoiser", "denoiser_for", "is_flow"]


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.to(device=like.device, dtype=torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


class FlowDenoiser(Denoiser):
    """A flow-matching (velocity) network as a denoiser; time = noise level in [0, 1].

    Args:
        network: ``network(x, t_net, cond)`` (``network(x, t_net)`` when cond is None) -> raw output.
        cond: the bound condition (labels, embeddings) or None.
        time_input: the network's time convention, "flow" (1000 t) or "sit" (1 - t).
        shift: the default grid shift (SD3: s -> k s / (1 + (k - 1) s)) used when a grid is built without
            an explicit ``shift``; 1 = uniform in t.
    """

    kind = "flow"
    ode_frame = "flow"
    t_max = 1.0
    t_clean = 0.0

    def __init__(
        self,
        network: Network,
        cond: Any = None,
        *,
        time_input: str = "flow",
        shift: float = 1.0,
        counter: NFECounter | None = None,
    ) -> None:
        if time_input not in FLOW_TIME_INPUTS:
            raise ValueError(
                f"a flow denoiser needs time_input 'flow' or 'sit', got {time_input!r}; "
                "a 'ddpm' network is sampled with the DDPM denoiser"
            )
        if not shift > 0:
            raise ValueError(f"shift must be a positive number (1 = no shift), got {shift!r}")
        super().__init__(network, cond, counter=counter)
        self.time_input = time_input
        self.shift = float(shift)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        return 1.0 - t, t

    def noise_level(self, t: float | Tensor) -> float:
        return min(max(float(t), 0.0), 1.0)

    def network_time(self, t: Tensor) -> Tensor:
        return network_time(t, self.time_input)

    def predict(self, raw: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        v = velocity_from_output(raw, x_t.shape[1], self.time_input)
        tb = _bcast(t, x_t)
        x0 = x_t - tb * v
        eps = x_t + (1.0 - tb) * v
        return Prediction(x0=x0, eps=eps, velocity=v)

    def make_grid(self, num_steps: int, spacing: str | None = "linspace", **options: Any) -> Tensor:
        """``num_steps + 1`` times from 1 to 0, uniform in t unless shifted (default: this denoiser's shift)."""
        if options.get("shift") is None:
            options["shift"] = self.shift
        return super().make_grid(num_steps, spacing or "linspace", **options)


def _get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def is_flow(process: Any = None, model_config: Any = None) -> bool:
    """Whether a run's ``process`` section (dataclass or dict) or a model config describes a flow model."""
    if _get(process, "kind", None) == "flow":
        return True
    return _get(model_config, "time_input", "ddpm") in FLOW_TIME_INPUTS


def denoiser_for(
    process: Any,
    network: Network,
    cond: Any = None,
    *,
    model_config: Any = None,
    counter: NFECounter | None = None,
) -> FlowDenoiser:
    """The FlowDenoiser for a flow checkpoint: ``process`` is its config's process section (or dict, or
    None for a SiT file), ``model_config`` the network's ModelConfig (its ``time_input`` picks "flow" or
    "sit"; "flow" when absent). The grid shift defaults to the process's training ``shift``."""
    time_input = _get(model_config, "time_input", None)
    if time_input in (None, "ddpm"):
        time_input = "flow"
    shift = float(_get(process, "shift", 1.0) or 1.0)
    return FlowDenoiser(network, cond, time_input=time_input, shift=shift, counter=counter)
