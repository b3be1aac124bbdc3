"""Fréchet distance, precision/recall, Inception Score and the digits judge against closed forms and plain
second implementations."""

import numpy as np
import pytest
import scipy.linalg

from ditkit.evaluation import (
    feature_statistics,
    frechet_distance,
    frechet_distance_features,
    inception_score,
    precision_recall,
)
from ditkit.evaluation.frechet import trace_sqrt_product


def _random_cov(rng, d, eigs=None):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eigs = rng.uniform(0.2, 3.0, d) if eigs is None else np.asarray(eigs, float)
    return (q * eigs) @ q.T


# ------------------------------------------------------------------------------------------ Fréchet distance
def test_fd_one_dimensional_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_fd_commuting_covariances_closed_form():
    rng = np.random.default_rng(0)
    d = 16
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    fd = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert fd == pytest.approx(exact, rel=1e-10)


def test_fd_general_covariances_match_scipy_where_it_is_well_conditioned():
    rng = np.random.default_rng(1)
    s1, s2 = _random_cov(rng, 12), _random_cov(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fd_ill_conditioned_covariance_is_finite_and_exact():
    rng = np.random.default_rng(2)
    d = 64
    eigs = np.logspace(0, -15, d)  # condition number 1e15
    s = _random_cov(rng, d, eigs)
    assert frechet_distance(np.zeros(d), s, np.zeros(d), s) == pytest.approx(0.0, abs=1e-7)
    # scaled copy: Tr((S * c S)^1/2) = sqrt(c) Tr(S), so FD = (1 - sqrt(c))^2 Tr(S)
    fd = frechet_distance(np.zeros(d), s, np.zeros(d), 4.0 * s)
    assert np.isfinite(fd) and fd == pytest.approx(
        np.trace(s), rel=1e-6
    )  # sqrt of 1e-15 eigenvalues: ~1e-8 each


def test_fd_singular_covariances():
    rng = np.random.default_rng(3)
    d = 40
    # rank-deficient: fewer samples than dimensions (the 10K-sample, 2048-d situation in miniature)
    a, b = rng.standard_normal((10, d)), rng.standard_normal((12, d)) + 0.5
    fd = frechet_distance_features(a, b)
    ma, sa = feature_statistics(a)
    mb, sb = feature_statistics(b)
    exact = ((ma - mb) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * _trace_sqrt_by_svd(sa, sb)
    # the zero eigenvalues of the product come out as +-1e-16 and their square roots as ~1e-8 each
    assert np.isfinite(fd) and fd == pytest.approx(exact, rel=1e-7)
    # exactly singular, commuting: zeros on the diagonal
    diag1, diag2 = np.diag([1.0, 4.0, 0.0, 0.0]), np.diag([4.0, 0.0, 9.0, 0.0])
    assert frechet_distance(np.zeros(4), diag1, np.zeros(4), diag2) == pytest.approx(1 + 4 + 9)


def _trace_sqrt_by_svd(sa, sb):
    # second implementation: Tr((A B)^1/2) = nuclear norm of A^1/2 B^1/2 (singular values of the product)
    ra = _psd_root(sa)
    rb = _psd_root(sb)
    return np.linalg.svd(ra @ rb, compute_uv=False).sum()


def _psd_root(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_fd_low_rank_path_equals_the_covariance_path():
    from ditkit.evaluation.frechet import check_features

    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((9, 30)), rng.standard_normal((11, 30)) * 2 + 1  # 9 + 11 <= 30: low rank
    full = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance_features(a, b) == pytest.approx(full, rel=1e-7)  # eigh: sqrt of ~1e-16 zeros
    assert check_features(a, "a").shape == (9, 30)


def test_fd_rejects_invalid_statistics():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance([0.0, np.nan], np.eye(2), [0.0, 0.0], np.eye(2))
    with pytest.raises(ValueError, match="square root check"):
        trace_sqrt_product(np.eye(3), -np.eye(3))  # not PSD
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance_features(np.array([[0.0, 1.0], [np.nan, 1.0], [1.0, 2.0]]), np.ones((3, 2)))


# ------------------------------------------------------------------------------------------ precision/recall
def _clusters(rng, n_per, centres, spread=0.1):
    return np.concatenate([c + spread * rng.standard_normal((n_per, len(c))) for c in centres])


def test_precision_recall_identical_and_disjoint():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(x, x + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_subset():
    rng = np.random.default_rng(1)
    centres = [np.full(6, 50.0 * i) for i in range(4)]
    real = _clusters(rng, 30, centres)
    fake = real[:30]  # one cluster of four: inside the real manifold, covering a quarter of it
    precision, recall = precision_recall(real, fake, k=3)
    assert precision == 1.0
    assert recall == pytest.approx(0.25)


def test_precision_recall_blocks_match_a_plain_implementation():
    rng = np.random.default_rng(2)
    real, fake = rng.standard_normal((50, 5)), rng.standard_normal((45, 5)) * 1.3 + 0.2
    got_small_blocks = precision_recall(real, fake, k=3, batch_size=7)
    assert got_small_blocks == precision_recall(real, fake, k=3)

    def plain(ref, query, k):
        d_ref = np.sqrt(((ref[:, None] - ref[None]) ** 2).sum(-1))
        radii = np.sort(d_ref, axis=1)[:, k]  # k-th neighbour, the point itself excluded
        d = np.sqrt(((query[:, None] - ref[None]) ** 2).sum(-1))
        return float((d <= radii[None]).any(1).mean())

    assert got_small_blocks[0] == pytest.approx(plain(real, fake, 3))
    assert got_small_blocks[1] == pytest.approx(plain(fake, real, 3))


def test_precision_recall_needs_more_than_k_samples():
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)), k=3)
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(np.full((10, 2), np.nan), np.zeros((10, 2)), k=3)


# ------------------------------------------------------------------------------------------ Inception Score
def test_inception_score_uniform_and_one_hot():
    uniform = np.full((100, 10), 0.1)
    assert inception_score(uniform) == pytest.approx(1.0)
    one_hot = np.eye(10)[np.arange(100) % 10]  # every class equally often, each prediction certain
    assert inception_score(one_hot) == pytest.approx(10.0)


def test_inception_score_splits_like_adm():
    # ADM: contiguous chunks of split_size, mean of exp(KL) per chunk
    one_hot = np.eye(4)[[0, 0, 1, 1, 0, 1, 2, 3]]
    assert inception_score(one_hot, split_size=4) == pytest.approx((2.0 + 4.0) / 2)
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.full((4, 3), 0.5))


