"""Cross-fitting of nuisance models: folds and one fold's fit, with their out-of-fold scores.

Kept free of torch so that a pipeline task fitting one fold starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import log_loss, r2_score, roc_auc_score
from sklearn.model_selection import KFold, StratifiedKFold

from .ate import MIN_PROPENSITY, floor_variance, propensity_variance
from .progress import progress_bar, progress_steps

# The default nuisance models' boosting settings (and the treatment variance model's).
_SMOOTH_BOOSTING = dict(learning_rate=0.05, max_iter=300, min_samples_leaf=50, early_stopping=True)


def default_nuisance_model(classifier: bool, seed: int) -> Any:
    """HistGradientBoosting with early stopping always on and a slower, smoother fit than
    scikit-learn's defaults: residuals from an overfit nuisance model bias the forest (with the
    defaults, which stop early only above 10,000 rows, a 0.5 propensity is fit worse than a constant)."""
    params = dict(_SMOOTH_BOOSTING, random_state=seed)
    return HistGradientBoostingClassifier(**params) if classifier else HistGradientBoostingRegressor(**params)


def engine_nuisance_model(classifier: bool, seed: int, device: str = "auto") -> Any:
    """The engine's own histogram boosting (kernels.boosting) with the same slow, early-stopped
    settings, on `device`: the nuisance learner that runs on the forest's GPU."""
    from .boosting import HistGradientBoostingClassifier as Classifier
    from .boosting import HistGradientBoostingRegressor as Regressor

    params = dict(learning_rate=0.05, max_iter=300, max_depth=6, min_child_weight=10.0, early_stopping=True,
                  device=device, random_state=seed)
    return Classifier(**params) if classifier else Regressor(**params)


def resolve_model(model: Any, role: str, discrete: bool, seed: int, device: str = "cpu") -> Any:
    """A fresh scikit-learn estimator from 'auto' (scikit-learn's HistGradientBoosting on CPU, the
    engine's boosting on CUDA), 'tauforge' (the engine's boosting on `device`), an import path
    ('sklearn.linear_model.LassoCV'), or an estimator instance (cloned)."""
    classifier = role == "t" and discrete
    if isinstance(model, str) and model == "auto":
        if str(device).startswith("cuda"):
            return engine_nuisance_model(classifier, seed, str(device))
        return default_nuisance_model(classifier, seed)
    if isinstance(model, str) and model == "tauforge":
        return engine_nuisance_model(classifier, seed, str(device))
    if isinstance(model, str):
        module, _, name = model.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)()
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"model_{role}={model!r} is not an importable estimator class: {exc}") from None
    if not (hasattr(model, "fit") and hasattr(model, "predict")):
        raise ValueError(f"model_{role} must be 'auto', an import path or a scikit-learn estimator, got {model!r}")
    return clone(model)


def cross_fitting_folds(T: np.ndarray, n_folds: int, discrete: bool, seed: int) -> np.ndarray:
    """Fold index (0..n_folds-1) of every row: stratified by T for a binary treatment. The same
    arguments give the same folds, so folds fit in separate processes agree."""
    rows = np.zeros((len(T), 1))
    splitter = (StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(rows, T) if discrete
                else KFold(n_folds, shuffle=True, random_state=seed).split(rows))
    fold = np.empty(len(T), dtype=np.int64)
    for k, (_, test) in enumerate(splitter):
        fold[test] = k
    return fold


