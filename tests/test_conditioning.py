"""Pipeline conditioning beyond one class label: several attributes by name, embeddings, prompts, images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ditkit
from ditkit import DiTPipeline
from ditkit.encoders import ToyEncoder, load_encoder
from ditkit.sampling import classifier_free_guidance, make_sampling_process, sample_ddim

GENRES = ["landscape", "portrait", "still_life"]
STYLES = ["Impressionism", "Cubism", "Baroque", "Realism"]


def randomized(model, std=0.05, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return model.eval()


@pytest.fixture(scope="module")
def multi_pipe():
    model = ditkit.create_model(
        "DiT-S/4", input_size=8, depth=2, hidden_size=32, num_heads=2, num_classes=(3, 4)
    )
    return DiTPipeline(randomized(model), attributes={"genre": GENRES, "style": STYLES})


def test_multi_attribute_by_name_equals_by_id(multi_pipe):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    by_name = multi_pipe(
        [{"genre": "portrait", "style": "cubism"}, {"genre": "landscape", "style": "Realism"}],
        num_inference_steps=3,
        latents=x,
        output_type="latent",
    )
    by_id = multi_pipe(torch.tensor([[1, 1], [0, 3]]), num_inference_steps=3, latents=x, output_type="latent")
    torch.testing.assert_close(by_name.images, by_id.images, rtol=0, atol=0)
    assert by_name.labels == [(1, 1), (0, 3)]


def test_missing_attribute_is_left_free(multi_pipe):
    """Guiding on genre alone: cond = (genre, null style), uncond = (null, null)."""
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    got = multi_pipe(
        [{"genre": "still_life"}], num_inference_steps=4, guidance_scale=3.0, latents=x, output_type="latent"
    ).images
    model = multi_pipe.transformer
    fn = classifier_free_guidance(model, torch.tensor([[2, 4]]), torch.tensor([[3, 4]]), 3.0)
    want = sample_ddim(fn, make_sampling_process(multi_pipe.process, "ddim", 4), x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_multi_attribute_errors(multi_pipe):
    with pytest.raises(ValueError, match="style.*Cubism"):
        multi_pipe([{"genre": "portrait", "style": "cubsim"}], num_inference_steps=2)
    with pytest.raises(ValueError, match="unknown attribute.*artist"):
        multi_pipe([{"artist": "monet"}], num_inference_steps=2)
    with pytest.raises(ValueError, match="out of range"):
        multi_pipe([(5, 0)], num_inference_steps=2)
    with pytest.raises(ValueError, match="one label per attribute"):
        multi_pipe([1, 2], num_inference_steps=2)


def test_multi_attribute_pipeline_round_trip(multi_pipe, tmp_path):
    multi_pipe.save_pretrained(tmp_path / "p")
    loaded = DiTPipeline.from_pretrained(tmp_path / "p")
    assert loaded.attributes == {"genre": GENRES, "style": STYLES}
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    a = multi_pipe([{"style": "Baroque"}], num_inference_steps=2, latents=x, output_type="latent").images
    b = loaded([{"style": "Baroque"}], num_inference_steps=2, latents=x, output_type="latent").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.fixture(scope="module")
def emb_pipe():
    model = ditkit.create_model(
        "DiT-S/4",
        input_size=8,
        in_channels=3,
        depth=2,
        hidden_size=32,
        num_heads=2,
        num_classes=0,
        cond_dim=16,
    )
    return DiTPipeline(randomized(model), encoder=ToyEncoder(16, seed=3))


def test_embedding_condition_prompt_and_image(emb_pipe):
    enc = emb_pipe.encoder
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    prompts = ["an impressionist landscape", "a cubist portrait"]
    by_prompt = emb_pipe(prompt=prompts, num_inference_steps=3, latents=x, output_type="latent").images
    by_vec = emb_pipe(
        condition=enc.encode_text(prompts), num_inference_steps=3, latents=x, output_type="latent"
    ).images
    torch.testing.assert_close(by_prompt, by_vec, rtol=0, atol=0)
    img = Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    by_image = emb_pipe(image=[img, img], num_inference_steps=3, latents=x, output_type="latent").images
    assert by_image.shape == (2, 3, 8, 8) and not torch.allclose(by_image, by_prompt)
    # guidance against the learned null embedding (an all-zero condition)
    cond = enc.encode_text(prompts[:1])
    fn = classifier_free_guidance(emb_pipe.transformer, cond, torch.zeros_like(cond), 4.0)
    want = sample_ddim(fn, make_sampling_process(emb_pipe.process, "ddim", 3), x[:1])
    got = emb_pipe(prompt=prompts[:1], num_inference_steps=3, latents=x[:1], output_type="latent").images
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_embedding_errors(emb_pipe):
    with pytest.raises(ValueError, match=r"expects \(N, 16\)"):
        emb_pipe(condition=torch.randn(1, 8), num_inference_steps=2)
    with pytest.raises(ValueError, match="exactly one of"):
        emb_pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="conditioned on embeddings"):
        emb_pipe([1], num_inference_steps=2)
    no_encoder = DiTPipeline(emb_pipe.transformer)
    with pytest.raises(ValueError, match="need an encoder"):
        no_encoder(prompt=["a cat"], num_inference_steps=2)


def test_prompt_to_label_model_is_refused():
    model = ditkit.create_model("DiT-S/4", input_size=8, depth=1, hidden_size=32, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="class-conditional"):
        DiTPipeline(model)(prompt="a cat", num_inference_steps=2)


def test_toy_encoder():
    enc = load_encoder("toy:32:7")
    assert enc.embed_dim == 32
    t = enc.encode_text(["a red barn", "a red barn", "blue sea"])
    torch.testing.assert_close(t.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(t[0], t[1])
    assert (t[0] @ t[2]).abs() < 0.9
    i = enc.encode_image(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert i.shape == (2, 32)
    torch.testing.assert_close(i.norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("clip:ViT")
    with pytest.raises(ValueError, match="open_clip"):
        load_encoder("open_clip:ViT-B-32")
