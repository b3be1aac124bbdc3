"""ditkit: train, sample, convert and evaluate Diffusion Transformers."""

from .models import DiT, ModelConfig, drop_labels, forward_flops
from .presets import MODEL_PRESETS, build_model, create_model, model_config

__version__ = "0.1.0"

__all__ = [
    "DiT",
    "MODEL_PRESETS",
    "ModelConfig",
    "__version__",
    "build_model",
    "create_model",
    "drop_labels",
    "forward_flops",
    "model_config",
]


def __getattr__(name: str):
    # Heavier parts load on first use, so `import ditkit` stays cheap for the CLI.
    if name == "DiTPipeline":
        from .pipeline import DiTPipeline

        return DiTPipeline
    if name == "load_model":
        from .io import load_model

        return load_model
    raise AttributeError(f"module 'ditkit' has no attribute {name!r}")
