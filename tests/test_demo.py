"""`ditkit demo` without a browser: the label pickers, the input bounds, generation, downloads, loading and
the command's failures before any server starts (no Gradio needed for these)."""

from __future__ import annotations

import socket
import zipfile

import numpy as np
import pytest
import torch

import ditkit
from ditkit.cli.main import main
from ditkit.demo import Bounds, GenerateRequest, build_spec, generate, parse_seed
from ditkit.demo.generate import load_upload, validate
from ditkit.demo.serve import check_address, checkpoint_name, load_pipeline, resolve_checkpoint
from ditkit.demo.spec import ANY, ANY_ID
from ditkit.encoders import ToyEncoder
from ditkit.pipeline import DiTPipeline

pytestmark = pytest.mark.usefixtures("offline_gradio_env")  # conftest.py


def tiny(num_classes=10, cond_dim=0, dropout=0.1):
    torch.manual_seed(0)
    return ditkit.create_model(
        "DiT-S/8",
        input_size=8,
        in_channels=1,
        num_classes=num_classes,
        depth=1,
        hidden_size=32,
        num_heads=2,
        class_dropout_prob=dropout,
        cond_dim=cond_dim,
    )


@pytest.fixture(scope="module")
def digits_pipe():
    return DiTPipeline(tiny(), id2label={i: str(i) for i in range(10)})


@pytest.fixture(scope="module")
def multi_pipe():
    attrs = {"genre": ["landscape", "portrait", "still_life"], "style": ["Impressionism", "Cubism"]}
    return DiTPipeline(tiny(num_classes=(3, 2)), attributes=attrs)


# -- label pickers ------------------------------------------------------------------------------------
def test_spec_classes_digits(digits_pipe):
    spec = build_spec(digits_pipe, "digits")
    assert spec.picker.kind == "classes"
    assert spec.picker.classes == [(str(i), i) for i in range(10)]
    assert spec.resolution == (8, 8) and spec.channels == 1
    assert spec.guidance
    assert spec.card["parameters"].endswith(
        f"({sum(p.numel() for p in digits_pipe.transformer.parameters()):,})"
    )
    assert spec.card["precision"] == "fp32" and spec.card["device"] == "cpu"
    assert spec.card["resolution"].startswith("8x8 px")
    # every registered sampler that runs a DDPM model, each with a default within the bound
    from ditkit.sampling import SAMPLERS

    assert set(spec.samplers) <= set(SAMPLERS) and "ddim" in spec.samplers
    assert spec.default_sampler == "ddim"
    assert all(1 <= s <= spec.max_steps <= 100 for s in spec.default_steps.values())


def test_spec_imagenet_names_without_id2label():
    # 1000 classes: the picker lists the ImageNet names the loader supplies (load_any), searchable by name
    from ditkit.io.loading import imagenet_id2label

    model = tiny(num_classes=1000)
    spec = build_spec(DiTPipeline(model, id2label=imagenet_id2label()), "in")
    assert len(spec.picker.classes) == 1000
    assert spec.picker.classes[0] == ("tench, Tinca tinca", 0)
    # no names at all: ids as names
    bare = build_spec(DiTPipeline(tiny(num_classes=4)), "bare")
    assert bare.picker.classes == [("0", 0), ("1", 1), ("2", 2), ("3", 3)]


def test_spec_attributes(multi_pipe):
    spec = build_spec(multi_pipe, "wikiart")
    assert spec.picker.kind == "attributes"
    assert list(spec.picker.attributes) == ["genre", "style"]
    assert spec.picker.attributes["genre"][0] == (ANY, ANY_ID)
    assert spec.picker.attributes["style"][1:] == [("Impressionism", 0), ("Cubism", 1)]
    assert spec.card["conditioning"] == "genre (3), style (2)"


def test_spec_embedding_and_unconditional():
    emb = build_spec(DiTPipeline(tiny(num_classes=0, cond_dim=16), encoder=ToyEncoder(16)), "emb")
    assert emb.picker.kind == "embedding" and emb.picker.cond_dim == 16 and emb.picker.has_encoder
    unc = build_spec(DiTPipeline(tiny(num_classes=0)), "unc")
    assert unc.picker.kind == "none" and not unc.guidance
    # trained without label dropout: no null label, so guidance is fixed at 1
    assert not build_spec(DiTPipeline(tiny(dropout=0.0)), "nodrop").guidance


