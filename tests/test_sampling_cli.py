"""`ditkit sample` with the round-2 samplers: flags, header and npz metadata, output folders that never keep
stale images, and one-line errors (exit 2) for values that used to be replaced by defaults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import ditkit
from ditkit import DiTPipeline
from ditkit.cli.main import main
from ditkit.sampling.outputs import MANIFEST, read_meta


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    args = {
        "input_size": 8,
        "in_channels": 1,
        "num_classes": 3,
        "depth": 1,
        "hidden_size": 32,
        "num_heads": 2,
    }
    args.update(kw)
    model = ditkit.create_model("DiT-S/4", **args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.04)
    return model.eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, kw in {"cond": {}, "uncond": {"num_classes": 0}, "nonull": {"class_dropout_prob": 0.0}}.items():
        pipe = DiTPipeline(_model(**kw))
        pipe.save_pretrained(root / name)
        out[name] = root / name
    DiTPipeline(_model(seed=3)).save_pretrained(root / "guide")
    out["guide"] = root / "guide"
    bad = _model(seed=4)
    with torch.no_grad():
        bad.final_layer.linear.weight[0, 0] = float("nan")
    DiTPipeline(bad).save_pretrained(root / "nan")
    out["nan"] = root / "nan"
    return out


def sample(folder, out, *args):
    return main(["sample", "--ckpt", str(folder), "--out", str(out), "--no-progress", "--steps", "3", *args])


def test_header_and_npz_metadata(folders, tmp_path, capsys):
    args = ["--sampler", "dpm++2m", "--guidance-interval", "0", "0.7", "--guidance-scale", "2"]
    assert sample(folders["cond"], tmp_path / "s", *args) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert (
        "dpm++2m, 3 steps ('uniform' grid, 3 NFE per image), guidance 2 (classifier-free, interval 0-0.7)"
        in header
    )
    with np.load(tmp_path / "s" / "samples.npz", allow_pickle=False) as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (12, 8, 8, 3)
        assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == [0, 1, 2] * 4
    meta = read_meta(tmp_path / "s" / "samples.npz")
    assert meta["sampler"] == "dpm++2m" and meta["steps"] == 3 and meta["guidance_scale"] == 2.0
    assert meta["guidance_interval"] == [0.0, 0.7] and meta["grid"] == [999.0, 666.0, 333.0, -1.0]
    assert meta["nfe"] == 3
    # the precision the network ran in: `auto` resolved for this CPU, printed and recorded
    from ditkit import runtime

    auto = runtime.resolve_precision("auto", "cpu")
    assert meta["precision"] == auto and f"weights, {auto})" in header
    assert sample(folders["cond"], tmp_path / "s32", "--precision", "fp32") == 0
    assert read_meta(tmp_path / "s32" / "samples.npz")["precision"] == "fp32"


def test_second_run_replaces_its_own_outputs_and_nothing_else(folders, tmp_path, capsys):
    out = tmp_path / "s"
    assert sample(folders["cond"], out, "--num-per-label", "3") == 0
    assert len(list(out.glob("*.png"))) == 3 * 3 + 1
    (out / "notes.txt").write_text("mine")  # a user's file in a ditkit folder is left alone
    assert sample(folders["cond"], out, "--num-per-label", "1", "--labels", "2") == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["000000_2.png", "grid.png"]
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / MANIFEST).read_text())["files"] == ["000000_2.png", "grid.png", "samples.npz"]
    capsys.readouterr()


def test_foreign_folders_and_files_are_refused(folders, tmp_path, capsys):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.png").write_bytes(b"x")
    assert sample(folders["cond"], foreign) == 2
    err = capsys.readouterr().err
    assert "not empty and was not written by ditkit sample" in err and err.count("\n") == 1
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.png"]
    (tmp_path / "f").write_text("")
    assert sample(folders["cond"], tmp_path / "f") == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be at least 1, got 0"),
        (["--num-per-label", "0"], "--num-per-label must be at least 1, got 0"),
        (["--guidance-scale", "nan"], "--guidance-scale must be a finite number"),
        (["--guidance-scale", "inf"], "--guidance-scale must be a finite number"),
        (["--guidance-interval", "0.6", "0.2"], "--guidance-interval 0.6 0.2 must satisfy"),
        (["--guidance-interval", "0", "2"], "must satisfy 0 <= LO <= HI <= 1"),
        (["--steps", "1001"], "--steps 1001 exceeds this model's 1000 training timesteps"),
    ],
)
def test_bad_values_are_one_line_errors(folders, tmp_path, capsys, args, message):
    code = main(
        ["sample", "--ckpt", str(folders["cond"]), "--out", str(tmp_path / "s"), "--no-progress", *args]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()


def test_unconditional_counts_and_no_guidance_in_the_header(folders, tmp_path, capsys):
    assert sample(folders["uncond"], tmp_path / "u", "--num-per-label", "5") == 0
    text = capsys.readouterr().out
    assert (
        "sampling 5 images" in text
        and "no guidance (unconditional model)" in text
        and "guidance 4" not in text
    )
    assert len(list((tmp_path / "u").glob("0*.png"))) == 5
    assert sample(folders["uncond"], tmp_path / "u2", "--guidance-scale", "3") == 2
    assert "--guide-ckpt" in capsys.readouterr().err


def test_autoguidance_flag(folders, tmp_path, capsys):
    assert (
        sample(
            folders["cond"], tmp_path / "a", "--guide-ckpt", str(folders["guide"]), "--guidance-scale", "2"
        )
        == 0
    )
    assert "guidance 2 (autoguidance)" in capsys.readouterr().out
    assert read_meta(tmp_path / "a" / "samples.npz")["nfe"] == 6
    assert sample(folders["uncond"], tmp_path / "b", "--guide-ckpt", str(folders["cond"])) == 2
    assert "num_classes" in capsys.readouterr().err


def test_model_without_null_label_speaks_cli(folders, tmp_path, capsys):
    assert sample(folders["nonull"], tmp_path / "n", "--guidance-scale", "3") == 2
    err = capsys.readouterr().err
    assert "use --guidance-scale 1" in err and "guidance_scale=1" not in err
    assert sample(folders["nonull"], tmp_path / "n") == 0  # no flag: sampled unguided
    assert ", no guidance" in capsys.readouterr().out


def test_nan_weights_exit_2_without_writing(folders, tmp_path, capsys):
    assert sample(folders["nan"], tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert "'final_layer.linear.weight' holds NaN/inf" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_grid_flag(folders, tmp_path, capsys):
    assert sample(folders["cond"], tmp_path / "g", "--sampler", "unipc", "--grid", "karras") == 0
    assert "unipc, 3 steps ('karras' grid" in capsys.readouterr().out
    meta = read_meta(tmp_path / "g" / "samples.npz")
    assert meta["spacing"] == "karras" and meta["grid"][0] == 999.0 and meta["grid"][-2] == 0.0
