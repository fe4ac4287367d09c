"""From leaves to effects: the causal forest's prediction strategy and its variance.

Each tree b contributes the estimation-half leaf means m_b = (t, y, ty, tt) of the leaf that x
falls in. Averaging over trees, A = mean_b m_b, gives the local moment equations of
y = mu + tau t, solved by

    tau(x) = (A_ty - A_t A_y) / (A_tt - A_t^2),    mu(x) = A_y - tau A_t.

Variance by the bootstrap of little bags (Sexton and Laake; Athey, Tibshirani and Wager): each
tree's linearized contribution psi_b = (ty_b - mu t_b - tau tt_b) - A_t (y_b - mu - tau t_b)
averages to zero over trees; its variance between groups of trees sharing a half-sample,
minus the within-group noise, estimates the variance of the forest; grf's objective-Bayes
correction keeps it positive; dividing by (A_tt - A_t^2)^2 returns to the scale of tau.

Written once for NumPy arrays (the numba backend's, on the CPU) and torch tensors (the torch
backend's, on any device): every function computes in the library of its arguments (`array_lib`).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from ._inputs import is_tensor
from .forest_arrays import LEAF_T, LEAF_TT, LEAF_TY, LEAF_Y

# Fewer trees than this and the variance (so an interval's width) is itself noisy and, after the
# within-group noise is subtracted and clipped at zero, inflated: the forest warns when intervals
# are asked of it. Measured on grf's aw2 at n = 3,000 (docs/benchmarks.md): 500 trees in groups
# of 2 gave intervals 10% wider than 2,000; larger groups are less noisy at equal trees.
MIN_INTERVAL_TREES = 500
# Where the forest-weighted variance of t at a row is below this share of its second moment, the
# treatment is constant among the row's neighbours (its spread under 0.3% of its level) and the
# effect there is NaN (unidentified).
# Exactly constant, float32 leaf moments leave a residue near 1e-7 of it, which as a denominator
# gave CATEs of +-inf or millions instead of 0 / 0 (a review).
MIN_TREATMENT_SPREAD = 1e-5


def array_lib(a: Any) -> ModuleType:
    """The library of array `a`: torch for a tensor, else NumPy. Both spell what this module
    needs alike (where, maximum, sqrt, exp, einsum, zeros(..., dtype, device), linalg.solve,
    the axis= of reductions), except `log_ndtr`."""
    if is_tensor(a):
        import torch

        return torch
    return np


def log_ndtr(x: Any) -> Any:
    """log Phi(x), accurate for very negative x, in the library of x."""
    if is_tensor(x):
        import torch

        return torch.special.log_ndtr(x)
    from scipy.special import log_ndtr as log_ndtr_numpy

    return log_ndtr_numpy(x)


def as_float64(a: Any) -> Any:
    """`a` as float64 in its own library (float32 leaves into sums)."""
    return array_lib(a).asarray(a, dtype=array_lib(a).float64)


# A row with no valid group divides zero by zero into NaN, as torch does silently: so does NumPy here.
_quiet_nan = np.errstate(divide="ignore", invalid="ignore")


def debias_between_group_variance(var_between: Any, group_noise: Any, n_groups: Any) -> Any:
    """Posterior mean of the between-group variance S >= 0 under a flat prior, given the
    unbiased but noisy estimate var_between - group_noise ~ N(S, se^2)."""
    return posterior_mean_variance(*between_group_estimate(var_between, group_noise, n_groups))


def between_group_estimate(var_between: Any, group_noise: Any, n_groups: Any) -> tuple[Any, Any]:
    """The unbiased but noisy estimate var_between - group_noise of the between-group variance,
    and its standard error (grf's)."""
    xp = array_lib(var_between)
    se = xp.maximum(var_between, group_noise) * xp.sqrt(2.0 / n_groups.clip(min=1))
    return var_between - group_noise, se.clip(min=xp.finfo(se.dtype).tiny)


def posterior_mean_variance(estimate: Any, se: Any) -> Any:
    """E[S | S >= 0] under a flat prior on S, given estimate ~ N(S, se^2): grf's debiasing."""
    xp = array_lib(estimate)
    se = se.clip(min=xp.finfo(se.dtype).tiny)
    r = estimate / se
    # estimate + se * phi(r) / Phi(r), computed in logs for very negative r.
    log_phi = -0.5 * r * r - 0.5 * math.log(2 * math.pi)
    return estimate + se * xp.exp(log_phi - log_ndtr(r))


@_quiet_nan
def tree_average(values: Any, valid: Any | None = None) -> Any:
    """Mean over trees of gathered leaf values (rows, trees, K) -> (rows, K), over the `valid`
    trees only when given (rows, trees): a forest-weighted mean of whatever the leaves hold."""
    if valid is None:
        return values.mean(axis=1)
    vf = array_lib(values).asarray(valid, dtype=values.dtype)
    return array_lib(values).einsum("rt,rtk->rk", vf / vf.sum(axis=1, keepdims=True), values)


@_quiet_nan
def monte_carlo_variance(var_between: Any, n_groups: Any) -> Any:
    """The Monte-Carlo variance of a forest's tree average about its infinite-forest limit, the
    data held fixed: given the data, its G groups of trees are independent draws, so the tree
    average's variance is the variance of the group means (G / (G - 1) var_between, unbiased)
    over G. It includes each group's share of the half-sample variance, not only the
    within-group noise: both vanish as G grows. NaN with fewer than two groups."""
    xp = array_lib(var_between)
    return xp.where(n_groups > 1, var_between / (n_groups - 1).clip(min=1), xp.full_like(var_between, math.nan))


@_quiet_nan
def forest_estimate(values: Any, ci_group_size: int, valid: Any | None = None, with_variance: bool = True,
                    monte_carlo: bool = False, parts: bool = False) -> tuple[Any, Any | None]:
    """tau and its variance per row from gathered leaf values (rows, trees, 4): the variance of
    the estimate (bootstrap of little bags), or with `monte_carlo` the Monte-Carlo variance of
    this finite forest (`monte_carlo_variance`; groups of one tree allowed), or with `parts` the
    variance before its debiasing (`little_bag_variance`).

    `valid` (rows, trees) excludes trees (out-of-bag prediction); the variance then uses only
    groups whose trees are all valid. Rows with no valid group get a NaN variance.
    """
    A = tree_average(values, valid)
    At, Ay, Aty, Att = A[:, LEAF_T], A[:, LEAF_Y], A[:, LEAF_TY], A[:, LEAF_TT]
    denom = Att - At * At
    xp = array_lib(denom)
    denom = xp.where(denom > MIN_TREATMENT_SPREAD * Att, denom, xp.full_like(denom, math.nan))
    tau = (Aty - At * Ay) / denom
    if not with_variance or ci_group_size < (1 if monte_carlo else 2):
        return tau, None
    mu = Ay - tau * At
    t, y, ty, tt = (values[..., k] for k in (LEAF_T, LEAF_Y, LEAF_TY, LEAF_TT))
    psi = (ty - mu[:, None] * t - tau[:, None] * tt) - At[:, None] * (y - mu[:, None] - tau[:, None] * t)
    variance = little_bag_variance(psi, ci_group_size, valid, monte_carlo, parts)
    return tau, variance / (denom[:, None] if parts else denom)**2


@_quiet_nan
def little_bag_variance(psi: Any, ci_group_size: int, valid: Any | None = None, monte_carlo: bool = False,
                        parts: bool = False) -> Any:
    """Variance of a forest estimate from its trees' linearized contributions psi (rows, trees),
    which average to zero over the (valid) trees: the debiased variance between groups of
    `ci_group_size` trees sharing a half-sample, or with `monte_carlo` the Monte-Carlo variance
    of their average (`monte_carlo_variance`). NaN for a row with no all-valid group. With
    `parts`, (rows, 2): the unbiased estimate before debiasing and its standard error
    (`between_group_estimate`), which `posterior_mean_variance` turns into the variance."""
    xp = array_lib(psi)
    rows, T = psi.shape
    G = T // ci_group_size
    psi = psi[:, : G * ci_group_size].reshape(rows, G, ci_group_size)
    if valid is None:
        good = xp.ones_like(psi[:, :, 0])
    else:
        good = xp.asarray(valid[:, : G * ci_group_size].reshape(rows, G, ci_group_size).all(axis=2), dtype=psi.dtype)
    n_good = good.sum(axis=1)
    group_mean = psi.mean(axis=2)
    var_between = (good * group_mean**2).sum(axis=1) / n_good
    if monte_carlo:
        return monte_carlo_variance(var_between, n_good)
    var_total = (good[:, :, None] * psi**2).sum(axis=(1, 2)) / (n_good * ci_group_size)
    group_noise = (var_total - var_between) / (ci_group_size - 1)
    if parts:
        estimate, se = between_group_estimate(var_between, group_noise, n_good)
        nan = xp.full_like(estimate, math.nan)
        return xp.stack([xp.where(n_good > 0, estimate, nan), xp.where(n_good > 0, se, nan)], 1)
    var = debias_between_group_variance(var_between, group_noise, n_good)
    return xp.where(n_good > 0, var, xp.full_like(var, math.nan))
