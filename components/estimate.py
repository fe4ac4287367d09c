"""The causal forest as shards that grow apart and merge into one forest, and the ATE.

`grow_forest_shard` grows shard k of K of the forest (`CausalForest.fit_shard`); every shard
shares the seed, so `merge_forest` returns tree for tree the forest one `fit` would have grown,
and the ATE of `tauforge.kernels.CausalForestDML` on the same residuals (an `Estimate`: the
out-of-bag CATE of the training rows and the summary of the average effect).

With a full bootstrap configured (`BootstrapConfig`), `grow_bootstrap_shard` fits shard k of K
of the replicates (`tauforge.kernels.bootstrap`) on the residuals and the estimate's out-of-bag
CATE, and `merge_bootstrap` joins them and makes the ATE interval the bootstrap's.

With estimator 'econml' the one shard fits EconML's `econml.grf.CausalForest` (the final stage
of its CausalForestDML, with EconML's defaults) on the same residuals and imports it as plain
arrays (`tauforge.kernels.econml_import`), keeping EconML's own out-of-bag CATE for the ATE.
"""

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tauforge.kernels.ate import average_effect as debiased_average
from tauforge.kernels.ate import interval_quantile, oob_effect, variance_weighted_effect
from tauforge.kernels.bootstrap import INTERVALS, BootstrapReplicates, dml_replicates, replicate_forest_params
from tauforge.kernels.sampling import shard_range

from . import config
from ._kfp import Artifact, Dataset, Input, List, Metrics, Model, Output, component
from .constants import DEFAULT_ALPHA, DEFAULT_TREES
from .data import ValidatedData
from .nuisance import NuisanceConfig, Residuals, refit_residuals

# The forest (numba and scikit-learn with it, two seconds to load) is imported where a forest is
# grown or loaded, so that a run's settings (BootstrapConfig, ESTIMATORS) are checked without it.
if TYPE_CHECKING:
    from tauforge.kernels import CausalForest

ESTIMATORS = ("tauforge", "econml")
# The forest parameters EconML's forest is given (`grow_forest_shard`); the others have no
# counterpart there.
ECONML_FOREST_OPTIONS = ("min_samples_leaf", "max_depth", "max_samples", "honest")


def check_econml_options(params: dict, field: str = "forest_params") -> None:
    """Refuse, naming `field`, forest parameters EconML's forest has no counterpart for (they
    were dropped without a word); trees and device are the run's own settings."""
    ignored = sorted(set(params) - {"n_estimators", "device", *ECONML_FOREST_OPTIONS})
    if ignored:
        raise config.ConfigError(field, f"has {', '.join(ignored)}, which EconML's forest does not take (estimator "
                                         f"'econml' takes {', '.join(ECONML_FOREST_OPTIONS)})")


