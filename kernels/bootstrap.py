"""The full bootstrap: B causal forests on reweighted rows, with the nuisance models refit on
each reweighting by default, for normal, percentile or pivot intervals of the CATE and the ATE.

The bootstrap of little bags (the default inference) estimates a forest's variance from one fit;
the full bootstrap refits, so it also sees the nuisance stage's variance when the nuisance
models are refit, at B times the cost (what a GPU makes affordable).

What a replicate is, and why:
- Resampling is Rubin's Bayesian bootstrap: every row is kept, with a weight drawn from
  Exp(1) and scaled to mean one (`resample_weights`). Its weights have the mean and variance of
  multinomial counts, so for the (asymptotically linear) forest and average effect it estimates
  the same variance (Praestgaard and Wellner 1993), but no row is dropped or copied: each tree
  draws its subsample from the same n distinct rows as the point forest, and a leaf of 3 holds
  3 distinct rows (min_samples_leaf counts rows of positive weight, kernels.splitting). With
  counts, a leaf could hold one row three times, and a subsample drawn from the ~63% distinct
  rows of a resample would see fewer rows than the point forest's, making each replicate a
  smoother estimator than the one whose variance is wanted.
- Replicate forests have the point forest's configuration (`replicate_forest_params`): its leaf
  size, honesty, subsample fraction, little-bag groups and local linear correction covariates;
  only the number of trees is smaller. A replicate of few trees adds Monte-Carlo noise to the
  spread of the replicates; each replicate estimates its own from the spread of its little bags
  (`CausalForest.predict_and_monte_carlo_var`), and the mean of those is subtracted from the
  replicates' variance with grf's objective-Bayes debiasing (`bootstrap_variance`).
- Intervals: 'normal' is the point estimate +- z times the bootstrap standard error;
  'percentile' and 'pivot' take quantiles of the replicates after shrinking them towards their
  mean by the share of their spread that is not Monte-Carlo noise.

Replicates are grown in batches in the same device calls (`kernels.forest.fit_forests`).
Replicate b depends only on (seed, b), so replicates can be fit in shards on separate machines
and merged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from math import ceil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import _inputs
from .ate import average_effect
from .local_linear import initial_ridge
from .prediction import debias_between_group_variance
from .progress import progress_bar
from .serialization import load_model, save_model

if TYPE_CHECKING:
    from .forest import CausalForest

# The forest and torch are imported where a replicate is grown, loaded or predicted: a run's
# settings (INTERVALS, through components.estimate.BootstrapConfig) are checked before any task
# starts, and torch takes over a second to load.

FORMAT = "tauforge.bootstrap_replicates"

INTERVALS = ("normal", "percentile", "pivot")


def resample_weights(n: int, replicate: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """The weight of each row in bootstrap replicate `replicate`: Exp(1) draws scaled to mean one
    (Rubin's Bayesian bootstrap), so every row is kept, each with its own positive weight. With
    `groups` (codes 0..G-1) one draw per group, which all its rows take: the cluster bootstrap,
    for rows dependent within a group (groups 0..n-1 give the rows' own draws)."""
    from ._inputs import check_groups

    groups = check_groups(groups, n)  # any labels, as codes 0..G-1
    rng = np.random.default_rng([seed, 1009, replicate])
    w = rng.standard_exponential(n if groups is None else int(groups.max()) + 1)
    w = w if groups is None else w[groups]
    return w / w.mean()


def bootstrap_counts(n: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """How many times each of n rows is in a classical bootstrap resample (float64 counts): n
    rows drawn with replacement, or with `groups` (codes 0..G-1) G groups drawn with replacement,
    each bringing all its rows. For statistics resampled as a whole (the evaluation's AUTOC and
    uplift curves), where `resample_weights` reweights a fit."""
    if groups is None:
        return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
    n_groups = int(groups.max()) + 1
    return np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)[groups]


@dataclass
class BootstrapReplicates:
    """Replicates `replicates` (indices into 0..n_bootstrap-1: a whole bootstrap, or one shard's
    part of it), each with its forest (its CATE) and its ATE."""

    forests: list[CausalForest]
    ates: np.ndarray
    replicates: np.ndarray  # int64 replicate indices, ascending

    def effect_draws(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every replicate's CATE at the rows of X and its Monte-Carlo variance, each (B, rows)."""
        pairs = [f.predict_and_monte_carlo_var(X) for f in self.forests]
        return np.stack([p for p, _ in pairs]), np.stack([v for _, v in pairs])

    def effect_stderr(self, X: np.ndarray) -> np.ndarray:
        """The bootstrap standard error of the CATE at the rows of X, Monte-Carlo noise removed."""
        return np.sqrt(bootstrap_variance(*self.effect_draws(X)))

    def effect_interval(self, X: np.ndarray, point: np.ndarray, alpha: float,
                        kind: str) -> tuple[np.ndarray, np.ndarray]:
        draws, noise = self.effect_draws(X)
        return interval(draws, point, alpha, kind, noise)

    def ate_interval(self, point: float, alpha: float, kind: str, n_groups: int | None = None) -> tuple[float, float]:
        """The average effect's interval. Its replicates carry no forest noise: each is the mean
        debiased score of the main fit's out-of-bag CATE. With `n_groups` drawn whole, a normal
        interval takes Student's t with n_groups - 1 degrees of freedom, as the analytic one."""
        lo, hi = interval(self.ates[:, None], np.array([point]), alpha, kind, n_groups=n_groups)
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
        _check_one_bootstrap(forests, indices)
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
        from .forest import CausalForest

        arrays, _ = load_model(path, FORMAT)
        replicates = arrays["replicates"].astype(np.int64)
        forests = [CausalForest.load(Path(path) / f"replicate-{int(b):05d}", device="auto") for b in replicates]
        return cls(forests, arrays["ates"], replicates)


def bootstrap_variance(draws: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
    """The variance of the replicates `draws` (B, rows) less the mean Monte-Carlo variance of a
    replicate `noise` (B, rows), debiased as grf debiases its little bags (the posterior mean of a
    variance >= 0 given their unbiased but noisy difference); without `noise`, their variance."""
    if draws.shape[0] < 2:
        raise ValueError(f"a bootstrap variance needs at least 2 replicates, got {draws.shape[0]}")
    spread = np.var(draws, axis=0, ddof=1)
    if noise is None:
        return spread
    return debias_between_group_variance(spread, noise.mean(axis=0), np.full(spread.shape, float(draws.shape[0])))


# Fewer replicates than this make a percentile or pivot interval a warning: its ends are extreme
# quantiles of the draws (at 20, the 2.5% quantile falls between the smallest two).
MIN_QUANTILE_REPLICATES = 50


def interval(draws: np.ndarray, point: np.ndarray, alpha: float, kind: str,
             noise: np.ndarray | None = None, n_groups: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(1 - alpha) interval from replicate draws (B, rows) whose Monte-Carlo variances are `noise`
    (None: the draws carry none). 'normal': point +- z(1 - alpha/2) times the bootstrap standard
    error (`bootstrap_variance`), or with `n_groups` G drawn whole Student's t with G - 1 degrees
    of freedom, as the analytic interval takes (at 6 groups z covered 0.86 in a review's
    simulation, the analytic t interval 0.95); 'percentile': [q(alpha/2), q(1 - alpha/2)] of the draws;
    'pivot' (basic): [2 point - q(1 - alpha/2), 2 point - q(alpha/2)]. Quantiles are taken after
    shrinking the draws towards their mean so that their variance is the bootstrap variance."""
    if kind not in INTERVALS:
        raise ValueError(f"bootstrap interval must be one of {', '.join(INTERVALS)}, got {kind!r}")
    _inputs.check_alpha(alpha)
    variance = bootstrap_variance(draws, noise)
    if kind == "normal":
        from .ate import interval_quantile

        half = interval_quantile(alpha, n_groups) * np.sqrt(variance)
        return point - half, point + half
    if len(draws) < MIN_QUANTILE_REPLICATES:  # a review published a 95% percentile interval of 4 replicates
        _inputs.warn(f"a {kind} interval from {len(draws)} bootstrap replicates: its ends are quantiles "
                     f"{alpha / 2:g} and {1 - alpha / 2:g} of that few draws, so they are noisy and most likely too "
                     f"narrow; use at least {MIN_QUANTILE_REPLICATES} replicates (EconML's default is 100), or the "
                     "normal interval, which needs only their standard error")
    if noise is not None:
        center, spread = draws.mean(axis=0), np.var(draws, axis=0, ddof=1)
        shrink = np.sqrt(np.divide(variance, spread, out=np.ones_like(spread), where=spread > 0))
        draws = center + (draws - center) * shrink
    q_lo, q_hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)
    return (q_lo, q_hi) if kind == "percentile" else (2 * point - q_hi, 2 * point - q_lo)


def _check_one_bootstrap(forests: list[CausalForest], replicates: np.ndarray) -> None:
    """Replicate forests of one bootstrap: grown with the same parameters on the same number of
    rows, each with its replicate's seed from one run seed (a review: shards of other seeds and
    settings merged into a standard error)."""
    base = (int(forests[0].seed_) - 1 - int(replicates[0])) % 2**32
    for forest, b in zip(forests, replicates):
        if forest.growth_params() != forests[0].growth_params() or forest.n_train_ != forests[0].n_train_:
            raise ValueError(f"bootstrap replicate {int(b)} was grown with other settings or rows than replicate "
                             f"{int(replicates[0])}: merge the shards of one bootstrap")
        if forest.seed_ != replicate_seed(base, int(b)):
            raise ValueError(f"bootstrap replicate {int(b)} has seed {forest.seed_}, not the one replicate {int(b)} of "
                             f"the other shards' run takes: merge the shards of one bootstrap")


def replicate_seed(seed: int, replicate: int) -> int:
    """The forest seed of replicate `replicate` (the main forest has `seed`), within the 32 bits
    numpy's and scikit-learn's seeds take (a run's seed may be 2**32 - 1)."""
    return (seed + 1 + replicate) % 2**32


def replicate_forest_params(forest_params: dict, trees: int, correction_variables,
                            candidate_weights=None, correction_ridge: float | None = None) -> dict:
    """The growth parameters of every replicate forest: the point forest's (leaf size, honesty,
    subsample fraction, little-bag groups), with `trees` trees rounded up to whole groups and at
    least two groups (the Monte-Carlo variance needs two), the local linear correction on the
    covariates the point forest chose (`correction_variables`, None without a correction) with
    the penalty it chose (`correction_ridge`, its correction's `ridge`; None keeps the parameter's
    number, 0.1 for 'auto') and its candidate weights (`candidate_weights`, its
    `candidate_weights_`: None for uniform draws). Choosing any of them again per replicate would
    cost a lasso, an out-of-bag pass or a pilot forest each and make the interval describe
    another estimator."""
    from .forest import CausalForest
    from .sampling import resolve_group_size

    defaults = CausalForest().get_params()
    group = resolve_group_size(forest_params.get("ci_group_size", defaults["ci_group_size"]),
                               forest_params.get("n_estimators", defaults["n_estimators"]))
    if not (isinstance(trees, (int, np.integer)) and trees >= 1):
        raise ValueError(f"bootstrap trees must be a positive integer, got {trees!r}")
    ridge = initial_ridge(correction_ridge if correction_ridge is not None
                          else forest_params.get("linear_correction_ridge", defaults["linear_correction_ridge"]))
    return {**forest_params, "n_estimators": group * max(2, ceil(int(trees) / group)), "ci_group_size": group,
            "linear_correction_variables": None if correction_variables is None else list(correction_variables),
            "candidate_weights": None if candidate_weights is None else [float(v) for v in candidate_weights],
            "linear_correction_ridge": ridge,
            "variance_smoothing": False}  # replicates give point estimates and Monte-Carlo variances only


def fit_replicates(X: np.ndarray, replicates: int | range, seed: int, forest_params: dict,
                   residuals: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
                   ate: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float],
                   progress: bool | None = None, sample_weight: np.ndarray | None = None,
                   batch_size: int | None = None, groups: np.ndarray | None = None) -> BootstrapReplicates:
    """Replicates 0..replicates-1 (or the given range: one shard's part). `residuals(weights)`
    gives (y_res, t_res, t_var) for a replicate's weights (`resample_weights`; the main fit's
    residuals, or the nuisance models refit with those weights); `ate(weights, y_res, t_res,
    t_var)` the replicate's average effect. Each replicate's forest is grown with
    `forest_params` (`replicate_forest_params`), its own seed (`replicate_seed`) and the
    replicate's weights (times `sample_weight`) as sample weights. Forests are grown
    `batch_size` at a time in the same device calls (`kernels.forest.fit_forests`; default
    `forests_per_batch`: as many as fit in 1 GiB on a torch device, one on numba), on the bins
    of X seeded with `seed`: the batch size never changes a replicate. With `groups` (codes
    0..G-1) a group's rows share their weight and the forests draw whole groups."""
    from ._inputs import resolve_device
    from .backends import get_backend
    from .binning import QuantileBinner
    from .forest import CausalForest, fit_forests, forests_per_batch

    replicates = range(replicates) if isinstance(replicates, (int, np.integer)) else replicates
    n, p = X.shape
    params = {**forest_params, "progress": False}
    if batch_size is None:
        backend = get_backend(params.get("backend", "auto"), resolve_device(params.get("device", "auto")))
        batch_size = forests_per_batch(n, p, len(replicates), backend.name)
    batch = int(batch_size)
    if batch < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    binner = QuantileBinner(CausalForest(**params).max_bins, random_state=seed).fit(X)
    binned = binner.bin(X)  # once for every batch: binning 1e6 x 30 takes seconds
    forests, ates = [], []
    # Shards of one bootstrap run side by side: the range tells their lines apart.
    desc = f"bootstrap replicates {replicates[0]}..{replicates[-1]}" if len(replicates) else "bootstrap replicates"
    with progress_bar(len(replicates), desc, progress, unit="replicate") as bar:
        for lo in range(0, len(replicates), batch):
            members, targets = [], []
            for b in replicates[lo:lo + batch]:
                weights = resample_weights(n, b, seed, groups)
                y_res, t_res, t_var = residuals(weights)
                members.append(CausalForest(**params, random_state=replicate_seed(seed, b)))
                targets.append((t_res, y_res, weights if sample_weight is None else weights * sample_weight))
                ates.append(ate(weights, y_res, t_res, t_var))
            forests += fit_forests(members, X, targets, binner, binned, groups=groups)
            bar.update(len(members))
    return BootstrapReplicates(forests, np.array(ates, dtype=np.float64), np.array(replicates, dtype=np.int64))


def dml_replicates(X: np.ndarray, replicates: int | range, seed: int, forest_params: dict,
                   main_residuals: tuple[np.ndarray, np.ndarray, np.ndarray], tau_oob: np.ndarray, *,
                   refit: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
                   sample_weight: np.ndarray | None = None, progress: bool | None = None,
                   batch_size: int | None = None, groups: np.ndarray | None = None) -> BootstrapReplicates:
    """The bootstrap of a DML causal forest (`CausalForestDML` and the pipeline's bootstrap
    shards): replicate forests on `refit(weights)`'s residuals (y_res, t_res, t_var), the
    nuisance models refit with the replicate's weights, or with `refit` None on the main fit's
    `main_residuals` (no nuisance uncertainty); each replicate's average effect
    (`ate.average_effect`) is on the main fit's out-of-bag CATE `tau_oob`, with the replicate's
    weights; `groups` as in `fit_replicates`."""
    base = np.ones(X.shape[0]) if sample_weight is None else sample_weight

    def residuals(weights):
        return main_residuals if refit is None else refit(weights * base)

    def ate(weights, y_res, t_res, t_var):
        return average_effect(tau_oob, y_res, t_res, t_var, sample_weight=weights * base)[0]

    return fit_replicates(X, replicates, seed, forest_params, residuals, ate, progress, sample_weight, batch_size,
                          groups)
