"""The causal forest as shards that grow apart and merge into one forest, and the ATE.

`grow_forest_shard` grows shard k of K of the forest (`kernels.CausalForest.fit_shard`); every
shard shares the seed, so `merge_forest` returns tree for tree the forest one `fit` would have
grown, and the ATE of `kernels.CausalForestDML` on the same residuals.

With estimator 'econml' the one shard fits EconML's `econml.grf.CausalForest` (the final stage
of its CausalForestDML, with EconML's defaults) on the same residuals and imports it as plain
arrays (`kernels.econml_import`), keeping EconML's own out-of-bag CATE for the ATE.
"""

import json
import os
from dataclasses import dataclass

from scipy.stats import norm

import numpy as np

from kernels import CausalForest
from kernels.dml import doubly_robust_ate, oob_effect, partially_linear_ate

from ._kfp import Dataset, Input, List, Metrics, Model, Output, component
from .data import ValidatedData
from .nuisance import Residuals

FOREST_DIR = "forest"
ESTIMATE_FILE = "estimate.json"
OOB_FILE = "oob_effect.npy"
ESTIMATORS = ("tauforge", "econml")
# Forest parameters a run may set (kernels.CausalForest documents each).
FOREST_PARAMS = ("n_estimators", "min_samples_leaf", "max_depth", "mtry", "max_samples", "ci_group_size", "honest",
                 "honesty_fraction", "alpha", "imbalance_penalty", "max_bins", "device", "backend")


def forest_params(params: dict, seed: int) -> dict:
    unknown = set(params) - set(FOREST_PARAMS)
    if unknown:
        raise ValueError(f"unknown forest parameter(s) {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(FOREST_PARAMS)}")
    return {**params, "random_state": int(seed), "progress": False}


@dataclass
class ForestShard:
    """One forest task's output: a (part of a) forest, and for an imported EconML forest the
    out-of-bag CATE EconML computed (ours is regenerated from the seed instead)."""

    forest: CausalForest
    oob_effect: np.ndarray | None = None

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.forest.save(os.path.join(path, FOREST_DIR))
        if self.oob_effect is not None:
            np.save(os.path.join(path, OOB_FILE), self.oob_effect, allow_pickle=False)

    @classmethod
    def load(cls, path: str) -> "ForestShard":
        oob = os.path.join(path, OOB_FILE)
        return cls(CausalForest.load(os.path.join(path, FOREST_DIR)),
                   np.load(oob, allow_pickle=False) if os.path.exists(oob) else None)


def grow_forest_shard(data: ValidatedData, residuals: Residuals, params: dict, seed: int, shard: int,
                      n_shards: int, estimator: str = "tauforge") -> ForestShard:
    a = data.arrays()
    t_res, y_res = residuals.column("t_res"), residuals.column("y_res")
    if estimator == "tauforge":
        forest = CausalForest(**forest_params(params, seed)).fit_shard(
            a["X"], t_res, y_res, shard=shard, n_shards=n_shards, sample_weight=a["sample_weight"])
        return ForestShard(forest)
    if estimator != "econml":
        raise ValueError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if n_shards != 1:
        raise ValueError("estimator 'econml' grows its forest in one task (n_shards=1); EconML parallelizes "
                         "over trees itself")
    from econml.grf import CausalForest as EconMLCausalForest

    from kernels.econml_import import import_econml_forest

    forest_params(params, seed)  # the same parameter names are accepted
    ecf = EconMLCausalForest(n_estimators=int(params.get("n_estimators", 500)),
                             min_samples_leaf=params.get("min_samples_leaf", 5),
                             max_depth=params.get("max_depth"), max_samples=params.get("max_samples", 0.45),
                             honest=params.get("honest", True), inference=True, subforest_size=4,
                             random_state=seed, n_jobs=-1)
    ecf.fit(a["X"], t_res, y_res, sample_weight=a["sample_weight"])
    return ForestShard(import_econml_forest(ecf), np.asarray(ecf.oob_predict(a["X"]), dtype=np.float64).ravel())


