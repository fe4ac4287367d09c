"""Cross-fitted nuisance models, one fold per call, so folds can run as parallel tasks (each task
one fold or several: `nuisance_folds`).

`fit_nuisance_fold` fits E[Y | X, W] and E[T | X, W] on every fold but one and predicts the
held-out fold; `combine_folds` checks the folds cover every row once and forms the residuals
the forest is grown on, and the treatment's conditional variance V(x) that weights the average
effect (`tauforge.kernels.ate`; a continuous treatment's is a model of t~^2 fit on the same
folds). Folds, models and seeds are those of `tauforge.kernels.CausalForestDML`, so the pipeline
and the in-process estimator produce the same residuals. `NuisanceConfig` says
which models and how many folds; the refuters and the bootstrap refit with the same settings.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import config
from ._kfp import Dataset, Input, List, Metrics, Output, component
from .constants import DEFAULT_FOLDS
from .data import ValidatedData

# tauforge.kernels.nuisance (scikit-learn, 0.4 s to load) is imported where models are fit, so
# that a run's settings are checked (before any task starts) without it.
NAMED_MODELS = ("auto", "tauforge")  # the models named, not imported: they always resolve


@dataclass(frozen=True)
class NuisanceConfig:
    """How the nuisance models are fit.

    model_y, model_t : 'auto' (`kernels.nuisance.default_nuisance_model`: an additive spline model
        plus early-stopped boosting, for a binary treatment on the 0/1 treatment), 'tauforge'
        (the engine's boosting), or a scikit-learn estimator class by import path
        ('sklearn.linear_model.LassoCV'); model_t must be a classifier for a binary treatment.
    folds : cross-fitting folds (one pipeline task each), at least 2.
    reweight : a continuous treatment's models refit with inverse-variance weights where their fit
        names sample_weight (`CausalForestDML(reweight_nuisance='auto')`); False keeps the first
        fit (`reweight_nuisance=False`, EconML's residuals). A binary treatment's never are.
    """

    model_y: str = "auto"
    model_t: str = "auto"
    folds: int = DEFAULT_FOLDS
    reweight: bool = True

    def __post_init__(self):
        if not (isinstance(self.folds, int) and not isinstance(self.folds, bool) and self.folds >= 2):
            raise config.ConfigError("folds", f"must be an integer of at least 2, got {self.folds!r}")
        if not isinstance(self.reweight, bool):
            raise config.ConfigError("reweight", f"must be true or false, got {self.reweight!r}")
        for role in ("y", "t"):
            model = getattr(self, f"model_{role}")
            if not isinstance(model, str):  # the pipeline's parameter is text (it failed at compile, in KFP)
                raise config.ConfigError(f"model_{role}", f"must be 'auto', 'tauforge' or an import path, got "
                                                          f"{type(model).__name__}: estimator instances are for "
                                                          "CausalForestDML(model_y=..., model_t=...)")
            if model in NAMED_MODELS:
                continue
            from sklearn.base import is_classifier

            from tauforge.kernels.nuisance import resolve_model

            try:  # an import path that does not resolve should fail here, not in a task
                estimator = resolve_model(model, role, discrete=False, seed=0)
            except ValueError as exc:
                raise config.ConfigError(f"model_{role}", f"must be 'auto', 'tauforge' or an importable "
                                                          f"scikit-learn estimator class: {exc}") from None
            if role == "y" and is_classifier(estimator):
                raise config.ConfigError("model_y", f"{model!r} is a classifier; the outcome model predicts "
                                                    "E[Y | X, W]: give a regressor, or 'auto'")

    def check_treatment_model(self, binary: bool) -> None:
        """model_t against the treatment, known once the table is read: a classifier (for the
        propensity) for a binary treatment, a regressor for a continuous one."""
        if isinstance(self.model_t, str) and self.model_t in NAMED_MODELS:
            return
        from sklearn.base import is_classifier, is_regressor

        from tauforge.kernels.nuisance import resolve_model

        estimator = resolve_model(self.model_t, "t", discrete=binary, seed=0)
        if binary and not (is_classifier(estimator) and hasattr(estimator, "predict_proba")):
            what = "has no predict_proba" if is_classifier(estimator) else "is not a classifier"
            raise config.ConfigError("model_t", f"{self.model_t!r} {what}; a binary treatment's model gives its "
                                                "propensity (predict_proba): give a classifier with it, e.g. "
                                                "sklearn.linear_model.LogisticRegression, or 'auto'")
        if not binary and not is_regressor(estimator):
            raise config.ConfigError("model_t", f"{self.model_t!r} is not a regressor; a continuous treatment's "
                                                "model predicts E[T | X, W]: give a regressor, or 'auto'")

    def check_sample_weight(self) -> None:
        """With a weight column, both models' fit must take sample_weight (it failed in the task)."""
        from tauforge.kernels.nuisance import fits_with_sample_weight, resolve_model

        for role in ("y", "t"):
            model = getattr(self, f"model_{role}")
            if model in NAMED_MODELS:
                continue
            if not fits_with_sample_weight(resolve_model(model, role, discrete=False, seed=0)):
                raise config.ConfigError(f"model_{role}", f"{model!r} cannot be fit with sample weights (its fit "
                                                          "takes no sample_weight), and the data have a weight "
                                                          "column: give a model that takes them, or no weight")

    @classmethod
    def from_json(cls, text: str) -> "NuisanceConfig":
        return config.from_json(cls, text, "nuisance")

    def to_json(self) -> str:
        return config.to_json(self)

    def card(self, binary: bool) -> dict:
        """What the model card records of the nuisance stage: these settings, and whether a
        continuous treatment's models were refit with inverse-variance weights (`_reweighted`,
        the join's and every refit's rule). A binary treatment's card loads no scikit-learn."""
        return {**json.loads(self.to_json()), "reweighted": not binary and self.reweights()}

    def reweights(self) -> bool:
        """Whether a continuous treatment's models are refit with inverse-variance weights:
        `reweight` and both fits name sample_weight (`kernels.nuisance.reweights`)."""
        from tauforge.kernels.nuisance import reweights

        return self.reweight and reweights("auto", False, self.model_y, self.model_t)


@dataclass
class FoldPredictions:
    """One fold's out-of-fold predictions (columns row, fold, y_hat, t_hat) and scores."""

    fold: int
    frame: pd.DataFrame
    scores: dict[str, float]

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.frame.to_parquet(os.path.join(path, "predictions.parquet"), index=False)
        with open(os.path.join(path, "scores.json"), "w") as f:
            json.dump({"fold": self.fold, "scores": self.scores}, f)

    @classmethod
    def load(cls, path: str) -> "FoldPredictions":
        with open(os.path.join(path, "scores.json")) as f:
            meta = json.load(f)
        return cls(meta["fold"], pd.read_parquet(os.path.join(path, "predictions.parquet")), meta["scores"])

    @staticmethod
    def task_path(path: str, fold: int) -> str:
        """Where a fold task writing to `path` saves fold `fold` (`nuisance_folds`)."""
        return os.path.join(path, f"fold-{fold}")

    @classmethod
    def load_task(cls, path: str) -> list["FoldPredictions"]:
        """The folds one fold task saved under `path`."""
        return [cls.load(os.path.join(path, name)) for name in sorted(os.listdir(path)) if name.startswith("fold-")]


def check_fold_tasks(n_tasks: int, n_folds: int) -> None:
    """The one check of a number of fold tasks (here, in the pipeline builders and in
    TrainingConfig): ConfigError naming `fold_tasks` unless it is an integer from 1 to n_folds."""
    if not (isinstance(n_tasks, (int, np.integer)) and not isinstance(n_tasks, bool) and 1 <= n_tasks <= n_folds):
        raise config.ConfigError("fold_tasks", f"must be between 1 and the {n_folds} folds, got {n_tasks}")


def check_groups_for_folds(data: ValidatedData, n_folds: int) -> None:
    """ConfigError naming `folds` unless the data's groups fill the folds: cross-fitting holds out
    whole groups and the data-subset refuter refits on half of them, so at least 2 n_folds groups,
    and for a binary treatment as many groups holding each arm (else a fold trains on one arm)."""
    a = data.arrays()
    groups, T = a["groups"], a["T"]
    if groups is None:
        return
    need, column = 2 * n_folds, data.spec.group
    arms = [("", groups)] + ([(f" with treatment {arm}", groups[T == arm]) for arm in (0, 1)] if data.spec.binary
                             else [])
    for which, held in arms:
        count = len(np.unique(held))
        if count < need:
            raise config.ConfigError("folds", f"must leave whole groups in every fold: group column {column!r} has "
                                              f"{count} group(s){which}, and {n_folds} folds need at least {need} "
                                              "(the data-subset refuter refits on half of them); pass fewer folds")


def folds_of_task(task: int, n_tasks: int, n_folds: int) -> list[int]:
    """The folds task `task` of `n_tasks` fits: task, task + n_tasks, ... (each fold in one task)."""
    check_fold_tasks(n_tasks, n_folds)
    if not 0 <= task < n_tasks:
        raise ValueError(f"task must be in [0, {n_tasks}), got {task}")
    return list(range(task, n_folds, n_tasks))


def fit_nuisance_fold(data: ValidatedData, fold: int, nuisance: NuisanceConfig, seed: int,
                      progress: bool | None = False) -> FoldPredictions:
    """Fit both nuisance models without fold `fold`; predict and score the rows of `fold`.
    `progress`: the models' fits as progress lines (`tauforge.kernels.progress`)."""
    if not 0 <= fold < nuisance.folds:
        raise ValueError(f"fold must be in [0, {nuisance.folds}), got {fold}")
    from tauforge.kernels.nuisance import cross_fitting_folds, fit_nuisance

    a = data.arrays()
    discrete = data.spec.binary
    folds = cross_fitting_folds(a["T"], nuisance.folds, discrete, seed, a["groups"])
    train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    y_hat, t_hat, scores = fit_nuisance(nuisance_inputs(a), a["Y"], a["T"], train, test, model_y=nuisance.model_y,
                                        model_t=nuisance.model_t, discrete=discrete, seed=seed,
                                        sample_weight=a["sample_weight"], progress=progress,
                                        desc=f"nuisance fold {fold + 1}/{nuisance.folds}", groups=a["groups"])
    t_hat = _known_propensity(data, t_hat)
    frame = pd.DataFrame({"row": test, "fold": fold, "y_hat": y_hat, "t_hat": t_hat})
    return FoldPredictions(fold, frame, scores)


def refit_residuals(data: ValidatedData, nuisance: NuisanceConfig, seed: int, sample_weight: np.ndarray | None = None,
                    rows: np.ndarray | None = None,
                    extra_control: np.ndarray | None = None,
                    treatment: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_res, t_res, t_var) with the nuisance models (and V(x)) cross-fit again, with the folds and
    models of `fit_nuisance_fold`: under `sample_weight` (a bootstrap resample's; default the
    data's own), on `rows` only (a refuter's subset; default all), with `extra_control` as one
    more column the models see (a refuter's random common cause), with `treatment` (all rows) in
    place of the data's (a refuter's placebo). The data's groups stay whole, as in the run."""
    from tauforge.kernels.ate import treatment_variance
    from tauforge.kernels.nuisance import cross_fit, cross_fitting_folds

    a = data.arrays()
    rows = np.arange(len(a["Y"])) if rows is None else rows
    XW = nuisance_inputs(a) if extra_control is None else np.hstack([nuisance_inputs(a), extra_control[:, None]])
    weight = a["sample_weight"] if sample_weight is None else sample_weight
    T = a["T"] if treatment is None else np.asarray(treatment, dtype=np.float64)
    Y, T, weight = a["Y"][rows], T[rows], None if weight is None else weight[rows]
    groups = None if a["groups"] is None else a["groups"][rows]
    discrete = data.spec.binary
    fold = cross_fitting_folds(T, nuisance.folds, discrete, seed, groups)  # drawn once, for both fits
    y_hat, t_hat, _ = cross_fit(XW[rows], Y, T, n_folds=nuisance.folds, discrete=discrete, seed=seed,
                                model_y=nuisance.model_y, model_t=nuisance.model_t, sample_weight=weight,
                                with_scores=False, groups=groups, fold=fold)
    if not discrete:
        y_hat, t_hat, _ = _reweighted(nuisance, XW[rows], Y, T, y_hat, t_hat, fold, seed, weight, groups,
                                      with_scores=False)
    t_hat = _known_propensity(data, t_hat)
    t_var = treatment_variance(XW[rows], T, t_hat, fold, discrete=discrete, seed=seed, sample_weight=weight,
                               groups=groups)
    return Y - y_hat, T - t_hat, t_var


def _reweighted(nuisance: NuisanceConfig, XW, Y, T, y_hat, t_hat, fold, seed, sample_weight, groups,
                with_scores: bool, progress: bool | None = False):
    """A continuous treatment's predictions refit with inverse-variance weights where `nuisance`
    says so (`NuisanceConfig.reweights`: its `reweight`, and where
    `CausalForestDML(reweight_nuisance='auto')` would), as (y_hat, t_hat, scores); else those
    given, and no scores."""
    from tauforge.kernels.nuisance import reweighted_cross_fit

    if not nuisance.reweights():
        return y_hat, t_hat, None
    return reweighted_cross_fit(XW, Y, T, y_hat, t_hat, fold, model_y=nuisance.model_y, model_t=nuisance.model_t,
                                seed=seed, sample_weight=sample_weight, progress=progress, with_scores=with_scores,
                                groups=groups)


def nuisance_inputs(a: dict) -> np.ndarray:
    """What the nuisance models see: the covariates and the controls."""
    return a["X"] if a["W"] is None else np.hstack([a["X"], a["W"]])


def _known_propensity(data: ValidatedData, t_hat: np.ndarray) -> np.ndarray:
    if data.spec.assignment == "randomized":
        return np.full(len(t_hat), float(data.spec.propensity))  # the known design beats an estimate
    return t_hat


@dataclass
class Residuals:
    """Per row: fold, y_hat, t_hat, the residuals y_res = Y - y_hat, t_res = T - t_hat, and t_var,
    the treatment's conditional variance V(x) (`kernels.ate.treatment_variance`); and the
    out-of-fold scores as lists in fold order."""

    frame: pd.DataFrame
    scores: dict[str, list[float]]

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.frame.to_parquet(os.path.join(path, "residuals.parquet"), index=False)
        with open(os.path.join(path, "scores.json"), "w") as f:
            json.dump(self.scores, f)

    @classmethod
    def load(cls, path: str) -> "Residuals":
        with open(os.path.join(path, "scores.json")) as f:
            scores = json.load(f)
        return cls(pd.read_parquet(os.path.join(path, "residuals.parquet")), scores)

    def column(self, name: str) -> np.ndarray:
        return self.frame[name].to_numpy(np.float64)


def mean_score(scores: list[float]) -> float:
    """The folds' mean out-of-fold score, over the folds that have one (a fold of rows of weight 0
    only has none: NaN); NaN if none has."""
    scored = [s for s in scores if not np.isnan(s)]  # -inf (a model that diverged) must show
    return float(np.mean(scored)) if scored else float("nan")


def combine_folds(data: ValidatedData, folds: list[FoldPredictions], seed: int,
                  progress: bool | None = False, nuisance: NuisanceConfig | None = None) -> Residuals:
    """Join the folds' predictions, checking that they cover every row exactly once, and fit the
    treatment's conditional variance on the same folds (with `seed`; `progress` as progress lines).
    A continuous treatment's models (`nuisance`'s, the folds' own: required for one) are refit
    here with inverse-variance weights (`kernels.nuisance.reweighted_cross_fit`) unless its
    `reweight` is off, in this one task: each fold's weights need every fold's first fit."""
    from tauforge.kernels.ate import treatment_variance

    n = len(data.table)
    pred = pd.concat([f.frame for f in folds], ignore_index=True).sort_values("row")
    rows = pred["row"].to_numpy()
    if len(rows) != n or not np.array_equal(rows, np.arange(n)):
        folds_given = sorted(f.fold for f in folds)
        raise ValueError(f"fold predictions hold {len(rows)} predictions for {len(set(rows))} of {n} rows "
                         f"(folds {folds_given}); every fold must be fit exactly once")
    a = data.arrays()
    y_hat, t_hat, fold = pred["y_hat"].to_numpy(), pred["t_hat"].to_numpy(), pred["fold"].to_numpy()
    refit_scores = None
    if not data.spec.binary:  # a binary treatment's join loads no scikit-learn
        if nuisance is None:
            raise ValueError("a continuous treatment's folds are joined with their NuisanceConfig (nuisance=): "
                             "its models may be refit with inverse-variance weights (NuisanceConfig.reweight)")
        y_hat, t_hat, refit_scores = _reweighted(nuisance, nuisance_inputs(a), a["Y"], a["T"], y_hat, t_hat, fold,
                                                 seed, a["sample_weight"], a["groups"], with_scores=True,
                                                 progress=progress)
    t_var = treatment_variance(nuisance_inputs(a), a["T"], t_hat, fold, discrete=data.spec.binary, seed=seed,
                               sample_weight=a["sample_weight"], progress=progress, groups=a["groups"])
    residuals = pd.DataFrame({"fold": fold, "y_hat": y_hat, "t_hat": t_hat, "y_res": a["Y"] - y_hat,
                              "t_res": a["T"] - t_hat, "t_var": t_var})
    scores: dict[str, list[float]] = {}
    for f in sorted(folds, key=lambda f: f.fold):
        for name, value in f.scores.items():
            scores.setdefault(name, []).append(value)
    return Residuals(residuals, scores if refit_scores is None else refit_scores)


# ----------------------------------------------------------------------------- KFP components
@component
def nuisance_folds(dataset: Input[Dataset], task: int, n_tasks: int, n_folds: int, seed: int, model_y: str,
                   model_t: str, predictions: Output[Dataset]):
    """Fit the nuisance models without each of the folds task, task + n_tasks, ... in turn; write each
    fold's out-of-fold predictions and scores. Several folds to a task, because a task's start (its
    libraries: a second and more) costs more than a fold's fit on small data."""
    import time

    from tauforge.components.data import load_validated
    from tauforge.components.nuisance import FoldPredictions, NuisanceConfig, fit_nuisance_fold, folds_of_task

    nuisance = NuisanceConfig(model_y, model_t, int(n_folds))
    data = load_validated(dataset.path)
    for fold in folds_of_task(int(task), int(n_tasks), int(n_folds)):
        start = time.perf_counter()
        result = fit_nuisance_fold(data, fold, nuisance, int(seed), progress=True)
        result.save(FoldPredictions.task_path(predictions.path, fold))
        print(f"tauforge: nuisance fold {fold + 1}/{int(n_folds)} fit in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"{k} {v:.3f}" for k, v in result.scores.items()), flush=True)


@component
def combine_nuisance(dataset: Input[Dataset], folds: Input[List[Dataset]], seed: int, model_y: str, model_t: str,
                     residuals: Output[Dataset], metrics: Output[Metrics], reweight_nuisance: bool = True):
    """Join the fold tasks' predictions into residuals (and V(x)) for every row, a continuous
    treatment's refit with inverse-variance weights unless `reweight_nuisance` is false; log the
    mean out-of-fold scores."""
    import numpy as np

    from tauforge.components.data import load_validated
    from tauforge.components.nuisance import FoldPredictions, NuisanceConfig, combine_folds, mean_score

    data = load_validated(dataset.path)
    predictions = [p for f in folds for p in FoldPredictions.load_task(f.path)]
    # Only a continuous treatment's join refits the models (a binary one's loads no scikit-learn).
    nuisance = None if data.spec.binary else NuisanceConfig(model_y, model_t, len(predictions), reweight_nuisance)
    result = combine_folds(data, predictions, int(seed), progress=True, nuisance=nuisance)
    result.save(residuals.path)
    for name, values in result.scores.items():
        mean = mean_score(values)
        if np.isfinite(mean):  # KFP's metrics hold no NaN or inf (a task failed on one)
            metrics.log_metric(f"nuisance_{name}", mean)
