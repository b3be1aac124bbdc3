"""Build the distillation objective of a run from its config (so a resumed run rebuilds it identically)."""

from __future__ import annotations

from typing import Any

from .flow_steps import FlowStepsDistillation, is_flow_grid
from .objectives import GuidanceDistillation, OutputDistillation, ProcessObjective, StepsDistillation
from .teacher import Teacher, check_student, load_teacher

__all__ = ["STEPS_KINDS", "build_distill_objective", "check_mode"]

# Teacher processes `--mode steps` distils: DDPM (deterministic DDIM) and flow matching (Euler on the ODE).
STEPS_KINDS = ("ddpm", "flow")


def check_mode(mode: str, teacher: Teacher, student: Any) -> None:
    """What each mode needs from the teacher and the student: one-line ValueErrors."""
    t = teacher.config
    if mode == "guidance":
        if not t.conditional:
            raise ValueError("--mode guidance needs a conditional teacher; this teacher is unconditional")
        if not (t.has_null_label or t.guidance_embed):
            raise ValueError(
                "--mode guidance needs a teacher trained with label dropout (a null label for classifier-free "
                "guidance); this teacher has class_dropout_prob 0"
            )
        if not student.guidance_embed:
            raise ValueError("a guidance student needs model.guidance_embed=true (ditkit distill sets it)")
    if mode == "steps" and teacher.process_kind not in STEPS_KINDS:
        raise ValueError(
            f"--mode steps needs a teacher with a deterministic sampler (a DDPM or flow-matching model); this "
            f"teacher is a {teacher.process_kind!r} model"
        )


def _check_process(config: Any, teacher: Teacher) -> None:
    saved = (teacher.run_config or {}).get("process") or {}
    for key in ("schedule", "num_timesteps", "kind"):
        mine = getattr(config.process, key, None)
        theirs = saved.get(key)
        if theirs is not None and mine is not None and mine != theirs:
            raise ValueError(
                f"process.{key} is {mine!r} but the teacher was trained with {theirs!r}; a student learns the "
                "teacher's process (drop the override)"
            )


def build_distill_objective(
    config: Any,
    *,
    base: Any = None,
    model_config: Any,
    device: Any = "cpu",
    teacher: Teacher | None = None,
) -> Any:
    """The objective `config.distill` describes, for a student of `model_config` (the trainer's ModelConfig).

    `base` is the run's own objective (DDPM hybrid, flow matching); None builds the DDPM one from
    `config.process`. `teacher` may pass an already loaded teacher (tests)."""
    d = config.distill
    if not d.teacher and teacher is None:
        raise ValueError("distill.teacher is not set; pass --teacher CHECKPOINT")
    if teacher is None:
        teacher = load_teacher(d.teacher, family=d.teacher_family, device=device)
    else:
        teacher.to(device)
    if d.teacher_sha256 and teacher.digest and d.teacher_sha256 != teacher.digest:
        raise ValueError(
            f"the teacher file {teacher.path} changed since this distillation run started (sha256 "
            f"{teacher.digest[:12]}, the run recorded {d.teacher_sha256[:12]}); resume with the original teacher"
        )
    check_student(model_config, teacher.config)
    check_mode(d.mode, teacher, model_config)
    _check_process(config, teacher)
    if d.mode == "steps" and teacher.process_kind == "flow":
        objective: Any = _flow_steps(d, teacher, model_config)
        objective.init_mode = d.init
        return objective
    process = getattr(base, "process", None)
    if process is None and teacher.process_kind == "ddpm":
        from ..diffusion import GaussianDiffusion

        process = GaussianDiffusion.from_schedule(
            config.process.schedule, config.process.num_timesteps, learn_sigma=model_config.learn_sigma
        )
    if base is None:
        if teacher.process_kind != "ddpm":
            raise ValueError(f"distilling a {teacher.process_kind!r} teacher needs the trainer's objective")
        base = ProcessObjective(process)
    if d.mode == "output":
        objective = OutputDistillation(teacher, base, alpha=d.alpha, student_config=model_config)
    elif d.mode == "guidance":
        objective = GuidanceDistillation(teacher, base, w_min=d.guidance_min, w_max=d.guidance_max)
    else:
        _check_teacher_grid(d, flow=False)
        objective = StepsDistillation(
            teacher,
            process,
            list(d.teacher_grid),
            d.merge,
            w_min=d.guidance_min,
            w_max=d.guidance_max,
            student_guided=bool(model_config.guidance_embed),
        )
    objective.init_mode = d.init
    return objective


def _check_teacher_grid(d: Any, *, flow: bool) -> None:
    if not d.teacher_grid:
        raise ValueError("distill.teacher_grid is empty; `ditkit distill --mode steps` sets it")
    if is_flow_grid(d.teacher_grid) != flow:
        want, got = ("flow", "DDPM") if flow else ("DDPM", "flow")
        raise ValueError(
            f"distill.teacher_grid is a {got} grid but the teacher is a {want} model; rebuild the run with "
            "`ditkit distill --mode steps` (it picks the teacher's grid)"
        )


def _flow_steps(d: Any, teacher: Teacher, model_config: Any) -> FlowStepsDistillation:
    """Progressive distillation of a flow teacher (Euler steps on noise levels; no base objective needed)."""
    _check_teacher_grid(d, flow=True)
    return FlowStepsDistillation(
        teacher,
        list(d.teacher_grid),
        d.merge,
        w_min=d.guidance_min,
        w_max=d.guidance_max,
        student_guided=bool(model_config.guidance_embed),
    )
