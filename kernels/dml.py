"""`CausalForestDML`: double machine learning with a causal forest as the final stage.

Cross-fitted nuisance models give out-of-fold m(x, w) = E[Y | X, W] and e(x, w) = E[T | X, W];
the forest is grown on (X, T - e, Y - m). The API follows EconML's CausalForestDML so users
can swap one for the other.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from . import _inputs
from .ate import (
    MIN_PROPENSITY,
    average_effect,
    few_groups_message,
    interval_quantile,
    oob_effect,
    overlap_message,
    treatment_variance,
    variance_weighted_effect,
)
from .bootstrap import INTERVALS, dml_replicates, replicate_forest_params
from .forest import FOREST_PARAMS, CausalForest
from .inference import EffectInference
from .nuisance import cross_fit, cross_fitting_folds, nuisance_predictions, reweighted_cross_fit, reweights


class CausalForestDML(BaseEstimator):
    """Causal forest with cross-fitted (double machine learning) nuisance models.

    Parameters
    ----------
    model_y, model_t : 'auto', 'tauforge', import path or scikit-learn estimator, default 'auto'
        Nuisance models for E[Y | X, W] and E[T | X, W]. 'auto' on CPU is an additive spline
        model plus early-stopped boosting of what it leaves (`AdditiveBoostingRegressor`; for a
        discrete treatment the same model on the 0/1 treatment, `AdditiveBoostingClassifier`; see
        `default_nuisance_model`), on CUDA the engine's own histogram boosting (`kernels.boosting`);
        'tauforge' picks the engine's boosting on any device. EconML's 'auto' is a
        cross-validated linear model.
    discrete_treatment : bool or 'auto', default 'auto'
        Binary 0/1 treatment: model_t is a classifier (propensity) and folds are stratified by
        T. 'auto' detects a 0/1 treatment.
    cv : int, default 5
        Cross-fitting folds. EconML: 2.
    min_propensity : float, default 0.025
        Propensities are clipped to [c, 1 - c] in the debiasing weights of a binary treatment's
        ATE, c = min_propensity, or half the smaller arm's share of the rows where that is less
        (`kernels.ate.propensity_clip`: with 1% treated, a clip at 0.025 understated the ATE's
        standard error).
    n_estimators, min_samples_leaf, max_depth, mtry, poisson_mtry, candidate_weights, max_samples, ci_group_size,
    honest, honesty_fraction, alpha, imbalance_penalty, linear_correction_variables, linear_correction_ridge,
    variance_smoothing, max_bins, device, backend, progress :
        Passed to `CausalForest` (see there, with grf and EconML defaults compared).
    inference : {'blb', 'bootstrap'}, default 'blb'
        'blb': intervals from the bootstrap of little bags of the one forest (and the ATE's
        normal interval). They treat the residuals as fixed, so they miss the nuisance models'
        own variance: on a heteroskedastic continuous treatment (docs/benchmarks.md, "Where
        coverage is lost") that was 44% of the CATE's variance.
        'bootstrap': the full bootstrap (`kernels.bootstrap`): `n_bootstrap`
        forests with the point forest's settings but `bootstrap_trees` trees, on reweighted rows
        (Bayesian bootstrap: every row kept with an Exp(1) weight), their Monte-Carlo noise
        subtracted; the nuisance models are refit on each reweighting unless
        `bootstrap_nuisance=False`. EconML: `inference=BootstrapInference(n_bootstrap_samples)`.
    n_bootstrap : int, default 100
        Replicates of the full bootstrap.
    bootstrap_trees : int, default 100
        Trees per replicate forest, rounded up to whole little bags of the point forest's size.
    bootstrap_nuisance : bool, default True
        Refit the nuisance models (and V(x)) on every replicate's weights (B x cv more model fits),
        so that the intervals carry the nuisance stage's uncertainty; False reuses the main
        fit's residuals.
    bootstrap_interval : {'normal', 'percentile', 'pivot'}, default 'normal'
        `effect_interval` and `ate_interval` with inference='bootstrap': the estimate +- z times
        the bootstrap standard error, or the percentile or pivot interval of the replicates
        (whose 2.5% tails rest on a few replicates each: noisier).
    reweight_nuisance : {'auto', True, False}, default 'auto'
        A continuous treatment's nuisance models fit a second time by feasible weighted least
        squares, weighted by 1 / Var(Y | X, W) and 1 / Var(T | X, W) estimated from the first
        fit (`kernels.nuisance.reweighted_cross_fit`): their accuracy goes where the treatment
        varies little and the forest's local slope is most sensitive to them. Each fold's
        weights come from variance models fit to its training rows. 'auto': for a continuous
        treatment whose models' fit names sample_weight (a fit(**kwargs), such as a scikit-learn
        Pipeline's, is left unweighted); True: for a continuous treatment (an error if a model's
        fit takes no sample_weight); False: never (EconML's residuals). Twice the nuisance fits.
        A binary treatment is never reweighted.
    random_state : int, numpy RandomState or Generator, or None
        Seed for folds, nuisance models and forest (a RandomState or Generator draws it at fit).

    Attributes
    ----------
    forest_ : CausalForest
    ate_, ate_stderr_ : float
        Average effect on the training data and its standard error: the mean of the debiased
        scores tau + (y~ - tau t~) t~ / V(x) of the out-of-bag CATE (`kernels.ate`), as grf's
        `average_treatment_effect`. For a binary treatment V = e (1 - e) and this is the doubly
        robust ATE, as EconML's `ate_`; for a continuous one V is a cross-fitted model of t~^2 and
        this is the average partial effect E[tau(X)] (EconML's `CausalForestDML` has no `ate_`
        for a continuous treatment; the variance-weighted effect is below). With
        inference='bootstrap', `ate_stderr_` stays this one (as EconML's), while `ate_interval`
        is the bootstrap's: the replicates' own standard error is `np.std(bootstrap_.ates, ddof=1)`.
    variance_weighted_effect_, variance_weighted_stderr_ : float
        The partially linear estimate sum t~ y~ / sum t~^2 and its standard error: each row's
        effect weighted by Var(T | X). Equal to `ate_` only when the effect or the treatment's
        variance is constant.
    nuisance_scores_ : dict
        Out-of-fold scores per fold: 'y_r2', and 't_log_loss' and 't_auc' (discrete) or 't_r2'.
    residuals_ : tuple (y_res, t_res)
        Out-of-fold residuals the forest was grown on.
    models_y, models_t : list of one list of fitted models
        The nuisance models fitted on each cross-fitting fold's training rows, as EconML nests
        them (one Monte-Carlo iteration): `score` averages their predictions on new rows.
    score_ : float
        The final stage's mean squared error on the training rows, mean((y~ - tau(x) t~)^2),
        with the out-of-bag CATE (EconML's uses the in-sample one, which an honest forest
        flatters less, but still does). Compare with `score` on held-out rows.
    treatment_variance_ : ndarray
        V(x) of every training row (the debiasing weights' denominator).
    reweighted_nuisance_ : bool
        Whether the nuisance models were refit with inverse-variance weights (`reweight_nuisance`).
    feature_names_in_ : ndarray of str
        X's column names, when X was a DataFrame with string names: `effect` and
        `effect_interval` then refuse a DataFrame whose columns differ or come in another order.
    control_names_in_ : ndarray of str or None
        W's column names, when W was a DataFrame with string names (else None): `score` refuses
        a W whose columns differ or come in another order.
    """

    def __init__(self, *, model_y: Any = "auto", model_t: Any = "auto", discrete_treatment: bool | str = "auto",
                 cv: int = 5, min_propensity: float = MIN_PROPENSITY, n_estimators: int = 1000,
                 min_samples_leaf: float = 3,
                 max_depth: int | None = None, mtry: int | None = None, poisson_mtry: bool = False,
                 candidate_weights: Any = "importance", max_samples: float = 0.5,
                 ci_group_size: int | str = "auto", honest: bool = True, honesty_fraction: float = 0.5,
                 alpha: float = 0.05,
                 imbalance_penalty: float = 0.0, linear_correction_variables: Any = "auto",
                 linear_correction_ridge: Any = "auto", variance_smoothing: bool = True,
                 max_bins: int = 256, device: str = "auto", backend: str = "auto",
                 inference: str = "blb", n_bootstrap: int = 100, bootstrap_trees: int = 100,
                 bootstrap_nuisance: bool = True, bootstrap_interval: str = "normal",
                 reweight_nuisance: bool | str = "auto", random_state: Any = None, progress: bool | None = None):
        self.model_y = model_y
        self.model_t = model_t
        self.discrete_treatment = discrete_treatment
        self.cv = cv
        self.min_propensity = min_propensity
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_depth = max_depth
        self.mtry = mtry
        self.poisson_mtry = poisson_mtry
        self.candidate_weights = candidate_weights
        self.max_samples = max_samples
        self.ci_group_size = ci_group_size
        self.honest = honest
        self.honesty_fraction = honesty_fraction
        self.alpha = alpha
        self.imbalance_penalty = imbalance_penalty
        self.linear_correction_variables = linear_correction_variables
        self.linear_correction_ridge = linear_correction_ridge
        self.variance_smoothing = variance_smoothing
        self.max_bins = max_bins
        self.device = device
        self.backend = backend
        self.inference = inference
        self.n_bootstrap = n_bootstrap
        self.bootstrap_trees = bootstrap_trees
        self.bootstrap_nuisance = bootstrap_nuisance
        self.bootstrap_interval = bootstrap_interval
        self.reweight_nuisance = reweight_nuisance
        self.random_state = random_state
        self.progress = progress

    def fit(self, Y: Any, T: Any, *, X: Any, W: Any = None, sample_weight: Any = None,
            groups: Any = None) -> CausalForestDML:
        """Fit nuisance models by cross-fitting, then the causal forest on the residuals.

        `groups` (one label per row, or None) names rows that are not independent: repeated
        rows of one unit, members of one household or market. A group's rows are held out
        together in cross-fitting (EconML's `groups`), drawn together by the forest's trees
        (grf's `clusters`), and the standard errors of `ate_` and of the CATE are those of
        independent groups rather than rows; the full bootstrap reweights whole groups.

        A fit that fails leaves the estimator unfitted, not half of one fit beside half of the
        last (an API review: a refused refit kept the old forest beside the new nuisance models)."""
        with _inputs.unfitted_on_failure(self, ("models_y", "models_t", "_n_controls")):
            return self._fit(Y, T, X, W, sample_weight, groups)

    def _fit(self, Y, T, X, W, sample_weight, groups) -> CausalForestDML:
        names, control_names = _inputs.feature_names(X), _inputs.feature_names(W)
        _inputs.check_same_index(X=X, Y=Y, T=T, W=W, sample_weight=sample_weight, groups=groups)
        Y = _inputs.to_numpy(Y, "Y", 1)
        T = _inputs.to_numpy(T, "T", 1)
        X = _inputs.to_numpy(X, "X", 2)
        W = None if W is None else _inputs.to_numpy(W, "W", 2)
        n = _inputs.check_same_length(Y=Y, T=T, X=X, W=W)
        codes = _inputs.check_groups(groups, n)
        self.n_groups_ = None if codes is None else int(codes.max()) + 1
        if codes is not None and (few := few_groups_message(codes, "groups")):
            _inputs.warn(few)
        _inputs.check_has_columns(X)
        if not (isinstance(self.discrete_treatment, (bool, np.bool_)) or self.discrete_treatment == "auto"):
            raise ValueError(f"discrete_treatment must be True, False or 'auto', got {self.discrete_treatment!r}")
        for arr, name in ((Y, "Y"), (T, "T"), (X, "X"), (W, "W")):
            if arr is not None:
                _inputs.check_finite(arr, name, names if name == "X" else None)
        _inputs.check_moments(Y, T)
        if n < 2:
            raise ValueError(f"Y has {n} row(s); a causal forest needs at least 2 (in practice hundreds)")
        sw = _inputs.check_sample_weight(sample_weight, n)
        if sw is not None:
            # Weights say how much rows count relative to each other: the nuisance models' ridge
            # penalties are not scale-free, so 2 * ones must fit as ones (and as None) do.
            sw = sw / sw.mean()
        counted = T if sw is None else T[sw > 0]  # a row of weight 0 tells nothing about its arm
        if np.ptp(counted) == 0:
            raise ValueError("T is constant" + ("" if sw is None else " among the rows of positive sample_weight")
                             + ": the treatment must vary to estimate its effect")
        if np.ptp(Y if sw is None else Y[sw > 0]) == 0:  # else every standard error is 0 (a numerics review)
            raise ValueError("Y is constant" + ("" if sw is None else " among the rows of positive sample_weight")
                             + ": there is no effect on it to estimate")
        self._check_inference()
        odd = isinstance(self.n_estimators, (int, np.integer)) and self.n_estimators % 2
        if self.inference == "blb" and self.ci_group_size == "auto" and odd:  # said before the fit, not after it
            _inputs.warn(f"n_estimators={self.n_estimators} is odd, so ci_group_size='auto' grows single trees and "
                         "effect_interval and effect_inference will be refused; pass an even number for intervals")
        self.discrete_treatment_ = self._is_discrete(T)
        if not (isinstance(self.cv, (int, np.integer)) and 2 <= self.cv <= n):
            raise ValueError(f"cv must be an integer between 2 and the number of rows ({n}), got {self.cv!r}")
        if n < 2 * self.cv:  # the nuisance models' own validation split needs two rows of a fold
            raise ValueError(f"Y has {n} rows; cross-fitting with cv={self.cv} needs at least 2 a fold "
                             f"({2 * self.cv} rows; a useful fit, hundreds)")
        if not 0 < self.min_propensity < 0.5:
            raise ValueError(f"min_propensity must be in (0, 0.5), got {self.min_propensity}")
        if self.discrete_treatment_:
            smallest = int(min((counted == 0).sum(), (counted == 1).sum()))
            if smallest < self.cv:
                raise ValueError(f"T has only {smallest} row(s)" + ("" if sw is None else " of positive sample_weight")
                                 + f" in its smaller arm; stratified cross-fitting with cv={self.cv} needs at least "
                                 f"{self.cv}")
        seed = _inputs.seed_from(self.random_state)
        params = {k: getattr(self, k) for k in (*FOREST_PARAMS, "progress")}
        CausalForest(**params, random_state=seed).check_params(X.shape[1])  # before the nuisance models' fits
        XW = X if W is None else np.hstack([X, W])

        self.reweighted_nuisance_ = reweights(self.reweight_nuisance, self.discrete_treatment_, self.model_y,
                                              self.model_t, seed, str(_inputs.resolve_device(self.device)))
        fold_models: list = []
        # Drawn once for the fit and every bootstrap refit, which keep the same folds.
        fold = cross_fitting_folds(T, self.cv, self.discrete_treatment_, seed, codes)
        y_res, t_res, t_var, scores = self._residuals(XW, Y, T, sw, seed, fold, models=fold_models, groups=codes)
        self.models_y, self.models_t = [[m for m, _ in fold_models]], [[m for _, m in fold_models]]
        self._n_controls = 0 if W is None else W.shape[1]
        self.control_names_in_ = control_names  # W's, as feature_names_in_ is X's: score checks them
        self.residuals_ = (y_res, t_res)
        self.treatment_variance_ = t_var
        self.nuisance_scores_ = scores
        # A review: with the treatment decided by X0, ate_ was 0.58 [0.43, 0.74] for a true 1.00,
        # without a word (grf warns of propensities near 0 or 1; the pipeline gates on them).
        if poor := overlap_message(T - t_res, t_var, t_res, self.discrete_treatment_, sw):
            _inputs.warn(poor)

        self.forest_ = CausalForest(**params, random_state=seed).fit(X, t_res, y_res, sample_weight=sw, groups=codes)
        for fitted in (self, self.forest_):  # effect(X) checks a DataFrame's columns in the forest
            _inputs.set_feature_names(fitted, names)
        tau = oob_effect(self.forest_, X)
        self.ate_, self.ate_stderr_ = average_effect(tau, y_res, t_res, t_var, sw, codes)
        self.variance_weighted_effect_, self.variance_weighted_stderr_ = variance_weighted_effect(y_res, t_res, sw,
                                                                                                  codes)
        self.score_ = _final_stage_mse(y_res, t_res, tau, sw)
        self.n_features_in_ = X.shape[1]
        self.bootstrap_ = None
        if self.inference == "bootstrap":
            self.bootstrap_ = self._bootstrap(X, XW, Y, T, sw, seed, fold, (y_res, t_res, t_var), tau, params,
                                              codes)
        return self

    def _check_inference(self) -> None:
        """Before any fitting: a bad inference setting should not cost a whole fit first."""
        if self.inference not in ("blb", "bootstrap"):
            raise ValueError(f"inference must be 'blb' or 'bootstrap', got {self.inference!r}")
        if self.inference == "bootstrap":
            if not (isinstance(self.n_bootstrap, (int, np.integer)) and self.n_bootstrap >= 2):
                raise ValueError(f"n_bootstrap must be an integer >= 2, got {self.n_bootstrap!r}")
            if self.bootstrap_interval not in INTERVALS:
                raise ValueError(f"bootstrap_interval must be one of {', '.join(INTERVALS)}, "
                                 f"got {self.bootstrap_interval!r}")
            if not (isinstance(self.bootstrap_trees, (int, np.integer)) and self.bootstrap_trees >= 1):
                raise ValueError(f"bootstrap_trees must be a positive integer, got {self.bootstrap_trees!r}")
            if not isinstance(self.bootstrap_nuisance, (bool, np.bool_)):
                raise ValueError(f"bootstrap_nuisance must be True or False, got {self.bootstrap_nuisance!r}")

    def _bootstrap(self, X, XW, Y, T, sw, seed, fold, main_residuals, tau, params, groups):
        def refit(weights):
            return self._residuals(XW, Y, T, weights, seed, fold, replicate=True, groups=groups)[:3]

        correction = self.forest_.linear_correction_
        forest_params = replicate_forest_params(params, self.bootstrap_trees,
                                                None if correction is None else correction.variables,
                                                self.forest_.candidate_weights_,
                                                None if correction is None else correction.ridge)
        return dml_replicates(X, int(self.n_bootstrap), seed, forest_params, main_residuals,
                              tau,  # the regression adjustment of every replicate's average effect
                              refit=refit if self.bootstrap_nuisance else None, sample_weight=sw,
                              progress=self.progress, groups=groups)

    def _is_discrete(self, T: np.ndarray) -> bool:
        binary = bool(np.isin(T, (0.0, 1.0)).all())
        if self.discrete_treatment == "auto":
            if not binary and len(values := np.unique(T)) == 2:  # 1/2 or -1/1: likely two arms, coded otherwise
                _inputs.warn(f"T takes two values ({values[0]:g}, {values[1]:g}) but not 0 and 1, so it is treated "
                             "as continuous: ate_ is the average effect per unit of T. For the average effect of "
                             "one arm against the other, recode T to 0/1; pass discrete_treatment=False to "
                             "silence this")
            elif not binary and len(values) <= 5:  # arms 0/1/2? (the pipeline's data check warns alike)
                _inputs.warn(f"T takes {len(values)} values ({', '.join(f'{v:g}' for v in values)}), so it is treated "
                             "as continuous: ate_ is the average effect per unit of T, as if the arms were doses "
                             "on one line. For arms, fit one model per arm against control with T recoded to 0/1; "
                             "pass discrete_treatment=False to silence this")
            return binary
        if self.discrete_treatment and not binary:
            values = np.unique(T)
            shown = ", ".join(f"{v:g}" for v in values[:5]) + (", ..." if len(values) > 5 else "")
            raise ValueError(f"discrete_treatment=True needs a binary 0/1 treatment, but T takes "
                             f"{len(values)} values ({shown})")
        return bool(self.discrete_treatment)

    def _residuals(self, XW, Y, T, sw, seed, fold, replicate=False, models=None, groups=None):
        """(y_res, t_res, t_var, scores): out-of-fold residuals and treatment variance V(x) on the
        cross-fitting folds `fold`, `groups` given to the models' own validation; for a bootstrap
        `replicate` without scores or a progress bar of their own. `models` gets each fold's
        fitted (model_y, model_t)."""
        discrete = self.discrete_treatment_
        device = str(_inputs.resolve_device(self.device))
        progress = False if replicate else self.progress
        y_hat, t_hat, scores = cross_fit(XW, Y, T, n_folds=self.cv, discrete=discrete, seed=seed,
                                         model_y=self.model_y, model_t=self.model_t, sample_weight=sw,
                                         device=device, progress=progress,
                                         # a refit's scores replace the first fit's: not scored twice
                                         with_scores=not (replicate or self.reweighted_nuisance_),
                                         models=models, groups=groups, fold=fold)
        if self.reweighted_nuisance_:
            if models is not None:
                models.clear()  # the refit's models are the ones `score` predicts with
            y_hat, t_hat, scores = reweighted_cross_fit(XW, Y, T, y_hat, t_hat, fold, model_y=self.model_y,
                                                        model_t=self.model_t, seed=seed, sample_weight=sw,
                                                        device=device, progress=progress,
                                                        with_scores=not replicate, models=models, groups=groups)
        t_var = treatment_variance(XW, T, t_hat, fold, discrete=discrete, seed=seed, sample_weight=sw,
                                   min_propensity=self.min_propensity,
                                   progress=progress, groups=groups)
        return Y - y_hat, T - t_hat, t_var, scores

    # ------------------------------------------------------------ results
    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise NotFittedError("this CausalForestDML is not fitted yet; call fit(Y, T, X=X) first")

    def _rows(self, X: Any) -> np.ndarray:
        """X as a float64 array, checked against the fit's columns (and names)."""
        Xn = _inputs.to_numpy(X, "X", 2)
        _inputs.check_columns(X, Xn, self.n_features_in_, getattr(self, "feature_names_in_", None), "the forest")
        return Xn

    def _contrast(self, T0: Any, T1: Any, X: Any) -> float | np.ndarray:
        """T1 - T0: a number, or one per row of X when either is an array of X's length (as
        EconML takes them). For a binary treatment both must be 0 or 1."""
        sides = {}
        n_rows = None if np.ndim(T0) == np.ndim(T1) == 0 else len(X)
        for name, value in (("T0", T0), ("T1", T1)):
            a = np.asarray(value, dtype=object if value is None else None)
            if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
                raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
            a = a.astype(np.float64)
            if a.ndim == 2 and a.shape[1] == 1:
                a = a[:, 0]
            if a.ndim > 1 or (a.ndim == 1 and a.shape[0] != n_rows):
                raise ValueError(f"{name} must be a number or have one value per row of X ({n_rows}), "
                                 f"got shape {a.shape}")
            if self.discrete_treatment_ and not np.isin(a, (0.0, 1.0)).all():
                raise ValueError(f"{name} must be 0 or 1 for a binary treatment (the effect of T1 against T0), "
                                 f"got {value!r}")
            sides[name] = a
        d = sides["T1"] - sides["T0"]
        return float(d) if d.ndim == 0 else d

    def effect(self, X: Any, *, T0: Any = 0.0, T1: Any = 1.0) -> Any:
        """CATE of moving the treatment from T0 to T1 at each row of X: tau(x) (T1 - T0). T0 and
        T1 are numbers or one per row."""
        self._check_fitted()
        d = self._contrast(T0, T1, X)
        if isinstance(d, float):
            return self.forest_.predict(X) * d
        Xn = self._rows(X)
        return _inputs.as_output(np.asarray(self.forest_.predict(Xn)) * d, _inputs.array_kind(X))

    def const_marginal_effect(self, X: Any) -> Any:
        """tau(x), the effect of one unit of treatment at each row (EconML's name; `effect` with
        T0 = 0, T1 = 1)."""
        return self.effect(X)

    def feature_importances(self, max_depth: int = 4, depth_decay_exponent: float = 2.0) -> np.ndarray:
        """How much the forest splits on each covariate of X: `CausalForest.feature_importances`
        (grf's variable importance)."""
        self._check_fitted()
        return self.forest_.feature_importances(max_depth, depth_decay_exponent)

    @property
    def feature_importances_(self) -> np.ndarray:
        """`feature_importances()` with its defaults, as EconML's attribute."""
        return self.feature_importances()

    def effect_interval(self, X: Any, *, T0: Any = 0.0, T1: Any = 1.0,
                        alpha: float = 0.05) -> tuple[Any, Any]:
        """Pointwise (1 - alpha) confidence interval (lower, upper) of `effect`."""
        self._check_fitted()
        d = self._contrast(T0, T1, X)
        if self.bootstrap_ is None and isinstance(d, float):
            lo, hi = self.forest_.predict_interval(X, alpha=alpha)
            return (lo * d, hi * d) if d >= 0 else (hi * d, lo * d)
        Xn = self._rows(X)
        if self.bootstrap_ is not None:
            lo, hi = self.bootstrap_.effect_interval(Xn, self.forest_.predict(Xn), alpha, self.bootstrap_interval)
        else:
            lo, hi = self.forest_.predict_interval(Xn, alpha=alpha)
        lo, hi = np.asarray(lo) * d, np.asarray(hi) * d  # a negative contrast swaps the ends
        kind = _inputs.array_kind(X)
        return _inputs.as_output(np.minimum(lo, hi), kind), _inputs.as_output(np.maximum(lo, hi), kind)

    def effect_inference(self, X: Any, *, T0: Any = 0.0, T1: Any = 1.0) -> EffectInference:
        """`effect` at each row of X with its standard error (the little bags', or the bootstrap's
        with inference='bootstrap'), as NumPy arrays with these of EconML's inference methods:
        `summary_frame(alpha, value, decimals)`, `conf_int(alpha)`, `pvalue(value)`,
        `zstat(value)`, `var` (not `population_summary`, `pred_stderr` or the naming arguments).
        Its intervals are normal; with a percentile or pivot `bootstrap_interval`,
        `effect_interval` gives those."""
        self._check_fitted()
        Xn = self._rows(X)
        d = self._contrast(T0, T1, Xn)
        if self.bootstrap_ is not None:
            tau, stderr = self.forest_.predict(Xn), self.bootstrap_.effect_stderr(Xn)
        else:
            tau, var = self.forest_.predict_and_var(Xn)
            stderr = np.sqrt(var)
        return EffectInference(np.asarray(tau, dtype=float) * d, np.asarray(stderr, dtype=float) * abs(d))

    def score(self, Y: Any, T: Any, X: Any, W: Any = None, sample_weight: Any = None) -> float:
        """The final stage's mean squared error on new rows, as EconML's `score`: residuals from
        the mean prediction of the cross-fitting folds' nuisance models (`models_y`, `models_t`),
        then mean((y~ - tau(x) t~)^2), weighted by `sample_weight`. Lower is better (it is a loss,
        not scikit-learn's higher-is-better score); use it on rows the model was not fit on, to
        compare CATE models fit with the same nuisance learners (the R-loss of Nie and Wager)."""
        self._check_fitted()
        _inputs.check_same_index(X=X, Y=Y, T=T, W=W, sample_weight=sample_weight)
        Xn = self._rows(X)
        Y = _inputs.to_numpy(Y, "Y", 1)
        T = _inputs.to_numpy(T, "T", 1)
        Wn = None if W is None else _inputs.to_numpy(W, "W", 2)
        n = _inputs.check_same_length(Y=Y, T=T, X=Xn, W=Wn)
        if n == 0:  # the nuisance models' own error named HistGradientBoostingRegressor (a review)
            raise ValueError("score needs at least one row; Y, T and X have none")
        width = 0 if Wn is None else Wn.shape[1]
        if width != self._n_controls:
            raise ValueError(f"W has {width} column(s) but the model was fit with {self._n_controls}"
                             + ("" if self._n_controls else " (no W)") + ": pass the same controls as to fit")
        if Wn is not None:  # a review: W's columns swapped moved the score from 0.87 to 3.04 without a word
            _inputs.check_columns(W, Wn, self._n_controls, getattr(self, "control_names_in_", None),
                                  "the model", "W", "control_names_in_")
        W = Wn
        for arr, name in ((Y, "Y"), (T, "T"), (W, "W")):
            if arr is not None:
                _inputs.check_finite(arr, name, None)
        if self.discrete_treatment_ and not np.isin(T, (0.0, 1.0)).all():
            raise ValueError("T must be 0 or 1: the model was fit with a binary treatment")
        sw = _inputs.check_sample_weight(sample_weight, n)
        XW = Xn if W is None else np.hstack([Xn, W])
        predictions = [nuisance_predictions(pair, XW, self.discrete_treatment_)
                       for pair in zip(self.models_y[0], self.models_t[0])]
        y_hat = np.mean([y for y, _ in predictions], axis=0)
        t_hat = np.mean([t for _, t in predictions], axis=0)
        tau = np.asarray(self.forest_.predict(Xn), dtype=np.float64)
        return _final_stage_mse(Y - y_hat, T - t_hat, tau, sw)

    def ate_interval(self, alpha: float = 0.05, *, X: Any = None) -> tuple[float, float]:
        """(1 - alpha) confidence interval of `ate_`: normal from `ate_stderr_` with
        inference='blb' (Student's t with G - 1 degrees of freedom when fit with G groups), the
        bootstrap's `bootstrap_interval` with inference='bootstrap'. `X` is refused with what to
        do instead (EconML's keyword; here the average is over the training rows)."""
        self._check_fitted()
        if X is not None or not isinstance(alpha, (float, int, np.floating, np.integer)):
            got = "X" if X is not None else type(alpha).__name__
            raise TypeError(f"ate_interval takes alpha only, got {got}: ate_ is the average over the "
                            "training rows (EconML's ate_interval(X) averages effect(X) over X; for other rows "
                            "use effect_interval)")
        _inputs.check_alpha(alpha)
        if self.bootstrap_ is not None:
            return self.bootstrap_.ate_interval(self.ate_, alpha, self.bootstrap_interval, self.n_groups_)
        half = interval_quantile(alpha, self.n_groups_) * self.ate_stderr_
        return self.ate_ - half, self.ate_ + half


def _final_stage_mse(y_res: np.ndarray, t_res: np.ndarray, tau: np.ndarray, sample_weight: np.ndarray | None) -> float:
    """mean((y~ - tau t~)^2), weighted: the loss the final stage minimizes (`score`, `score_`)."""
    return float(np.average((y_res - tau * t_res) ** 2, weights=sample_weight))
