"""Sampling to one .npz: image k is the same whatever the batch size, shard size or number of processes; a run
that dies resumes from its finished shards without duplicating or dropping images."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ditkit import sample_at_scale as sas

SCRIPT = """
import sys, torch
from ditkit.models import DiT, ModelConfig
from ditkit.pipeline import DiTPipeline
from ditkit.sample_at_scale import sample_to_npz
torch.set_num_threads(1)
torch.manual_seed(0)
model = DiT(ModelConfig(input_size=8, in_channels=3, num_classes=5, depth=1, hidden_size=32, num_heads=2, patch_size=4))
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.04)
pipe = DiTPipeline(model.eval())
sample_to_npz(pipe, 11, sys.argv[1], batch_size=int(sys.argv[2]), shard_size=int(sys.argv[3]), seed=3,
              sampler="ddpm", num_inference_steps=3, guidance_scale=2.0, progress=False)
"""


def _pipe(num_classes=5):
    from ditkit.models import DiT, ModelConfig
    from ditkit.pipeline import DiTPipeline

    torch.manual_seed(0)
    cfg = ModelConfig(
        input_size=8,
        in_channels=3,
        num_classes=num_classes,
        depth=1,
        hidden_size=32,
        num_heads=2,
        patch_size=4,
    )
    model = DiT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.04)  # zero-init would give every label the same image
    return DiTPipeline(model.eval())


KW = dict(seed=3, sampler="ddpm", num_inference_steps=3, guidance_scale=2.0, progress=False)


def _load(path):
    with np.load(path) as d:
        return d["arr_0"], d["arr_1"]


def test_image_k_does_not_depend_on_batch_or_shard_size(tmp_path):
    pipe = _pipe()
    a = sas.sample_to_npz(pipe, 11, tmp_path / "a.npz", batch_size=4, shard_size=3, **KW)
    b = sas.sample_to_npz(pipe, 11, tmp_path / "b.npz", batch_size=11, shard_size=11, **KW)
    (ia, la), (ib, lb) = _load(a), _load(b)
    assert ia.shape == (11, 8, 8, 3) and ia.dtype == np.uint8
    assert np.array_equal(la, lb)
    assert np.abs(ia.astype(int) - ib).max() <= 1  # batching may move a value across a rounding edge
    # image 5 alone, through the pipeline with its own generator, is image 5 of the file
    alone = pipe([int(la[5])], generator=[sas.image_generator(3, 5)], output_type="pt", sampler="ddpm",
                 num_inference_steps=3, guidance_scale=2.0).images  # fmt: skip
    assert np.abs(sas._to_uint8(alone)[0].astype(int) - ia[5]).max() <= 1
    meta = sas.read_npz_metadata(a)
    assert meta["sampler"] == "ddpm" and meta["steps"] == 3 and meta["guidance_scale"] == 2.0
    assert meta["seed"] == 3 and meta["class_mode"] == "random" and meta["precision"] == "fp32"
    assert not (tmp_path / "a.shards").exists()  # shards are removed once gathered
    # one metadata layout for every npz ditkit writes: `meta`, as `ditkit sample`'s samples.npz
    from ditkit.sampling.outputs import read_meta

    with np.load(a, allow_pickle=False) as data:
        assert "meta" in data.files and "metadata" not in data.files
    assert read_meta(a) == meta
    old = tmp_path / "old.npz"  # the layout `--num` wrote before: a 0-d `metadata` string
    np.savez(old, arr_0=ia, arr_1=la, metadata=np.array('{"sampler": "ddim"}'))
    assert read_meta(old) == sas.read_npz_metadata(old) == {"sampler": "ddim"}


def test_killed_run_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch):
    pipe = _pipe()
    full = sas.sample_to_npz(pipe, 10, tmp_path / "full.npz", batch_size=2, shard_size=3, **KW)
    real = sas._sample_range
    state = {"die_at": 6, "sampled": []}

    def dies_at_shard_three(pipe, start, end, *args):
        if start == state["die_at"]:
            raise KeyboardInterrupt  # the process is stopped in the middle of shard 3
        state["sampled"].append(start)
        return real(pipe, start, end, *args)

    monkeypatch.setattr(sas, "_sample_range", dies_at_shard_three)
    with pytest.raises(KeyboardInterrupt):
        sas.sample_to_npz(pipe, 10, tmp_path / "run.npz", batch_size=2, shard_size=3, **KW)
    assert sorted(p.name for p in (tmp_path / "run.shards").iterdir()) == [
        "shard-00000000-00000003.npz",
        "shard-00000003-00000006.npz",
    ]
    state.update(die_at=None, sampled=[])
    out = sas.sample_to_npz(pipe, 10, tmp_path / "run.npz", batch_size=2, shard_size=3, **KW)
    assert state["sampled"] == [6, 9]  # only the two missing shards were sampled
    (a, la), (b, lb) = _load(full), _load(out)
    assert len(b) == 10 and np.array_equal(la, lb) and np.array_equal(a, b)


def test_shards_from_other_settings_are_refused(tmp_path):
    pipe = _pipe()
    shards = tmp_path / "x.shards"
    sas._write_npz(shards / "shard-00000000-00000004.npz", images=np.zeros((4, 8, 8, 3), np.uint8),
                   labels=np.zeros(4, np.int64), fingerprint=np.array("other settings"))  # fmt: skip
    with pytest.raises(ValueError, match="other settings"):
        sas.sample_to_npz(pipe, 4, tmp_path / "x.npz", batch_size=4, shard_size=4, **KW)


def test_class_modes_unconditional_and_default_name(tmp_path):
    assert sas.sample_labels(7, 3, "balanced", 0).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert sas.sample_labels(4, 3, "random", 5).tolist() == sas.sample_labels(4, 3, "random", 5).tolist()
    with pytest.raises(ValueError, match="random, balanced"):
        sas.sample_labels(4, 3, "uniform", 0)
    out = sas.sample_to_npz(_pipe(num_classes=0), 3, None, out_dir=tmp_path, batch_size=2, **KW)
    assert out.name == "model-size-8-ddpm-3-cfg-2.0-random-seed-3-n-3.npz"
    images, labels = _load(out)
    assert images.shape == (3, 8, 8, 3) and labels.tolist() == [-1, -1, -1]


@pytest.mark.distributed
def test_two_processes_equal_one_image_for_image(tmp_path):
    script = tmp_path / "sample.py"
    script.write_text(textwrap.dedent(SCRIPT))
    one = subprocess.run([sys.executable, str(script), tmp_path / "one.npz", "4", "2"], capture_output=True,
                         text=True, timeout=240)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "two.npz"), "3", "2"]  # fmt: skip
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    (a, la), (b, lb) = _load(tmp_path / "one.npz"), _load(tmp_path / "two.npz")
    assert len(b) == 11 and np.array_equal(la, lb)
    assert np.abs(a.astype(int) - b).max() <= 1