# ------------------------------------------------------------------------------------------ digits judge
def test_judge_digits_real_digits_and_noise():
    from ditkit.data import load_digits_arrays
    from ditkit.evaluation.digits import get_judge, judge_digits

    images, labels = load_digits_arrays()
    judge = get_judge()
    real = (images.numpy()[:400] / 16 * 255).round().astype(np.uint8)[..., None].repeat(3, -1)
    good = judge_digits(real, labels.numpy()[:400])
    assert good["accuracy"] > 0.98 and good["fd"] < 1.5  # 400 samples: FD biased up from the 0.2 floor
    assert 0.8 < good["spread"] < 1.2
    rng = np.random.default_rng(0)
    noise = judge_digits(rng.integers(0, 256, (200, 16, 16, 3), dtype=np.uint8), rng.integers(0, 10, 200))
    assert noise["accuracy"] < 0.3 and noise["fd"] > 10 * good["fd"]
    assert judge.heldout_fd == pytest.approx(0.197, abs=0.001)  # the benchmark's published floor
    # the pipeline's "pt" output (N, C, H, W floats in [0, 1]) gives the same judgement as uint8 N×H×W×C
    import torch

    as_pt = torch.from_numpy(real[:50]).permute(0, 3, 1, 2).float() / 255
    assert judge_digits(as_pt, labels[:50]) == pytest.approx(judge_digits(real[:50], labels.numpy()[:50]))


def test_judge_digits_bad_input():
    from ditkit.evaluation.digits import judge_digits

    with pytest.raises(ValueError, match="labels"):
        judge_digits(np.zeros((4, 8, 8, 3), np.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        judge_digits(np.full((4, 8, 8, 3), 3.0, np.float32), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="0..9"):
        judge_digits(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 12])
