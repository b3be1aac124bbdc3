"""Flow matching on the linear interpolant (rectified flow / minRF / SD3; SiT with the time reversed).

ditkit's native time convention (one noise level for every process, as the samplers use it):

* ``s`` in [0, 1] is the **noise level**: s = 1 is pure noise, s = 0 is data, and
  ``x_s = (1 - s) * x0 + s * eps`` with eps ~ N(0, I) (minRF / SD3 direction).
* The network predicts the **velocity** ``v = d x_s / d s = eps - x0`` (the regression target; the
  conditional expectation E[eps - x0 | x_s] is the field the ODE follows from s = 1 to s = 0). From a
  velocity, ``x0 = x_s - s v`` and ``eps = x_s + (1 - s) v``.
* The network's timestep input (``ModelConfig.time_input = "flow"``) is ``s * 1000`` (a float in
  [0, 1000]: the scale of SD3 and diffusers' FlowMatchEulerDiscreteScheduler). It keeps the sinusoidal
  timestep embedder in the range it was designed for (0..999 in DDPM), instead of feeding it raw values in
  [0, 1] whose sinusoids barely move.

SiT (willisma/SiT) runs its time the other way: ``t_sit = 1 - s`` (0 = noise, 1 = data), fed to the
embedder unscaled (``time_input = "sit"``), and its network predicts ``u = x0 - eps = -v``. Both
conventions are handled by :func:`network_time` and :func:`velocity_from_output`.

No learned sigma: a network with 2C output channels (``learn_sigma=True``) is trained and read on its first
C channels only (as SiT does); the other C channels get no gradient and are ignored.

Arithmetic is float32 whatever the network's dtype (its output is cast first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .losses import mean_flat

__all__ = [
    "FLOW_TIME_INPUTS",
    "FLOW_TIME_SCALE",
    "TIME_SAMPLINGS",
    "FlowProcess",
    "flow_model_config",
    "interpolate",
    "network_time",
    "shift_noise_level",
    "velocity_from_output",
    "velocity_target",
]

TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "logit-normal")
# The network's timestep input for ditkit-native flow models: s * FLOW_TIME_SCALE, in [0, 1000].
FLOW_TIME_SCALE = 1000.0
# Network time conventions a flow process can talk to (ModelConfig.time_input).
FLOW_TIME_INPUTS: tuple[str, ...] = ("flow", "sit")


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """(N,) -> (N, 1, ..., 1) float32 on like's device."""
    return v.to(device=like.device, dtype=torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x0: Tensor, eps: Tensor, s: Tensor) -> Tensor:
    """x_s = (1 - s) x0 + s eps, with s (N,) noise levels in [0, 1] (float32)."""
    if eps.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(eps.shape)} differs from x0 shape {tuple(x0.shape)}")
    s = _bcast(s, x0)
    return (1.0 - s) * x0.float() + s * eps.float()


def velocity_target(x0: Tensor, eps: Tensor) -> Tensor:
    """The regression target d x_s / d s = eps - x0 (ditkit-native sign; SiT's target is its negative)."""
    return eps.float() - x0.float()


