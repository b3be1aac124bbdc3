"""The training state and the checkpoint schema: the only reader and writer of training checkpoints.

A checkpoint is a dict of tensors and plain containers (it loads with `weights_only=True`):

    format, version      "ditkit-checkpoint", 1
    model_config         ModelConfig.to_dict()
    model, ema           state dicts (ema may be None)
    optimizer            the optimizer's state dict
    scheduler            LRSchedule.state_dict()
    step                 int, steps done
    rng                  {"generator": ByteTensor (the run's global-batch generator), "torch": ..., "cuda": ...}
    config               RunConfig.to_dict() (the effective config of the run)
    label_names          legacy label names (a list, a dict attribute -> list, or None)
    conditioning         Conditioning.to_dict() (optional on read: derived from model_config + label_names)
    precision            the resolved precision the run trained in (optional on read)
    objective            the objective's own state_dict() when it has one (e.g. a distillation teacher's hash)
    weights_sha256       {"model": sha, "ema": sha}: SHA-256 of each state dict (ditkit.io.native.weights_checksum),
                         verified on resume and load (optional on read: files from before checksums)
    ditkit_version       str

`validate_checkpoint` checks every field and raises a one-line ValueError naming the field and the file;
`check_weights` verifies the stored checksums and that the weights fit their model config (a flipped byte, a
wrong shape or a missing key is one line naming the file). Other modules read checkpoints through
`read_inference_parts` rather than by key; it needs only format, version, model_config and model, so a
checkpoint stripped of its optimizer and RNG state (to share it) still samples, but does not resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..conditioning import Conditioning
from ..io.native import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CHECKSUM_KEY,
    checkpoint_checksums,
    safe_torch_load,
    verify_checksum,
)

REQUIRED = (
    "format",
    "version",
    "model_config",
    "model",
    "ema",
    "optimizer",
    "scheduler",
    "step",
    "rng",
    "config",
    "label_names",
    "ditkit_version",
)
OPTIONAL = ("conditioning", "precision", "objective", CHECKSUM_KEY)


def _is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


# What sampling needs: a checkpoint stripped of its optimizer and RNG state (to share it) still samples.
INFERENCE_REQUIRED = ("format", "version", "model_config", "model")


def validate_checkpoint(
    ckpt: Any, origin: str | Path = "checkpoint", *, for_inference: bool = False
) -> dict[str, Any]:
    """Check the schema; returns `ckpt`. One-line ValueError naming the first bad field and the file.
    `for_inference` requires only INFERENCE_REQUIRED (the other fields are checked when present)."""
    where = str(origin)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where}: not a ditkit training checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{where}: checkpoint version {ckpt.get('version')!r}; this ditkit reads version {CHECKPOINT_VERSION}"
        )
    missing = [k for k in (INFERENCE_REQUIRED if for_inference else REQUIRED) if k not in ckpt]
    if missing:
        raise ValueError(f"{where}: incomplete checkpoint, missing {', '.join(missing)}")
    _check_fields(ckpt, where)
    from ..models import ModelConfig

    try:
        ModelConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: checkpoint field 'model_config': {err}") from None
    return ckpt


def _check_fields(ckpt: dict[str, Any], where: str) -> None:
    """The type of every field present (a missing one was reported by the caller when required)."""

    def bad(field: str, expected: str) -> ValueError:
        got = ckpt[field]
        shown = type(got).__name__ if not isinstance(got, str | int | float) else repr(got)
        return ValueError(
            f"{where}: checkpoint field {field!r} must be {expected}, got {shown}; the file is damaged"
        )

    step = ckpt.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", "an integer >= 0")
    for key in ("model_config", "optimizer", "scheduler", "config"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise bad(key, "a mapping")
    if not _is_tensor_dict(ckpt["model"]) or not ckpt["model"]:
        raise bad("model", "a state dict of tensors")
    if ckpt.get("ema") is not None and not _is_tensor_dict(ckpt["ema"]):
        raise bad("ema", "a state dict of tensors or null")
    rng = ckpt.get("rng", {"generator": torch.empty(0)})
    if not isinstance(rng, dict) or not isinstance(rng.get("generator"), torch.Tensor):
        where_rng = "rng" if not isinstance(rng, dict) else "rng.generator"
        raise ValueError(
            f"{where}: checkpoint field {where_rng!r} is missing or not a tensor; the file is damaged"
        )
    if ckpt.get("label_names") is not None and not isinstance(ckpt["label_names"], list | dict):
        raise bad("label_names", "a list, a mapping or null")
    if ckpt.get("conditioning") is not None:
        Conditioning.from_dict(ckpt["conditioning"], origin=where)
    if "precision" in ckpt and ckpt["precision"] not in ("fp32", "bf16", "fp16"):
        raise bad("precision", "fp32, bf16 or fp16")
    sums = ckpt.get(CHECKSUM_KEY)
    if sums is not None and (
        not isinstance(sums, dict)
        or not all(k in ("model", "ema") and isinstance(v, str) for k, v in sums.items())
    ):
        raise bad(CHECKSUM_KEY, 'a mapping {"model": sha256, "ema": sha256}')


def check_weights(
    ckpt: dict[str, Any], origin: str | Path = "checkpoint", keys: tuple[str, ...] = ("model", "ema")
) -> None:
    """Verify the weights of a validated checkpoint: each state dict in `keys` against its stored checksum
    (files from before checksums have none), then against the model config (names, shapes, dtypes; built on
    the meta device, so nothing is allocated). One-line ValueError naming the file and the damaged part."""
    from ..io.validate import build_checked_model, config_from_stored

    where = str(origin)
    config = config_from_stored(ckpt.get("model_config"), where)
    sums = ckpt.get(CHECKSUM_KEY) or {}
    for key in keys:
        if ckpt.get(key) is None:
            continue
        verify_checksum(ckpt[key], sums.get(key), f"{where} ({key} weights)")
        build_checked_model(config, ckpt[key], f"{where} ({key} weights)")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read (weights_only) and validate a ditkit training checkpoint."""
    return validate_checkpoint(safe_torch_load(path), path)


