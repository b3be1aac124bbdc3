"""`ditkit lr-find`: the LR range test on the digits suggests a learning rate in the range that trains."""

import json

import pytest

from ditkit.cli.lr_find import lr_range_test, suggest
from ditkit.config import load_config

TINY = [
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.batch_size=16",
    "train.threads=1",
]


def test_lr_finder_on_digits_suggests_a_training_lr(tmp_path, capsys):
    from ditkit.cli.main import main

    assert main(["lr-find", "--set", *TINY, "--start-lr", "1e-5", "--steps", "30", "--out", str(tmp_path),
                 "--no-progress"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "lr_find.json").read_text())
    lr = result["suggested_lr"]
    # the digits train with lr 1e-4 .. 1e-2 (the recipe uses 2e-3); 1e-5 barely moves, 1 diverges
    assert 1e-4 <= lr <= 2e-2
    smoothed, lrs = result["smoothed"], result["lrs"]
    at = next(i for i, v in enumerate(lrs) if v >= lr)
    assert min(smoothed[at:]) < 0.9 * smoothed[0]  # the loss falls at and beyond the suggestion
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-5)
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    assert "suggested max lr" in capsys.readouterr().out


def test_suggestion_on_a_known_curve():
    lrs = [10 ** (-6 + 0.25 * i) for i in range(21)]  # 1e-6 .. 1e-1
    # flat, then falling fastest around 1e-4, lowest at 1e-2, then rising
    smoothed = [1.0] * 6 + [0.95, 0.8, 0.6, 0.45, 0.35, 0.3, 0.27, 0.25, 0.24, 0.3, 0.6, 1.2, 2.0, 3.0, 4.0]
    s = suggest(lrs, smoothed)
    assert s["min_loss_lr"] == pytest.approx(lrs[14])
    assert s["suggested_lr"] == pytest.approx(lrs[14] / 10)
    assert 1e-5 < s["steepest_lr"] < 1e-3


def test_bad_sweep_settings():
    cfg = load_config(None, TINY)
    with pytest.raises(ValueError, match="start-lr"):
        lr_range_test(cfg, start_lr=1e-2, end_lr=1e-3, steps=10)
    with pytest.raises(ValueError, match="at least 5"):
        lr_range_test(cfg, steps=2)
