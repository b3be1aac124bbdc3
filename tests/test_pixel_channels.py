"""Pixel space (vae=None): the model's channels are the image's. 1 and 3 channels become L / RGB images; a
4-channel model (a latent model with no VAE) is refused for PIL output instead of returning RGBA images."""

from __future__ import annotations

import pytest
import torch

import ditkit
from ditkit import DiTPipeline


def _pipe(channels: int) -> DiTPipeline:
    torch.manual_seed(0)
    model = ditkit.create_model(
        "DiT-S/4", input_size=8, in_channels=channels, num_classes=2, depth=1, hidden_size=32, num_heads=2
    )
    return DiTPipeline(model.eval())


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB")])
def test_one_and_three_channels_are_grayscale_and_rgb(channels, mode):
    images = _pipe(channels)(class_labels=[0, 1], num_inference_steps=2, guidance_scale=1.0).images
    assert [im.mode for im in images] == [mode, mode] and images[0].size == (8, 8)


def test_four_channels_without_a_vae_are_refused_for_pil_but_not_for_arrays():
    pipe = _pipe(4)
    with pytest.raises(ValueError, match="4-channel images have no PIL mode.*pass vae="):
        pipe(class_labels=[0], num_inference_steps=2, guidance_scale=1.0)
    out = pipe(class_labels=[0], num_inference_steps=2, guidance_scale=1.0, output_type="np").images
    assert out.shape == (1, 8, 8, 4)


def test_sample_cli_refuses_a_latent_model_without_a_vae(tmp_path, capsys):
    """`ditkit sample` used to write the first 3 of 4 latent channels as RGB PNGs with exit 0."""
    from ditkit.cli.main import main

    _pipe(4).save_pretrained(tmp_path / "m")
    args = ["sample", "--ckpt", str(tmp_path / "m"), "--out", str(tmp_path / "s"), "--steps", "2"]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "4 input channels and no VAE" in err and "--vae PATH" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
