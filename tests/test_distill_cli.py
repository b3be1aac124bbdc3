"""`ditkit distill` end to end on a tiny teacher: every mode runs on the trainer, resume is bit-exact, and bad
input gets one line and exit 2."""

from __future__ import annotations

import pytest
import torch

from _data_helpers import TINY as TINY_BASE
from ditkit.cli.main import build_parser, main

# DDPM teachers (flow teachers: tests/test_distill_flow.py), two blocks so a half-depth student has one
TINY = [*TINY_BASE, "model.depth=2"]
RUN = ["--batch-size", "8", "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A 2-step digits teacher (depth 2, width 32): enough to have a checkpoint with a run config."""
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--set", *TINY, "--max-steps", "2", "--output-dir", str(out), *RUN]) == 0
    return next(out.glob("*/checkpoints/*.pt"))


def _ckpt(out):
    from ditkit.train import load_checkpoint

    return load_checkpoint(sorted(out.glob("*/checkpoints/*.pt"))[-1])


def _distill(teacher, out, *extra):
    return main(
        ["distill", "--teacher", str(teacher), *extra, "--max-steps", "2", "--output-dir", str(out), *RUN]
    )


def test_output_mode_depth_pruned_student(teacher, tmp_path):
    assert _distill(teacher, tmp_path, "--set", "model.depth=1", "--init", "student-from-teacher") == 0
    ckpt = _ckpt(tmp_path)
    assert ckpt["model_config"]["depth"] == 1 and ckpt["config"]["distill"]["mode"] == "output"
    assert ckpt["config"]["distill"]["teacher"] == str(teacher.resolve())


def test_guidance_mode_student_takes_w(teacher, tmp_path):
    assert _distill(teacher, tmp_path, "--mode", "guidance") == 0
    ckpt = _ckpt(tmp_path)
    assert ckpt["model_config"]["guidance_embed"] is True
    assert (
        ckpt["config"]["distill"]["guidance_min"] == 1.0 and ckpt["config"]["distill"]["guidance_max"] == 4.0
    )


def test_pipeline_samples_a_guidance_student_in_one_forward_per_step(teacher):
    """A student fresh from the teacher (zero w-embedding) is the teacher's conditional model: the pipeline
    passes w to it instead of doubling the batch, so at any guidance_scale it reproduces the teacher at 1."""
    from ditkit.distill import init_student
    from ditkit.models import DiT
    from ditkit.pipeline import DiTPipeline

    ref = DiTPipeline.from_pretrained(teacher)
    student = DiT(ref.transformer.config.replace(guidance_embed=True))
    init_student(student, ref.transformer, "teacher")
    pipe = DiTPipeline(student.eval())
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    out = pipe([0, 1, 2], num_inference_steps=4, guidance_scale=3.0, generator=gens, output_type="np")
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    base = ref([0, 1, 2], num_inference_steps=4, guidance_scale=1.0, generator=gens, output_type="np")
    assert out.info["nfe"] == 4 and out.info["guidance_scale"] == 3.0
    assert abs(out.images - base.images).max() < 1e-5


def test_steps_mode_records_its_grid_and_halves_again(teacher, tmp_path):
    assert _distill(teacher, tmp_path / "a", "--mode", "steps", "--steps", "2") == 0
    ckpt = _ckpt(tmp_path / "a")
    d = ckpt["config"]["distill"]
    assert len(d["teacher_grid"]) == 5 and d["grid"] == d["teacher_grid"][::2] and d["grid"][-1] == -1
    assert ckpt["config"]["sample"]["sampler"] == "ddim" and ckpt["config"]["sample"]["steps"] == 2
    student = sorted((tmp_path / "a").glob("*/checkpoints/*.pt"))[-1]
    from ditkit.pipeline import DiTPipeline

    out = DiTPipeline.from_pretrained(student)([0, 1], guidance_scale=1.5, output_type="np")
    assert out.info["grid"] == d["grid"] and out.info["nfe"] == 2  # its own grid, one forward per step
    assert _distill(student, tmp_path / "b", "--mode", "steps") == 0  # a second round: 2 -> 1 step
    d2 = _ckpt(tmp_path / "b")["config"]["distill"]
    assert d2["teacher_grid"] == d["grid"] and d2["grid"] == [d["grid"][0], -1.0]


def test_distillation_resume_is_bit_exact(teacher, tmp_path):
    from ditkit.cli.distill import build_config
    from ditkit.train import train

    args = build_parser().parse_args(
        [
            "distill",
            "--teacher",
            str(teacher),
            "--mode",
            "guidance",
            "--max-steps",
            "4",
            "--batch-size",
            "8",
            "--set",
            "train.ckpt_every=2",
            "train.threads=1",
            "train.sample_every=0",
            "train.log_every=2",
        ]
    )
    config, _ = build_config(args)
    full = train(config, progress=False, echo=False, run_dir=tmp_path / "full")
    part = train(config, progress=False, echo=False, run_dir=tmp_path / "part", stop_at=2)
    assert part.step == 2
    resumed = train(config, progress=False, echo=False, resume=part.checkpoint)
    assert resumed.step == 4 and resumed.losses == full.losses[2:]
    a, b = torch.load(full.checkpoint, weights_only=True), torch.load(resumed.checkpoint, weights_only=True)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ditkit distill: error: ") and "\n" not in err
    return err


def test_teacher_that_is_not_a_model(tmp_path, capsys):
    junk = tmp_path / "teacher.pt"
    junk.write_bytes(b"definitely not a checkpoint")
    assert "teacher" in _one_line_error(capsys, ["distill", "--teacher", str(junk), "--dry-run"])


def test_student_of_another_input_shape(teacher, tmp_path, capsys):
    err = _one_line_error(
        capsys,
        [
            "distill",
            "--teacher",
            str(teacher),
            "--image-size",
            "16",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path),
            *RUN,
        ],
    )
    assert "1x16x16" in err and "1x8x8" in err


