"""Cross-fitted nuisance models, one fold per call, so folds can run as parallel tasks.

`fit_nuisance_fold` fits E[Y | X, W] and E[T | X, W] on every fold but one and predicts the
held-out fold; `combine_folds` checks the folds cover every row once and forms the residuals
the forest is grown on. Folds, models and seeds are those of `kernels.CausalForestDML`, so the
pipeline and the in-process estimator produce the same residuals.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tauforge.kernels.nuisance import cross_fit, cross_fitting_folds, fit_nuisance

from ._kfp import Dataset, Input, List, Metrics, Output, component
from .data import ValidatedData


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


def fit_nuisance_fold(data: ValidatedData, fold: int, n_folds: int, seed: int, model_y: str = "auto",
                      model_t: str = "auto") -> FoldPredictions:
    """Fit both nuisance models without fold `fold`; predict and score the rows of `fold`."""
    if not 0 <= fold < n_folds:
        raise ValueError(f"fold must be in [0, {n_folds}), got {fold}")
    a = data.arrays()
    discrete = data.spec.binary
    folds = cross_fitting_folds(a["T"], n_folds, discrete, seed)
    train, test = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
    y_hat, t_hat, scores = fit_nuisance(_nuisance_inputs(a), a["Y"], a["T"], train, test, model_y=model_y,
                                        model_t=model_t, discrete=discrete, seed=seed,
                                        sample_weight=a["sample_weight"])
    t_hat = _known_propensity(data, t_hat)
    frame = pd.DataFrame({"row": test, "fold": fold, "y_hat": y_hat, "t_hat": t_hat})
    return FoldPredictions(fold, frame, scores)


def refit_residuals(data: ValidatedData, sample_weight: np.ndarray, n_folds: int, seed: int,
                    model_y: str = "auto", model_t: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y_res, t_res, t_hat) of every row with the nuisance models cross-fit again under
    `sample_weight` (a bootstrap resample's), with the folds and models of `fit_nuisance_fold`."""
    a = data.arrays()
    y_hat, t_hat, _ = cross_fit(_nuisance_inputs(a), a["Y"], a["T"], n_folds=n_folds, discrete=data.spec.binary,
                                seed=seed, model_y=model_y, model_t=model_t, sample_weight=sample_weight)
    t_hat = _known_propensity(data, t_hat)
    return a["Y"] - y_hat, a["T"] - t_hat, t_hat


def _nuisance_inputs(a: dict) -> np.ndarray:
    """What the nuisance models see: the covariates and the controls."""
    return a["X"] if a["W"] is None else np.hstack([a["X"], a["W"]])


def _known_propensity(data: ValidatedData, t_hat: np.ndarray) -> np.ndarray:
    if data.spec.assignment == "randomized":
        return np.full(len(t_hat), float(data.spec.propensity))  # the known design beats an estimate
    return t_hat


@dataclass
class Residuals:
    """Per row: fold, y_hat, t_hat and the residuals y_res = Y - y_hat, t_res = T - t_hat; and
    the out-of-fold scores as lists in fold order."""

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


def combine_folds(data: ValidatedData, folds: list[FoldPredictions]) -> Residuals:
    """Join the folds' predictions, checking that they cover every row exactly once."""
    n = len(data.table)
    pred = pd.concat([f.frame for f in folds], ignore_index=True).sort_values("row")
    rows = pred["row"].to_numpy()
    if len(rows) != n or not np.array_equal(rows, np.arange(n)):
        folds_given = sorted(f.fold for f in folds)
        raise ValueError(f"fold predictions hold {len(rows)} predictions for {len(set(rows))} of {n} rows "
                         f"(folds {folds_given}); every fold must be fit exactly once")
    a = data.arrays()
    y_hat, t_hat = pred["y_hat"].to_numpy(), pred["t_hat"].to_numpy()
    residuals = pd.DataFrame({"fold": pred["fold"].to_numpy(), "y_hat": y_hat, "t_hat": t_hat,
                              "y_res": a["Y"] - y_hat, "t_res": a["T"] - t_hat})
    scores: dict[str, list[float]] = {}
    for f in sorted(folds, key=lambda f: f.fold):
        for name, value in f.scores.items():
            scores.setdefault(name, []).append(value)
    return Residuals(residuals, scores)


# ----------------------------------------------------------------------------- KFP components
@component
def nuisance_fold(dataset: Input[Dataset], fold: int, n_folds: int, seed: int, model_y: str,
                  model_t: str, predictions: Output[Dataset]):
    """Fit the nuisance models without fold `fold`; write its out-of-fold predictions and scores."""
    import time

    from tauforge.components.data import load_validated
    from tauforge.components.nuisance import fit_nuisance_fold

    start = time.perf_counter()
    result = fit_nuisance_fold(load_validated(dataset.path), int(fold), int(n_folds), int(seed),
                               model_y, model_t)
    result.save(predictions.path)
    print(f"tauforge: nuisance fold {int(fold) + 1}/{int(n_folds)} fit in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{k} {v:.3f}" for k, v in result.scores.items()), flush=True)


@component
def combine_nuisance(dataset: Input[Dataset], folds: Input[List[Dataset]], residuals: Output[Dataset],
                     metrics: Output[Metrics]):
    """Join the folds' predictions into residuals for every row; log the mean out-of-fold scores."""
    import numpy as np

    from tauforge.components.data import load_validated
    from tauforge.components.nuisance import FoldPredictions, combine_folds

    result = combine_folds(load_validated(dataset.path), [FoldPredictions.load(f.path) for f in folds])
    result.save(residuals.path)
    for name, values in result.scores.items():
        metrics.log_metric(f"nuisance_{name}", float(np.mean(values)))
