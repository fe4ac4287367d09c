"""Cross-fitting of nuisance models: folds and one fold's fit, with their out-of-fold scores.

Kept free of torch so that a pipeline task fitting one fold starts fast.
"""

from __future__ import annotations

import importlib
import inspect
import reprlib
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.interpolate import BSpline
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, clone, is_classifier
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import PoissonRegressor
from sklearn.metrics import log_loss, r2_score, roc_auc_score
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, StratifiedKFold
from sklearn.preprocessing import SplineTransformer
from sklearn.utils.validation import check_is_fitted

from . import _inputs
from .progress import progress_bar, progress_steps

# The default nuisance models' boosting settings (and the treatment variance model's).
_SMOOTH_BOOSTING = dict(learning_rate=0.05, max_iter=300, min_samples_leaf=50, early_stopping=True)
# The additive part of AdditiveBoostingRegressor: knots of each continuous column's cubic spline
# (a column with fewer distinct values than SPLINE_KNOTS + 4 enters linearly only), the ridge
# penalties generalized cross-validation chooses from, and the most rows its fit sees (its design
# is (rows, columns x (SPLINE_KNOTS + 3)): 216 MB at 100,000 x 30; predictions build none).
SPLINE_KNOTS = 6
PROBABILITY_FLOOR = 1e-3  # AdditiveBoostingClassifier's least-squares probabilities stay in (0, 1) for the log loss
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 4, 15))  # a tuple: scikit-learn's repr compares defaults
ADDITIVE_FIT_ROWS = 100_000
# With groups (rows of one unit together), GCVRidge chooses its penalty by this many folds of
# whole groups, and early stopping holds out whole groups: leave-one-out errors and a random
# validation split of rows both see a row's duplicate, and on duplicated rows the boosting ran to
# its last tree and put propensities at 0.001.
GROUP_CV_FOLDS = 5


def holdout_groups(groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) rows, about `fraction` of the groups (codes, one per row) held out
    whole; every row trains and none validates when there is only one group."""
    if len(np.unique(groups)) < 2:
        return np.arange(len(groups)), np.arange(0)
    return next(GroupShuffleSplit(1, test_size=fraction, random_state=seed % 2**32).split(groups, groups=groups))


def group_folds(groups: np.ndarray, n_folds: int = GROUP_CV_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) rows of min(n_folds, number of groups) folds of whole groups (codes, one per
    row), for a model's own choice of penalty; none with fewer than two groups."""
    k = min(n_folds, len(np.unique(groups)))
    return [] if k < 2 else list(GroupKFold(k).split(groups, groups=groups))


def fit_with_groups(model: Any, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None, **kw: Any) -> Any:
    """`model.fit(X, y, **kw)`, its own validation holding out whole `groups` when there are any:
    a fit that takes `groups` gets them (this module's models, the engine's boosting), and a
    model with a `cv` parameter (scikit-learn's LassoCV, GridSearchCV, ...) gets its folds as
    explicit splits of whole groups: a group splitter's (GroupKFold(5)), or GroupKFold for a
    number of folds or None (its default 5). Other splitters are kept as given. Returns the
    fitted model, which is a clone when its `cv` was replaced."""
    if groups is None:
        return model.fit(X, y, **kw)
    if "groups" in inspect.signature(model.fit).parameters:
        return model.fit(X, y, groups=groups, **kw)
    cv = model.get_params(deep=False).get("cv", False) if hasattr(model, "get_params") else False
    if cv is None or (isinstance(cv, (int, np.integer)) and not isinstance(cv, bool)):
        model = clone(model).set_params(cv=group_folds(groups, int(cv or GROUP_CV_FOLDS)))
    elif hasattr(cv, "split") and "groups" in inspect.signature(cv.split).parameters and _uses_groups(cv):
        model = clone(model).set_params(cv=list(cv.split(X, y, groups)))
    return model.fit(X, y, **kw)


def _uses_groups(splitter: Any) -> bool:
    """Whether a scikit-learn splitter splits by groups (GroupKFold, LeaveOneGroupOut, ...): its
    name says so, as scikit-learn's own do."""
    return "Group" in type(splitter).__name__