@dataclass
class Estimate:
    """The merged forest, the out-of-bag CATE of the training rows, and the ATE they imply."""

    forest: CausalForest
    oob_cate: np.ndarray
    summary: dict  # estimand, ate, ate_stderr, ate_lower, ate_upper, alpha, n_trees, ...

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.forest.save(os.path.join(path, FOREST_DIR))
        np.save(os.path.join(path, OOB_FILE), self.oob_cate, allow_pickle=False)
        with open(os.path.join(path, ESTIMATE_FILE), "w") as f:
            json.dump(self.summary, f, indent=2)

    @classmethod
    def load(cls, path: str) -> "Estimate":
        with open(os.path.join(path, ESTIMATE_FILE)) as f:
            summary = json.load(f)
        return cls(CausalForest.load(os.path.join(path, FOREST_DIR)),
                   np.load(os.path.join(path, OOB_FILE), allow_pickle=False), summary)


def average_effect(oob_cate: np.ndarray, data: ValidatedData, residuals: Residuals, alpha: float = 0.05,
                   min_propensity: float = 0.01) -> dict:
    """ATE with standard error and (1 - alpha) interval: doubly robust on the out-of-bag CATE for
    a binary treatment, partially linear for a continuous one (as kernels.CausalForestDML)."""
    a = data.arrays()
    y_res, t_res = residuals.column("y_res"), residuals.column("t_res")
    if data.spec.binary:
        ate, se = doubly_robust_ate(oob_cate, y_res, t_res, residuals.column("t_hat"), min_propensity,
                                    a["sample_weight"])
        method = "doubly robust (AIPW on out-of-bag CATE)"
    else:
        ate, se = partially_linear_ate(y_res, t_res, a["sample_weight"])
        method = "partially linear DML"
    z = float(norm.ppf(1 - alpha / 2))
    return {"estimand": "ATE", "method": method, "ate": ate, "ate_stderr": se, "ate_lower": ate - z * se,
            "ate_upper": ate + z * se, "alpha": alpha, "n_rows": len(y_res)}


def merge_forest(shards: list[ForestShard], data: ValidatedData, residuals: Residuals,
                 alpha: float = 0.05) -> Estimate:
    imported = [s for s in shards if s.oob_effect is not None]
    if imported:
        if len(shards) != 1:
            raise ValueError("an imported (EconML) forest comes as exactly one shard")
        forest, oob_cate = shards[0].forest, shards[0].oob_effect
    else:
        forest = CausalForest.merge([s.forest for s in shards])
        oob_cate = oob_effect(forest, data.arrays()["X"])
    summary = average_effect(oob_cate, data, residuals, alpha)
    summary.update(n_trees=forest.forest_.n_trees, n_shards=len(shards), seed=forest.seed_, device=str(forest.device_),
                   forest_source=forest.source_,
                   forest_params={k: v for k, v in forest.get_params().items() if k in FOREST_PARAMS})
    return Estimate(forest, oob_cate, summary)


# ----------------------------------------------------------------------------- KFP components
@component
def forest_shard(dataset: Input[Dataset], residuals: Input[Dataset], params: str, seed: int,
                 shard: int, n_shards: int, estimator: str, forest: Output[Model]):
    """Grow shard `shard` of `n_shards` of the causal forest on the residuals."""
    import json
    import time

    from components.data import load_validated
    from components.estimate import grow_forest_shard
    from components.nuisance import Residuals

    start = time.perf_counter()
    grown = grow_forest_shard(load_validated(dataset.path), Residuals.load(residuals.path),
                              json.loads(params), int(seed), int(shard), int(n_shards), estimator)
    grown.save(forest.path)
    print(f"tauforge: forest shard {int(shard) + 1}/{int(n_shards)}: {grown.forest.forest_.n_trees} trees "
          f"({estimator}) on {grown.forest.device_} in {time.perf_counter() - start:.1f} s", flush=True)


@component
def merge_forest_shards(dataset: Input[Dataset], residuals: Input[Dataset], shards: Input[List[Model]],
                        alpha: float, estimate: Output[Model], metrics: Output[Metrics]):
    """Join the shards into one forest; estimate the ATE; log it as KFP metrics."""
    from components.data import load_validated
    from components.estimate import ForestShard, merge_forest
    from components.nuisance import Residuals

    result = merge_forest([ForestShard.load(s.path) for s in shards], load_validated(dataset.path),
                          Residuals.load(residuals.path), float(alpha))
    result.save(estimate.path)
    for key in ("ate", "ate_stderr", "ate_lower", "ate_upper", "n_trees"):
        metrics.log_metric(key, float(result.summary[key]))
    print(f"tauforge: merged {result.summary['n_shards']} shards into {result.summary['n_trees']} trees; "
          f"ATE {result.summary['ate']:.4f} [{result.summary['ate_lower']:.4f}, {result.summary['ate_upper']:.4f}]",
          flush=True)

