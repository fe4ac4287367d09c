"""Local linear correction of the CATE (Friedberg, Tibshirani, Athey and Wager 2020, "Local
Linear Forests"), as grf's LLCausalPredictionStrategy computes it.

A causal forest's estimate at x is a locally constant fit: the forest weights alpha_i(x) (the
share of trees in which training row i falls in x's leaf, over that leaf's weight) weigh the
regression y~ = mu + tau t~. Where the effect is steep, the rows around x sit mostly on one side
of it and the fit is biased. The correction adds slopes in chosen covariates Z:

    y~_i = mu + (Z_i - z) b_mu + t~_i (tau + (Z_i - z) b_tau)

fit with the same weights and a ridge penalty on the slopes (M the weighted Gram matrix, D = 2 d
+ 2 coefficients, d = len(Z)): lambda LEVEL_PENALTY times the mean diagonal of M's (1, Z) block on
b_mu, lambda EFFECT_PENALTY times the mean diagonal of its (t~, t~ Z) block on b_tau, so that the
estimate does not depend on T's units (grf's, and this module's before format 5 of the saved
forest, one lambda trace(M) / D for both, mixed T's units into the level's penalty); tau is the
corrected CATE.

Its normal equations need only forest-weighted means of u u' and u y, u = (1, Z, t~, t~ Z), and a
forest-weighted mean is the mean over trees of leaf means. So each leaf keeps the means of those
products over its estimation rows (`leaf_moments`, float32, K = D (D + 1) / 2 + D numbers), and
prediction averages them like the forest's own leaf values: no training row is kept in the model.
Centring at z is a linear map of u, applied to the averaged moments.

Variance: tau(x) is a smooth function of the tree average of leaf moments; its linearization
gives each tree a contribution psi_b = h' ((r_b - r) - (M_b - M) theta), h = (M + penalty)^-T e_tau,
linear in tree b's leaf moments, and the bootstrap of little bags (kernels.prediction) turns those
into a variance. With no covariates (d = 0) this is exactly the forest's own estimate and variance.

Covariates are standardized with the training mean and standard deviation, so one lambda fits
all scales. "auto" chooses them as the covariates a lasso of the R-learner's linear model (y~ on
t~ and t~ Z over all covariates) keeps at the one-standard-error penalty, at most
MAX_AUTO_VARIABLES of them: a rule of the data alone, so every shard of a forest chooses the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .prediction import MIN_TREATMENT_SPREAD, array_lib, little_bag_variance

if TYPE_CHECKING:
    from .forest_arrays import ForestArrays
    from .sampling import TreeSample

MAX_AUTO_VARIABLES = 4
# 'auto' leaves the correction off where its leaf moments could take more memory than this: they
# grow with rows x trees (at 1e6 rows, 2,000 trees and one covariate about 2.9 GB), while the
# smoothing bias they remove shrinks as rows grow. Bounded from the forest's settings alone
# (leaves of a tree <= its estimation rows / min_samples_leaf), so every shard decides alike.
AUTO_MAX_LEAF_MOMENT_BYTES = 1 << 30
SELECTION_ROWS = 50_000  # rows the lasso of 'auto' sees at most (a seeded subsample)
DEFAULT_RIDGE = 0.1
# The penalties linear_correction_ridge='auto' chooses from (`choose_ridge`). 0.03 to 10 spans
# what the designs of docs/benchmarks.md prefer: 0.03 where the effect is linear in the
# covariates (simple, the continuous design), 0.1-0.3 on aw2 and aw3 at n = 2,000, 3 to 10
# (nearly the plain forest) at n = 20,000.
RIDGE_PATH = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
# How many standard errors of the paired difference another penalty's out-of-bag R-loss must be
# below DEFAULT_RIDGE's to be chosen instead. At n = 2,000 the loss is noisy: the plain minimum
# (as grf's tune_ll_causal_forest takes it) chose 0.03 on 7 of 10 training sets of the imbalanced
# design and added 6% to its error, 3% on the sparse design; at 1.5 no design lost over 1.1%
# (docs/benchmarks.md, "The correction's penalty chosen out of bag").
RIDGE_EVIDENCE = 1.5


def initial_ridge(ridge: Any) -> float:
    """The penalty a correction is fit with before any choice: the number given, or DEFAULT_RIDGE
    for 'auto' (what `choose_ridge` keeps without evidence, and a forest keeps where it cannot
    choose)."""
    return DEFAULT_RIDGE if isinstance(ridge, str) else float(ridge)


def choose_ridge(taus: np.ndarray, t_res: np.ndarray, y_res: np.ndarray, w: np.ndarray,
                 groups: np.ndarray | None = None) -> float:
    """The penalty of RIDGE_PATH for linear_correction_ridge='auto', from the out-of-bag CATE of
    the training rows under each, `taus` (rows, len(RIDGE_PATH)); NaN rows (seen by every tree)
    are left out. Each penalty's R-loss is sum w (y~ - tau t~)^2 / sum w; one whose loss is
    below DEFAULT_RIDGE's by more than RIDGE_EVIDENCE standard errors of the paired difference
    may replace it, and the least such loss wins. The standard error treats `groups` (integer
    codes) as the independent units, else the rows; rows that share leaves are not independent,
    so it is nominal, and RIDGE_EVIDENCE was set by measurement on that scale."""
    usable = np.isfinite(taus).all(axis=1) & (np.asarray(w) > 0)
    w = np.asarray(w, dtype=np.float64)[usable]
    total = w.sum()
    if total <= 0:
        return DEFAULT_RIDGE  # nothing to judge by
    losses = (y_res[usable, None] - taus[usable] * t_res[usable, None]) ** 2  # (rows, penalties)
    mean = (w[:, None] * losses).sum(0) / total
    base = RIDGE_PATH.index(DEFAULT_RIDGE)
    units = None if groups is None else np.asarray(groups)[usable]
    best = base
    for i in range(len(RIDGE_PATH)):
        diff = losses[:, i] - losses[:, base]
        gap = mean[i] - mean[base]
        contributions = w * (diff - gap)
        if units is not None:
            contributions = np.bincount(units, weights=contributions)[np.unique(units)]
        m = len(contributions)  # independent units; m / (m - 1): the variance of a mean of few groups
        stderr = np.sqrt(np.sum(contributions ** 2) * m / max(m - 1, 1)) / total
        if gap < -RIDGE_EVIDENCE * stderr and mean[i] < mean[best]:
            best = i
    return float(RIDGE_PATH[best])
# The ridge's multipliers for the level's Z slopes and the effect's t~ Z slopes, each relative to
# its own block of M (`local_linear_estimate`).
LEVEL_PENALTY = 0.6
EFFECT_PENALTY = 3.0


def leaf_moment_bytes_bound(n_trees: int, estimation_rows: int, min_samples_leaf: float, d: int) -> int:
    """The most memory the float32 leaf moments of d covariates can take in a forest of n_trees
    trees, each with estimation_rows rows and leaves of at least min_samples_leaf of them."""
    leaves = math.floor(estimation_rows / max(min_samples_leaf, 1e-12)) + 1
    return n_trees * leaves * n_moments(d) * 4


def n_moments(d: int) -> int:
    """Numbers per leaf for d covariates: the upper triangle of u u' and u y, u of length 2 d + 2."""
    D = 2 * d + 2
    return D * (D + 1) // 2 + D


