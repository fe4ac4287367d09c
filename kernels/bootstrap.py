"""The full bootstrap: B causal forests on resampled rows, optionally with the nuisance models
refit on each resample, for percentile or pivot intervals of the CATE and the ATE.

The bootstrap of little bags (the default inference) estimates a forest's variance from one fit;
the full bootstrap refits, so it also sees the nuisance stage's variance when the nuisance
models are refit on each resample, at B times the cost (what a GPU makes affordable). Resamples are
multinomial row counts used as sample weights, so every replicate sees the same arrays, and a
batch of replicates grows in the same device calls (`kernels.forest.fit_forests`). Replicate b
depends only on (seed, b), so replicates can be fit in shards on separate machines and merged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._inputs import resolve_device
from .ate import average_effect
from .backends import get_backend
from .binning import QuantileBinner
from .forest import CausalForest, fit_forests, forests_per_batch
from .progress import progress_bar
from .serialization import load_model, save_model

FORMAT = "tauforge.bootstrap_replicates"

INTERVALS = ("percentile", "pivot")


def resample_counts(n: int, replicate: int, seed: int) -> np.ndarray:
    """How many times each row is drawn in bootstrap replicate `replicate` (sums to n)."""
    rng = np.random.default_rng([seed, 1009, replicate])
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


@dataclass
class BootstrapReplicates:
    """Replicates `replicates` (indices into 0..n_bootstrap-1: a whole bootstrap, or one shard's
    part of it), each with its forest (its CATE) and its ATE."""

    forests: list[CausalForest]
    ates: np.ndarray
    replicates: np.ndarray  # int64 replicate indices, ascending

    def effect_interval(self, X: np.ndarray, point: np.ndarray, alpha: float,
                        kind: str) -> tuple[np.ndarray, np.ndarray]:
        draws = np.stack([f.predict(X) for f in self.forests])
        return interval(draws, point, alpha, kind)

    def ate_interval(self, point: float, alpha: float, kind: str) -> tuple[float, float]:
        lo, hi = interval(self.ates[:, None], np.array([point]), alpha, kind)
        return float(lo[0]), float(hi[0])

    @classmethod
    def merge(cls, parts: list[BootstrapReplicates], n_bootstrap: int) -> BootstrapReplicates:
        """The whole bootstrap from shards that each fit a range of replicates; every replicate
        0..n_bootstrap-1 must appear exactly once."""
        indices = np.concatenate([p.replicates for p in parts]) if parts else np.empty(0, np.int64)
        if not np.array_equal(np.sort(indices), np.arange(n_bootstrap)):
            missing = sorted(set(range(n_bootstrap)) - set(indices.tolist()))
            extra = len(indices) - len(set(indices.tolist()))
            raise ValueError(f"bootstrap shards do not hold replicates 0..{n_bootstrap - 1} once each: "
                             f"{len(missing)} missing (first {missing[:5]}), {extra} repeated")
        order = np.argsort(indices)
        forests = [f for p in parts for f in p.forests]
        ates = np.concatenate([p.ates for p in parts])
        return cls([forests[i] for i in order], ates[order], indices[order].astype(np.int64))

    def save(self, path: str | os.PathLike) -> None:
        """Each replicate's forest in `<path>/replicate-<b>`, the ATEs and indices as checksummed arrays."""
        path = Path(path)
        for b, forest in zip(self.replicates, self.forests):
            forest.save(path / f"replicate-{int(b):05d}")
        save_model(path, {"ates": self.ates, "replicates": self.replicates},
                   {"format": FORMAT, "format_version": 1, "n_replicates": len(self.replicates)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> BootstrapReplicates:
        arrays, _ = load_model(path, FORMAT)
        replicates = arrays["replicates"].astype(np.int64)
        forests = [CausalForest.load(Path(path) / f"replicate-{int(b):05d}") for b in replicates]
        return cls(forests, arrays["ates"], replicates)


def interval(draws: np.ndarray, point: np.ndarray, alpha: float, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval [q(alpha/2), q(1 - alpha/2)] of the replicate draws, or the pivot
    (basic) interval [2 point - q(1 - alpha/2), 2 point - q(alpha/2)]."""
    if kind not in INTERVALS:
        raise ValueError(f"bootstrap interval must be one of {', '.join(INTERVALS)}, got {kind!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    q_lo, q_hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)
    return (q_lo, q_hi) if kind == "percentile" else (2 * point - q_hi, 2 * point - q_lo)


def replicate_seed(seed: int, replicate: int) -> int:
    """The forest seed of replicate `replicate` (the main forest has `seed`)."""
    return seed + 1 + replicate


def replicate_forest_params(forest_params: dict, trees: int, correction_variables) -> dict:
    """The growth parameters of every replicate forest: the point forest's, with `trees` trees on
    half-samples, and the local linear correction on the covariates the point forest chose
    (`correction_variables`, None without a correction): choosing them again per replicate would
    cost a lasso each and make the interval describe another estimator."""
    return {**forest_params, "n_estimators": int(trees), "max_samples": 0.5,
            "linear_correction_variables": None if correction_variables is None else list(correction_variables)}


def fit_replicates(X: np.ndarray, replicates: int | range, seed: int, forest_params: dict,
                   residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                   ate: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float],
                   progress: bool | None = None, sample_weight: np.ndarray | None = None,
                   batch_size: int | None = None) -> BootstrapReplicates:
    """Replicates 0..replicates-1 (or the given range: one shard's part). `residuals(counts)`
    gives (y_res, t_res, t_var) for a resample (the main fit's, or the nuisance models refit with
    those counts as weights); `ate(counts, y_res, t_res, t_var)` the replicate's average effect. Each
    replicate's forest is grown with its own seed (`replicate_seed`) and the resample's counts
    (times `sample_weight`) as sample weights, in groups of one tree (the bootstrap replaces the
    little bags). Forests are grown `batch_size` at a time in the same device calls
    (`kernels.forest.fit_forests`; default `forests_per_batch`: as many as fit in 1 GiB on a
    torch device, one on numba), on the bins of X seeded with `seed`: the batch size never
    changes a replicate."""
    replicates = range(replicates) if isinstance(replicates, (int, np.integer)) else replicates
    n, p = X.shape
    params = {**forest_params, "ci_group_size": 1, "progress": False}
    if batch_size is None:
        backend = get_backend(params.get("backend", "auto"), resolve_device(params.get("device", "auto")))
        batch_size = forests_per_batch(n, p, len(replicates), backend.name)
    batch = int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    binner = QuantileBinner(CausalForest(**params).max_bins, random_state=seed).fit(X)
    binned = binner.bin(X)  # once for every batch: binning 1e6 x 30 takes seconds
    forests, ates = [], []
    with progress_bar(len(replicates), "bootstrap replicates", progress, unit="replicate") as bar:
        for lo in range(0, len(replicates), batch):
            members, targets = [], []
            for b in replicates[lo:lo + batch]:
                counts = resample_counts(n, b, seed)
                y_res, t_res, t_var = residuals(counts)
                members.append(CausalForest(**params, random_state=replicate_seed(seed, b)))
                targets.append((t_res, y_res, counts if sample_weight is None else counts * sample_weight))
                ates.append(ate(counts, y_res, t_res, t_var))
            forests += fit_forests(members, X, targets, binner, binned)
            bar.update(len(members))
    return BootstrapReplicates(forests, np.array(ates, dtype=np.float64), np.array(replicates, dtype=np.int64))


def dml_replicates(X: np.ndarray, replicates: int | range, seed: int, forest_params: dict,
                   main_residuals: tuple[np.ndarray, np.ndarray, np.ndarray], tau_oob: np.ndarray, *,
                   refit: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                   sample_weight: np.ndarray | None = None, progress: bool | None = None,
                   batch_size: int | None = None) -> BootstrapReplicates:
    """The bootstrap of a DML causal forest (`CausalForestDML` and the pipeline's bootstrap
    shards): replicate forests on the residuals `main_residuals` (y_res, t_res, t_var), or on
    `refit(weights)`'s when the nuisance models are refit with the resample's weights; each
    replicate's average effect (`ate.average_effect`) is on the main fit's out-of-bag CATE
    `tau_oob`, with the resample's weights."""
    base = np.ones(X.shape[0]) if sample_weight is None else sample_weight

    def residuals(counts):
        return main_residuals if refit is None else refit(counts * base)

    def ate(counts, y_res, t_res, t_var):
        return average_effect(tau_oob, y_res, t_res, t_var, sample_weight=counts * base)[0]

    return fit_replicates(X, replicates, seed, forest_params, residuals, ate, progress, sample_weight, batch_size)
