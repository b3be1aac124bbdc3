"""`ditkit demo`: a local web page (Gradio) to generate images from a checkpoint.

- `spec`: what the page offers for a pipeline (label pickers, samplers, input bounds, the model card), pure.
- `generate`: one request -> images, a zip of PNGs and a samples.npz (arr_0, arr_1), pure (no Gradio).
- `app`: the Gradio page built from a spec (imports Gradio; `pip install -e ".[demo]"`).
- `serve`: loading, the port check, the bind warning and the launch; `training`: the embedded default.

Gradio is imported only by `app` and `serve`, so `import ditkit.demo` and the CLI work without it.
"""

from .generate import GenerateRequest, Generation, generate, parse_seed, write_downloads
from .spec import Bounds, DemoSpec, LabelPicker, build_spec, sampler_choices

__all__ = [
    "Bounds",
    "DemoSpec",
    "GenerateRequest",
    "Generation",
    "LabelPicker",
    "build_spec",
    "generate",
    "parse_seed",
    "sampler_choices",
    "write_downloads",
]
