"""`ditkit train` and `ditkit sample` from the command line: dry runs, errors, a tiny end-to-end run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from _data_helpers import TINY_RUN
from ditkit.cli.main import main
from ditkit.config import RunConfig, load_config
from ditkit.train import list_checkpoints, load_checkpoint

TINY = [*TINY_RUN, "sample.steps=3"]


def ditkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The installed console script, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "ditkit.cli.main", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained in process through the CLI: (runs folder, stdout)."""
    runs = tmp_path_factory.mktemp("cli") / "runs"
    args = [
        "train",
        "--max-steps",
        "20",
        "--batch-size",
        "16",
        "--output-dir",
        str(runs),
        "--ckpt-every",
        "10",
    ]
    out = _main_out(args + ["--no-progress", "--set", *TINY])
    return runs, out


def _main_out(argv, capsys=None):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(argv)
    assert code == 0, buf.getvalue()
    return buf.getvalue()


def test_dry_run_prints_the_resolved_config(capsys):
    code = main(
        [
            "train",
            "--dry-run",
            "--lr",
            "3e-4",
            "--max-steps",
            "500",
            "--set",
            "data.hflip=true",
            "train.betas=0.9,0.95",
        ]
    )
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg = RunConfig.from_dict(printed)
    assert cfg == load_config(
        None, ["train.lr=3e-4", "train.max_steps=500", "data.hflip=true", "train.betas=0.9,0.95"]
    )
    assert main(["train", "wikiart", "--dry-run", "--data", "/art"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["path"] == "/art"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--dry-run", "--set", "train.lrr=1"], "did you mean 'train.lr'"),
        (["train", "--dry-run", "--set", "train.max_steps=many"], "train.max_steps expects an integer"),
        (["train", "--dry-run", "--model", "DiT-XXL/2"], None),
        (["train", "nosuchrecipe"], "neither a recipe nor a config file"),
        (["train", "--resume", "/nonexistent/ckpt.pt"], "no such checkpoint"),
        (["sample", "--ckpt", "/nonexistent/ckpt.pt"], "no such checkpoint"),
    ],
)
def test_errors_are_one_line_exit_2(argv, expected, capsys):
    if argv[-1] == "DiT-XXL/2":
        argv = ["train", "--model", "DiT-XXL/2", "--max-steps", "1", "--set", "train.threads=1"]
        expected = "unknown model 'DiT-XXL/2'"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_checkpoint_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["sample", "--ckpt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and err.count("\n") == 1


def test_train_then_sample_end_to_end(trained, tmp_path, capsys):
    runs, out = trained
    run = runs / "001-DiT-Digits"
    assert f"checkpoint  {run / 'checkpoints' / '0000020.pt'}" in out
    assert f"grid        {run / 'grid.png'}" in out
    assert (run / "grid.png").exists() and (run / "loss_curve.png").exists()

    out_dir = tmp_path / "samples"
    code = main(
        [
            "sample",
            "--ckpt",
            str(runs),
            "--labels",
            "3",
            "7",
            "--num-per-label",
            "2",
            "--steps",
            "4",
            "--out",
            str(out_dir),
            "--no-progress",
            "--seed",
            "5",
        ]
    )
    assert code == 0
    data = np.load(out_dir / "samples.npz")
    assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (4, 8, 8, 3)
    assert data["arr_1"].dtype == np.int64 and data["arr_1"].tolist() == [3, 7, 3, 7]
    assert (out_dir / "grid.png").exists()
    assert sorted(p.name for p in out_dir.glob("0*.png")) == [
        "000000_3.png",
        "000001_7.png",
        "000002_3.png",
        "000003_7.png",
    ]
    arr = data["arr_0"]
    assert np.array_equal(arr[..., 0], arr[..., 2])  # grayscale replicated to 3 channels

    # same seed, same images; another seed, other images; labels by name work too
    again = tmp_path / "again"
    main(
        [
            "sample",
            "--ckpt",
            str(run),
            "--labels",
            "3",
            "7",
            "--num-per-label",
            "2",
            "--steps",
            "4",
            "--out",
            str(again),
            "--no-progress",
            "--seed",
            "5",
        ]
    )
    assert np.array_equal(np.load(again / "samples.npz")["arr_0"], arr)
    capsys.readouterr()


def test_unknown_label_lists_the_valid_ones(trained, capsys):
    runs, _ = trained
    assert main(["sample", "--ckpt", str(runs), "--labels", "3", "seven", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'seven'" in err and "valid labels: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in err and err.count("\n") == 1
    assert main(["sample", "--ckpt", str(runs), "--labels", "12", "--no-progress"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_resume_with_conflicting_config_names_the_keys(trained, capsys):
    runs, _ = trained
    code = main(["train", "--resume", "auto", "--output-dir", str(runs), "--max-steps", "30", "--lr", "0.01"])
    assert code == 2
    err = capsys.readouterr().err
    assert "conflicts with the checkpoint" in err and "train.lr (checkpoint 0.002, now 0.01)" in err


def test_resume_dry_run_uses_the_runs_config(trained, capsys):
    runs, _ = trained
    assert (
        main(["train", "--resume", "auto", "--output-dir", str(runs), "--max-steps", "40", "--dry-run"]) == 0
    )
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["hidden_size"] == 32 and cfg["train"]["max_steps"] == 40


def test_console_script_and_ctrl_c(tmp_path):
    """A real process: Ctrl-C saves a checkpoint and exits 130; --resume auto continues from it."""
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "ditkit.cli.main",
        "train",
        "--max-steps",
        "100000",
        "--batch-size",
        "8",
        "--log-every",
        "2",
        "--output-dir",
        str(runs),
        "--no-progress",
        "--set",
        *TINY,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 90
        metrics = runs / "001-DiT-Digits" / "metrics.jsonl"
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.time() < deadline, (
                proc.stderr.read() if proc.poll() else "slow"
            )
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "resume with: ditkit train --resume" in out
    run = runs / "001-DiT-Digits"
    ckpts = list_checkpoints(run)
    assert len(ckpts) == 1
    step = load_checkpoint(ckpts[0])["step"]
    assert step >= 4

    resumed = ditkit(
        "train", "--resume", "auto", "--output-dir", str(runs), "--max-steps", str(step + 3), "--no-progress"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained {step + 3} steps" in resumed.stdout
    final = load_checkpoint(list_checkpoints(run)[-1])
    assert final["step"] == step + 3 and torch.isfinite(final["model"]["final_layer.linear.weight"]).all()


def test_the_default_trains_flow_and_samples_with_dpmpp_10_steps(tmp_path, capsys):
    """`ditkit train` with no process named trains flow matching (the embedded default); `ditkit sample`
    then uses the run's recorded sampler: dpm++2m, 10 steps, guidance 1.5."""
    from ditkit.sampling.outputs import read_meta
    from ditkit.train import load_checkpoint

    runs = tmp_path / "runs"
    tiny = [item for item in TINY if not item.startswith(("process.", "sample."))]
    out = _main_out(["train", "--max-steps", "3", "--batch-size", "8", "--output-dir", str(runs),
                     "--no-progress", "--set", *tiny])  # fmt: skip
    run = runs / "001-DiT-Digits"
    assert "process flow" in (run / "log.txt").read_text() and "sample:" in out
    ckpt = load_checkpoint(run / "checkpoints" / "0000003.pt")
    assert ckpt["config"]["process"]["kind"] == "flow" and not ckpt["config"]["model"].get("learn_sigma")
    assert (
        main(["sample", "--ckpt", str(runs), "--labels", "1", "--out", str(tmp_path / "s"), "--no-progress"])
        == 0
    )
    header = capsys.readouterr().out
    assert "dpm++2m, 10 steps" in header and "guidance 1.5" in header
    with np.load(tmp_path / "s" / "samples.npz", allow_pickle=False) as data:
        assert data["arr_0"].shape[0] == 4  # sample.num_per_label 4, the default
    meta = read_meta(tmp_path / "s" / "samples.npz")
    assert (meta["sampler"], meta["steps"], meta["nfe"]) == ("dpm++2m", 10, 10)
