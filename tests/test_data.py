"""Data: the embedded digits, the deterministic index stream, image folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ditkit.config import DataSection
from ditkit.data import (
    DIGIT_NAMES,
    FolderDataset,
    IndexStream,
    build_dataset,
    digits_dataset,
    load_digits_arrays,
    to_digit_space,
    to_model_space,
)


def test_digits_dataset():
    ds = digits_dataset(16)
    assert len(ds) == 1797 and ds.images.shape == (1797, 1, 16, 16) and ds.labels.dtype == torch.int64
    assert ds.label_names == DIGIT_NAMES == [str(i) for i in range(10)]
    assert float(ds.images.min()) == -1.0 and float(ds.images.max()) == 1.0
    assert sorted(ds.labels.unique().tolist()) == list(range(10))
    native = digits_dataset(8)
    raw, _ = load_digits_arrays()
    # at the native size the scaling is exact: 0..16 -> [-1, 1]
    assert torch.equal(native.images[:, 0], raw / 8 - 1)


def test_bundled_digits_equal_scikit_learns_loader(monkeypatch):
    """The CSV read (no scikit-learn import) gives exactly load_digits(); without the file, the fallback."""
    from sklearn.datasets import load_digits

    from ditkit.data import digits as digits_module

    ref = load_digits()
    for table in (True, False):
        if not table:
            monkeypatch.setattr(digits_module, "_bundled_digits_table", lambda: None)
        images, labels = load_digits_arrays()
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert torch.equal(images, torch.from_numpy(ref.images).float())
        assert torch.equal(labels, torch.from_numpy(ref.target).long())


def test_digit_space_round_trip():
    raw, _ = load_digits_arrays()
    assert torch.allclose(to_digit_space(to_model_space(raw, 8)), raw)
    back = to_digit_space(to_model_space(raw, 16))  # bicubic up, area down: close, not exact
    assert back.shape == raw.shape
    assert float((back - raw).abs().mean()) < 0.8  # on a 0..16 scale
    rgb = to_model_space(raw[:4], 16).repeat(1, 3, 1, 1)
    assert torch.allclose(to_digit_space(rgb), to_digit_space(to_model_space(raw[:4], 16)), atol=1e-5)


def test_index_stream_is_a_function_of_seed_and_step():
    s = IndexStream(10, seed=3)
    batches = [s.batch(i, 4) for i in range(5)]  # 20 indices = two epochs
    flat = torch.cat(batches)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:].tolist()) == list(range(10))
    assert not torch.equal(flat[:10], flat[10:])  # a fresh permutation each epoch
    fresh = IndexStream(10, seed=3)
    assert torch.equal(fresh.batch(3, 4), batches[3])  # no state: resuming at step 3 needs nothing saved
    assert not torch.equal(IndexStream(10, seed=4).batch(0, 4), batches[0])
    tiny = IndexStream(3, seed=0)  # smaller than a batch: epochs are concatenated
    assert tiny.batch(0, 5).shape == (5,)
    with pytest.raises(ValueError, match="empty"):
        IndexStream(0, seed=0)


def _png(path, size, color, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_dataset(tmp_path):
    _png(tmp_path / "cats" / "a.png", (40, 30), (255, 0, 0))
    _png(tmp_path / "cats" / "b.png", (30, 30), (255, 0, 0))
    _png(tmp_path / "dogs" / "c.png", (64, 80), 128, mode="L")
    ds = build_dataset(DataSection(path=str(tmp_path), image_size=16))
    assert isinstance(ds, FolderDataset)
    assert ds.label_names == ["cats", "dogs"] and ds.num_classes == 2 and ds.channels == 3
    x, y = ds.load(torch.tensor([0, 2]))
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1]
    assert torch.allclose(x[0, 0], torch.ones(16, 16)) and torch.allclose(x[0, 1], -torch.ones(16, 16))
    assert np.isclose(float(x[1].mean()), 128 / 127.5 - 1, atol=1e-6)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_dataset(DataSection(path=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="no images found"):
        build_dataset(DataSection(path=str(tmp_path)))
    with pytest.raises(ValueError, match="needs your images"):
        build_dataset(DataSection(path=""))
    _png(tmp_path / "x.png", (20, 20), (0, 0, 0))
    flat = build_dataset(DataSection(path=str(tmp_path), image_size=8))
    assert flat.label_names is None and flat.num_classes == 0  # no subfolders: unconditional
