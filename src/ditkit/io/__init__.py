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
    checkpoint_checksums,
    is_ditkit_checkpoint,
    load_safetensors_model,
    model_from_checkpoint,
    output_error,
    prepare_output_dir,
    safe_torch_load,
    save_safetensors,
    verify_checksum,
    weights_checksum,
)
from .pipeline_folder import DitkitPipelineParts, read_ditkit_pipeline, save_ditkit_pipeline
from .validate import build_checked_model, check_finite, config_from_stored

__all__ = [
    "CONVERT_TARGETS",
    "DTYPES",
    "FORMATS",
    "ConvertResult",
    "DitkitPipelineParts",
    "LoadedModel",
    "atomic_torch_save",
    "atomic_write",
    "build_checked_model",
    "check_finite",
    "checkpoint_checksums",
    "config_from_stored",
    "convert",
    "is_ditkit_checkpoint",
    "load_any",
    "load_model",
    "load_safetensors_model",
    "model_from_checkpoint",
    "output_error",
    "prepare_output_dir",
    "read_ditkit_pipeline",
    "safe_torch_load",
    "save_diffusers_pipeline",
    "save_diffusers_transformer",
    "save_ditkit_pipeline",
    "save_official",
    "save_safetensors",
    "set_arithmetic",
    "verify_checksum",
    "weights_checksum",
]
