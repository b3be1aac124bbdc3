"""Fréchet distance, precision/recall (Kynkäänniemi et al. 2019) and the Inception Score, on feature arrays.

All three follow the definitions of the ADM evaluation suite (openai/guided-diffusion `evaluations/`):

- FD = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2). The trace of the square root is computed from the
  eigenvalues of the symmetric positive semi-definite product sqrt(S1) S2 sqrt(S1) (same eigenvalues as
  S1 S2), in float64, so it is real and finite for ill-conditioned or singular covariances, where scipy's
  `sqrtm` can return NaN or complex values with some BLAS builds (LightningDiT #97).
- precision: the share of fake samples inside the real manifold (the union of balls around each real feature
  with the distance to its k-th nearest real neighbour as radius, k = 3); recall: the share of real samples
  inside the fake manifold.
- IS = exp(E_x KL(p(y|x) || p(y))) averaged over chunks of 5000 samples (ADM: 10 splits of 50K).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ValueError(
            f"{name}: expected a mean of shape (D,) and a covariance (D, D); got {mu.shape} and {sigma.shape}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(
            f"{name}: the statistics contain NaN or infinite values (features went bad upstream)"
        )
    return mu, sigma


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative round-off clipped to 0)."""
    a = np.asarray(a, dtype=np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, check: bool = True) -> float:
    """Tr((S1 S2)^1/2) for covariances S1, S2, from the eigenvalues of M = sqrt(S1) S2 sqrt(S1).

    M is symmetric positive semi-definite with the eigenvalues of S1 S2, so the result is real. With `check`,
    three cheap identities must hold, else a one-line ValueError instead of a wrong FD: sqrt(S1)^2 = S1,
    Tr(M) = Tr(S1 S2) (= sum of S1 * S2), and no eigenvalue of M is markedly negative (S1, S2 are PSD).
    """
    sigma1 = np.asarray(sigma1, dtype=np.float64)
    sigma2 = np.asarray(sigma2, dtype=np.float64)
    s1 = sqrtm_psd(sigma1)
    m = s1 @ sigma2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    if check:
        scale1 = max(np.abs(sigma1).max(), 1e-300)
        err_root = np.abs(s1 @ s1 - sigma1).max() / scale1
        tr_direct = float((sigma1 * sigma2).sum())
        err_trace = abs(w.sum() - tr_direct) / max(abs(tr_direct), np.abs(w).sum(), 1e-300)
        negative = -w.min() / max(w.max(), 1e-300) if w.size else 0.0
        if not (np.isfinite(w).all() and err_root < 1e-6 and err_trace < 1e-6 and negative < 1e-6):
            raise ValueError(
                f"matrix square root check failed (root error {err_root:.1e}, trace error {err_trace:.1e}, "
                f"negative eigenvalue {negative:.1e}): the covariances are not valid (symmetric PSD)"
            )
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2) (float64 throughout)."""
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"feature sizes differ: {mu1.shape[0]} vs {mu2.shape[0]} (different feature extractors?)"
        )
    diff = mu1 - mu2
    tr = trace_sqrt_product(sigma1, sigma2)
    fd = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr)
    return max(fd, 0.0) if fd > -1e-6 * max(1.0, np.trace(sigma1) + np.trace(sigma2)) else fd


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, as np.cov) of an (N, D) feature array, in float64."""
    f = check_features(features, "features", min_rows=2)
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def check_features(features, name: str, min_rows: int = 1) -> np.ndarray:
    f = np.asarray(features.detach().cpu() if isinstance(features, torch.Tensor) else features)
    f = f.astype(np.float64, copy=False)
    if f.ndim != 2:
        raise ValueError(f"{name}: expected an (N, D) feature array, got shape {f.shape}")
    if len(f) < min_rows:
        raise ValueError(f"{name}: {len(f)} samples; at least {min_rows} are needed")
    if not np.isfinite(f).all():
        raise ValueError(f"{name}: {int((~np.isfinite(f)).any(1).sum())} feature rows contain NaN or inf")
    return f