class GCVRidge(RegressorMixin, BaseEstimator):
    """Ridge regression with an intercept, its penalty chosen from `alphas` by generalized
    (leave-one-out) cross-validation: scikit-learn's `RidgeCV` model, the same penalty and
    predictions to rounding (tests/test_nuisance.py).

    Why not RidgeCV itself: it squares its (rows, columns) factor again for every penalty, and
    with the SVD this was 75% of a default nuisance fit on 100,000 rows x 30 covariates (the
    additive part's 270 columns). Here one eigendecomposition of the columns' covariance gives
    Z = X V once, and each penalty costs a product of Z^2 with a vector: leverages
    h_i = sum_j Z_ij^2 / (lambda_j + alpha), leave-one-out errors (y_i - yhat_i) / (1 - h_i)
    (docs/benchmarks.md, "Nuisance boosting": 6x faster at 100,000 x 270)."""

    def __init__(self, alphas=RIDGE_ALPHAS):
        self.alphas = alphas

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> GCVRidge:
        """With `groups` (codes, one per row) the penalty is the one with the least error over
        `group_folds` (whole groups held out) instead of leave-one-out."""
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
        alphas = np.atleast_1d(np.asarray(self.alphas, dtype=np.float64))
        if alphas.size == 0 or not (alphas > 0).all():
            raise ValueError(f"alphas must be positive penalties, got {self.alphas!r}")
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        folds = [] if groups is None else group_folds(np.asarray(groups))
        if folds:
            errors = np.zeros(len(alphas))
            for train, test in folds:
                part = GCVRidge(alphas=alphas)._fit_all(X[train], y[train], w[train], keep_path=True)
                predictions = part.predict_each(X[test])  # (rows, alphas)
                errors += w[test] @ np.square(y[test][:, None] - predictions)
            best = int(np.argmin(errors))
            self._fit_all(X, y, w, alphas[best:best + 1])
            self.best_score_ = -float(errors[best] / w.sum())
            return self
        return self._fit_all(X, y, w, alphas)

    def _fit_all(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, alphas: np.ndarray | None = None,
                 keep_path: bool = False) -> GCVRidge:
        """Fit with the penalty of least generalized cross-validation error among `alphas` (all of
        `self.alphas` when None); `keep_path` keeps what `predict_each` needs."""
        alphas = np.atleast_1d(np.asarray(self.alphas if alphas is None else alphas, dtype=np.float64))
        # Weighted centering takes the (unpenalized) intercept out; rows scaled by sqrt(w) make
        # every sum below a weighted one, as RidgeCV's preprocessing does.
        x_mean, y_mean = w @ X / w.sum(), w @ y / w.sum()
        sqrt_w = np.sqrt(w)
        Xc = (X - x_mean) * sqrt_w[:, None]
        yc = (y - y_mean) * sqrt_w
        if Xc.shape[0] < Xc.shape[1]:
            # Fewer rows than columns (many covariates, each with its splines): the rows' Gram
            # matrix has the same nonzero eigenvalues, and its eigendecomposition costs rows^3,
            # not columns^3 (p = 500 covariates, 9,000 columns: 9.6 s a fit; a numerics review).
            # The ridge's solution lies in the rows' span, so the null directions can be dropped.
            eigenvalues, U = np.linalg.eigh(Xc @ Xc.T)
            kept = eigenvalues > eigenvalues.max() * 1e-12 if eigenvalues.max() > 0 else eigenvalues > 0
            eigenvalues, U = eigenvalues[kept], U[:, kept]
            root = np.sqrt(eigenvalues)
            Z = U * root
            V = (Xc.T @ U) / root
        else:
            eigenvalues, V = np.linalg.eigh(Xc.T @ Xc)
            # Round-off leaves null directions of a rank-deficient design (the splines span each
            # linear column) slightly negative; their Z columns are zero either way.
            eigenvalues = np.clip(eigenvalues, 0.0, None)
            Z = Xc @ V
        del Xc
        Z_y = Z.T @ yc
        Z2 = np.square(Z)
        intercept_leverage = w / w.sum()
        scores = np.empty(len(alphas))
        for k, alpha in enumerate(alphas):
            shrink = 1.0 / (eigenvalues + alpha)
            residual = yc - Z @ (shrink * Z_y)
            leverage = Z2 @ shrink + intercept_leverage
            scores[k] = np.mean(np.square(residual / (1.0 - leverage)))
        best = int(np.argmin(scores))  # the first of equals, as RidgeCV
        self.alpha_ = float(alphas[best])
        self.best_score_ = -float(scores[best])
        self.coef_ = V @ (Z_y / (eigenvalues + self.alpha_))
        self.intercept_ = float(y_mean - x_mean @ self.coef_)
        self.n_features_in_ = X.shape[1]
        if keep_path:
            self.path_ = (alphas, V, Z_y, eigenvalues, x_mean, y_mean)
        return self

    def predict_each(self, X: np.ndarray) -> np.ndarray:
        """Predictions at X (rows, alphas) with every penalty the fit considered."""
        alphas, V, Z_y, eigenvalues, x_mean, y_mean = self.path_
        coefs = V @ (Z_y[:, None] / (eigenvalues[:, None] + alphas[None, :]))
        return (np.asarray(X, dtype=np.float64) - x_mean) @ coefs + y_mean

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64) @ self.coef_ + self.intercept_


