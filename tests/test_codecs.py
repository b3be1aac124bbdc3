"""Latent codecs: identity (pixel space) and the diffusers AutoencoderKL wrapper, on a tiny random VAE."""

from __future__ import annotations

import json

import pytest
import torch

import ditkit
from _data_helpers import tiny_vae_model
from ditkit.codecs import IdentityCodec, VAECodec, check_codec_compat, load_codec

diffusers = pytest.importorskip("diffusers")


def tiny_vae(latent_channels: int = 4, scaling_factor: float | None = None):
    return tiny_vae_model(latent_channels, scaling_factor)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "vae"
    tiny_vae().save_pretrained(path)
    return path


def images(n: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_vae_codec_shapes_and_scale(vae_dir):
    codec = VAECodec.from_pretrained(vae_dir)
    assert (codec.latent_channels, codec.downsample_factor, codec.scaling_factor) == (4, 2, 0.18215)
    assert codec.dtype == torch.float32  # fp32 by default
    x = images()
    z = codec.encode(x, generator=torch.Generator().manual_seed(1))
    assert z.shape == (3, 4, 8, 8) and z.dtype == torch.float32
    out = codec.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


def test_encode_is_scaled_posterior_and_batch_size_independent(vae_dir):
    codec = VAECodec.from_pretrained(vae_dir)
    x = images(5)
    with torch.no_grad():
        dist = codec.vae.encode(x).latent_dist
    mean, std = codec.encode_posterior(x)
    torch.testing.assert_close(mean, dist.mean, rtol=0, atol=0)
    torch.testing.assert_close(std, dist.std, rtol=0, atol=0)
    torch.testing.assert_close(codec.encode(x, sample=False), dist.mean * 0.18215, rtol=0, atol=0)
    a = codec.encode(x, generator=torch.Generator().manual_seed(3))
    codec.batch_size = 2
    b = codec.encode(x, generator=torch.Generator().manual_seed(3))
    c = codec.latents_from_posterior(mean, std, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # chunked encoder, one noise draw for the batch
    torch.testing.assert_close(a, c, rtol=0, atol=0)
    assert not torch.equal(a, codec.encode(x, generator=torch.Generator().manual_seed(4)))


def test_decode_undoes_the_scale(vae_dir):
    codec = VAECodec.from_pretrained(vae_dir)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = codec.vae.decode(z / 0.18215).sample
    torch.testing.assert_close(codec.decode(z, clamp=False), want, rtol=0, atol=0)


def test_scaling_factor_comes_from_the_config(tmp_path):
    tiny_vae(scaling_factor=0.5).save_pretrained(tmp_path / "vae")
    assert VAECodec.from_pretrained(tmp_path / "vae").scaling_factor == 0.5
    # a pipeline folder resolves to its vae/
    assert VAECodec.from_pretrained(tmp_path).path == tmp_path / "vae"


def test_identity_codec_and_load_codec(vae_dir):
    codec = load_codec(None)
    assert isinstance(codec, IdentityCodec) and codec.downsample_factor == 1 and codec.scaling_factor == 1.0
    x = images()
    assert codec.encode(x) is x and codec.decode(x) is x
    assert isinstance(load_codec(vae_dir), VAECodec)


def test_bad_vae_folders(tmp_path, vae_dir):
    with pytest.raises(FileNotFoundError, match="no such VAE folder"):
        VAECodec.from_pretrained(tmp_path / "nope")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="must be a folder"):
        VAECodec.from_pretrained(tmp_path / "file.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a VAE folder"):
        VAECodec.from_pretrained(empty)
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="not a VAE .*UNet2DModel"):
        VAECodec.from_pretrained(other)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((vae_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="weights missing"):
        VAECodec.from_pretrained(noweights)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((vae_dir / "config.json").read_text())
    (broken / "diffusion_pytorch_model.safetensors").write_bytes(
        (vae_dir / "diffusion_pytorch_model.safetensors").read_bytes()[:500]
    )
    with pytest.raises(ValueError, match="could not load the VAE"):
        VAECodec.from_pretrained(broken)


def test_codec_compatibility_checks(tmp_path, vae_dir):
    model = ditkit.build_model(
        ditkit.ModelConfig(depth=1, hidden_size=32, num_heads=2, input_size=8, num_classes=10)
    )
    codec = VAECodec.from_pretrained(vae_dir)
    check_codec_compat(model, codec, image_size=16)
    with pytest.raises(ValueError, match=r"image size 32 does not fit .* 8x8 latents, i.e. 16x16 images"):
        check_codec_compat(model, codec, image_size=32)
    tiny_vae(latent_channels=3).save_pretrained(tmp_path / "vae3")
    with pytest.raises(ValueError, match="has 3 latent channels but the model expects 4"):
        check_codec_compat(model, VAECodec.from_pretrained(tmp_path / "vae3"))
    check_codec_compat(model, IdentityCodec(), image_size=8)
    with pytest.raises(ValueError, match="latent channels"):
        check_codec_compat(model, IdentityCodec(channels=3))
