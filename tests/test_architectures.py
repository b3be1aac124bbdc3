"""The paper's four block designs, the DiT-WikiArt variant, multi-attribute and embedding conditioning."""

from __future__ import annotations

import pytest
import torch

import ditkit
from ditkit.cli.main import main as cli_main
from ditkit.diffusion import GaussianDiffusion

DESIGNS = ["adaln-zero", "adaln", "cross-attention", "in-context"]


def block_params(block: str, d: int, mlp: int = 4) -> int:
    attn = 4 * d * d + 4 * d  # fused qkv + proj
    ff = 2 * mlp * d * d + mlp * d + d
    if block == "adaln-zero":
        return attn + ff + 6 * d * d + 6 * d
    if block == "adaln":
        return attn + ff + 4 * d * d + 4 * d
    if block == "in-context":
        return attn + ff + 2 * 2 * d  # two affine LayerNorms
    return attn + ff + (4 * d * d + 4 * d) + 3 * 2 * d  # cross-attention q, kv, proj + three LayerNorms


@pytest.mark.parametrize("block", DESIGNS)
@pytest.mark.parametrize("name", ["DiT-S/2", "DiT-B/4", "DiT-XL/8"])
def test_every_design_builds_with_formula_count(name, block):
    model = ditkit.create_model(name, block=block, device="meta")
    c = model.config
    d, p = c.hidden_size, c.patch_size
    final = d * p * p * 8 + p * p * 8 + (2 * d * d + 2 * d if c.final_layer == "adaln" else 0)
    embed = (p * p * 4 * d + d) + (256 * d + d + d * d + d) + 1001 * d
    assert model.num_parameters() == embed + c.depth * block_params(block, d) + final


@pytest.mark.parametrize(
    "block, gflops",
    [("in-context", 119.4), ("cross-attention", 137.6), ("adaln", 118.6), ("adaln-zero", 118.6)],
)
def test_gflops_of_block_designs_match_paper(block, gflops):
    assert round(ditkit.forward_flops(ditkit.model_config("DiT-XL/2", block=block)) / 1e9, 1) == gflops


def test_info_reports_block_gflops(capsys):
    assert cli_main(["info", "DiT-XL/2", "--block", "cross-attention"]) == 0
    assert "137.60" in capsys.readouterr().out
    assert cli_main(["info", "DiT-S/2", "--block", "film"]) == 2
    err = capsys.readouterr().err
    assert "unknown block 'film'" in err and "in-context" in err


def tiny(block="adaln-zero", **kw):
    args = {"input_size": 8, "num_classes": 5, "depth": 2, "hidden_size": 32, "num_heads": 2, "block": block}
    args.update(kw)
    return ditkit.create_model("DiT-S/4", **args)


@pytest.mark.parametrize("block", DESIGNS)
def test_zero_output_at_init(block):
    out = tiny(block)(torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 5]))
    assert torch.count_nonzero(out) == 0


def test_adaln_zero_blocks_start_as_identity_and_adaln_does_not():
    x = torch.randn(2, 5, 32)
    c = torch.randn(2, 32)
    zero_block = tiny("adaln-zero").blocks[0]
    torch.testing.assert_close(zero_block(x, c), x, rtol=0, atol=0)
    plain_block = tiny("adaln").blocks[0]
    assert not torch.allclose(plain_block(x, c), x)
    assert plain_block.adaLN_modulation[1].out_features == 4 * 32  # shift/scale only, no gates