class AdditiveBoostingRegressor(RegressorMixin, BaseEstimator):
    """E[y | x] as a smooth additive model plus boosted trees on what it leaves.

    The additive part: every column linearly and each continuous one by a cubic spline (knots at
    quantiles), ridge-penalized, the penalty chosen by generalized cross-validation (`GCVRidge`),
    fit on at most `ADDITIVE_FIT_ROWS` rows (a seeded sample: it has few coefficients). Then early-stopped
    HistGradientBoosting fits what it leaves: interactions and sharp changes.

    Why not trees alone: they approximate a smooth trend by steps that flatten towards the edges
    of the data, and the outcome and treatment models then err together there. The average
    effect's bias is the product of those errors, divided by V(x) = Var(T | X) where the treatment
    varies little, so the debiasing weights magnify it (`kernels.ate`). components/graph_checks.py
    removes a smooth part before its trees for the same reason.

    loss='poisson', for a nonnegative target such as t~^2: a log-additive Poisson model (penalty
    `poisson_alpha`), then boosting of the ratio target / fit with a Poisson loss; predictions are
    positive. The ratio's rows are not weighted by the fit (which would make it the deviance of
    the product): both are consistent.

    Weighted rows are binned for the trees here (`weighted_bin_edges`), from every row kept.
    """

    def __init__(self, *, loss: str = "squared_error", learning_rate: float = 0.05, max_iter: int = 300,
                 min_samples_leaf: int = 50, max_bins: int = 255, early_stopping: bool = True,
                 poisson_alpha: float = 1e-3, random_state: int | None = None):
        self.loss = loss
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.min_samples_leaf = min_samples_leaf
        self.max_bins = max_bins
        self.early_stopping = early_stopping
        self.poisson_alpha = poisson_alpha
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> AdditiveBoostingRegressor:
        """`groups` (codes, one per row): the ridge's penalty (squared error, `GCVRidge`) and the
        trees' early stopping (`holdout_groups`) validate on whole groups held out, never on a
        row whose group they were fit on; the Poisson part's penalty is fixed."""
        if self.loss not in ("squared_error", "poisson"):
            raise ValueError(f"loss must be 'squared_error' or 'poisson', got {self.loss!r}")
        X, y = _inputs.to_numpy(X, "X", 2), _inputs.to_numpy(y, "y", 1)
        _inputs.check_same_length(X=X, y=y)
        _inputs.check_finite(X, "X")
        _inputs.check_finite(y, "y")
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' needs a nonnegative target y")
        if sample_weight is not None:
            # Weights count rows relative to each other (the ridge's penalty grid and the trees'
            # minimum hessian are not scale-free), and a row of weight 0 is a row absent.
            w, X, y, groups = _inputs.weighted_rows(sample_weight, X, y, groups=groups)
            if np.all(w == w[:1]):  # equal weights (on the rows kept) are no weights: the same fit
                w = None
        else:
            w = None
        rows = np.arange(len(y))
        if len(y) > ADDITIVE_FIT_ROWS:
            rows = np.sort(np.random.default_rng(self.random_state).choice(len(y), ADDITIVE_FIT_ROWS, replace=False))
        self.smooth_columns_ = [j for j in range(X.shape[1]) if len(np.unique(X[rows, j])) > SPLINE_KNOTS + 4]
        # Rows to predict are held to the fit's range: past it the linear terms and splines would
        # extrapolate, and one extreme held-out value (1e4 in an irrelevant column) gave a residual
        # of 200 that spoiled the forest's leaves around it. Trees hold the edge value the same way.
        self.lower_, self.upper_ = X.min(axis=0), X.max(axis=0)
        self.center_ = X[rows].mean(axis=0)
        scale = X[rows].std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        self.splines_ = (SplineTransformer(n_knots=SPLINE_KNOTS, degree=3, knots="quantile", extrapolation="linear")
                         .fit(X[rows][:, self.smooth_columns_]) if self.smooth_columns_ else None)
        design = self._design(X[rows])
        w_rows = None if w is None else w[rows]
        # Both parts see the target in units of its own scale: the boosting's early stopping takes
        # an absolute tolerance (1e-7), which stopped at 10 trees an outcome of standard deviation
        # 1e-4, and the Poisson penalty weighs the same whatever the target's units (a numerics
        # review). The scale goes back on in `predict`.
        if self.loss == "squared_error":
            self.additive_ = GCVRidge(alphas=RIDGE_ALPHAS).fit(design, y[rows], sample_weight=w_rows,
                                                               groups=None if groups is None else groups[rows])
            self.y_scale_ = 1.0
        else:
            self.y_scale_ = float(np.average(y[rows], weights=w_rows)) or 1.0
            glm = PoissonRegressor(alpha=self.poisson_alpha, solver="newton-cholesky")
            self.additive_ = glm.fit(design, y[rows] / self.y_scale_, sample_weight=w_rows)
        smooth = self._additive(X)
        self.trees_ = HistGradientBoostingRegressor(
            loss=self.loss, learning_rate=self.learning_rate, max_iter=self.max_iter,
            min_samples_leaf=self.min_samples_leaf, max_bins=self.max_bins, early_stopping=self.early_stopping,
            random_state=self.random_state)
        if self.loss == "squared_error":
            left = y - smooth
            self.tree_scale_ = float(np.sqrt(np.average((left - np.average(left, weights=w)) ** 2, weights=w))) or 1.0
            target = left / self.tree_scale_
        else:
            self.tree_scale_ = 1.0
            target = y / (smooth * self.y_scale_)
        # Weighted rows are binned here: scikit-learn's weighted quantiles (1.9) take one sort per
        # bin edge, 1 s for 10 columns of 2,000 rows against 0.05 s for the whole unweighted fit.
        self.tree_edges_ = None if w is None else [weighted_bin_edges(X[:, j], w, self.max_bins)
                                                   for j in range(X.shape[1])]
        X = self._tree_inputs(X)
        if groups is None or not self.early_stopping:
            self.trees_.fit(X, target, sample_weight=w)
        else:  # scikit-learn's own validation split would be of rows
            train, val = holdout_groups(groups, self.trees_.validation_fraction, self.random_state or 0)
            if len(val) == 0:
                self.trees_.set_params(early_stopping=False).fit(X, target, sample_weight=w)
            else:
                self.trees_.fit(X[train], target[train], sample_weight=None if w is None else w[train],
                                X_val=X[val], y_val=target[val], sample_weight_val=None if w is None else w[val])
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "trees_")
        X = _inputs.to_numpy(X, "X", 2)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} columns, the model was fit on {self.n_features_in_}")
        _inputs.check_finite(X, "X")
        trees = self.trees_.predict(self._tree_inputs(X)) * self.tree_scale_
        smooth = self._additive(X)
        return smooth + trees if self.loss == "squared_error" else smooth * self.y_scale_ * trees

    def _tree_inputs(self, X: np.ndarray) -> np.ndarray:
        """What the trees see: X, or each column's bin (`weighted_bin_edges`) after a weighted fit,
        as scikit-learn's binning would place it (a value on an edge goes to the lower bin)."""
        edges = getattr(self, "tree_edges_", None)  # None: fit unweighted, or before this attribute existed
        if edges is None:
            return X
        return np.column_stack([np.searchsorted(e, X[:, j], side="left") for j, e in enumerate(edges)]).astype(
            np.float64)

    def _design(self, X: np.ndarray) -> np.ndarray:
        X = np.clip(X, self.lower_, self.upper_)
        linear = (X - self.center_) / self.scale_
        if self.splines_ is None:
            return linear
        return np.hstack([linear, self.splines_.transform(X[:, self.smooth_columns_])])

    def _additive(self, X: np.ndarray) -> np.ndarray:
        """The additive part's predictions, `_design(X)` times its coefficients, without the design:
        each column's splines with their coefficients are one B-spline, evaluated alone. The
        design is 9 times as wide as X; building it for every row took 10 of the 26 s of a fold's
        two models on 800,000 rows x 30 (docs/benchmarks.md, "Nuisance boosting")."""
        X = np.clip(np.asarray(X, dtype=np.float64), self.lower_, self.upper_)
        coef, p = self.additive_.coef_, X.shape[1]
        linear_predictor = ((X - self.center_) / self.scale_) @ coef[:p] + self.additive_.intercept_
        for i, column in enumerate(self.smooth_columns_):
            basis = self.splines_.bsplines_[i]
            width = basis.c.shape[1]
            linear_predictor += _spline_term(basis.t, basis.k, coef[p + i * width:p + (i + 1) * width], X[:, column])
        # PoissonRegressor's log link
        return linear_predictor if self.loss == "squared_error" else np.exp(linear_predictor)


