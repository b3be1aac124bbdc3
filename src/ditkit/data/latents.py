"""Cached VAE latents: `ditkit encode` writes them once, training reads them instead of running the VAE.

What is stored, and why it differs from fast-DiT (dit-facts §3). fast-DiT stores one posterior *sample* of
one randomly flipped copy per image, so the flip and the VAE noise are frozen for the whole run. We store the
posterior's mean and std of each image *and of its mirror image*; training then draws a fresh sample
(mean + std * eps) and a fresh flip (the stored mirror) at every step, exactly as encoding on the fly would.

Layout of a cache folder:
    plan.json                                 the settings, written first (a resume must match them)
    shard-00000-of-00012.safetensors          mean, std: (n, 2, C, h, w) [original, mirror];
                                              index: (n,) int64 source row; labels: (n,) or (n, K) int64
    index.json                                written when every shard exists: format "ditkit-latents",
                                              shapes, VAE path and scaling factor, image size, labels and
                                              their names, skipped files

Shards are assigned to processes by number (shard k to rank k % world), so under torchrun no two ranks ever
write the same file; each file is written atomically (temporary file + rename), so an interrupted run
leaves only whole shards, and running the same command again skips them. Unreadable images are left out
and listed in the index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .images import Labelled
from .latents_encode import encode_to_cache, finalize_cache
from .latents_format import (
    INDEX_FILE,
    LATENTS_FORMAT,
    LATENTS_VERSION,
    PLAN_FILE,
    STORE_DTYPES,
    is_latent_cache,
    read_json,
    shard_name,
)

__all__ = [
    "INDEX_FILE",
    "LATENTS_FORMAT",
    "LATENTS_VERSION",
    "PLAN_FILE",
    "STORE_DTYPES",
    "LatentCache",
    "check_finite_latents",
    "encode_to_cache",
    "finalize_cache",
    "is_latent_cache",
    "shard_name",
]


# -- reading ------------------------------------------------------------------------------------------
def check_finite_latents(
    mean: torch.Tensor, std: torch.Tensor, shard: Path, *, offset: int = 0, first_row: int = 0
) -> None:
    """Raise a one-line ValueError naming the shard and the first row whose mean or std is NaN/inf (or
    whose std is negative): training on them would only report a diverged loss."""
    bad = ~(torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(std).flatten(1).all(1))
    bad |= (std < 0).flatten(1).any(1)
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise ValueError(
            f"{shard}: non-finite latents (NaN/inf) at row {first_row + k} of the shard (image {offset + k} "
            f"of the cache), {int(bad.sum())} bad row(s) in all; the cache is damaged: delete this shard and "
            "run the same `ditkit encode` command again"
        )


class LatentCache(Labelled):
    """A finished cache as a training data set: `load_moments(indices)` gives (N, 2, 2, C, h, w) float32,
    axes [original/mirror, mean/std, ...], and the labels of those rows.

    Small caches (under `max_memory` bytes) are held in memory; larger ones are read row by row from the
    shard files (safetensors slices)."""

    kind = "latents"
    kind_description = "latent cache"

    def __init__(
        self, root: str | os.PathLike, label_columns: Sequence[str] = (), *, max_memory: int = 2 << 30
    ):
        root = Path(root)
        self.root = root
        index_path = root / INDEX_FILE
        if not index_path.is_file():
            plan = read_json(root / PLAN_FILE)
            total = int(plan.get("num_shards", 0))
            have = sum((root / shard_name(k, total)).is_file() for k in range(total))
            raise ValueError(
                f"{root}: an unfinished latent cache ({have} of {total} shards); run the same `ditkit encode` "
                "command again to finish it"
            )
        index = read_json(index_path)
        if index.get("format") != LATENTS_FORMAT:
            raise ValueError(
                f"{index_path}: not a ditkit latent cache index (format {index.get('format')!r})"
            )
        if index.get("version") != LATENTS_VERSION:
            raise ValueError(
                f"{index_path}: cache version {index.get('version')!r}; this ditkit reads {LATENTS_VERSION}"
            )
        self.index = index
        self.latent_shape = tuple(int(v) for v in index["latent_shape"])
        self.channels = self.latent_shape[0]
        self.latent_size = self.latent_shape[1]
        self.image_size = int(index["image_size"])
        self.scaling_factor = float(index["scaling_factor"])
        self.vae = index.get("vae")
        self.name = Path(index.get("source") or root.name).name or root.name
        from safetensors import safe_open

        self._files, offsets, labels, nbytes = [], [0], [], 0
        for s in index["shards"]:
            p = root / s["file"]
            if not p.is_file():
                raise ValueError(
                    f"{root}: shard {s['file']} is missing; re-run `ditkit encode` into this folder"
                )
            with safe_open(str(p), framework="pt") as fh:
                keys = set(fh.keys())
                shape = tuple(fh.get_slice("mean").get_shape())
                if shape[2:] != self.latent_shape or shape[1] != 2:
                    raise ValueError(
                        f"{p}: latents of shape {'x'.join(map(str, shape[2:]))}, but the cache holds "
                        f"{'x'.join(map(str, self.latent_shape))} (mixed image sizes); encode each size into "
                        "its own folder"
                    )
                if shape[0] != s["count"]:
                    raise ValueError(
                        f"{p}: {shape[0]} rows, the index says {s['count']}; the cache is damaged"
                    )
                if "labels" in keys:
                    labels.append(fh.get_tensor("labels"))
                nbytes += 2 * shape[0] * 2 * math.prod(self.latent_shape) * 4
            self._files.append(p)
            offsets.append(offsets[-1] + s["count"])
        self._offsets = offsets
        if offsets[-1] == 0:
            raise ValueError(f"{root}: the cache holds no images")
        stored_columns = list(index.get("label_columns") or [])
        stored_names = index.get("label_names")
        all_labels = torch.cat(labels) if labels else None
        self.labels, self.label_names, self.label_columns = _select_labels(
            all_labels, stored_names, stored_columns, list(label_columns), str(root)
        )
        self._memory = None
        if nbytes <= max_memory:
            means, stds = [], []
            for p in self._files:
                with safe_open(str(p), framework="pt") as fh:
                    means.append(fh.get_tensor("mean").float())
                    stds.append(fh.get_tensor("std").float())
                check_finite_latents(means[-1], stds[-1], p, offset=self._offsets[len(means) - 1])
            self._memory = torch.stack([torch.cat(means), torch.cat(stds)], dim=2)  # (N, 2, 2, C, h, w)

    def __len__(self) -> int:
        return self._offsets[-1]

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def load_moments(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._memory is not None:
            return self._memory[indices], self.label_rows(indices)
        import bisect

        from safetensors import safe_open

        handles = self.__dict__.setdefault("_handles", {})
        rows = []
        for i in indices.tolist():
            s = bisect.bisect_right(self._offsets, i) - 1
            r = i - self._offsets[s]
            if s not in handles:
                handles[s] = safe_open(str(self._files[s]), framework="pt")
            fh = handles[s]
            mean = fh.get_slice("mean")[r : r + 1].float()
            std = fh.get_slice("std")[r : r + 1].float()
            check_finite_latents(mean, std, self._files[s], offset=i, first_row=r)
            rows.append(torch.stack([mean, std], dim=2))
        return torch.cat(rows), self.label_rows(indices)

    def load(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.load_moments(indices)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_handles"}

    def summary(self) -> str:
        labels = self.describe_labels()
        c, h, w = self.latent_shape
        return (
            f"latent cache {self.root}: {len(self)} images ({self.image_size}px -> {c}x{h}x{w} latents, "
            f"posterior + mirror), {labels}"
        )


def _select_labels(labels, names, columns: list[str], requested: list[str], where: str):
    """Pick label columns among those stored at encode time."""
    if not columns or labels is None:
        if requested and requested != ["none"]:
            raise ValueError(
                f"{where}: this cache was encoded without labels; re-encode with --label-columns "
                f"{' '.join(requested)}"
            )
        return None, None, ()
    if requested == ["none"]:
        return None, None, ()
    if not requested:
        return labels, names, tuple(columns)
    lower = {c.lower(): k for k, c in enumerate(columns)}
    picks = []
    for col in requested:
        if col.lower() not in lower:
            raise ValueError(
                f"{where}: no label column {col!r} in this cache; it was encoded with: {', '.join(columns)} "
                "(re-encode with other --label-columns)"
            )
        picks.append(lower[col.lower()])
    table = labels if labels.ndim == 2 else labels[:, None]
    name_lists = list(names.values()) if isinstance(names, dict) else [names]
    chosen = tuple(columns[k] for k in picks)
    if len(picks) == 1:
        return table[:, picks[0]].contiguous(), list(name_lists[picks[0]]), chosen
    return table[:, picks].contiguous(), {columns[k]: list(name_lists[k]) for k in picks}, chosen
