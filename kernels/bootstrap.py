"""The full bootstrap: B causal forests on resampled rows, optionally with the nuisance models
refit on each resample, for percentile or pivot intervals of the CATE and the ATE.

The bootstrap of little bags (the default inference) estimates a forest's variance from one fit;
the full bootstrap refits, so it also sees the nuisance stage's variance when
`refit_nuisance` is on, at B times the cost (what a GPU makes affordable). Resamples are
multinomial row counts used as sample weights, so every replicate sees the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._progress import progress_bar
from .forest import CausalForest

INTERVALS = ("percentile", "pivot")


def resample_counts(n: int, replicate: int, seed: int) -> np.ndarray:
    """How many times each row is drawn in bootstrap replicate `replicate` (sums to n)."""
    rng = np.random.default_rng([seed, 1009, replicate])
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


@dataclass
class BootstrapReplicates:
    forests: list[CausalForest]  # CATE of each replicate
    ates: np.ndarray  # ATE of each replicate

    def effect_interval(self, X: np.ndarray, point: np.ndarray, alpha: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
        draws = np.stack([f.predict(X) for f in self.forests])
        return interval(draws, point, alpha, kind)

    def ate_interval(self, point: float, alpha: float, kind: str) -> tuple[float, float]:
        lo, hi = interval(self.ates[:, None], np.array([point]), alpha, kind)
        return float(lo[0]), float(hi[0])


def interval(draws: np.ndarray, point: np.ndarray, alpha: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval [q(alpha/2), q(1 - alpha/2)] of the replicate draws, or the pivot
    (basic) interval [2 point - q(1 - alpha/2), 2 point - q(alpha/2)]."""
    if kind not in INTERVALS:
        raise ValueError(f"bootstrap interval must be one of {', '.join(INTERVALS)}, got {kind!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    q_lo, q_hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)
    return (q_lo, q_hi) if kind == "percentile" else (2 * point - q_hi, 2 * point - q_lo)


def fit_replicates(X: np.ndarray, n_bootstrap: int, seed: int, forest_params: dict,
                   residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                   ate: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float],
                   progress: bool | None = None, sample_weight: np.ndarray | None = None) -> BootstrapReplicates:
    """B replicates. `residuals(weights)` gives (y_res, t_res, t_hat) for a resample (the main
    fit's, or the nuisance models refit with those weights); `ate(weights, y_res, t_res, t_hat)`
    the replicate's ATE. Each replicate's forest is grown with its own seed and the resample's
    counts (times `sample_weight`) as sample weights (groups of one tree: the bootstrap replaces
    the little bags)."""
    n = X.shape[0]
    params = {**forest_params, "ci_group_size": 1, "progress": False}
    forests, ates = [], []
    with progress_bar(n_bootstrap, "bootstrap replicates", progress, unit="replicate") as bar:
        for b in range(n_bootstrap):
            counts = resample_counts(n, b, seed)
            weights = counts if sample_weight is None else counts * sample_weight
            y_res, t_res, t_hat = residuals(counts)
            forest = CausalForest(**params, random_state=seed + 1 + b).fit(X, t_res, y_res, sample_weight=weights)
            forests.append(forest)
            ates.append(ate(counts, y_res, t_res, t_hat))
            bar.update(1)
    return BootstrapReplicates(forests, np.array(ates))