def shift_noise_level(s: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift: s -> k s / (1 + (k - 1) s); k > 1 spends more time at high noise, k = 1 is none."""
    if shift == 1.0:
        return s
    return shift * s / (1.0 + (shift - 1.0) * s)


def network_time(s: Tensor, time_input: str = "flow") -> Tensor:
    """What the network's timestep input gets at noise level s: s * 1000 ("flow") or 1 - s ("sit")."""
    s = torch.as_tensor(s)
    if time_input == "flow":
        return (s.double() * FLOW_TIME_SCALE).float()
    if time_input == "sit":
        return (1.0 - s.double()).float()
    raise ValueError(
        f"a flow model needs time_input 'flow' or 'sit', got {time_input!r}; "
        "a 'ddpm' network is sampled with the DDPM process"
    )


def velocity_from_output(raw: Tensor, channels: int, time_input: str = "flow") -> Tensor:
    """The velocity d x_s / d s (float32) from a raw network output of C or 2C channels (first C used)."""
    if raw.ndim < 2 or raw.shape[1] not in (channels, 2 * channels):
        got = raw.shape[1] if raw.ndim > 1 else "?"
        raise ValueError(
            f"network output has {got} channels, expected {channels} (velocity) or {2 * channels} "
            f"(velocity + unused sigma channels) for {channels}-channel inputs"
        )
    v = raw[:, :channels].float()
    return -v if time_input == "sit" else v  # SiT predicts x0 - eps = d x / d t_sit = -d x / d s


def _get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


@dataclass(frozen=True)
class FlowProcess:
    """The linear-interpolant flow process: time sampling for training and the per-sample velocity loss.

    Args:
        time_sampling: "uniform" (s ~ U[0, 1], minRF / SiT) or "logit-normal" (s = sigmoid(m + std n),
            n ~ N(0, 1); SD3's default m = 0, std = 1).
        logit_mean, logit_std: the logit-normal location and scale.
        shift: SD3's timestep shift applied to the drawn s (1 = none; > 1 favours high noise).
        time_input: the network's time convention, "flow" (s * 1000, ditkit-native) or "sit" (1 - s).
    """

    time_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0
    time_input: str = "flow"

    def __post_init__(self) -> None:
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(
                f"unknown time_sampling {self.time_sampling!r}; choose one of {', '.join(TIME_SAMPLINGS)}"
            )
        if not (isinstance(self.shift, (int, float)) and math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"shift must be a positive number (1 = no shift), got {self.shift!r}")
        if not (math.isfinite(self.logit_std) and self.logit_std > 0):
            raise ValueError(f"logit_std must be a positive number, got {self.logit_std!r}")
        if not math.isfinite(self.logit_mean):
            raise ValueError(f"logit_mean must be a finite number, got {self.logit_mean!r}")
        if self.time_input not in FLOW_TIME_INPUTS:
            raise ValueError(
                f"unknown flow time_input {self.time_input!r}; choose one of {', '.join(FLOW_TIME_INPUTS)}"
            )

    @classmethod
    def from_config(cls, process: Any = None, *, time_input: str = "flow") -> FlowProcess:
        """From a config ``process`` section (dataclass or dict; missing flow fields take the defaults)."""
        return cls(
            time_sampling=str(_get(process, "time_sampling", "uniform")),
            logit_mean=float(_get(process, "logit_mean", 0.0)),
            logit_std=float(_get(process, "logit_std", 1.0)),
            shift=float(_get(process, "shift", 1.0)),
            time_input=time_input,
        )

    # -- time ----------------------------------------------------------------------------------------
    def sample_t(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> Tensor:
        """n noise levels s in [0, 1] (float32), drawn on the generator's device, returned on ``device``."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if self.time_sampling == "uniform":
            s = torch.rand(n, generator=generator, device=gen_device, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, device=gen_device, dtype=torch.float64)
            s = torch.sigmoid(self.logit_mean + self.logit_std * z)
        s = shift_noise_level(s, self.shift)
        return s.float().to(device if device is not None else gen_device)

    def network_time(self, s: Tensor) -> Tensor:
        return network_time(s, self.time_input)

    # -- loss ----------------------------------------------------------------------------------------
    def training_losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        cond: Any = None,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample flow-matching loss ``{"loss", "mse", "t"}``, each (N,) float32.

        ``t``: noise levels s in [0, 1] (N,) — drawn with :meth:`sample_t` when omitted; ``noise``: eps,
        drawn from N(0, I) with ``generator`` when omitted. The network is called as
        ``model(x_s, network_time(s), cond)`` (``model(x_s, network_time(s))`` when cond is None) and
        ``loss = mse = mean over C, H, W of (v_hat - (eps - x0))^2`` on its first C output channels.
        ``"t"`` is s (the noise level, for loss-by-timestep-bin logging).
        """
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched (N, C, ...), got shape {tuple(x0.shape)}")
        x0 = x0.float()
        n, device = x0.shape[0], x0.device
        gen_device = generator.device if generator is not None else device
        if t is None:
            t = self.sample_t(n, generator=generator, device=device)
        t = torch.as_tensor(t, device=device)
        if not t.dtype.is_floating_point:
            raise ValueError("flow t must be noise levels in [0, 1] (a float tensor), got integer indices")
        t = t.float().expand(n) if t.ndim == 0 else t.float()
        if t.shape != (n,):
            raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
        if n and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise ValueError("flow t must be noise levels in [0, 1] (1 = pure noise)")
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
        noise = noise.to(device).float()
        x_s = interpolate(x0, noise, t)
        t_net = self.network_time(t)
        raw = model(x_s, t_net) if cond is None else model(x_s, t_net, cond)
        v_hat = velocity_from_output(raw, x0.shape[1], self.time_input)
        mse = mean_flat((v_hat - velocity_target(x0, noise)) ** 2)
        return {"loss": mse, "mse": mse, "t": t}


def flow_model_config(config: Any, *, keep_learn_sigma: bool = False) -> Any:
    """A ModelConfig for flow training: ``time_input="flow"`` and, unless kept, ``learn_sigma=False``."""
    changes: dict[str, Any] = {"time_input": "flow"}
    if not keep_learn_sigma:
        changes["learn_sigma"] = False
    return config.replace(**changes)
