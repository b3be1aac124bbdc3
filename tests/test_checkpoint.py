"""Checkpoints: the agreed format, weights-only loading, atomic writes (also under SIGKILL), finding runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from _data_helpers import TINY_RUN
from ditkit.conditioning import Conditioning
from ditkit.config import load_config
from ditkit.io.native import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CHECKSUM_KEY,
    model_from_checkpoint,
    safe_torch_load,
    weights_checksum,
)
from ditkit.train import (
    CHECKPOINT_KEYS,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint,
    new_run_dir,
    resolve_resume,
    save_checkpoint,
    train,
)
from ditkit.train.checkpoint import clean_stale_temporaries

TINY = [*TINY_RUN, "train.batch_size=16", "train.sample_every=0", "sample.steps=2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt") / "runs"
    cfg = load_config(None, [*TINY, f"train.output_dir={root}", "train.max_steps=4", "train.ckpt_every=2"])
    return train(cfg, progress=False, echo=False)


def test_checkpoint_format(run):
    raw = torch.load(run.checkpoint, map_location="cpu", weights_only=True)  # no code is unpickled
    assert set(raw) == {*CHECKPOINT_KEYS, "conditioning", "precision", CHECKSUM_KEY}
    assert raw[CHECKSUM_KEY] == {"model": weights_checksum(raw["model"]), "ema": weights_checksum(raw["ema"])}
    assert raw["precision"] in ("fp32", "bf16")  # the resolved precision the run trained in
    cond = Conditioning.from_dict(raw["conditioning"])
    assert cond.kind == "class" and cond.sizes == (10,) and cond.label_names() == raw["label_names"]
    assert raw["format"] == CHECKPOINT_FORMAT and raw["version"] == CHECKPOINT_VERSION == 1
    assert raw["step"] == 4 and isinstance(raw["config"], dict) and raw["config"]["recipe"] == "digits"
    assert raw["label_names"] == [str(i) for i in range(10)]
    assert set(raw["rng"]) >= {"generator", "torch"} and raw["scheduler"]["kind"] == "constant"
    assert raw["optimizer"]["state"] and raw["ditkit_version"]
    model = model_from_checkpoint(raw)  # EMA weights by default
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw["ema"][name])
    assert model.config.input_size == 8 and model.config.in_channels == 1 and model.config.num_classes == 10
    raw_model = model_from_checkpoint(raw, use_ema=False)
    assert torch.equal(raw_model.final_layer.linear.weight, raw["model"]["final_layer.linear.weight"])


def test_finding_checkpoints(run, tmp_path):
    run_dir, runs = run.run_dir, run.run_dir.parent
    assert [p.name for p in list_checkpoints(run_dir)] == ["0000002.pt", "0000004.pt"]
    assert find_checkpoint(run.checkpoint) == run.checkpoint
    assert find_checkpoint(run_dir) == run.checkpoint  # a run folder: its newest checkpoint
    assert find_checkpoint(runs) == run.checkpoint  # a runs folder: the newest run's
    assert resolve_resume("auto", runs) == run.checkpoint
    empty = new_run_dir(runs, "DiT-XL/2")  # a newer run without checkpoints is skipped
    assert empty.name == "002-DiT-XL-2"
    assert find_checkpoint(runs) == run.checkpoint
    with pytest.raises(FileNotFoundError, match="no runs"):
        resolve_resume("auto", tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="no checkpoints found"):
        find_checkpoint(empty)
    with pytest.raises(FileNotFoundError):
        find_checkpoint(tmp_path / "missing.pt")


def test_bad_files_give_one_line_errors(run, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(run.checkpoint.read_bytes()[:5000])
    for path in (garbage, truncated):
        with pytest.raises(ValueError) as info:
            load_checkpoint(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    code = tmp_path / "code.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _Evil()}, code)
    with pytest.raises(ValueError, match="refused to load"):
        load_checkpoint(code)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="not a ditkit training checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_keep_last_and_failed_save_leaves_previous(run, tmp_path, monkeypatch):
    ckpt = load_checkpoint(run.checkpoint)
    for step in (1, 2, 3):
        save_checkpoint({**ckpt, "step": step}, tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["0000002.pt", "0000003.pt"]

    def failing_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        save_checkpoint({**ckpt, "step": 4}, tmp_path, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["0000002.pt", "0000003.pt"]
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # the temporary file is cleaned up
    assert load_checkpoint(list_checkpoints(tmp_path)[-1])["step"] == 3


def test_sigkill_during_save_leaves_previous_checkpoint_loadable(run, tmp_path):
    """A real kill -9 while torch.save is writing a large checkpoint."""
    script = textwrap.dedent(
        f"""
        import sys, torch
        from ditkit.train import load_checkpoint, save_checkpoint
        ckpt = load_checkpoint({str(run.checkpoint)!r})
        ckpt["model"]["big"] = torch.randn(48 * 1024 * 1024)  # ~200 MB: a save takes a while
        save_checkpoint({{**ckpt, "step": 1}}, {str(tmp_path)!r}, keep_last=5)
        print("saved", flush=True)
        for step in range(2, 100):
            save_checkpoint({{**ckpt, "step": step}}, {str(tmp_path)!r}, keep_last=5)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saved"
        folder = tmp_path / "checkpoints"
        deadline = time.time() + 60
        while not list(folder.glob(".0000002.pt.*.tmp")):  # the second save has begun writing
            assert time.time() < deadline, "the second save never started"
            time.sleep(0.0005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(tmp_path)] == ["0000001.pt"]  # step 2 never appeared
    assert list(folder.glob(".*.tmp"))  # the half-written temporary is left behind ...
    assert find_checkpoint(tmp_path).name == "0000001.pt"  # ... and never mistaken for a checkpoint
    survived = load_checkpoint(find_checkpoint(tmp_path))
    assert survived["step"] == 1 and survived["model"]["big"].numel() == 48 * 1024 * 1024
    clean_stale_temporaries(tmp_path)
    assert not list(folder.glob(".*.tmp"))


def test_safe_load_is_weights_only(run):
    obj = safe_torch_load(run.checkpoint)
    assert obj["format"] == CHECKPOINT_FORMAT
