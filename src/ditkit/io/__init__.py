"""Reading and writing model files."""

from .native import (
    atomic_torch_save,
    atomic_write,
    is_ditkit_checkpoint,
    load_safetensors_model,
    model_from_checkpoint,
    safe_torch_load,
    save_safetensors,
)

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "is_ditkit_checkpoint",
    "load_safetensors_model",
    "model_from_checkpoint",
    "safe_torch_load",
    "save_safetensors",
]
