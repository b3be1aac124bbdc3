"""AdamW with decay only where it belongs, and the two LR schedules (constant, warmup + cosine to zero)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

_NO_DECAY_MODULES = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices and conv kernels decay; biases, norm scales and embedding tables do not.

    Weight decay pulls a weight towards zero, which is regularisation for a projection but a distortion
    for a bias, a normalisation gain, a (learned) position embedding or a label embedding (rare classes would shrink faster than common
    ones, and the null row of classifier-free guidance would drift).
    """
    decay, no_decay = [], []
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if (
                isinstance(module, _NO_DECAY_MODULES)
                or p.ndim < 2
                or name.endswith("bias")
                or "pos_embed" in name  # a learned position embedding is an embedding table too
            ):
                no_decay.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, train: Any) -> torch.optim.AdamW:
    """AdamW from a TrainSection (lr, betas, eps, weight_decay); the fused kernel on CUDA and CPU (on a 2-core
    CPU it updates DiT-S/2's 33M parameters in ~22 ms against ~90 ms for the multi-tensor path)."""
    device = next(model.parameters()).device
    kwargs: dict[str, Any] = {"fused": True} if device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(
        param_groups(model, train.weight_decay),
        lr=train.lr,
        betas=tuple(train.betas),
        eps=train.adam_eps,
        **kwargs,
    )


class LRSchedule:
    """lr(step) for step = 0, 1, ... (the step about to be taken).

    constant: base_lr * min(1, (step + 1) / warmup).
    cosine:   the same linear warmup, then base_lr * 0.5 * (1 + cos(pi * p)), p = (step - warmup) /
              (total - warmup), which reaches zero at step = total.
    The state is its four numbers, so a checkpoint stores it as a plain dict.
    """

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0) -> None:
        if kind not in ("constant", "cosine"):
            raise ValueError(f"unknown lr schedule {kind!r}; choose constant or cosine")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup ({warmup_steps} steps) is longer than the run ({total_steps} steps)")
        self.kind, self.base_lr = kind, float(base_lr)
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base_lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LRSchedule:
        return cls(state["kind"], state["base_lr"], state["total_steps"], state["warmup_steps"])

    @classmethod
    def from_config(cls, train: Any) -> LRSchedule:
        return cls(train.lr_schedule, train.lr, train.max_steps, train.warmup)
