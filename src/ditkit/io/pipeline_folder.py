"""ditkit's pipeline folder, what `DiTPipeline.save_pretrained` writes:

    FOLDER/ditkit_pipeline.json     format, version, model config, id2label, vae, free-form `extra`
    FOLDER/transformer.safetensors  the weights (ditkit safetensors: config + label names in its metadata)
    FOLDER/vae/                     optional: the AutoencoderKL folder (config.json + weights)

The JSON is written last, so a folder interrupted mid-save is not mistaken for a complete one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..labels import names_from_id2label, normalize_id2label
from ..models import DiT
from .diffusers_io import _write_json, check_vae_channels, copy_vae, read_json
from .native import load_safetensors_model, save_safetensors

PIPELINE_INDEX = "ditkit_pipeline.json"
PIPELINE_FORMAT = "ditkit-pipeline"
PIPELINE_VERSION = 1
TRANSFORMER_FILE = "transformer.safetensors"
VAE_DIR = "vae"


@dataclass
class DitkitPipelineParts:
    model: DiT
    id2label: dict[int, str] | None
    vae_path: Path | None
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def is_ditkit_pipeline(folder: Path) -> bool:
    return (folder / PIPELINE_INDEX).is_file()


def save_ditkit_pipeline(
    folder: str | os.PathLike,
    model: DiT,
    id2label: dict[int, str] | None = None,
    vae: Any = None,
    *,
    dtype: torch.dtype | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a ditkit pipeline folder. `vae` is a VAE folder path, a VAECodec, an AutoencoderKL or None
    (pixel space); `extra` is any JSON-serialisable dict (e.g. sampler defaults) returned by the reader."""
    from ..codecs import IdentityCodec

    if isinstance(vae, IdentityCodec):
        vae = None  # pixel space: nothing to store
    if vae is not None:
        check_vae_channels(model, vae)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = normalize_id2label(id2label) if id2label is not None else None
    save_safetensors(
        model,
        folder / TRANSFORMER_FILE,
        label_names=(
            names_from_id2label(labels, model.config.num_classes)
            if labels and isinstance(model.config.num_classes, int)
            else None
        ),
        dtype=dtype,
    )
    if vae is not None:
        copy_vae(vae, folder / VAE_DIR)
    index = {
        "format": PIPELINE_FORMAT,
        "version": PIPELINE_VERSION,
        "transformer": TRANSFORMER_FILE,
        "model_config": model.config.to_dict(),
        "vae": VAE_DIR if vae is not None else None,
        "id2label": {str(k): v for k, v in labels.items()} if labels is not None else None,
        "extra": extra or {},
    }
    _write_json(folder / PIPELINE_INDEX, index)
    return folder


def read_ditkit_pipeline(folder: str | os.PathLike) -> DitkitPipelineParts:
    """Read a folder written by `save_ditkit_pipeline` (model in eval mode)."""
    folder = Path(folder)
    index = read_json(folder / PIPELINE_INDEX)
    if index.get("format") != PIPELINE_FORMAT:
        raise ValueError(
            f"{folder / PIPELINE_INDEX}: format is {index.get('format')!r}, not {PIPELINE_FORMAT!r}"
        )
    if int(index.get("version", 0)) > PIPELINE_VERSION:
        raise ValueError(
            f"{folder}: pipeline format version {index['version']} is newer than this ditkit reads "
            f"({PIPELINE_VERSION}); upgrade ditkit"
        )
    weights = folder / str(index.get("transformer") or TRANSFORMER_FILE)
    if not weights.is_file():
        raise ValueError(f"{folder}: the pipeline's {weights.name} is missing")
    model, label_names = load_safetensors_model(weights)
    notes: list[str] = []
    id2label = index.get("id2label")
    if id2label is not None:
        id2label = normalize_id2label(id2label)
    elif label_names is not None:
        id2label = dict(enumerate(label_names))
    vae_path = None
    if index.get("vae"):
        vae_path = folder / str(index["vae"])
        if not (vae_path / "config.json").is_file():
            raise ValueError(
                f"{folder}: the pipeline's vae/ folder is missing or incomplete (no config.json)"
            )
    extra = index.get("extra") or {}
    return DitkitPipelineParts(
        model=model, id2label=id2label, vae_path=vae_path, extra=dict(extra), notes=notes
    )
