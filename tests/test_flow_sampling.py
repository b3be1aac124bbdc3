"""The flow denoiser with the samplers: exact transport of Gaussian data along the linear path.

For data x0 ~ N(mu, sd^2) (per element) and eps ~ N(0, 1), x_s = (1 - s) x0 + s eps is Gaussian with mean
m_s = (1 - s) mu and variance V_s = (1 - s)^2 sd^2 + s^2, and the velocity the network learns is

    v(x, s) = E[eps - x0 | x_s = x] = -mu + (s - (1 - s) sd^2) / V_s * (x - m_s)

(a Gaussian regression: Cov(eps - x0, x_s) = s - (1 - s) sd^2). Its ODE from s = 1 to 0 is solved by
x_s = m_s + sqrt(V_s) z with z = x_1 ~ N(0, 1), so the flow maps N(0, 1) exactly onto N(mu, sd^2). The field
is affine in x, so any one-step method maps x_1 affinely: x_0 = A x_1 + B; A -> sd and B = mu.
"""

from __future__ import annotations

import math

import pytest
import torch

from ditkit.sampling.flow import FlowDenoiser, denoiser_for, is_flow

MU, SD = 0.7, 0.4


def exact_velocity(x: torch.Tensor, s: torch.Tensor, mu: float = MU, sd: float = SD) -> torch.Tensor:
    s = s.double().view(-1, *([1] * (x.ndim - 1)))
    var = (1 - s) ** 2 * sd**2 + s**2
    return (-mu + (s - (1 - s) * sd**2) / var * (x.double() - (1 - s) * mu)).float()


def exact_network(mu: float = MU, sd: float = SD, sit: bool = False):
    """A 'network' whose output is the exact velocity, in ditkit's convention or SiT's."""

    def net(x, t_net):
        if sit:
            return -exact_velocity(x, 1 - t_net, mu, sd)  # SiT: t = 1 - s, predicts x0 - eps
        return exact_velocity(x, t_net / 1000.0, mu, sd)

    return net


def test_closed_form_trajectory_solves_the_ode():
    z = torch.linspace(-2, 2, 9, dtype=torch.float64).view(-1, 1, 1, 1)
    for s in (0.05, 0.3, 0.8, 0.99):
        h = 1e-6

        def path(u):
            return (1 - u) * MU + math.sqrt((1 - u) ** 2 * SD**2 + u**2) * z

        fd = (path(s + h) - path(s - h)) / (2 * h)
        v = exact_velocity(path(s), torch.full((9,), s)).double()
        torch.testing.assert_close(v, fd, atol=1e-5, rtol=0)


def test_flow_denoiser_contract():
    den = FlowDenoiser(exact_network())
    assert (den.kind, den.t_max, den.t_clean) == ("flow", 1.0, 0.0)
    a, s = den.alpha_sigma(torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64))
    assert a.tolist() == [1.0, 0.75, 0.0] and s.tolist() == [0.0, 0.25, 1.0]
    assert den.noise_level(0.3) == 0.3 and den.noise_level(1.2) == 1.0
    torch.testing.assert_close(den.network_time(torch.tensor([0.5])), torch.tensor([500.0]))
    x = torch.randn(3, 2, 4, 4)
    pred = den(x, 0.4)
    assert pred.x0.dtype == torch.float32 and pred.velocity is not None
    torch.testing.assert_close(0.6 * pred.x0 + 0.4 * pred.eps, x)  # x_t = alpha x0 + sigma eps
    torch.testing.assert_close(pred.eps - pred.x0, pred.velocity)
    # SiT's convention gives the same prediction from the mirrored network
    sit = FlowDenoiser(exact_network(sit=True), time_input="sit")
    torch.testing.assert_close(sit(x, 0.4).x0, pred.x0)
    assert den.counter.calls == 1 and sit.counter.calls == 1
    grid = den.make_grid(4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    shifted = FlowDenoiser(exact_network(), shift=3.0).make_grid(4)
    assert float(shifted[0]) == 1.0 and float(shifted[-1]) == 0.0 and float(shifted[2]) == 0.75


def test_two_c_outputs_use_the_first_c_channels():
    def net(x, t_net):
        return torch.cat([exact_velocity(x, t_net / 1000.0), torch.full_like(x, 99.0)], 1)

    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(FlowDenoiser(net)(x, 0.5).velocity, exact_velocity(x, torch.full((2,), 0.5)))


def test_denoiser_for_and_is_flow():
    from ditkit.models import ModelConfig

    cfg = ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=8, time_input="sit")
    den = denoiser_for({"kind": "flow", "shift": 2.0}, exact_network(), model_config=cfg)
    assert den.time_input == "sit" and den.shift == 2.0
    assert denoiser_for({"kind": "flow"}, exact_network()).time_input == "flow"
    assert (
        is_flow({"kind": "flow"})
        and is_flow(None, cfg)
        and not is_flow({"kind": "ddpm"}, cfg.replace(time_input="ddpm"))
    )
    with pytest.raises(ValueError, match="'flow' or 'sit'"):
        FlowDenoiser(exact_network(), time_input="ddpm")


