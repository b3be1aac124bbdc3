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

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .images import Labelled

LATENTS_FORMAT = "ditkit-latents"
LATENTS_VERSION = 1
INDEX_FILE = "index.json"
PLAN_FILE = "plan.json"
STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def is_latent_cache(path: Path) -> bool:
    return path.is_dir() and ((path / INDEX_FILE).is_file() or (path / PLAN_FILE).is_file())


def shard_name(k: int, total: int) -> str:
    return f"shard-{k:05d}-of-{total:05d}.safetensors"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from ..io.native import atomic_write

    text = json.dumps(data, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# -- writing ------------------------------------------------------------------------------------------
class _Reader:
    """Map-style wrapper so a DataLoader can decode images in worker processes."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        from .images import UnreadableImage, to_model_space

        i = self.indices[k]
        try:
            arr, up = self.dataset.read_array(i)
        except UnreadableImage as err:
            return i, None, str(err), False
        return i, to_model_space(arr), "", up


def _collate(items):
    return items


def encode_to_cache(
    dataset,
    codec,
    out: str | os.PathLike,
    *,
    source: str,
    shard_size: int = 1024,
    batch_size: int = 32,
    rank: int = 0,
    world: int = 1,
    dtype: str = "fp32",
    num_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Encode `dataset` (an image data set) with `codec` (a VAECodec) into shards under `out`.

    Returns a summary: {"written", "skipped_shards", "index" (the path, or None until every shard exists)}.
    """
    from tqdm.auto import tqdm

    from ..io.native import atomic_write

    if dtype not in STORE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(STORE_DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be positive")
    out = Path(out)
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{source}: the data set is empty")
    total = math.ceil(n / shard_size)
    image_size = int(dataset.image_size)
    f = int(codec.downsample_factor)
    if image_size % f:
        raise ValueError(f"--image-size {image_size} is not a multiple of the VAE's downsampling factor {f}")
    plan = {
        "format": LATENTS_FORMAT + "-plan",
        "source": source,
        "source_kind": getattr(dataset, "kind_description", "images"),
        "num_source_images": n,
        "image_size": image_size,
        "vae": str(Path(codec.path).resolve()) if getattr(codec, "path", None) else None,
        "scaling_factor": float(codec.scaling_factor),
        "latent_shape": [int(codec.latent_channels), image_size // f, image_size // f],
        "label_columns": list(getattr(dataset, "label_columns", ())),
        "label_names": getattr(dataset, "label_names", None),
        "shard_size": shard_size,
        "num_shards": total,
        "dtype": dtype,
    }
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        old = _read_json(plan_path)
        differ = [k for k in plan if k not in ("vae",) and old.get(k) != plan[k]]
        if differ:
            detail = ", ".join(f"{k} ({old.get(k)!r} there, {plan[k]!r} now)" for k in differ[:4])
            raise ValueError(
                f"{out} holds a cache made with other settings: {detail}; use an empty --out folder"
            )
    elif out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty and holds no latent cache; pass an empty or new --out folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(plan_path, plan)  # every rank writes the same content, atomically

    mine = [k for k in range(total) if k % world == rank]
    todo = [k for k in mine if not _shard_ok(out / shard_name(k, total))]
    done_before = len(mine) - len(todo)
    if done_before:
        log(f"resuming: {done_before} of this process's {len(mine)} shards are already written")
    store = STORE_DTYPES[dtype]
    labels = getattr(dataset, "labels", None)
    count = sum(min(shard_size, n - k * shard_size) for k in todo)
    bar = tqdm(
        total=count,
        disable=not progress or count == 0,
        desc=f"encode{f' rank {rank}' if world > 1 else ''}",
        unit="img",
        dynamic_ncols=True,
    )
    try:
        for k in todo:
            indices = list(range(k * shard_size, min((k + 1) * shard_size, n)))
            means, stds, kept, skipped, upscaled = [], [], [], [], 0
            loader = _loader(dataset, indices, batch_size, num_workers)
            for items in loader:
                good = [(i, x) for i, x, _, _ in items if x is not None]
                for i, x, why, up in items:
                    if x is None:
                        skipped.append([dataset.describe(i), why])
                    upscaled += int(bool(up))
                bar.update(len(items))
                if not good:
                    continue
                x = torch.stack([x for _, x in good])
                both = torch.cat([x, x.flip(-1)])  # originals, then their mirror images
                mean, std = codec.encode_posterior(both.to(codec.device))
                b = len(good)
                finite = torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(std).flatten(1).all(1)
                if not bool(finite.all()):
                    j = int((~finite).nonzero()[0]) % b
                    raise ValueError(
                        f"{dataset.describe(good[j][0])}: the VAE encodes it to non-finite latents (NaN/inf); "
                        "check the image and the VAE's weights"
                    )
                means.append(torch.stack([mean[:b], mean[b:]], dim=1).to("cpu", store))
                stds.append(torch.stack([std[:b], std[b:]], dim=1).to("cpu", store))
                kept.extend(i for i, _ in good)
            shape = (0, 2, *plan["latent_shape"])
            tensors = {
                "mean": torch.cat(means) if means else torch.zeros(shape, dtype=store),
                "std": torch.cat(stds) if stds else torch.zeros(shape, dtype=store),
                "index": torch.tensor(kept, dtype=torch.long),
            }
            if labels is not None:
                tensors["labels"] = labels[torch.tensor(kept, dtype=torch.long)].contiguous()
            # torch.cat keeps the strides of its inputs, and a 1-channel VAE's stacked posteriors are not
            # laid out densely; safetensors stores dense tensors only.
            tensors = {name: t.contiguous() for name, t in tensors.items()}
            meta = {"skipped": json.dumps(skipped), "upscaled": str(upscaled), "format": LATENTS_FORMAT}
            from safetensors.torch import save_file

            atomic_write(
                out / shard_name(k, total), lambda tmp, t=tensors, m=meta: save_file(t, tmp, metadata=m)
            )
            if skipped:
                bar.write(f"shard {k}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}")
    finally:
        bar.close()
    index = finalize_cache(out)
    return {"written": len(todo), "skipped_shards": done_before, "index": index, "num_shards": total}


def _loader(dataset, indices: list[int], batch_size: int, num_workers: int):
    reader = _Reader(dataset, indices)
    if num_workers <= 0:
        return (
            [reader[k] for k in range(s, min(s + batch_size, len(indices)))]
            for s in range(0, len(indices), batch_size)
        )
    from torch.utils.data import DataLoader

    return DataLoader(reader, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)


def _shard_ok(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return {"mean", "std", "index"} <= set(fh.keys())
    except Exception:
        return False  # a damaged shard is written again


def finalize_cache(out: Path) -> Path | None:
    """Write index.json once every shard exists (any rank may do it; the content is deterministic)."""
    from safetensors import safe_open

    plan = _read_json(out / PLAN_FILE)
    total = int(plan["num_shards"])
    files = [out / shard_name(k, total) for k in range(total)]
    if not all(p.is_file() for p in files):
        return None
    shards, skipped, upscaled = [], [], 0
    for p in files:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            count = int(fh.get_slice("index").get_shape()[0])
        shards.append({"file": p.name, "count": count})
        skipped.extend(json.loads(meta.get("skipped", "[]")))
        upscaled += int(meta.get("upscaled", "0"))
    label_names = plan.get("label_names")
    index = {
        "format": LATENTS_FORMAT,
        "version": LATENTS_VERSION,
        "num_images": sum(s["count"] for s in shards),
        **{
            k: plan[k]
            for k in (
                "source",
                "source_kind",
                "num_source_images",
                "image_size",
                "vae",
                "scaling_factor",
                "latent_shape",
                "label_columns",
                "dtype",
            )
        },
        "label_names": label_names,
        "mirror": True,
        "shards": shards,
        "skipped": skipped,
        "upscaled": upscaled,
    }
    path = out / INDEX_FILE
    _write_json(path, index)
    return path


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
            plan = _read_json(root / PLAN_FILE)
            total = int(plan.get("num_shards", 0))
            have = sum((root / shard_name(k, total)).is_file() for k in range(total))
            raise ValueError(
                f"{root}: an unfinished latent cache ({have} of {total} shards); run the same `ditkit encode` "
                "command again to finish it"
            )
        index = _read_json(index_path)
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
