"""Tests for ditkit.sampling: noise, guidance, grids and the DDPM / DDIM samplers.

The main oracle is Gaussian data x0 ~ N(MU, S^2): E[x0 | x_t] is known in closed form, so the exact denoiser
(and the exact reverse variance) can be handed to the samplers, and the distribution each sampler produces can
be predicted by propagating mean and variance through its (affine) steps in float64.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ditkit.diffusion import GaussianDiffusion, space_timesteps
from ditkit.sampling import (
    SAMPLERS,
    classifier_free_guidance,
    get_sampler,
    make_sampling_process,
    randn,
    sample_ddim,
    sample_ddpm,
)

MU, S = 0.3, 0.5


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


@pytest.fixture(scope="module")
def base() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=True)


class ToyNet(nn.Module):
    """Deterministic nonlinear per-sample network model(x, t, y) -> (N, 2C, H, W)."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels, 8, 3, padding=1)
        self.t_proj = nn.Linear(2, 8)
        self.y_emb = nn.Embedding(11, 8)
        self.conv_out = nn.Conv2d(8, 2 * channels, 3, padding=1)

    def forward(self, x, t, y=None):
        tf = t.float()[:, None] / 1000
        h = self.conv_in(x) + self.t_proj(torch.cat([tf, torch.sin(6 * tf)], 1))[:, :, None, None]
        if y is not None:
            h = h + self.y_emb(y)[:, :, None, None]
        return self.conv_out(torch.tanh(h))


def bounded(toy: ToyNet, y: torch.Tensor):
    """A model_fn whose eps ~ x (as for real data at high noise) plus a nonlinear t-dependent term, so that
    sampled trajectories stay O(1) and comparisons test the update rule rather than fp32 growth."""

    def fn(x, t):
        out = toy(x, t, y)
        return torch.cat([x + 0.5 * out[:, :4], out[:, 4:]], 1)

    return fn


@pytest.fixture(scope="module")
def toy() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet().eval()


