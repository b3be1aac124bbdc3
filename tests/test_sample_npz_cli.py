"""`ditkit sample --num N --npz OUT.npz`: the ADM layout, balanced labels, the same images whatever the batch
size, and resume from finished shards; `--precision` picks the network's weight dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ditkit
from ditkit import DiTPipeline
from ditkit.cli.main import main


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    model = ditkit.create_model(
        "DiT-S/4", input_size=8, in_channels=1, num_classes=3, depth=1, hidden_size=32, num_heads=2
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.04)
    root = tmp_path_factory.mktemp("npzmodel")
    DiTPipeline(model.eval()).save_pretrained(root / "m")
    return root / "m"


def _sample(folder, npz, *extra):
    args = ["sample", "--ckpt", str(folder), "--num", "6", "--npz", str(npz), "--steps", "3"]
    return main([*args, "--no-progress", "--precision", "fp32", "--out", str(npz.parent), *extra])


def test_npz_layout_balanced_and_batch_independent(folder, tmp_path, capsys):
    from ditkit.sampling.outputs import read_meta

    a, b = tmp_path / "a" / "s.npz", tmp_path / "b" / "s.npz"
    assert _sample(folder, a, "--class-mode", "balanced", "--batch-size", "6") == 0
    assert "fp32 weights) ->" in capsys.readouterr().out  # the precision, printed and recorded
    assert read_meta(a)["precision"] == "fp32" and read_meta(a)["class_mode"] == "balanced"
    assert _sample(folder, b, "--class-mode", "balanced", "--batch-size", "2") == 0
    da, db = np.load(a), np.load(b)
    assert da["arr_0"].dtype == np.uint8 and da["arr_0"].shape == (6, 8, 8, 3)
    assert da["arr_1"].dtype == np.int64 and np.bincount(da["arr_1"], minlength=3).tolist() == [2, 2, 2]
    np.testing.assert_array_equal(da["arr_1"], db["arr_1"])
    # one seed per image index: the batch size changes nothing (up to one uint8 level of rounding)
    assert np.abs(da["arr_0"].astype(int) - db["arr_0"].astype(int)).max() <= 1


def test_num_zero_and_labels_with_num_are_refused(folder, tmp_path, capsys):
    assert _sample(folder, tmp_path / "z" / "s.npz") == 0
    capsys.readouterr()
    args = ["sample", "--ckpt", str(folder), "--num", "0", "--out", str(tmp_path / "y")]
    assert main(args) == 2
    assert "--num must be at least 1" in capsys.readouterr().err
    args = ["sample", "--ckpt", str(folder), "--num", "3", "--labels", "1", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert "--class-mode" in capsys.readouterr().err
