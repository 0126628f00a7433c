"""Linear SVMs on region features, with hard negative mining, as R-CNN scores its regions.

One SVM per class separates that class's regions (label +1) from the rest (-1) with
the hinge loss::

    min_w,b  1/2 |w|^2 + sum_i C_i max(0, 1 - y_i (w . x_i + b))

solved exactly by dual coordinate descent (Hsieh et al., 2008, the method of
liblinear). The bias is learned as the weight of a constant feature ``BIAS_FEATURE``.
Features are float (N, D); scores are margins: positive means the class.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

BIAS_FEATURE = 10.0


@dataclasses.dataclass
class LinearSVM:
    """A trained linear SVM: ``score(x) = x . weights + bias``."""

    weights: np.ndarray
    bias: float

    def score(self, features: np.ndarray) -> np.ndarray:
        """Margins (N,) of features (N, D)."""
        return np.asarray(features, np.float32) @ self.weights.astype(np.float32) + np.float32(self.bias)


def fit_svm(features: np.ndarray, targets: np.ndarray, c: float = 1.0, positive_weight: float = 1.0,
            epochs: int = 50, tolerance: float = 1e-3, seed: int = 0) -> LinearSVM:
    """Train a hinge-loss linear SVM by dual coordinate descent.

    Args:
        features: (N, D) float.
        targets: (N,) +1 or -1.
        c: penalty of a margin violation (larger: fewer violations, less regularization).
        positive_weight: multiplies ``c`` for the +1 samples (rare positives weigh more).
        epochs: passes over the samples at most.
        tolerance: stop once no dual variable's projected gradient exceeds it.
        seed: order of the passes.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"Invalid SVM data: features {x.shape} and targets {y.shape} must be (N, D) and (N,).")
    if not np.all(np.isin(y, (-1.0, 1.0))):
        raise ValueError(f"Invalid SVM targets {np.unique(y)}: use +1 and -1.")
    if not (y > 0).any() or not (y < 0).any():
        raise ValueError(f"An SVM needs both classes: got {int((y > 0).sum())} positives, "
                         f"{int((y < 0).sum())} negatives.")
    if c <= 0:
        raise ValueError(f"Invalid SVM penalty c={c}: use a positive value.")

    x = np.hstack([x, np.full((len(x), 1), BIAS_FEATURE)])
    upper = np.where(y > 0, c * positive_weight, c)
    diagonal = np.einsum("ij,ij->i", x, x)
    alpha = np.zeros(len(x))
    w = np.zeros(x.shape[1])
    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        largest = 0.0
        for i in rng.permutation(len(x)):
            gradient = y[i] * (x[i] @ w) - 1.0
            # Projected gradient: zero where the box constraint 0 <= alpha <= C blocks the move.
            if alpha[i] == 0.0:
                projected = min(gradient, 0.0)
            elif alpha[i] == upper[i]:
                projected = max(gradient, 0.0)
            else:
                projected = gradient
            largest = max(largest, abs(projected))
            if projected != 0.0:
                old = alpha[i]
                alpha[i] = min(max(old - gradient / diagonal[i], 0.0), upper[i])
                w += (alpha[i] - old) * y[i] * x[i]
        if largest < tolerance:
            break
    logger.debug("SVM: %d epochs, %d support vectors of %d samples", epoch + 1, int((alpha > 0).sum()), len(x))
    return LinearSVM(weights=w[:-1].astype(np.float32), bias=float(w[-1] * BIAS_FEATURE))


def fit_svm_hard_negatives(positives: np.ndarray, negatives: np.ndarray, c: float = 1.0,
                           positive_weight: float = 2.0, rounds: int = 3, first_negatives: int = 5000,
                           seed: int = 0) -> tuple[LinearSVM, dict]:
    """Train on the positives and a growing cache of hard negatives.

    R-CNN cannot fit every negative region at once. It trains on a first sample of
    negatives, then scores all of them and adds the hard ones, those inside the margin
    (score > -1), dropping easy ones (score < -1.2) from the cache, for ``rounds`` rounds
    or until no new hard negative turns up.

    Returns:
        the SVM and a record: per round, the cache size and the hard negatives found.
    """
    negatives = np.asarray(negatives, np.float32)
    rng = np.random.default_rng(seed)
    cache = rng.permutation(len(negatives))[:first_negatives]
    history = []
    svm = None
    for round_index in range(rounds):
        features = np.concatenate([positives, negatives[cache]])
        targets = np.concatenate([np.ones(len(positives)), -np.ones(len(cache))])
        svm = fit_svm(features, targets, c=c, positive_weight=positive_weight, seed=seed + round_index)
        scores = svm.score(negatives)
        hard = np.flatnonzero(scores > -1.0)
        new = np.setdiff1d(hard, cache)
        history.append({"round": round_index + 1, "cache": int(len(cache)), "hard": int(len(hard)),
                        "new": int(len(new))})
        if len(new) == 0:
            break
        keep = cache[scores[cache] >= -1.2]
        cache = np.union1d(keep, new)
    return svm, {"rounds": history, "positives": int(len(positives)), "negatives": int(len(negatives))}