@pytest.mark.parametrize("block", DESIGNS)
def test_design_trains_and_samples(block):
    torch.manual_seed(0)
    model = tiny(block, learn_sigma=True)
    process = GaussianDiffusion.from_schedule("linear", 1000, learn_sigma=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.randn(8, 4, 8, 8).clamp(-1, 1)
    y = torch.randint(0, 5, (8,))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        losses = process.training_losses(model, x0, model_kwargs={"y": y}, generator=g)
        loss = losses["loss"].mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # after a step the conditioning path carries gradient: labels change the output
    with torch.no_grad():
        a = model(x0[:2], torch.tensor([500, 500]), torch.tensor([0, 0]))
        b = model(x0[:2], torch.tensor([500, 500]), torch.tensor([4, 4]))
    assert not torch.allclose(a, b)
    pipe = ditkit.DiTPipeline(model.eval())
    images = pipe(
        [1, 2], num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert images.shape == (2, 8, 8, 4) and torch.isfinite(torch.from_numpy(images)).all()


def test_wikiart_presets():
    card = {"DiT-WikiArt-S": 20e6, "DiT-WikiArt-B": 90e6, "DiT-WikiArt-L": 234e6}
    shape = {"DiT-WikiArt-S": (8, 384, 6), "DiT-WikiArt-B": (12, 640, 10), "DiT-WikiArt-L": (16, 896, 14)}
    for name, params in card.items():
        model = ditkit.create_model(name, device="meta")
        c = model.config
        assert (c.depth, c.hidden_size, c.num_heads, c.patch_size) == (*shape[name], 2)
        assert c.num_classes == (11, 27) and not c.learn_sigma and c.out_channels == 4
        assert (c.norm, c.pos_embed, c.final_layer) == ("post", "learned", "linear")
        d = c.hidden_size
        expected = (
            (4 * 4 * d + d)
            + (256 * d + d + d * d + d)
            + (12 + 28) * d
            + 256 * d  # patch, t, tables, pos
            + c.depth * block_params("adaln-zero", d)
            + (d * 16 + 16)
        )
        assert model.num_parameters() == expected
        # B and L land within 1% of the card; the card's "20M" for S cannot be met by 8 blocks of width 384
        # (the blocks alone hold 21.3M), so S is held to 10% and the gap is documented.
        tolerance = 0.10 if name.endswith("S") else 0.05
        assert abs(model.num_parameters() - params) / params < tolerance
    assert ditkit.presets.PRESET_LABELS["DiT-WikiArt-S"]["genre"][4] == "landscape"
    assert ditkit.presets.PRESET_LABELS["DiT-WikiArt-S"]["style"][12] == "Impressionism"


def test_post_norm_block_normalises_its_output():
    block = tiny("adaln-zero", norm="post").blocks[0]
    out = block(torch.randn(2, 5, 32) * 7 + 3, torch.randn(2, 32))
    # at init shift = scale = 0, so the output is exactly the LayerNorm of the residual stream
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)


def test_learned_pos_embed_is_trained_and_sincos_is_not():
    learned = tiny(pos_embed="learned")
    assert any(n == "pos_embed" for n, _ in learned.named_parameters())
    fixed = tiny()
    assert all(n != "pos_embed" for n, _ in fixed.named_parameters())


def test_multi_attribute_conditioning():
    torch.manual_seed(0)
    model = tiny(num_classes=(3, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    assert model.config.null_label == (3, 4)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 10])
    out = model(x, t, torch.tensor([[0, 1], [3, 4]]))  # second row: both attributes null
    assert out.shape == (2, 8, 8, 8)
    # the conditioning vector is the sum of the attribute embeddings
    tables = model.y_embedder.tables
    torch.testing.assert_close(
        model.y_embedder(torch.tensor([[2, 1]])), tables[0].weight[2:3] + tables[1].weight[1:2]
    )
    with pytest.raises(ValueError, match=r"expected \(2, 2\)"):
        model(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="out of range for attribute 1"):
        model(x, t, torch.tensor([[0, 5], [0, 1]]))


def test_drop_labels_joint_and_per_attribute():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([[1, 2]]).repeat(20000, 1)
    joint = ditkit.drop_labels(y, 0.2, (3, 4), generator=g)
    both_null = ((joint[:, 0] == 3) & (joint[:, 1] == 4)).float().mean().item()
    one_null = ((joint[:, 0] == 3) ^ (joint[:, 1] == 4)).float().mean().item()
    assert 0.19 < both_null < 0.21 and one_null == 0
    mixed = ditkit.drop_labels(y, 0.1, (3, 4), generator=g, attribute_prob=0.1)
    genre_null = (mixed[:, 0] == 3).float().mean().item()  # 1 - 0.9 * 0.9 = 0.19
    assert 0.18 < genre_null < 0.20
    only_style = ((mixed[:, 0] == 1) & (mixed[:, 1] == 4)).float().mean().item()  # 0.9 * 0.9 * 0.1
    assert 0.07 < only_style < 0.092


def test_embedding_conditioning():
    torch.manual_seed(0)
    model = tiny(num_classes=0, cond_dim=16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    emb = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
    null = torch.zeros(2, 16)
    e = model.y_embedder
    torch.testing.assert_close(e(null), e.null_embedding.expand(2, -1))
    assert not torch.allclose(e(emb), e.null_embedding.expand(2, -1))
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([5, 5]), emb)
    assert out.shape == (2, 8, 8, 8)
    dropped = ditkit.drop_labels(emb, 1.0, 0.0)
    assert torch.equal(dropped, null)
    with pytest.raises(ValueError, match="16-wide embeddings"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([5, 5]), torch.randn(2, 8))
    with pytest.raises(ValueError, match="not both"):
        tiny(num_classes=5, cond_dim=16)


def test_unknown_design_lists_valid_ones():
    with pytest.raises(ValueError, match="adaln-zero, adaln, cross-attention, in-context"):
        ditkit.create_model("DiT-S/2", block="film")


def test_config_round_trip_keeps_tuples():
    c = ditkit.model_config("DiT-WikiArt-S")
    assert ditkit.ModelConfig.from_dict(c.to_dict()) == c
    assert not c.is_official_layout and ditkit.model_config("DiT-XL/2").is_official_layout
