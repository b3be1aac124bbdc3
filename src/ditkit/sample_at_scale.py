"""Sample N images to one `.npz` for FID-50K: one seed per image index, resumable shards, torchrun-aware.

- Image k comes from its own generator, seeded from (seed, k), and its label from a draw made for all N at once
  (class_mode "random") or k mod num_classes ("balanced": N / num_classes per class). So image k is the same
  whatever the number of processes, the batch size or a crash in between.
- Work is cut into shards of `shard_size` images (`OUT.shards/`); a finished shard is written atomically and
  skipped when the run is started again with the same settings.
- Under torchrun, rank r samples shards r, r + W, ...; after a barrier (torch.distributed, gloo) rank 0
  gathers the shards into OUT.npz (the shard folder must be shared between the ranks, as one machine's disk
  is) and removes them.
- OUT.npz: `arr_0` uint8 N×H×W×3 (grey images are repeated to 3 channels; uint8 = round(255 * image), the
  official sample_ddp.py's clamp(127.5 x + 128) truncation), `arr_1` int64 labels (-1 for unconditional
  models), `meta` a JSON string (as in `ditkit sample`'s samples.npz) with checkpoint, sampler, steps, guidance, interval, precision, seed
  and class mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLASS_MODES = ("random", "balanced")


def image_generator(seed: int, index: int, device="cpu") -> torch.Generator:
    """The generator of image `index`: independent of batching and of the process that draws it."""
    return torch.Generator(device=device).manual_seed((int(seed) << 32) + int(index))


def sample_labels(num: int, num_classes: int | None, class_mode: str, seed: int) -> np.ndarray:
    if class_mode not in CLASS_MODES:
        raise ValueError(f"unknown class mode {class_mode!r}; choose one of {', '.join(CLASS_MODES)}")
    if not num_classes:
        return np.full(num, -1, dtype=np.int64)
    if class_mode == "balanced":
        return np.arange(num, dtype=np.int64) % num_classes
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(num_classes, (num,), generator=gen).numpy().astype(np.int64)


def default_npz_name(meta: dict[str, Any]) -> str:
    """Like the official sample_ddp.py's `{model}-size-{size}-vae-{vae}-cfg-{scale}-seed-{seed}.npz`."""
    model = Path(str(meta.get("checkpoint") or "model")).stem.replace("/", "-")
    parts = [
        model,
        f"size-{meta['resolution']}",
        f"{meta['sampler']}-{meta['steps']}",
        f"cfg-{meta['guidance_scale']}",
    ]
    if meta.get("guidance_interval"):
        lo, hi = meta["guidance_interval"]
        parts.append(f"interval-{lo}-{hi}")
    parts += [meta["class_mode"], f"seed-{meta['seed']}", f"n-{meta['num']}"]
    return "-".join(str(p) for p in parts) + ".npz"


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    x = (images.float().clamp(0, 1) * 255 + 0.5).floor().to(torch.uint8)  # (N, C, H, W)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _sample_range(pipe, start, end, labels, seed, batch_size, sampler_kwargs):
    images, info = [], {}
    for i in range(start, end, batch_size):
        j = min(i + batch_size, end)
        gens = [image_generator(seed, k, pipe.device) for k in range(i, j)]
        ids = labels[i:j].tolist()
        kwargs = dict(sampler_kwargs, output_type="pt", generator=gens)
        out = pipe(num_images=j - i, **kwargs) if ids[0] < 0 else pipe(ids, **kwargs)
        images.append(_to_uint8(out.images))
        info = dict(getattr(out, "info", {}) or {})
    return np.concatenate(images), info


def _fingerprint(meta: dict) -> str:
    keep = {k: v for k, v in meta.items() if k not in ("precision",)}
    return json.dumps(keep, sort_keys=True, default=str)


def _write_npz(path: Path, **arrays) -> None:
    from ditkit.io.native import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


def _shard_done(path: Path, fingerprint: str) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            found = str(data["fingerprint"])
    except (OSError, ValueError, KeyError, EOFError):
        return False  # unreadable: sample it again
    if found != fingerprint:
        raise ValueError(
            f"{path.parent}: shards from a run with other settings; delete the folder or choose another --npz"
        )
    return True