def _spline_term(knots: np.ndarray, degree: int, coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sum_j coef_j B_j(x) for SplineTransformer's B-splines B_j (extrapolation='linear'): past
    the boundary knots the sum continues along its tangent there, as the bases that do not vanish
    at a boundary do (the others vanish with their slopes)."""
    spline = BSpline(knots, coef, degree, extrapolate=False)
    low, high = knots[degree], knots[-degree - 1]
    out = spline(np.clip(x, low, high))
    below, above = x < low, x > high
    out[below] += (x[below] - low) * spline(low, nu=1)
    out[above] += (x[above] - high) * spline(high, nu=1)
    return out


def default_nuisance_model(classifier: bool, seed: int) -> Any:
    """The CPU default: an additive spline model plus boosted trees on what it leaves, for
    E[Y | X, W] and a continuous treatment's E[T | X, W] (`AdditiveBoostingRegressor`) and for a
    binary treatment's propensity (`AdditiveBoostingClassifier`, the same model on the 0/1
    treatment). Boosting with early stopping always on and more slowly and smoothly than
    scikit-learn's defaults: residuals from an overfit nuisance model bias the forest (with the
    defaults, which stop early only above 10,000 rows, a 0.5 propensity is fit worse than a
    constant). The additive propensity replaced a boosted classifier, whose steps left most of
    grf's aw3 CATE bias that the nuisance models cause (docs/benchmarks.md, "Where coverage is
    lost")."""
    if classifier:
        return AdditiveBoostingClassifier(**_SMOOTH_BOOSTING, random_state=seed)
    return AdditiveBoostingRegressor(**_SMOOTH_BOOSTING, random_state=seed)


def engine_nuisance_model(classifier: bool, seed: int, device: str = "auto") -> Any:
    """The engine's own histogram boosting (kernels.boosting) with the same slow, early-stopped
    settings, on `device`: the nuisance learner that runs on the forest's GPU."""
    from .boosting import HistGradientBoostingClassifier as Classifier
    from .boosting import HistGradientBoostingRegressor as Regressor

    params = dict(learning_rate=0.05, max_iter=300, max_depth=6, min_child_weight=10.0, early_stopping=True,
                  device=device, random_state=seed)
    return Classifier(**params) if classifier else Regressor(**params)