# Below this many rows, "auto" chooses no covariates (the lasso's 5-fold cross-validation needs
# rows in every fold, and a correction fit on so few would only add variance).
MIN_SELECTION_ROWS = 20


def select_variables(X: np.ndarray, t_res: np.ndarray, y_res: np.ndarray, seed: int,
                     sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None) -> tuple[int, ...]:
    """The covariates a lasso of y~ on (t~, t~ X_std) keeps at the largest penalty whose
    cross-validated error is within one standard error of the best (glmnet's lambda.1se: the
    minimum keeps noise covariates, which only add variance here), largest coefficients first,
    at most MAX_AUTO_VARIABLES: where the effect moves linearly, which is where the correction helps.
    With `groups` (codes, one per row) its folds hold out whole groups."""
    from sklearn.linear_model import Lasso, LassoCV

    from .nuisance import group_folds

    w = np.ones(len(y_res)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    rows = np.flatnonzero(w > 0)  # zero-weight rows are not part of the data
    if len(rows) > SELECTION_ROWS:  # the lasso's cost grows with n; its choice settles long before
        rows = np.sort(np.random.default_rng(seed).choice(rows, SELECTION_ROWS, replace=False))
    X, t_res, y_res, w = X[rows], t_res[rows], y_res[rows], w[rows]
    if groups is not None and len(np.unique(groups[rows])) < 5:  # five folds of whole groups
        return ()
    scale = X.std(axis=0)
    usable = np.flatnonzero(scale > 0)
    if len(usable) == 0 or len(rows) < MIN_SELECTION_ROWS:  # too few rows to cross-validate a lasso
        return ()
    # In units of their own spread: the lasso's choice does not depend on them, but its solver's
    # tolerances do (with T or Y 1e-16 times smaller it kept other covariates, and the CATE moved).
    t_scale, y_scale = float(np.sqrt(np.mean(t_res**2))), float(np.sqrt(np.mean(y_res**2)))
    if not (t_scale > 0 and y_scale > 0):
        return ()
    t_res, y_res = t_res / t_scale, y_res / y_scale
    Xs = (X[:, usable] - X[:, usable].mean(axis=0)) / scale[usable]
    design = np.hstack([t_res[:, None], t_res[:, None] * Xs])
    fit_weight = None if sample_weight is None else w
    # The forest's seeds have 63 bits, scikit-learn takes 32 (random_state=None crashed here).
    folds = 5 if groups is None else group_folds(groups[rows], 5)
    cv = LassoCV(cv=folds, random_state=seed % 2**32).fit(design, y_res, sample_weight=fit_weight)
    mse = cv.mse_path_.mean(axis=1)
    best = int(np.argmin(mse))
    bar = mse[best] + cv.mse_path_[best].std() / np.sqrt(cv.mse_path_.shape[1])
    alpha = float(np.max(cv.alphas_[mse <= bar]))
    coef = np.abs(Lasso(alpha=alpha).fit(design, y_res, sample_weight=fit_weight).coef_[1:])
    kept = [int(usable[k]) for k in np.argsort(-coef, kind="stable") if coef[k] > 0]
    return tuple(sorted(kept[:MAX_AUTO_VARIABLES]))


# Standard deviations from the training mean beyond which a row's correction covariates are held.
# Centring at z squares it: past about 1e154 the local regression overflowed and the CATE was
# NaN. Far out, the ridge (scaled by the trace, which grows as z^2) holds the slopes, so the
# estimate has long stopped moving (at 1e4 and 1e8 standard deviations it agrees to 1e-5), and no
# training row reaches the limit (standardized by its own data, |z| <= sqrt(rows)).
DESIGN_LIMIT = 1e6


@dataclass
class LocalLinearCorrection:
    """The fitted correction of one forest: which covariates, their standardization, the ridge
    penalty, and the leaf moments aligned with the forest's leaf rows."""

    variables: tuple[int, ...]
    center: np.ndarray  # float64 [d]
    scale: np.ndarray  # float64 [d]
    ridge: float
    leaf_moments: np.ndarray  # float32 [leaves, K]
    penalty_blocks: bool = True  # False in models saved before the per-block penalty

    def design(self, X: np.ndarray) -> np.ndarray:
        """Standardized correction covariates of rows X (n, p) -> (n, d), clipped at DESIGN_LIMIT."""
        with np.errstate(over="ignore"):  # a row at 1e308 standardizes to inf, then to the limit
            z = (X[:, list(self.variables)] - self.center) / self.scale
        return np.clip(z, -DESIGN_LIMIT, DESIGN_LIMIT)

    @classmethod
    def fit(cls, variables: tuple[int, ...], ridge: float, X: np.ndarray, T: np.ndarray, y: np.ndarray,
            w: np.ndarray, backend: Any, fine: np.ndarray, forest: ForestArrays,
            samples: list[TreeSample]) -> LocalLinearCorrection:
        """The correction of `forest`, grown on the binned rows `fine` with `samples`: its leaves'
        means of the row moments over their estimation rows (`backend.local_linear_moments`);
        w the rows' sample weights."""
        cols = X[:, list(variables)]
        center = np.average(cols, axis=0, weights=w)  # zero-weight rows are not part of the data
        scale = np.sqrt(np.average((cols - center) ** 2, axis=0, weights=w))
        scale = np.where(scale > 0, scale, 1.0)
        correction = cls(tuple(int(v) for v in variables), center, scale, float(ridge), np.empty(0))
        z = np.ascontiguousarray(correction.design(X))
        w = np.ascontiguousarray(w, dtype=np.float64)
        T, y = np.ascontiguousarray(T, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)
        correction.leaf_moments = backend.local_linear_moments(fine, forest, samples, z, T, y, w)
        return correction

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ll_leaf_moments": self.leaf_moments, "ll_center": self.center, "ll_scale": self.scale}

    def to_json(self) -> dict:
        return {"variables": list(self.variables), "ridge": self.ridge,
                **({"penalty": "blocks"} if self.penalty_blocks else {})}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray], n_leaves: int) -> LocalLinearCorrection:
        variables = tuple(int(v) for v in meta["variables"])
        correction = cls(variables, np.asarray(arrays["ll_center"], dtype=np.float64),
                         np.asarray(arrays["ll_scale"], dtype=np.float64), float(meta["ridge"]),
                         np.asarray(arrays["ll_leaf_moments"], dtype=np.float32), meta.get("penalty") == "blocks")
        K = n_moments(len(variables))
        if correction.leaf_moments.shape != (n_leaves, K) or correction.center.shape != (len(variables),) \
                or correction.scale.shape != (len(variables),):
            raise ValueError(f"the local linear correction's arrays do not match the forest ({n_leaves} leaves, "
                             f"{len(variables)} covariates): the model files are inconsistent")
        return correction

    @staticmethod
    def same_fit(a: LocalLinearCorrection | None, b: LocalLinearCorrection | None) -> bool:
        """Whether two shards' corrections (or their absence) can be merged: the same covariates,
        standardization and penalty (a review: shards correcting on (0,) and (2,) merged into
        one that read shard 1's leaf moments as shard 0's covariates)."""
        if a is None or b is None:
            return a is None and b is None
        return (a.variables == b.variables and np.array_equal(a.center, b.center) and np.array_equal(a.scale, b.scale)
                and a.ridge == b.ridge and a.penalty_blocks == b.penalty_blocks)

    @staticmethod
    def merge(parts: list[LocalLinearCorrection]) -> LocalLinearCorrection:
        first = parts[0]
        return LocalLinearCorrection(first.variables, first.center, first.scale, first.ridge,
                                     np.concatenate([p.leaf_moments for p in parts]), first.penalty_blocks)