def _affine_map(sampler: str, steps: int, mu: float = MU, sd: float = SD, **kwargs) -> tuple[float, float]:
    """(A, B) of the sampler's map x_1 -> x_0 = A x_1 + B on the exact field (both are exact for an
    affine field: run it on x_1 = 0 and x_1 = 1)."""
    from ditkit.sampling import get_sampler

    den = FlowDenoiser(exact_network(mu, sd))
    spec = get_sampler(sampler)
    x1 = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    out = spec(den, x1, den.make_grid(steps), **kwargs).view(2).double()
    return float(out[1] - out[0]), float(out[0])


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_euler_and_heun_transport_gaussian_data(sampler):
    errors = []
    for steps in (4, 8, 16):
        a, b = _affine_map(sampler, steps)
        assert b == pytest.approx(MU, abs=1e-6)  # the mean follows the straight mean path exactly
        errors.append(abs(a - SD))
    ratio = [errors[i] / errors[i + 1] for i in range(2)]
    order = 1 if sampler == "euler" else 2
    for r in ratio:  # halving the step shrinks the error 2x (Euler) or 4x (Heun)
        assert 2**order * 0.7 < r < 2**order * 1.4, (errors, ratio)
    a, _ = _affine_map(sampler, 400)
    assert a == pytest.approx(SD, abs=2e-3 if sampler == "euler" else 2e-5)


def test_point_mass_is_transported_exactly_in_one_euler_step():
    a, b = _affine_map("euler", 1, mu=-0.3, sd=0.0)  # straight paths: one step is exact
    assert a == pytest.approx(0.0, abs=1e-7) and b == pytest.approx(-0.3, abs=1e-6)


def test_euler_sde_samples_the_data_distribution():
    from ditkit.sampling import get_sampler

    den = FlowDenoiser(exact_network())
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(4000, 1, 1, 1, generator=g)
    out = get_sampler("euler-sde")(den, x1, den.make_grid(200), generator=g).flatten()
    assert float(out.mean()) == pytest.approx(MU, abs=0.03)
    assert float(out.std()) == pytest.approx(SD, abs=0.03)


def test_sit_denoiser_samples_like_the_native_one():
    from ditkit.sampling import get_sampler

    x1 = torch.randn(8, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    native = FlowDenoiser(exact_network())
    sit = FlowDenoiser(exact_network(sit=True), time_input="sit")
    for name in ("euler", "heun", "dpm++2m"):
        spec = get_sampler(name)
        torch.testing.assert_close(
            spec(sit, x1, sit.make_grid(6)), spec(native, x1, native.make_grid(6)), atol=1e-5, rtol=0
        )


def test_ddpm_only_sampler_refuses_a_flow_denoiser():
    from ditkit.sampling import get_sampler

    den = FlowDenoiser(exact_network())
    with pytest.raises(ValueError, match="does not sample 'flow' models; choose one of: .*euler") as err:
        get_sampler("ddpm").make_grid(den, 10)
    assert "\n" not in str(err.value)


def test_guided_flow_velocity_is_the_cfg_combination():
    from ditkit.sampling.guidance import GuidedDenoiser

    def net(x, t_net, y):  # the velocity depends on the label: label 2 is the null
        return exact_velocity(x, t_net / 1000.0) + y.float().view(-1, 1, 1, 1)

    y = torch.tensor([0, 1])
    den = FlowDenoiser(net, y)
    guided = GuidedDenoiser(den, 3.0, null_cond=torch.tensor([2, 2]))
    x = torch.randn(2, 1, 2, 2)
    v = guided(x, 0.5).velocity
    v_c, v_u = den(x, 0.5).velocity, den.with_condition(torch.tensor([2, 2]))(x, 0.5).velocity
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u))
    assert guided.kind == "flow" and guided.make_grid(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def _flow_pipeline():
    import ditkit
    from ditkit.pipeline import DiTPipeline

    cfg = ditkit.ModelConfig(
        depth=1, hidden_size=32, num_heads=2, input_size=4, in_channels=1, num_classes=3, learn_sigma=False,
        time_input="flow",
    )  # fmt: skip
    torch.manual_seed(0)
    return DiTPipeline(
        ditkit.DiT(cfg).eval(), id2label={0: "a", 1: "b", 2: "c"}, flow_process={"kind": "flow"}
    )


def test_pipeline_samples_a_flow_model_and_refuses_ddpm(tmp_path):
    from ditkit.pipeline import DiTPipeline

    pipe = _flow_pipeline()
    assert pipe.is_flow and isinstance(pipe.make_denoiser(pipe.transformer), FlowDenoiser)
    for sampler in ("euler", "heun", "euler-sde"):
        out = pipe([0, 2], num_inference_steps=3, guidance_scale=2.0, sampler=sampler, output_type="pt",
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert out.images.shape == (2, 1, 4, 4) and out.info["sampler"] == sampler
    with pytest.raises(ValueError, match="does not sample 'flow' models"):
        pipe([0], num_inference_steps=3, sampler="ddpm", output_type="pt")
    pipe.save_pretrained(tmp_path / "p")
    again = DiTPipeline.from_pretrained(tmp_path / "p")
    assert again.is_flow and again.transformer.config.time_input == "flow"
