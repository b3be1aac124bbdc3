"""DiTPipeline in pixel space: outputs, generators, guidance, and DDIM against diffusers' scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import ditkit
from ditkit import DiTPipeline


def tiny_model(seed: int = 0, **kw):
    torch.manual_seed(seed)
    args = {
        "input_size": 8,
        "in_channels": 3,
        "num_classes": 5,
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
    }
    args.update(kw)
    model = ditkit.create_model("DiT-S/4", **args)
    with torch.no_grad():  # a non-trivial network: zero-init would output 0 for every label
        for p in model.parameters():
            p.normal_(0, 0.04)
    return model.eval()


NAMES = {0: "cat, kitty", 1: "dog", 2: "golden retriever", 3: "tench, Tinca tinca", 4: "vase"}


@pytest.fixture(scope="module")
def pipe():
    return DiTPipeline(tiny_model(), id2label=NAMES)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_output_types(pipe, output_type):
    out = pipe(
        [0, 3], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type=output_type
    )
    images = out.images
    if output_type == "pil":
        assert len(images) == 2 and isinstance(images[0], Image.Image) and images[0].size == (8, 8)
        assert images[0].mode == "RGB"
    elif output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (2, 8, 8, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
    elif output_type == "pt":
        assert images.shape == (2, 3, 8, 8) and 0 <= images.min() and images.max() <= 1
    else:
        assert images.shape == (2, 3, 8, 8) and (images.min() < 0 or images.max() > 1)  # undecoded, unclamped
    assert out.labels == [0, 3]


def test_np_is_pt_rescaled(pipe):
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    latent = pipe([1, 2], num_inference_steps=3, generator=g(), output_type="latent").images
    np_img = pipe([1, 2], num_inference_steps=3, generator=g(), output_type="np").images
    expected = (latent / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np_img, expected, atol=1e-6)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_per_image_generators_are_batch_independent(pipe, sampler, eta):
    kw = {"num_inference_steps": 5, "output_type": "latent", "sampler": sampler, "guidance_scale": 3.0}
    if eta:
        kw["eta"] = eta
    both = pipe(
        [1, 4], generator=[torch.Generator().manual_seed(11), torch.Generator().manual_seed(22)], **kw
    )
    alone = pipe([4], generator=[torch.Generator().manual_seed(22)], **kw)
    torch.testing.assert_close(both.images[1:], alone.images, rtol=1e-5, atol=1e-5)
    other = pipe(
        [1, 4], generator=[torch.Generator().manual_seed(99), torch.Generator().manual_seed(22)], **kw
    )
    torch.testing.assert_close(other.images[1:], alone.images, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other.images[0], both.images[0])


def test_latents_fix_the_noise(pipe):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    a = pipe([0, 1], num_inference_steps=4, latents=x, output_type="latent").images
    b = pipe(
        [0, 1],
        num_inference_steps=4,
        latents=x.clone(),
        generator=torch.Generator().manual_seed(1),
        output_type="latent",
    ).images
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_guidance_scale_one_equals_unguided(pipe):
    """Scale 1 must equal a sampler run over the plain conditional network (no null batch at all)."""
    from ditkit.sampling import make_sampling_process, sample_ddpm

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    g = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    got = pipe(
        [2, 4],
        num_inference_steps=6,
        sampler="ddpm",
        guidance_scale=1.0,
        latents=x,
        generator=g(),
        output_type="latent",
    ).images
    y = torch.tensor([2, 4])
    process = make_sampling_process(pipe.process, "ddpm", 6)
    want = sample_ddpm(lambda xt, t: pipe.transformer(xt, t, y), process, x, generator=g())
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def official_cfg_fn(model, y, scale):
    """The official forward_with_cfg, rewritten from its description: the batch holds [x; x] with
    [y; null], eps = out[:, :3] is guided, out[:, 3:] passes through, the guided half is duplicated."""

    def fn(x, t):
        half = x[: len(x) // 2]
        combined = torch.cat([half, half])
        out = model(combined, t, y)
        eps, rest = out[:, :3], out[:, 3:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps]), rest], dim=1)

    return fn


def test_guidance_channels_3_reproduces_official_sampler():
    """Official sample.py: z duplicated, y = [labels; null], the doubled batch sampled with forward_with_cfg,
    the first half kept. Only the first half's noise matters (the model re-reads x[:N/2] every step), so
    per-image generators 100, 101 drive both runs."""
    from ditkit.sampling import make_sampling_process, sample_ddpm

    model = tiny_model(seed=4, in_channels=4)
    pipe = DiTPipeline(model)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    gens = lambda k: [torch.Generator().manual_seed(100 + i) for i in range(k)]  # noqa: E731
    got = pipe(
        [1, 3],
        num_inference_steps=5,
        sampler="ddpm",
        guidance_scale=4.0,
        guidance_channels=3,
        latents=x,
        generator=gens(2),
        output_type="latent",
    ).images
    process = make_sampling_process(pipe.process, "ddpm", 5)
    y = torch.tensor([1, 3, 5, 5])
    ref = sample_ddpm(official_cfg_fn(model, y, 4.0), process, torch.cat([x, x]), generator=gens(4))
    torch.testing.assert_close(got, ref[:2], rtol=1e-5, atol=1e-5)
    # guiding all 4 channels (the default) is a different sampler
    all4 = pipe(
        [1, 3],
        num_inference_steps=5,
        sampler="ddpm",
        guidance_scale=4.0,
        latents=x,
        generator=gens(2),
        output_type="latent",
    ).images
    assert not torch.allclose(all4, got, atol=1e-3)


def test_ddim_matches_diffusers_scheduler_loop():
    """ditkit's DDIM-50 with all-channel guidance == a loop over diffusers' DDIMScheduler (leading spacing)
    that guides eps the way diffusers' DiTPipeline does."""
    from diffusers import DDIMScheduler

    model = tiny_model(seed=9, in_channels=4)
    pipe = DiTPipeline(model)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    got = pipe([0, 4], num_inference_steps=50, guidance_scale=3.0, latents=x, output_type="latent").images

    sched = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        prediction_type="epsilon",
    )
    sched.set_timesteps(50)
    y = torch.tensor([0, 4, 5, 5])
    lat = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            out = model(torch.cat([lat, lat]), torch.full((4,), int(t)), y)
            eps = out[:, :4]
            cond, uncond = eps.chunk(2)
            guided = uncond + 3.0 * (cond - uncond)
            lat = sched.step(guided, t, lat).prev_sample
    torch.testing.assert_close(got, lat, rtol=1e-4, atol=1e-4)


