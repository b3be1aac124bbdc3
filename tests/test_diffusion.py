"""Tests for ditkit.diffusion: schedules, respacing, the Gaussian process and the hybrid loss.

References are computed independently in float64 numpy (Gaussian conjugacy for the posterior, textbook KL),
never by calling the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from ditkit.diffusion import GaussianDiffusion, get_betas, space_timesteps

C = 2  # latent channels of the toy data


# ----------------------------------------------------------------------------------------------- helpers
def cumprod(betas: np.ndarray) -> np.ndarray:
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


def std_normal_cdf_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def std_normal_cdf_exact(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def decoder_nll_bits(
    x0: np.ndarray, mean: np.ndarray, logvar: np.ndarray, cdf=std_normal_cdf_tanh
) -> np.ndarray:
    """-log p(x0) of a Gaussian integrated over x0's bin of width 2/255 (edge bins open), mean over dims, bits."""
    std = np.exp(0.5 * logvar)
    upper = cdf((x0 + 1 / 255 - mean) / std)
    lower = cdf((x0 - 1 / 255 - mean) / std)
    prob = np.where(x0 < -0.999, upper, np.where(x0 > 0.999, 1.0 - lower, upper - lower))
    nll = -np.log(np.maximum(prob, 1e-12))
    return nll.reshape(len(x0), -1).mean(1) / np.log(2.0)


def gaussian_kl_bits(m1, v1, m2, v2) -> np.ndarray:
    kl = np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    return kl.reshape(len(m1), -1).mean(1) / np.log(2.0)


def true_posterior(ac: np.ndarray, t: int, x0: np.ndarray, xt: np.ndarray):
    """q(x_{t-1} | x_t, x_0) by multiplying q(x_{t-1} | x_0) and q(x_t | x_{t-1}) (t >= 1)."""
    a_prev = ac[t - 1]
    alpha = ac[t] / a_prev
    beta = 1.0 - alpha
    precision = 1.0 / (1.0 - a_prev) + alpha / beta
    var = 1.0 / precision
    mean = var * (np.sqrt(a_prev) * x0 / (1.0 - a_prev) + np.sqrt(alpha) * xt / beta)
    return mean, var


class ToyNet(nn.Module):
    """Tiny conditional conv net with the DiT call signature model(x, t, y)."""

    def __init__(self, channels: int = C, learn_sigma: bool = True) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, 8, 3, padding=1)
        self.t_proj = nn.Linear(1, 8)
        self.y_emb = nn.Embedding(5, 8)
        self.conv_out = nn.Conv2d(8, channels * (2 if learn_sigma else 1), 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv_in(x) + self.t_proj(t.float()[:, None] / 1000)[:, :, None, None]
        if y is not None:
            h = h + self.y_emb(y)[:, :, None, None]
        return self.conv_out(torch.tanh(h))


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


@pytest.fixture(scope="module")
def base() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=True)


# ----------------------------------------------------------------------------------------------- schedules
def test_linear_betas_and_alphas_match_hand_formulas(base):
    betas = get_betas("linear", 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    np.testing.assert_allclose(betas, [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)], rtol=1e-12)
    np.testing.assert_allclose(base.alphas_cumprod, cumprod(betas), rtol=1e-12)
    np.testing.assert_allclose(base.alphas_cumprod_prev, np.append(1.0, cumprod(betas)[:-1]), rtol=1e-12)
    # Other lengths scale both ends by 1000 / T so that the total noise stays comparable.
    b250 = get_betas("linear", 250)
    assert b250.shape == (250,)
    assert b250[0] == pytest.approx(4e-4, rel=1e-12) and b250[-1] == pytest.approx(0.08, rel=1e-12)
    assert np.all(np.diff(b250) > 0)


