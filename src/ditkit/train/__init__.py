"""Training: the loop (setup, state, objectives, step), EMA, optimizer and LR schedules, checkpoints, distributed helpers, run monitoring."""

from .checkpoint import (
    CHECKPOINT_KEYS,
    find_checkpoint,
    list_checkpoints,
    list_runs,
    load_checkpoint,
    new_run_dir,
    resolve_resume,
    save_checkpoint,
)
from .ema import ema_decay, make_ema, update_ema
from .loop import RESUMABLE_KEYS, TrainingDiverged, TrainResult, check_resume_config, sample_grid, train
from .monitor import RunMonitor, make_grid, save_loss_curve
from .objectives import OBJECTIVES, DDPMObjective, Objective, build_objective, register_objective
from .optim import LRSchedule, build_optimizer, param_groups
from .state import TrainState, read_checkpoint, read_inference_parts, validate_checkpoint

__all__ = [
    "CHECKPOINT_KEYS",
    "DDPMObjective",
    "OBJECTIVES",
    "Objective",
    "TrainState",
    "build_objective",
    "read_checkpoint",
    "read_inference_parts",
    "register_objective",
    "validate_checkpoint",
    "LRSchedule",
    "RESUMABLE_KEYS",
    "RunMonitor",
    "TrainResult",
    "TrainingDiverged",
    "build_optimizer",
    "check_resume_config",
    "ema_decay",
    "find_checkpoint",
    "list_checkpoints",
    "list_runs",
    "load_checkpoint",
    "make_ema",
    "make_grid",
    "new_run_dir",
    "param_groups",
    "resolve_resume",
    "sample_grid",
    "save_checkpoint",
    "save_loss_curve",
    "train",
    "update_ema",
]