def local_linear_estimate(backend, ids: Any, leaf_moments: np.ndarray, z: Any, ridge: float, ci_group_size: int,
                          valid: Any | None = None, with_variance: bool = True,
                          monte_carlo: bool = False, penalty_blocks: bool = True,
                          parts: bool = False) -> tuple[Any, Any | None]:
    """Corrected tau and its variance per row from the rows' leaves `ids` (rows, trees), the
    forest's leaf moments (leaves, K) and the rows' standardized covariates z (rows, d), on
    `backend` (kernels.backends: its leaf_means and leaf_scores walk the (rows, trees, K) moments
    without gathering them, 600 MB for 10,000 rows and 500 trees); `valid`, `monte_carlo` and `parts` as
    in kernels.prediction.forest_estimate. Arrays of the backend's library (NumPy or torch)."""
    A = backend.leaf_means(ids, leaf_moments, valid)
    C, M, r, iu = _centred_system(A, z)
    d = z.shape[1]
    D = 2 * d + 2
    M_pen = M + _penalty(M, ridge, d, penalty_blocks)
    theta = _solve(M_pen, r[..., None])[..., 0]
    xp = array_lib(A)
    tau = xp.where(_identified(M, d), theta[:, d + 1], xp.full_like(theta[:, d + 1], math.nan))
    if not with_variance or ci_group_size < (1 if monte_carlo else 2):
        return tau, None
    like = {"dtype": A.dtype, "device": A.device}
    rows = ids.shape[0]
    # psi_b = h' C ((r_raw_b - r_raw) - (M_raw_b - M_raw) C' theta): linear in tree b's moments.
    e_tau = xp.zeros((rows, D, 1), **like)
    e_tau[:, d + 1] = 1.0
    h = (C.swapaxes(1, 2) @ _solve(M_pen.swapaxes(1, 2), e_tau))[..., 0]
    theta_raw = (C.swapaxes(1, 2) @ theta[..., None])[..., 0]
    outer = h[:, :, None] * theta_raw[:, None, :]
    coef_tri = -(outer + outer.swapaxes(1, 2))[:, iu[0], iu[1]]
    diagonal = iu[0] == iu[1]
    coef_tri[:, diagonal] = coef_tri[:, diagonal] / 2
    coef = xp.concatenate([coef_tri, h], axis=1)  # (rows, K)
    psi = backend.leaf_scores(ids, leaf_moments, A, coef)
    variance = little_bag_variance(psi, ci_group_size, valid, monte_carlo, parts)
    return tau, xp.where(xp.isnan(tau)[:, None] if parts else xp.isnan(tau), xp.full_like(variance, math.nan),
                         variance)