def resolve_model(model: Any, role: str, discrete: bool, seed: int, device: str = "cpu") -> Any:
    """A fresh scikit-learn estimator from 'auto' (`default_nuisance_model` on CPU: the additive
    spline part plus scikit-learn's boosting; the engine's boosting on CUDA), 'tauforge' (the
    engine's boosting on `device`), an import path ('sklearn.linear_model.LassoCV': its defaults,
    and `seed` as its random_state if it has one), or an estimator instance (cloned)."""
    classifier = role == "t" and discrete
    if isinstance(model, str) and model == "auto":
        if str(device).startswith("cuda"):
            return engine_nuisance_model(classifier, seed, str(device))
        return default_nuisance_model(classifier, seed)
    if isinstance(model, str) and model == "tauforge":
        return engine_nuisance_model(classifier, seed, str(device))
    if isinstance(model, str) and "." not in model:  # EconML's 'forest', 'linear' (a review)
        raise ValueError(f"model_{role}={model!r} is not 'auto', 'tauforge' or an import path (module.Class) of an "
                         "estimator: for EconML's 'forest' or 'linear', give e.g. "
                         "'sklearn.ensemble.RandomForest{0}' or an estimator instance".format(
                             "Classifier" if classifier else "Regressor"))
    if isinstance(model, str):
        module, _, name = model.rpartition(".")
        try:
            found = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ValueError(f"model_{role}={model!r} is not an importable estimator class: {exc}") from None
        # Only a class with fit and predict is called: an import path names a learner, not any
        # callable (a review's `os.getpid` ran). A scikit-learn estimator: the roles are checked
        # with is_classifier / is_regressor, which need its tags (a plain class failed them with
        # an AttributeError, after the run had started).
        if not (isinstance(found, type) and hasattr(found, "fit") and hasattr(found, "predict")):
            raise ValueError(f"model_{role}={model!r} is not an estimator class (a class with fit and predict), "
                             f"it is {type(found).__name__} {reprlib.repr(found)}")
        if not issubclass(found, BaseEstimator):
            raise ValueError(f"model_{role}={model!r} is not a scikit-learn estimator: derive it from "
                             "sklearn.base.BaseEstimator and RegressorMixin or ClassifierMixin")
        try:
            estimator = found()
        except TypeError as exc:
            raise ValueError(f"model_{role}={model!r} cannot be made with its defaults: {exc}") from None
        if "random_state" in getattr(estimator, "get_params", dict)():  # the run's one seed, as for 'auto'
            estimator.set_params(random_state=seed)
        return estimator
    if isinstance(model, type):  # clone() raised scikit-learn's own TypeError, naming no model_ (a review)
        raise ValueError(f"model_{role}={model.__name__} is a class: pass an instance, {model.__name__}(), or its "
                         f"import path, '{model.__module__}.{model.__name__}'")
    if not (hasattr(model, "fit") and hasattr(model, "predict")):
        raise ValueError(f"model_{role} must be 'auto', an import path or a scikit-learn estimator, got {model!r}")
    return clone(model)