def test_cosine_schedule_endpoints():
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    betas = get_betas("cosine", 1000)
    assert betas.shape == (1000,) and betas.dtype == np.float64
    assert betas[0] == pytest.approx(1 - f(1 / 1000) / f(0), rel=1e-12)
    assert betas[500] == pytest.approx(1 - f(501 / 1000) / f(500 / 1000), rel=1e-12)
    assert betas[-1] == 0.999  # alpha_bar(1) = 0 would give beta = 1; the cap keeps the process invertible
    assert betas.max() <= 0.999 and np.all(np.diff(betas) > 0)
    # alpha_bar follows the cosine curve (up to the cap at the very end).
    np.testing.assert_allclose(cumprod(betas)[:-1], [f((i + 1) / 1000) / f(0) for i in range(999)], rtol=1e-9)
    np.testing.assert_array_equal(get_betas("squaredcos_cap_v2", 1000), betas)


def test_unknown_schedule_and_bad_lengths_raise():
    with pytest.raises(ValueError, match="valid schedules: 'linear', 'cosine'"):
        get_betas("quadratic")
    with pytest.raises(ValueError, match="num_timesteps > 20"):
        get_betas("linear", 20)
    with pytest.raises(ValueError, match="positive integer"):
        get_betas("linear", 0)


# ----------------------------------------------------------------------------------------------- respacing
def test_space_timesteps_official_semantics():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    s250 = space_timesteps(1000, "250")
    assert len(s250) == 250 and s250[0] == 0 and s250[-1] == 999 and s250 == sorted(s250)
    # stride 999/249 = 4.012...: index k is round(4.012 k)
    assert s250[:5] == [0, 4, 8, 12, 16] and s250[125] == round(125 * 999 / 249)
    assert space_timesteps(1000, "10") == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert space_timesteps(1000, "1000") == list(range(1000))
    # Two sections of 15 steps: [0, 14] (stride 14) and 15 + [0, 7, 14] (stride 7).
    assert space_timesteps(30, "2,3") == [0, 14, 15, 22, 29]
    assert space_timesteps(30, [2, 3]) == [0, 14, 15, 22, 29]
    # Sections of sizes 4, 3, 3 (the remainder goes to the first): strides 1.5, 2 and a single step.
    assert space_timesteps(10, "3,2,1") == [0, 2, 3, 4, 6, 7]
    # Python's round is half-to-even: stride 2.5 gives round(2.5) = 2, as in the official code.
    assert space_timesteps(6, "3") == [0, 2, 5]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ddim999", "no integer stride gives exactly 999"),
        ("ddimx", "expected 'ddimN'"),
        ("abc", "comma-separated step counts"),
        ("2000", "section 0 has 1000 steps but 2000"),
        ("0", "at least 1 step"),
    ],
)
def test_space_timesteps_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spec)


# ----------------------------------------------------------------------------------------------- process
def test_constructor_defaults_and_validation():
    betas = get_betas("linear", 1000)
    assert GaussianDiffusion(betas).variance_type == "learned_range"
    assert GaussianDiffusion(betas, learn_sigma=False).variance_type == "fixed_small"
    p = GaussianDiffusion(betas)
    assert p.num_timesteps == 1000 and torch.equal(p.timestep_map, torch.arange(1000))
    assert p.timestep_map.dtype == torch.long
    with pytest.raises(ValueError, match="learned_range, fixed_small, fixed_large"):
        GaussianDiffusion(betas, variance_type="learned")
    with pytest.raises(ValueError, match="needs learn_sigma=True"):
        GaussianDiffusion(betas, learn_sigma=False, variance_type="learned_range")
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        GaussianDiffusion(np.array([0.1, 1.0]))


def test_posterior_coefficients(base):
    b, ac = base.betas, cumprod(base.betas)
    ac_prev = np.append(1.0, ac[:-1])
    np.testing.assert_allclose(base.posterior_variance, b * (1 - ac_prev) / (1 - ac), rtol=1e-12)
    assert base.posterior_variance[0] == 0.0
    # log of a zero variance is clipped to the t = 1 value
    assert base.posterior_log_variance_clipped[0] == pytest.approx(
        np.log(base.posterior_variance[1]), rel=1e-12
    )
    np.testing.assert_allclose(
        base.posterior_log_variance_clipped[1:], np.log(base.posterior_variance[1:]), rtol=1e-12
    )