def _identified(M: Any, d: int) -> Any:
    """The rows whose treatment varies among their neighbours (elsewhere tau is NaN): the plain
    forest's rule (kernels.prediction.MIN_TREATMENT_SPREAD) on M's mean t (entry (0, t)) and mean
    t^2 (entry (t, t)), which centring at z leaves as they are. Exactly constant, the penalty kept
    the system solvable and float32 moments gave a tau in the millions."""
    mean_t, mean_tt = M[:, 0, d + 1], M[:, d + 1, d + 1]
    return mean_tt - mean_t * mean_t > MIN_TREATMENT_SPREAD * mean_tt


def _centred_system(A: Any, z: Any) -> tuple[Any, Any, Any, Any]:
    """From the rows' forest-weighted mean moments A (rows, K) and covariates z (rows, d): the
    centring map C, the centred Gram matrices M = C M_raw C' and right-hand sides r, and the
    upper-triangle indices iu of the moments' layout."""
    xp = array_lib(A)
    like = {"dtype": A.dtype, "device": A.device}
    rows, d = A.shape[0], z.shape[1]
    D = 2 * d + 2
    iu = xp.asarray(np.stack(np.triu_indices(D)), device=A.device)
    n_tri = iu.shape[1]
    # Centring at z: u -> C u, C = blockdiag(c, c), c = [[1, 0], [-z, I]].
    C = xp.zeros((rows, D, D), **like) + xp.eye(D, **like)
    C[:, 1:d + 1, 0] = -z
    C[:, d + 2:, d + 1] = -z
    M_raw = _symmetric(A[:, :n_tri], iu, D)
    M = C @ M_raw @ C.swapaxes(1, 2)
    r = (C @ A[:, n_tri:, None])[..., 0]
    return C, M, r, iu


