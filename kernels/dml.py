"""`CausalForestDML`: double machine learning with a causal forest as the final stage.

Cross-fitted nuisance models give out-of-fold m(x, w) = E[Y | X, W] and e(x, w) = E[T | X, W];
the forest is grown on (X, T - e, Y - m). The API follows EconML's CausalForestDML so users
can swap one for the other.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import log_loss, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from . import _inputs
from ._progress import progress_bar
from .forest import CausalForest

_FOREST_PARAMS = ("n_estimators", "min_samples_leaf", "max_depth", "mtry", "max_samples", "ci_group_size",
                  "honest", "honesty_fraction", "alpha", "imbalance_penalty", "max_bins", "device", "backend",
                  "progress")


def default_nuisance_model(classifier: bool, seed: int) -> Any:
    """HistGradientBoosting with early stopping always on and a slower, smoother fit than
    scikit-learn's defaults: residuals from an overfit nuisance model bias the forest (with the
    defaults, which stop early only above 10,000 rows, a 0.5 propensity is fit worse than a constant)."""
    params = dict(learning_rate=0.05, max_iter=300, min_samples_leaf=50, early_stopping=True, random_state=seed)
    return HistGradientBoostingClassifier(**params) if classifier else HistGradientBoostingRegressor(**params)


def resolve_model(model: Any, role: str, discrete: bool, seed: int) -> Any:
    """A fresh scikit-learn estimator from 'auto', an import path ('sklearn.linear_model.LassoCV'),
    or an estimator instance (cloned)."""
    if isinstance(model, str) and model == "auto":
        return default_nuisance_model(role == "t" and discrete, seed)
    if isinstance(model, str):
        module, _, name = model.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"model_{role}={model!r} is not an importable estimator class: {exc}") from None
    if not (hasattr(model, "fit") and hasattr(model, "predict")):
        raise ValueError(f"model_{role} must be 'auto', an import path or a scikit-learn estimator, got {model!r}")
    return clone(model)


class CausalForestDML(BaseEstimator):
    """Causal forest with cross-fitted (double machine learning) nuisance models.

    Parameters
    ----------
    model_y, model_t : 'auto', import path or scikit-learn estimator, default 'auto'
        Nuisance models for E[Y | X, W] and E[T | X, W]. 'auto' is HistGradientBoosting with early
        stopping (a classifier for a discrete treatment; see `default_nuisance_model`). EconML's
        'auto' is a cross-validated linear model.
    discrete_treatment : bool or 'auto', default 'auto'
        Binary 0/1 treatment: model_t is a classifier (propensity), folds are stratified by T,
        and the ATE is doubly robust. 'auto' detects a 0/1 treatment.
    cv : int, default 5
        Cross-fitting folds. EconML: 2.
    min_propensity : float, default 0.01
        Propensities are clipped to [min_propensity, 1 - min_propensity] in the doubly robust ATE.
    n_estimators, min_samples_leaf, max_depth, mtry, max_samples, ci_group_size, honest,
    honesty_fraction, alpha, imbalance_penalty, max_bins, device, backend, progress :
        Passed to `CausalForest` (see there, with grf and EconML defaults compared).
    random_state : int or None
        Seed for folds, nuisance models and forest.

    Attributes
    ----------
    forest_ : CausalForest
    ate_, ate_stderr_ : float
        Average treatment effect on the training data and its standard error: doubly robust
        (AIPW score with out-of-bag CATE) for a binary treatment, as EconML's `ate_`; the
        partially linear DML estimate for a continuous one.
    nuisance_scores_ : dict
        Out-of-fold scores per fold: 'y_r2', and 't_log_loss' and 't_auc' (discrete) or 't_r2'.
    residuals_ : tuple (y_res, t_res)
        Out-of-fold residuals the forest was grown on.
    """

    def __init__(self, *, model_y: Any = "auto", model_t: Any = "auto", discrete_treatment: bool | str = "auto",
                 cv: int = 5, min_propensity: float = 0.01, n_estimators: int = 500, min_samples_leaf: float = 5,
                 max_depth: int | None = None, mtry: int | None = None, max_samples: float = 0.45,
                 ci_group_size: int = 2, honest: bool = True, honesty_fraction: float = 0.5, alpha: float = 0.05,
                 imbalance_penalty: float = 0.0, max_bins: int = 256, device: str = "auto", backend: str = "auto",
                 random_state: int | None = None, progress: bool | None = None):
        self.model_y = model_y
        self.model_t = model_t
        self.discrete_treatment = discrete_treatment
        self.cv = cv
        self.min_propensity = min_propensity
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_depth = max_depth
        self.mtry = mtry
        self.max_samples = max_samples
        self.ci_group_size = ci_group_size
        self.honest = honest
        self.honesty_fraction = honesty_fraction
        self.alpha = alpha
        self.imbalance_penalty = imbalance_penalty
        self.max_bins = max_bins
        self.device = device
        self.backend = backend
        self.random_state = random_state
        self.progress = progress

    def fit(self, Y: Any, T: Any, *, X: Any, W: Any = None, sample_weight: Any = None) -> "CausalForestDML":
        """Fit nuisance models by cross-fitting, then the causal forest on the residuals."""
        Y = _inputs.to_numpy(Y, "Y", 1)
        T = _inputs.to_numpy(T, "T", 1)
        X = _inputs.to_numpy(X, "X", 2)
        W = None if W is None else _inputs.to_numpy(W, "W", 2)
        n = _inputs.check_same_length(Y=Y, T=T, X=X, W=W)
        for arr, name in ((Y, "Y"), (T, "T"), (X, "X"), (W, "W")):
            if arr is not None:
                _inputs.check_finite(arr, name)
        if n < 2:
            raise ValueError(f"Y has {n} row(s); a causal forest needs at least 2 (in practice hundreds)")
        if np.ptp(T) == 0:
            raise ValueError("T is constant: the treatment must vary to estimate its effect")
        sw = _inputs.check_sample_weight(sample_weight, n)
        self.discrete_treatment_ = self._is_discrete(T)
        if not (isinstance(self.cv, (int, np.integer)) and 2 <= self.cv <= n):
            raise ValueError(f"cv must be an integer between 2 and the number of rows ({n}), got {self.cv!r}")
        if not 0 < self.min_propensity < 0.5:
            raise ValueError(f"min_propensity must be in (0, 0.5), got {self.min_propensity}")
        if self.discrete_treatment_:
            smallest = int(min((T == 0).sum(), (T == 1).sum()))
            if smallest < self.cv:
                raise ValueError(f"T has only {smallest} row(s) in its smaller arm; "
                                 f"stratified cross-fitting with cv={self.cv} needs at least {self.cv}")
        seed = self.random_state if self.random_state is not None else int(np.random.SeedSequence().entropy % 2**31)
        XW = X if W is None else np.hstack([X, W])

        y_hat, t_hat, scores = self._cross_fit(XW, Y, T, sw, seed)
        y_res, t_res = Y - y_hat, T - t_hat
        self.residuals_ = (y_res, t_res)
        self.nuisance_scores_ = scores

        params = {k: getattr(self, k) for k in _FOREST_PARAMS}
        self.forest_ = CausalForest(**params, random_state=seed).fit(X, t_res, y_res, sample_weight=sw)
        self.ate_, self.ate_stderr_ = self._ate(X, y_res, t_res, t_hat, sw)
        self.n_features_in_ = X.shape[1]
        return self

    def _is_discrete(self, T: np.ndarray) -> bool:
        binary = bool(np.isin(T, (0.0, 1.0)).all())
        if self.discrete_treatment == "auto":
            return binary
        if self.discrete_treatment and not binary:
            values = np.unique(T)
            shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise ValueError(f"discrete_treatment=True needs a binary 0/1 treatment, but T takes "
                             f"{len(values)} values ({shown})")
        return bool(self.discrete_treatment)

    def _cross_fit(self, XW, Y, T, sw, seed):
        n = len(Y)
        if self.discrete_treatment_:
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=seed).split(XW, T)
        else:
            folds = KFold(self.cv, shuffle=True, random_state=seed).split(XW)
        y_hat, t_hat = np.empty(n), np.empty(n)
        scores: dict[str, list[float]] = {"y_r2": []}
        scores.update({"t_log_loss": [], "t_auc": []} if self.discrete_treatment_ else {"t_r2": []})
        with progress_bar(self.cv, "cross-fitting nuisance models", self.progress, unit="fold") as bar:
            for train, test in folds:
                self._fit_fold(XW, Y, T, sw, seed, train, test, y_hat, t_hat, scores)
                bar.update(1)
        return y_hat, t_hat, scores

    def _fit_fold(self, XW, Y, T, sw, seed, train, test, y_hat, t_hat, scores) -> None:
        """Fit both nuisance models on `train`; fill their out-of-fold predictions and scores on `test`."""
        kw = {} if sw is None else {"sample_weight": sw[train]}
        my = resolve_model(self.model_y, "y", False, seed).fit(XW[train], Y[train], **kw)
        mt = resolve_model(self.model_t, "t", self.discrete_treatment_, seed)
        if self.discrete_treatment_ and not (is_classifier(mt) or hasattr(mt, "predict_proba")):
            raise ValueError("model_t must be a classifier (with predict_proba) for a discrete treatment")
        mt.fit(XW[train], T[train], **kw)
        y_hat[test] = my.predict(XW[test])
        scores["y_r2"].append(float(r2_score(Y[test], y_hat[test])))
        if self.discrete_treatment_:
            t_hat[test] = mt.predict_proba(XW[test])[:, list(mt.classes_).index(1.0)]
            scores["t_log_loss"].append(float(log_loss(T[test], t_hat[test], labels=[0.0, 1.0])))
            scores["t_auc"].append(float(roc_auc_score(T[test], t_hat[test])))
        else:
            t_hat[test] = mt.predict(XW[test])
            scores["t_r2"].append(float(r2_score(T[test], t_hat[test])))

    def _ate(self, X, y_res, t_res, t_hat, sw):
        w = np.ones(len(y_res)) if sw is None else sw / sw.mean()
        if self.discrete_treatment_:
            tau = self.forest_.oob_predict(X)
            unseen = np.isnan(tau)  # rows every tree saw (only with very few trees): use all trees
            if unseen.any():
                tau[unseen] = self.forest_.predict(X[unseen])
            e = np.clip(t_hat, self.min_propensity, 1 - self.min_propensity)
            psi = tau + (y_res - tau * t_res) * t_res / (e * (1 - e))
            ate = float(np.average(psi, weights=w))
            stderr = float(np.sqrt(np.sum(w**2 * (psi - ate) ** 2)) / w.sum())
        else:
            # Partially linear model: theta solves sum w t~ (y~ - theta t~) = 0; sandwich variance.
            ate = float(np.sum(w * t_res * y_res) / np.sum(w * t_res**2))
            score = w * t_res * (y_res - ate * t_res)
            stderr = float(np.sqrt(np.sum(score**2)) / np.sum(w * t_res**2))
        return ate, stderr

    # ------------------------------------------------------------ results
    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise RuntimeError("this CausalForestDML is not fitted yet; call fit(Y, T, X=X) first")

    def effect(self, X: Any, *, T0: float = 0.0, T1: float = 1.0) -> Any:
        """CATE of moving the treatment from T0 to T1 at each row of X: tau(x) (T1 - T0)."""
        self._check_fitted()
        return self.forest_.predict(X) * (T1 - T0)

    def effect_interval(self, X: Any, *, T0: float = 0.0, T1: float = 1.0,
                        alpha: float = 0.05) -> tuple[Any, Any]:
        """Pointwise (1 - alpha) confidence interval (lower, upper) of `effect`."""
        self._check_fitted()
        lo, hi = self.forest_.predict_interval(X, alpha=alpha)
        d = T1 - T0
        return (lo * d, hi * d) if d >= 0 else (hi * d, lo * d)

    def ate_interval(self, alpha: float = 0.05) -> tuple[float, float]:
        """(1 - alpha) normal confidence interval of `ate_`."""
        self._check_fitted()
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        half = float(norm.ppf(1 - alpha / 2)) * self.ate_stderr_
        return self.ate_ - half, self.ate_ + half
