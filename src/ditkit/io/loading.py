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
train.py checkpoints), which is allowed by name for that one load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..labels import IMAGENET_NUM_CLASSES, imagenet_id2label, names_from_id2label, normalize_id2label
from ..models import ARITHMETICS, DiT, ModelConfig
from .diffusers_io import (
    diffusers_pos_embed,
    is_transformer_folder,
    read_json,
    read_pipeline_index,
    read_transformer_folder,
    save_diffusers_pipeline,
    save_diffusers_transformer,
)
from .layouts import (
    cast_state,
    check_state,
    infer_official_config,
    is_diffusers_layout,
    is_official_layout,
    official_shapes,
    require_official_layout,
    strip_wrapper_prefix,
)
from .native import (
    SAFETENSORS_FORMAT,
    atomic_torch_save,
    is_ditkit_checkpoint,
    load_safetensors_model,
    model_from_checkpoint,
    read_safetensors,
    safe_torch_load,
    save_safetensors,
)
from .pipeline_folder import is_ditkit_pipeline, read_ditkit_pipeline, save_ditkit_pipeline

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

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def label_names(self) -> list[str] | None:
        n = self.model.config.num_classes
        return names_from_id2label(self.id2label, n) if isinstance(n, int) else None


# -- helpers -----------------------------------------------------------------------------------------
def _model_from_state(config: ModelConfig, state: dict[str, torch.Tensor], where: str) -> DiT:
    """Build on the meta device and adopt the tensors (no second copy of the weights)."""
    from ..presets import build_model

    check_state(state, official_shapes(config), where)
    model = build_model(config, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def set_arithmetic(model: DiT, arithmetic: str) -> DiT:
    """The same weights under another arithmetic ("official" or "diffusers"); shares the tensors."""
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETICS)}")
    if model.config.arithmetic == arithmetic:
        return model
    new = _model_from_state(model.config.replace(arithmetic=arithmetic), dict(model.state_dict()), "model")
    new.train(model.training)
    return new


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
        raise ValueError(
            f"{path}: not a readable checkpoint (corrupt or truncated): {type(err).__name__} {err}"[:300]
        ) from None


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
        has_ema = obj.get("ema") is not None
        if use_ema and not has_ema:
            notes.append("the checkpoint has no EMA weights; loaded the trained weights")
        model = model_from_checkpoint(obj, use_ema=use_ema, path=str(path))
        labels = obj.get("label_names")
        run_config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        return LoadedModel(
            model,
            "ditkit-checkpoint",
            path,
            id2label=_labels(labels),
            has_ema=has_ema,
            notes=notes,
            attributes=_attributes(labels),
            extra={"run_config": run_config} if run_config else {},
        )
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
    config, state, notes, labels = read_transformer_folder(folder)
    from ..models.embed import sincos_pos_embed_2d

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
    if labels is not None:
        loaded.id2label = normalize_id2label(labels)
    parent = folder.parent
    if folder.name == "transformer" and (parent / "model_index.json").is_file():
        index = read_json(parent / "model_index.json")
        if index.get("id2label"):
            loaded.id2label = normalize_id2label(index["id2label"])
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
    loaded.id2label = normalize_id2label(index["id2label"]) if index.get("id2label") else None
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


# -- public API --------------------------------------------------------------------------------------
def load_any(
    path: str | os.PathLike,
    *,
    use_ema: bool = True,
    arithmetic: str | None = None,
    num_heads: int | None = None,
) -> LoadedModel:
    """Detect the format of `path` (file or folder) and load the DiT in it, in eval mode on the CPU.

    `arithmetic` overrides the one the format implies ("official" for official files, "diffusers" for
    diffusers folders, the stored one for ditkit files). `num_heads` overrides the head count inferred for
    files that do not store it (official state dicts).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if arithmetic is not None and arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETICS)}")
    loaded = _load_folder(path) if path.is_dir() else _load_file(path, use_ema, num_heads)
    if arithmetic is not None and arithmetic != loaded.model.config.arithmetic:
        loaded.model = set_arithmetic(loaded.model, arithmetic)
        loaded.notes.append(f"arithmetic switched to {arithmetic!r} on request")
    num_classes = loaded.model.config.num_classes
    if loaded.id2label is None and num_classes == IMAGENET_NUM_CLASSES:
        loaded.id2label = imagenet_id2label()
        loaded.notes.append("1000 classes and no label names in the file: using ImageNet's class names")
    loaded.model.eval()
    return loaded


def load_model(path: str | os.PathLike, *, use_ema: bool = True, arithmetic: str | None = None) -> DiT:
    """The DiT in any supported file or folder (see `load_any`), in eval mode."""
    return load_any(path, use_ema=use_ema, arithmetic=arithmetic).model


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
    loaded = load_any(src, use_ema=use_ema)
    model = loaded.model
    notes = list(loaded.notes)
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
            out = save_diffusers_transformer(model, dst, dtype=dtype, id2label=loaded.id2label)
    else:
        if pipeline:
            out = save_ditkit_pipeline(dst, model, loaded.id2label, vae=vae_source, dtype=dtype)
        else:
            out = save_safetensors(model, dst, label_names=loaded.label_names, dtype=dtype)
    return ConvertResult(source=loaded, output=Path(out), notes=notes)