# ----------------------------------------------------------------------------------------------- noise
def test_randn_generator_semantics():
    single = randn((3, 2, 2), torch.Generator().manual_seed(5))
    torch.testing.assert_close(single, torch.randn((3, 2, 2), generator=torch.Generator().manual_seed(5)))
    pair = randn((2, 3, 4), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    alone = randn((1, 3, 4), [torch.Generator().manual_seed(1)])
    assert torch.equal(pair[:1], alone)  # a sample does not depend on its batch
    assert not torch.equal(pair[0], pair[1])
    assert randn((2, 3), None, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="one generator per sample"):
        randn((3, 2), [torch.Generator()])


# ----------------------------------------------------------------------------------------------- exact-denoiser oracle
def exact_model_fn(base: GaussianDiffusion, process: GaussianDiffusion):
    """Raw output (eps, v) of the ideal network for Gaussian data, as a function of ORIGINAL t.

    eps comes from E[x0 | x_t]; v sets the learned-range variance to the true reverse variance
    Var[x_{i-1} | x_i] = posterior variance + coef1^2 Var[x0 | x_i] of the respaced chain, so ancestral
    sampling with it is exact in distribution.
    """
    ac_orig = torch.tensor(base.alphas_cumprod)
    index_of = {int(o): i for i, o in enumerate(process.timestep_map)}

    def fn(x, t):
        a = ac_orig[t].view(-1, 1, 1, 1)
        xd = x.double()
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (xd - a.sqrt() * MU)
        eps = (xd - a.sqrt() * x0) / (1 - a).sqrt()
        i = index_of[int(t[0])]
        abar, abar_prev = (
            base.alphas_cumprod[int(t[0])],
            (base.alphas_cumprod[int(process.timestep_map[i - 1])] if i else 1.0),
        )
        beta = 1 - abar / abar_prev
        c1 = beta * np.sqrt(abar_prev) / (1 - abar)
        target = beta * (1 - abar_prev) / (1 - abar) + c1**2 * S**2 * (1 - abar) / (abar * S**2 + 1 - abar)
        lo = np.log(beta * (1 - abar_prev) / (1 - abar)) if i else np.log(target)  # v is unused at i = 0
        frac = (np.log(target) - lo) / (np.log(beta) - lo) if i else 0.0
        v = torch.full_like(eps, 2 * frac - 1)
        return torch.cat([eps, v], 1).float()

    return fn


def predicted_moments(base: GaussianDiffusion, kept: list[int], sampler: str, eta: float = 0.0):
    """Mean and variance of the sampler's output for x_T ~ N(0, 1), by pushing them through each affine step."""
    ac = base.alphas_cumprod
    m, var = 0.0, 1.0
    for j in range(len(kept) - 1, -1, -1):
        a, ap = ac[kept[j]], (ac[kept[j - 1]] if j else 1.0)
        k = np.sqrt(a) * S**2 / (a * S**2 + 1 - a)  # x0_hat = k x + MU (1 - k sqrt(a))
        kx, bx = k, MU * (1 - k * np.sqrt(a))
        ke, be = (1 - np.sqrt(a) * kx) / np.sqrt(1 - a), -np.sqrt(a) * bx / np.sqrt(1 - a)
        if sampler == "ddpm":
            beta = 1 - a / ap
            c1, c2 = beta * np.sqrt(ap) / (1 - a), (1 - ap) * np.sqrt(1 - beta) / (1 - a)
            slope, offset = c1 * kx + c2, c1 * bx
            noise_var = beta * (1 - ap) / (1 - a) + c1**2 * S**2 * (1 - a) / (a * S**2 + 1 - a) if j else 0.0
        else:
            sig = eta * np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
            d = np.sqrt(1 - ap - sig**2)
            slope, offset, noise_var = np.sqrt(ap) * kx + d * ke, np.sqrt(ap) * bx + d * be, sig**2
        m, var = slope * m + offset, slope**2 * var + noise_var
    return m, var


# (sampler, respacing, eta, how far the sampler's own output distribution is from N(MU, S^2) in variance):
# DDPM with the exact variance is exact; DDIM's discretisation shrinks the variance of this data with few steps
# (50 steps: -11 % at eta = 0, -21 % at eta = 1, both predicted by the float64 propagation above).
CASES = [
    ("ddpm", "1000", 0.0, 0.01),
    ("ddpm", "250", 0.0, 0.01),
    ("ddim", "ddim250", 0.0, 0.03),
    ("ddim", "ddim50", 0.0, 0.12),
    ("ddim", "ddim50", 1.0, 0.22),
    ("ddim", "ddim250", 1.0, 0.06),
]


@pytest.mark.parametrize(("sampler", "spec", "eta", "method_bias"), CASES)
def test_samplers_recover_gaussian_data_with_exact_denoiser(base, sampler, spec, eta, method_bias):
    kept = space_timesteps(1000, spec)
    process = base.respace(kept)
    g = torch.Generator().manual_seed(123)
    x_T = randn((1024, 1, 8, 8), g)  # 65536 independent pixels
    kwargs = {"eta": eta} if sampler == "ddim" else {}
    x = get_sampler(sampler)(exact_model_fn(base, process), process, x_T, generator=g, **kwargs)
    assert x.dtype == torch.float32 and x.shape == x_T.shape
    mean, var = x.double().mean().item(), x.double().var().item()
    pred_mean, pred_var = predicted_moments(base, kept, sampler, eta)
    # Sampler vs the analytic prediction: statistical error only (std of the mean ~0.002, of the variance ~0.6 %).
    assert mean == pytest.approx(pred_mean, abs=0.01)
    assert var == pytest.approx(pred_var, rel=0.03)
    # The data distribution itself: mean always, variance up to the method's known bias.
    assert mean == pytest.approx(MU, abs=0.01)
    assert var == pytest.approx(S**2, rel=method_bias + 0.03)


# ----------------------------------------------------------------------------------------------- diffusers parity
def test_ddim50_matches_diffusers_step_for_step(base, toy):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    sched.set_timesteps(50)
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    y = torch.tensor([1, 2])

    net = bounded(toy, y)

    ours: list[tuple[int, torch.Tensor]] = []

    def model_fn(x, t):
        ours.append((int(t[0]), x.clone()))
        return net(x, t)

    process = make_sampling_process(base, "ddim", 50)
    x_ours = sample_ddim(model_fn, process, x_T, eta=0.0)

    x = x_T.clone()
    theirs = []
    with torch.no_grad():
        for t in sched.timesteps:
            theirs.append((int(t), x.clone()))
            eps = net(x, t.expand(2))[:, :4]  # diffusers drops the variance channels
            x = sched.step(eps, t, x, eta=0.0).prev_sample

    assert [t for t, _ in ours] == [t for t, _ in theirs] == list(range(980, -1, -20))
    for (t, a), (_, b) in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"step t={t}")
    torch.testing.assert_close(x_ours, x, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------- respacing in samplers
def test_ddpm_feeds_original_timesteps_and_full_respacing_is_identity(base, toy):
    y = torch.tensor([3, 4])
    seen = []

    def model_fn(x, t):
        seen.append(t.tolist())
        return toy(x, t, y)

    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    sp = base.respace(space_timesteps(1000, "250"))
    a = sample_ddpm(model_fn, sp, x_T, generator=torch.Generator().manual_seed(1))
    assert seen == [[t, t] for t in reversed(space_timesteps(1000, "250"))]
    # `timesteps=` respaces inside the sampler: same as passing the respaced process.
    b = sample_ddpm(
        model_fn,
        base,
        x_T,
        timesteps=space_timesteps(1000, "250"),
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)

    plain = sample_ddpm(bounded(toy, y), base, x_T, generator=torch.Generator().manual_seed(2))
    full = sample_ddpm(
        bounded(toy, y),
        base.respace(space_timesteps(1000, "1000")),
        x_T,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(full, plain, rtol=1e-5, atol=1e-5)


def test_per_sample_generators_make_images_batch_independent(base, toy):
    process = base.respace(space_timesteps(1000, "ddim20"))
    y2, y1 = torch.tensor([5, 6]), torch.tensor([5])

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    for sampler, kw in [(sample_ddpm, {}), (sample_ddim, {"eta": 0.7})]:
        pair = sampler(bounded(toy, y2), process, randn((2, 4, 4, 4), gens(1, 2)), generator=gens(1, 2), **kw)
        alone = sampler(bounded(toy, y1), process, randn((1, 4, 4, 4), gens(1)), generator=gens(1), **kw)
        # equal up to conv kernels choosing a different summation order for another batch size
        torch.testing.assert_close(pair[:1], alone, rtol=1e-6, atol=1e-6)
        other = sampler(
            bounded(toy, y2), process, randn((2, 4, 4, 4), gens(1, 2)), generator=gens(1, 3), **kw
        )
        assert not torch.allclose(other[1], pair[1])  # the noise of sample 1 really comes from its generator


# ----------------------------------------------------------------------------------------------- guidance
class CountingNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls, self.batch_sizes = net, 0, []

    def forward(self, x, t, y):
        self.calls += 1
        self.batch_sizes.append(x.shape[0])
        return self.net(x, t, y)


def test_guidance_formula_channels_and_single_batched_call(toy):
    x = torch.randn(3, 4, 4, 4)
    t = torch.tensor([10, 500, 990])
    y, null = torch.tensor([1, 2, 3]), torch.tensor([10, 10, 10])
    with torch.no_grad():
        c, u = toy(x, t, y), toy(x, t, null)
        for channels, guided_upto in [(None, 4), (3, 3), (1, 1)]:
            net = CountingNet(toy)
            out = classifier_free_guidance(net, y, 10, scale=4.0, guidance_channels=channels)(x, t)
            assert net.calls == 1 and net.batch_sizes == [6]
            ref = c.clone()
            ref[:, :guided_upto] = u[:, :guided_upto] + 4.0 * (c[:, :guided_upto] - u[:, :guided_upto])
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
            # everything past the guided channels (incl. the 4 variance channels) is the conditional output
            torch.testing.assert_close(out[:, guided_upto:], c[:, guided_upto:], rtol=0, atol=1e-6)
            assert not torch.allclose(out[:, :guided_upto], c[:, :guided_upto])


def test_guidance_scale_one_is_the_plain_conditional_model(base, toy):
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    net = CountingNet(toy)
    fn = classifier_free_guidance(net, y, torch.tensor([10, 10]), scale=1.0)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        assert torch.equal(fn(x_T, t), toy(x_T, t, y))
    assert net.batch_sizes == [2]  # no doubled batch
    process = base.respace(space_timesteps(1000, "ddim10"))
    a = sample_ddpm(fn, process, x_T, generator=torch.Generator().manual_seed(4))
    b = sample_ddpm(lambda x, t: toy(x, t, y), process, x_T, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)


def test_guidance_accepts_embeddings_and_validates():
    seen = {}

    def model(x, t, cond):
        seen["cond"] = cond
        return torch.cat([x * cond.sum(1, keepdim=True)[:, :, None, None]] * 2, 1)

    cond = torch.randn(2, 5)
    fn = classifier_free_guidance(model, cond, torch.zeros(5), scale=2.0)  # shared null embedding (D,)
    out = fn(torch.ones(2, 3, 1, 1), torch.tensor([1, 1]))
    assert seen["cond"].shape == (4, 5) and torch.equal(seen["cond"][2:], torch.zeros(2, 5))
    # uncond output is 0 here, so guided = 2 * cond on the eps channels, cond on the variance channels
    torch.testing.assert_close(out[:, :3, 0, 0], 2 * cond.sum(1, keepdim=True).expand(2, 3))
    torch.testing.assert_close(out[:, 3:, 0, 0], cond.sum(1, keepdim=True).expand(2, 3))
    with pytest.raises(ValueError, match="exceeds the 3 epsilon channels"):
        classifier_free_guidance(model, cond, 0.0, 2.0, guidance_channels=4)(
            torch.ones(2, 3, 1, 1), torch.tensor([1, 1])
        )
    with pytest.raises(ValueError, match="must match"):
        classifier_free_guidance(model, cond, torch.zeros(3, 5), 2.0)


# ----------------------------------------------------------------------------------------------- registry and grids
def test_registry_grids_and_errors(base, toy):
    # Round 2: the registry maps names to specs (function, default steps, kinds); calling a spec calls it.
    assert SAMPLERS["ddpm"].fn is sample_ddpm and SAMPLERS["ddim"].fn is sample_ddim
    assert set(SAMPLERS) == {"ddpm", "ddim", "euler", "heun", "dpm++2m", "unipc", "euler-sde"}
    with pytest.raises(ValueError, match="valid samplers: ddpm, ddim, euler"):
        get_sampler("lms")
    with pytest.raises(ValueError, match="valid samplers"):
        make_sampling_process(base, "lms", 10)
    assert make_sampling_process(base, "ddpm", 250).timestep_map.tolist() == space_timesteps(1000, "250")
    assert make_sampling_process(base, "ddim", 50).timestep_map.tolist() == list(range(0, 1000, 20))
    # 300 steps: no integer stride gives exactly 300 out of 1000, so the evenly strided grid is used.
    fallback = make_sampling_process(base, "ddim", 300)
    assert fallback.timestep_map.tolist() == space_timesteps(1000, "300") and fallback.num_timesteps == 300
    with pytest.raises(ValueError, match=r"\[1, 1000\]"):
        make_sampling_process(base, "ddpm", 0)
    with pytest.raises(ValueError, match="eta must lie in"):
        sample_ddim(lambda x, t: x, base, torch.zeros(1, 1, 1, 1), eta=-0.1)


def test_progress_bar_does_not_change_results(base, toy, capsys):
    process = base.respace(space_timesteps(1000, "ddim5"))
    x_T = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1])
    quiet = sample_ddim(lambda x, t: toy(x, t, y), process, x_T)
    loud = sample_ddim(lambda x, t: toy(x, t, y), process, x_T, progress=True)
    assert torch.equal(quiet, loud)
    assert "ddim" in capsys.readouterr().err


def test_ddpm_last_step_is_the_mean_without_noise(base, toy):
    # A 2-step grid [0, 999]: one noisy step, then the final step, which must be the model mean exactly.
    process = base.respace([0, 999])
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    fn = bounded(toy, torch.tensor([1, 2]))
    seen = []

    def spy(x, t):
        seen.append(x.clone())
        return fn(x, t)

    out = sample_ddpm(spy, process, x_T, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x1 = seen[1]
        expected = process.p_mean_variance(fn(x1, torch.tensor([0, 0])), x1, 0)["mean"]
    assert torch.equal(out, expected)
    one_step = base.respace([0])
    a = sample_ddpm(fn, one_step, x_T, generator=torch.Generator().manual_seed(1))
    b = sample_ddpm(fn, one_step, x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
