"""Distillation (`ditkit distill`): a smaller student, a guidance-distilled student, few-step students.

Modes (ditkit.distill.config.DistillSection): `output` (knowledge distillation on the teacher's predictions),
`guidance` (Meng et al. 2023: one forward conditioned on w reproduces classifier-free guidance), `steps`
(progressive distillation, Salimans & Ho 2022; DDIM steps of a DDPM teacher, Euler steps of a flow teacher).
Each is an Objective the trainer runs like its own.
"""

from .build import STEPS_KINDS, build_distill_objective, check_mode
from .config import INITS, MODES, DistillSection
from .flow_steps import FlowStepsDistillation
from .grids import STEPS_SAMPLER, check_steps_teacher, grid_summary, steps_teacher_grid
from .objectives import GuidanceDistillation, OutputDistillation, ProcessObjective, StepsDistillation
from .student import copy_from_teacher, init_student, pruned_blocks
from .teacher import Teacher, check_student, load_teacher

__all__ = [
    "INITS",
    "MODES",
    "STEPS_KINDS",
    "STEPS_SAMPLER",
    "DistillSection",
    "FlowStepsDistillation",
    "GuidanceDistillation",
    "OutputDistillation",
    "ProcessObjective",
    "StepsDistillation",
    "Teacher",
    "build_distill_objective",
    "check_mode",
    "check_steps_teacher",
    "check_student",
    "copy_from_teacher",
    "grid_summary",
    "init_student",
    "load_teacher",
    "pruned_blocks",
    "steps_teacher_grid",
]
