"""ditkit's own files: training checkpoints (`.pt`, tensors + plain containers only) and weights-only
safetensors files with the model config in their metadata.

Nothing here unpickles code: every `torch.load` runs with `weights_only=True`, and files are written
atomically (temporary file in the same folder, fsync, then rename), so a crash mid-write leaves the previous
file intact.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..models import DiT, ModelConfig

CHECKPOINT_FORMAT = "ditkit-checkpoint"
CHECKPOINT_VERSION = 1
SAFETENSORS_FORMAT = "ditkit-safetensors"


# -- atomic writes ----------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# -- safe loading -----------------------------------------------------------------------------------
def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load on CPU with weights_only=True and one-line errors for every way a file can be bad."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive; legacy torch files and plain pickles start with the PROTO opcode.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(f"{path}: not a readable checkpoint (not a PyTorch file; empty, corrupt or another format)")
    try:
        with warnings.catch_warnings():  # junk that starts like a pickle makes torch warn before it fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        # Only a refused global means "this pickle would import code"; other weights-only errors mean junk.
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise ValueError(
                f"{path}: refused to load: the file contains pickled Python objects that could run code "
                f"({first[:160]}); only tensors and plain containers are accepted"
            ) from None
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated)") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        AttributeError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        UnicodeDecodeError,
        MemoryError,
    ) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated): {first[:160]}") from None


# -- training checkpoints ---------------------------------------------------------------------------
def is_ditkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def model_from_checkpoint(ckpt: dict[str, Any], *, use_ema: bool = True, path: str = "checkpoint") -> DiT:
    """Rebuild the network held by a ditkit training checkpoint (EMA weights by default)."""
    from ..presets import build_model

    if not is_ditkit_checkpoint(ckpt):
        raise ValueError(f"{path}: not a ditkit checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    config = ModelConfig.from_dict(ckpt["model_config"])
    key = "ema" if use_ema and ckpt.get("ema") is not None else "model"
    with torch.device("meta"):
        model = build_model(config)
    model.load_state_dict(ckpt[key], strict=True, assign=True)
    return model.eval()


# -- safetensors ------------------------------------------------------------------------------------
def save_safetensors(
    model: DiT,
    path: str | os.PathLike,
    *,
    label_names: list[str] | None = None,
    dtype: torch.dtype | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Weights only, config and label names as JSON in the safetensors metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "label_names": json.dumps(label_names),
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable safetensors file (corrupt or truncated): {err}") from None
    return state, metadata


def load_safetensors_model(path: str | os.PathLike) -> tuple[DiT, list[str] | None]:
    """Load a file written by `save_safetensors`: (model in eval mode, label names or None)."""
    from ..presets import build_model

    state, metadata = read_safetensors(path)
    if metadata.get("format") != SAFETENSORS_FORMAT or "model_config" not in metadata:
        raise ValueError(f"{path}: a safetensors file without ditkit's model config in its metadata")
    config = ModelConfig.from_dict(json.loads(metadata["model_config"]))
    with torch.device("meta"):
        model = build_model(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), json.loads(metadata.get("label_names", "null"))
