"""Average treatment effects from cross-fitted residuals: the estimators that `CausalForestDML`,
the full bootstrap (`kernels.bootstrap`) and the pipeline's steps all use.

A binary treatment's ATE is doubly robust (the AIPW score on out-of-bag CATE, as EconML's
`CausalForestDML.ate_`); a continuous treatment's is the partially linear DML estimate.
"""

from __future__ import annotations

import numpy as np

# Propensities are clipped to [MIN_PROPENSITY, 1 - MIN_PROPENSITY] in the doubly robust score:
# CausalForestDML's default, and what every step that re-estimates the ATE uses.
MIN_PROPENSITY = 0.01


def doubly_robust_scores(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_hat: np.ndarray,
                         min_propensity: float = MIN_PROPENSITY) -> np.ndarray:
    """Per-row AIPW scores of a binary treatment, tau + (y~ - tau t~) t~ / (e (1 - e)), with the
    propensity clipped to [min_propensity, 1 - min_propensity]: their mean is the ATE, their mean
    over a subgroup the subgroup's effect."""
    e = np.clip(t_hat, min_propensity, 1 - min_propensity)
    return tau + (y_res - tau * t_res) * t_res / (e * (1 - e))


def doubly_robust_ate(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_hat: np.ndarray,
                      min_propensity: float = MIN_PROPENSITY,
                      sample_weight: np.ndarray | None = None) -> tuple[float, float]:
    """ATE and standard error of a binary treatment from the AIPW score on out-of-bag CATE `tau`."""
    w = np.ones(len(y_res)) if sample_weight is None else sample_weight / sample_weight.mean()
    psi = doubly_robust_scores(tau, y_res, t_res, t_hat, min_propensity)
    ate = float(np.average(psi, weights=w))
    return ate, float(np.sqrt(np.sum(w**2 * (psi - ate) ** 2)) / w.sum())


def partially_linear_ate(y_res: np.ndarray, t_res: np.ndarray,
                         sample_weight: np.ndarray | None = None) -> tuple[float, float]:
    """Partially linear DML effect: theta solves sum w t~ (y~ - theta t~) = 0; sandwich variance."""
    w = np.ones(len(y_res)) if sample_weight is None else sample_weight / sample_weight.mean()
    ate = float(np.sum(w * t_res * y_res) / np.sum(w * t_res**2))
    score = w * t_res * (y_res - ate * t_res)
    return ate, float(np.sqrt(np.sum(score**2)) / np.sum(w * t_res**2))


def dml_ate(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_hat: np.ndarray, *, discrete: bool,
            min_propensity: float = MIN_PROPENSITY,
            sample_weight: np.ndarray | None = None) -> tuple[float, float]:
    """The ATE and its standard error as the pipeline reports it: doubly robust on the out-of-bag
    CATE `tau` for a binary (`discrete`) treatment, partially linear for a continuous one."""
    if discrete:
        return doubly_robust_ate(tau, y_res, t_res, t_hat, min_propensity, sample_weight)
    return partially_linear_ate(y_res, t_res, sample_weight)


def oob_effect(forest, X: np.ndarray) -> np.ndarray:
    """Out-of-bag CATE of a forest's training rows `X` (the `tau` of the doubly robust ATE); rows
    every tree saw (only with very few trees) use all trees."""
    tau = forest.oob_predict(X)
    unseen = np.isnan(tau)
    if unseen.any():
        tau[unseen] = forest.predict(X[unseen])
    return tau
