"""Distillation (`ditkit distill`): a smaller student, a guidance-distilled student, few-step students.

Modes (ditkit.distill.config.DistillSection): `output` (knowledge distillation on the teacher's predictions),
`guidance` (Meng et al. 2023: one forward conditioned on w reproduces classifier-free guidance), `steps`
(progressive distillation, Salimans & Ho 2022). Each is an Objective the trainer runs like its own.
"""

from .build import build_distill_objective, check_mode
from .config import INITS, MODES, DistillSection
from .objectives import GuidanceDistillation, OutputDistillation, ProcessObjective, StepsDistillation
from .student import copy_from_teacher, init_student, pruned_blocks
from .teacher import Teacher, check_student, load_teacher

__all__ = [
    "INITS",
    "MODES",
    "DistillSection",
    "GuidanceDistillation",
    "OutputDistillation",
    "ProcessObjective",
    "StepsDistillation",
    "Teacher",
    "build_distill_objective",
    "check_mode",
    "check_student",
    "copy_from_teacher",
    "init_student",
    "load_teacher",
    "pruned_blocks",
]
