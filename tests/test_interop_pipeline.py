"""ditkit pipeline folders, and sampling a diffusers DiTPipeline folder in ditkit vs in diffusers."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import ditkit
from _data_helpers import tiny_vae as save_tiny_vae
from _data_helpers import tiny_vae_model
from ditkit.codecs import IdentityCodec, VAECodec
from ditkit.io import load_any, read_ditkit_pipeline, save_ditkit_pipeline
from ditkit.labels import imagenet_id2label

diffusers = pytest.importorskip("diffusers")

TINY = ditkit.ModelConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=8, num_classes=10)


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def tiny_vae():
    return tiny_vae_model()


def test_ditkit_pipeline_folder_round_trip(tmp_path):
    model = ditkit.build_model(TINY)
    randomize(model)
    tiny_vae().save_pretrained(tmp_path / "vae")
    labels = {i: f"class {i}, alias {i}" for i in range(10)}
    save_ditkit_pipeline(tmp_path / "pipe", model, labels, vae=tmp_path / "vae", extra={"sampler": "ddim"})
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == [
        "ditkit_pipeline.json",
        "transformer.safetensors",
        "vae",
    ]
    parts = read_ditkit_pipeline(tmp_path / "pipe")
    assert parts.id2label == labels and parts.extra == {"sampler": "ddim"}
    assert parts.vae_path == tmp_path / "pipe" / "vae"
    for k, v in model.state_dict().items():
        assert torch.equal(parts.model.state_dict()[k], v), k
    loaded = load_any(tmp_path / "pipe")
    assert loaded.format == "ditkit-pipeline" and loaded.label_names[3] == "class 3, alias 3"
    # the weights file alone is a ditkit safetensors file with the label names in it
    alone = load_any(tmp_path / "pipe" / "transformer.safetensors")
    assert alone.format == "ditkit-safetensors" and alone.id2label == labels
    # a codec or an AutoencoderKL object is saved with save_pretrained; pixel space stores no vae/
    save_ditkit_pipeline(tmp_path / "p2", model, None, vae=VAECodec.from_pretrained(tmp_path / "vae"))
    assert VAECodec.from_pretrained(tmp_path / "p2").latent_channels == 4
    save_ditkit_pipeline(tmp_path / "p3", model, None, vae=IdentityCodec())
    assert read_ditkit_pipeline(tmp_path / "p3").vae_path is None


def test_broken_ditkit_pipeline_folders(tmp_path):
    model = ditkit.build_model(TINY)
    tiny_vae().save_pretrained(tmp_path / "vae")
    save_ditkit_pipeline(tmp_path / "pipe", model, None, vae=tmp_path / "vae")
    broken = tmp_path / "novae"
    shutil.copytree(tmp_path / "pipe", broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ValueError, match="novae: the pipeline's vae/ folder is missing"):
        load_any(broken)
    broken = tmp_path / "noweights"
    shutil.copytree(tmp_path / "pipe", broken)
    (broken / "transformer.safetensors").unlink()
    with pytest.raises(ValueError, match="transformer.safetensors is missing"):
        load_any(broken)
    save_tiny_vae(tmp_path / "vae3", latent_channels=3)
    with pytest.raises(ValueError, match="has 3 latent channels but the model expects 4"):
        save_ditkit_pipeline(tmp_path / "bad", model, None, vae=tmp_path / "vae3")
    index = json.loads((tmp_path / "pipe" / "ditkit_pipeline.json").read_text())
    (tmp_path / "pipe" / "ditkit_pipeline.json").write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(ValueError, match="version 99 is newer"):
        load_any(tmp_path / "pipe")


def test_ddim_sampling_matches_diffusers_pipeline(tmp_path):
    """A diffusers DiTPipeline folder sampled with DDIM in ditkit gives diffusers' images from the same noise.

    diffusers guides all latent channels and discards the learned variance; ditkit's guidance_channels=None
    does the same, and DDIM (eta 0) never uses the variance. 1000 classes because diffusers hard-codes the
    null label 1000.
    """
    pipeline_mod = pytest.importorskip("ditkit.pipeline")
    transformer = diffusers.DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    randomize(transformer, std=0.02)
    first = transformer.transformer_blocks[0].norm1.emb.state_dict()
    for block in transformer.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(first)  # as in a checkpoint converted from the official one
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    ref = diffusers.DiTPipeline(transformer=transformer.eval(), vae=tiny_vae(), scheduler=scheduler)
    ref.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    index["id2label"] = {str(i): n for i, n in imagenet_id2label().items()}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    ref = diffusers.DiTPipeline.from_pretrained(tmp_path / "pipe")
    labels = ref.get_label_ids(["golden retriever", "tench"])
    want = ref(
        labels,
        guidance_scale=4.0,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images

    pipe = pipeline_mod.DiTPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.transformer.config.arithmetic == "diffusers"
    assert pipe.get_label_ids(["golden retriever", "tench"]) == labels
    # what diffusers' randn_tensor draws on the CPU for that generator
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    got = pipe(
        labels,
        num_inference_steps=10,
        guidance_scale=4.0,
        latents=latents,
        output_type="np",
        sampler="ddim",
        guidance_channels=None,
    ).images
    assert got.shape == want.shape == (2, 16, 16, 3)
    assert abs(got - want).max() < 1e-5
    # the comparison can tell: the official 3-channel guidance gives measurably different images
    official = pipe(
        labels,
        num_inference_steps=10,
        guidance_scale=4.0,
        latents=latents,
        output_type="np",
        sampler="ddim",
        guidance_channels=3,
    ).images
    assert abs(official - want).max() > 1e-4
