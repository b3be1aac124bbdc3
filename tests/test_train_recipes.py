"""Recipes that follow the data, the run-time estimate, and the safety rules of a run folder (resume into
ditkit run folders only, one run at a time, no empty folder after a failed start, no 'grad 0.000')."""

from __future__ import annotations

import shutil

import pytest
import torch

from _data_helpers import TINY_RUN, class_folder
from ditkit.cli.main import main
from ditkit.config import load_config
from ditkit.io.native import CHECKSUM_KEY, checkpoint_checksums
from ditkit.train import list_checkpoints, load_checkpoint, train
from ditkit.train.checkpoint import RunLock
from ditkit.train.setup import infer_image_size

TINY = [*TINY_RUN, "train.batch_size=8", "train.precision=fp32", "train.sample_every=0", "sample.steps=2"]


def tiny(tmp_path, *extra):
    return load_config(None, [*TINY, f"train.output_dir={tmp_path / 'runs'}", *extra])


# -- recipes that follow the data -------------------------------------------------------------------
def test_generic_recipe_with_data_infers_the_image_size(tmp_path):
    data = class_folder(tmp_path / "data")  # 12x10 images
    cfg = load_config("data", [f"data.path={data}"])
    assert cfg.data.image_size == 0 and cfg.train.lr == 1e-4 and cfg.train.batch_size == 32
    sized, dataset, notes = infer_image_size(cfg)
    assert sized.data.image_size == 8 and dataset.image_size == 8  # native 10px, rounded down to 8
    assert "inferred: the images' own size, 10px" in notes[0]
    with_vae = load_config("data", [f"data.path={data}", "data.vae=/some/vae"])
    assert infer_image_size(with_vae)[0].data.image_size == 256
    digits = load_config("data", ["data.path=digits"])
    assert infer_image_size(digits)[0].data.image_size == 8