def test_q_sample_matches_closed_form(base):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, C, 3, 3, generator=g)
    noise = torch.randn(4, C, 3, 3, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    out = base.q_sample(x0, t, noise)
    assert out.dtype == torch.float32
    ac = cumprod(get_betas("linear", 1000))[t.numpy()][:, None, None, None]
    ref = np.sqrt(ac) * x0.double().numpy() + np.sqrt(1 - ac) * noise.double().numpy()
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)
    # a python int t broadcasts to the batch
    torch.testing.assert_close(base.q_sample(x0, 500, noise)[2], out[2])


def test_q_posterior_matches_gaussian_conjugacy(base):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, C, 4, 4, generator=g)
    xt = torch.randn(3, C, 4, 4, generator=g)
    t = torch.tensor([1, 300, 999])
    mean, var, logvar = base.q_posterior_mean_variance(x0, xt, t)
    ac = cumprod(get_betas("linear", 1000))
    for k, tk in enumerate(t.tolist()):
        m_ref, v_ref = true_posterior(ac, tk, x0[k].double().numpy(), xt[k].double().numpy())
        np.testing.assert_allclose(mean[k].numpy(), m_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var[k].numpy(), np.full(var[k].shape, v_ref), rtol=1e-5)
        np.testing.assert_allclose(logvar[k].numpy(), np.full(var[k].shape, np.log(v_ref)), rtol=1e-5)
    # At t = 0 the posterior collapses onto x0 (variance 0, log-variance clipped to the t = 1 value).
    mean0, var0, logvar0 = base.q_posterior_mean_variance(x0, xt, 0)
    torch.testing.assert_close(mean0, x0, rtol=0, atol=1e-6)
    assert torch.all(var0 == 0) and torch.allclose(
        logvar0, torch.tensor(math.log(base.posterior_variance[1])).float()
    )


def test_p_mean_variance_learned_range_endpoints(base):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, C, 2, 2, generator=g)
    eps = torch.randn(3, C, 2, 2, generator=g)
    t = torch.tensor([0, 1, 700])
    post = base.posterior_variance
    for v, expect in [(1.0, base.betas[t.numpy()]), (-1.0, np.array([post[1], post[1], post[700]]))]:
        out = base.p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), x, t)
        np.testing.assert_allclose(out["variance"][:, 0, 0, 0].numpy(), expect, rtol=1e-5)
        np.testing.assert_allclose(out["log_variance"].exp().numpy(), out["variance"].numpy(), rtol=1e-6)
    # v = 0 is the geometric mean of the two
    out = base.p_mean_variance(torch.cat([eps, torch.zeros_like(eps)], 1), x, t)
    assert out["variance"][2, 0, 0, 0].item() == pytest.approx(
        math.sqrt(base.betas[700] * post[700]), rel=1e-5
    )
    # mean / pred_xstart / eps against closed forms
    ac = base.alphas_cumprod[t.numpy()][:, None, None, None]
    x0_ref = (x.double().numpy() - np.sqrt(1 - ac) * eps.double().numpy()) / np.sqrt(ac)
    np.testing.assert_allclose(out["pred_xstart"].numpy(), x0_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["eps"], eps)
    m_ref, _ = true_posterior(base.alphas_cumprod, 700, x0_ref[2], x[2].double().numpy())
    np.testing.assert_allclose(out["mean"][2].numpy(), m_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["mean"][0].numpy(), x0_ref[0], rtol=1e-5, atol=1e-5)  # t = 0: mean = x0


