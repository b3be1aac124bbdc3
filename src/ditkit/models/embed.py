"""Embedders: patches, timesteps, labels and the fixed 2D sin-cos position embedding."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def sincos_pos_embed_2d(dim: int, grid_size: int) -> np.ndarray:
    """The MAE/DiT 2D sin-cos embedding, (grid_size**2, dim) in float64.

    Tokens are in row-major order. The first half of the channels encodes the column index and the second
    half the row index (the official code builds its grid with meshgrid(w, h)); each half is [sin, cos]
    with frequencies 1 / 10000^(i / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"the 2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    coords = np.arange(grid_size, dtype=np.float64)
    cols, rows = np.meshgrid(coords, coords)  # cols varies along the last axis: row-major tokens

    def axis_embed(pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
        angles = np.outer(pos.reshape(-1), omega)  # (T, dim/4)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # (T, dim/2)

    return np.concatenate([axis_embed(cols), axis_embed(rows)], axis=1)  # (T, dim)


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch, flattened to tokens (N, T, D). Named like timm's for checkpoints."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous once here: otherwise every later elementwise op inherits the transposed layout and each
        # LayerNorm and Linear pays a hidden copy.
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (N, D, h, w) -> (N, T, D)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t (256 wide, [cos, sin]) followed by a two-layer SiLU MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, freq_shift: int = 0) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        # freq_shift = 0 divides the exponent by half (official); 1 divides by half - 1 (diffusers).
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    def frequencies(self, t: torch.Tensor, max_period: float = 10000.0) -> torch.Tensor:
        half = self.frequency_size // 2
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(exponent / (half - self.freq_shift))
        args = t.float()[:, None] * freqs[None]  # (N, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 256)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.frequencies(t).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)  # (N, D)


class LabelEmbedder(nn.Module):
    """One table row per class plus, when labels are dropped in training, a null row at index num_classes.

    Label dropout is *not* done here: the network is a pure function of its inputs. The trainer calls
    `drop_labels` (below) so that sampling can never drop labels by accident.
    """

    def __init__(self, num_classes: int, hidden_size: int, with_null: bool) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(with_null), hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class MultiLabelEmbedder(nn.Module):
    """One table per attribute (e.g. genre, style), each with its own null row at index n_k; the attribute
    embeddings are summed into one conditioning vector. y is (N, K)."""

    def __init__(self, sizes: tuple[int, ...], hidden_size: int, with_null: bool) -> None:
        super().__init__()
        self.sizes = sizes
        self.tables = nn.ModuleList(nn.Embedding(n + int(with_null), hidden_size) for n in sizes)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        out = self.tables[0](y[:, 0])
        for k in range(1, len(self.tables)):
            out = out + self.tables[k](y[:, k])
        return out


class VectorEmbedder(nn.Module):
    """Projects a condition vector (an image or text embedding of width cond_dim) to the model width.

    An all-zero row is the null condition and maps to a learned null embedding (used for guidance and label
    dropout): real CLIP/CLOOB-style embeddings are normalised, so they are never exactly zero.
    """

    def __init__(self, cond_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(
            nn.Linear(cond_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.null_embedding = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = y.to(self.mlp[0].weight.dtype)
        is_null = (y == 0).all(dim=1, keepdim=True)  # (N, 1)
        return torch.where(is_null, self.null_embedding.expand(y.shape[0], -1), self.mlp(y))


def drop_labels(
    y: torch.Tensor,
    prob: float,
    null_label: int | float | tuple[int, ...],
    generator: torch.Generator | None = None,
    *,
    attribute_prob: float = 0.0,
) -> torch.Tensor:
    """Classifier-free-guidance dropout: replace a sample's condition by the null with probability `prob`.

    `y` is (N,) class ids, (N, K) multi-attribute ids (`null_label` a tuple: every attribute is nulled
    together, and with `attribute_prob` > 0 each attribute is also nulled on its own, so guidance works on any
    subset of attributes), or (N, D) float embeddings (`null_label` 0: the row becomes all zeros).
    """
    if prob <= 0 and attribute_prob <= 0:
        return y
    gen_device = "cpu" if generator is None else generator.device
    n = y.shape[0]
    drop = (torch.rand(n, generator=generator, device=gen_device) < prob).to(y.device)
    if isinstance(null_label, tuple):
        k = len(null_label)
        if y.ndim != 2 or y.shape[1] != k:
            raise ValueError(f"labels have shape {tuple(y.shape)}; expected (N, {k}) for {k} attributes")
        nulls = torch.tensor(null_label, dtype=y.dtype, device=y.device).expand(n, k)
        mask = drop[:, None].expand(n, k)
        if attribute_prob > 0:
            per_attr = torch.rand(n, k, generator=generator, device=gen_device) < attribute_prob
            mask = mask | per_attr.to(y.device)
        return torch.where(mask, nulls, y)
    if y.ndim > 1:
        drop = drop.view(-1, *([1] * (y.ndim - 1)))
    return torch.where(drop, torch.full_like(y, null_label), y)
