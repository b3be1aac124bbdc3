"""ditkit's pipeline folder, what `DiTPipeline.save_pretrained` writes:

    FOLDER/ditkit_pipeline.json     format, version, model config, id2label, conditioning (the schema of
                                    ditkit.conditioning, as in checkpoints), vae, free-form `extra`
    FOLDER/transformer.safetensors  the weights (ditkit safetensors: config + label names in its metadata)
    FOLDER/vae/                     optional: the AutoencoderKL folder (config.json + weights)

The JSON is written last, so a folder interrupted mid-save is not mistaken for a complete one. Folders
written before "conditioning" was stored are read too: the schema is then derived from the model config and
the label names.
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
from .native import load_safetensors_model, prepare_output_dir, save_safetensors

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
    conditioning: Any = None  # ditkit.conditioning.Conditioning


def folder_conditioning(model: DiT, id2label: dict[int, str] | None, extra: dict[str, Any] | None) -> Any:
    """The conditioning schema of a model from what a pipeline holds (its config, label names and the
    per-attribute names a multi-attribute pipeline keeps in `extra["attributes"]`)."""
    from ..conditioning import Conditioning

    cfg = model.config
    names: Any = (extra or {}).get("attributes") if cfg.multi_label else None
    if names is None and id2label and isinstance(cfg.num_classes, int):
        names = names_from_id2label(id2label, cfg.num_classes)
    try:
        return Conditioning.from_model_config(cfg, names)
    except ValueError:  # names that do not fit the config: keep the sizes, drop the names
        return Conditioning.from_model_config(cfg, None)


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
    conditioning: Any = None,
) -> Path:
    """Write a ditkit pipeline folder. `vae` is a VAE folder path, a VAECodec, an AutoencoderKL or None
    (pixel space); `extra` is any JSON-serialisable dict (e.g. sampler defaults) returned by the reader;
    `conditioning` (a ditkit.conditioning.Conditioning) is stored under "conditioning" (None: derived from
    the model config and the label names)."""
    from ..codecs import IdentityCodec
    from ..conditioning import store_in_folder

    if isinstance(vae, IdentityCodec):
        vae = None  # pixel space: nothing to store
    if vae is not None:
        check_vae_channels(model, vae)
    folder = Path(folder)
    prepare_output_dir(folder, "output folder")
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
        "conditioning": store_in_folder(conditioning or folder_conditioning(model, labels, extra)),
        "extra": extra or {},
    }
    _write_json(folder / PIPELINE_INDEX, index)
    return folder


def _text(index: dict[str, Any], key: str, where: Path, default: str | None) -> str | None:
    value = index.get(key, default)
    if value is not None and (not isinstance(value, str) or not value or "/" in value or "\\" in value):
        raise ValueError(
            f"{where}: {key} is {value!r}; expected the name of a file or folder inside the pipeline"
        )
    return value


def read_ditkit_pipeline(folder: str | os.PathLike) -> DitkitPipelineParts:
    """Read a folder written by `save_ditkit_pipeline` (model in eval mode)."""
    from .readers import _id2label

    folder = Path(folder)
    where = folder / PIPELINE_INDEX
    index = read_json(where)
    if index.get("format") != PIPELINE_FORMAT:
        raise ValueError(f"{where}: format is {index.get('format')!r}, not {PIPELINE_FORMAT!r}")
    version = index.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"{where}: version is {version!r}; expected a whole number")
    if version > PIPELINE_VERSION:
        raise ValueError(
            f"{folder}: pipeline format version {version} is newer than this ditkit reads "
            f"({PIPELINE_VERSION}); upgrade ditkit"
        )
    weights = folder / (_text(index, "transformer", where, TRANSFORMER_FILE) or TRANSFORMER_FILE)
    if not weights.is_file():
        raise ValueError(f"{folder}: the pipeline's {weights.name} is missing")
    id2label = _id2label(index.get("id2label"), str(where))
    extra = index.get("extra") or {}
    if not isinstance(extra, dict):
        raise ValueError(f"{where}: extra is a {type(extra).__name__}, expected a mapping")
    vae_name = _text(index, "vae", where, None)
    model, label_names = load_safetensors_model(weights)
    notes: list[str] = []
    if id2label is None and isinstance(label_names, list):
        id2label = dict(enumerate(str(n) for n in label_names))
    vae_path = None
    if vae_name:
        vae_path = folder / vae_name
        if not (vae_path / "config.json").is_file():
            raise ValueError(
                f"{folder}: the pipeline's vae/ folder is missing or incomplete (no config.json)"
            )
    return DitkitPipelineParts(
        model=model,
        id2label=id2label,
        vae_path=vae_path,
        extra=dict(extra),
        notes=notes,
        conditioning=_read_conditioning(index, where, model, id2label, extra),
    )


def _read_conditioning(index: dict[str, Any], where: Path, model: DiT, id2label: Any, extra: dict) -> Any:
    """The stored schema, checked against the model; older folders without one: derived."""
    from ..conditioning import Conditioning

    if index.get("conditioning") is None:
        return folder_conditioning(model, id2label, extra)
    cond = Conditioning.from_dict(index["conditioning"], origin=str(where))
    cfg = model.config
    sizes = tuple(cfg.num_classes) if isinstance(cfg.num_classes, tuple) else (cfg.num_classes,)
    if cond.has_labels and cond.sizes != sizes:
        raise ValueError(
            f"{where}: its conditioning has class counts {list(cond.sizes)} but the model {list(sizes)}; "
            "the folder is damaged"
        )
    return cond
