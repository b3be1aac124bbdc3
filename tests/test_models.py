"""The network: official parameter names and counts, init, a second reference implementation, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ditkit
from ditkit.cli.main import main as cli_main
from ditkit.models.embed import sincos_pos_embed_2d

OFFICIAL = [f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)]


def formula_params(depth: int, d: int, p: int, c_in: int, n_cls: int, learn_sigma: bool, mlp: int = 4) -> int:
    """Trainable parameters of the official DiT, counted by hand from its layer list."""
    c_out = 2 * c_in if learn_sigma else c_in
    patch = p * p * c_in * d + d
    t_emb = 256 * d + d + d * d + d
    y_emb = (n_cls + 1) * d
    block = (
        (3 * d * d + 3 * d) + (d * d + d) + (mlp * d * d + mlp * d) + (mlp * d * d + d) + (6 * d * d + 6 * d)
    )
    final = (2 * d * d + 2 * d) + (d * p * p * c_out + p * p * c_out)
    return patch + t_emb + y_emb + depth * block + final


@pytest.mark.parametrize("name", OFFICIAL)
def test_parameter_counts_match_formula(name):
    model = ditkit.create_model(name, device="meta")
    c = model.config
    assert model.num_parameters() == formula_params(c.depth, c.hidden_size, c.patch_size, 4, 1000, True)
    assert model.pos_embed.numel() == (32 // c.patch_size) ** 2 * c.hidden_size
    assert not any(n == "pos_embed" for n, _ in model.named_parameters())


def test_xl2_official_numbers_and_keys():
    model = ditkit.create_model("DiT-XL/2", device="meta")
    assert model.num_parameters() == 674_834_720
    assert model.pos_embed.numel() == 294_912
    sd = model.state_dict()
    assert len(sd) == 292
    shapes = {
        "pos_embed": (1, 256, 1152),
        "x_embedder.proj.weight": (1152, 4, 2, 2),
        "t_embedder.mlp.0.weight": (1152, 256),
        "t_embedder.mlp.2.weight": (1152, 1152),
        "y_embedder.embedding_table.weight": (1001, 1152),
        "final_layer.linear.weight": (32, 1152),
        "final_layer.adaLN_modulation.1.weight": (2304, 1152),
        "blocks.27.attn.qkv.weight": (3456, 1152),
        "blocks.0.attn.proj.bias": (1152,),
        "blocks.3.mlp.fc1.weight": (4608, 1152),
        "blocks.3.mlp.fc2.weight": (1152, 4608),
        "blocks.13.adaLN_modulation.1.weight": (6912, 1152),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key


def test_gflops_match_paper():
    assert round(ditkit.forward_flops(ditkit.model_config("DiT-XL/2")) / 1e9, 1) == 118.6
    assert round(ditkit.forward_flops(ditkit.model_config("DiT-S/2")) / 1e9, 2) == 6.06
    assert round(ditkit.forward_flops(ditkit.model_config("DiT-XL/2", input_size=64)) / 1e9) == 525


def test_info_cli(capsys):
    assert cli_main(["info", "DiT-XL/2"]) == 0
    out = capsys.readouterr().out
    assert "674,834,720" in out and "118.64" in out
    assert cli_main(["info", "DiT-S/2", "--input-size", "32"]) == 0
    assert "6.06" in capsys.readouterr().out
    assert cli_main(["info", "DiT-XXL/2"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "DiT-XL/2" in err and "Traceback" not in err


def tiny(**kw):
    args = {"input_size": 8, "in_channels": 4, "num_classes": 10}
    args.update(kw)
    return ditkit.create_model("DiT-S/2", depth=2, hidden_size=64, num_heads=4, **args)


def test_zero_output_at_init():
    torch.manual_seed(0)
    model = tiny()
    out = model(torch.randn(3, 4, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10]))
    assert out.shape == (3, 8, 8, 8)
    assert torch.count_nonzero(out) == 0


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    return model


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = randomize(tiny())
    out = model(torch.randn(4, 4, 8, 8), torch.randint(0, 1000, (4,)), torch.tensor([0, 3, 9, 10]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_pos_embed_closed_form():
    d, g = 16, 4
    table = sincos_pos_embed_2d(d, g)
    q = d // 4
    for token in range(g * g):
        row, col = divmod(token, g)  # row-major tokens
        for i in range(q):
            w = 1 / 10000 ** (i / q)
            assert table[token, i] == pytest.approx(math.sin(col * w))
            assert table[token, q + i] == pytest.approx(math.cos(col * w))
            assert table[token, 2 * q + i] == pytest.approx(math.sin(row * w))
            assert table[token, 3 * q + i] == pytest.approx(math.cos(row * w))


def reference_forward(model, x, t, y):
    """A second, deliberately plain implementation of the official DiT forward (explicit softmax
    attention, separate q/k/v, explicit patch loops), to check the optimised one against."""
    cfg = model.config
    sd = model.state_dict()
    p, d, heads = cfg.patch_size, cfg.hidden_size, cfg.num_heads
    n, c, hgt, wid = x.shape
    gh, gw = hgt // p, wid // p
    tokens = []
    for r in range(gh):
        for col in range(gw):
            patch = x[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p].reshape(n, -1)
            tokens.append(patch @ sd["x_embedder.proj.weight"].reshape(d, -1).T + sd["x_embedder.proj.bias"])
    h = torch.stack(tokens, 1) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.linear(
        F.silu(F.linear(temb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
        sd["t_embedder.mlp.2.weight"],
        sd["t_embedder.mlp.2.bias"],
    )
    cvec = temb + sd["y_embedder.embedding_table.weight"][y]

    def ln(z):
        mu = z.mean(-1, keepdim=True)
        var = z.var(-1, unbiased=False, keepdim=True)
        return (z - mu) / torch.sqrt(var + 1e-6)

    for i in range(cfg.depth):
        pre = f"blocks.{i}."
        mod = F.linear(
            F.silu(cvec), sd[pre + "adaLN_modulation.1.weight"], sd[pre + "adaLN_modulation.1.bias"]
        )
        sh1, sc1, g1, sh2, sc2, g2 = mod.chunk(6, 1)
        z = ln(h) * (1 + sc1[:, None]) + sh1[:, None]
        qkv = F.linear(z, sd[pre + "attn.qkv.weight"], sd[pre + "attn.qkv.bias"])
        q, k, v = qkv.split(d, -1)
        split = lambda a: a.reshape(n, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), -1) @ v
        att = att.transpose(1, 2).reshape(n, -1, d)
        h = h + g1[:, None] * F.linear(att, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        z = ln(h) * (1 + sc2[:, None]) + sh2[:, None]
        z = F.linear(
            F.gelu(F.linear(z, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"]), approximate="tanh"),
            sd[pre + "mlp.fc2.weight"],
            sd[pre + "mlp.fc2.bias"],
        )
        h = h + g2[:, None] * z
    mod = F.linear(
        F.silu(cvec), sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"]
    )
    sh, sc = mod.chunk(2, 1)
    out = F.linear(
        ln(h) * (1 + sc[:, None]) + sh[:, None],
        sd["final_layer.linear.weight"],
        sd["final_layer.linear.bias"],
    )
    c_out = cfg.out_channels
    img = torch.zeros(n, c_out, hgt, wid)
    for idx in range(gh * gw):
        r, col = divmod(idx, gw)
        img[:, :, r * p : (r + 1) * p, col * p : (col + 1) * p] = (
            out[:, idx].reshape(n, p, p, c_out).permute(0, 3, 1, 2)
        )
    return img


@pytest.mark.parametrize("patch", [2, 4])
def test_forward_matches_plain_reference(patch):
    torch.manual_seed(1)
    model = randomize(tiny(patch_size=patch))
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([3, 400, 999])
    y = torch.tensor([0, 7, 10])
    torch.testing.assert_close(model(x, t, y), reference_forward(model, x, t, y), rtol=1e-4, atol=1e-5)


def test_bf16_and_meta():
    model = randomize(tiny()).to(torch.bfloat16)
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 2]))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    meta = ditkit.create_model("DiT-B/4", device="meta")
    assert meta.pos_embed.is_meta
    meta.to_empty(device="cpu")
    meta.initialize_weights()
    ref = ditkit.create_model("DiT-B/4")
    torch.testing.assert_close(meta.pos_embed, ref.pos_embed)


def test_official_state_dict_loads_strict():
    a, b = randomize(tiny()), tiny()
    b.load_state_dict(a.state_dict(), strict=True)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([5, 6]), torch.tensor([1, 10])
    torch.testing.assert_close(a(x, t, y), b(x, t, y), rtol=0, atol=0)


def test_unconditional_and_no_null_row():
    unc = tiny(num_classes=0)
    assert unc.y_embedder is None
    assert unc(torch.randn(1, 4, 8, 8), torch.tensor([3])).shape == (1, 8, 8, 8)
    no_null = tiny(class_dropout_prob=0.0)
    assert no_null.y_embedder.embedding_table.num_embeddings == 10
    with pytest.raises(ValueError, match="out of range"):
        no_null(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.tensor([10]))


def test_drop_labels():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(10).repeat(2000)
    dropped = ditkit.drop_labels(y, 0.1, 10, generator=g)
    frac = (dropped == 10).float().mean().item()
    assert 0.09 < frac < 0.11
    kept = dropped != 10
    assert torch.equal(dropped[kept], y[kept])
    assert torch.equal(ditkit.drop_labels(y, 0.0, 10), y)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ditkit.create_model("DiT-XL/3"), "unknown model.*DiT-XL/2"),
        (lambda: ditkit.create_model("DiT-S/8", input_size=30), "not divisible by patch_size 8"),
        (lambda: ditkit.create_model("DiT-S/2", bogus=1), "unknown model option"),
        (
            lambda: tiny()(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 11])),
            "label 11 is out of range",
        ),
        (
            lambda: tiny()(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), torch.tensor([-1, 1])),
            "out of range",
        ),
        (
            lambda: tiny()(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 1])),
            r"expects \(N, 4, 8, 8\)",
        ),
        (
            lambda: tiny()(torch.randn(2, 4, 8, 8), torch.tensor([1, 2, 3]), torch.tensor([1, 1])),
            "one timestep per image",
        ),
        (lambda: tiny()(torch.randn(2, 4, 8, 8), torch.tensor([1, 2]), None), "class-conditional"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