def test_label_names(pipe):
    assert pipe.get_label_ids(["dog", "kitty", "Tinca tinca", "cat"]) == [1, 0, 3, 0]
    assert pipe.get_label_ids("golden retriever") == [2]
    assert pipe.labels["tench"] == 3
    out = pipe(["vase", "dog"], num_inference_steps=2, output_type="latent")
    assert out.labels == [4, 1]
    with pytest.raises(ValueError, match="golden retriever"):
        pipe.get_label_ids(["golden retreiver"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "lms"}, "unknown sampler"),
        ({"output_type": "jpeg"}, "unknown output_type"),
        ({"class_labels": [7]}, "out of range"),
        ({"latents": torch.zeros(1, 3, 8, 8)}, "expected"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"generator": [torch.Generator()]}, "one per image"),
    ],
)
def test_bad_input(pipe, kwargs, match):
    args = {"class_labels": [1, 2], "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**args)


def test_no_null_row_refuses_guidance():
    pipe = DiTPipeline(tiny_model(class_dropout_prob=0.0))
    with pytest.raises(ValueError, match="null label"):
        pipe([1], num_inference_steps=2)
    assert pipe([1], num_inference_steps=2, guidance_scale=1.0, output_type="pt").images.shape == (1, 3, 8, 8)


def test_unconditional_pipeline():
    pipe = DiTPipeline(tiny_model(num_classes=0))
    out = pipe(num_images=3, num_inference_steps=2, output_type="np")
    assert out.images.shape == (3, 8, 8, 3)
    with pytest.raises(ValueError, match="unconditional"):
        pipe([1], num_inference_steps=2)


def test_single_channel_pil():
    pipe = DiTPipeline(tiny_model(in_channels=1))
    img = pipe([0], num_inference_steps=2).images[0]
    assert img.mode == "L" and img.size == (8, 8)


def test_from_pretrained_reads_the_checkpoint_process(tmp_path):
    """A ditkit training checkpoint carries its run config: the pipeline samples with that schedule."""
    from ditkit.diffusion import get_betas

    model = tiny_model(seed=2)
    ckpt = {
        "format": "ditkit-checkpoint",
        "version": 1,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "ema": model.state_dict(),
        "step": 3,
        "label_names": ["a", "b", "c", "d", "e"],
        "config": {"process": {"schedule": "cosine", "num_timesteps": 1000}, "data": {"vae": None}},
        # the rest of the training-checkpoint schema (ditkit.train.state), unused by sampling
        "optimizer": {},
        "scheduler": {},
        "rng": {"generator": torch.Generator().get_state()},
        "ditkit_version": ditkit.__version__,
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    pipe = DiTPipeline.from_pretrained(tmp_path / "ckpt.pt")
    np.testing.assert_allclose(pipe.process.betas, get_betas("cosine", 1000))
    assert pipe.get_label_ids(["c"]) == [2]


def test_names_win_over_id_strings():
    """A class named "5" that is not class 5 is found by its name, and a free digit string is an id."""
    pipe = DiTPipeline(tiny_model(), id2label={0: "5", 1: "4", 2: "3", 3: "2", 4: "1"})
    assert pipe.get_label_ids(["5", "1"]) == [0, 4]
    out = pipe(["5", 3], num_inference_steps=2, output_type="latent")
    assert out.labels == [0, 3]
    named = DiTPipeline(tiny_model(), id2label=NAMES)
    assert named.get_label_ids(["2"]) == [2]  # no class is named "2": read as an id
    with pytest.raises(ValueError, match="out of range"):
        named.get_label_ids(["7"])


# ----------------------------------------------------------------------------------------------- round 2: samplers
def _lat(pipe, labels=(1, 3), **kw):
    x = torch.randn(len(labels), 3, 8, 8, generator=torch.Generator().manual_seed(21))
    return pipe(list(labels), latents=x, output_type="latent", **kw)


def test_scheduler_object_equals_the_builtin_sampler(pipe):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )
    theirs = _lat(pipe, scheduler=sched, num_inference_steps=8, guidance_scale=3.0)
    ours = _lat(pipe, sampler="dpm++2m", num_inference_steps=8, guidance_scale=3.0)
    torch.testing.assert_close(theirs.images, ours.images, rtol=1e-5, atol=1e-5)
    assert theirs.info["sampler"] == "DPMSolverMultistepScheduler" and theirs.info["nfe"] == 8
    assert ours.info["grid"][:2] == [999.0, 874.0] and ours.info["grid"][-1] == -1.0
    with pytest.raises(ValueError, match=r"has no set_timesteps\(\) or step\(\)"):
        pipe([1], scheduler=object(), num_inference_steps=2)


def test_info_nfe_and_default_steps(pipe):
    out = _lat(pipe, sampler="heun", num_inference_steps=5, guidance_scale=2.0)
    assert out.info["nfe"] == 9 and out.info["steps"] == 5 and out.info["guidance"] == "cfg"
    assert out.info["precision"] == "fp32" and out.info["guidance_interval"] is None
    default = pipe([1], sampler="dpm++2m", output_type="latent")
    assert default.info["steps"] == 20 and default.info["nfe"] == 20
    with pytest.raises(ValueError, match="integer in 1..1000"):
        pipe([1], num_inference_steps=1001)
    with pytest.raises(ValueError, match="eta applies"):
        pipe([1], sampler="unipc", num_inference_steps=2, eta=0.5)


def test_guidance_interval_edges(pipe):
    kw = {"sampler": "dpm++2m", "num_inference_steps": 6, "guidance_scale": 3.0}
    plain = _lat(pipe, **kw).images
    assert torch.equal(_lat(pipe, guidance_interval=(0.0, 1.0), **kw).images, plain)
    cond = _lat(pipe, sampler="dpm++2m", num_inference_steps=6, guidance_scale=1.0).images
    empty = _lat(pipe, guidance_interval=(0.4, 0.4), **kw)
    assert torch.equal(empty.images, cond) and empty.info["guidance_interval"] == [0.4, 0.4]
    for bad, match in [
        ((-0.1, 0.5), r"lie in \[0, 1\]"),
        ((0.7, 0.2), "lo > hi"),
        ((0.0, 1.5), "lie in"),
        ("ab", "two numbers"),
    ]:
        with pytest.raises(ValueError, match=match):
            _lat(pipe, guidance_interval=bad, **kw)


def test_guidance_interval_guides_only_inside(monkeypatch):
    model = tiny_model(seed=3)
    pipe = DiTPipeline(model)
    batches = []
    forward = model.forward

    def spy(x, t, y=None, w=None):
        batches.append((int(t[0]), x.shape[0]))
        return forward(x, t, y)

    monkeypatch.setattr(model, "forward", spy)
    pipe([1, 2], sampler="dpm++2m", num_inference_steps=5, guidance_interval=(0.3, 0.7), output_type="latent")
    # uniform grid 999, 799, 599, 400, 200: guided (doubled batch) only at noise levels 0.3..0.7
    assert batches == [(999, 2), (799, 2), (599, 4), (400, 4), (200, 2)]


def test_autoguidance_with_the_model_itself_is_the_conditional_sample(pipe):
    kw = {"sampler": "unipc", "num_inference_steps": 5}
    cond = _lat(pipe, guidance_scale=1.0, **kw)
    auto = _lat(pipe, guidance_scale=3.0, guide_model=pipe.transformer, **kw)
    assert torch.equal(auto.images, cond.images)
    assert auto.info["guidance"] == "autoguidance" and auto.info["nfe"] == 10  # model + guide per step
    weaker = tiny_model(seed=8)
    other = _lat(DiTPipeline(pipe.transformer, guide_model=weaker), guidance_scale=3.0, **kw)
    assert not torch.allclose(other.images, cond.images)
    for bad, match in [
        (tiny_model(num_classes=7), "num_classes"),
        (tiny_model(in_channels=4), "in_channels"),
    ]:
        with pytest.raises(ValueError, match=match):
            _lat(pipe, guidance_scale=2.0, guide_model=bad, **kw)
        with pytest.raises(ValueError, match=match):
            DiTPipeline(pipe.transformer, guide_model=bad)


def test_unconditional_autoguidance_and_ignored_scale():
    uncond = DiTPipeline(tiny_model(num_classes=0))
    out = uncond(num_images=2, num_inference_steps=3, sampler="euler", output_type="latent")
    assert out.info["guidance_scale"] == 1.0 and out.info["guidance"] is None  # default 4 does not apply
    auto = uncond(
        num_images=2,
        num_inference_steps=3,
        sampler="euler",
        guidance_scale=2.0,
        guide_model=tiny_model(seed=5, num_classes=0),
        output_type="latent",
    )
    assert auto.info["guidance"] == "autoguidance" and auto.info["nfe"] == 6
    with pytest.raises(ValueError, match="num_images must be a positive integer"):
        uncond(num_images=0, num_inference_steps=2)


def test_pipeline_callback_sees_every_step(pipe):
    seen = []
    out = _lat(pipe, sampler="heun", num_inference_steps=4, callback=lambda i, n, x: seen.append((i, n)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)] and out.info["nfe"] == 7


def test_non_finite_samples_raise():
    model = tiny_model(seed=6)
    with torch.no_grad():
        model.blocks[1].mlp.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weight 'blocks.1.mlp.fc1.weight' holds NaN/inf"):
        DiTPipeline(model)([1], num_inference_steps=2)
    with pytest.raises(ValueError, match="finite"):
        DiTPipeline(tiny_model())([1], num_inference_steps=2, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="NaN/inf values"):
        DiTPipeline(tiny_model())([1], num_inference_steps=2, latents=torch.full((1, 3, 8, 8), float("inf")))


def test_euler_sde_is_stochastic_and_seeded(pipe):
    kw = {"sampler": "euler-sde", "num_inference_steps": 4}
    g = lambda s: [torch.Generator().manual_seed(s), torch.Generator().manual_seed(s + 1)]  # noqa: E731
    a, b = _lat(pipe, generator=g(1), **kw).images, _lat(pipe, generator=g(1), **kw).images
    assert torch.equal(a, b)
    assert not torch.allclose(a, _lat(pipe, generator=g(5), **kw).images)
    assert not torch.allclose(a, _lat(pipe, sampler="euler", num_inference_steps=4).images)
    # eta > 0 replaces its default 1; ddim with eta 1 on the same grid is the same sampler
    half = _lat(pipe, generator=g(1), eta=0.5, **kw).images
    assert not torch.allclose(a, half)


def test_explicit_timesteps(pipe):
    out = _lat(pipe, sampler="dpm++2m", timesteps=[999, 500, 100, -1], guidance_scale=2.0)
    assert out.info["grid"] == [999.0, 500.0, 100.0, -1.0] and out.info["nfe"] == 3 and out.info["steps"] == 3
    with pytest.raises(ValueError, match="descending"):
        _lat(pipe, timesteps=[100, 500, -1])
    with pytest.raises(ValueError, match="clean point"):
        _lat(pipe, timesteps=[999, 500])
