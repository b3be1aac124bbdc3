"""The discrete-time Gaussian diffusion process of DDPM / ADM / DiT (epsilon prediction, learned-range sigma).

Conventions (shared with the samplers and the trainer):

* ``t`` passed to the methods here is an index into *this* process, 0 = least noisy. For a respaced
  process (see :meth:`GaussianDiffusion.respace`) the network must still see the original timestep, which is
  ``timestep_map[t]``; :meth:`training_losses` and the samplers do that mapping.
* Network output: C channels of epsilon, followed (when ``learn_sigma``) by C channels ``v`` that
  interpolate the log-variance between the posterior variance (v = -1) and beta_t (v = +1).
* Coefficients are float64 numpy arrays, cast to float32 when gathered; all arithmetic on tensors is float32
  even when the network runs in bf16/fp16 (its output is cast first).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedules import get_betas, space_timesteps

__all__ = ["VARIANCE_TYPES", "GaussianDiffusion"]

VARIANCE_TYPES: tuple[str, ...] = ("learned_range", "fixed_small", "fixed_large")


def _as_generator_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    return generator.device if generator is not None else fallback


class GaussianDiffusion:
    """A DDPM forward process with its posterior, the reverse-step parameterisation and the hybrid loss.

    Args:
        betas: 1-D schedule, each beta in (0, 1). Use :func:`get_betas` or :meth:`from_schedule`.
        learn_sigma: the network outputs 2C channels (epsilon, then variance values v).
        variance_type: "learned_range" (default when ``learn_sigma``), "fixed_small" (posterior variance,
            default otherwise) or "fixed_large" (beta_t). With ``learn_sigma`` and a fixed type the v channels
            are ignored, which is how diffusers samples DiT.
        timestep_map: original timestep of each index of this process (set by :meth:`respace`);
            identity when omitted.
    """

    def __init__(
        self,
        betas: Sequence[float] | np.ndarray | Tensor,
        *,
        learn_sigma: bool = True,
        variance_type: str | None = None,
        timestep_map: Sequence[int] | Tensor | None = None,
    ) -> None:
        if isinstance(betas, Tensor):
            betas = betas.detach().cpu().double().numpy()
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or betas.size == 0:
            raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
        if not np.all((betas > 0) & (betas < 1)):
            raise ValueError("every beta must lie in (0, 1); check the schedule and the number of steps")
        if variance_type is None:
            variance_type = "learned_range" if learn_sigma else "fixed_small"
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"unknown variance_type {variance_type!r}; valid: {', '.join(VARIANCE_TYPES)}")
        if variance_type == "learned_range" and not learn_sigma:
            raise ValueError(
                "variance_type='learned_range' needs learn_sigma=True (a network with 2C output channels); "
                "use 'fixed_small' or 'fixed_large' for an epsilon-only network"
            )
        self.learn_sigma = bool(learn_sigma)
        self.variance_type = variance_type
        self.num_timesteps = int(betas.shape[0])

        if timestep_map is None:
            tmap = torch.arange(self.num_timesteps, dtype=torch.long)
        else:
            tmap = torch.as_tensor(timestep_map, dtype=torch.long).detach().cpu().clone()
            if tmap.shape != (self.num_timesteps,):
                raise ValueError(
                    f"timestep_map must have one entry per step ({self.num_timesteps}), got shape {tuple(tmap.shape)}"
                )
        self.timestep_map: Tensor = tmap

        # --- schedule-derived coefficients (float64) ---
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        # q(x_t | x_0)
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The posterior variance is 0 at t = 0, so its log is clipped by reusing the t = 1 value (as ADM).
        # A one-step process has no t = 1; beta_0 is the only finite choice left there.
        if self.num_timesteps > 1:
            clipped = np.append(self.posterior_variance[1], self.posterior_variance[1:])
        else:
            clipped = betas.copy()
        self.posterior_log_variance_clipped = np.log(clipped)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)
        )
        self.log_betas = np.log(betas)
        # "fixed_large" uses beta_t, except at t = 0 where the posterior variance of t = 1 gives a better
        # decoder likelihood (ADM).
        if self.num_timesteps > 1:
            self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:])
        else:
            self.fixed_large_variance = betas.copy()

        for value in vars(self).values():
            if isinstance(value, np.ndarray):
                value.setflags(write=False)  # the fp32 tensor cache below assumes they never change
        self._table_cache: dict[tuple[str, torch.device], Tensor] = {}

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_schedule(
        cls,
        schedule: str = "linear",
        num_timesteps: int = 1000,
        learn_sigma: bool = True,
        variance_type: str | None = None,
        timestep_respacing: str | Sequence[int] | None = None,
    ) -> GaussianDiffusion:
        """Build the process from a named schedule; ``timestep_respacing`` (e.g. "250", "ddim50") respaces it."""
        process = cls(
            get_betas(schedule, num_timesteps), learn_sigma=learn_sigma, variance_type=variance_type
        )
        if timestep_respacing:
            process = process.respace(space_timesteps(num_timesteps, timestep_respacing))
        return process

    def respace(self, use_timesteps: Iterable[int]) -> GaussianDiffusion:
        """A shorter process that keeps the given indices of this one (e.g. ``space_timesteps(1000, "250")``).

        Its betas are recomputed from the kept cumulative alphas, so q(x_t | x_0) is unchanged at every kept
        step; its ``timestep_map`` maps its indices to the original timesteps (composed when this process is
        itself respaced).
        """
        keep = sorted({int(i) for i in use_timesteps})
        if not keep:
            raise ValueError("use_timesteps is empty; keep at least one timestep")
        if keep[0] < 0 or keep[-1] >= self.num_timesteps:
            raise ValueError(
                f"use_timesteps must lie in [0, {self.num_timesteps - 1}], got range [{keep[0]}, {keep[-1]}]"
            )
        kept_ac = self.alphas_cumprod[keep]
        prev_ac = np.append(1.0, kept_ac[:-1])
        new_betas = 1.0 - kept_ac / prev_ac
        return GaussianDiffusion(
            new_betas,
            learn_sigma=self.learn_sigma,
            variance_type=self.variance_type,
            timestep_map=self.timestep_map[torch.tensor(keep, dtype=torch.long)],
        )

    def __repr__(self) -> str:
        respaced = not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))
        return (
            f"GaussianDiffusion(num_timesteps={self.num_timesteps}, variance_type={self.variance_type!r}, "
            f"learn_sigma={self.learn_sigma}, respaced={respaced})"
        )

    # ------------------------------------------------------------------ internals
    def _gather(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """Coefficient table ``name`` at indices ``t``, as float32 (N, 1, ..., 1) on t's device."""
        key = (name, t.device)
        table = self._table_cache.get(key)
        if table is None:
            # Cast on the CPU first: some backends (MPS) have no float64.
            table = torch.from_numpy(np.asarray(getattr(self, name), dtype=np.float32)).to(t.device)
            self._table_cache[key] = table
        return table[t].reshape(-1, *([1] * (ndim - 1)))

    def _index(self, t: Tensor | int, n: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        if t.dtype.is_floating_point:
            raise ValueError("t must be integer indices into the process, got a floating-point tensor")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t must be a scalar or have shape ({n},), got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"t must lie in [0, {self.num_timesteps - 1}] (indices into this process)")
        return t

    def model_timesteps(self, t: Tensor) -> Tensor:
        """Original timesteps (what the network sees) for indices ``t`` of this process."""
        key = ("timestep_map", t.device)
        tmap = self._table_cache.get(key)
        if tmap is None:
            tmap = self.timestep_map.to(t.device)
            self._table_cache[key] = tmap
        return tmap[t]

    def _split_output(self, model_output: Tensor, channels: int) -> tuple[Tensor, Tensor | None]:
        expected = 2 * channels if self.learn_sigma else channels
        if model_output.ndim < 2 or model_output.shape[1] != expected:
            raise ValueError(
                f"model output has {model_output.shape[1] if model_output.ndim > 1 else '?'} channels, expected "
                f"{expected} ({'epsilon + variance values' if self.learn_sigma else 'epsilon'} for {channels}-channel "
                "inputs); check learn_sigma"
            )
        model_output = model_output.float()
        if self.learn_sigma:
            eps, v = model_output.split(channels, dim=1)
            return eps, v
        return model_output, None

    # ------------------------------------------------------------------ forward process
    # Public methods validate t once (one host sync) and hand it to the unchecked private versions.
    def q_sample(self, x0: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given noise."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        t = self._index(t, x0.shape[0], x0.device)
        nd = x0.ndim
        return (
            self._gather("sqrt_alphas_cumprod", t, nd) * x0.float()
            + self._gather("sqrt_one_minus_alphas_cumprod", t, nd) * noise.float()
        )

    def q_posterior_mean_variance(
        self, x0: Tensor, x_t: Tensor, t: Tensor | int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        return self._posterior(x0.float(), x_t.float(), self._index(t, x_t.shape[0], x_t.device))

    def _posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nd = x_t.ndim
        mean = (
            self._gather("posterior_mean_coef1", t, nd) * x0
            + self._gather("posterior_mean_coef2", t, nd) * x_t
        )
        variance = self._gather("posterior_variance", t, nd).expand_as(x_t)
        log_variance = self._gather("posterior_log_variance_clipped", t, nd).expand_as(x_t)
        return mean, variance, log_variance

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor | int, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return self._xstart_from_eps(x_t.float(), self._index(t, x_t.shape[0], x_t.device), eps.float())

    def _xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        nd = x_t.ndim
        return (
            self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t
            - self._gather("sqrt_recipm1_alphas_cumprod", t, nd) * eps
        )

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor | int, x0: Tensor) -> Tensor:
        """eps = (x_t / sqrt(abar_t) - x_0) / sqrt(1 / abar_t - 1)."""
        return self._eps_from_xstart(x_t.float(), self._index(t, x_t.shape[0], x_t.device), x0.float())

    def _eps_from_xstart(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        nd = x_t.ndim
        return (self._gather("sqrt_recip_alphas_cumprod", t, nd) * x_t - x0) / self._gather(
            "sqrt_recipm1_alphas_cumprod", t, nd
        )

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor | int, *, clip_denoised: bool = False
    ) -> dict[str, Tensor]:
        """Parameters of p(x_{t-1} | x_t) from a raw network output computed at x_t.

        Returns a dict with ``mean``, ``variance``, ``log_variance``, ``pred_xstart`` and ``eps`` (all float32,
        shaped like x_t). ``clip_denoised`` clamps the predicted x_0 to [-1, 1] (pixel space only; DiT
        samples latents with it off) and re-derives eps from the clamped x_0.
        """
        t = self._index(t, x_t.shape[0], x_t.device)
        return self._p_mean_variance(model_output, x_t.float(), t, clip_denoised)

    def _p_mean_variance(
        self, model_output: Tensor, x_t: Tensor, t: Tensor, clip_denoised: bool
    ) -> dict[str, Tensor]:
        eps, v = self._split_output(model_output, x_t.shape[1])
        nd = x_t.ndim
        if self.variance_type == "learned_range":
            assert v is not None
            min_log = self._gather("posterior_log_variance_clipped", t, nd)
            max_log = self._gather("log_betas", t, nd)
            frac = (v + 1.0) / 2.0  # v is unbounded in principle; [-1, 1] spans [posterior var, beta_t]
            log_variance = frac * max_log + (1.0 - frac) * min_log
            variance = torch.exp(log_variance)
        elif self.variance_type == "fixed_small":
            variance = self._gather("posterior_variance", t, nd).expand_as(x_t)
            log_variance = self._gather("posterior_log_variance_clipped", t, nd).expand_as(x_t)
        else:  # fixed_large
            variance = self._gather("fixed_large_variance", t, nd).expand_as(x_t)
            log_variance = torch.log(variance)

        pred_xstart = self._xstart_from_eps(x_t, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1.0, 1.0)
            eps = self._eps_from_xstart(x_t, t, pred_xstart)
        mean, _, _ = self._posterior(pred_xstart, x_t, t)
        return {
            "mean": mean,
            "variance": variance,
            "log_variance": log_variance,
            "pred_xstart": pred_xstart,
            "eps": eps,
        }

    # ------------------------------------------------------------------ training
    def vb_terms_bpd(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor | int) -> Tensor:
        """Per-sample variational-bound term in bits per dimension.

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and the discretized-Gaussian decoder NLL
        -log p(x_0 | x_1) at t = 0.
        """
        t = self._index(t, x_t.shape[0], x_t.device)
        return self._vb_terms_bpd(model_output, x0.float(), x_t.float(), t)

    def _vb_terms_bpd(self, model_output: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        true_mean, _, true_log_var = self._posterior(x0, x_t, t)
        out = self._p_mean_variance(model_output, x_t, t, False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x0, means=out["mean"], log_scales=0.5 * out["log_variance"]
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)

    def training_losses(
        self,
        model: Callable[..., Tensor],
        x0: Tensor,
        model_kwargs: dict[str, Any] | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Per-sample DiT training loss: ``{"loss", "mse"}`` plus ``"vb"`` when the variance is learned.

        ``loss = mse(eps, eps_hat) + vb``. The VLB term sees the epsilon prediction only through
        ``eps_hat.detach()``, so it trains the variance channels alone and the mean is trained by the MSE
        (Nichol & Dhariwal's hybrid objective, unscaled as in DiT's MSE loss type). ``t`` (indices into this
        process) is drawn uniformly and ``noise`` from N(0, I) with ``generator`` unless given. The model is
        called as ``model(x_t, timestep_map[t], **model_kwargs)`` with float32 x_t (run it under autocast for
        low precision); its output is cast to float32 before any loss arithmetic.
        """
        if x0.ndim < 2:
            raise ValueError(f"x0 must be batched (N, C, ...), got shape {tuple(x0.shape)}")
        x0 = x0.float()
        n, device = x0.shape[0], x0.device
        gen_device = _as_generator_device(generator, device)
        if t is None:
            t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=gen_device).to(device)
        t = self._index(t, n, device)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32).to(
                device
            )
        noise = noise.float()

        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
        x_t = (
            self._gather("sqrt_alphas_cumprod", t, x0.ndim) * x0
            + self._gather("sqrt_one_minus_alphas_cumprod", t, x0.ndim) * noise
        )
        model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        eps_hat, v = self._split_output(model_output, x0.shape[1])

        terms: dict[str, Tensor] = {"mse": mean_flat((noise - eps_hat) ** 2)}
        if self.variance_type == "learned_range":
            assert v is not None
            frozen = torch.cat([eps_hat.detach(), v], dim=1)
            terms["vb"] = self._vb_terms_bpd(frozen, x0, x_t, t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
