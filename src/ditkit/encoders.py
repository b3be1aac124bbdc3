"""Condition encoders for embedding-conditioned DiTs (the CLOOB/CLIP-conditioned setup of seed 003).

An encoder maps images and texts into one shared, L2-normalised embedding space. A model trained on image
embeddings alone can then be sampled from a text prompt or from an image: both land in the same space.

- `ConditionEncoder`: the protocol (`embed_dim`, `encode_image`, `encode_text`).
- `OpenCLIPEncoder`: an adapter over open_clip, when it is installed and its weights are a local file.
- `ToyEncoder`: a small deterministic encoder with no weights to download (a fixed random projection of
  downsampled pixels, and hashed word vectors), for tests, demos and pipelines that must run offline.

`load_encoder(spec)` builds one from a string stored in run configs: "toy:DIM[:SEED]" or
"open_clip:ARCH:/path/to/weights".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F


@runtime_checkable
class ConditionEncoder(Protocol):
    embed_dim: int

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, embed_dim), unit norm."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """N strings -> (N, embed_dim), unit norm."""
        ...


class ToyEncoder:
    """Deterministic image/text embeddings without weights.

    Images: average-pool to 8x8, flatten, fixed random projection. Texts: the sum of per-word random vectors
    seeded by a hash of the word. Not semantic across modalities, but stable, cheap and unit-norm.
    """

    def __init__(self, embed_dim: int = 64, seed: int = 0) -> None:
        if embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {embed_dim}")
        self.embed_dim = embed_dim
        self.seed = seed
        g = torch.Generator().manual_seed(seed)
        self._proj = torch.randn(3 * 64, embed_dim, generator=g) / 8.0

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            x = x[:, :3]
        pooled = F.adaptive_avg_pool2d(x, 8).flatten(1)  # (N, 192)
        return F.normalize(pooled @ self._proj.to(pooled.device), dim=1)

    def _word(self, word: str) -> torch.Tensor:
        digest = hashlib.sha256(f"{self.seed}:{word}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return torch.from_numpy(rng.standard_normal(self.embed_dim).astype(np.float32))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            words = text.lower().split()
            if not words:
                raise ValueError("empty prompt: give at least one word")
            rows.append(torch.stack([self._word(w) for w in words]).sum(0))
        return F.normalize(torch.stack(rows), dim=1)


class OpenCLIPEncoder:
    """open_clip model with local weights; images in [-1, 1] are resized and normalised as CLIP expects."""

    def __init__(self, arch: str, weights: str | Path, device: str | torch.device = "cpu") -> None:
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(
                f"{weights}: open_clip weights not found (give a local file; nothing downloads)"
            )
        state = read_encoder_weights(weights)  # before open_clip sees the file: nothing is unpickled
        try:
            import open_clip
        except ImportError:
            raise ValueError(
                "the open_clip encoder needs the open_clip_torch package: pip install open_clip_torch"
            ) from None
        known = list(open_clip.list_models())
        if arch not in known:
            from .presets import suggest

            raise ValueError(
                f"unknown open_clip architecture {arch!r}{suggest(arch, known)}; "
                "`python -c 'import open_clip; print(open_clip.list_models())'` lists them"
            )
        try:
            model, _, _ = open_clip.create_model_and_transforms(arch, pretrained=None)
        except Exception as err:  # open_clip raises many types; one line naming the architecture
            raise ValueError(f"open_clip could not build {arch!r}: {str(err).strip()[:160]}") from None
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            missing, extra = result.missing_keys, result.unexpected_keys
            raise ValueError(
                f"{weights}: these are not {arch} weights ({len(missing)} missing key(s), e.g. "
                f"{', '.join(missing[:2]) or '-'}; {len(extra)} unexpected, e.g. {', '.join(extra[:2]) or '-'})"
            )
        self.model = model.eval().to(device)
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = torch.device(device)
        visual = model.visual
        size = visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        self.mean = torch.tensor(getattr(visual, "image_mean", None) or (0.48145466, 0.4578275, 0.40821073))
        self.std = torch.tensor(getattr(visual, "image_std", None) or (0.26862954, 0.26130258, 0.27577711))
        with torch.no_grad():
            self.embed_dim = int(self.encode_text(["a"]).shape[1])

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float().to(self.device) + 1) / 2  # [0, 1]
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = (x - self.mean.view(1, 3, 1, 1).to(x)) / self.std.view(1, 3, 1, 1).to(x)
        return F.normalize(self.model.encode_image(x).float(), dim=1)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=1)


def read_encoder_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an encoder weights file (safetensors, or a torch file holding only tensors), with a
    training wrapper ({"state_dict": ...}, a "module." prefix) removed; one-line errors for anything else."""
    from .io.layouts import strip_wrapper_prefix
    from .io.native import read_safetensors, safe_torch_load

    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        state, _ = read_safetensors(path)
    else:
        state = safe_torch_load(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise ValueError(f"{path}: not an encoder weights file (expected a state dict of tensors)")
    state, _ = strip_wrapper_prefix(dict(state))
    return state


def load_encoder(spec: str | None, device: str | torch.device = "cpu") -> Any:
    """'toy:DIM[:SEED]' or 'open_clip:ARCH:/path/to/weights'; None or '' gives None."""
    if not spec:
        return None
    kind, _, rest = spec.partition(":")
    if kind == "toy":
        parts = rest.split(":") if rest else []
        try:
            dim = int(parts[0]) if parts else 64
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise ValueError(f"bad toy encoder spec {spec!r}; expected toy:DIM[:SEED], e.g. toy:64") from None
        return ToyEncoder(dim, seed)
    if kind == "open_clip":
        arch, _, weights = rest.partition(":")
        if not arch or not weights:
            raise ValueError(f"bad open_clip spec {spec!r}; expected open_clip:ARCH:/path/to/weights")
        return OpenCLIPEncoder(arch, weights, device=device)
    raise ValueError(f"unknown encoder {kind!r} in {spec!r}; use toy:DIM or open_clip:ARCH:/path/to/weights")