def checkpoint_conditioning(ckpt: dict[str, Any], origin: str | Path = "checkpoint") -> Conditioning:
    """The checkpoint's conditioning schema (older files: derived from model_config and label_names)."""
    if ckpt.get("conditioning") is not None:
        return Conditioning.from_dict(ckpt["conditioning"], origin=str(origin))
    from ..models import ModelConfig

    cfg = ModelConfig.from_dict(ckpt["model_config"])
    attr = ((ckpt.get("config") or {}).get("model") or {}).get("attribute_dropout_prob")
    attr = cfg.class_dropout_prob if attr is None else attr
    try:
        return Conditioning.from_model_config(
            cfg, ckpt.get("label_names"), attribute_dropout=float(attr or 0.0)
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{origin}: its label names do not fit its model config: {err}") from None


@dataclass
class InferenceParts:
    """What sampling needs from a training checkpoint."""

    model_config: dict[str, Any]
    weights: dict[str, torch.Tensor]  # EMA when present and asked for
    used_ema: bool
    config: dict[str, Any]  # the run config (plain dict)
    conditioning: Conditioning
    process: dict[str, Any]  # config["process"]: kind ("ddpm" | "flow") and its options
    step: int
    precision: str | None


def read_inference_parts(
    ckpt: dict[str, Any], *, use_ema: bool = True, origin: str = "checkpoint"
) -> InferenceParts:
    """The parts of a training checkpoint that inference uses, without reading keys by hand: the schema is
    validated and the weights used are checked against their checksum and config (`check_weights`)."""
    validate_checkpoint(ckpt, origin, for_inference=True)
    ema = use_ema and ckpt.get("ema") is not None
    check_weights(ckpt, origin, ("ema" if ema else "model",))
    config = ckpt.get("config") or {}
    process = dict(config.get("process") or {})
    process.setdefault("kind", "ddpm")
    return InferenceParts(
        model_config=dict(ckpt["model_config"]),
        weights=ckpt["ema"] if ema else ckpt["model"],
        used_ema=ema,
        config=config,
        conditioning=checkpoint_conditioning(ckpt, origin),
        process=process,
        step=int(ckpt.get("step", 0)),
        precision=ckpt.get("precision"),
    )


@dataclass
class TrainState:
    """Everything a run carries from step to step, and what a checkpoint stores."""

    net: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # LRSchedule
    generator: torch.Generator  # the global-batch generator (identical on every process)
    config: Any  # RunConfig
    conditioning: Conditioning
    precision: str = "fp32"
    step: int = 0
    objective: Any = None  # saved under "objective" when it has state_dict / load_state_dict

    def to_dict(self, device: torch.device | None = None) -> dict[str, Any]:
        rng = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if device is not None and device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": self.net.config.to_dict(),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "step": self.step,
            "rng": rng,
            "config": self.config.to_dict(),
            "label_names": self.conditioning.label_names(),
            "conditioning": self.conditioning.to_dict(),
            "precision": self.precision,
            **({"objective": self.objective.state_dict()} if hasattr(self.objective, "state_dict") else {}),
            "ditkit_version": __version__,
        }
        ckpt[CHECKSUM_KEY] = checkpoint_checksums(ckpt)
        return ckpt

    def load_dict(
        self,
        ckpt: dict[str, Any],
        *,
        origin: str = "checkpoint",
        restore_torch_rng: bool = True,
        checked: bool = False,
    ) -> list[str]:
        """Restore from a checkpoint dict (validated here, and its weights checked by `check_weights` unless
        the caller did so: `checked`) into the built modules; returns notes for the log."""
        validate_checkpoint(ckpt, origin)
        if not checked:
            check_weights(ckpt, origin)
        notes = []
        try:
            self.net.load_state_dict(ckpt["model"])
            if ckpt["ema"] is not None:
                self.ema.load_state_dict(ckpt["ema"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.generator.set_state(ckpt["rng"]["generator"])
        except (RuntimeError, ValueError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{origin}: the checkpoint does not fit the model it describes: {first}"
            ) from None
        if ckpt.get("objective") is not None and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(ckpt["objective"])
        self.step = int(ckpt["step"])
        if restore_torch_rng and isinstance(ckpt["rng"].get("torch"), torch.Tensor):
            torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["scheduler"] != self.schedule.state_dict():
            notes.append(
                f"the LR schedule changed on resume: {describe_schedule(ckpt['scheduler'])} -> "
                f"{describe_schedule(self.schedule.state_dict())}"
            )
        return notes

    @classmethod
    def from_dict(cls, ckpt: dict[str, Any], config: Any = None, *, origin: str = "checkpoint") -> TrainState:
        """A CPU TrainState rebuilt from a checkpoint alone (`config` overrides the stored run config)."""
        from ..config import RunConfig
        from ..models import ModelConfig
        from ..presets import build_model
        from .ema import make_ema
        from .optim import LRSchedule, build_optimizer

        validate_checkpoint(ckpt, origin)
        check_weights(ckpt, origin)  # before anything is built from the stored config
        config = config or RunConfig.from_dict(ckpt["config"], origin=str(origin))
        net = build_model(ModelConfig.from_dict(ckpt["model_config"]))
        state = cls(
            net, make_ema(net), build_optimizer(net, config.train), LRSchedule.from_config(config.train),
            torch.Generator(), config, checkpoint_conditioning(ckpt), ckpt.get("precision") or "fp32",
        )  # fmt: skip
        state.load_dict(ckpt, origin=str(origin), restore_torch_rng=False, checked=True)
        return state


def describe_schedule(state: dict[str, Any]) -> str:
    """'cosine to 3e-04 over 1000 steps, 10 warmup' rather than a raw dict."""
    try:
        kind, lr = state.get("kind", "?"), float(state.get("base_lr", 0.0))
        total, warm = int(state.get("total_steps", 0)), int(state.get("warmup_steps", 0))
    except (TypeError, ValueError):
        return str(state)
    text = f"{kind} lr {lr:.3g} over {total} steps"
    return text + (f", {warm} warmup steps" if warm else "")
