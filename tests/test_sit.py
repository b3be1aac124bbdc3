"""SiT checkpoints: DiT's key layout with SiT's time convention, checked against a plain SiT forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ditkit
from ditkit.io.loading import load_any

C, D, HEADS, P, SIZE, DEPTH, CLASSES = 4, 32, 2, 2, 8, 2, 10


def _sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's 2D sin-cos table (first half: column index, second half: row index)."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4.0))
    rows, cols = np.divmod(np.arange(grid * grid), grid)

    def axis(pos):
        a = np.outer(pos, omega)
        return np.concatenate([np.sin(a), np.cos(a)], 1)

    return np.concatenate([axis(cols), axis(rows)], 1)


def sit_state_dict(seed: int = 0, learn_sigma: bool = True) -> dict[str, torch.Tensor]:
    """A small SiT-shaped state dict with SiT's (= DiT's) keys and random values, built by hand."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: 0.2 * torch.randn(*shape, generator=g)  # noqa: E731
    out = 2 * C if learn_sigma else C
    sd = {
        "x_embedder.proj.weight": r(D, C, P, P),
        "x_embedder.proj.bias": r(D),
        "pos_embed": torch.from_numpy(_sincos(D, SIZE // P)).float()[None],
        "t_embedder.mlp.0.weight": r(D, 256),
        "t_embedder.mlp.0.bias": r(D),
        "t_embedder.mlp.2.weight": r(D, D),
        "t_embedder.mlp.2.bias": r(D),
        "y_embedder.embedding_table.weight": r(CLASSES + 1, D),
        "final_layer.adaLN_modulation.1.weight": r(2 * D, D),
        "final_layer.adaLN_modulation.1.bias": r(2 * D),
        "final_layer.linear.weight": r(P * P * out, D),
        "final_layer.linear.bias": r(P * P * out),
    }
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "attn.qkv.weight": r(3 * D, D),
                b + "attn.qkv.bias": r(3 * D),
                b + "attn.proj.weight": r(D, D),
                b + "attn.proj.bias": r(D),
                b + "mlp.fc1.weight": r(4 * D, D),
                b + "mlp.fc1.bias": r(4 * D),
                b + "mlp.fc2.weight": r(D, 4 * D),
                b + "mlp.fc2.bias": r(D),
                b + "adaLN_modulation.1.weight": r(6 * D, D),
                b + "adaLN_modulation.1.bias": r(6 * D),
            }
        )
    return sd


