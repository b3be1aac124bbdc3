"""The denoiser contract and the round-2 samplers (euler, heun, dpm++2m, unipc, euler-sde) against independent
references: the exact denoiser of Gaussian data (closed-form probability-flow ODE, so every sampler's output
distribution and its order of accuracy are known) and diffusers' own schedulers on the same network and noise.
"""

from __future__ import annotations

import math

import pytest
import torch

from ditkit.diffusion import GaussianDiffusion
from ditkit.sampling import (
    SAMPLERS,
    DDPMDenoiser,
    Denoiser,
    Prediction,
    get_sampler,
    sample_with_scheduler,
    sampler_names,
)
from test_sampling import ToyNet, bounded

MU, S = 0.3, 0.5


pytestmark = pytest.mark.usefixtures("single_thread")  # conftest.py


@pytest.fixture(scope="module")
def base() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=True)


@pytest.fixture(scope="module")
def toy() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet().eval()


class GaussianOracle(Denoiser):
    """The exact denoiser of x0 ~ N(MU, S^2) on a VP path alpha = cos(pi t / 2) ("ve" frame) or the linear
    flow path alpha = 1 - t ("flow" frame), t in [0, t_max]. Its raw output is the exact x0 (float64 math)."""

    def __init__(self, frame: str = "ve", t_max: float = 0.9) -> None:
        super().__init__(None)
        self.ode_frame, self.t_max, self.t_clean = frame, t_max, 0.0
        self.kind = "flow" if frame == "flow" else "ddpm"

    def alpha_sigma(self, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.ode_frame == "flow":
            return 1 - t, t
        return torch.cos(math.pi / 2 * t), torch.sin(math.pi / 2 * t)

    def noise_level(self, t):
        return float(t)

    def network_time(self, t):
        return t

    def ab(self, t):
        a, s = self.alpha_sigma(torch.tensor(float(t)))
        return float(a), float(s)

    def x0hat(self, x, t):
        a, s = self.ab(t)
        return MU + a * S**2 / (a * a * S**2 + s * s) * (x.double() - a * MU)

    def forward_raw(self, x, t, cond=None):
        self.counter.calls += 1
        return self.x0hat(x, float(t[0])).float()

    def predict(self, raw, x, t):
        a, s = self.ab(t[0])
        return Prediction(x0=raw, eps=((x.double() - a * raw.double()) / s).float())

    def exact(self, x_T, t_min):
        """x0_hat(x(t_min)) where x(t_min) solves the probability-flow ODE exactly from x_T at t_max: for
        Gaussian data (x - alpha MU) / sqrt(alpha^2 S^2 + sigma^2) is constant along the ODE."""
        a, s = self.ab(self.t_max)
        am, sm = self.ab(t_min)
        ratio = math.sqrt(am * am * S**2 + sm * sm) / math.sqrt(a * a * S**2 + s * s)
        return self.x0hat(am * MU + (x_T.double() - a * MU) * ratio, t_min)


def oracle_grid(n: int, t_max: float, t_min: float = 0.05) -> torch.Tensor:
    # n steps uniform in t down to t_min, then one step to clean (its error does not depend on n)
    return torch.cat(
        [torch.linspace(t_max, t_min, n + 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)]
    )


X_T = torch.randn(4096, generator=torch.Generator().manual_seed(0)).view(4096, 1, 1, 1)


@pytest.mark.parametrize(
    "name, ns, order",
    [
        ("euler", (8, 16, 32), 1),
        ("heun", (8, 16, 32), 2),
        ("dpm++2m", (16, 32, 64), 2),
        ("unipc", (16, 32, 64), 2),
    ],
)
@pytest.mark.parametrize("frame, t_max", [("ve", 0.9), ("flow", 1.0)])
def test_order_of_accuracy_on_the_exact_gaussian_ode(name, ns, order, frame, t_max):
    """Halving the step shrinks the error about 2x (first order) or at least ~4x (second order)."""
    errors = []
    for n in ns:
        oracle = GaussianOracle(frame, t_max)
        out = get_sampler(name)(oracle, X_T, oracle_grid(n, t_max))
        errors.append((out.double() - oracle.exact(X_T, 0.05)).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
    if order == 1:
        assert all(1.7 < r < 2.3 for r in ratios), ratios
    else:
        assert ratios[-1] > 3.3 and errors[-1] < 0.02, (errors, ratios)


class ExactDDPM(DDPMDenoiser):
    """DiT's linear DDPM process with the exact epsilon of Gaussian data (variance channels zero)."""

    def forward_raw(self, x, t, cond=None):
        self.counter.calls += 1
        a, s = (float(v) for v in self.alpha_sigma(t[0].cpu()))
        xd = x.double()
        x0 = MU + a * S**2 / (a * a * S**2 + s * s) * (xd - a * MU)
        return torch.cat([(xd - a * x0) / s, torch.zeros_like(xd)], 1).float()


# (sampler, steps, how far its output variance may be from S^2): the first-order samplers shrink the variance
# of this data by ~11 % at their default steps (DDIM's known bias, halving with twice the steps); the
# multistep solvers' "uniform" grid ends with one jump from t = 50 to E[x0 | x_50], whose variance
# S^4 abar / (abar S^2 + 1 - abar) is what they must hit (None below).
CASES = [
    ("euler", 50, 0.12),
    ("ddim", 50, 0.12),
    ("euler-sde", 100, 0.14),
    ("heun", 25, 0.03),
    ("dpm++2m", 20, None),
    ("unipc", 20, None),
]


@pytest.mark.parametrize("name, steps, var_tol", CASES)
def test_every_sampler_recovers_gaussian_data_with_the_exact_denoiser(base, name, steps, var_tol):
    den = ExactDDPM(None, base)
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(2048, 1, 4, 4, generator=g)  # 32768 pixels: std of the variance estimate ~0.8 %
    spec = get_sampler(name)
    grid = spec.make_grid(den, steps)
    out = spec(den, x_T, grid, generator=g)
    assert den.counter.calls == spec.nfe(steps)
    mean, var = out.double().mean().item(), out.double().var().item()
    assert mean == pytest.approx(MU, abs=0.01)
    if var_tol is None:
        abar = den.alpha_sigma2(float(grid[-2]))[0]
        assert float(grid[-2]) == 50.0
        assert var == pytest.approx(S**4 * abar / (abar * S**2 + 1 - abar), rel=0.04)
    else:
        assert var == pytest.approx(S**2, rel=var_tol + 0.03)


# ----------------------------------------------------------------------------------------------- diffusers
def _scheduler(cls_name):
    diffusers = pytest.importorskip("diffusers")
    return getattr(diffusers, cls_name)(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )


@pytest.mark.parametrize(
    "name, cls_name",
    [
        ("dpm++2m", "DPMSolverMultistepScheduler"),
        ("unipc", "UniPCMultistepScheduler"),
        ("euler", "EulerDiscreteScheduler"),
        ("heun", "HeunDiscreteScheduler"),
    ],
)
@pytest.mark.parametrize("steps", [3, 10])
def test_samplers_reproduce_diffusers_schedulers(base, toy, name, cls_name, steps):
    """Same network, same noise, diffusers' defaults with DiT's betas: equal to float precision.

    diffusers' Euler/Heun start from init_noise_sigma * z = sigma_max * z in VE space, which is
    x_T = sigma_T z in VP space (ditkit's samplers start from whatever x_T they are given)."""
    x_T = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(7))
    net = bounded(toy, torch.tensor([1, 2]))
    theirs = sample_with_scheduler(DDPMDenoiser(net, base), x_T, _scheduler(cls_name), steps)
    den = DDPMDenoiser(net, base)
    grid = get_sampler(name).make_grid(den, steps)
    start = x_T * float(den.alpha_sigma(grid[0])[1]) if name in ("euler", "heun") else x_T
    ours = get_sampler(name)(den, start, grid)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5 * theirs.abs().max().item())
    assert den.counter.calls == get_sampler(name).nfe(steps)