# -- bounds -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": 0}, "steps must lie in 1..100"),
        ({"steps": 101}, "steps must lie in 1..100"),
        ({"steps": 2.5}, "steps must be an integer"),
        ({"num_images": 11}, "number of images must lie in 1..10"),
        ({"guidance_scale": 10.5}, "guidance scale must lie in 0..10"),
        ({"guidance_scale": -1}, "guidance scale must lie in 0..10"),
        ({"guidance_interval": (0.5, 0.2)}, "must not exceed its end"),
        ({"guidance_interval": (0.0, 1.5)}, "guidance interval end must lie in 0..1"),
        ({"sampler": "magic"}, "unknown sampler 'magic'; choose one of"),
        ({"class_id": 10}, "class must lie in 0..9"),
        ({"class_id": None}, "pick a class"),
    ],
)
def test_bounds_refused_with_the_bound(digits_pipe, change, message):
    spec = build_spec(digits_pipe, "digits")
    req = GenerateRequest(class_id=3, steps=2, num_images=1, seed=0)
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(spec, req)


def test_bounds_attributes_and_prompt(multi_pipe):
    spec = build_spec(multi_pipe, "w")
    with pytest.raises(ValueError, match=r"genre must lie in -1..2"):
        validate(spec, GenerateRequest(attributes={"genre": 3}, steps=2))
    with pytest.raises(ValueError, match=r"unknown attribute\(s\) \['artist'\]"):
        validate(spec, GenerateRequest(attributes={"artist": 0}, steps=2))
    emb = build_spec(DiTPipeline(tiny(num_classes=0, cond_dim=16), encoder=ToyEncoder(16)), "emb")
    with pytest.raises(ValueError, match="at most 300"):
        validate(emb, GenerateRequest(prompt="x" * 301, steps=2))
    with pytest.raises(ValueError, match="exactly one"):
        validate(emb, GenerateRequest(prompt="", steps=2))
    noenc = build_spec(DiTPipeline(tiny(num_classes=0, cond_dim=16)), "noenc")
    with pytest.raises(ValueError, match="no condition encoder"):
        validate(noenc, GenerateRequest(prompt="a cat", steps=2))


def test_parse_seed():
    assert parse_seed("random") is None and parse_seed("") is None and parse_seed(None) is None
    assert parse_seed("42") == 42 and parse_seed(7) == 7 and parse_seed(3.0) == 3
    for bad in ("abc", -1, 2**63, 1.5):
        with pytest.raises(ValueError, match="seed must"):
            parse_seed(bad)


# -- generation ---------------------------------------------------------------------------------------
def test_generate_matches_the_pipeline_and_writes_downloads(digits_pipe, tmp_path):
    spec = build_spec(digits_pipe, "digits")
    seen = []
    req = GenerateRequest(class_id=3, steps=3, num_images=2, seed=5, guidance_scale=2.0)
    out = generate(digits_pipe, spec, req, progress=lambda i, n: seen.append((i, n)), out_dir=tmp_path)
    assert out.uint8.shape == (2, 8, 8, 3) and out.uint8.dtype == np.uint8
    assert out.labels.tolist() == [3, 3] and out.seed == 5
    # the same images as the pipeline called directly with the same per-image generators
    gens = [torch.Generator().manual_seed(5 * 1_000_003 + i) for i in range(2)]
    ref = digits_pipe([3, 3], num_inference_steps=3, guidance_scale=2.0, generator=gens, output_type="np")
    ref_u8 = np.repeat((ref.images * 255).round().clip(0, 255).astype(np.uint8), 3, axis=-1)
    np.testing.assert_array_equal(out.uint8, ref_u8)
    # the progress bar saw every step (when the pipeline has the callback)
    if "callback" in __import__("inspect").signature(digits_pipe.__call__).parameters:
        assert seen == [(1, 3), (2, 3), (3, 3)]
    with np.load(out.npz_path) as npz:
        np.testing.assert_array_equal(npz["arr_0"], out.uint8)
        assert npz["arr_1"].dtype == np.int64 and npz["arr_1"].tolist() == [3, 3]
    from PIL import Image

    with zipfile.ZipFile(out.zip_path) as zf:
        assert zf.namelist() == ["000000.png", "000001.png"]
        with zf.open("000001.png") as fh:
            np.testing.assert_array_equal(np.asarray(Image.open(fh).convert("RGB")), out.uint8[1])


