"""One entry point for every DiT file users arrive with: `load_any(path)` detects the format and returns the
model (eval mode) with its label names, VAE folder and notes on anything that was assumed.

Formats (the `format` field of LoadedModel):
    official-state-dict    a bare state dict with the official keys (DiT-XL-2-256x256.pt), .pt or .safetensors
    official-train         official train.py checkpoint {model, ema, opt, args}; EMA weights by default
    diffusers-transformer  a DiTTransformer2DModel / Transformer2DModel folder (config.json + weights)
    diffusers-pipeline     a DiTPipeline folder (model_index.json, transformer/, vae/, scheduler/)
    ditkit-checkpoint      a ditkit training checkpoint; EMA weights by default
    ditkit-safetensors     a ditkit weights file (config and label names in the metadata)
    ditkit-pipeline        a ditkit pipeline folder (ditkit_pipeline.json + transformer.safetensors [+ vae/])

Nothing is unpickled beyond tensors and plain containers, plus `argparse.Namespace` (the `args` of official
train.py checkpoints), which is allowed by name for that one load. The per-format readers live in
`ditkit.io.readers`; this module holds the entry points, `convert` and the official writer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..labels import IMAGENET_NUM_CLASSES, imagenet_id2label
from ..models import ARITHMETICS, DiT
from .diffusers_io import save_diffusers_pipeline, save_diffusers_transformer
from .layouts import cast_state, require_official_layout
from .native import atomic_torch_save, save_safetensors
from .pipeline_folder import save_ditkit_pipeline
from .readers import (  # noqa: F401 - LoadedModel and the private readers stay importable from here
    LoadedModel,
    _id2label,
    _load_file,
    _load_folder,
    _model_from_state,
)
from .validate import check_finite

FORMATS = (
    "official-state-dict",
    "official-train",
    "diffusers-transformer",
    "diffusers-pipeline",
    "ditkit-checkpoint",
    "ditkit-safetensors",
    "ditkit-pipeline",
)
CONVERT_TARGETS = ("official", "diffusers", "safetensors")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def set_arithmetic(model: DiT, arithmetic: str) -> DiT:
    """The same weights under another arithmetic ("official" or "diffusers"); shares the tensors."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETICS)}")
    if model.config.arithmetic == arithmetic:
        return model
    new = _model_from_state(model.config.replace(arithmetic=arithmetic), dict(model.state_dict()), "model")
    new.train(model.training)
    return new


# -- public API --------------------------------------------------------------------------------------
def load_any(
    path: str | os.PathLike,
    *,
    use_ema: bool = True,
    arithmetic: str | None = None,
    num_heads: int | None = None,
    family: str | None = None,
    require_finite: bool = False,
) -> LoadedModel:
    """Detect the format of `path` (file or folder) and load the DiT in it, in eval mode on the CPU.

    `arithmetic` overrides the one the format implies ("official" for official files, "diffusers" for
    diffusers folders, the stored one for ditkit files). `num_heads` overrides the head count inferred for
    files that do not store it (official state dicts). `family="sit"` reads a SiT checkpoint (DiT's keys,
    SiT's time convention; see `ditkit.io.sit`); None detects, "dit" skips the SiT file-name check.
    `require_finite` refuses weights holding NaN/inf (one line naming the first bad key), e.g. before
    fine-tuning from them.
    """
    from .sit import check_family, load_sit, looks_like_sit, sit_name_hint

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if check_family(family) == "sit":
        return load_sit(path, use_ema=use_ema, arithmetic=arithmetic, num_heads=num_heads)
    if arithmetic is not None and arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETICS)}")
    loaded = _load_folder(path) if path.is_dir() else _load_file(path, use_ema, num_heads)
    if family is None and loaded.format.startswith("official") and looks_like_sit(path):
        raise ValueError(sit_name_hint(path))
    if arithmetic is not None and arithmetic != loaded.model.config.arithmetic:
        loaded.model = set_arithmetic(loaded.model, arithmetic)
        loaded.notes.append(f"arithmetic switched to {arithmetic!r} on request")
    num_classes = loaded.model.config.num_classes
    if loaded.id2label is None and num_classes == IMAGENET_NUM_CLASSES:
        loaded.id2label = imagenet_id2label()
        loaded.notes.append("1000 classes and no label names in the file: using ImageNet's class names")
    if require_finite:
        check_finite(loaded.model.state_dict(), str(path))
    loaded.model.eval()
    return loaded


def load_model(
    path: str | os.PathLike,
    *,
    use_ema: bool = True,
    arithmetic: str | None = None,
    family: str | None = None,
) -> DiT:
    """The DiT in any supported file or folder (see `load_any`), in eval mode; `family="sit"` for SiT files."""
    return load_any(path, use_ema=use_ema, arithmetic=arithmetic, family=family).model