def test_scheduler_loop_feeds_the_scheduler_timesteps(base, toy):
    sched = _scheduler("DPMSolverMultistepScheduler")
    seen = []
    net = bounded(toy, torch.tensor([1]))

    def spy(x, t):
        seen.append(t.tolist())
        return net(x, t)

    sample_with_scheduler(DDPMDenoiser(spy, base), torch.randn(1, 4, 4, 4), sched, 5)
    assert seen == [[int(t)] for t in sched.timesteps] == [[999], [799], [599], [400], [200]]


# ----------------------------------------------------------------------------------------------- contract
def test_callback_sees_every_step(base, toy):
    net = bounded(toy, torch.tensor([1, 2]))
    x_T = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    for name in sampler_names():
        calls: list = []
        den = DDPMDenoiser(net, base)
        spec = get_sampler(name)
        out = spec(
            den,
            x_T,
            spec.make_grid(den, 4),
            generator=torch.Generator().manual_seed(0),
            callback=lambda i, n, x, calls=calls: calls.append((i, n, x.clone())),
        )
        assert [(i, n) for i, n, _ in calls] == [(i, 4) for i in range(4)], name
        assert torch.equal(calls[-1][2], out), name


def test_grids(base):
    den = DDPMDenoiser(None, base)
    as_list = lambda g: [round(v, 3) for v in g.tolist()]  # noqa: E731
    assert as_list(den.make_grid(4, "official")) == [999, 666, 333, 0, -1]
    assert as_list(den.make_grid(4, "ddim")) == [750, 500, 250, 0, -1]
    assert as_list(den.make_grid(4, "uniform")) == [999, 749, 500, 250, -1]
    assert as_list(den.make_grid(4, "trailing")) == [999, 749, 499, 249, -1]
    assert as_list(den.make_grid(4, "leading")) == [750, 500, 250, 0, -1]
    assert as_list(den.make_grid(3, "linspace")) == [999, 499.5, 0, -1]
    karras = den.make_grid(5, "karras")
    ve = [float(den.sigma_ve(t)) for t in karras[:-1]]
    rho = 7.0
    ramp = [
        (ve[0] ** (1 / rho) + k / 4 * (ve[-1] ** (1 / rho) - ve[0] ** (1 / rho))) ** rho for k in range(5)
    ]
    assert ve == pytest.approx(
        ramp, rel=1e-9
    )  # the karras sigmas exactly, through the denoiser's own sigma(t)
    assert karras[0] == 999 and karras[-2] == 0
    logsnr = den.make_grid(5, "logsnr")
    logs = [math.log(float(den.sigma_ve(t))) for t in logsnr[:-1]]
    assert [b - a for a, b in zip(logs, logs[1:])] == pytest.approx([(logs[-1] - logs[0]) / 4] * 4, rel=1e-9)
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(ValueError, match="integer in 1..1000"):
            den.make_grid(bad)
    with pytest.raises(ValueError, match="valid spacings"):
        den.make_grid(4, "cosine")
    with pytest.raises(ValueError, match="descending"):
        get_sampler("ddim")(den, torch.zeros(1, 4, 2, 2), torch.tensor([0.0, 500.0, -1.0]))
    with pytest.raises(ValueError, match="clean point"):
        get_sampler("ddim")(den, torch.zeros(1, 4, 2, 2), torch.tensor([500.0, 0.0]))


