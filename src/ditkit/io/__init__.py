"""Reading and writing model files: ditkit's own formats, official DiT files and diffusers folders."""

from .diffusers_io import save_diffusers_pipeline, save_diffusers_transformer
from .loading import (
    CONVERT_TARGETS,
    DTYPES,
    FORMATS,
    ConvertResult,
    LoadedModel,
    convert,
    load_any,
    load_model,
    save_official,
    set_arithmetic,
)
from .native import (
    atomic_torch_save,
    atomic_write,
    is_ditkit_checkpoint,
    load_safetensors_model,
    model_from_checkpoint,
    safe_torch_load,
    save_safetensors,
)
from .pipeline_folder import DitkitPipelineParts, read_ditkit_pipeline, save_ditkit_pipeline

__all__ = [
    "CONVERT_TARGETS",
    "DTYPES",
    "FORMATS",
    "ConvertResult",
    "DitkitPipelineParts",
    "LoadedModel",
    "atomic_torch_save",
    "atomic_write",
    "convert",
    "is_ditkit_checkpoint",
    "load_any",
    "load_model",
    "load_safetensors_model",
    "model_from_checkpoint",
    "read_ditkit_pipeline",
    "safe_torch_load",
    "save_diffusers_pipeline",
    "save_diffusers_transformer",
    "save_ditkit_pipeline",
    "save_official",
    "save_safetensors",
    "set_arithmetic",
]