def cross_fitting_folds(T: np.ndarray, n_folds: int, discrete: bool, seed: int,
                        groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index (0..n_folds-1) of every row: stratified by T for a binary treatment. With
    `groups` (codes 0..G-1, `_inputs.check_groups`) each group's rows share a fold, as EconML's
    `fit(groups=)` keeps them: a model must not predict a row from its own group's other rows,
    which on duplicated rows makes residuals too small. The same arguments give the same folds,
    so folds fit in separate processes agree."""
    if groups is not None and len(np.unique(groups)) < n_folds:
        raise ValueError(f"groups has {len(np.unique(groups))} group(s); cross-fitting with cv={n_folds} holds out "
                         f"whole groups and needs at least {n_folds}")
    if groups is not None and discrete:
        fold = stratified_group_folds(T, groups, n_folds, seed)
    else:
        rows = np.zeros((len(T), 1))
        splitter = (GroupKFold(n_folds, shuffle=True, random_state=seed).split(rows, groups=groups)
                    if groups is not None else StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(rows, T)
                    if discrete else KFold(n_folds, shuffle=True, random_state=seed).split(rows))
        fold = np.full(len(T), -1, dtype=np.int64)
        for k, (_, test) in enumerate(splitter):
            fold[test] = k
    if groups is not None:  # whole groups can leave a fold empty, or a fold's training rows with one arm
        for k in range(n_folds):
            train = T[fold != k]
            if (fold == k).sum() == 0 or (discrete and np.ptp(train) == 0):
                why = "no rows" if (fold == k).sum() == 0 else "training rows of one arm only"
                raise ValueError(f"cross-fitting fold {k} of {n_folds} has {why} when whole groups are held out "
                                 "together; pass more groups, or a smaller cv")
    return fold


def stratified_group_folds(T: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold index of every row, whole groups (codes) stratified by a binary T: the groups ordered
    by their treated share (in tenths), then by size, ties at random, and each run of `n_folds`
    consecutive groups dealt one to each fold in a random order. Each fold gets one of every run
    of alike groups, so the folds' treated shares and row counts come out near equal (within a
    few percent where a few groups hold hundreds of rows), and where 2 x n_folds groups are
    treated whole, each fold holds out at least one. In O(G log G): 0.3 s at a million groups,
    where scikit-learn's StratifiedGroupKFold, a greedy pass in Python that balances a little
    more closely, takes 0.15 ms a group (150 s)."""
    n_groups = int(groups.max()) + 1
    size = np.bincount(groups, minlength=n_groups)
    share = np.bincount(groups, weights=T, minlength=n_groups) / np.maximum(size, 1)
    present = np.flatnonzero(size)
    rng = np.random.default_rng([seed, 13])
    order = present[np.lexsort((rng.random(len(present)), size[present], np.round(10 * share[present])))]
    runs = np.tile(np.arange(n_folds), (-(-len(present) // n_folds), 1))
    fold_of_group = np.full(n_groups, -1, dtype=np.int64)
    fold_of_group[order] = rng.permuted(runs, axis=1).ravel()[:len(present)]
    return fold_of_group[groups]


def weighted_bin_edges(values: np.ndarray, weight: np.ndarray, max_bins: int) -> np.ndarray:
    """Bin edges of one column for boosted trees under row weights, as scikit-learn's binning
    (`_find_binning_thresholds`) places them on the same rows: midpoints between the distinct
    values when there are at most `max_bins`, else the weighted quantiles at 1/max_bins,
    2/max_bins, ..., each the mean of the values on either side of the cumulative weight
    (scikit-learn's average=True), all from one sort. Where a quantile falls exactly on a
    cumulative weight (integer weights, few rows) the rounding may take the neighbouring value.
    scikit-learn bins only its training split under early stopping, and a subsample above
    200,000 rows; these edges come from every row given."""
    order = np.argsort(values, kind="stable")
    x, w = values[order], weight[order]
    x, w = x[w > 0], w[w > 0]
    distinct = np.unique(x)
    if len(distinct) <= max_bins:
        return (distinct[:-1] + distinct[1:]) / 2
    cumulative = np.cumsum(w)
    targets = cumulative[-1] * np.arange(1, max_bins) / max_bins
    below = np.minimum(np.searchsorted(cumulative, targets, side="left"), len(x) - 1)
    above = np.minimum(np.searchsorted(cumulative, targets, side="right"), len(x) - 1)
    return np.unique((x[below] + x[above]) / 2)


class AdditiveBoostingClassifier(ClassifierMixin, BaseEstimator):
    """P(T = 1 | x) of a binary treatment as E[T | x] by least squares: `AdditiveBoostingRegressor`
    on the 0/1 target, clipped to [PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR].

    The residual-on-residual forest needs E[T | X], which any consistent regression estimates. On
    grf's aw3 (a propensity smooth in x1) the boosted classifier's steps left over a third of the
    CATE's squared bias, and this model removes three quarters of that share (docs/benchmarks.md,
    "Where coverage is lost"). The default for a binary treatment (`default_nuisance_model`).
    Least squares rather than a logistic spline model, whose 225 spline columns overfit 640 rows
    of an imbalanced design; the ridge here is chosen by generalized cross-validation."""

    def __init__(self, *, learning_rate: float = 0.05, max_iter: int = 300, min_samples_leaf: int = 50,
                 max_bins: int = 255, early_stopping: bool = True, random_state: int | None = None):
        self.learning_rate = learning_rate
        self.max_iter = max_iter
        self.min_samples_leaf = min_samples_leaf
        self.max_bins = max_bins
        self.early_stopping = early_stopping
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> AdditiveBoostingClassifier:
        y = np.asarray(y, dtype=np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            bad = float(y[~np.isin(y, (0.0, 1.0))][0])
            raise ValueError(f"y must be a binary 0/1 treatment, got the value {bad}: for a continuous treatment "
                             "use AdditiveBoostingRegressor")
        self.classes_ = np.array([0.0, 1.0])
        self.regressor_ = AdditiveBoostingRegressor(**self.get_params()).fit(X, y, sample_weight=sample_weight,
                                                                           groups=groups)
        self.n_features_in_ = self.regressor_.n_features_in_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "regressor_")
        p = np.clip(self.regressor_.predict(X), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return np.column_stack([1 - p, p])

    def predict(self, X: np.ndarray) -> np.ndarray:
        positive = self.predict_proba(X)[:, 1] > 0.5
        return self.classes_[positive.astype(int)]


def fit_nuisance_models(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, train: np.ndarray, *,
                        model_y: Any = "auto", model_t: Any = "auto", discrete: bool, seed: int,
                        sample_weight: np.ndarray | None = None, device: str = "cpu",
                        progress: bool | None = False, desc: str = "fitting nuisance models",
                        groups: np.ndarray | None = None,
                        fit_weights: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Any, Any]:
    """The fitted (model_y, model_t) of E[Y | X, W] and E[T | X, W] on rows `train`, each given
    the training rows' `groups` when its fit takes them (`fit_with_groups`), and fit under
    `sample_weight`, or under `fit_weights` (model_y's, model_t's) where given
    (`reweighted_cross_fit`)."""
    part = None if groups is None else groups[train]
    weights = (sample_weight, sample_weight) if fit_weights is None else fit_weights
    kw_y, kw_t = ({} if w is None else {"sample_weight": w[train]} for w in weights)
    mt = resolve_model(model_t, "t", discrete, seed, device)
    if discrete and not (is_classifier(mt) and hasattr(mt, "predict_proba")):
        raise ValueError(f"model_t must be a classifier with predict_proba for a discrete treatment (it gives the "
                         f"propensity), got {type(mt).__name__}; a 0/1 T is discrete under "
                         f"discrete_treatment='auto': pass discrete_treatment=False to model it as continuous")
    if not discrete and is_classifier(mt):
        raise ValueError(f"model_t must be a regressor for a continuous treatment (it estimates E[T | X, W]), "
                         f"got the classifier {type(mt).__name__}")
    my = resolve_model(model_y, "y", False, seed, device)
    if is_classifier(my):  # its predict gives labels, not E[Y | X, W]
        raise ValueError(f"model_y must be a regressor (it estimates E[Y | X, W]), got the classifier "
                         f"{type(my).__name__}")
    with progress_steps(desc, {"outcome model": 1, "treatment model": 1}, progress) as steps:
        # fit_with_groups may fit a clone (a model whose cv it gives folds of whole groups): keep what it returns.
        my = steps.run("outcome model", fit_with_groups, my, XW[train], Y[train], part, **kw_y)
        mt = steps.run("treatment model", fit_with_groups, mt, XW[train], T[train], part, **kw_t)
    return my, mt


def nuisance_predictions(models: tuple[Any, Any], XW: np.ndarray, discrete: bool) -> tuple[np.ndarray, np.ndarray]:
    """(y_hat, t_hat) of fitted (model_y, model_t) at XW; t_hat is P(T = 1) for a discrete treatment."""
    my, mt = models
    t_hat = mt.predict_proba(XW)[:, list(mt.classes_).index(1.0)] if discrete else mt.predict(XW)
    y_hat, t_hat = np.asarray(my.predict(XW), dtype=np.float64), np.asarray(t_hat, dtype=np.float64)
    for role, model, hat in (("y", my, y_hat), ("t", mt, t_hat)):
        if hat.shape != (len(XW),):
            raise ValueError(f"model_{role} ({type(model).__name__}) predicted shape {hat.shape} for {len(XW)} rows")
        if not np.isfinite(hat).all():  # else "Input contains NaN", from a metric, as if the data held it
            raise ValueError(f"model_{role} ({type(model).__name__}) predicted NaN or infinity for "
                             f"{int((~np.isfinite(hat)).sum())} of {len(XW)} rows: the model, not the data (the "
                             "data were checked finite)")
    return y_hat, t_hat


def fit_nuisance(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                 model_y: Any = "auto", model_t: Any = "auto", discrete: bool, seed: int,
                 sample_weight: np.ndarray | None = None, device: str = "cpu",
                 with_scores: bool = True, progress: bool | None = False,
                 desc: str = "fitting nuisance models", models: list | None = None,
                 groups: np.ndarray | None = None,
                 fit_weights: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                    dict[str, float]]:
    """Fit E[Y | X, W] and E[T | X, W] on rows `train` (`fit_nuisance_models`); return their
    predictions on rows `test` and the out-of-fold scores there, weighted ('y_r2', and 't_log_loss',
    't_auc' or 't_r2'; none without `with_scores`: a bootstrap refit has no use for them, and with small
    models they cost as much as the fit). `progress` (`kernels.progress`, as `desc`): one fold's fit
    in a task of its own; off by default, since `cross_fit` counts folds. `models`, if given, gets
    the fitted (model_y, model_t) appended. `groups` and `fit_weights` as in
    `fit_nuisance_models`; the scores are under `sample_weight` either way."""
    fitted = fit_nuisance_models(XW, Y, T, train, model_y=model_y, model_t=model_t, discrete=discrete, seed=seed,
                                 sample_weight=sample_weight, device=device, progress=progress, desc=desc,
                                 groups=groups, fit_weights=fit_weights)
    if models is not None:
        models.append(fitted)
    y_hat, t_hat = nuisance_predictions(fitted, XW[test], discrete)
    if not with_scores:
        return y_hat, t_hat, {}
    # Scored under the rows' weights, as the models were fit: a weight of 0 leaves a row out. A
    # fold of none but such rows (whole groups a survey dropped) has no score: NaN, not an error.
    w = None if sample_weight is None else sample_weight[test]
    scored = w is None or bool((w > 0).any())
    scores = {"y_r2": lambda: r2_score(Y[test], y_hat, sample_weight=w)}
    if discrete:
        scores["t_log_loss"] = lambda: log_loss(T[test], t_hat, labels=[0.0, 1.0], sample_weight=w)
        scores["t_auc"] = lambda: roc_auc_score(T[test], t_hat, sample_weight=w)
    else:
        scores["t_r2"] = lambda: r2_score(T[test], t_hat, sample_weight=w)
    return y_hat, t_hat, {name: float(score()) if scored else float("nan") for name, score in scores.items()}


def cross_fit(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, *, n_folds: int, discrete: bool, seed: int,
              model_y: Any = "auto", model_t: Any = "auto", sample_weight: np.ndarray | None = None,
              device: str = "cpu", progress: bool | None = None, with_scores: bool = True,
              models: list | None = None, groups: np.ndarray | None = None,
              fold: np.ndarray | None = None,
              fold_weights: Callable[[int], tuple[np.ndarray, np.ndarray]] | None = None,
              desc: str = "cross-fitting nuisance models") -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """Out-of-fold predictions y_hat, t_hat of every row from `n_folds` folds
    (`cross_fitting_folds`, whole `groups` held out together; `fold`, when the caller has drawn
    them already: with groups and a binary treatment they take 0.1 ms a group), and each score
    as a list in fold order (none without `with_scores`). `models`, if given, gets each fold's
    fitted (model_y, model_t) appended, in fold order. `fold_weights(k)`, if given, gives fold k's
    models their `fit_weights` (`fit_nuisance_models`; `reweighted_cross_fit`)."""
    n = len(Y)
    fold = cross_fitting_folds(T, n_folds, discrete, seed, groups) if fold is None else fold
    y_hat, t_hat = np.empty(n), np.empty(n)
    scores: dict[str, list[float]] = {}
    with progress_bar(n_folds, desc, progress, unit="fold") as bar:
        for k in range(n_folds):
            train, test = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
            y_hat[test], t_hat[test], fold_scores = fit_nuisance(
                XW, Y, T, train, test, model_y=model_y, model_t=model_t, discrete=discrete, seed=seed,
                sample_weight=sample_weight, device=device, with_scores=with_scores, models=models, groups=groups,
                fit_weights=None if fold_weights is None else fold_weights(k))
            for name, value in fold_scores.items():
                scores.setdefault(name, []).append(value)
            bar.update(1)
    return y_hat, t_hat, scores


def treatment_variance_model(seed: int) -> AdditiveBoostingRegressor:
    """The model of t~^2 = (T - t_hat)^2 behind a continuous treatment's V(x)
    (`ate.treatment_variance`): `AdditiveBoostingRegressor` with a Poisson loss (positive
    predictions), early-stopped as the nuisance models are: boosted trees alone flatten V towards
    the edges of the data, and where V is small the average effect's weights 1 / V magnify that
    error."""
    return AdditiveBoostingRegressor(loss="poisson", **_SMOOTH_BOOSTING, random_state=seed)


def fits_with_sample_weight(estimator: Any, by_name: bool = False) -> bool:
    """Whether `estimator.fit` takes sample_weight: by name, or (unless `by_name`) through
    **kwargs, which may also refuse it (scikit-learn's Pipeline does)."""
    parameters = inspect.signature(estimator.fit).parameters
    return "sample_weight" in parameters or (not by_name and any(p.kind == p.VAR_KEYWORD
                                                                  for p in parameters.values()))


def reweights(reweight: Any, discrete: bool, model_y: Any = "auto", model_t: Any = "auto", seed: int = 0,
              device: str = "cpu") -> bool:
    """Whether `reweighted_cross_fit` follows the first cross-fit: `reweight` 'auto' for a
    continuous treatment whose models' fit both name sample_weight (a fit(**kwargs) may refuse
    it, as a scikit-learn Pipeline does, and 'auto' must not fail a fit that worked unweighted),
    True for a continuous treatment (a model whose fit takes no sample_weight is an error), False
    never. A binary treatment is not reweighted: its variance e (1 - e) is at most 1/4, and on
    the binary designs the little bags' variance already met the estimates' spread over training
    sets (docs/benchmarks.md)."""
    if not (isinstance(reweight, (bool, np.bool_)) or (isinstance(reweight, str) and reweight == "auto")):
        raise ValueError(f"reweight_nuisance must be 'auto', True or False, got {reweight!r}")
    reweight = reweight if isinstance(reweight, str) else bool(reweight)
    if reweight is False:
        return False
    if discrete:
        if reweight is True:
            raise ValueError("reweight_nuisance=True reweights a continuous treatment's nuisance models; this "
                             "treatment is binary: use 'auto' or False")
        return False
    for role, model in (("y", model_y), ("t", model_t)):
        if not fits_with_sample_weight(resolve_model(model, role, False, seed, device), by_name=reweight == "auto"):
            if reweight is True:
                raise ValueError(f"reweight_nuisance=True needs sample weights, and model_{role}'s fit takes no "
                                 "sample_weight: give a model that takes them, or reweight_nuisance='auto'")
            return False
    return True


def reweighted_cross_fit(XW: np.ndarray, Y: np.ndarray, T: np.ndarray, y_hat: np.ndarray, t_hat: np.ndarray,
                         fold: np.ndarray, *, model_y: Any = "auto", model_t: Any = "auto", seed: int,
                         sample_weight: np.ndarray | None = None, device: str = "cpu",
                         progress: bool | None = None, with_scores: bool = True, models: list | None = None,
                         groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, list[float]]]:
    """A continuous treatment's nuisance models fit again on the folds `fold` by feasible
    weighted least squares: each row weighted by 1 / Var(Y | X, W) in the outcome model and by
    1 / Var(T | X, W) in the treatment model, both estimated from the first fit's residuals
    `Y - y_hat`, `T - t_hat` (`ate.fit_residual_variance`), times `sample_weight`. Returns what
    `cross_fit` does.

    Why: where Var(T | X) is small, a little error in E[T | X] is large against the treatment's
    own variation there, and the forest's local slope is attenuated by it. Least squares spends
    its accuracy where T is noisy instead; the weights move it to where the effect is measured.
    On a treatment with Var(T | X) = exp(X1) (docs/benchmarks.md, "A continuous treatment's
    nuisance models, reweighted") the CATE's error fell by 18-25% and the intervals' coverage
    rose from 0.89 to 0.93 at the same width.

    Fold k's weights come from variance models fit to its training rows alone, so the held-out
    fold's outcomes do not enter them directly. They still reach them through the first fit's
    residuals of the training rows, whose models saw the held-out fold, and an early-stopped
    model can move as a whole with any row. What cross-fitting guards against, a prediction
    that follows its own row's noise, stays unmeasurable: over 12 training sets of the
    continuous design (n = 2,000), the slope of y_hat - E[Y | X] on the row's own noise is
    0.004 (standard error 0.003), and 0.003 (0.002) for t_hat, against 0.006 (0.003) and 0.002
    (0.003) from the first fit, which never saw the row (docs/benchmarks.md)."""
    from .ate import fit_residual_variance, floor_variance

    residuals = {"y": Y - y_hat, "t": T - t_hat}

    def fold_weights(k: int) -> tuple[np.ndarray, np.ndarray]:
        train = np.flatnonzero(fold != k)
        pair = []
        for role in ("y", "t"):
            model = fit_residual_variance(XW, residuals[role], train, seed=seed, sample_weight=sample_weight,
                                          groups=groups)
            v = floor_variance(model.predict(XW[train]), residuals[role][train],
                               None if sample_weight is None else sample_weight[train])
            w = np.zeros(len(Y))  # the held-out fold's entries are never read
            w[train] = 1.0 / v if sample_weight is None else sample_weight[train] / v
            w[train] /= np.mean(w[train])  # the rows' mean weight stays 1: the models' own settings count rows
            pair.append(w)
        return pair[0], pair[1]

    return cross_fit(XW, Y, T, n_folds=int(fold.max()) + 1, discrete=False, seed=seed, model_y=model_y,
                     model_t=model_t, sample_weight=sample_weight, device=device, progress=progress,
                     with_scores=with_scores, models=models, groups=groups, fold=fold, fold_weights=fold_weights,
                     desc="refitting nuisance models, inverse-variance weighted")