def test_p_mean_variance_fixed_types_dtype_and_channel_check(base):
    betas = get_betas("linear", 1000)
    x = torch.randn(2, C, 2, 2)
    t = torch.tensor([0, 5])
    small = GaussianDiffusion(betas, learn_sigma=False).p_mean_variance(torch.randn(2, C, 2, 2), x, t)
    np.testing.assert_allclose(
        small["variance"][:, 0, 0, 0].numpy(), [0.0, base.posterior_variance[5]], atol=1e-12
    )
    large = GaussianDiffusion(betas, learn_sigma=False, variance_type="fixed_large").p_mean_variance(
        torch.randn(2, C, 2, 2), x, t
    )
    np.testing.assert_allclose(
        large["variance"][:, 0, 0, 0].numpy(), [base.posterior_variance[1], betas[5]], rtol=1e-6
    )
    # A bf16 network output is cast: all arithmetic is float32.
    out = base.p_mean_variance(torch.randn(2, 2 * C, 2, 2).bfloat16(), x, t)
    assert all(v.dtype == torch.float32 for v in out.values())
    with pytest.raises(ValueError, match="expected 4"):
        base.p_mean_variance(torch.randn(2, C, 2, 2), x, t)
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        base.p_mean_variance(torch.randn(2, 2 * C, 2, 2), x, torch.tensor([0, 1000]))