def test_ddpm_denoiser_time_and_conversions(base, toy):
    den = DDPMDenoiser(None, base)
    for t in (0, 17, 999):
        a, s = den.alpha_sigma(torch.tensor(float(t)))
        assert float(a) ** 2 == pytest.approx(base.alphas_cumprod[t], rel=1e-12)
        assert float(a) ** 2 + float(s) ** 2 == pytest.approx(1.0, abs=1e-12)
    a, s = den.alpha_sigma(torch.tensor(-1.0))
    assert (float(a), float(s)) == (1.0, 0.0)
    # fractional t interpolates the VE sigma linearly (diffusers' Euler interpolation)
    mid = float(den.sigma_ve(torch.tensor(10.5)))
    assert mid == pytest.approx(
        0.5 * float(den.sigma_ve(torch.tensor(10.0))) + 0.5 * float(den.sigma_ve(torch.tensor(11.0)))
    )
    assert den.network_time(torch.tensor([3.0, 3.0])).dtype == torch.long
    assert den.network_time(torch.tensor([3.5])).dtype == torch.float32
    assert den.noise_level(500.0) == 0.5 and den.noise_level(-1.0) == 0.0
    # x0 / eps round trip: x_t = alpha x0 + sigma eps
    net = bounded(toy, torch.tensor([1]))
    d = DDPMDenoiser(net, base)
    x = torch.randn(1, 4, 4, 4)
    pred = d(x, 300.0)
    a, s = (float(v) for v in d.alpha_sigma(torch.tensor(300.0)))
    torch.testing.assert_close(a * pred.x0 + s * pred.eps, x, rtol=1e-5, atol=1e-5)
    assert pred.variance_values.shape == x.shape and d.counter.calls == 1


def test_flow_kind_is_refused_by_ddpm_only_samplers():
    oracle = GaussianOracle("flow", 1.0)
    with pytest.raises(ValueError, match="does not sample 'flow' models; choose one of: ddim, euler"):
        SAMPLERS["ddpm"].make_grid(oracle, 4)
    assert "ddpm" not in sampler_names("flow") and "heun" in sampler_names("flow")


def test_registry_specs():
    assert sampler_names() == ("ddpm", "ddim", "euler", "heun", "dpm++2m", "unipc", "euler-sde")
    assert {n: s.default_steps for n, s in SAMPLERS.items()} == {
        "ddpm": 250,
        "ddim": 50,
        "euler": 50,
        "heun": 25,
        "dpm++2m": 20,
        "unipc": 20,
        "euler-sde": 100,
    }
    assert SAMPLERS["heun"].nfe(10) == 19 and SAMPLERS["unipc"].nfe(10) == 10
    with pytest.raises(
        ValueError, match="valid samplers: ddpm, ddim, euler, heun, dpm\\+\\+2m, unipc, euler-sde"
    ):
        get_sampler("dpm++3m")
    with pytest.raises(ValueError, match="Denoiser"):
        get_sampler("euler")(lambda x, t: x, torch.zeros(1, 1, 1, 1), 4)
