"""ditkit's FID Inception network (layout of pytorch-fid's weights file), its preprocessing, DINOv2 features and
`ditkit evaluate` end to end on tiny random weights."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditkit.evaluation import inception as inc

# The layout derived from the architecture (torchvision's Inception3 names, FID variant, 1008 classes, no aux
# head): a sample of keys with their shapes, and the totals. pytorch-fid's pt_inception-2015-12-05-6726825d.pth
# holds these 472 tensors (num_batches_tracked counters aside; there are 94 conv+BN units), 23,885,392 values
# in float32 (95.5 MB, the file is 95,628,359 bytes); 23,850,960 of them are parameters (torchvision's
# Inception3 without AuxLogits is 23,834,568 with 1000 classes; +8 x 2049 for 1008 classes).
LAYOUT = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch3x3dbl_3.bn.weight": (96,),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6d.branch1x1.conv.weight": (192, 768, 1, 1),  # TF mixed_6/conv: the sFID features
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.bn.running_mean": (384,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}
NUM_TENSORS, NUM_VALUES, NUM_PARAMS, NUM_CONV_BN = 472, 23_885_392, 23_850_960, 94


def _random_inception(seed=0):
    """Random weights with He-scaled convolutions, so activations neither vanish nor explode."""
    torch.manual_seed(seed)
    model = inc.FIDInceptionV3().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("conv.weight"):
                p.mul_(6**0.5)
    return model


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / inc.WEIGHTS_NAME
    state = {
        k: v for k, v in _random_inception().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    torch.save(state, path)
    return path


def test_layout_matches_the_weights_file_layout():
    state = inc.FIDInceptionV3().state_dict()
    tensors = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for key, shape in LAYOUT.items():
        assert tensors[key] == shape, key
    assert len(tensors) == NUM_TENSORS
    assert sum(int(np.prod(s)) for s in tensors.values()) == NUM_VALUES
    assert sum(p.numel() for p in inc.FIDInceptionV3().parameters()) == NUM_PARAMS
    assert sum(k.endswith("num_batches_tracked") for k in state) == NUM_CONV_BN
    assert not any("AuxLogits" in k for k in state)


def test_forward_shapes_and_outputs_at_299():
    model = _random_inception()
    x = inc.preprocess(torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8))
    assert x.shape == (1, 3, 299, 299)
    with torch.no_grad():
        out = model(x)
    assert out["pool"].shape == (1, 2048)
    assert out["logits_unbiased"].shape == out["logits"].shape == (1, 1008)
    assert out["spatial"].shape == (1, 7 * 17 * 17)
    torch.testing.assert_close(out["logits"], out["logits_unbiased"] + model.fc.bias)


def test_spatial_features_are_mixed_6d_branch1x1_in_nhwc_order():
    model = _random_inception()
    seen = {}
    model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("b1", o))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 299, 299))
    b1 = seen["b1"]  # (1, 192, 17, 17), after BN + ReLU
    assert b1.shape == (1, 192, 17, 17) and (b1 >= 0).all()
    torch.testing.assert_close(out["spatial"], b1[:, :7].permute(0, 2, 3, 1).reshape(1, -1))


def test_tf_resize_matches_a_plain_loop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1, 3, 5, 7)).astype(np.float64)
    out_h, out_w = 11, 4
    plain = np.zeros((1, 3, out_h, out_w))
    for y in range(out_h):  # TF1 ResizeBilinear, align_corners=False: source = dest * in / out (float32)
        sy = float(np.float32(y) * np.float32(5 / out_h))
        y0, y1, fy = int(sy), min(int(sy) + 1, 4), sy - int(sy)
        for x in range(out_w):
            sx = float(np.float32(x) * np.float32(7 / out_w))
            x0, x1, fx = int(sx), min(int(sx) + 1, 6), sx - int(sx)
            top = img[..., y0, x0] * (1 - fx) + img[..., y0, x1] * fx
            bottom = img[..., y1, x0] * (1 - fx) + img[..., y1, x1] * fx
            plain[..., y, x] = top * (1 - fy) + bottom * fy
    t = torch.from_numpy(img)
    got = (
        inc._tf1_resize_matrix(5, out_h, t.dtype, "cpu")
        @ t
        @ inc._tf1_resize_matrix(7, out_w, t.dtype, "cpu").T
    )
    np.testing.assert_allclose(got.numpy(), plain, rtol=1e-6)


def test_preprocess_modes():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    same = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(inc.preprocess(same, "tf"), (same.float() - 128) / 128)  # no resize at 299
    expected = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) / 127.5 - 1
    torch.testing.assert_close(inc.preprocess(x, "pytorch-fid"), expected)
    with pytest.raises(ValueError, match="tf, pytorch-fid"):
        inc.preprocess(x, "nearest")


def test_load_weights_round_trip_and_bad_files(weights_file, tmp_path):
    model = inc.load_fid_inception(weights_file)
    ref = _random_inception()
    for key, value in ref.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(model.state_dict()[key], value)
    with pytest.raises(FileNotFoundError, match="95,628,359 bytes"):
        inc.load_fid_inception(tmp_path / "missing.pth")
    partial = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"not the FID Inception weights: 2 keys missing .*6726825d"):
        inc.load_fid_inception(tmp_path / "partial.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="pt_inception-2015-12-05"):
        inc.load_fid_inception(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------ DINOv2
def test_dinov2_features_on_a_tiny_random_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    from ditkit.evaluation.dinov2 import IMAGENET_MEAN, IMAGENET_STD, load_dinov2

    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dino")
    features = load_dinov2(tmp_path / "dino")
    images = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    got = features(images)
    assert got.shape == (3, 32) and features.dim == 32
    # second path: EDM2's preprocessing written out, CLS token of the final (layer-normed) hidden state
    x = F.interpolate(images.float(), size=(224, 224), mode="bicubic", antialias=True) / 255
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = transformers.Dinov2Model.from_pretrained(tmp_path / "dino")(pixel_values=x).last_hidden_state
    torch.testing.assert_close(got, hidden[:, 0], rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_dinov2(tmp_path)


# ------------------------------------------------------------------------------------------ ditkit evaluate
@pytest.fixture
def small_inception(monkeypatch):
    monkeypatch.setattr(inc, "INPUT_SIZE", 75)  # the smallest input the network takes: fast tests


def _npz(path, images, **extra):
    np.savez(path, images, **extra)
    return path


def _cli(*argv):
    from ditkit.cli.main import main

    return main(["evaluate", *map(str, argv), "--no-progress"])


def test_evaluate_end_to_end(weights_file, small_inception, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    samples = _npz(tmp_path / "samples.npz", images, arr_1=np.arange(10))
    ref = _npz(tmp_path / "ref.npz", images)
    assert _cli(samples, "--ref", ref, "--inception", weights_file) == 0
    out = capsys.readouterr()
    assert "FID" in out.out and "10 samples scored" in out.err
    result = json.loads((tmp_path / "samples.eval.json").read_text())
    m = result["metrics"]
    assert m["fid"] == pytest.approx(0, abs=1e-6) and m["sfid"] == pytest.approx(0, abs=1e-6)
    assert (m["precision"], m["recall"]) == (1.0, 1.0)
    assert m["inception_score"] >= 1.0
    assert result["settings"]["resize_mode"] == "tf" and result["settings"]["precision_recall_k"] == 3
    assert (tmp_path / "ref.ditkit-cache.npz").is_file()
    # the cached reference gives the same numbers
    assert _cli(samples, "--ref", ref, "--inception", weights_file, "--out", tmp_path / "again.json") == 0
    assert json.loads((tmp_path / "again.json").read_text())["metrics"] == pytest.approx(m)


def test_given_reference_statistics_win_over_features():
    from ditkit.evaluation import frechet_distance
    from ditkit.evaluation.suite import metrics_from

    rng = np.random.default_rng(5)
    feats = rng.standard_normal((6, 8))
    sample = {"pool": feats, "mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False)}
    ref = {"pool": feats, "mu": np.ones(8), "sigma": np.eye(8), "given": True}
    expected = frechet_distance(sample["mu"], sample["sigma"], np.ones(8), np.eye(8))
    assert metrics_from(sample, ref)["fid"] == pytest.approx(expected)
    assert metrics_from(sample, {**ref, "given": False})["fid"] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow  # two 2048-d eigendecompositions: ~2 s on a quiet machine, far more on a busy one
def test_evaluate_uses_adm_reference_statistics_as_given(weights_file, small_inception, tmp_path):
    from ditkit.evaluation import frechet_distance

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    samples = _npz(tmp_path / "s.npz", images)
    mu, sigma = np.full(2048, 0.5), np.eye(2048) * 0.01
    d_s = 7 * 3 * 3  # the spatial size at the test's 75 px input (Mixed_6d is 3x3 there)
    ref = _npz(tmp_path / "r.npz", images, mu=mu, sigma=sigma, mu_s=np.zeros(d_s), sigma_s=np.eye(d_s))
    assert _cli(samples, "--ref", ref, "--inception", weights_file, "--out", tmp_path / "r.json") == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["settings"]["reference_stats"].startswith("reference file")
    assert result["metrics"]["fid"] > 1.0  # against the given statistics, not the (identical) images
    from ditkit.evaluation.npz import ImageBatch
    from ditkit.evaluation.suite import extract

    feats = extract(ImageBatch(samples), inc.load_fid_inception(weights_file), progress=False)
    assert result["metrics"]["fid"] == pytest.approx(
        frechet_distance(feats["mu"], feats["sigma"], mu, sigma), rel=1e-6
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("float", "float32 with values in"),
        ("chw", "channels first"),
        ("resolution", "samples are 16x16 but the reference is 24x24"),
        ("few", "needs at least 4"),
        ("weights", "95,628,359 bytes"),
        ("no-ref", "--ref"),
    ],
)
def test_evaluate_bad_input_one_line_exit_2(case, message, weights_file, small_inception, tmp_path, capsys):
    rng = np.random.default_rng(2)
    good = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    samples = {
        "float": good.astype(np.float32) / 255,
        "chw": good.transpose(0, 3, 1, 2),
        "few": good[:3],
    }.get(case, good)
    ref_images = rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8) if case == "resolution" else good
    s, r = _npz(tmp_path / "s.npz", samples), _npz(tmp_path / "r.npz", ref_images)
    weights = tmp_path / "nothing.pth" if case == "weights" else weights_file
    argv = [s, "--inception", weights] + ([] if case == "no-ref" else ["--ref", r])
    assert _cli(*argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ditkit evaluate: error:") and message in err[0], err


def test_evaluate_nan_features_one_line_exit_2(small_inception, tmp_path, capsys):
    state = {
        k: v for k, v in _random_inception().state_dict().items() if not k.endswith("num_batches_tracked")
    }
    state["Mixed_7c.branch_pool.bn.bias"][0] = float("nan")  # a corrupt weights file of the right layout
    torch.save(state, tmp_path / "nan.pth")
    images = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    s, r = _npz(tmp_path / "s.npz", images), _npz(tmp_path / "r.npz", images)
    assert _cli(s, "--ref", r, "--inception", tmp_path / "nan.pth") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN" in err[0], err


def test_evaluate_resize_samples_flag(weights_file, small_inception, tmp_path):
    rng = np.random.default_rng(3)
    s = _npz(tmp_path / "s.npz", rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    r = _npz(tmp_path / "r.npz", rng.integers(0, 256, (6, 24, 24, 3), dtype=np.uint8))
    assert _cli(s, "--ref", r, "--inception", weights_file, "--resize-samples", "--no-cache") == 0
    result = json.loads((tmp_path / "s.eval.json").read_text())
    assert result["settings"]["resized_samples_to"] == [24, 24]


def test_evaluate_with_dinov2(weights_file, small_inception, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dino")
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    s, r = _npz(tmp_path / "s.npz", images), _npz(tmp_path / "r.npz", images)
    other = _npz(tmp_path / "o.npz", 255 - images)
    assert _cli(s, "--ref", r, "--inception", weights_file, "--dinov2", tmp_path / "dino") == 0
    same = json.loads((tmp_path / "s.eval.json").read_text())["metrics"]["fd_dinov2"]
    assert _cli(other, "--ref", r, "--inception", weights_file, "--dinov2", tmp_path / "dino") == 0
    differ = json.loads((tmp_path / "o.eval.json").read_text())["metrics"]["fd_dinov2"]
    assert same == pytest.approx(0.0, abs=1e-5) and differ > 1e-3


def test_evaluate_digits(tmp_path, capsys):
    from ditkit.data import load_digits_arrays

    images, labels = load_digits_arrays()
    real = (images.numpy()[:200] / 16 * 255).round().astype(np.uint8)[..., None]
    s = _npz(tmp_path / "digits.npz", real, arr_1=labels.numpy()[:200])
    assert _cli(s, "--digits") == 0
    result = json.loads((tmp_path / "digits.eval.json").read_text())
    assert result["metrics"]["accuracy"] > 0.98
    assert "accuracy" in capsys.readouterr().out
    no_labels = _npz(tmp_path / "nolabels.npz", real)
    assert _cli(no_labels, "--digits") == 2