def test_respace_recomputes_betas_from_kept_alpha_bar(base):
    same = base.respace(range(1000))
    np.testing.assert_allclose(same.betas, base.betas, rtol=1e-10)
    assert torch.equal(same.timestep_map, torch.arange(1000))

    keep = space_timesteps(1000, "250")
    sp = base.respace(keep)
    assert sp.num_timesteps == 250 and sp.variance_type == "learned_range"
    assert sp.timestep_map.tolist() == keep
    # The defining invariant: q(x_t | x_0) is unchanged at every kept step.
    np.testing.assert_allclose(sp.alphas_cumprod, base.alphas_cumprod[keep], rtol=1e-12)
    assert sp.betas[1] == pytest.approx(
        1 - base.alphas_cumprod[keep[1]] / base.alphas_cumprod[keep[0]], rel=1e-12
    )
    x0, noise = torch.randn(1, C, 2, 2), torch.randn(1, C, 2, 2)
    torch.testing.assert_close(sp.q_sample(x0, 100, noise), base.q_sample(x0, keep[100], noise))
    # Respacing a respaced process composes the maps.
    sp2 = sp.respace([0, 100, 249])
    assert sp2.timestep_map.tolist() == [keep[0], keep[100], keep[249]]
    np.testing.assert_allclose(sp2.alphas_cumprod, base.alphas_cumprod[sp2.timestep_map.numpy()], rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[0, 249\]"):
        sp.respace([0, 250])
    with pytest.raises(ValueError, match="empty"):
        sp.respace([])
    # from_schedule with respacing equals respace()
    fs = GaussianDiffusion.from_schedule(timestep_respacing="ddim50")
    assert fs.timestep_map.tolist() == list(range(0, 1000, 20))


# ----------------------------------------------------------------------------------------------- training loss
def test_training_losses_shapes_grads_and_determinism(base):
    torch.manual_seed(0)
    model = ToyNet()
    x0 = torch.rand(6, C, 4, 4) * 2 - 1
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    g = torch.Generator().manual_seed(3)
    terms = base.training_losses(model, x0, {"y": y}, generator=g)
    assert set(terms) == {"loss", "mse", "vb"}
    for v in terms.values():
        assert v.shape == (6,) and v.dtype == torch.float32 and torch.isfinite(v).all()
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    terms["loss"].mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    again = base.training_losses(model, x0, {"y": y}, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again["loss"], terms["loss"].detach())


def test_training_losses_mse_matches_hand_computation_and_model_sees_original_t(base):
    torch.manual_seed(1)
    model = ToyNet()
    sp = base.respace(space_timesteps(1000, "10"))
    x0 = torch.rand(3, C, 4, 4) * 2 - 1
    noise = torch.randn(3, C, 4, 4)
    t = torch.tensor([0, 4, 9])
    seen = []

    def spy(x, tt, **kw):
        seen.append(tt.clone())
        return model(x, tt, **kw)

    terms = sp.training_losses(spy, x0, t=t, noise=noise)
    assert seen[0].tolist() == [0, 444, 999]  # the network always sees the original timestep
    ac = torch.tensor(base.alphas_cumprod[[0, 444, 999]], dtype=torch.float32)[:, None, None, None]
    x_t = ac.sqrt() * x0 + (1 - ac).sqrt() * noise
    eps_hat = model(x_t, torch.tensor([0, 444, 999]))[:, :C]
    mse_ref = ((noise - eps_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["mse"], mse_ref, rtol=1e-5, atol=1e-6)


def test_vb_trains_only_the_variance_channels(base):
    x0 = torch.rand(4, C, 3, 3) * 2 - 1
    out = torch.randn(4, 2 * C, 3, 3, requires_grad=True)
    terms = base.training_losses(
        lambda x, t: out, x0, t=torch.tensor([0, 1, 50, 900]), noise=torch.randn_like(x0)
    )
    (g_vb,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert torch.all(g_vb[:, :C] == 0)  # stop-gradient on eps_hat
    assert g_vb[:, C:].abs().sum() > 0
    (g_mse,) = torch.autograd.grad(terms["mse"].sum(), out)
    assert torch.all(g_mse[:, C:] == 0) and g_mse[:, :C].abs().sum() > 0


def test_vb_equals_independent_decoder_nll_and_kl(base):
    g = torch.Generator().manual_seed(4)
    n = 4
    x0 = torch.rand(n, C, 4, 4, generator=g) * 2 - 1
    x0[:, 0, 0, 0] = 1.0  # edge bins are open-ended
    x0[:, 1, 0, 0] = -1.0
    noise = torch.randn(n, C, 4, 4, generator=g)
    eps_hat = noise + 0.3 * torch.randn(n, C, 4, 4, generator=g)
    v = torch.rand(n, C, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([0, 0, 1, 600])
    terms = base.training_losses(lambda x, tt: torch.cat([eps_hat, v], 1), x0, t=t, noise=noise)

    ac = base.alphas_cumprod
    betas = base.betas
    x0n, nn_, en, vn = (a.double().numpy() for a in (x0, noise, eps_hat, v))
    for k, tk in enumerate(t.tolist()):
        xt = np.sqrt(ac[tk]) * x0n[k] + np.sqrt(1 - ac[tk]) * nn_[k]
        pred_x0 = (xt - np.sqrt(1 - ac[tk]) * en[k]) / np.sqrt(ac[tk])
        post_var_clip = base.posterior_variance[max(tk, 1)]
        frac = (vn[k] + 1) / 2
        model_logvar = frac * np.log(betas[tk]) + (1 - frac) * np.log(post_var_clip)
        if tk == 0:
            # posterior at t = 0 is a point mass at the prediction: the model mean is pred_x0
            ref = decoder_nll_bits(x0n[k : k + 1], pred_x0[None], model_logvar[None])
            approx_vs_exact = decoder_nll_bits(
                x0n[k : k + 1], pred_x0[None], model_logvar[None], std_normal_cdf_exact
            )
            np.testing.assert_allclose(ref, approx_vs_exact, rtol=2e-2)  # ADM's tanh CDF is close to erf
        else:
            true_m, true_v = true_posterior(ac, tk, x0n[k], xt)
            model_m, _ = true_posterior(ac, tk, pred_x0, xt)
            ref = gaussian_kl_bits(
                true_m[None], np.full((1, *xt.shape), true_v), model_m[None], np.exp(model_logvar)[None]
            )
        assert terms["vb"][k].item() == pytest.approx(ref[0], rel=2e-4), (k, tk)


def test_fixed_variance_has_no_vb_and_bf16_output_is_cast():
    p = GaussianDiffusion.from_schedule(learn_sigma=False)
    x0 = torch.randn(2, C, 2, 2)
    terms = p.training_losses(
        lambda x, t: torch.zeros_like(x).bfloat16(), x0, t=torch.tensor([3, 4]), noise=x0
    )
    assert set(terms) == {"loss", "mse"} and terms["loss"].dtype == torch.float32
    torch.testing.assert_close(terms["loss"], (x0**2).mean(dim=(1, 2, 3)))