def test_cli_picks_the_recipe_from_the_data_and_refuses_what_it_cannot_infer(tmp_path, capsys):
    data = class_folder(tmp_path / "data")
    assert main(["train", "--data", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe: data" in out and "image_size: 0" in out and "name: auto" in out
    assert main(["train", "--dry-run"]) == 0 and "recipe: digits" in capsys.readouterr().out
    junk = tmp_path / "junk" / "a"
    junk.mkdir(parents=True)
    (junk / "x.png").write_bytes(b"not an image")
    (junk / "y.png").write_bytes(b"not an image")
    assert main(["train", "--data", str(junk.parent), "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "cannot infer the image size" in err and "--image-size N" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["train", "--process", "flw", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "process.kind must be one of ddpm" in err and "'flw'" in err


def test_the_run_time_estimate_and_the_precision_are_logged(tmp_path):
    result = train(tiny(tmp_path, "train.max_steps=2"), progress=False, echo=False)
    log = (result.run_dir / "log.txt").read_text()
    assert "measured " in log and " s/step; 2 steps: about " in log
    assert "precision fp32" in log and "lr schedule: constant lr 0.002 over 2 steps" in log
    assert load_checkpoint(result.checkpoint)["precision"] == "fp32"


def test_the_last_log_line_has_the_real_gradient_norm(tmp_path):
    result = train(tiny(tmp_path, "train.max_steps=7", "train.log_every=5"), progress=False, echo=False)
    lines = [
        line for line in (result.run_dir / "log.txt").read_text().splitlines() if line.startswith("step ")
    ]
    assert lines[-1].startswith("step       7/7")
    grad = float(lines[-1].split(" grad ")[1].split()[0])
    assert grad > 0


# -- resume safety ----------------------------------------------------------------------------------
def test_resume_from_a_users_folder_writes_a_new_run_folder(tmp_path):
    first = train(tiny(tmp_path, "train.max_steps=2"), progress=False, echo=False)
    mine = tmp_path / "my_things"
    mine.mkdir()
    shutil.copy(first.checkpoint, mine / "model.pt")
    for name in ("config.yaml", "grid.png", "metrics.jsonl"):
        (mine / name).write_text("mine")
    cfg = tiny(tmp_path, "train.max_steps=3")
    resumed = train(cfg, resume=mine / "model.pt", progress=False, echo=False)
    assert resumed.run_dir != mine and resumed.run_dir.parent == tmp_path / "runs" and resumed.step == 3
    assert all((mine / name).read_text() == "mine" for name in ("config.yaml", "grid.png", "metrics.jsonl"))
    assert sorted(p.name for p in mine.iterdir()) == ["config.yaml", "grid.png", "metrics.jsonl", "model.pt"]
    assert "is not a ditkit run folder" in (resumed.run_dir / "log.txt").read_text()


def test_a_run_in_use_is_not_resumed_twice(tmp_path):
    first = train(tiny(tmp_path, "train.max_steps=2"), progress=False, echo=False)
    lock = RunLock(first.run_dir).acquire()  # another `ditkit train` holds the run
    try:
        with pytest.raises(ValueError) as info:
            train(tiny(tmp_path, "train.max_steps=3"), resume=first.run_dir, progress=False, echo=False)
    finally:
        lock.release()
    assert "is in use by another `ditkit train`" in str(info.value) and "\n" not in str(info.value)
    assert [p.name for p in list_checkpoints(first.run_dir)] == ["0000002.pt"]
    again = train(tiny(tmp_path, "train.max_steps=3"), resume=first.run_dir, progress=False, echo=False)
    assert again.step == 3  # the lock went with its holder


def test_init_from_nan_weights_names_the_key_and_leaves_no_folder(tmp_path):
    source = train(tiny(tmp_path / "src", "train.max_steps=1"), progress=False, echo=False)
    ckpt = load_checkpoint(source.checkpoint)
    for key in ("model", "ema"):
        ckpt[key]["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    ckpt[CHECKSUM_KEY] = checkpoint_checksums(ckpt)  # as a diverged run saves it: the checksums agree
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    runs = tmp_path / "new"
    cfg = load_config(None, [*TINY, f"train.output_dir={runs}", f"model.init_from={bad}"])
    with pytest.raises(ValueError, match=r"non-finite weights \(NaN/inf\) in key 'blocks.0.attn.qkv.weight'"):
        train(cfg, progress=False, echo=False)
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow  # the digits judge fits its classifier on first use
def test_eval_every_judges_the_samples_and_logs_loss_by_noise_level(tmp_path):
    result = train(tiny(tmp_path, "train.max_steps=2", "train.eval_every=2", "train.log_every=2"),
                   progress=False, echo=False)  # fmt: skip
    import json

    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert evals and evals[-1]["step"] == 2 and 0.0 <= evals[-1]["eval/accuracy"] <= 1.0
    bins = [k for r in rows for k in r if k.startswith("loss_t/")]
    assert bins  # loss per quarter of the noise level t
    assert "eval accuracy" in (result.run_dir / "log.txt").read_text()


def test_train_process_flow_end_to_end_then_sample(tmp_path, capsys):
    """`ditkit train --process flow` on the embedded default's data: the checkpoint records the process, the
    flow time input and no learned sigma; its grids and `ditkit sample` use a sampler that samples flow."""
    sets = [x for pair in (("--set", s) for s in [*TINY, "train.max_steps=2"]) for x in pair]
    args = ["train", "--process", "flow", "--output-dir", str(tmp_path / "runs"), *sets]
    assert main(args) == 0
    ckpt = load_checkpoint(list_checkpoints(next((tmp_path / "runs").iterdir()))[-1])
    assert ckpt["config"]["process"]["kind"] == "flow"
    assert ckpt["model_config"]["time_input"] == "flow" and ckpt["model_config"]["learn_sigma"] is False
    assert ckpt["config"]["sample"]["sampler"] == "dpm++2m"
    capsys.readouterr()
    out = tmp_path / "samples"
    assert main(["sample", "--ckpt", str(tmp_path / "runs"), "--out", str(out), "--no-progress"]) == 0
    assert "dpm++2m" in capsys.readouterr().out and (out / "grid.png").exists()
    assert main(["sample", "--ckpt", str(tmp_path / "runs"), "--sampler", "ddpm", "--out", str(out)]) == 2
    assert "flow" in capsys.readouterr().err
