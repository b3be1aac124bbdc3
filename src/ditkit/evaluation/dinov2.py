"""FD-DINOv2 features (Stein et al. 2023; EDM2): DINOv2 CLS features of images, through `transformers`.

Preprocessing as EDM2's detector: uint8 images -> float in 0..255, resized to 224x224 bicubic with antialias
(torch's), /255, ImageNet mean/std; the feature is the CLS token after the final layer norm (transformers'
`pooler_output`, the same tensor as the torch-hub model's output), 1024-d for ViT-L/14
(`facebook/dinov2-large`). The model is loaded from a local Hugging Face folder only (no download).
Doubt: transformers interpolates the position embeddings (trained at 518 px) to 224 with its own bicubic
code; the torch-hub model that EDM2 uses does the same interpolation with slightly different arguments, so
features can differ in the last digits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINOV2_SIZE = 224


class DINOv2Features(torch.nn.Module):
    """Wraps a transformers `Dinov2Model`; forward(uint8 (N, 3, H, W)) -> (N, hidden) float32 CLS features."""

    def __init__(self, model, size: int = DINOV2_SIZE) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False
            )
        return (x / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=self.preprocess(images))
        return out.pooler_output.float()


def load_dinov2(folder: str | Path, device="cpu") -> DINOv2Features:
    """Load `Dinov2Model` from a local folder (config.json + weights), e.g. a download of facebook/dinov2-large."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: no such folder; pass --dinov2 a local Hugging Face folder such as facebook/dinov2-large"
        )
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: no config.json; expected a Hugging Face Dinov2Model folder")
    try:
        from transformers import Dinov2Model
    except ImportError:
        raise ValueError("FD-DINOv2 needs the transformers package: pip install transformers") from None
    try:
        model = Dinov2Model.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{folder}: not a loadable Dinov2Model folder ({first})") from None
    return DINOv2Features(model).to(device)
