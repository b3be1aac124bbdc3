"""Flow matching on the linear interpolant: closed forms, time sampling, and the loss on a fixed batch."""

from __future__ import annotations

import math

import pytest
import torch

from ditkit.diffusion.flow import (
    FlowProcess,
    flow_model_config,
    interpolate,
    network_time,
    shift_noise_level,
    velocity_from_output,
    velocity_target,
)


def _batch(n=4, c=3, h=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, h, generator=g), torch.randn(n, c, h, h, generator=g)


def test_interpolant_endpoints_and_closed_form():
    x0, eps = _batch()
    s = torch.tensor([0.0, 0.25, 0.5, 1.0])
    xs = interpolate(x0, eps, s)
    assert torch.equal(xs[0], x0[0]) and torch.equal(xs[3], eps[3])
    torch.testing.assert_close(xs[1], 0.75 * x0[1] + 0.25 * eps[1])
    torch.testing.assert_close(xs[2], 0.5 * (x0[2] + eps[2]))


def test_velocity_target_is_the_time_derivative_of_the_path():
    x0, eps = _batch()
    x0, eps = x0.double(), eps.double()
    s, h = torch.full((4,), 0.3, dtype=torch.float64), 1e-6
    path = lambda u: (1 - u).view(-1, 1, 1, 1) * x0 + u.view(-1, 1, 1, 1) * eps  # noqa: E731
    fd = (path(s + h) - path(s - h)) / (2 * h)
    torch.testing.assert_close(velocity_target(x0, eps).double(), fd, atol=1e-6, rtol=0)
    # x0 and eps are recovered from (x_s, v) as the denoiser does
    v, xs = eps - x0, path(s)
    sb = s.view(-1, 1, 1, 1)
    torch.testing.assert_close(xs - sb * v, x0)
    torch.testing.assert_close(xs + (1 - sb) * v, eps)


def test_shift_matches_sd3_formula_and_keeps_the_ends():
    s = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_noise_level(s, 1.0), s)
    shifted = shift_noise_level(s, 3.0)
    assert float(shifted[0]) == 0.0 and float(shifted[-1]) == 1.0
    assert math.isclose(float(shifted[5]), 3 * 0.5 / (1 + 2 * 0.5))
    assert bool((shifted[1:] > shifted[:-1]).all()) and bool((shifted[1:-1] > s[1:-1]).all())


def test_time_sampling_reproduces_its_definition():
    n = 64
    uni = FlowProcess().sample_t(n, generator=torch.Generator().manual_seed(1))
    ref = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    torch.testing.assert_close(uni, ref)
    ln = FlowProcess(time_sampling="logit-normal", logit_mean=0.5, logit_std=0.8, shift=3.0)
    got = ln.sample_t(n, generator=torch.Generator().manual_seed(2))
    z = torch.randn(n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    u = torch.sigmoid(0.5 + 0.8 * z)
    torch.testing.assert_close(got, (3 * u / (1 + 2 * u)).float())
    assert got.dtype == torch.float32 and float(got.min()) >= 0 and float(got.max()) <= 1


def test_network_time_conventions():
    s = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(network_time(s, "flow"), torch.tensor([0.0, 250.0, 1000.0]))
    torch.testing.assert_close(network_time(s, "sit"), torch.tensor([1.0, 0.75, 0.0]))  # SiT: 0 = noise
    with pytest.raises(ValueError, match="'flow' or 'sit'"):
        network_time(s, "ddpm")


def test_velocity_from_output_uses_first_channels_and_sit_sign():
    raw = torch.randn(2, 6, 4, 4)
    torch.testing.assert_close(velocity_from_output(raw, 3), raw[:, :3])
    torch.testing.assert_close(velocity_from_output(raw[:, :3], 3, "sit"), -raw[:, :3])
    with pytest.raises(ValueError, match="expected 3 \\(velocity\\) or 6"):
        velocity_from_output(raw[:, :4], 3)


class _Affine(torch.nn.Module):
    """A tiny network with 2C outputs whose velocity channels are a known function of (x, t, y)."""

    def __init__(self, c: int, two_c: bool = True):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7))
        self.b = torch.nn.Parameter(torch.tensor(-0.2))
        self.sigma_junk = torch.nn.Parameter(torch.tensor(5.0))
        self.two_c, self.calls = two_c, []

    def forward(self, x, t, y=None):
        self.calls.append((t.clone(), None if y is None else y.clone()))
        yy = 0.0 if y is None else y.float().view(-1, 1, 1, 1)
        v = self.a * x + self.b * (t.view(-1, 1, 1, 1) / 1000.0) + 0.1 * yy
        return torch.cat([v, self.sigma_junk * x], 1) if self.two_c else v