def _penalty(M: Any, ridge: float, d: int, penalty_blocks: bool) -> Any:
    """The ridge's diagonal (rows, D, D) added to the centred Gram matrices M."""
    xp = array_lib(M)
    like = {"dtype": M.dtype, "device": M.device}
    rows, D = M.shape[0], M.shape[1]
    if penalty_blocks:
        # Each block's slopes shrunk relative to that block's own scale: the Z slopes of the level
        # by the mean of M's (1, Z) diagonal, the t~ Z slopes of the effect by the mean of its
        # (t~, t~ Z) diagonal, which carries T's units squared; so the estimate does not depend on
        # T's units (one trace mixed both: a numerics review).
        diagonal = xp.einsum("rii->ri", M)
        level, effect = diagonal[:, :d + 1].mean(1), diagonal[:, d + 1:].mean(1)
        weights = xp.zeros((rows, D), **like)
        weights[:, 1:d + 1] = (ridge * LEVEL_PENALTY * level)[:, None]
        weights[:, d + 2:] = (ridge * EFFECT_PENALTY * effect)[:, None]
    else:  # models saved before 2026-12-06: one trace for both blocks
        penalized = xp.ones(D, **like)
        penalized[0] = penalized[d + 1] = 0.0  # intercept and effect: only the slopes are shrunk
        weights = ridge * (xp.einsum("rii->r", M) / D)[:, None] * penalized
    return weights[:, :, None] * xp.eye(D, **like)


def local_linear_taus(backend, ids: Any, leaf_moments: np.ndarray, z: Any, ridges: Sequence[float],
                      valid: Any | None = None, penalty_blocks: bool = True) -> np.ndarray:
    """The corrected tau per row under each ridge penalty in `ridges`, (rows, len(ridges)), from
    one pass over the rows' leaves (`choose_ridge`'s out-of-bag path); arguments as in
    `local_linear_estimate`."""
    A = backend.leaf_means(ids, leaf_moments, valid)
    _, M, r, _ = _centred_system(A, z)
    d = z.shape[1]
    identified = backend.to_numpy(_identified(M, d))  # once for every penalty
    taus = [backend.to_numpy(_solve(M + _penalty(M, ridge, d, penalty_blocks), r[..., None])[:, d + 1, 0])
            for ridge in ridges]
    return np.where(identified[:, None], np.stack(taus, axis=1), math.nan)


def _solve(M: Any, b: Any) -> Any:
    """Batched solve of M x = b; NaN for a row whose M is singular (the treatment constant
    among its neighbours, where the plain forest's estimate is 0 / 0) instead of an error for
    every row of the call."""
    xp = array_lib(M)
    if xp is np:
        try:
            return np.linalg.solve(M, b)
        except np.linalg.LinAlgError:
            out = np.full(b.shape, np.nan, dtype=np.result_type(M, b))
            for i in range(M.shape[0]):
                try:
                    out[i] = np.linalg.solve(M[i], b[i])
                except np.linalg.LinAlgError:
                    pass
            return out
    x, info = xp.linalg.solve_ex(M, b)
    return xp.where((info != 0)[:, None, None], xp.full_like(x, math.nan), x)


def _symmetric(tri: Any, iu: Any, D: int) -> Any:
    """(rows, D, D) from upper-triangle entries (rows, D (D + 1) / 2) in triu_indices order."""
    M = array_lib(tri).zeros((tri.shape[0], D, D), dtype=tri.dtype, device=tri.device)
    M[:, iu[0], iu[1]] = tri
    M[:, iu[1], iu[0]] = tri
    return M
