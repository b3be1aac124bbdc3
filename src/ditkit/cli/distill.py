"""`ditkit distill --teacher CKPT [--student NAME | --set model.*=...] [--mode output|guidance|steps]`.

Trains a student from a teacher on the teacher's data, with the ordinary trainer (resume, DDP, precision,
grids, logs and checkpoints as `ditkit train`). Modes:
  output    knowledge distillation: a narrower/shallower student matches the teacher's predictions
            (--init student-from-teacher keeps every k-th teacher block when the widths match);
  guidance  the student takes the guidance scale w and reproduces classifier-free guidance in one forward;
  steps     progressive distillation: one student DDIM step (Euler for a flow teacher) = --merge teacher
            steps (a halving round by default); a steps student distilled again halves once more (its grid is
            read from its checkpoint).
"""

from __future__ import annotations

import argparse
from typing import Any

FLAGS = {
    "data": "data.path",
    "image_size": "data.image_size",
    "max_steps": "train.max_steps",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "ckpt_every": "train.ckpt_every",
    "sample_every": "train.sample_every",
    "log_every": "train.log_every",
    "output_dir": "train.output_dir",
    "seed": "train.seed",
    "device": "train.device",
    "precision": "train.precision",
}
# Model sizes a --student preset replaces (the teacher's own values would otherwise stay).
_SIZE_KEYS = ("depth", "hidden_size", "num_heads", "patch_size", "mlp_ratio")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a teacher into a smaller, guidance-free or few-step student",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument(
        "config", nargs="?", help="a recipe or YAML/JSON config (default: the teacher's own run config)"
    )
    p.add_argument(
        "--teacher", metavar="CKPT", help="the teacher: a ditkit checkpoint, official .pt or diffusers folder"
    )
    p.add_argument(
        "--teacher-family", choices=["dit", "sit"], help="read the teacher as this family (sit: SiT files)"
    )
    p.add_argument("--mode", choices=["output", "guidance", "steps"], default=None, help="default: output")
    p.add_argument(
        "--student", metavar="NAME", help="the student's model preset (default: the teacher's architecture)"
    )
    p.add_argument(
        "--init",
        choices=["random", "teacher", "student-from-teacher"],
        help="how the student starts (default: random for output, teacher for guidance and steps)",
    )
    p.add_argument(
        "--alpha", type=float, help="output mode: weight of the data loss mixed in (0..1, default 0)"
    )
    p.add_argument(
        "--guidance",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="guidance weights the student learns, uniform in [MIN, MAX] (guidance default 1 4; "
        "steps default: the run's sample.guidance_scale)",
    )
    p.add_argument(
        "--steps", type=int, metavar="S", help="steps mode: the student's sampling steps (default 4)"
    )
    p.add_argument(
        "--merge", type=int, metavar="M", help="steps mode: teacher steps per student step (default 2)"
    )
    p.add_argument(
        "--spacing",
        default=None,
        help="steps mode: the teacher's grid spacing (ditkit.sampling.grids; default ddim, flow: linspace)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override any config value, e.g. --set model.depth=2 train.lr=1e-3",
    )
    p.add_argument(
        "--resume", metavar="PATH|auto", help="continue a distillation run (its config comes from it)"
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("everyday settings (shortcuts for --set)")
    g.add_argument("--data", metavar="PATH", help="the training data (default: the teacher's)")
    for flag, kind in (
        ("image-size", int),
        ("max-steps", int),
        ("batch-size", int),
        ("lr", float),
        ("ckpt-every", int),
        ("sample-every", int),
        ("log-every", int),
        ("seed", int),
    ):
        g.add_argument(f"--{flag}", type=kind, metavar="N")
    g.add_argument("--output-dir", metavar="DIR")
    g.add_argument("--device")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    p.set_defaults(run=run)


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    return [f"{key}={getattr(args, flag)}" for flag, key in FLAGS.items() if getattr(args, flag) is not None]


def _base_config(args: argparse.Namespace, teacher: Any):
    """The run config the student starts from: the given recipe/file, else the teacher's own run config."""
    from ditkit.config import RunConfig, load_config

    if args.config:
        return load_config(args.config)
    if teacher.run_config:
        data = {k: v for k, v in teacher.run_config.items() if k != "distill"}
        return RunConfig.from_dict(data, origin=f"{teacher.path} (its run config)")
    if not args.data:
        raise ValueError(
            f"teacher {teacher.path} ({teacher.format}) carries no training config; pass --data (the data to "
            "distil on) and the image size / VAE it was trained with"
        )
    return load_config(None)


def _model_overrides(args: argparse.Namespace, config: Any, mode: str, guided_student: bool) -> list[str]:
    fields = set(type(config.model).__dataclass_fields__)
    out = []
    if "init_from" in fields:
        out.append("model.init_from=null")  # the student starts from the teacher, not from the teacher's init
    if args.student:
        out.append(f"model.name={args.student}")
        out += [f"model.{k}=null" for k in _SIZE_KEYS if k in fields]
    if guided_student:
        if "guidance_embed" not in fields:
            raise ValueError(
                f"--mode {mode} needs model.guidance_embed in the run config (not in this ditkit)"
            )
        out.append("model.guidance_embed=true")
    return out


def _teacher_distill(teacher: Any) -> dict[str, Any]:
    return dict((teacher.run_config or {}).get("distill") or {})


def _steps_settings(args: argparse.Namespace, teacher: Any, config: Any, merge: int) -> dict[str, Any]:
    """The teacher's grid (its own, for a steps student; else a fresh DDIM / flow grid) and the student's."""
    from ditkit.distill import steps_teacher_grid

    own = _teacher_distill(teacher)
    if own.get("mode") == "steps" and own.get("grid"):
        teacher_grid = [float(t) for t in own["grid"]]
        if args.steps is not None and args.steps * merge != len(teacher_grid) - 1:
            raise ValueError(
                f"the teacher is a {len(teacher_grid) - 1}-step student; --steps {args.steps} with --merge {merge} "
                f"needs a {args.steps * merge}-step teacher (use --steps {(len(teacher_grid) - 1) // merge})"
            )
        if (len(teacher_grid) - 1) % merge:
            raise ValueError(
                f"the teacher's {len(teacher_grid) - 1} steps do not split into groups of {merge}"
            )
    else:
        steps = 4 if args.steps is None else args.steps
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        teacher_grid = steps_teacher_grid(teacher, config, steps * merge, args.spacing)
    return {"teacher_grid": teacher_grid, "grid": teacher_grid[::merge]}


def _guidance_range(args: argparse.Namespace, teacher: Any, config: Any, mode: str) -> tuple[float, float]:
    if args.guidance is not None:
        return float(args.guidance[0]), float(args.guidance[1])
    if mode == "output":
        return 1.0, 1.0  # not used: the student matches the teacher's own (unguided) outputs
    if mode == "guidance":
        return 1.0, 4.0
    if teacher.config.guidance_embed:
        own = _teacher_distill(teacher)
        return float(own.get("guidance_min", 1.0)), float(own.get("guidance_max", 4.0))
    g = float(config.sample.guidance_scale) if teacher.config.has_null_label else 1.0
    return g, g


def build_config(args: argparse.Namespace):
    """Resolve the distillation run config from the arguments (teacher loaded on the CPU to read it)."""
    from pathlib import Path

    from ditkit.config import apply_overrides
    from ditkit.distill import STEPS_SAMPLER, check_steps_teacher, load_teacher

    if not args.teacher:
        raise ValueError("pass --teacher CKPT (the model to distil), or --resume RUN to continue a run")
    teacher = load_teacher(args.teacher, family=args.teacher_family)
    mode = args.mode or "output"
    tcfg = teacher.config
    config = _base_config(args, teacher)
    guided_teacher = tcfg.guidance_embed or (tcfg.has_null_label and mode != "output")
    guided_student = mode == "guidance" or (mode == "steps" and guided_teacher)
    config = apply_overrides(
        config, _model_overrides(args, config, mode, guided_student) + _flag_overrides(args)
    )
    config = apply_overrides(config, list(args.overrides))
    merge = 2 if args.merge is None else args.merge
    lo, hi = _guidance_range(args, teacher, config, mode)
    distill: dict[str, Any] = {
        "teacher": str(Path(teacher.path).resolve()),  # the file itself: a resume reads the same one
        "teacher_sha256": teacher.digest,
        "mode": mode,
        "init": args.init or ("random" if mode == "output" else "teacher"),
        "alpha": 0.0 if args.alpha is None else args.alpha,
        "guidance_min": lo,
        "guidance_max": hi,
        "merge": merge,
    }
    if args.teacher_family:
        distill["teacher_family"] = args.teacher_family
    sample: dict[str, Any] = {}
    if mode == "steps":
        check_steps_teacher(teacher)
        distill.update(_steps_settings(args, teacher, config, merge))
        sample = {"sampler": STEPS_SAMPLER, "steps": len(distill["grid"]) - 1}
        if "grid" in type(config.sample).__dataclass_fields__:
            sample["grid"] = distill["grid"]
        if hi > 1.0:
            sample["guidance_scale"] = hi if lo == hi else config.sample.guidance_scale
    elif mode == "guidance":
        sample = {"guidance_scale": min(max(config.sample.guidance_scale, lo), hi)}
    items = {f"distill.{k}": v for k, v in distill.items()} | {f"sample.{k}": v for k, v in sample.items()}
    return apply_overrides(config, items), teacher


def resolve(args: argparse.Namespace):
    """(config, checkpoint path, loaded checkpoint) for a new run or a resumed one."""
    from ditkit.config import RunConfig, apply_overrides
    from ditkit.train import load_checkpoint, resolve_resume

    if not args.resume:
        return build_config(args)[0], None, None
    if args.teacher or args.mode or args.student:
        raise ValueError("--resume continues a run with its own teacher, mode and student; drop those flags")
    path = resolve_resume(args.resume, args.output_dir or "runs")
    ckpt = load_checkpoint(path)
    config = RunConfig.from_dict(ckpt["config"], origin=str(path))
    if not getattr(config, "distill", None) or not config.distill.teacher:
        raise ValueError(f"{path} is not a distillation run; resume it with `ditkit train --resume`")
    config = apply_overrides(config, _flag_overrides(args) + list(args.overrides))
    return config, path, ckpt


def run(args: argparse.Namespace) -> int:
    config, ckpt_path, ckpt = resolve(args)
    if args.dry_run:
        print(config.to_yaml(), end="")
        return 0
    from ditkit.train import train

    result = train(config, resume=ckpt_path, checkpoint=ckpt, progress=not args.no_progress)
    if result.run_dir is None:  # not rank 0
        return 0
    if result.status == "interrupted":
        print(f"interrupted at step {result.step}; resume with: ditkit distill --resume {result.run_dir}")
        return 130
    d = config.distill
    minutes, seconds = divmod(int(round(result.wall_time)), 60)
    print(f"distilled ({d.mode}) {result.step} steps in {minutes}m{seconds:02d}s: {result.run_dir}")
    print(f"checkpoint  {result.checkpoint}")
    if d.mode == "steps":
        from ditkit.distill import grid_summary

        print(f"grid        {grid_summary(d.grid)}")
    print(f"sample:     ditkit sample --ckpt {result.run_dir}")
    return 0