def sit_forward(sd, x, t, y, learn_sigma=True):
    """SiT's forward, written plainly from its description: DiT's network, t in [0, 1] fed unscaled to the
    sinusoid, and only the first C output channels returned when learn_sigma."""
    n = x.shape[0]
    patches = x.reshape(n, C, SIZE // P, P, SIZE // P, P).permute(0, 2, 4, 1, 3, 5).reshape(n, -1, C * P * P)
    h = patches @ sd["x_embedder.proj.weight"].reshape(D, -1).T + sd["x_embedder.proj.bias"] + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t.float()[:, None] * freqs[None]  # t unscaled
    temb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    temb = F.linear(F.silu(F.linear(temb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])  # fmt: skip
    c = F.silu(temb + sd["y_embedder.embedding_table.weight"][y])

    def ln(z):
        return (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True) + 1e-6)

    for i in range(DEPTH):
        b = f"blocks.{i}."
        sh1, sc1, g1, sh2, sc2, g2 = F.linear(c, sd[b + "adaLN_modulation.1.weight"],
                                              sd[b + "adaLN_modulation.1.bias"])[:, None].chunk(6, -1)  # fmt: skip
        q, k, v = F.linear(ln(h) * (1 + sc1) + sh1, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]).chunk(
            3, -1
        )
        q, k, v = (a.reshape(n, -1, HEADS, D // HEADS).transpose(1, 2) for a in (q, k, v))
        att = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // HEADS), -1) @ v).transpose(1, 2)
        h = h + g1 * F.linear(att.reshape(n, -1, D), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        z = F.linear(ln(h) * (1 + sc2) + sh2, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])
        h = h + g2 * F.linear(F.gelu(z, approximate="tanh"), sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
    sh, sc = F.linear(c, sd["final_layer.adaLN_modulation.1.weight"],
                      sd["final_layer.adaLN_modulation.1.bias"])[:, None].chunk(2, -1)  # fmt: skip
    out = F.linear(ln(h) * (1 + sc) + sh, sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    co = 2 * C if learn_sigma else C
    g = SIZE // P
    img = out.reshape(n, g, g, P, P, co).permute(0, 5, 1, 3, 2, 4).reshape(n, co, SIZE, SIZE)
    return img[:, :C]  # SiT: x, _ = x.chunk(2, dim=1)


def _inputs(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, SIZE, SIZE, generator=g)
    t = torch.tensor([0.0, 0.37, 1.0])[:n]
    y = torch.tensor([0, 7, CLASSES])[:n]  # the last is the null label
    return x, t, y


@pytest.mark.parametrize("wrapped", [False, True])
def test_sit_file_loads_with_sit_conventions_and_matches_sit_forward(tmp_path, wrapped):
    sd = sit_state_dict()
    path = tmp_path / "SiT-tiny-8.pt"
    torch.save({"model": sd, "ema": sd, "opt": {}} if wrapped else sd, path)
    loaded = load_any(path, family="sit", num_heads=HEADS)  # heads change no shape: not in the file
    model = loaded.model
    assert model.config.time_input == "sit" and model.config.learn_sigma
    assert any("0 = noise" in note for note in loaded.notes)
    x, t, y = _inputs()
    with torch.no_grad():
        ours = model(x, t, y)[:, :C]
    torch.testing.assert_close(ours, sit_forward(sd, x, t, y), atol=2e-5, rtol=1e-4)
    assert torch.equal(ditkit.load_model(path, family="sit").state_dict()["pos_embed"], sd["pos_embed"])


def test_sit_model_through_the_flow_denoiser_gives_dx_ds():
    from ditkit.sampling.flow import denoiser_for

    sd = sit_state_dict(seed=3, learn_sigma=False)
    cfg = ditkit.ModelConfig(depth=DEPTH, hidden_size=D, num_heads=HEADS, patch_size=P, input_size=SIZE,
                             in_channels=C, num_classes=CLASSES, learn_sigma=False, time_input="sit")  # fmt: skip
    model = ditkit.DiT(cfg)
    model.load_state_dict(sd)
    x, _, y = _inputs()
    s = torch.tensor(0.25)  # ditkit's noise level = 1 - SiT's t
    den = denoiser_for(None, model, y, model_config=cfg)
    with torch.no_grad():
        pred = den(x, s)
        u = sit_forward(sd, x, torch.full((3,), 0.75), y, learn_sigma=False)  # SiT: u = x_data - eps
    torch.testing.assert_close(pred.velocity, -u, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close((1 - s) * pred.x0 + s * pred.eps, x, atol=1e-5, rtol=0)
    # SiT's own path x_t = t x + (1 - t) eps at its t = 0.75 has d/dt = x - eps = u
    torch.testing.assert_close(pred.x0 - pred.eps, u, atol=2e-5, rtol=1e-4)


def test_sit_named_file_without_family_says_how_to_load_it(tmp_path):
    path = tmp_path / "SiT-XL-2-256.pt"
    torch.save(sit_state_dict(), path)
    with pytest.raises(ValueError, match="family='sit'") as err:
        load_any(path)
    assert "\n" not in str(err.value) and "--family sit" in str(err.value)
    assert load_any(path, family="dit").model.config.time_input == "ddpm"  # explicit DiT: loads as is
    other = tmp_path / "transit-model.pt"  # "sit" inside a word is not SiT
    torch.save(sit_state_dict(), other)
    assert load_any(other).model.config.time_input == "ddpm"


def test_unknown_family_and_non_sit_files(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(sit_state_dict(), path)
    with pytest.raises(ValueError, match="unknown model family 'flux'; choose one of dit, sit"):
        ditkit.load_model(path, family="flux")
    # a ditkit file records its own convention: family='sit' on a DDPM ditkit file is refused ...
    from ditkit.io.native import save_safetensors

    ddpm = ditkit.DiT(ditkit.ModelConfig(depth=1, hidden_size=D, num_heads=HEADS, input_size=SIZE, in_channels=C,
                                         num_classes=CLASSES))  # fmt: skip
    st = tmp_path / "ddpm.safetensors"
    save_safetensors(ddpm, st)
    with pytest.raises(ValueError, match="not a SiT checkpoint"):
        load_any(st, family="sit")
    # ... and a SiT model saved by ditkit keeps time_input="sit" with or without family=
    sit = load_any(path, family="sit").model
    st2 = tmp_path / "sit.safetensors"
    save_safetensors(sit, st2)
    assert ditkit.load_model(st2).config.time_input == "sit"
    assert ditkit.load_model(st2, family="sit").config.time_input == "sit"


def _cli(capsys, *argv):
    from ditkit.cli.main import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_family_flag_on_inspect_and_convert(capsys, tmp_path):
    path = tmp_path / "SiT-tiny.pt"
    torch.save(sit_state_dict(), path)
    code, out, err = _cli(capsys, "inspect", path)
    assert code == 2 and "--family sit" in err and len(err.strip().splitlines()) == 1
    code, out, err = _cli(capsys, "inspect", path, "--family", "sit")
    assert code == 0 and "velocity" in out and "time sit" in out, out + err
    code, out, err = _cli(capsys, "inspect", path, "--family", "flux")
    assert code == 2 and "dit" in err and "sit" in err
    dst = tmp_path / "sit.safetensors"
    code, out, err = _cli(capsys, "convert", path, dst, "--to", "safetensors", "--family", "sit")
    assert code == 0, err
    assert ditkit.load_model(dst).config.time_input == "sit"  # ditkit's format keeps the convention
    code, out, err = _cli(
        capsys, "convert", path, tmp_path / "back.pt", "--to", "official", "--family", "sit"
    )
    assert code == 0 and "cannot record" in out