def test_generate_random_seed_is_reported_and_reproducible(digits_pipe):
    spec = build_spec(digits_pipe, "digits")
    a = generate(digits_pipe, spec, GenerateRequest(class_id=1, steps=2, num_images=1, seed=None))
    b = generate(digits_pipe, spec, GenerateRequest(class_id=1, steps=2, num_images=1, seed=a.seed))
    np.testing.assert_array_equal(a.uint8, b.uint8)
    assert a.info["seed"] == a.seed


def test_generate_attributes_any_is_unguided(multi_pipe):
    spec = build_spec(multi_pipe, "w")
    req = GenerateRequest(attributes={"genre": 1, "style": ANY_ID}, steps=2, num_images=2, seed=0)
    out = generate(multi_pipe, spec, req)
    assert out.labels.tolist() == [[1, -1], [1, -1]]
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    ref = multi_pipe([{"genre": 1}] * 2, num_inference_steps=2, generator=gens, output_type="np")
    assert np.abs(out.uint8.astype(int) - np.repeat(ref.images * 255, 3, -1).round()).max() <= 1


def test_generate_embedding_prompt_and_upload(tmp_path):
    pipe = DiTPipeline(tiny(num_classes=0, cond_dim=16), encoder=ToyEncoder(16))
    spec = build_spec(pipe, "emb")
    out = generate(pipe, spec, GenerateRequest(prompt="a red sunset", steps=2, num_images=1, seed=0))
    assert out.uint8.shape == (1, 8, 8, 3) and out.labels.tolist() == [-1]
    from PIL import Image

    good = tmp_path / "cond.png"
    Image.new("RGB", (16, 16), (200, 10, 10)).save(good)
    out = generate(pipe, spec, GenerateRequest(image_path=str(good), steps=2, num_images=2, seed=0))
    assert out.uint8.shape == (2, 8, 8, 3)
    fake = tmp_path / "notes.png"
    fake.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="notes.png: not a readable image"):
        generate(pipe, spec, GenerateRequest(image_path=str(fake), steps=2, num_images=1))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt: not an image file; upload one of png"):
        load_upload(text, Bounds())
    with pytest.raises(ValueError, match="uploads are limited to 0 MB"):
        load_upload(good, Bounds(max_upload_bytes=10))


def test_generate_unconditional():
    pipe = DiTPipeline(tiny(num_classes=0))
    out = generate(pipe, build_spec(pipe, "unc"), GenerateRequest(steps=2, num_images=3, guidance_scale=1.0))
    assert out.uint8.shape == (3, 8, 8, 3)


# -- loading and the command's failures ---------------------------------------------------------------
def test_resolve_and_load(tmp_path, digits_pipe):
    digits_pipe.save_pretrained(tmp_path / "model")
    assert resolve_checkpoint(str(tmp_path / "model")) == tmp_path / "model"
    assert resolve_checkpoint(None, tmp_path / "runs") is None  # no runs: the demo offers to train
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resolve_checkpoint(str(tmp_path / "missing"))
    pipe = load_pipeline(tmp_path / "model", "cpu", "fp32")
    assert pipe.id2label == digits_pipe.id2label
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_pipeline(bad, "cpu", "fp32")
    assert (
        checkpoint_name(tmp_path / "003-DiT-Digits" / "checkpoints" / "0001200.pt")
        == "003-DiT-Digits (step 1200)"
    )


