"""The per-format readers behind `ditkit.io.load_any` (ditkit.io.loading): each turns one kind of file or
folder into a `LoadedModel`, checking the tensors against their config before anything is built
(`ditkit.io.validate`) and never unpickling more than tensors and plain containers, plus
`argparse.Namespace` (the `args` of official train.py checkpoints), allowed by name for that one load.
"""

from __future__ import annotations

import argparse
import contextlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..labels import names_from_id2label, normalize_id2label
from ..models import DiT, ModelConfig
from .diffusers_io import (
    diffusers_pos_embed,
    is_transformer_folder,
    read_json,
    read_pipeline_index,
    read_transformer_folder,
)
from .layouts import infer_official_config, is_diffusers_layout, is_official_layout, strip_wrapper_prefix
from .native import (
    SAFETENSORS_FORMAT,
    is_ditkit_checkpoint,
    load_safetensors_model,
    read_safetensors,
    safe_torch_load,
)
from .pipeline_folder import is_ditkit_pipeline, read_ditkit_pipeline
from .validate import build_checked_model, check_config_fits, config_from_stored


@dataclass
class LoadedModel:
    model: DiT
    format: str
    path: Path
    id2label: dict[int, str] | None = None
    vae_path: Path | None = None
    has_ema: bool | None = None
    notes: list[str] = field(default_factory=list)
    # Format-specific extras: a diffusers pipeline's "scheduler_config", a ditkit pipeline's saved `extra`.
    extra: dict[str, Any] = field(default_factory=dict)
    # Multi-attribute models: {"genre": [names...], "style": [names...]} in attribute order.
    attributes: dict[str, list[str]] | None = None
    # The conditioning schema (ditkit checkpoints and pipeline folders store it; None for other formats).
    conditioning: Any = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def label_names(self) -> list[str] | None:
        n = self.model.config.num_classes
        return names_from_id2label(self.id2label, n) if isinstance(n, int) else None


# -- helpers -----------------------------------------------------------------------------------------
def _model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> DiT:
    """Build on the meta device and adopt the tensors (no second copy), after checking they fit."""
    return build_checked_model(config, state, where)


def _id2label(value: Any, where: str) -> dict[int, str] | None:
    """A stored id2label map (JSON: string keys), or a one-line error naming the file."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        raise ValueError(
            f"{where}: id2label is a {type(value).__name__}, expected a mapping of class id to name "
            '(e.g. {"0": "cat"})'
        )
    try:
        return normalize_id2label(value)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


@contextlib.contextmanager
def _allow_namespace():
    """Let weights_only unpickling rebuild argparse.Namespace (official train.py `args`) and nothing else."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # pragma: no cover - torch < 2.5: train checkpoints fail with a clear message
        yield
        return
    with safe_globals([argparse.Namespace]):
        yield


def _is_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 0 < n <= path.stat().st_size - 8