def test_depth_pruning_with_another_width(teacher, tmp_path, capsys):
    err = _one_line_error(
        capsys,
        [
            "distill",
            "--teacher",
            str(teacher),
            "--set",
            "model.depth=1",
            "model.hidden_size=64",
            "--init",
            "student-from-teacher",
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path),
            *RUN,
        ],
    )
    assert "hidden_size 64 vs 32" in err


def test_student_with_other_conditioning(teacher, tmp_path, capsys):
    argv = ["distill", "--teacher", str(teacher), "--set", "data.label_columns=[none]", "--max-steps", "1",
            "--output-dir", str(tmp_path), *RUN]  # fmt: skip
    err = _one_line_error(capsys, argv)
    assert "student is conditioned on nothing (unconditional) but the teacher on 10 classes" in err
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


def test_resume_refuses_a_changed_teacher(teacher, tmp_path):
    import shutil

    from ditkit.cli.distill import build_config
    from ditkit.train import train

    copy = tmp_path / "teacher.pt"
    shutil.copy(teacher, copy)
    args = build_parser().parse_args(
        [
            "distill",
            "--teacher",
            str(copy),
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--set",
            "train.threads=1",
            "train.sample_every=0",
        ]  # fmt: skip
    )
    config, _ = build_config(args)
    part = train(config, progress=False, echo=False, run_dir=tmp_path / "run", stop_at=1)
    shutil.copy(part.checkpoint, copy)  # another valid model of the same shape now sits at the teacher's path
    with pytest.raises(ValueError, match="changed since this distillation run started"):
        train(config, progress=False, echo=False, resume=part.checkpoint)


@pytest.mark.distributed
def test_two_processes_match_one_distillation(teacher, tmp_path):
    """Guidance distillation under torchrun (gloo): each sample's w comes from its own noise, so two ranks
    with half the batch each give the single-process run."""
    import json
    import subprocess
    import sys

    from ditkit.cli.distill import build_config
    from ditkit.train import list_checkpoints, load_checkpoint, train

    flags = ["--mode", "guidance", "--max-steps", "3", "--batch-size", "16", "--precision", "fp32",
             "--set", "train.threads=1", "train.sample_every=0", "train.log_every=1"]  # fmt: skip
    config, _ = build_config(build_parser().parse_args(["distill", "--teacher", str(teacher), *flags]))
    single = train(config, progress=False, echo=False, run_dir=tmp_path / "one")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "ditkit.cli.main", "distill", "--teacher", str(teacher), *flags, "--output-dir", str(tmp_path / "two"),
           "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = sorted((tmp_path / "two").iterdir())[0]
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(single.losses, rel=1e-5, abs=1e-7)
    a, b = load_checkpoint(single.checkpoint), load_checkpoint(list_checkpoints(run)[-1])
    for name in a["model"]:
        assert torch.allclose(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-6), name
