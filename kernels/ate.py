"""Average effects from cross-fitted residuals: the estimators that `CausalForestDML`, the full
bootstrap (`kernels.bootstrap`) and the pipeline's steps all use.

The average effect is the mean of the debiased (AIPW) score of the out-of-bag CATE,

    psi_i = tau(x_i) + (y~_i - tau(x_i) t~_i) t~_i / V(x_i),    V(x) = Var[T | X = x],

as grf's `average_treatment_effect` forms it. For a binary treatment V = e (1 - e) and psi is
the doubly robust score of the ATE (EconML's `CausalForestDML.ate_`); for a continuous one V is
a cross-fitted model of t~^2 (`treatment_variance`) and the mean is the
average partial effect E[tau(X)]. The partially linear estimate sum t~ y~ / sum t~^2 weights
each row's effect by its treatment variance: it is kept under its own name,
`variance_weighted_effect`, and is not the average effect when both vary with x.
"""

from __future__ import annotations

import numpy as np

from . import _inputs
from .progress import progress_bar

# Propensities are clipped to [MIN_PROPENSITY, 1 - MIN_PROPENSITY] in the doubly robust score
# (closer to 0 and 1 for a rare arm: `propensity_clip`): CausalForestDML's default, and what every
# step that re-estimates the ATE uses. A fitted
# propensity near 0 or 1 is mostly the model's error (the default least-squares one reaches its
# 0.001 floor where the truth is 0.03): clipped at 0.01 such rows weighed up to 100. At 0.025
# the ATE's error fell 13-44% on four designs of five (the fifth's propensities never reach the
# clip), with the same coverage; at 0.05 less error still but a bias where the true propensities
# are small (tests/benchmarks/bench_propensity.py, docs/benchmarks.md).
MIN_PROPENSITY = 0.025
# A continuous treatment's fitted variance V(x) is floored at this share of the mean t~^2, so a
# few rows where the model underestimates it cannot dominate the average. The binary analogue:
# e (1 - e) with e clipped to [0.025, 0.975] is at least 10% of its largest value (less for a
# rare arm, whose clip is lower).
MIN_VARIANCE_SHARE = 0.05
# Positivity: estimated propensities outside these bounds, or a continuous treatment's Var(T | X)
# under this share of the mean squared treatment residual (the binary bounds put e (1 - e) under
# 19% of its largest value, 0.25), are where the data say little about the effect: the rows'
# debiasing weights are the large ones. Over OVERLAP_WARNING_SHARE of the rows there (of positive
# sample_weight), CausalForestDML warns and the pipeline's gate fails by default
# (components.evaluate); they are flagged in monitoring too.
OVERLAP_BOUNDS = (0.05, 0.95)
MIN_TREATMENT_VARIANCE_SHARE = 0.1
OVERLAP_WARNING_SHARE = 0.10
# Fewer effective groups than this (fit(groups=), `effective_groups`) draw a warning:
# cluster-robust standard errors are too small with few clusters (Cameron and Miller 2015, "A
# Practitioner's Guide to Cluster-Robust Inference", put the trouble below 20 to 50), and
# unequal sizes make many clusters act as few: 40 groups, one of half the rows, rejected a true
# null 34% of the time at 5% in a review's simulation.
MIN_GROUPS = 20


def outside_propensity_bounds(e_hat: np.ndarray) -> np.ndarray:
    """The rows whose estimated propensity lies outside OVERLAP_BOUNDS (a binary treatment's overlap)."""
    lo, hi = OVERLAP_BOUNDS
    return (e_hat < lo) | (e_hat > hi)


def treatment_variance_ratio(t_var: np.ndarray, t_res: np.ndarray, sample_weight: np.ndarray | None = None
                             ) -> np.ndarray:
    """A continuous treatment's Var(T | X) per row over the (weighted) mean t~^2: rows under
    MIN_TREATMENT_VARIANCE_SHARE lie outside its overlap."""
    return t_var / float(np.average(t_res**2, weights=sample_weight))


def overlap_message(T_hat: np.ndarray, t_var: np.ndarray, t_res: np.ndarray, discrete: bool,
                    sample_weight: np.ndarray | None = None) -> str | None:
    """What a fit should warn of when over OVERLAP_WARNING_SHARE of its rows lie outside
    the overlap: their estimated propensity T_hat outside OVERLAP_BOUNDS, or for a continuous
    treatment Var(T | X) under MIN_TREATMENT_VARIANCE_SHARE of its mean; else None."""
    if discrete:
        outside = outside_propensity_bounds(T_hat)
        where = f"an estimated propensity outside [{OVERLAP_BOUNDS[0]}, {OVERLAP_BOUNDS[1]}]"
    else:
        outside = treatment_variance_ratio(t_var, t_res, sample_weight) < MIN_TREATMENT_VARIANCE_SHARE
        where = f"an estimated Var(T | X) under {MIN_TREATMENT_VARIANCE_SHARE:g} of its mean"
    counted = slice(None) if sample_weight is None else sample_weight > 0  # as the gate: rows of weight 0 aside
    share = float(np.mean(outside[counted]))
    if share <= OVERLAP_WARNING_SHARE:
        return None
    if discrete:
        return (f"{100 * share:.0f}% of rows have {where}: there the treatment is all but decided by the "
                "covariates, so the effects there, and ate_, rest on extrapolation and on the propensity clip "
                "(min_propensity); check the overlap, and restrict the rows or covariates to where both arms occur")
    # A review: the binary wording (arms, min_propensity) misled on a continuous treatment.
    return (f"{100 * share:.0f}% of rows have {where}: there the treatment hardly varies given the covariates, so "
            "the effects there, and ate_ (whose weights divide by Var(T | X), floored at "
            f"{MIN_VARIANCE_SHARE:g} of the residuals' mean square), rest on extrapolation; check the overlap, and "
            "restrict the rows or covariates to where the treatment varies")


