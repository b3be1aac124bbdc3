"""Writing a latent cache (`ditkit encode`; the layout is described in ditkit.data.latents).

`encode_to_cache` checks the settings against the folder's plan.json, encodes this process's missing shards
(posterior mean and std of each image and of its mirror image) and writes each one atomically;
`finalize_cache` writes index.json once every shard exists.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .latents_format import (
    INDEX_FILE,
    LATENTS_FORMAT,
    LATENTS_VERSION,
    PLAN_FILE,
    STORE_DTYPES,
    read_json,
    shard_name,
    write_json,
)


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


# -- the plan -----------------------------------------------------------------------------------------
def _make_plan(
    dataset, codec, *, source: str, shard_size: int, batch_size: int, dtype: str
) -> dict[str, Any]:
    """The settings of the cache (plan.json), after checking the arguments."""
    if dtype not in STORE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(STORE_DTYPES)}")
    if shard_size < 1 or batch_size < 1:
        raise ValueError("--shard-size and --batch-size must be positive")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{source}: the data set is empty")
    image_size = int(dataset.image_size)
    f = int(codec.downsample_factor)
    if image_size % f:
        raise ValueError(f"--image-size {image_size} is not a multiple of the VAE's downsampling factor {f}")
    return {
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
        "num_shards": math.ceil(n / shard_size),
        "dtype": dtype,
    }


def _claim_folder(out: Path, plan: dict[str, Any]) -> None:
    """Resume a cache made with the same plan, or start one in a new or empty folder; refuse anything else."""
    plan_path = out / PLAN_FILE
    if plan_path.is_file():
        old = read_json(plan_path)
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
        write_json(plan_path, plan)  # every rank writes the same content, atomically


# -- one shard ----------------------------------------------------------------------------------------
def _encode_batch(dataset, codec, good: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (b, 2, C, h, w) [original, mirror] of the readable images of one batch."""
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
    return torch.stack([mean[:b], mean[b:]], dim=1), torch.stack([std[:b], std[b:]], dim=1)


def _encode_shard(
    dataset, codec, indices: list[int], plan: dict[str, Any], batch_size: int, num_workers: int, bar
) -> tuple[dict[str, torch.Tensor], list[list[str]], int]:
    """(the shard's tensors, [file, reason] of each unreadable image, count of upscaled images)."""
    store = STORE_DTYPES[plan["dtype"]]
    means, stds, kept, skipped, upscaled = [], [], [], [], 0
    for items in _loader(dataset, indices, batch_size, num_workers):
        good = [(i, x) for i, x, _, _ in items if x is not None]
        for i, x, why, up in items:
            if x is None:
                skipped.append([dataset.describe(i), why])
            upscaled += int(bool(up))
        bar.update(len(items))
        if not good:
            continue
        mean, std = _encode_batch(dataset, codec, good)
        means.append(mean.to("cpu", store))
        stds.append(std.to("cpu", store))
        kept.extend(i for i, _ in good)
    shape = (0, 2, *plan["latent_shape"])
    tensors = {
        "mean": torch.cat(means) if means else torch.zeros(shape, dtype=store),
        "std": torch.cat(stds) if stds else torch.zeros(shape, dtype=store),
        "index": torch.tensor(kept, dtype=torch.long),
    }
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        tensors["labels"] = labels[torch.tensor(kept, dtype=torch.long)].contiguous()
    # torch.cat keeps the strides of its inputs, and a 1-channel VAE's stacked posteriors are not
    # laid out densely; safetensors stores dense tensors only.
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    return tensors, skipped, upscaled


def _save_shard(
    path: Path, tensors: dict[str, torch.Tensor], skipped: list[list[str]], upscaled: int
) -> None:
    from safetensors.torch import save_file

    from ..io.native import atomic_write

    meta = {"skipped": json.dumps(skipped), "upscaled": str(upscaled), "format": LATENTS_FORMAT}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


# -- the whole cache ----------------------------------------------------------------------------------
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

    plan = _make_plan(
        dataset, codec, source=source, shard_size=shard_size, batch_size=batch_size, dtype=dtype
    )
    out = Path(out)
    _claim_folder(out, plan)
    n, total = plan["num_source_images"], plan["num_shards"]
    mine = [k for k in range(total) if k % world == rank]
    todo = [k for k in mine if not _shard_ok(out / shard_name(k, total))]
    done_before = len(mine) - len(todo)
    if done_before:
        log(f"resuming: {done_before} of this process's {len(mine)} shards are already written")
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
            tensors, skipped, upscaled = _encode_shard(
                dataset, codec, indices, plan, batch_size, num_workers, bar
            )
            _save_shard(out / shard_name(k, total), tensors, skipped, upscaled)
            if skipped:
                bar.write(f"shard {k}: skipped {len(skipped)} unreadable image(s), e.g. {skipped[0][0]}")
    finally:
        bar.close()
    index = finalize_cache(out)
    return {"written": len(todo), "skipped_shards": done_before, "index": index, "num_shards": total}


def finalize_cache(out: Path) -> Path | None:
    """Write index.json once every shard exists (any rank may do it; the content is deterministic)."""
    from safetensors import safe_open

    plan = read_json(out / PLAN_FILE)
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
    write_json(path, index)
    return path