def check_forest_settings(params: dict, n_shards: int, estimator: str, n_features: int | None = None,
                          field: str = "forest_params", grouped: bool = False, trees_field: str = "") -> None:
    """What the forest tasks would refuse, checked where a run starts (the CLI's `TrainingConfig`,
    and a compiled pipeline's validate task: a Kubeflow review saw bad forest_params and shard counts
    fail after the nuisance models' fits, each shard retrying them): the estimator, the forest's
    parameters (`field`; against `n_features` covariates when known), and `n_shards` tasks of whole
    little bags; EconML's forest takes trees in fours and no group column (`grouped`). A
    ConfigError names the setting (the trees: `trees_field` where they have one of their own)."""
    if estimator not in ESTIMATORS:
        raise config.ConfigError("estimator", f"must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if estimator == "econml":
        check_econml_options(params, field)
        trees = params.get("n_estimators", DEFAULT_TREES)
        if not isinstance(trees, int) or isinstance(trees, bool) or trees < 4 or trees % 4:
            raise config.ConfigError(trees_field or field, ("must be" if trees_field else "has n_estimators that must "
                                                            "be") + f" a multiple of 4 with estimator 'econml' "
                                                                    f"(EconML's subforest size), got {trees!r}")
        if grouped:
            raise config.ConfigError("estimator", "must be 'tauforge' with a group column: EconML's forest draws rows, "
                                                  "not groups, and its intervals would count a group's rows as "
                                                  "independent")
        if n_shards != 1:
            raise config.ConfigError("n_shards", f"must be 1 with estimator 'econml': EconML grows its trees in one "
                                                 f"task, got {n_shards}")
        return
    from tauforge.kernels.sampling import resolve_group_size  # NumPy only

    trees, group_size = params.get("n_estimators", DEFAULT_TREES), params.get("ci_group_size", "auto")
    try:
        if set(params) - {"n_estimators", "device"}:  # the forest's own checks (numba and scikit-learn: 2 s)
            from tauforge.kernels.forest import CausalForest

            forest_params(params, 0)  # no unknown parameters: its own ConfigError, passed on
            CausalForest(**params).check_params(n_features)
        elif isinstance(trees, bool) or not isinstance(trees, int) or trees < 1:
            raise ValueError(f"n_estimators must be a positive integer, got {trees!r}")
        group = resolve_group_size(group_size, trees)
    except config.ConfigError:
        raise
    except ValueError as exc:
        raise config.ConfigError(field, f"has a value the forest refuses: {exc}") from None
    bags = trees // group
    if not (isinstance(n_shards, int) and not isinstance(n_shards, bool) and 1 <= n_shards <= bags):
        raise config.ConfigError("n_shards", f"must be between 1 and {bags} (the little bags: {trees} trees in "
                                             f"groups of {group}), got {n_shards}")


# An estimate artifact's files, and a forest shard's.
_SUMMARY_FILE, _OOB_FILE, _BOOTSTRAP_DIR, _FOREST_DIR = "estimate.json", "oob_effect.npy", "bootstrap", "forest"


def forest_params(params: dict, seed: int) -> dict:
    """The CausalForest arguments of a run's forest parameters (`FOREST_PARAMS`) and seed."""
    from tauforge.kernels.forest import FOREST_PARAMS

    unknown = set(params) - set(FOREST_PARAMS)
    if unknown:
        raise config.ConfigError("forest_params", f"has unknown parameter(s) {', '.join(sorted(unknown))}; "
                                                  f"known: {', '.join(FOREST_PARAMS)}")
    return {**params, "random_state": int(seed), "progress": False}


@dataclass
class ForestShard:
    """One forest task's output: a (part of a) forest, and for an imported EconML forest the
    out-of-bag CATE EconML computed (ours is regenerated from the seed instead)."""

    forest: "CausalForest"
    oob_effect: np.ndarray | None = None

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.forest.save(os.path.join(path, _FOREST_DIR))
        if self.oob_effect is not None:
            np.save(os.path.join(path, _OOB_FILE), self.oob_effect, allow_pickle=False)

    @classmethod
    def load(cls, path: str) -> "ForestShard":
        from tauforge.kernels import CausalForest

        oob = os.path.join(path, _OOB_FILE)
        # device "auto": a shard grown on a GPU pod is merged on a CPU one (params device "cuda" would refuse it)
        return cls(CausalForest.load(os.path.join(path, _FOREST_DIR), device="auto"),
                   np.load(oob, allow_pickle=False) if os.path.exists(oob) else None)


def grow_forest_shard(data: ValidatedData, residuals: Residuals, params: dict, seed: int, shard: int,
                      n_shards: int, estimator: str = "tauforge", progress: bool | None = False) -> ForestShard:
    """Shard `shard` of `n_shards` of the forest on the residuals; `progress`: the trees' growth
    as progress lines (`tauforge.kernels.progress`; EconML's forest shows none)."""
    from tauforge.kernels import CausalForest

    a = data.arrays()
    t_res, y_res = residuals.column("t_res"), residuals.column("y_res")
    if estimator == "tauforge":
        forest = CausalForest(**{**forest_params(params, seed), "progress": progress}).fit_shard(
            a["X"], t_res, y_res, shard=shard, n_shards=n_shards, sample_weight=a["sample_weight"],
            groups=a["groups"])
        return ForestShard(forest)
    if estimator != "econml":
        raise config.ConfigError("estimator", f"must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    if n_shards != 1:
        raise config.ConfigError("n_shards", "must be 1 with estimator 'econml': EconML grows its trees in one "
                                             "task, parallel over the task's cores")
    if a["groups"] is not None:
        raise config.ConfigError("estimator", "must be 'tauforge' with a group column: EconML's forest draws rows")
    from econml.grf import CausalForest as EconMLCausalForest

    from tauforge.kernels.econml_import import import_econml_forest

    forest_params(params, seed)  # the same parameter names are accepted
    check_econml_options(params)
    ecf = EconMLCausalForest(n_estimators=int(params.get("n_estimators", DEFAULT_TREES)),
                             min_samples_leaf=params.get("min_samples_leaf", 5),
                             max_depth=params.get("max_depth"), max_samples=params.get("max_samples", 0.45),
                             honest=params.get("honest", True), inference=True, subforest_size=4,
                             random_state=seed, n_jobs=-1)
    ecf.fit(a["X"], t_res, y_res, sample_weight=a["sample_weight"])
    return ForestShard(import_econml_forest(ecf), np.asarray(ecf.oob_predict(a["X"]), dtype=np.float64).ravel())


@dataclass
class Estimate:
    """What the forest says about the training rows: their out-of-bag CATE and the average effect
    they imply (`summary`), and the full bootstrap's replicates when one was run. The forest
    itself travels as its own artifact (a saved `CausalForest`)."""

    oob_cate: np.ndarray
    summary: dict  # estimand, ate, ate_stderr, ate_lower, ate_upper, ate_interval, alpha, n_trees, ...
    bootstrap: BootstrapReplicates | None = None  # the full bootstrap's replicates, when run

    def save(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        np.save(os.path.join(path, _OOB_FILE), self.oob_cate, allow_pickle=False)
        if self.bootstrap is not None:
            self.bootstrap.save(os.path.join(path, _BOOTSTRAP_DIR))
        with open(os.path.join(path, _SUMMARY_FILE), "w") as f:
            json.dump(self.summary, f, indent=2)

    @classmethod
    def load(cls, path: str, bootstrap: bool = False) -> "Estimate":
        """The estimate at `path`; its bootstrap replicates (one forest each) only if `bootstrap`."""
        with open(os.path.join(path, _SUMMARY_FILE)) as f:
            summary = json.load(f)
        replicates = os.path.join(path, _BOOTSTRAP_DIR)
        return cls(np.load(os.path.join(path, _OOB_FILE), allow_pickle=False), summary,
                   BootstrapReplicates.load(replicates) if bootstrap and os.path.isdir(replicates) else None)


def average_effect(oob_cate: np.ndarray, data: ValidatedData, residuals: Residuals,
                   alpha: float = DEFAULT_ALPHA) -> dict:
    """The average effect with standard error and (1 - alpha) interval, as CausalForestDML's
    `ate_`: the mean debiased score of the out-of-bag CATE (`tauforge.kernels.ate`), the ATE of
    a binary treatment and the average partial effect (APE) of a continuous one. A continuous
    treatment's summary also holds the variance-weighted (partially linear) effect, by its name.
    Standard errors count the data's groups, when it has them, as independent, not its rows."""
    a = data.arrays()
    y_res, t_res, weight, groups = residuals.column("y_res"), residuals.column("t_res"), a["sample_weight"], a["groups"]
    ate, se = debiased_average(oob_cate, y_res, t_res, residuals.column("t_var"), weight, groups)
    z = interval_quantile(alpha, None if groups is None else int(groups.max()) + 1)
    out = {"estimand": "ATE" if data.spec.binary else "APE",
           "method": ("doubly robust (AIPW on out-of-bag CATE)" if data.spec.binary else
                      "debiased average partial effect (out-of-bag CATE, weights t~ / Var(T | X))"),
           "ate": ate, "ate_stderr": se, "ate_lower": ate - z * se,
           "ate_upper": ate + z * se, "ate_interval": "normal, from the standard error", "alpha": alpha,
           "n_rows": len(y_res)}
    if groups is not None:
        out["n_groups"] = int(groups.max()) + 1
        out["ate_interval"] = (f"Student's t ({out['n_groups'] - 1} degrees of freedom), from the standard error of "
                               f"{out['n_groups']} independent groups ({data.spec.group!r})")
    if not data.spec.binary:
        out["variance_weighted_effect"], out["variance_weighted_stderr"] = variance_weighted_effect(y_res, t_res,
                                                                                                  weight, groups)
    return out


def merge_forest(shards: list[ForestShard], data: ValidatedData, residuals: Residuals,
                 alpha: float = DEFAULT_ALPHA) -> tuple["CausalForest", Estimate]:
    """The whole forest from its shards, and its estimate on the training rows."""
    from tauforge.kernels import CausalForest
    from tauforge.kernels.forest import FOREST_PARAMS

    imported = [s for s in shards if s.oob_effect is not None]
    if imported:
        if len(shards) != 1:
            raise ValueError("an imported (EconML) forest comes as exactly one shard")
        forest, oob_cate = shards[0].forest, shards[0].oob_effect
    else:
        X = data.arrays()["X"]
        # X: the variance smoother's rows; with T, y and weights, the correction's penalty is chosen
        forest = CausalForest.merge([s.forest for s in shards], X=X, T=residuals.column("t_res"),
                                    y=residuals.column("y_res"), sample_weight=data.arrays()["sample_weight"])
        oob_cate = oob_effect(forest, X)
    summary = average_effect(oob_cate, data, residuals, alpha)
    summary.update(n_trees=forest.forest_.n_trees, n_shards=len(shards), seed=forest.seed_, device=str(forest.device_),
                   forest_source=forest.source_,
                   forest_params={k: v for k, v in forest.get_params().items() if k in FOREST_PARAMS},
                   linear_correction_variables=(None if getattr(forest, "linear_correction_", None) is None
                                                else list(forest.linear_correction_.variables)),
                   linear_correction_ridge=(None if getattr(forest, "linear_correction_", None) is None
                                            else forest.linear_correction_.ridge),
                   candidate_weights=(None if getattr(forest, "candidate_weights_", None) is None
                                      else [float(v) for v in forest.candidate_weights_]))
    return forest, Estimate(oob_cate, summary)


@dataclass(frozen=True)
class BootstrapConfig:
    """The full bootstrap of a pipeline run (`tauforge.kernels.bootstrap`): `n_bootstrap` replicate
    forests with the run's forest settings but `trees` trees, on reweighted rows (0: none;
    intervals from the little bags, the ATE's normal), refitting the nuisance models on every
    replicate's weights unless `nuisance` is false; the ATE's `interval` is 'normal' (from the
    replicates' standard error), 'percentile' or 'pivot'."""

    n_bootstrap: int = 0
    trees: int = 100
    interval: str = "normal"
    nuisance: bool = True

    def __post_init__(self):
        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not (integer(self.n_bootstrap) and (self.n_bootstrap == 0 or self.n_bootstrap >= 2)):
            raise config.ConfigError("n_bootstrap", f"must be 0 (off) or at least 2 replicates, "
                                                    f"got {self.n_bootstrap!r}")
        if not (integer(self.trees) and self.trees >= 1):
            raise config.ConfigError("trees", f"must be a positive integer, got {self.trees!r}")
        if self.interval not in INTERVALS:
            raise config.ConfigError("interval", f"must be one of {', '.join(INTERVALS)}, got {self.interval!r}")
        if not isinstance(self.nuisance, bool):
            raise config.ConfigError("nuisance", f"must be true or false, got {self.nuisance!r}")

    @classmethod
    def from_json(cls, text: str) -> "BootstrapConfig":
        return config.from_json(cls, text, "bootstrap")

    def to_json(self) -> str:
        return config.to_json(self)


def check_bootstrap_settings(bootstrap: BootstrapConfig, shards: int, estimator: str) -> None:
    """What the bootstrap tasks would refuse, checked where a run starts (the CLI's
    `TrainingConfig`, and a compiled graph's validate task, where the bootstrap's JSON is a
    parameter the Kubeflow UI lets anyone change): `shards` bootstrap tasks (0: none in the graph)
    of `bootstrap.n_bootstrap` replicates, tauforge forests only."""
    if not bootstrap.n_bootstrap:
        if shards:
            raise config.ConfigError("n_bootstrap", f"must be at least {shards} in a graph with {shards} bootstrap "
                                                    f"shard task(s), got 0; compile without --bootstrap-shards for "
                                                    f"no bootstrap")
        return
    if estimator != "tauforge":
        raise config.ConfigError("n_bootstrap", f"must be 0 with estimator {estimator!r}: the full bootstrap grows "
                                                f"tauforge forests")
    if not (isinstance(shards, int) and not isinstance(shards, bool) and 1 <= shards <= bootstrap.n_bootstrap):
        raise config.ConfigError("bootstrap_shards", f"must be between 1 and {bootstrap.n_bootstrap} (the number of "
                                                     f"bootstrap replicates), got {shards}")


def grow_bootstrap_shard(data: ValidatedData, residuals: Residuals, estimate: Estimate, params: dict, seed: int,
                         shard: int, n_shards: int, bootstrap: BootstrapConfig,
                         nuisance: NuisanceConfig, progress: bool | None = False) -> BootstrapReplicates:
    """Replicates of shard `shard` of `n_shards` (a contiguous range of 0..n_bootstrap-1), as
    `CausalForestDML(inference='bootstrap')` fits them: the forest parameters of the run with
    `bootstrap.trees` trees, each replicate's average effect on the estimate's out-of-bag CATE,
    the nuisance models (and V(x)) refit with `nuisance` when `bootstrap.nuisance`. `progress`:
    the replicates as progress lines (`tauforge.kernels.progress`)."""
    if bootstrap.n_bootstrap < 2:
        raise config.ConfigError("n_bootstrap", "must be at least 2 for a bootstrap shard")
    if estimate.summary["forest_source"] != "tauforge":
        raise config.ConfigError("estimator", f"must be 'tauforge' for the full bootstrap, which grows tauforge "
                                              f"forests; the estimate's forest comes from "
                                              f"{estimate.summary['forest_source']}")
    replicates = shard_range(bootstrap.n_bootstrap, shard, n_shards, "bootstrap replicates", "n_bootstrap")
    a = data.arrays()
    main = (residuals.column("y_res"), residuals.column("t_res"), residuals.column("t_var"))
    refit = (lambda w: refit_residuals(data, nuisance, seed, sample_weight=w)) if bootstrap.nuisance else None
    forest = replicate_forest_params({k: v for k, v in forest_params(params, seed).items() if k != "random_state"},
                                     bootstrap.trees, estimate.summary.get("linear_correction_variables"),
                                     estimate.summary.get("candidate_weights"),
                                     estimate.summary.get("linear_correction_ridge"))
    return dml_replicates(a["X"], replicates, seed, forest, main, estimate.oob_cate, refit=refit,
                          sample_weight=a["sample_weight"], progress=progress, groups=a["groups"])


def merge_bootstrap(estimate: Estimate, shards: list[BootstrapReplicates], bootstrap: BootstrapConfig) -> Estimate:
    """The estimate with every replicate (each shard's, checked complete) and the bootstrap's
    ATE interval in place of the normal one (kept in summary['bootstrap'])."""
    replicates = BootstrapReplicates.merge(shards, bootstrap.n_bootstrap)
    s = estimate.summary
    lower, upper = replicates.ate_interval(s["ate"], s["alpha"], bootstrap.interval, s.get("n_groups"))
    summary = {**s, "ate_lower": lower, "ate_upper": upper,
               "ate_interval": f"bootstrap {bootstrap.interval}, {bootstrap.n_bootstrap} replicates"
                               + (" refitting the nuisance models" if bootstrap.nuisance else "")
                               + (f", {s['n_groups']} groups drawn whole" if "n_groups" in s else ""),
               "bootstrap": {**json.loads(bootstrap.to_json()), "n_shards": len(shards),
                             "ate_replicate_std": float(np.std(replicates.ates, ddof=1)),
                             "normal_interval": [s["ate_lower"], s["ate_upper"]]}}
    return Estimate(estimate.oob_cate, summary, replicates)


# ----------------------------------------------------------------------------- KFP components
@component
def forest_shard(dataset: Input[Dataset], residuals: Input[Dataset], params: str, seed: int,
                 shard: int, n_shards: int, estimator: str, forest: Output[Model]):
    """Grow shard `shard` of `n_shards` of the causal forest on the residuals."""
    import json
    import time

    from tauforge.components.data import load_validated
    from tauforge.components.estimate import grow_forest_shard
    from tauforge.components.nuisance import Residuals

    start = time.perf_counter()
    grown = grow_forest_shard(load_validated(dataset.path), Residuals.load(residuals.path),
                              json.loads(params), int(seed), int(shard), int(n_shards), estimator, progress=True)
    grown.save(forest.path)
    # Shown in the KFP UI beside the artifact (a Kubeflow review: its metadata was empty).
    forest.metadata.update(n_trees=int(grown.forest.forest_.n_trees), shard=int(shard), n_shards=int(n_shards),
                           estimator=estimator, device=str(grown.forest.device_))
    print(f"tauforge: forest shard {int(shard) + 1}/{int(n_shards)}: {grown.forest.forest_.n_trees} trees "
          f"({estimator}) on {grown.forest.device_} in {time.perf_counter() - start:.1f} s", flush=True)


@component
def merge_forest_shards(dataset: Input[Dataset], residuals: Input[Dataset], shards: Input[List[Model]],
                        alpha: float, forest: Output[Model], estimate: Output[Artifact], reference: Output[Dataset],
                        metrics: Output[Metrics]):
    """Join the shards into one forest; estimate the ATE (KFP metrics); write the reference
    profile that monitoring will compare served traffic with."""
    from tauforge.components.data import load_validated
    from tauforge.components.estimate import ForestShard, merge_forest
    from tauforge.components.events import reference_profile
    from tauforge.components.nuisance import Residuals

    data = load_validated(dataset.path)
    merged, result = merge_forest([ForestShard.load(s.path) for s in shards], data, Residuals.load(residuals.path),
                                  float(alpha))
    merged.save(forest.path)
    forest.metadata.update(n_trees=int(result.summary["n_trees"]), n_shards=int(result.summary["n_shards"]),
                           device=str(result.summary.get("device", "")), ate=float(result.summary["ate"]))
    result.save(estimate.path)
    a = data.arrays()
    reference_profile(a["X"], data.spec.covariates, a["T"], result.oob_cate,
                      groups=a.get("groups")).to_parquet(reference.path, index=False)
    for key in ("ate", "ate_stderr", "ate_lower", "ate_upper", "n_trees"):
        metrics.log_metric(key, float(result.summary[key]))
    shards = result.summary["n_shards"]
    print(f"tauforge: merged {shards} shard{'s' if shards != 1 else ''} into {result.summary['n_trees']} trees; "
          f"ATE {result.summary['ate']:.4f} [{result.summary['ate_lower']:.4f}, {result.summary['ate_upper']:.4f}]",
          flush=True)


@component
def bootstrap_shard(dataset: Input[Dataset], residuals: Input[Dataset], estimate: Input[Artifact], params: str,
                    seed: int, shard: int, n_shards: int, bootstrap: str, n_folds: int, model_y: str,
                    model_t: str, replicates: Output[Model], reweight_nuisance: bool = True):
    """Fit shard `shard` of `n_shards` of the full bootstrap's replicates."""
    import json
    import time

    from tauforge.components.data import load_validated
    from tauforge.components.estimate import BootstrapConfig, Estimate, grow_bootstrap_shard
    from tauforge.components.nuisance import NuisanceConfig, Residuals

    start = time.perf_counter()
    grown = grow_bootstrap_shard(load_validated(dataset.path), Residuals.load(residuals.path),
                                 Estimate.load(estimate.path), json.loads(params), int(seed), int(shard),
                                 int(n_shards), BootstrapConfig.from_json(bootstrap),
                                 NuisanceConfig(model_y, model_t, int(n_folds), reweight_nuisance), progress=True)
    grown.save(replicates.path)
    first, last = int(grown.replicates[0]), int(grown.replicates[-1])
    print(f"tauforge: bootstrap shard {int(shard) + 1}/{int(n_shards)}: replicates {first}..{last} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)


@component
def merge_bootstrap_shards(estimate: Input[Artifact], shards: Input[List[Model]], bootstrap: str,
                           result: Output[Artifact], metrics: Output[Metrics]):
    """Join the bootstrap shards; the ATE interval becomes the bootstrap's; log it as KFP metrics."""
    from tauforge.components.estimate import BootstrapConfig, Estimate, merge_bootstrap
    from tauforge.kernels.bootstrap import BootstrapReplicates

    merged = merge_bootstrap(Estimate.load(estimate.path), [BootstrapReplicates.load(s.path) for s in shards],
                             BootstrapConfig.from_json(bootstrap))
    merged.save(result.path)
    s = merged.summary
    for key in ("ate", "ate_lower", "ate_upper"):
        metrics.log_metric(key, float(s[key]))
    metrics.log_metric("ate_replicate_std", s["bootstrap"]["ate_replicate_std"])
    shards = s["bootstrap"]["n_shards"]
    print(f"tauforge: merged {shards} bootstrap shard{'s' if shards != 1 else ''}; ATE {s['ate']:.4f} "
          f"[{s['ate_lower']:.4f}, {s['ate_upper']:.4f}] ({s['ate_interval']}); the replicates' standard error "
          f"{s['bootstrap']['ate_replicate_std']:.4f}", flush=True)
