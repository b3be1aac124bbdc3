"""Judge samples of the embedded default (8x8 digits) with a classifier trained on the *real* digits.

- accuracy: the share of samples an SVC (trained on 70% of the real digits, fixed split; ~99% on the other
  30%) labels as the digit that was asked for. Samples are brought to the classifier's space by
  area-averaging to 8x8 and rescaling to 0..16, the inverse of how the training images were made;
- fd: the Fréchet distance between samples and the real digits (the classifier's training split) in the
  classifier's feature space (its 10 one-vs-rest decision values); `heldout_fd` of the judge (the held-out
  30% of real digits) is the floor a perfect generator reaches;
- spread: mean within-class spread of the samples in that feature space relative to real digits (1.0 = as
  varied as real digits; mode collapse drives it towards 0);
- nn_ratio: mean 8x8 pixel distance from each sample to its closest training digit, relative to the same
  figure for held-out real digits (well below 1 would mean the model copies training images).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .frechet import frechet_distance_features


class DigitJudge:
    """An SVC on the real 8x8 digits (70/30 split, fixed seed) and the statistics samples are compared with."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.model_selection import train_test_split
        from sklearn.svm import SVC

        from ditkit.data import load_digits_arrays

        images, labels = load_digits_arrays()
        x = images.reshape(len(images), -1).numpy().astype(np.float64)
        y = labels.numpy()
        self.x_tr, self.x_te, self.y_tr, self.y_te = train_test_split(
            x, y, test_size=0.3, random_state=seed, stratify=y
        )
        self.clf = SVC(gamma=0.001, C=10.0).fit(self.x_tr, self.y_tr)
        self.heldout_accuracy = float(self.clf.score(self.x_te, self.y_te))
        self.f_tr = self.features(self.x_tr)
        self.f_te = self.features(self.x_te)
        self.heldout_fd = frechet_distance_features(self.f_te, self.f_tr)
        self.real_spread = self._spread(self.f_te, self.y_te)
        self.heldout_nn = self._nearest(self.x_te)

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.clf.decision_function(x)

    @staticmethod
    def _spread(f: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean([np.sqrt(f[y == c].var(0).sum()) for c in np.unique(y)]))

    def _nearest(self, x: np.ndarray, chunk: int = 128) -> float:
        best = []
        for i in range(0, len(x), chunk):
            d = ((x[i : i + chunk, None, :] - self.x_tr[None, :, :]) ** 2).sum(-1)
            best.append(np.sqrt(d.min(1)))
        return float(np.concatenate(best).mean())

    def judge(self, digits8: np.ndarray, asked: np.ndarray) -> dict[str, float]:
        """digits8: (N, 8, 8) in 0..16; asked: (N,) requested labels."""
        x = np.asarray(digits8).reshape(len(digits8), -1).astype(np.float64)
        asked = np.asarray(asked)
        f = self.features(x)
        pred = self.clf.predict(x)
        return {
            "accuracy": float((pred == asked).mean()),
            "fd": frechet_distance_features(f, self.f_tr),
            "spread": self._spread(f, asked) / self.real_spread,
            "nn_ratio": self._nearest(x) / self.heldout_nn,
        }


@functools.lru_cache(maxsize=2)
def get_judge(seed: int = 0) -> DigitJudge:
    """The judge is deterministic; build it once per process (~0.2 s)."""
    return DigitJudge(seed)


def images_to_digit_space(images) -> np.ndarray:
    """uint8 N×H×W×C (C = 1 or 3) or N×H×W images -> (N, 8, 8) in 0..16; floats are read as [0, 1].

    A torch tensor laid out N×C×H×W (what `DiTPipeline(..., output_type="pt")` returns) is accepted too."""
    from ditkit.data import to_digit_space

    x = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if (
        isinstance(images, torch.Tensor)
        and x.ndim == 4
        and x.shape[1] in (1, 3)
        and x.shape[-1] not in (1, 3)
    ):
        x = x.permute(0, 2, 3, 1)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"digit samples: expected N×H×W×C images (C = 1 or 3) or N×H×W, got shape {tuple(x.shape)}"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        if not torch.isfinite(x).all() or x.min() < -1e-3 or x.max() > 1 + 1e-3:
            raise ValueError("digit samples: float images must lie in [0, 1] (or pass uint8 0..255)")
        x = x.float()
    else:
        raise ValueError(f"digit samples: expected uint8 (or float in [0, 1]) images, got {x.dtype}")
    return to_digit_space(x.permute(0, 3, 1, 2) * 2 - 1).numpy()


def judge_digits(images_uint8, labels, *, seed: int = 0) -> dict[str, float]:
    """Judge digit samples (uint8 N×H×W×C, or floats in [0, 1]) asked for `labels` (N,) in 0..9.

    Returns accuracy, fd, spread and nn_ratio (see the module docstring) plus the judge's floors
    heldout_accuracy and heldout_fd.
    """
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    digits8 = images_to_digit_space(images_uint8)
    if len(labels) != len(digits8):
        raise ValueError(f"digit samples: {len(digits8)} images but {len(labels)} labels")
    if len(labels) < 2 or labels.min() < 0 or labels.max() > 9:
        raise ValueError("digit samples: labels must be digits 0..9, and at least two samples are needed")
    judge = get_judge(seed)
    result = judge.judge(digits8, labels.astype(np.int64))
    result["heldout_accuracy"] = judge.heldout_accuracy
    result["heldout_fd"] = judge.heldout_fd
    return result
