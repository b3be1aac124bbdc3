"""The denoiser contract: the only thing a sampler sees between a network and its noise process.

A denoiser answers, for a noisy x_t at a point t of its own time variable, the prediction a sampler asks for
(x0, eps, and for flow models the velocity), in float32 whatever the network's dtype. Every Gaussian noise
process is described by ``alpha_sigma(t) -> (alpha, sigma)`` with x_t = alpha * x0 + sigma * eps, so the
samplers in this package work for every process that implements this class.

Subclassing (a flow-matching model, a distilled student, a foreign network) -- override:

* ``kind``: the process kind the sampler registry checks ("ddpm", "flow", ...).
* ``t_max`` / ``t_clean``: the noisiest time a grid starts from and the terminal "clean" point a grid ends at
  (where alpha = 1, sigma = 0). For flow with t = 1 noise: ``t_max = 1.0``, ``t_clean = 0.0``.
* ``alpha_sigma(t)``: float64 tensors (alpha, sigma) shaped like ``t``. Flow (linear path): (1 - t, t).
* ``noise_level(t)``: float in [0, 1], 1 = pure noise (the guidance interval reads it). Flow: t itself.
* ``network_time(t)``: what the network's timestep input gets. Flow: e.g. ``1000 * t`` (ditkit-native) or
  ``1 - t`` (SiT's convention), as a float tensor.
* ``predict(raw, x_t, t)``: turn the raw network output into a :class:`Prediction` (fp32). Flow (linear
  path x_t = (1 - t) x0 + t eps, velocity v = eps - x0 = raw[:, :C]): x0 = x_t - t v, eps = x_t + (1 - t) v;
  return ``Prediction(x0, eps, velocity=v)``. Guidance combines the first ``guidance_channels`` raw channels
  (which must be linear in x0/eps, as eps and velocity are), so keep ``predict`` a function of ``raw``.
* ``ode_frame``: "ve" (Euler/Heun step in y = x / alpha, tau = sigma / alpha; needs alpha > 0 on the grid,
  as DDPM) or "flow" (y = x / (alpha + sigma), tau = sigma / (alpha + sigma); alpha may be 0 at t_max).
* ``make_grid(num_steps, spacing)``: the default continuous implementation (uniform in t from t_max to
  t_clean, optionally shifted) often suffices; DDPM overrides it with the official discrete spacings.

Optional: ``posterior(pred, x_t, t, s)`` (mean and log-variance of an ancestral step t -> s; the default is
the Gaussian posterior q(x_s | x_t, x0) of the path, i.e. DDPM's "fixed_small") and ``alpha_sigma2(t)``.

Bind the condition at construction (``cond``; None for an unconditional network, which is then called as
``network(x, t)``); guidance (``ditkit.sampling.guidance``) wraps a denoiser into another one that batches
the conditional and the null input in one forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["DDPMDenoiser", "Denoiser", "NFECounter", "Prediction"]

# A network: network(x, t_net, cond) -> raw output (N, C or 2C, H, W); network(x, t_net) when cond is None.
Network = Callable[..., Tensor]


@dataclass
class Prediction:
    """What a denoiser predicts at (x_t, t), all float32 shaped like x_t.

    ``velocity``: d x_t / d t along the interpolant (flow models). ``log_variance``: a predicted log-variance
    of x0 where a model has one. ``variance_values``: DDPM's raw learned-range channels v (interpolating the
    reverse-step log-variance between the posterior variance, v = -1, and beta, v = +1)."""

    x0: Tensor
    eps: Tensor
    velocity: Tensor | None = None
    log_variance: Tensor | None = None
    variance_values: Tensor | None = None


class NFECounter:
    """Counts network evaluations: one per forward call (a guided cond + null batch counts one)."""

    def __init__(self) -> None:
        self.calls = 0

    def __repr__(self) -> str:
        return f"NFECounter(calls={self.calls})"


class Denoiser:
    """Base class: bind a network and its condition; subclasses define the process (see the module doc)."""

    kind: str = "base"
    ode_frame: str = "ve"
    t_max: float = 1.0
    t_clean: float = 0.0

    def __init__(self, network: Network, cond: Any = None, *, counter: NFECounter | None = None) -> None:
        self.network = network
        self.cond = cond
        self.counter = counter if counter is not None else NFECounter()

    # -- the process (override) --------------------------------------------------------------------
    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def noise_level(self, t: float | Tensor) -> float:
        raise NotImplementedError

    def network_time(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def predict(self, raw: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        raise NotImplementedError

    @property
    def channels(self) -> int | None:
        """Channels of x (None: take them from x_t)."""
        return None

    def make_grid(self, num_steps: int, spacing: str | None = None, **options: Any) -> Tensor:
        """A descending float64 grid of ``num_steps + 1`` times from ``t_max`` to ``t_clean`` (uniform in t);
        ``options["shift"]`` = s > 0 warps the noise level u as s u / (1 + (s - 1) u) (SD3's shift)."""
        from .grids import continuous_grid

        return continuous_grid(self, num_steps, spacing or "linspace", **options)

    def alpha_sigma2(self, t: float) -> tuple[float, float]:
        """(alpha^2, sigma^2) at one time as Python floats (DDPM: exactly abar and 1 - abar)."""
        a, s = self.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
        return float(a) ** 2, float(s) ** 2

    # -- ancestral steps -----------------------------------------------------------------------------
    def posterior(self, pred: Prediction, x_t: Tensor, t: float, s: float) -> tuple[Tensor, Tensor | float]:
        """Mean and log-variance of the ancestral step t -> s (s < t): the Gaussian posterior
        q(x_s | x_t, x0 = pred.x0) of the path. With r = alpha_t / alpha_s and v = sigma_t^2 - r^2 sigma_s^2:
        mean = r sigma_s^2 / sigma_t^2 x_t + alpha_s v / sigma_t^2 x0, variance = v sigma_s^2 / sigma_t^2."""
        a2_t, s2_t = self.alpha_sigma2(t)
        a2_s, s2_s = self.alpha_sigma2(s)
        r2 = a2_t / a2_s
        v = s2_t - r2 * s2_s
        mean = (math.sqrt(r2) * s2_s / s2_t) * x_t + (math.sqrt(a2_s) * v / s2_t) * pred.x0
        return mean, math.log(max(v * s2_s / s2_t, 1e-30))

    # -- calling -------------------------------------------------------------------------------------
    def scalar_time(self, t: float | Tensor, n: int, device: torch.device) -> Tensor:
        """One float64 time per sample, shape (n,)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return (t.expand(n) if t.ndim == 0 else t).to(device)

    def forward_raw(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """One network evaluation at the network's own time scale; counts one NFE."""
        self.counter.calls += 1
        t_net = self.network_time(t)
        if cond is None:
            return self.network(x_t, t_net)
        return self.network(x_t, t_net, cond)

    def raw_output(self, x_t: Tensor, t: Tensor) -> Tensor:
        """The raw output the prediction is made from (guidance overrides this); t: (N,) float64."""
        return self.forward_raw(x_t, t, self.cond)

    def __call__(self, x_t: Tensor, t: float | Tensor) -> Prediction:
        x_t = x_t.float()
        tt = self.scalar_time(t, x_t.shape[0], x_t.device)
        return self.predict(self.raw_output(x_t, tt), x_t, tt)

    def with_condition(self, cond: Any) -> Denoiser:
        """A shallow copy bound to another condition (same network, same NFE counter)."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.cond = cond
        return other


def _broadcast(v: Tensor, like: Tensor) -> Tensor:
    return v.to(device=like.device, dtype=torch.float32).reshape(-1, *([1] * (like.ndim - 1)))


class DDPMDenoiser(Denoiser):
    """DDPM / DiT: epsilon prediction with an optional learned-range variance, time = original timestep.

    t runs over 0..T-1 (float; fractional t interpolates the VE noise scale sigma/alpha linearly, as diffusers'
    Euler schedulers do) plus the clean point t = -1 (alpha = 1, sigma = 0); the network sees integer t as
    integers (the official samplers' convention) and fractional t as floats. Between consecutive timesteps of
    its (possibly respaced) process it uses that process's own float32 tables, so DDPM and DDIM reproduce the
    official respaced samplers bit for bit; use :meth:`for_grid` to get that process for a grid.

    Args:
        network: the raw network (see ``Network``); ``process``: a ``GaussianDiffusion`` (possibly respaced:
            its ``timestep_map`` then names the original timesteps it knows); ``variance_type``: override the
            process's ("fixed_small" ignores the learned variance channels).
    """

    kind = "ddpm"
    ode_frame = "ve"
    t_clean = -1.0

    def __init__(
        self,
        network: Network,
        process: Any,
        cond: Any = None,
        *,
        variance_type: str | None = None,
        counter: NFECounter | None = None,
        num_train_timesteps: int | None = None,
    ) -> None:
        super().__init__(network, cond, counter=counter)
        self.process = process
        self.learn_sigma = bool(process.learn_sigma)
        self.variance_type = variance_type or process.variance_type
        if self.variance_type == "learned_range" and not self.learn_sigma:
            raise ValueError("variance_type 'learned_range' needs a network with learned sigma (2C channels)")
        tmap = process.timestep_map.numpy().astype(np.int64)
        self.num_train_timesteps = int(num_train_timesteps or tmap.max() + 1)
        self._index = {int(o): i for i, o in enumerate(tmap.tolist())}
        # VE sigma sqrt((1 - abar) / abar) at the known original timesteps, linearly interpolated in between
        # (exact everywhere for an un-respaced process), with sigma = 0 at t = -1.
        ac = np.asarray(process.alphas_cumprod, dtype=np.float64)
        full = np.interp(np.arange(self.num_train_timesteps), tmap, np.sqrt((1.0 - ac) / ac))
        self._ve_table = torch.from_numpy(np.concatenate([[0.0], full]))  # index k <-> t = k - 1
        self.t_max = float(self.num_train_timesteps - 1)

    def for_grid(self, grid: Tensor) -> DDPMDenoiser:
        """The same denoiser over this process respaced to an integer grid (official arithmetic); self for
        grids with fractional times."""
        times = [float(v) for v in grid[:-1]]
        if not times or any(v != round(v) or int(v) not in self._index for v in times):
            return self
        kept = sorted(self._index[int(v)] for v in times)
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        DDPMDenoiser.__init__(
            other,
            self.network,
            self.process.respace(kept),
            self.cond,
            variance_type=self.variance_type,
            counter=self.counter,
            num_train_timesteps=self.num_train_timesteps,
        )
        return other

    # -- the process ---------------------------------------------------------------------------------
    def _known(self, t: float) -> int | None:
        return self._index.get(int(t)) if t == round(t) else None

    def sigma_ve(self, t: Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=torch.float64)
        pos = (t.cpu() + 1.0).clamp(0.0, float(self.num_train_timesteps))
        lo = pos.floor().clamp(max=self.num_train_timesteps - 1).long()
        w = pos - lo
        table = self._ve_table
        return (table[lo] * (1 - w) + table[lo + 1] * w).to(t.device)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        if t.ndim == 0 and float(t) == -1.0:
            return torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        if t.ndim == 0 and self._known(float(t)) is not None:
            abar = float(self.process.alphas_cumprod[self._known(float(t))])
            return torch.tensor(math.sqrt(abar), dtype=torch.float64), torch.tensor(
                math.sqrt(1.0 - abar), dtype=torch.float64
            )
        ve = self.sigma_ve(t)
        alpha = 1.0 / torch.sqrt(1.0 + ve**2)
        return alpha, ve * alpha

    def alpha_sigma2(self, t: float) -> tuple[float, float]:
        t = float(t)
        if t == -1.0:
            return 1.0, 0.0
        i = self._known(t)
        if i is not None:
            abar = float(self.process.alphas_cumprod[i])
            return abar, 1.0 - abar
        return super().alpha_sigma2(t)

    def noise_level(self, t: float | Tensor) -> float:
        return min(max(float(t), 0.0), 1000.0) / 1000.0

    def network_time(self, t: Tensor) -> Tensor:
        rounded = t.round()
        if torch.equal(rounded, t):
            return rounded.long()
        return t.float()

    def _coef(self, name: str, i: int) -> Tensor:
        return torch.tensor(np.float32(getattr(self.process, name)[i]))

    def predict(self, raw: Tensor, x_t: Tensor, t: Tensor) -> Prediction:
        c = x_t.shape[1]
        expected = 2 * c if self.learn_sigma else c
        if raw.ndim < 2 or raw.shape[1] != expected:
            raise ValueError(
                f"network output has {raw.shape[1] if raw.ndim > 1 else '?'} channels, expected {expected} "
                f"for {c}-channel inputs (learn_sigma={self.learn_sigma})"
            )
        raw = raw.float()
        eps, v = (raw[:, :c], raw[:, c:]) if self.learn_sigma else (raw, None)
        t0 = float(t[0]) if t.numel() else 0.0
        i = self._known(t0) if t.numel() and bool((t == t[0]).all()) else None
        if i is not None:  # ADM's form with the process's float32 tables
            x0 = (
                self._coef("sqrt_recip_alphas_cumprod", i).to(x_t.device) * x_t
                - self._coef("sqrt_recipm1_alphas_cumprod", i).to(x_t.device) * eps
            )
        else:
            alpha, sigma = self.alpha_sigma(t)
            x0 = _broadcast(1.0 / alpha, x_t) * x_t - _broadcast(sigma / alpha, x_t) * eps
        return Prediction(x0=x0, eps=eps, variance_values=v)

    def make_grid(self, num_steps: int, spacing: str | None = None, **options: Any) -> Tensor:
        from .grids import ddpm_grid

        spacing = spacing or "ddim"
        if spacing in ("karras", "logsnr"):
            options.setdefault("sigmas", self._ve_table[1:].numpy())
        return ddpm_grid(self.num_train_timesteps, num_steps, spacing, **options)

    # -- ancestral steps ---------------------------------------------------------------------------------
    def posterior(self, pred: Prediction, x_t: Tensor, t: float, s: float) -> tuple[Tensor, Tensor | float]:
        """DDPM's reverse step t -> s: the posterior mean, and the posterior variance (fixed_small), beta
        (fixed_large) or the learned interpolation between their logs (learned_range)."""
        i = self._known(float(t))
        consecutive = i is not None and (
            (i == 0 and float(s) == -1.0) or (i > 0 and self._known(float(s)) == i - 1)
        )
        if consecutive:  # the process's own float32 tables (ADM arithmetic)
            dev = x_t.device
            mean = (
                self._coef("posterior_mean_coef1", i).to(dev) * pred.x0
                + self._coef("posterior_mean_coef2", i).to(dev) * x_t
            )
            min_log = self._coef("posterior_log_variance_clipped", i).to(dev)
            max_log = self._coef("log_betas", i).to(dev)
            if self.variance_type == "fixed_large":
                max_log = torch.log(self._coef("fixed_large_variance", i).to(dev))
        else:
            mean, post = super().posterior(pred, x_t, t, s)
            a2_t, _ = self.alpha_sigma2(t)
            a2_s, _ = self.alpha_sigma2(s)
            min_log, max_log = post, math.log(1.0 - a2_t / a2_s)
        if self.variance_type == "fixed_small":
            return mean, min_log
        if self.variance_type == "fixed_large":
            return mean, max_log
        frac = (pred.variance_values + 1.0) / 2.0
        return mean, frac * max_log + (1.0 - frac) * min_log
