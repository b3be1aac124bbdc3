"""diffusers interop: DiTTransformer2DModel and DiTPipeline folders built with diffusers itself.

Forward parity is asserted at 1e-5 (fp32, CPU) between diffusers and ditkit on the same weights under the
*same* arithmetic. Official and diffusers arithmetic differ by design (timestep-frequency divisor 128 vs
127, MLP LayerNorm eps 1e-6 vs 1e-5); with random weights that difference is large at high t (phases of
t * freq drift by radians), so the tests assert it is there rather than bound it.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import ditkit
from _data_helpers import tiny_vae as save_tiny_vae
from _data_helpers import tiny_vae_model
from ditkit.io import convert, load_any, save_official, set_arithmetic

diffusers = pytest.importorskip("diffusers")

ATOL = 1e-5
TINY = ditkit.ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, num_classes=10)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def tie_embedders(model) -> None:
    """Make every block's embedder a copy of block 0's, as in a checkpoint converted from the official one."""
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)


def tiny_diffusers(num_classes: int = 10, tied: bool = True, seed: int = 0):
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    randomize(model, seed)
    if tied:
        tie_embedders(model)
    return model.eval()


def tiny_vae():
    return tiny_vae_model()


def ddim():
    return diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)


def save_pipeline(folder, transformer, id2label):
    """diffusers' save_pretrained does not write id2label; the hub's model_index.json carries it."""
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=ddim(), id2label=id2label)
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["id2label"] = {str(k): v for k, v in id2label.items()}
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def inputs(n: int = 4, num_classes: int = 10):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 500, 999][:n])
    y = torch.tensor([0, 3, num_classes - 1, num_classes][:n])  # includes the null label
    return x, t, y


def diffusers_forward(model, x, t, y):
    with torch.no_grad():
        return model(x, timestep=t, class_labels=y).sample


def ditkit_forward(model, x, t, y):
    with torch.no_grad():
        return model(x, t, y)


# -- reading diffusers folders ------------------------------------------------------------------------
def test_transformer_folder_reproduces_diffusers_forward(tmp_path):
    ref = tiny_diffusers()
    ref.save_pretrained(tmp_path / "t")
    loaded = load_any(tmp_path / "t")
    c = loaded.model.config
    assert loaded.format == "diffusers-transformer"
    assert (c.depth, c.hidden_size, c.num_heads, c.patch_size, c.input_size) == (2, 32, 2, 2, 8)
    assert (c.num_classes, c.learn_sigma, c.has_null_label, c.arithmetic) == (10, True, True, "diffusers")
    x, t, y = inputs()
    want = diffusers_forward(ref, x, t, y)
    torch.testing.assert_close(ditkit_forward(loaded.model, x, t, y), want, rtol=0, atol=ATOL)
    # diffusers' pos-embed equals ours at this size (and at every size we checked); the buffer is diffusers'
    torch.testing.assert_close(loaded.model.pos_embed, ref.pos_embed.pos_embed, rtol=0, atol=0)
    # the user may switch arithmetic; then the forward is the official one and no longer diffusers'
    official = load_any(tmp_path / "t", arithmetic="official").model
    assert official.config.arithmetic == "official"
    assert not torch.allclose(ditkit_forward(official, x, t, y), want, atol=1e-3)


def test_legacy_class_name_and_bin_weights(tmp_path):
    ref = tiny_diffusers()
    ref.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    config = json.loads((tmp_path / "bin" / "config.json").read_text())
    config["_class_name"] = "Transformer2DModel"  # how facebook/DiT-XL-2-256 ships it
    (tmp_path / "bin" / "config.json").write_text(json.dumps(config))
    loaded = load_any(tmp_path / "bin")
    x, t, y = inputs()
    torch.testing.assert_close(
        ditkit_forward(loaded.model, x, t, y), diffusers_forward(ref, x, t, y), rtol=0, atol=ATOL
    )


def test_untied_per_block_embedders_are_refused(tmp_path):
    tiny_diffusers(tied=False).save_pretrained(tmp_path / "native")
    with pytest.raises(ValueError, match=r"per-block embedders differ \(transformer_blocks.1.norm1.emb"):
        load_any(tmp_path / "native")


def test_unsupported_diffusers_configs_are_refused(tmp_path):
    tiny_diffusers().save_pretrained(tmp_path / "t")
    config = json.loads((tmp_path / "t" / "config.json").read_text())
    for key, value, message in (
        ("norm_eps", 1e-6, "norm_eps=1e-06"),
        ("activation_fn", "geglu", "activation_fn='geglu' is not a DiT"),
        ("out_channels", 5, "out_channels=5"),
    ):
        (tmp_path / "t" / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=message):
            load_any(tmp_path / "t")
    (tmp_path / "t" / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="describes a 'UNet2DModel', not a DiT"):
        load_any(tmp_path / "t")


def test_diffusers_pipeline_folder(tmp_path):
    ref = tiny_diffusers()
    folder = save_pipeline(tmp_path / "pipe", ref, {0: "zero, nought", 1: "one"})
    loaded = load_any(folder)
    assert loaded.format == "diffusers-pipeline"
    assert loaded.id2label == {0: "zero, nought", 1: "one"}
    assert loaded.vae_path == folder / "vae"
    assert loaded.extra["scheduler_config"]["_class_name"] == "DDIMScheduler"
    x, t, y = inputs()
    torch.testing.assert_close(
        ditkit_forward(loaded.model, x, t, y), diffusers_forward(ref, x, t, y), rtol=0, atol=ATOL
    )
    # the transformer/ subfolder alone finds its pipeline's labels and VAE
    sub = load_any(folder / "transformer")
    assert (
        sub.format == "diffusers-transformer" and sub.vae_path == folder / "vae" and sub.id2label[1] == "one"
    )


def test_diffusers_folders_missing_a_part(tmp_path):
    folder = save_pipeline(tmp_path / "pipe", tiny_diffusers(), {0: "a"})
    broken = tmp_path / "novae"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match="novae: the pipeline's vae/ folder is missing"):
        load_any(broken)
    broken = tmp_path / "noweights"
    shutil.copytree(folder, broken)
    (broken / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match="transformer: transformer weights missing"):
        load_any(broken)
    broken = tmp_path / "noconfig"
    shutil.copytree(folder, broken)
    (broken / "transformer" / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json is missing"):
        load_any(broken)
    broken = tmp_path / "noscheduler"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(ValueError, match="scheduler/ folder is missing"):
        load_any(broken)
    with pytest.raises(ValueError, match="this is a VAE folder, not a DiT"):
        load_any(folder / "vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a model folder"):
        load_any(tmp_path / "empty")
    weights = (folder / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "loose.safetensors").write_bytes(weights)
    with pytest.raises(ValueError, match="diffusers transformer weights without their config"):
        load_any(tmp_path / "loose.safetensors")


# -- writing diffusers folders ------------------------------------------------------------------------
# Official files do not store the head count; readers assume head_dim 64 (72 at width 1152), so an
# official-origin model follows that convention.
OFFICIAL = ditkit.ModelConfig(
    depth=2, hidden_size=128, num_heads=2, patch_size=2, input_size=8, num_classes=10
)


def official_origin_model(num_classes: int = 10) -> ditkit.DiT:
    model = ditkit.build_model(OFFICIAL.replace(num_classes=num_classes))
    randomize(model, seed=3)
    return model.eval()


def test_official_to_diffusers_round_trip_is_bit_exact(tmp_path):
    model = official_origin_model()
    save_official(model, tmp_path / "dit.pt")
    convert(tmp_path / "dit.pt", tmp_path / "diff", to="diffusers")
    ref, info = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "diff", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    back = load_any(tmp_path / "diff")
    assert back.model.config.arithmetic == "diffusers"
    assert any("official arithmetic" in n for n in back.notes)
    original = model.state_dict()
    for k, v in back.model.state_dict().items():  # every weight, pos_embed included
        assert torch.equal(v, original[k]), k
    convert(tmp_path / "diff", tmp_path / "again.pt", to="official")
    again = torch.load(tmp_path / "again.pt", weights_only=True)
    assert again.keys() == original.keys() and all(torch.equal(again[k], original[k]) for k in original)

    x, t, y = inputs()
    want = diffusers_forward(ref.eval(), x, t, y)
    # same weights, diffusers arithmetic: ditkit reproduces diffusers
    torch.testing.assert_close(ditkit_forward(back.model, x, t, y), want, rtol=0, atol=ATOL)
    torch.testing.assert_close(
        ditkit_forward(set_arithmetic(model, "diffusers"), x, t, y), want, rtol=0, atol=ATOL
    )
    # the official arithmetic (the model's own) differs from what diffusers computes: asserted, not bounded
    assert (ditkit_forward(model, x, t, y) - want).abs().max() > 1e-3
    # and switching back gives the original model's outputs exactly
    official = load_any(tmp_path / "diff", arithmetic="official").model
    assert torch.equal(ditkit_forward(official, x, t, y), ditkit_forward(model, x, t, y))


def test_models_without_null_row_or_labels_export(tmp_path):
    nonull = ditkit.build_model(TINY.replace(class_dropout_prob=0.0))
    randomize(nonull)
    convert_path = tmp_path / "nonull.safetensors"
    ditkit.io.save_safetensors(nonull, convert_path)
    convert(convert_path, tmp_path / "d1", to="diffusers")
    ref = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "d1").eval()
    x, t, y = inputs()
    y = y.clamp(max=9)
    torch.testing.assert_close(
        diffusers_forward(ref, x, t, y),
        ditkit_forward(set_arithmetic(nonull, "diffusers"), x, t, y),
        rtol=0,
        atol=ATOL,
    )
    uncond = ditkit.build_model(TINY.replace(num_classes=0, learn_sigma=False))
    randomize(uncond)
    ditkit.io.save_safetensors(uncond, tmp_path / "u.safetensors")
    convert(tmp_path / "u.safetensors", tmp_path / "d2", to="diffusers")
    ref = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "d2").eval()
    null = torch.zeros(4, dtype=torch.long)  # diffusers always takes a label: the (zero) null row
    back = load_any(tmp_path / "d2").model
    assert back.config.num_classes == 0
    torch.testing.assert_close(
        diffusers_forward(ref, x, t, null), ditkit_forward(back, x, t, None), rtol=0, atol=ATOL
    )


def test_dtype_cast_on_export(tmp_path):
    model = official_origin_model()
    save_official(model, tmp_path / "dit.pt")
    convert(tmp_path / "dit.pt", tmp_path / "bf16", to="diffusers", dtype="bf16")
    back = load_any(tmp_path / "bf16").model
    assert back.x_embedder.proj.weight.dtype == torch.bfloat16
    assert torch.equal(back.x_embedder.proj.weight, model.x_embedder.proj.weight.to(torch.bfloat16))
    with pytest.raises(ValueError, match="unknown dtype"):
        convert(tmp_path / "dit.pt", tmp_path / "x", to="diffusers", dtype="fp8")


def test_pipeline_export_loads_in_diffusers(tmp_path):
    model = official_origin_model(num_classes=1000)
    save_official(model, tmp_path / "dit.pt")
    tiny_vae().save_pretrained(tmp_path / "vae")
    with pytest.raises(ValueError, match="needs a VAE"):
        convert(tmp_path / "dit.pt", tmp_path / "nope", to="diffusers", pipeline=True)
    convert(tmp_path / "dit.pt", tmp_path / "pipe", to="diffusers", pipeline=True, vae=tmp_path / "vae")
    pipe = diffusers.DiTPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(pipe.scheduler, diffusers.DDIMScheduler)
    s = pipe.scheduler.config
    assert (s.num_train_timesteps, s.beta_schedule, s.clip_sample, s.beta_start, s.beta_end) == (
        1000,
        "linear",
        False,
        0.0001,
        0.02,
    )
    assert pipe.get_label_ids(["golden retriever"]) == [207]  # ImageNet names, in model_index.json
    assert pipe.vae.config.latent_channels == 4
    # ditkit reads its own export back, and a ditkit pipeline folder carries the VAE along
    loaded = load_any(tmp_path / "pipe")
    assert loaded.format == "diffusers-pipeline" and loaded.id2label[207] == "golden retriever"
    convert(tmp_path / "pipe", tmp_path / "kit", to="safetensors", pipeline=True)
    kit = load_any(tmp_path / "kit")
    assert kit.format == "ditkit-pipeline" and (kit.vae_path / "config.json").is_file()
    assert kit.model.config.arithmetic == "diffusers" and kit.id2label[0] == "tench, Tinca tinca"


def test_pipeline_export_checks_vae_channels(tmp_path):
    model = official_origin_model()
    save_official(model, tmp_path / "dit.pt")
    save_tiny_vae(tmp_path / "vae3", latent_channels=3)
    with pytest.raises(ValueError, match="has 3 latent channels but the model expects 4"):
        convert(tmp_path / "dit.pt", tmp_path / "pipe", to="diffusers", pipeline=True, vae=tmp_path / "vae3")


def test_transformer_export_keeps_custom_class_names(tmp_path):
    model = official_origin_model()
    names = [f"style {i}" for i in range(10)]
    ditkit.io.save_safetensors(model, tmp_path / "w.safetensors", label_names=names)
    result = convert(tmp_path / "w.safetensors", tmp_path / "diff", to="diffusers")
    assert load_any(tmp_path / "diff").label_names == names
    _, info = diffusers.DiTTransformer2DModel.from_pretrained(tmp_path / "diff", output_loading_info=True)
    assert not any(info.values())
    result = convert(tmp_path / "w.safetensors", tmp_path / "w.pt", to="official")
    assert any("10 label names not written" in n for n in result.notes)
