"""The ADM evaluation suite on ditkit's own networks: FID, sFID, IS, precision/recall and FD-DINOv2.

`evaluate(samples_npz, ref_npz, ...)` reads both batches in chunks, runs the Inception network (and DINOv2
when asked), and returns the metrics with every setting that produced them. Reference statistics are cached
beside the reference (`REF.ditkit-cache.npz`, keyed by the reference file's size and mtime, the weights file
and the preprocessing); an ADM reference batch that carries `mu`/`sigma`/`mu_s`/`sigma_s` is used as is for
FID and sFID (its images still give the pool features precision/recall need).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .frechet import frechet_distance, frechet_distance_features, inception_score, precision_recall
from .npz import ImageBatch, read_reference_stats

FULL_COUNT = 50_000
IS_SPLIT_SIZE = 5000  # ADM: contiguous chunks of 5000 (10 splits for 50K samples)
KEEP_FEATURES = 2048  # small batches also keep their spatial features: exact low-rank FD (see frechet)


class RunningStats:
    """Streaming mean and covariance (float64) of feature batches: sum x and sum x x^T."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: np.ndarray | float = 0.0
        self.outer: np.ndarray | float = 0.0

    def add(self, f: np.ndarray) -> None:
        f = np.asarray(f, np.float64)
        if not np.isfinite(f).all():
            raise ValueError("features contain NaN or inf (broken weights or images); nothing was scored")
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"{self.n} images: at least 2 are needed for a covariance")
        mu = self.sum / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)


def _nchw(batch: np.ndarray, device, size: tuple[int, int] | None) -> torch.Tensor:
    x = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2)
    if size is not None and tuple(x.shape[-2:]) != size:
        x = torch.nn.functional.interpolate(x.float(), size=size, mode="bicubic", antialias=True)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


@torch.no_grad()
def extract(
    images: ImageBatch,
    inception=None,
    dinov2=None,
    *,
    batch_size: int = 64,
    device="cpu",
    resize: str = "tf",
    resize_to: tuple[int, int] | None = None,
    progress: bool = True,
    desc: str = "",
) -> dict[str, Any]:
    """Run the networks over every image: pool features (N, 2048) float32, IS probabilities (N, 1008),
    spatial and DINOv2 statistics (streamed)."""
    from tqdm.auto import tqdm

    from .inception import preprocess

    pools, probs, spatials = [], [], []
    keep_spatial = len(images) <= KEEP_FEATURES
    spatial = RunningStats() if inception is not None else None
    dino = RunningStats() if dinov2 is not None else None
    total = -(-len(images) // batch_size)
    for batch in tqdm(images.batches(batch_size), total=total, desc=desc, disable=not progress, unit="batch"):
        x = _nchw(batch, device, resize_to)
        if inception is not None:
            out = inception(preprocess(x, resize))
            pool = out["pool"].float().cpu().numpy()
            if not np.isfinite(pool).all():
                raise ValueError(f"{images.path}: Inception features contain NaN or inf (broken weights?)")
            pools.append(pool)
            probs.append(torch.softmax(out["logits_unbiased"].double(), 1).cpu().numpy())
            spatial.add(out["spatial"].cpu().numpy())
            if keep_spatial:
                spatials.append(out["spatial"].float().cpu().numpy())
        if dinov2 is not None:
            dino.add(dinov2(x).cpu().numpy())
    result: dict[str, Any] = {"count": len(images)}
    if inception is not None:
        result["pool"] = np.concatenate(pools)
        result["probs"] = np.concatenate(probs)
        pool64 = result["pool"].astype(np.float64)
        result["mu"], result["sigma"] = pool64.mean(0), np.cov(pool64, rowvar=False)
        result["mu_s"], result["sigma_s"] = spatial.result()
        if keep_spatial:
            result["spatial"] = np.concatenate(spatials)
    if dinov2 is not None:
        result["dino_mu"], result["dino_sigma"] = dino.result()
    return result


def file_fingerprint(path: Path, full_hash: bool = False) -> str:
    st = path.stat()
    if not full_hash:
        return f"{st.st_size}:{int(st.st_mtime)}"
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{st.st_size}:sha256:{h.hexdigest()[:16]}"


def cache_path(ref: Path) -> Path:
    return ref.with_name(ref.name.removesuffix(".npz") + ".ditkit-cache.npz")


def load_cache(ref: Path, key: str) -> dict[str, np.ndarray] | None:
    path = cache_path(ref)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != key:
                return None
            return {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a cache cut short is recomputed


def save_cache(ref: Path, key: str, values: dict[str, Any]) -> Path | None:
    from ditkit.io.native import atomic_write

    arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
    try:
        return atomic_write(cache_path(ref), lambda tmp: _savez(tmp, key=np.array(key), **arrays))
    except OSError as err:  # a read-only reference folder: carry on uncached
        warnings.warn(f"could not cache reference statistics beside {ref}: {err}", stacklevel=2)
        return None


def _savez(tmp: str, **arrays) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _fd(sample: dict, ref: dict, suffix: str, features: str) -> float:
    if features in sample and features in ref and not ref.get("given"):
        return frechet_distance_features(sample[features], ref[features])  # exact and fast when low rank
    mu, sigma = f"mu{suffix}", f"sigma{suffix}"
    return frechet_distance(sample[mu], sample[sigma], ref[mu], ref[sigma])


def metrics_from(sample: dict, ref: dict, k: int = 3, device=None) -> dict[str, float]:
    out: dict[str, float] = {}
    if "mu" in sample and "mu" in ref:
        out["fid"] = _fd(sample, ref, "", "pool")
    if "mu_s" in sample and "mu_s" in ref:
        out["sfid"] = _fd(sample, ref, "_s", "spatial")
    if "probs" in sample:
        out["inception_score"] = inception_score(sample["probs"], split_size=IS_SPLIT_SIZE)
    if "pool" in sample and "pool" in ref:
        out["precision"], out["recall"] = precision_recall(ref["pool"], sample["pool"], k=k, device=device)
    if "dino_mu" in sample and "dino_mu" in ref:
        out["fd_dinov2"] = frechet_distance(
            sample["dino_mu"], sample["dino_sigma"], ref["dino_mu"], ref["dino_sigma"]
        )
    return out


def reference_stats(ref: ImageBatch, key: str, use_cache: bool = True, **extract_kwargs) -> dict[str, Any]:
    """Features and statistics of the reference: from the cache, else computed (and cached); an ADM batch's
    own mu/sigma/mu_s/sigma_s replace the computed ones."""
    cached = load_cache(ref.path, key) if use_cache else None
    if cached is None:
        cached = extract(ref, desc="reference", **extract_kwargs)
        cached.pop("probs", None)
        if use_cache:
            save_cache(ref.path, key, cached)
    given = read_reference_stats(ref.path)
    cached.update(given)
    cached["given"] = bool(given)
    cached["stats_source"] = "reference file (ADM mu/sigma)" if given else "computed"
    return cached


def cache_key(parts: dict[str, Any]) -> str:
    return "|".join(f"{k}={parts[k]}" for k in sorted(parts))


def sample_count_warning(n: int) -> str | None:
    if n < FULL_COUNT:
        return (
            f"{n:,} samples scored; FID-50K and the published figures use {FULL_COUNT:,} "
            "(FID is biased upwards with fewer samples, so the numbers are not comparable)"
        )
    return None


def device_of(name: str) -> torch.device:
    from ditkit.runtime import pick_device

    return pick_device(name, int(os.environ.get("LOCAL_RANK", 0)))
