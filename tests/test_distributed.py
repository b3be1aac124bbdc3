"""`ditkit train` under torchrun: two CPU processes (gloo) give the result of one process with the same
global batch, because every random draw is made for the global batch and each rank takes its slice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ditkit.config import load_config
from ditkit.train import list_checkpoints, load_checkpoint, train

ARGS = [
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "model.patch_size=4",
    "data.image_size=8",
    "data.hflip=true",
    "train.threads=1",
    "train.precision=fp32",  # equality across processes: "auto" is bf16 on CPUs with AMX/AVX512-BF16
    "train.batch_size=16",
    "train.max_steps=6",
    "train.log_every=1",
    "train.ckpt_every=3",
    "train.weight_decay=0.01",
    "sample.steps=2",
    "sample.num_per_label=1",
]


@pytest.mark.distributed
def test_two_processes_match_one(tmp_path):
    single = train(
        load_config(None, [*ARGS, f"train.output_dir={tmp_path / 'one'}"]), progress=False, echo=False
    )

    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ditkit.cli.main", "train", "--output-dir", str(tmp_path / "two"), "--no-progress", "--set", *ARGS,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "two").iterdir())
    assert [r.name for r in runs] == ["001-DiT-Digits"]  # one run folder, written by rank 0 only
    run = runs[0]
    assert "2 process(es)" in (run / "log.txt").read_text()
    assert proc.stdout.count("checkpoint  ") == 1  # only rank 0 prints

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    two_losses = [r["loss"] for r in rows]
    assert len(two_losses) == 6
    assert two_losses == pytest.approx(single.losses, rel=1e-5, abs=1e-6)  # the all-reduced mean loss

    a = load_checkpoint(single.checkpoint)
    b = load_checkpoint(list_checkpoints(run)[-1])
    assert b["step"] == 6
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.allclose(a[key][name], b[key][name], rtol=1e-4, atol=1e-5), (key, name)


@pytest.mark.distributed
def test_two_processes_on_multi_attribute_images_with_a_broken_file(tmp_path):
    """Labels come with the images each rank reads (a broken file is replaced by the next one, label and
    all), dropout is drawn for the global batch: two processes still match one, and the list of skipped
    files names each file once."""
    from _data_helpers import broken, celeba_folder

    data = celeba_folder(tmp_path / "celeba", n=8)
    broken(data / "img_align_celeba" / "000003.jpg")
    args = [*ARGS, f"data.path={data}", "data.label_columns=[Male, Smiling]", "train.batch_size=8"]
    single = train(
        load_config(None, [*args, f"train.output_dir={tmp_path / 'one'}"]), progress=False, echo=False
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "ditkit.cli.main", "train", "--output-dir", str(tmp_path / "two"), "--no-progress", "--set", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = sorted((tmp_path / "two").iterdir())[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx(single.losses, rel=1e-5, abs=1e-6)
    for folder in (single.run_dir, run):
        listed = (folder / "skipped_images.txt").read_text().splitlines()
        assert len(listed) == 1 and listed[0].split("\t")[0].endswith("000003.jpg")