def test_cli_missing_and_unloadable_checkpoint_exit_2(tmp_path, capsys):
    assert main(["demo", "--ckpt", str(tmp_path / "nothing"), "--port", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ditkit demo: error: ") and "nothing" in err[0]
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    assert main(["demo", "--ckpt", str(tmp_path / "broken.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.safetensors" in err[0]


def test_cli_port_in_use_names_it_and_suggests_another(tmp_path, capsys, digits_pipe):
    digits_pipe.save_pretrained(tmp_path / "model")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ValueError, match=rf"port {port} on 127.0.0.1 is not free .*--port \d+"):
            check_address("127.0.0.1", port)
        assert main(["demo", "--ckpt", str(tmp_path / "model"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is not free" in err and "--port" in err
    with pytest.raises(ValueError, match="--port must lie in 1..65535"):
        check_address("127.0.0.1", 70000)


def test_newest_run_is_served(tmp_path, digits_pipe):
    from ditkit.train.checkpoint import checkpoint_path

    for run, step in (("001-DiT-Digits", 50), ("002-DiT-Digits", 20)):
        path = checkpoint_path(tmp_path / "runs" / run, step)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
    assert resolve_checkpoint(None, tmp_path / "runs") == checkpoint_path(
        tmp_path / "runs" / "002-DiT-Digits", 20
    )
    # a run folder given as --ckpt: its newest checkpoint
    assert resolve_checkpoint(str(tmp_path / "runs" / "001-DiT-Digits")).name == "0000050.pt"


class _FakeBlocks:
    def queue(self, **kw):
        self.queued = kw

    def launch(self, **kw):
        self.launched = kw


def test_launch_is_local_unshared_and_one_at_a_time():
    from ditkit.demo.serve import launch

    demo = _FakeBlocks()
    launch(demo, "127.0.0.1", 7860, Bounds())
    assert demo.queued["default_concurrency_limit"] == 1
    kw = demo.launched
    assert kw["share"] is False and kw["server_name"] == "127.0.0.1" and kw["server_port"] == 7860
    assert kw["max_file_size"] == Bounds().max_upload_bytes and not kw["inbrowser"]


def test_other_host_prints_a_warning(tmp_path, capsys, monkeypatch, digits_pipe):
    pytest.importorskip("gradio")
    import ditkit.demo.app

    digits_pipe.save_pretrained(tmp_path / "model")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt  # stop before any server starts

    monkeypatch.setattr(ditkit.demo.app, "build_app", stop)
    assert main(["demo", "--ckpt", str(tmp_path / "model"), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--port must lie in 1..65535" in capsys.readouterr().err
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    assert main(["demo", "--ckpt", str(tmp_path / "model"), "--host", "0.0.0.0", "--port", str(free)]) == 130
    err = capsys.readouterr().err
    assert "warning: serving on 0.0.0.0: anyone who can reach this machine" in err


def test_handler_turns_failures_into_one_line_errors(tmp_path, digits_pipe):
    gr = pytest.importorskip("gradio")
    from ditkit.demo.app import api_names, make_handler

    spec = build_spec(digits_pipe, "digits")
    run = make_handler(digits_pipe, spec, tmp_path)
    assert list(__import__("inspect").signature(run).parameters) == [*api_names(spec), "progress"]
    images, files, info = run(3, "ddim", 2, 4.0, 0.0, 1.0, "9", 2)
    assert len(images) == 2 and [f.rsplit("/", 1)[1] for f in files] == ["images.zip", "samples.npz"]
    assert "seed: 9" in info
    with pytest.raises(gr.Error, match=r"^'?steps must lie in 1..100, got 0'?$"):
        run(3, "ddim", 0, 4.0, 0.0, 1.0, "9", 2)

    class Broken:
        def __getattr__(self, name):
            return getattr(digits_pipe, name)

        def __call__(self, *args, **kwargs):
            raise RuntimeError("CUDA out of memory\nmore detail")

    broken = make_handler(Broken(), spec, tmp_path)
    with pytest.raises(gr.Error, match=r"generation failed: RuntimeError: CUDA out of memory'?$"):
        broken(3, "ddim", 2, 4.0, 0.0, 1.0, "9", 1)


def test_the_page_starts_from_the_runs_own_sampling_settings():
    """A ditkit run records how it samples (the digits default: ddpm, 100 steps, guidance 1.5); the page's
    controls start there, and fall back to ddim / its default steps / guidance 4 for foreign files."""
    pipe = DiTPipeline(tiny())
    foreign = build_spec(pipe, "foreign")
    assert foreign.default_sampler == "ddim" and foreign.default_guidance == 4.0
    pipe.sample_defaults = {"sampler": "ddpm", "steps": 100, "guidance_scale": 1.5}
    spec = build_spec(pipe, "run")
    assert spec.default_sampler == "ddpm" and spec.default_steps["ddpm"] == 100
    assert spec.default_guidance == 1.5


def test_tiny_images_are_shown_as_pixels(digits_pipe):
    """8x8 digits are upscaled nearest-neighbour in the gallery (a blur otherwise); large images are not."""
    import dataclasses

    from ditkit.demo.app import CSS, page_css

    spec = build_spec(digits_pipe, "digits")
    assert "image-rendering: pixelated" in page_css(spec) and page_css(spec).startswith(CSS)
    assert page_css(dataclasses.replace(spec, resolution=(256, 256))) == CSS