def effective_groups(groups: np.ndarray) -> float:
    """(sum n_g)^2 / sum n_g^2 of the groups' sizes n_g: the number of equal groups that would
    weigh as these do (G when they are equal, about 4 for 40 with one holding half the rows)."""
    sizes = np.bincount(groups).astype(np.float64)
    return float(sizes.sum() ** 2 / np.sum(sizes**2))


def interval_quantile(alpha: float, n_groups: int | None = None) -> float:
    """The multiplier of a standard error for a two-sided (1 - alpha) interval: the normal
    quantile, or with `n_groups` independent groups Student's t with n_groups - 1 degrees of
    freedom, the usual reference for a cluster-robust standard error (Cameron and Miller 2015):
    2.09 against 1.96 at 20 groups, 1.98 at 100."""
    from scipy.stats import norm, t  # here: scipy.stats takes 0.6 s to load

    return float(norm.ppf(1 - alpha / 2) if n_groups is None else t.ppf(1 - alpha / 2, max(n_groups - 1, 1)))


def few_groups_message(groups: np.ndarray, name: str) -> str | None:
    """The warning for groups (codes) that act as fewer than MIN_GROUPS, naming them `name`, or None."""
    effective = effective_groups(groups)
    if effective >= MIN_GROUPS:
        return None
    count = int(np.count_nonzero(np.bincount(groups)))
    unequal = "" if effective > count - 0.5 else f", as unequal in size as {effective:.1f} equal ones"
    return (f"{name} has {count} groups{unequal}: standard errors that count groups are too small with fewer than "
            f"{MIN_GROUPS}")


def propensity_clip(T: np.ndarray, min_propensity: float = MIN_PROPENSITY,
                    sample_weight: np.ndarray | None = None) -> float:
    """The clip of a binary treatment's propensities: `min_propensity`, or half the smaller arm's
    (weighted) share where that is less. With 1% of rows treated every true propensity is near
    0.01: a clip at 0.025 shrank each row's correction, and `ate_stderr_` came out 2.6 times too
    small (95% intervals covering 56-69% of 16 seeds: a numerics review, docs/benchmarks.md)."""
    share = float(np.average(T, weights=sample_weight))
    return max(min(min_propensity, 0.5 * min(share, 1 - share)), 1e-6)  # never 0: V(x) divides


def propensity_variance(t_hat: np.ndarray, clip: float = MIN_PROPENSITY) -> np.ndarray:
    """V(x) = e (1 - e) of a binary treatment, its propensity clipped to [clip, 1 - clip] (`propensity_clip`)."""
    e = np.clip(t_hat, clip, 1 - clip)
    return e * (1 - e)


def floor_variance(v_hat: np.ndarray, t_res: np.ndarray, sample_weight: np.ndarray | None = None) -> np.ndarray:
    """A fitted conditional variance (a continuous treatment's V(x)), floored at
    MIN_VARIANCE_SHARE of the (weighted) mean square of its residuals `t_res`."""
    return np.maximum(v_hat, MIN_VARIANCE_SHARE * float(np.average(t_res**2, weights=sample_weight)))


