"""The fast paths of the network against their plain references; bf16 vs fp32; gradient checkpointing;
the timestep range check; the guidance embedding of distilled students."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F

import ditkit
from ditkit.models import layers
from ditkit.models.layers import plain_kernels


def tiny(**kw) -> ditkit.DiT:
    torch.manual_seed(0)
    base = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2, input_size=8, num_classes=10)
    model = ditkit.DiT(ditkit.ModelConfig(**{**base, **kw}))
    with torch.no_grad():  # random non-zero weights: adaLN-Zero's zero init would hide every difference
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model


def inputs(n: int = 3, channels: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, size, size, generator=g)
    return x, torch.tensor([3.0, 400.0, 999.0])[:n], torch.tensor([0, 7, 10])[:n]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gelu", [False, True])
def test_fused_linear_matches_plain(dtype, gelu):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 48).to(dtype)
    x = torch.randn(2, 5, 32, dtype=dtype)
    with torch.no_grad():
        fast = layers.linear(layer, x, gelu=gelu)
        with plain_kernels():
            plain = layers.linear(layer, x, gelu=gelu)
        ref = F.linear(x.double(), layer.weight.double(), layer.bias.double())
        ref = F.gelu(ref, approximate="tanh") if gelu else ref
    assert fast.dtype == dtype and fast.shape == (2, 5, 48)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(fast, ref) < tol and rel_err(plain, ref) < tol


def test_packed_weights_follow_weight_changes():
    layer = torch.nn.Linear(16, 16).to(torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        first = layers.linear(layer, x)
        layer.weight.mul_(2.0)  # in place: a new version, so the packed copy is rebuilt
        layer.bias.zero_()
        second = layers.linear(layer, x)
        with plain_kernels():
            expected = layers.linear(layer, x)
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, expected, rtol=2e-2, atol=2e-2)


def test_fused_linear_is_skipped_when_autograd_needs_it():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(3, 8)
    out = layers.linear(layer, x, gelu=True)
    out.sum().backward()  # the oneDNN op has no backward: the autograd path must have been taken
    assert layer.weight.grad is not None


def test_math_attention_matches_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 16, generator=g) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    bf = [a.to(torch.bfloat16) for a in (q, k, v)]
    fast = layers.attention(*bf)
    with plain_kernels():
        plain = layers.attention(*bf)
    assert rel_err(fast, ref) < 3e-2 and rel_err(plain, ref) < 3e-2
    assert rel_err(layers.attention(q, k, v), ref) < 1e-5  # fp32 goes through SDPA


@pytest.mark.parametrize("kw", [{}, {"block": "cross-attention"}, {"block": "in-context"}])
def test_fast_network_matches_plain_network(kw):
    model = tiny(**kw)
    x, t, y = inputs()
    with torch.no_grad():
        fast = model(x, t, y)
        with plain_kernels():
            plain = model(x, t, y)
        torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
        bf = copy.deepcopy(model).to(torch.bfloat16)
        fast_bf = bf(x, t, y)
        with plain_kernels():
            plain_bf = bf(x, t, y)
    assert fast_bf.dtype == torch.bfloat16
    assert rel_err(fast_bf, plain) < 5e-2 and rel_err(plain_bf, plain) < 5e-2


def test_bf16_agrees_with_fp32_within_bf16_tolerance():
    model = tiny()
    x, t, y = inputs()
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(x, t, y)
        weights = copy.deepcopy(model).to(torch.bfloat16)(x, t, y)
    assert rel_err(amp, ref) < 2e-2  # fp32 master weights and residual stream
    assert rel_err(weights, ref) < 5e-2  # everything in bf16
    # training under autocast: the fast attention path carries gradients like the plain one
    grads = []
    for plain in (False, True):
        model.zero_grad()
        with (
            torch.autocast("cpu", dtype=torch.bfloat16),
            plain_kernels() if plain else contextlib.nullcontext(),
        ):
            model(x, t, y).float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert rel_err(grads[0], grads[1]) < 3e-2


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny()
    x, t, y = inputs()

    def grads():
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    with torch.no_grad():  # no recomputation machinery without autograd
        model(x, t, y)
    model.set_grad_checkpointing(False)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "time_input, good, bad",
    [
        ("ddpm", [0.0, 999.0], [1000.0, -1.0]),
        ("flow", [0.0, 1000.0], [1001.0]),
        ("sit", [0.0, 1.0], [2.0, -0.5]),
    ],
)
def test_timestep_range(time_input, good, bad):
    model = tiny(time_input=time_input)
    x, _, y = inputs(2)
    with torch.no_grad():
        model(x, torch.tensor(good), y)
        for value in bad + [float("nan")]:
            with pytest.raises(ValueError, match=r"outside this model's range") as err:
                model(x, torch.tensor([good[0], value]), y)
            assert "\n" not in str(err.value) and time_input in str(err.value)
    with pytest.raises(ValueError, match="unknown time_input 'edm'; choose one of ddpm, flow, sit"):
        ditkit.ModelConfig(time_input="edm")


def test_timestep_check_leaves_the_meta_device_alone():
    meta = ditkit.create_model("DiT-S/2", device="meta")
    out = meta(
        torch.randn(2, 4, 32, 32, device="meta"),
        torch.full((2,), 5000.0, device="meta"),
        torch.zeros(2, dtype=torch.long, device="meta"),
    )
    assert out.shape == (2, 8, 32, 32)


def test_guidance_embedding_starts_as_the_teacher():
    teacher = tiny()
    student = ditkit.DiT(teacher.config.replace(guidance_embed=True))
    missing = student.load_state_dict(teacher.state_dict(), strict=False).missing_keys
    assert sorted(missing) == [f"w_embedder.mlp.{i}.{k}" for i in (0, 2) for k in ("bias", "weight")]
    x, t, y = inputs()
    w = torch.tensor([1.0, 4.0, 7.5])
    with torch.no_grad():
        torch.testing.assert_close(student(x, t, y, w), teacher(x, t, y), rtol=0, atol=0)
        student.w_embedder.mlp[2].weight.normal_(0, 0.1)  # once trained, w changes the output
        assert not torch.allclose(student(x, t, y, w), student(x, t, y, w + 1))
    assert not student.config.is_official_layout
    flops = ditkit.forward_flops
    assert flops(student.config) - flops(teacher.config) == 256 * 64 + 64 * 64
    with pytest.raises(ValueError, match="needs w, the guidance scale per image"):
        student(x, t, y)
    with pytest.raises(ValueError, match=r"w has shape \(2,\); expected \(3,\)"):
        student(x, t, y, torch.ones(2))
    with pytest.raises(ValueError, match="takes no guidance scale w"):
        teacher(x, t, y, w)


@pytest.mark.slow
def test_compiled_equals_eager():
    from ditkit import runtime

    if runtime.compiler_problem("cpu"):
        pytest.skip("no compiler")
    model = tiny()
    compiled = runtime.maybe_compile(copy.deepcopy(model), True)
    x, t, y = inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y), model(x, t, y), rtol=1e-4, atol=1e-5)
