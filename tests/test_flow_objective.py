"""The flow objective as the trainer sees it: registry, protocol, a fixed batch against a hand computation."""

from __future__ import annotations

import torch

import ditkit
from ditkit.train.objectives_flow import FlowObjective, make_flow_objective


def _tiny(learn_sigma: bool = False) -> ditkit.DiT:
    cfg = ditkit.ModelConfig(depth=1, hidden_size=32, num_heads=2, patch_size=2, input_size=4, in_channels=1,
                             num_classes=3, learn_sigma=learn_sigma, time_input="flow")  # fmt: skip
    torch.manual_seed(0)
    model = ditkit.DiT(cfg)
    with torch.no_grad():  # leave the zero init, so the output depends on every input
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_flow_is_registered():
    from ditkit.train.objectives import OBJECTIVES

    assert "flow" in OBJECTIVES
    obj = make_flow_objective({"kind": "flow", "time_sampling": "logit-normal", "shift": 3.0})
    assert (
        isinstance(obj, FlowObjective) and obj.flow.time_sampling == "logit-normal" and obj.flow.shift == 3.0
    )


def test_objective_on_a_fixed_batch_matches_the_network_by_hand():
    model = _tiny(learn_sigma=True)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(4, 1, 4, 4, generator=g)
    eps = torch.randn(4, 1, 4, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3])  # 3 = the null label
    s = torch.tensor([0.05, 0.5, 0.75, 1.0])
    terms = FlowObjective().losses(model, x0, y, t=s, noise=eps)
    assert set(terms) >= {"loss", "t"} and all(v.shape == (4,) for v in terms.values())
    with torch.no_grad():
        sb = s.view(-1, 1, 1, 1)
        v_hat = model((1 - sb) * x0 + sb * eps, 1000 * s, y)[:, :1]  # first C channels: the velocity
        want = ((v_hat - (eps - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(terms["loss"], want)
    torch.testing.assert_close(terms["t"], s)
    terms["loss"].mean().backward()  # the sigma half of the final projection gets no gradient
    grad = model.final_layer.linear.weight.grad.view(4, 2, -1)  # (p*p, C_out, D) rows of the projection
    assert float(grad[:, 1].abs().max()) == 0.0 and float(grad[:, 0].abs().max()) > 0.0


def test_sample_t_and_drawn_terms_are_reproducible():
    obj = FlowObjective({"time_sampling": "uniform", "shift": 1.0})
    model = _tiny()
    x0 = torch.zeros(6, 1, 4, 4)
    a = obj.losses(model, x0, None if not model.config.label_sizes else torch.zeros(6, dtype=torch.long),
                   generator=torch.Generator().manual_seed(1))  # fmt: skip
    b = obj.losses(model, x0, torch.zeros(6, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a["loss"], b["loss"])
    s = obj.sample_t(1000, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= float(s.min()) and float(s.max()) <= 1.0 and abs(float(s.mean()) - 0.5) < 0.05


def test_model_config_and_denoiser_hooks():
    obj = FlowObjective({"shift": 2.0})
    cfg = obj.model_config(ditkit.ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=4))
    assert cfg.time_input == "flow" and not cfg.learn_sigma
    den = obj.denoiser(_tiny(), torch.zeros(2, dtype=torch.long))
    assert den.kind == "flow" and den.shift == 2.0


def test_factory_takes_the_model_config_and_refuses_ddpm_time():
    import pytest

    from ditkit.train.objectives import OBJECTIVES

    base = ditkit.ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=4)
    assert OBJECTIVES["flow"]({"kind": "flow"}, base.replace(time_input="sit")).flow.time_input == "sit"
    with pytest.raises(ValueError, match="time_input 'flow'"):
        OBJECTIVES["flow"]({"kind": "flow"}, base)


def test_draw_gives_the_global_batch_inputs_in_order():
    obj = FlowObjective({"time_sampling": "logit-normal"})
    t, noise = obj.draw(5, (1, 4, 4), torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    torch.testing.assert_close(t, obj.sample_t(5, generator=g))
    torch.testing.assert_close(noise, torch.randn(5, 1, 4, 4, generator=g))