def treatment_variance(XW: np.ndarray, T: np.ndarray, t_hat: np.ndarray, fold: np.ndarray, *, discrete: bool,
                       seed: int, sample_weight: np.ndarray | None = None,
                       min_propensity: float = MIN_PROPENSITY, progress: bool | None = False,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """V(x) = Var[T | X, W] of every row, the denominator of the debiasing weights: e (1 - e) for a
    binary treatment; for a continuous one, out-of-fold predictions on the folds `fold` of a model
    of t~^2 = (T - t_hat)^2 (`nuisance.treatment_variance_model`; grf fits a regression forest to
    the same target), floored (`floor_variance`). `progress` counts its folds (`kernels.progress`).
    The model, and scikit-learn with it, loads only for a continuous treatment: the pipeline's step
    that joins the folds needs neither for a binary one. `groups` go to the model's own validation
    (`nuisance.fit_with_groups`)."""
    if discrete:
        return propensity_variance(t_hat, propensity_clip(T, min_propensity, sample_weight))
    t_res = T - t_hat
    v_hat = np.empty(len(T))
    folds = np.unique(fold)
    with progress_bar(len(folds), "fitting the treatment variance model", progress, unit="fold") as bar:
        for k in folds:
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            v_hat[test] = fit_residual_variance(XW, t_res, train, seed=seed, sample_weight=sample_weight,
                                                groups=groups).predict(XW[test])
            bar.update(1)
    return floor_variance(v_hat, t_res, sample_weight)


def fit_residual_variance(XW: np.ndarray, residual: np.ndarray, rows: np.ndarray, *, seed: int,
                          sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None):
    """`nuisance.treatment_variance_model` fit to residual^2 on `rows` (under their
    `sample_weight`, its validation split keeping `groups` whole: `nuisance.fit_with_groups`)."""
    from .nuisance import fit_with_groups, treatment_variance_model

    kw = {} if sample_weight is None else {"sample_weight": sample_weight[rows]}
    return fit_with_groups(treatment_variance_model(seed), XW[rows], residual[rows] ** 2,
                           None if groups is None else groups[rows], **kw)


def debiased_scores(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_var: np.ndarray) -> np.ndarray:
    """Per-row scores tau + (y~ - tau t~) t~ / V: their mean is the average effect, their mean
    over a subgroup the subgroup's (a binary treatment's AIPW scores when V = e (1 - e))."""
    return tau + (y_res - tau * t_res) * t_res / t_var


def clustered_stderr(score: np.ndarray, scale: float, groups: np.ndarray | None = None) -> float:
    """sqrt(sum over groups of (the group's sum of `score`)^2) / scale: the sandwich standard error
    of an estimate whose (weighted, centred) scores are `score`, with rows dependent within a
    group (codes, `_inputs.check_groups`) and groups independent; each row its own group without
    `groups`. With groups, times sqrt(G / (G - 1)) (Stata's CR1): without it a 95% interval from
    20 groups covered 0.93 in a review's simulation, and with weights that vary by group 0.89."""
    if groups is not None and np.count_nonzero(np.bincount(groups)) < 2:
        return float("nan")  # one group's centred scores sum to 0: a variance it cannot show
    return float(np.sqrt(clustered_cross_products(score[:, None], groups)[0, 0]) / scale)


def clustered_cross_products(scores: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """The (k, k) meat of a sandwich from per-row (weighted, centred) scores (n, k): S'S, or with
    `groups` (codes) the cross products of the groups' sums times G / (G - 1) (Stata's CR1). The
    one place rows of a group are summed for a standard error (`clustered_stderr`, the
    sensitivity bounds' covariance)."""
    if groups is None:
        return scores.T @ scores
    sums = np.stack([np.bincount(groups, weights=scores[:, j]) for j in range(scores.shape[1])], axis=1)
    n_groups = int(np.count_nonzero(np.bincount(groups)))
    return sums.T @ sums * n_groups / max(n_groups - 1, 1)


def average_effect(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_var: np.ndarray,
                   sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None) -> tuple[float, float]:
    """The average effect (ATE of a binary treatment, average partial effect of a continuous one)
    and its standard error, from the debiased scores of the out-of-bag CATE `tau`; clustered by
    `groups` when given (rows of a group dependent: `clustered_stderr`)."""
    w = np.ones(len(y_res)) if sample_weight is None else sample_weight / sample_weight.mean()
    psi = debiased_scores(tau, y_res, t_res, t_var)
    ate = float(np.average(psi, weights=w))
    return ate, clustered_stderr(w * (psi - ate), w.sum(), groups)


def variance_weighted_effect(y_res: np.ndarray, t_res: np.ndarray, sample_weight: np.ndarray | None = None,
                             groups: np.ndarray | None = None) -> tuple[float, float]:
    """The partially linear DML effect theta solving sum w t~ (y~ - theta t~) = 0, and its sandwich
    standard error (clustered by `groups` when given): E[Var(T|X) tau(X)] / E[Var(T|X)], each
    row's effect weighted by its treatment variance: the constant effect a partially linear DML
    (EconML's `LinearDML` without X) reports. Not the average effect E[tau(X)] unless tau or
    Var(T|X) is constant."""
    w = np.ones(len(y_res)) if sample_weight is None else sample_weight / sample_weight.mean()
    theta = float(np.sum(w * t_res * y_res) / np.sum(w * t_res**2))
    score = w * t_res * (y_res - theta * t_res)
    return theta, clustered_stderr(score, float(np.sum(w * t_res**2)), groups)


def oob_effect(forest, X: np.ndarray) -> np.ndarray:
    """Out-of-bag CATE of a forest's training rows `X` (the `tau` of the average effect); rows
    every tree saw (only with very few trees) use all trees."""
    tau = forest.oob_predict(X)
    unseen = np.isnan(tau)
    if unseen.any():
        tau[unseen] = forest.predict(X[unseen])
        if unseen.mean() > 0.01:  # a review: n_estimators=2 put half the rows' in-sample CATE in ate_, silently
            _inputs.warn(f"{unseen.mean():.0%} of the training rows have no out-of-bag estimate (every tree saw "
                         "them, or their out-of-bag neighbours hold one treatment value): their in-sample CATE "
                         "enters the average effect; grow more trees (n_estimators)")
    return tau