def _torch_load(path: Path) -> Any:
    """safe_torch_load (weights_only) with argparse.Namespace allowed, and one-line errors for any junk."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive; legacy torch files and plain pickles start with the PROTO opcode.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"{path}: not a readable checkpoint (neither a PyTorch file nor safetensors)")
    try:
        with _allow_namespace():
            return safe_torch_load(path)
    except (ValueError, FileNotFoundError, IsADirectoryError):
        raise
    except Exception as err:  # the weights_only unpickler raises KeyError/IndexError/... on garbage
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated: {first[:120]})") from None


def _safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file (corrupt or truncated): {err}") from None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _load_official_state(
    state: dict[str, torch.Tensor], path: Path, num_heads: int | None, notes: list[str]
) -> DiT:
    state, prefix = strip_wrapper_prefix(state)
    if prefix:
        notes.append(f"stripped the {prefix!r} prefix from every key")
    if not is_official_layout(state):
        if is_diffusers_layout(state):
            raise ValueError(
                f"{path}: diffusers transformer weights without their config; pass the folder that holds "
                "config.json (or the whole pipeline folder)"
            )
        keys = ", ".join(sorted(state)[:4])
        raise ValueError(f"{path}: no DiT weights found (keys start {keys}, ...)")
    config, inferred = infer_official_config(state, num_heads=num_heads, where=str(path))
    check_config_fits(config, state, str(path))
    notes.extend(inferred)
    return _model_from_state(config, state, str(path))


# -- files -------------------------------------------------------------------------------------------
def _load_file(path: Path, use_ema: bool, num_heads: int | None) -> LoadedModel:
    if path.name.startswith("diffusion_pytorch_model") and is_transformer_folder(path.parent):
        loaded = _load_transformer_folder(path.parent)
        loaded.notes.insert(0, f"{path.name} is part of a diffusers folder; loaded {path.parent}")
        return loaded
    notes: list[str] = []
    if _is_safetensors(path):
        metadata = _safetensors_metadata(path)
        if metadata.get("format") == SAFETENSORS_FORMAT:
            model, names = load_safetensors_model(path)
            return LoadedModel(
                model,
                "ditkit-safetensors",
                path,
                id2label=_labels(names),
                has_ema=None,
                attributes=_attributes(names),
            )
        state, _ = read_safetensors(path)
        model = _load_official_state(state, path, num_heads, notes)
        return LoadedModel(model, "official-state-dict", path, has_ema=None, notes=notes)

    obj = _torch_load(path)
    if is_ditkit_checkpoint(obj):
        return _load_ditkit_checkpoint(obj, path, use_ema)
    if isinstance(obj, dict) and "format" in obj and isinstance(obj["format"], str):
        raise ValueError(f"{path}: unknown checkpoint format {obj['format']!r}")
    if isinstance(obj, dict) and ("model" in obj or "ema" in obj) and not _is_tensor_dict(obj):
        has_ema = _is_tensor_dict(obj.get("ema"))
        key = "ema" if use_ema and has_ema else "model"
        if use_ema and not has_ema:
            notes.append("the checkpoint has no EMA weights; loaded the trained weights")
        if not _is_tensor_dict(obj.get(key)):
            raise ValueError(f"{path}: the checkpoint's {key!r} entry is not a state dict of tensors")
        args = obj.get("args")
        if isinstance(args, argparse.Namespace):
            described = ", ".join(
                f"{k}={getattr(args, k)}" for k in ("model", "image_size", "num_classes") if hasattr(args, k)
            )
            if described:
                notes.append(f"train.py args: {described}")
        model = _load_official_state(dict(obj[key]), path, num_heads, notes)
        return LoadedModel(model, "official-train", path, has_ema=has_ema, notes=notes)
    if _is_tensor_dict(obj):
        model = _load_official_state(obj, path, num_heads, notes)
        return LoadedModel(model, "official-state-dict", path, has_ema=None, notes=notes)
    raise ValueError(f"{path}: not a DiT checkpoint (it holds a {type(obj).__name__}, not a state dict)")


def _load_ditkit_checkpoint(obj: dict[str, Any], path: Path, use_ema: bool) -> LoadedModel:
    """A ditkit training checkpoint, read through its schema (`ditkit.train.state.read_inference_parts`):
    validated field by field, the weights checked against their checksum and config before the model is built."""
    from ..conditioning import Conditioning
    from ..train.state import read_inference_parts  # train imports io: import here, not at module import

    where = str(path)
    config_from_stored(obj.get("model_config"), where)  # "no model config" before "incomplete checkpoint"
    parts = read_inference_parts(obj, use_ema=use_ema, origin=where)
    notes = []
    if use_ema and not parts.used_ema:
        notes.append("the checkpoint has no EMA weights; loaded the trained weights")
    model = build_checked_model(ModelConfig.from_dict(parts.model_config), parts.weights, where)
    cond: Conditioning = parts.conditioning
    return LoadedModel(
        model,
        "ditkit-checkpoint",
        path,
        id2label=cond.id2label() or _labels(obj.get("label_names")),
        has_ema=obj.get("ema") is not None,
        notes=notes,
        attributes=_attributes(cond.label_names()) if cond.kind == "attributes" else None,
        extra={"run_config": parts.config, "step": parts.step},
        conditioning=cond,
    )


def _attributes(names: Any) -> dict[str, list[str]] | None:
    """Per-attribute label names ({"genre": [...], "style": [...]}) as multi-attribute checkpoints store them."""
    if (
        isinstance(names, dict)
        and names
        and all(
            isinstance(k, str) and not k.lstrip("-").isdigit() and isinstance(v, (list, tuple))
            for k, v in names.items()
        )
    ):
        return {k: [str(n) for n in v] for k, v in names.items()}
    return None


def _labels(names: Any) -> dict[int, str] | None:
    """Label names as stored by ditkit files -> id2label; None for absent or per-attribute (nested) names."""
    if names is None:
        return None
    if isinstance(names, dict):
        try:
            return normalize_id2label(names)
        except ValueError:
            return None
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return dict(enumerate(names))
    return None


# -- folders -----------------------------------------------------------------------------------------
def _load_transformer_folder(folder: Path) -> LoadedModel:
    config, state, notes, labels, process = read_transformer_folder(folder)
    from ..models.embed import sincos_pos_embed_2d

    check_config_fits(config, state, str(folder / "config.json"), pos_embed_stored=False)
    grid = config.input_size // config.patch_size
    ours = torch.from_numpy(sincos_pos_embed_2d(config.hidden_size, grid)).float().unsqueeze(0)
    theirs = diffusers_pos_embed(config)
    if theirs is not None and not torch.equal(theirs, ours):
        notes.append(
            "pos_embed taken from diffusers' own sin-cos table (it differs from ditkit's in the last bits)"
        )
        ours = theirs
    state["pos_embed"] = ours
    model = _model_from_state(config, state, str(folder))
    loaded = LoadedModel(model, "diffusers-transformer", folder, has_ema=None, notes=notes)
    if process is not None:
        loaded.extra["process"] = process  # a flow-matching run's process, as ditkit exported it
    if labels is not None:
        loaded.id2label = _id2label(labels, str(folder / "config.json"))
    parent = folder.parent
    if folder.name == "transformer" and (parent / "model_index.json").is_file():
        index = read_json(parent / "model_index.json")
        if index.get("id2label"):
            loaded.id2label = _id2label(index["id2label"], str(parent / "model_index.json"))
        if (parent / "vae" / "config.json").is_file():
            loaded.vae_path = parent / "vae"
        notes.append(f"labels and VAE taken from the enclosing pipeline folder {parent}")
    return loaded


def _load_diffusers_pipeline(folder: Path) -> LoadedModel:
    index = read_pipeline_index(folder)
    loaded = _load_transformer_folder(folder / "transformer")
    loaded.format = "diffusers-pipeline"
    loaded.path = folder
    loaded.notes = [n for n in loaded.notes if "enclosing pipeline" not in n]
    loaded.id2label = _id2label(index.get("id2label"), str(folder / "model_index.json"))
    loaded.vae_path = folder / "vae" if (folder / "vae" / "config.json").is_file() else None
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        loaded.extra["scheduler_config"] = read_json(scheduler)
    return loaded


def _load_folder(folder: Path) -> LoadedModel:
    if is_ditkit_pipeline(folder):
        parts = read_ditkit_pipeline(folder)
        return LoadedModel(
            parts.model,
            "ditkit-pipeline",
            folder,
            id2label=parts.id2label,
            vae_path=parts.vae_path,
            has_ema=None,
            notes=parts.notes,
            extra=parts.extra,
            attributes=_attributes(parts.extra.get("attributes")),
            conditioning=parts.conditioning,
        )
    if (folder / "model_index.json").is_file():
        return _load_diffusers_pipeline(folder)
    if (folder / "config.json").is_file():
        cls = read_json(folder / "config.json").get("_class_name")
        if cls == "AutoencoderKL":
            raise ValueError(f"{folder}: this is a VAE folder, not a DiT; pass it as the VAE (--vae)")
        if is_transformer_folder(folder):
            return _load_transformer_folder(folder)
        raise ValueError(f"{folder}: config.json describes a {cls!r}, not a DiT transformer")
    raise ValueError(
        f"{folder}: not a model folder (no ditkit_pipeline.json, model_index.json or config.json)"
    )