def _barrier(world: int) -> None:
    if world <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def sample_to_npz(
    pipe,
    num: int,
    out_path: str | os.PathLike | None = None,
    *,
    class_mode: str = "random",
    batch_size: int = 64,
    seed: int = 0,
    shard_size: int = 1000,
    checkpoint: str | None = None,
    progress: bool = True,
    out_dir: str | os.PathLike = ".",
    **sampler_kwargs,
) -> Path:
    """Sample `num` images with `pipe` (a DiTPipeline) into one .npz; returns its path (on every rank).

    sampler_kwargs go to the pipeline: sampler, num_inference_steps, guidance_scale, guidance_interval, ...
    """
    from tqdm.auto import tqdm

    from ditkit.runtime import dist_env

    if num < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(
            f"num, batch size and shard size must be positive (got {num}, {batch_size}, {shard_size})"
        )
    env = dist_env()
    cfg = pipe.transformer.config
    if cfg.multi_label or cfg.cond_dim:
        raise ValueError("sampling to .npz supports class-conditional and unconditional models only")
    num_classes = int(cfg.num_classes) or None
    labels = sample_labels(num, num_classes, class_mode, seed)
    meta = _metadata(pipe, num, class_mode, seed, checkpoint, sampler_kwargs)
    out = Path(out_path) if out_path else Path(out_dir) / default_npz_name(meta)
    shard_dir = out.with_name(out.name.removesuffix(".npz") + ".shards")
    fingerprint = _fingerprint(meta)
    starts = list(range(0, num, shard_size))
    mine = starts[env.rank :: env.world_size]
    bar = tqdm(total=len(mine), desc=f"rank {env.rank} shards", disable=not progress, unit="shard")
    for start in mine:
        end = min(start + shard_size, num)
        path = shard_dir / f"shard-{start:08d}-{end:08d}.npz"
        if not _shard_done(path, fingerprint):
            images, info = _sample_range(pipe, start, end, labels, seed, batch_size, sampler_kwargs)
            meta["precision"] = info.get("precision", meta.get("precision"))
            _write_npz(path, images=images, labels=labels[start:end], fingerprint=np.array(fingerprint))
        bar.update(1)
    bar.close()
    _barrier(env.world_size)
    if env.rank == 0:
        _gather(shard_dir, shard_size, num, out, labels, meta)
    _barrier(env.world_size)
    return out


def _gather(shard_dir: Path, shard_size: int, num: int, out: Path, labels: np.ndarray, meta: dict) -> None:
    parts = []
    for start in range(0, num, shard_size):
        end = min(start + shard_size, num)
        with np.load(shard_dir / f"shard-{start:08d}-{end:08d}.npz", allow_pickle=False) as data:
            parts.append(np.asarray(data["images"]))
    images = np.concatenate(parts)
    if len(images) != num:
        raise ValueError(f"{shard_dir}: gathered {len(images)} images, expected {num}")
    _write_npz(out, arr_0=images, arr_1=labels, meta=np.asarray([json.dumps(meta, default=str)]))
    for path in shard_dir.glob("shard-*.npz"):
        path.unlink()
    try:
        shard_dir.rmdir()
    except OSError:
        pass


def _metadata(pipe, num, class_mode, seed, checkpoint, kw) -> dict[str, Any]:
    from ditkit.sampling import get_sampler

    sampler = kw.get("sampler", "ddim")
    steps = kw.get("num_inference_steps")
    if steps is None:
        spec = get_sampler(sampler)
        steps = getattr(spec, "default_steps", None)
    interval = kw.get("guidance_interval")
    return {
        "checkpoint": str(checkpoint) if checkpoint else None,
        "num": int(num),
        "resolution": _resolution(pipe),
        "sampler": sampler,
        "steps": steps,
        "guidance_scale": float(kw.get("guidance_scale", 4.0)),
        "guidance_interval": list(interval) if interval else None,
        "precision": None,
        "seed": int(seed),
        "class_mode": class_mode,
        "seeding": "image k: torch.Generator seeded (seed << 32) + k",
    }


def read_npz_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `meta` dict of an npz ditkit wrote (as `ditkit sample` writes it; older files: `metadata`)."""
    from .sampling.outputs import read_meta

    return read_meta(path)


def _resolution(pipe) -> int:
    cfg = pipe.transformer.config
    size = int(cfg.input_size)
    vae = getattr(pipe, "vae", None)
    factor = int(getattr(vae, "downsample_factor", 8)) if vae is not None else 1
    return size * factor