def test_flow_loss_on_a_fixed_batch_matches_a_hand_computation():
    x0, eps = _batch()
    s = torch.tensor([0.1, 0.4, 0.7, 1.0])
    y = torch.tensor([0, 1, 2, 3])
    net = _Affine(3)
    terms = FlowProcess().training_losses(net, x0, y, t=s, noise=eps)
    # by hand: x_s, the network at (x_s, 1000 s, y), the first C channels against eps - x0
    sb = s.view(-1, 1, 1, 1)
    xs = (1 - sb) * x0 + sb * eps
    v_hat = 0.7 * xs - 0.2 * sb + 0.1 * y.float().view(-1, 1, 1, 1)
    want = ((v_hat - (eps - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"], want)
    torch.testing.assert_close(terms["mse"], want)
    torch.testing.assert_close(terms["t"], s)
    torch.testing.assert_close(net.calls[0][0], s * 1000)  # the network sees 1000 s
    assert torch.equal(net.calls[0][1], y)
    # the unused sigma channels get no gradient
    terms["loss"].mean().backward()
    assert net.a.grad is not None and float(net.a.grad.abs()) > 0
    assert net.sigma_junk.grad is None or float(net.sigma_junk.grad) == 0.0


def test_flow_loss_draws_t_and_noise_from_the_generator_and_calls_without_cond():
    x0, _ = _batch()
    net = _Affine(3, two_c=False)
    proc = FlowProcess(time_sampling="logit-normal")
    a = proc.training_losses(net, x0, None, generator=torch.Generator().manual_seed(5))
    b = proc.training_losses(net, x0, None, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a["loss"], b["loss"])
    assert net.calls[0][1] is None  # model(x, t) when there is no condition
    g = torch.Generator().manual_seed(5)
    s = proc.sample_t(4, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(a["loss"], proc.training_losses(net, x0, None, t=s, noise=eps)["loss"])


def test_sit_convention_loss_equals_native_loss_of_the_mirrored_network():
    x0, eps = _batch()
    s = torch.tensor([0.0, 0.3, 0.6, 0.9])
    native = _Affine(3, two_c=False)

    def sit(x, t_sit, y=None):  # SiT's network: t_sit = 1 - s, predicts x0 - eps
        return -native(x, (1 - t_sit) * 1000, y)

    y = torch.zeros(4, dtype=torch.long)
    a = FlowProcess().training_losses(native, x0, y, t=s, noise=eps)["loss"]
    b = FlowProcess(time_input="sit").training_losses(sit, x0, y, t=s, noise=eps)["loss"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time_sampling": "cosine"}, "uniform, logit-normal"),
        ({"shift": 0.0}, "shift must be a positive"),
        ({"logit_std": -1.0}, "logit_std"),
        ({"time_input": "ddpm"}, "flow, sit"),
    ],
)
def test_bad_flow_process_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowProcess(**kwargs)


def test_bad_flow_loss_inputs():
    x0, eps = _batch()
    net = _Affine(3)
    proc = FlowProcess()
    with pytest.raises(ValueError, match="integer indices"):
        proc.training_losses(net, x0, None, t=torch.tensor([1, 2, 3, 4]), noise=eps)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        proc.training_losses(net, x0, None, t=torch.tensor([0.1, 0.2, 0.3, 1.5]), noise=eps)
    with pytest.raises(ValueError, match="noise shape"):
        proc.training_losses(net, x0, None, t=torch.full((4,), 0.5), noise=eps[:, :2])


def test_from_config_and_model_config_helper():
    proc = FlowProcess.from_config({"kind": "flow", "time_sampling": "logit-normal", "shift": 2.0})
    assert proc == FlowProcess(time_sampling="logit-normal", shift=2.0)
    assert FlowProcess.from_config(None) == FlowProcess()
    from ditkit.models import ModelConfig

    cfg = flow_model_config(ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=8))
    assert cfg.time_input == "flow" and cfg.learn_sigma is False and cfg.out_channels == cfg.in_channels