# -- writing -----------------------------------------------------------------------------------------
def save_official(model: DiT, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """A bare state dict with the official keys (what DiT's `find_model` and `sample.py` load)."""
    require_official_layout(model.config, "official DiT")
    state = {k: v.clone() for k, v in cast_state(model.state_dict(), dtype).items()}
    return atomic_torch_save(state, path)


@dataclass
class ConvertResult:
    source: LoadedModel
    output: Path
    notes: list[str]


def _flow_process(loaded) -> dict | None:
    """The process section of a flow-matching source (a training checkpoint's or a folder's), else None."""
    extra = loaded.extra or {}
    proc = (extra.get("run_config") or {}).get("process") or extra.get("process") or {}
    return dict(proc) if proc.get("kind") == "flow" else None


def _check_time_convention(time_input: str, to: str, pipeline: bool, notes: list[str]) -> None:
    """Refuse outputs that would silently turn a flow-matching model into a DDPM one; note the rest."""
    if time_input == "ddpm" or to == "safetensors":
        return
    if time_input == "flow" and (to == "official" or pipeline):
        what = (
            "an official .pt file" if to == "official" else "a diffusers DiTPipeline folder (DDPM scheduler)"
        )
        raise ValueError(
            f"this is a flow-matching model (velocity, time input 1000 s): {what} cannot say so and would be "
            "sampled as DDPM; convert --to diffusers without --pipeline, or --to safetensors, which keep it"
        )
    if to == "official":  # a SiT model: its own .pt layout, read back with --family sit
        notes.append(
            f"official files cannot record this model's time convention ({time_input!r}): load the output "
            "with family='sit' (--family sit), or convert to safetensors, which keeps it"
        )
    else:
        notes.append(
            f"ditkit reads the time convention ({time_input!r}) back from config.json; diffusers' own "
            "DiTPipeline and its DDPM schedulers cannot sample this model"
        )


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str,
    dtype: str | torch.dtype | None = None,
    pipeline: bool = False,
    vae: str | os.PathLike | None = None,
    use_ema: bool = True,
    overwrite: bool = False,
    family: str | None = None,
) -> ConvertResult:
    """Convert any supported model file/folder to `to` = "official" (.pt state dict), "diffusers"
    (DiTTransformer2DModel folder, or a DiTPipeline folder with `pipeline`) or "safetensors" (ditkit file, or
    a ditkit pipeline folder with `pipeline`)."""
    if to not in CONVERT_TARGETS:
        raise ValueError(f"unknown target {to!r}; choose one of {', '.join(CONVERT_TARGETS)}")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: the output is the input; choose another output path")
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst} already exists; pass --force to overwrite it")
    if pipeline and to == "official":
        raise ValueError(
            "--pipeline applies to diffusers and safetensors outputs; an official file is weights only"
        )
    loaded = load_any(src, use_ema=use_ema, family=family)
    model = loaded.model
    notes = list(loaded.notes)
    process = _flow_process(loaded)
    _check_time_convention(model.config.time_input, to, pipeline, notes)
    vae_source = vae if vae is not None else loaded.vae_path
    if to == "official":
        if model.config.arithmetic != "official":
            notes.append(
                "this model uses diffusers arithmetic; official code will run it with official arithmetic "
                "(outputs differ slightly)"
            )
        if not model.config.has_null_label and model.config.num_classes > 0:
            notes.append("no null label row: official loaders will assume one and count one class too few")
        if loaded.id2label and loaded.id2label != imagenet_id2label():
            notes.append(
                f"official files carry no class names: {len(loaded.id2label)} label names not written"
            )
        out = save_official(model, dst, dtype=dtype)
    elif to == "diffusers":
        if model.config.arithmetic != "diffusers":
            notes.append(
                "diffusers runs the model with its own arithmetic (timestep divisor, MLP LayerNorm eps): "
                "outputs differ slightly from the official arithmetic; weights are exact"
            )
        if pipeline:
            out = save_diffusers_pipeline(model, dst, vae=vae_source, id2label=loaded.id2label, dtype=dtype)
        else:
            out = save_diffusers_transformer(
                model, dst, dtype=dtype, id2label=loaded.id2label, process=process
            )
    else:
        if pipeline:
            out = save_ditkit_pipeline(dst, model, loaded.id2label, vae=vae_source, dtype=dtype)
        else:
            out = save_safetensors(model, dst, label_names=loaded.label_names, dtype=dtype)
    return ConvertResult(source=loaded, output=Path(out), notes=notes)