def frechet_distance_features(a, b) -> float:
    """FD between two (N, D) feature arrays.

    With fewer samples than dimensions (N1 + N2 <= D) both covariances have low rank and the distance is
    exact and cheap from the centred features: with S1 = A^T A and S2 = B^T B, Tr((S1 S2)^1/2) is the sum
    of the singular values of A B^T (an N1 x N2 matrix); otherwise the D x D statistics are used.
    """
    fa, fb = check_features(a, "features", min_rows=2), check_features(b, "features", min_rows=2)
    if fa.shape[1] != fb.shape[1]:
        raise ValueError(f"feature sizes differ: {fa.shape[1]} vs {fb.shape[1]}")
    if len(fa) + len(fb) > fa.shape[1]:
        return frechet_distance(*feature_statistics(fa), *feature_statistics(fb))
    ca = (fa - fa.mean(0)) / math.sqrt(len(fa) - 1)
    cb = (fb - fb.mean(0)) / math.sqrt(len(fb) - 1)
    diff = fa.mean(0) - fb.mean(0)
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2.0 * tr_sqrt)


# ---------------------------------------------------------------------------------------------- precision/recall
def _pairwise_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def _kth_radii(x: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Squared distance from each row of x to its k-th nearest other row (itself excluded)."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), batch):
        d = _pairwise_sq(x[i : i + batch], x)
        # the k+1 smallest include the point itself (distance 0)
        out[i : i + batch] = d.kthvalue(k + 1, dim=1).values
    return out


def _inside(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, batch: int) -> torch.Tensor:
    """For each query row: is it within radius of at least one ref row?"""
    hit = torch.zeros(len(query), dtype=torch.bool, device=query.device)
    cols = 4 * batch
    for i in range(0, len(query), batch):
        q = query[i : i + batch]
        inside = torch.zeros(len(q), dtype=torch.bool, device=query.device)
        for j in range(0, len(ref), cols):
            d = _pairwise_sq(q, ref[j : j + cols])
            inside |= (d <= radii[j : j + cols][None, :]).any(1)
        hit[i : i + batch] = inside
    return hit


def precision_recall(real_features, fake_features, k: int = 3, *, batch_size: int = 1024, device=None):
    """(precision, recall) of fake vs real features by k-NN manifolds (Kynkäänniemi et al. 2019, ADM's k=3).

    Squared distances are computed in blocks of `batch_size` rows against all rows (radii: batch_size x N
    values; 50K real features at 1024 rows: 200 MB in float32) or 4 x batch_size columns (membership),
    never N x N. float64 for up to 20K features in all and on the CPU, float32 beyond or on an accelerator
    (`device`); ADM itself uses float16 distances with a float32 fallback.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    real = check_features(real_features, "real features", min_rows=k + 1)
    fake = check_features(fake_features, "fake features", min_rows=k + 1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    device = torch.device(device or "cpu")
    small = len(real) + len(fake) <= 20_000
    dtype = torch.float64 if device.type == "cpu" and small else torch.float32
    r = torch.as_tensor(real, dtype=dtype, device=device)
    f = torch.as_tensor(fake, dtype=dtype, device=device)
    r_radii = _kth_radii(r, k, batch_size)
    f_radii = _kth_radii(f, k, batch_size)
    precision = _inside(f, r, r_radii, batch_size).double().mean().item()
    recall = _inside(r, f, f_radii, batch_size).double().mean().item()
    return float(precision), float(recall)


# ---------------------------------------------------------------------------------------------- Inception Score
def inception_score(probs, split_size: int = 5000) -> float:
    """Mean over chunks of `split_size` samples of exp(mean_x KL(p(y|x) || p(y))), for (N, classes) softmax
    predictions.

    ADM (evaluator.py) cuts the samples into contiguous chunks of 5000 (10 splits for 50K samples; fewer
    samples give fewer splits, the last one may be shorter) and reports the mean only.
    """
    p = check_features(probs, "class probabilities", min_rows=1)
    if (p < -1e-6).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("class probabilities: rows must be softmax outputs (non-negative, summing to 1)")
    if split_size < 1:
        raise ValueError(f"split_size must be at least 1, got {split_size}")
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start : start + split_size]
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0).sum(1)
        scores.append(math.exp(float(kl.mean())))
    return float(np.mean(scores))