def fit_nuisance(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                 model_y: Any = "auto", model_t: Any = "auto", discrete: bool, seed: int,
                 sample_weight: np.ndarray | None = None, device: str = "cpu",
                 with_scores: bool = True, progress: bool | None = False,
                 desc: str = "fitting nuisance models") -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Fit E[Y | X, W] and E[T | X, W] on rows `train`; return their predictions on rows `test`
    and the out-of-fold scores there ('y_r2', and 't_log_loss', 't_auc' or 't_r2'; none without
    `with_scores`: a bootstrap refit has no use for them, and with small models they cost as much
    as the fit). `progress` (`kernels.progress`, as `desc`): one fold's fit in a task of its own;
    off by default, since `cross_fit` counts folds."""
    kw = {} if sample_weight is None else {"sample_weight": sample_weight[train]}
    mt = resolve_model(model_t, "t", discrete, seed, device)
    if discrete and not (is_classifier(mt) or hasattr(mt, "predict_proba")):
        raise ValueError("model_t must be a classifier (with predict_proba) for a discrete treatment")
    with progress_steps(desc, {"outcome model": 1, "treatment model": 1}, progress) as steps:
        my = steps.run("outcome model", resolve_model(model_y, "y", False, seed, device).fit, XW[train], Y[train],
                       **kw)
        steps.run("treatment model", mt.fit, XW[train], T[train], **kw)
    y_hat = my.predict(XW[test])
    t_hat = mt.predict_proba(XW[test])[:, list(mt.classes_).index(1.0)] if discrete else mt.predict(XW[test])
    if not with_scores:
        return y_hat, t_hat, {}
    scores = {"y_r2": float(r2_score(Y[test], y_hat))}
    if discrete:
        scores["t_log_loss"] = float(log_loss(T[test], t_hat, labels=[0.0, 1.0]))
        scores["t_auc"] = float(roc_auc_score(T[test], t_hat))
    else:
        scores["t_r2"] = float(r2_score(T[test], t_hat))
    return y_hat, t_hat, scores


def cross_fit(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, *, n_folds: int, discrete: bool, seed: int,
              model_y: Any = "auto", model_t: Any = "auto", sample_weight: np.ndarray | None = None,
              device: str = "cpu", progress: bool | None = None,
              with_scores: bool = True) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Out-of-fold predictions y_hat, t_hat of every row from `n_folds` folds
    (`cross_fitting_folds`), and each score as a list in fold order (none without `with_scores`)."""
    n = len(Y)
    fold = cross_fitting_folds(T, n_folds, discrete, seed)
    y_hat, t_hat = np.empty(n), np.empty(n)
    scores: dict[str, list[float]] = {}
    with progress_bar(n_folds, "cross-fitting nuisance models", progress, unit="fold") as bar:
        for k in range(n_folds):
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            y_hat[test], t_hat[test], fold_scores = fit_nuisance(
                XW, Y, T, train, test, model_y=model_y, model_t=model_t, discrete=discrete, seed=seed,
                sample_weight=sample_weight, device=device, with_scores=with_scores)
            for name, value in fold_scores.items():
                scores.setdefault(name, []).append(value)
            bar.update(1)
    return y_hat, t_hat, scores


def treatment_variance(XW: np.ndarray, T: np.ndarray, t_hat: np.ndarray, fold: np.ndarray, *, discrete: bool,
                       seed: int, sample_weight: np.ndarray | None = None,
                       min_propensity: float = MIN_PROPENSITY, progress: bool | None = False) -> np.ndarray:
    """V(x) = Var[T | X, W] of every row, the denominator of the average effect's debiasing weights
    (`kernels.ate`): e (1 - e) for a binary treatment; for a continuous one, out-of-fold
    predictions on the folds `fold` of a model of t~^2 = (T - t_hat)^2 (grf fits a regression
    forest to the same target), floored (`ate.floor_variance`). The model is HistGradientBoosting
    with a Poisson loss, whose predictions are positive, early-stopped as the nuisance models are.
    `progress` counts its folds (`kernels.progress`)."""
    if discrete:
        return propensity_variance(t_hat, min_propensity)
    target = (T - t_hat) ** 2
    v_hat = np.empty(len(T))
    folds = np.unique(fold)
    with progress_bar(len(folds), "fitting the treatment variance model", progress, unit="fold") as bar:
        for k in folds:
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            model = HistGradientBoostingRegressor(loss="poisson", **_SMOOTH_BOOSTING, random_state=seed)
            kw = {} if sample_weight is None else {"sample_weight": sample_weight[train]}
            v_hat[test] = model.fit(XW[train], target[train], **kw).predict(XW[test])
            bar.update(1)
    return floor_variance(v_hat, T - t_hat, sample_weight)
