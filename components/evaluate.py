"""Checks a causal estimate before it is published, and the gate that decides.

  overlap        propensity histogram by arm, range, share outside [0.05, 0.95], and the share the
                 Crump et al. (2009) rule would trim (binary treatment)
  treatment_variance  a continuous treatment's overlap: the estimated Var(T | X) over its mean, and
                 the share of rows under MIN_TREATMENT_VARIANCE_SHARE of it
  balance        standardized mean difference of each covariate between arms, raw and inverse-
                 propensity weighted (binary treatment); its correlation with the treatment (continuous)
  nuisance       the out-of-fold scores of the nuisance models
  refuters       placebo treatment, random common cause, data subset (components/refuters.py)
  sensitivity    omitted-variable-bias bounds and robustness value (components/sensitivity.py)
  heterogeneity  calibration test, RATE (AUTOC) and GATES by CATE quartile, on a held-out half ranked
                 by a forest grown on the other half (components/heterogeneity.py)
  effect         the ATE with its interval, and the distribution of the out-of-bag CATE
  uplift         gain (uplift) and Qini curves of that held-out ranking, with their areas (AUUC, Qini
                 coefficient), from the debiased scores (components/uplift.py)
  graph_checks   the independences the declared causal graph implies, tested on the training data
                 (components/graph_checks.py); says so when no graph was given
The gate compares these with thresholds (`GateConfig`) and returns a verdict with its reasons.
"""

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from tauforge.kernels._inputs import weighted_rows
from tauforge.kernels.ate import debiased_scores, outside_propensity_bounds, propensity_clip, treatment_variance_ratio
from tauforge.kernels.progress import progress_steps

from . import config, graph_checks, uplift
from ._kfp import HTML, Artifact, Dataset, Input, Metrics, Output, component
from .charts import histogram_edges
from .constants import (
    LEAK_GATE_R2,
    LEAK_RANK_CORRELATION,
    LEAK_WARNING_R2,
    MIN_PROPENSITY,
    MIN_TREATMENT_VARIANCE_SHARE,
    OVERLAP_BOUNDS,
    OVERLAP_WARNING_SHARE,
    SMD_WARNING,
)
from .data import ValidatedData
from .estimate import Estimate
from .graph import CausalGraph, card_section
from .nuisance import NuisanceConfig, Residuals, mean_score

# A calibration coefficient or RATE this many standard errors below 0 is a warning: a ranking that
# much worse than chance happens by chance with probability 0.025 each.
ANTI_RANKING_Z = 1.96

# A refuter's move of the ATE smaller than this many of its standard errors does not fail the
# gate, however small its p-value: three refits that agree closely make a move of 0.28 standard
# errors significant (a user's review), while the planted defects move it by 4-39 standard errors
# (tests/benchmarks/bench_refuters.py, 40 seeds; docs/benchmarks.md).
NEGLIGIBLE_REFUTER_MOVE = 0.5
# With min_placebo_pvalue off, a placebo p-value under this is still a warning.
UNGATED_PLACEBO_WARNING = 0.01

# The slow checks' relative costs, for evaluate's progress: in nuisance refits on every row (the
# placebo's forest counts as one; the data subset refits five times on half the rows).
# Heterogeneity and uplift took under a tenth of a refit in the demo (5,000 rows); the graph
# checks count only when a graph was given.
# The held-out ranking's forest (400 trees on half the rows) costs about two placebo forests.
EVALUATE_STEPS = {"refuters": 7.5, "heterogeneity": 2, "graph checks": 2}


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the publishing gate; None switches a check off.

    max_share_outside_overlap : the share of rows whose estimated propensity lies outside
        [0.05, 0.95] may be at most this (binary treatment); for a continuous treatment, the
        share whose estimated Var(T | X) is under a tenth of its mean.
    min_placebo_pvalue : the placebo effect's p-value must be at least this; a smaller one
        means the pipeline finds effects where there are none.
    min_refuter_pvalue : the random-common-cause and data-subset refuters' p-values must be at
        least this (their ATE must not move more than noise explains).
    min_robustness_value : the robustness value (confounding strength that would make the
        interval of the average effect reach 0) must be at least this (off).
    require_heterogeneity : the calibration test must find heterogeneity at the 5% level (off).
    max_abs_smd : the largest absolute standardized mean difference allowed after
        inverse-propensity weighting (binary treatment; the largest correlation with T for a
        continuous one). Off by default: each covariate over 0.1, raw or weighted, is a warning.
    min_outcome_r2 : the outcome model's mean out-of-fold R^2 must be at least this (off).
    max_outcome_r2 : and at most this (0.999): an outcome model that predicts the outcome almost
        perfectly out of fold usually sees the outcome itself (a leak into the covariates), which
        also absorbs the effect. Over 0.95 is always a warning; switch the gate off for covariates
        that truly predict the outcome so well (a pre-period outcome with little noise).
    require_significant_ate : the ATE interval must exclude zero (off).
    min_graph_pvalue : every independence the declared causal graph implies must have a
        Holm-adjusted p-value of at least this (components/graph_checks.py); a smaller one means
        the data contradict the graph that justified the adjustment set. On by default at 0.01,
        as the placebo: it only acts when a run declares a graph, which asks for its assumptions
        to be checked, and Holm's correction keeps a true graph's chance of failing it at most
        1% however many independences it implies. Switch it off for a graph meant as an
        approximation on data large enough to see its small departures.
    """

    max_share_outside_overlap: float | None = OVERLAP_WARNING_SHARE  # what CausalForestDML warns over
    min_placebo_pvalue: float | None = 0.01
    min_refuter_pvalue: float | None = 0.01
    min_robustness_value: float | None = None
    max_abs_smd: float | None = None
    min_outcome_r2: float | None = None
    max_outcome_r2: float | None = LEAK_GATE_R2
    require_significant_ate: bool = False
    require_heterogeneity: bool = False
    min_graph_pvalue: float | None = 0.01

    def __post_init__(self):
        # A threshold outside its statistic's range passes or fails every model whatever it is.
        for key, (low, high, what) in _GATE_RANGES.items():
            value = getattr(self, key)
            if value is not None and not low <= value <= high:
                must = f"be {what}" if value == value else "be a number"  # NaN: not a matter of range
                raise config.ConfigError(key, f"must {must} (or 'off'), got {value:g}")
        if None not in (self.min_outcome_r2, self.max_outcome_r2) and self.min_outcome_r2 > self.max_outcome_r2:
            raise config.ConfigError("max_outcome_r2", f"must be at least min_outcome_r2 ({self.min_outcome_r2:g}), "
                                                       f"got {self.max_outcome_r2:g}: no model passes both")

    @classmethod
    def from_dict(cls, values: dict) -> "GateConfig":
        """Settings from values or strings: a number, or 'off' / None to switch a check off;
        true / false for the require_ settings."""
        parsed = {}
        for key, value in config.check_keys(cls, values, "gate").items():
            if key.startswith("require_"):
                flag = value if isinstance(value, bool) else {"1": True, "true": True, "yes": True, "0": False,
                                                              "false": False, "no": False}.get(str(value).lower())
                if flag is None:
                    raise config.ConfigError(key, f"must be true or false, got {value!r}")
                parsed[key] = flag
            elif value is None or str(value).lower() in ("none", "off"):
                parsed[key] = None
            else:
                try:
                    parsed[key] = float(value)
                except ValueError:
                    raise config.ConfigError(key, f"must be a number or 'off', got {value!r}") from None
        return cls(**parsed)

    @classmethod
    def from_json(cls, text: str) -> "GateConfig":
        return cls.from_dict(config.parse_json(text, "gate"))

    def to_json(self) -> str:
        return config.to_json(self)


_PROBABILITY = (0.0, 1.0, "between 0 and 1")
# A minimum of 1 fails every model: p-values and the robustness value stay below 1 (a review).
_BELOW_ONE = (0.0, np.nextafter(1.0, 0.0), "at least 0 and below 1")
_GATE_RANGES = {"max_share_outside_overlap": _PROBABILITY, "min_placebo_pvalue": _BELOW_ONE,
                "min_refuter_pvalue": _BELOW_ONE, "min_graph_pvalue": _BELOW_ONE,
                "min_robustness_value": _BELOW_ONE, "max_abs_smd": (0.0, np.inf, "at least 0"),
                "min_outcome_r2": (-np.inf, 1.0, "at most 1"), "max_outcome_r2": (-np.inf, 1.0, "at most 1")}


def crump_threshold(e: np.ndarray) -> float:
    """The Crump, Hotz, Imbens and Mitnik (2009) trimming threshold alpha: keep rows with
    alpha <= e <= 1 - alpha, where g = 1 / (e (1 - e)) solves gamma = 2 E[g | g <= gamma] with
    gamma = 1 / (alpha (1 - alpha)); 0 when no trimming improves the variance bound."""
    g = np.sort(1 / (e * (1 - e)))
    if g[-1] <= 2 * g.mean():
        return 0.0
    cum_mean = np.cumsum(g) / np.arange(1, len(g) + 1)
    k = np.flatnonzero(g <= 2 * cum_mean)[-1]
    gamma = 2 * cum_mean[k]
    return float(0.5 - np.sqrt(max(0.25 - 1 / gamma, 0.0)))


def overlap(t_hat: np.ndarray, T: np.ndarray) -> dict:
    lo, hi = OVERLAP_BOUNDS
    e = np.clip(t_hat, 1e-6, 1 - 1e-6)
    outside = outside_propensity_bounds(t_hat)
    alpha = crump_threshold(e)
    bins = np.linspace(0, 1, 21)
    return {"propensity_min": float(t_hat.min()), "propensity_max": float(t_hat.max()),
            "share_outside": float(outside.mean()), "bounds": [lo, hi],
            "crump_alpha": alpha, "crump_share_trimmed": float(np.mean((e < alpha) | (e > 1 - alpha))),
            "histogram": {"edges": bins.tolist(),
                          "treated": np.histogram(t_hat[T == 1], bins)[0].tolist(),
                          "control": np.histogram(t_hat[T == 0], bins)[0].tolist()}}


def treatment_variance_overlap(t_var: np.ndarray, t_res: np.ndarray, sample_weight: np.ndarray | None = None) -> dict:
    """A continuous treatment's overlap: where Var(T | X) is small, T hardly varies once X is known,
    the data say little about the effect there and the rows' debiasing weights t~ / V are large.
    V over the (weighted) mean t~^2, its low quantiles, and the share of rows under the bound."""
    ratio = treatment_variance_ratio(t_var, t_res, sample_weight)
    edges = np.linspace(0, max(float(np.quantile(ratio, 0.99)), 2 * MIN_TREATMENT_VARIANCE_SHARE), 31)
    counts = np.histogram(np.minimum(ratio, edges[-1]), edges)[0]  # the top 1% in the last bin
    return {"measure": "estimated Var(T | X) over the mean squared treatment residual",
            "ratio_min": float(ratio.min()), "ratio_quantiles": {str(q): float(np.quantile(ratio, q))
                                                                  for q in (0.01, 0.05, 0.5)},
            "share_outside": float(np.mean(ratio < MIN_TREATMENT_VARIANCE_SHARE)),
            "bound": MIN_TREATMENT_VARIANCE_SHARE,
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def _smd(Z: np.ndarray, T: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean difference between arms over the unweighted pooled standard deviation."""
    m1 = np.average(Z[T == 1], axis=0, weights=w[T == 1])
    m0 = np.average(Z[T == 0], axis=0, weights=w[T == 0])
    pooled = np.sqrt((Z[T == 1].var(0, ddof=1) + Z[T == 0].var(0, ddof=1)) / 2)
    # Constant within each arm: the arms' own spread is 0, so scale by the whole sample's (a column
    # that separates the arms is the worst imbalance, not none); 0 only for a column constant overall.
    scale = np.where(pooled > 0, pooled, Z.std(0, ddof=1))
    return np.where(scale > 0, (m1 - m0) / np.where(scale > 0, scale, 1), 0.0)


def balance(data: ValidatedData, t_hat: np.ndarray | None = None) -> dict:
    """Standardized mean differences per covariate, raw and weighted by the inverse estimated
    propensity (binary), or correlations with T (continuous)."""
    a, spec = data.arrays(), data.spec
    columns = spec.covariates + spec.controls
    # The rows that take part in the estimate (rows of weight 0 do not), with their weights.
    Z = a["X"] if a["W"] is None else np.hstack([a["X"], a["W"]])
    rows, Z, T, *e_hat, _ = weighted_rows(a["sample_weight"], Z, a["T"], *([] if t_hat is None else [t_hat]))
    weighted = None
    if spec.binary:
        stat, kind = _smd(Z, T, np.ones(len(T))), "smd"
        if e_hat:
            clip = propensity_clip(a["T"], MIN_PROPENSITY, a["sample_weight"])  # the model's clip
            e = np.clip(e_hat[0], clip, 1 - clip)
            # The estimate's own weights: inverse propensity times the rows' weights.
            weighted = _smd(Z, T, rows * np.where(T == 1, 1 / e, 1 / (1 - e)))
    else:
        # A constant column (accepted, with a warning) has no correlation: 0, not NaN.
        stat = np.array([np.corrcoef(Z[:, j], T)[0, 1] if np.ptp(Z[:, j]) > 0 else 0.0 for j in range(Z.shape[1])])
        kind = "correlation"
    values = {c: float(v) for c, v in zip(columns, stat)}
    out = {"statistic": kind, "values": values, "max_abs": float(np.max(np.abs(stat))),
           "over_threshold": [c for c, v in values.items() if abs(v) > SMD_WARNING]}
    if weighted is not None:
        out["weighted_values"] = {c: float(v) for c, v in zip(columns, weighted)}
        out["weighted_max_abs"] = float(np.max(np.abs(weighted)))
    return out


def evaluate(data: ValidatedData, residuals: Residuals, estimate: Estimate, gate: GateConfig, seed: int,
             nuisance: NuisanceConfig | None = None, progress: bool | None = False,
             graph: CausalGraph | None = None, refit_workers: int | None = None) -> dict:
    """Every check and the gate's verdict, as one JSON-ready dict. `nuisance` is how the refuters
    refit the nuisance models: the run's own settings (default: NuisanceConfig's defaults).
    `progress`: progress on stderr (`tauforge.kernels.progress`) counting every refit of the
    refuters, with an estimate of the time left. `graph`: the run's declared causal graph (None:
    none was given), whose implications are tested on `data`'s table and which the report draws.
    `refit_workers`: processes the refuters' nine refits share (None: `refuters.default_workers`:
    $TAUFORGE_REFIT_WORKERS, else from 50,000 rows one per usable CPU that the free memory allows;
    each holds a copy of the data)."""
    # Imported here: they load scipy.stats (0.6 s), and a run's settings (GateConfig) are checked
    # by the command line before any task starts.
    from . import refuters
    from .sensitivity import sensitivity_report

    nuisance = nuisance or NuisanceConfig()
    a = data.arrays()
    groups = a["groups"]  # standard errors count the data's groups as independent, not its rows
    cate = estimate.oob_cate
    y_res, t_res, t_hat = residuals.column("y_res"), residuals.column("t_res"), residuals.column("t_hat")
    t_var = residuals.column("t_var")
    summary = estimate.summary
    costs = EVALUATE_STEPS if graph is not None else {**EVALUATE_STEPS, "graph checks": 0}
    with progress_steps("evaluate", costs, progress) as steps:
        n_inputs = len(data.spec.covariates) + len(data.spec.controls)
        workers = refuters.default_workers(len(cate), n_inputs) if refit_workers is None else refit_workers
        refit = refuters.EffectRefit(data, nuisance, seed, cate, summary.get("forest_params"), on_refit=steps.update,
                                     workers=workers)
        result = {
            "effect": {**{k: summary[k] for k in ("estimand", "method", "ate", "ate_stderr", "ate_lower", "ate_upper",
                                                    "ate_interval", "alpha", "variance_weighted_effect",
                                                    "variance_weighted_stderr", "n_groups") if k in summary},
                       "cate_mean": float(cate.mean()), "cate_std": float(cate.std()),
                       "cate_quantiles": {str(q): float(np.quantile(cate, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                       "cate_histogram": _histogram(cate)},
            "nuisance": {k: mean_score(v) for k, v in residuals.scores.items()},
            "balance": balance(data, t_hat if data.spec.binary else None),
            "outcome_copy": outcome_copy(data),
            "refuters": steps.run("refuters", refuters.run_refuters, refit, {
                "placebo": refuters.placebo_refuter(refit, seed),
                "random_common_cause": refuters.random_common_cause_refuter(refit, summary["ate"], seed),
                "data_subset": refuters.data_subset_refuter(refit, summary["ate"], seed)}),
            # Weighted as the reported effect is: its bounds must be about that number.
            "sensitivity": sensitivity_report(cate, y_res, t_res, t_var, summary["alpha"],
                                              sample_weight=a["sample_weight"], groups=groups),
            # On a held-out half (heterogeneity.held_out_cate), weighted as the reported effect is
            # (as grf weights them): the population it is about.
            "heterogeneity": steps.run("heterogeneity", held_out_checks, data, y_res, t_res, t_var,
                                       summary.get("forest_params"), seed, cate),
            "graph_checks": steps.run("graph checks", graph_checks.check_graph, graph, data.table, seed,
                                      groups=groups),
            "graph": card_section(graph, data.spec),
            "data_warnings": list(data.warnings),
            "gate_config": dataclasses.asdict(gate),
        }
        held = result["heterogeneity"].pop("held_out")
        result["uplift"] = uplift_section(data, held["cate"], held["scores"], seed, held["rows"], held["label"])
    # Rows of weight 0 take no part in the overlap checks, as in the estimate.
    if data.spec.binary:
        _, e_hat, T, _ = weighted_rows(a["sample_weight"], t_hat, a["T"])
        result["overlap"] = overlap(e_hat, T)
        # A trial's propensity is its design, known, not estimated: extreme, it widens the interval,
        # it does not threaten identification.
        result["overlap"]["declared"] = data.spec.assignment == "randomized"
    else:
        rows, counted_var, counted_res, _ = weighted_rows(a["sample_weight"], t_var, t_res)
        result["treatment_variance"] = treatment_variance_overlap(counted_var, counted_res, rows)
    result["verdict"] = verdict(result, gate)
    return result


def outcome_copy(data: ValidatedData) -> dict:
    """The covariate or control whose ranks follow the outcome's most closely, and how closely:
    {'column', 'rank_correlation'} (the absolute Spearman correlation; 0 for a constant column,
    column None without any)."""
    from scipy.stats import rankdata

    columns = [*data.spec.covariates, *data.spec.controls]
    if not columns:
        return {"column": None, "rank_correlation": 0.0}
    y = rankdata(data.table[data.spec.outcome].to_numpy(np.float64))
    Z = rankdata(data.table[columns].to_numpy(np.float64), axis=0)
    y, Z = y - y.mean(), Z - Z.mean(axis=0)
    scale = np.sqrt((Z ** 2).sum(axis=0) * (y ** 2).sum())
    r = np.abs(Z.T @ y) / np.where(scale > 0, scale, np.inf)
    j = int(np.argmax(r))
    return {"column": columns[j], "rank_correlation": float(r[j])}


def held_out_checks(data: ValidatedData, y_res: np.ndarray, t_res: np.ndarray, t_var: np.ndarray,
                    forest_params: dict | None, seed: int, oob_cate: np.ndarray) -> dict:
    """The heterogeneity checks (calibration, RATE, GATES) on the held-out half of the rows
    (`heterogeneity.held_out_cate`), with what the uplift section reads under 'held_out' (its rows,
    CATE and debiased scores). Where the other half cannot grow a forest (a few groups), they read
    the out-of-bag CATE of every row, and the ranking says so."""
    from . import heterogeneity
    from .refuters import refit_forest_params

    a = data.arrays()
    try:
        rows, cate = heterogeneity.held_out_cate(a["X"], y_res, t_res, forest_params, seed, a["groups"],
                                                 a["sample_weight"])
        trees = refit_forest_params(forest_params, heterogeneity.HELD_OUT_TREES, seed)["n_estimators"]
        ranking = (f"held out: a forest of {trees} trees grown on the other {int((~rows).sum())} rows ranks these "
                   f"{int(rows.sum())}")
        label = "held-out CATE"
    except ValueError as exc:  # a review: 4 groups failed evaluate here
        rows, cate, label = np.ones(len(oob_cate), bool), oob_cate, "out-of-bag CATE"
        ranking = (f"out of bag, on every row: half the rows could not grow a forest ({exc}); these p-values are "
                   "too small (the rows' own out-of-bag CATE)")
    groups, weight = _held_rows(a, rows)
    scores = debiased_scores(cate, y_res[rows], t_res[rows], t_var[rows])
    return {"ranking": ranking,
            "rows": int(rows.sum()),
            "calibration": heterogeneity.calibration_test(y_res[rows], t_res[rows], cate, groups, weight),
            "rate": heterogeneity.autoc(cate, scores, seed=seed, groups=groups, sample_weight=weight),
            "gates": heterogeneity.gates(cate, scores, groups=groups, sample_weight=weight),
            "held_out": {"rows": rows, "cate": cate, "scores": scores, "label": label}}


def _held_rows(a: dict, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The held-out rows' groups (codes from 0, as the checks count them) and weights."""
    groups = None if a["groups"] is None else np.unique(a["groups"][rows], return_inverse=True)[1]
    return groups, None if a["sample_weight"] is None else a["sample_weight"][rows]


def uplift_section(data: ValidatedData, cate: np.ndarray, scores: np.ndarray, seed: int,
                   rows: np.ndarray | None = None, ranking: str = "CATE") -> dict:
    """The ranking by `cate` (named `ranking`) of `rows` (all rows if None) judged by their
    debiased scores (`uplift.doubly_robust`), and, when the treatment was randomized, CausalML's
    classic normalized AUUC and Qini score from outcome and treatment alone (which measure effects
    only then)."""
    a = data.arrays()
    if rows is not None:
        groups, weight = _held_rows(a, rows)
        a = {**a, "groups": groups, "sample_weight": weight, "Y": a["Y"][rows], "T": a["T"][rows]}
    section = {"ranking": ranking,
               "effect_scores": "debiased (AIPW) scores of that CATE",
               **uplift.doubly_robust(cate, scores, seed=seed, groups=a["groups"], sample_weight=a["sample_weight"])}
    if data.spec.binary and data.spec.assignment == "randomized":
        with np.errstate(divide="ignore", invalid="ignore"):
            scores_ = {"auuc": uplift.auuc_score(a["Y"], a["T"], cate), "qini": uplift.qini_score(a["Y"], a["T"], cate)}
        section["classic"] = {"definition": "CausalML's auuc_score and qini_score (normalized), from outcome and "
                                            "treatment: valid because the treatment was randomized", **scores_}
        if not all(np.isfinite(v) for v in scores_.values()):  # NaN was written into the card (a review)
            section["classic"].update(dict.fromkeys(scores_), note="undefined: normalized by the overall lift, "
                                                                   "which is 0 in these data")
    return section


def verdict(result: dict, gate: GateConfig) -> dict:
    """{'passed', 'reasons' (why it failed), 'warnings' (recorded, not fatal)}."""
    reasons, warnings = [], [f"data: {w}" for w in result.get("data_warnings", [])]
    # Positivity: a binary treatment's estimated propensity, or a continuous one's Var(T | X).
    ov, tv, text = result.get("overlap"), result.get("treatment_variance"), None
    if ov is not None:
        lo, hi = ov["bounds"]
        share = ov["share_outside"]
        if ov.get("declared") and share > 0:
            warnings.append(f"positivity: the trial's declared propensity {ov['propensity_min']:g} lies outside "
                            f"[{lo}, {hi}]: known, so not gated, but its large weights widen the intervals")
        elif not ov.get("declared"):
            text = f"{100 * share:.1f}% of rows have an estimated propensity outside [{lo}, {hi}]"
    elif tv is not None:
        share = tv["share_outside"]
        text = (f"{100 * share:.1f}% of rows have an estimated treatment variance Var(T | X) under "
                f"{tv['bound']:g} of its mean: there the treatment hardly varies given the covariates")
    if text is not None:
        if gate.max_share_outside_overlap is not None and share > gate.max_share_outside_overlap:
            reasons.append(f"overlap: {text} (gate allows {100 * gate.max_share_outside_overlap:.1f}%)")
        elif share > 0:
            warnings.append(f"positivity: {text}")
    ref = result["refuters"]
    p = ref["placebo"]["p_value"]
    if gate.min_placebo_pvalue is not None and p < gate.min_placebo_pvalue:
        reasons.append(f"placebo: a permuted treatment shows an effect ({ref['placebo']['effect']:.4g}, "
                       f"p = {p:.3g} < {gate.min_placebo_pvalue})")
    elif gate.min_placebo_pvalue is None and p < UNGATED_PLACEBO_WARNING:  # switched off, not unseen
        warnings.append(f"placebo: a permuted treatment shows an effect ({ref['placebo']['effect']:.4g}, "
                        f"p = {p:.3g}); the gate's placebo check is off")
    from .refuters import data_subset_label

    stderr = result["effect"].get("ate_stderr", 0.0)
    for name, what in (("random_common_cause", "a random common cause"),
                       ("data_subset", data_subset_label(ref["data_subset"]))):
        r = ref[name]
        if gate.min_refuter_pvalue is not None and r["p_value"] < gate.min_refuter_pvalue:
            verb = "moves" if name == "random_common_cause" else "move"  # "50% data subsets move"
            text = (f"{name.replace('_', ' ')}: {what} {verb} the ATE by {r['change']:.4g} "
                    f"(p = {r['p_value']:.3g} < {gate.min_refuter_pvalue})")
            if abs(r["change"]) <= NEGLIGIBLE_REFUTER_MOVE * stderr:
                warnings.append(f"{text}, within {NEGLIGIBLE_REFUTER_MOVE} of the ATE's standard error: negligible")
            else:
                reasons.append(text)
    rv = result["sensitivity"]["robustness_value"]
    if gate.min_robustness_value is not None and not rv >= gate.min_robustness_value:  # NaN fails too
        reasons.append("sensitivity: " + (
            "the robustness value is undefined (NaN)" if rv != rv else
            "the interval of the average effect contains 0 without any confounder (robustness value 0)" if rv <= 0
            else f"a confounder explaining {100 * rv:.1f}% of the outcome's residual variance and of the effect's "
                 "debiasing weights' (c_y = c_t, Chernozhukov et al. 2022) would make the effect insignificant")
            + f" (gate needs {100 * gate.min_robustness_value:.1f}%)")
    cal = result["heterogeneity"]["calibration"]
    if gate.require_heterogeneity and not cal["differential_pvalue"] < 0.05:  # NaN (constant CATE) fails too
        reasons.append(f"heterogeneity: the calibration test finds none (differential coefficient "
                       f"{cal['differential_forest_prediction']:.3g}, p = {cal['differential_pvalue']:.3g})")
    # A held-out CATE that ranks rows against their debiased scores is chance (without
    # heterogeneity 1 in 40 for each of the two checks, about 1 in 20 for either) or a forest that
    # fits noise (a review: on the out-of-bag CATE then read, small tables anti-ranked a constant
    # effect, z -4 at 40 rows). A constant CATE has no z (NaN): no warning.
    rate = result["heterogeneity"]["rate"]
    against = [f"{what} {value:.3g} (z = {value / se:.2f})" for what, value, se in (
        ("the calibration test's differential coefficient", cal["differential_forest_prediction"],
         cal["differential_stderr"]), ("RATE (AUTOC)", rate["autoc"], rate["stderr"]))
        if se > 0 and value / se < -ANTI_RANKING_Z]
    if against:
        warnings.append(f"heterogeneity: the held-out CATE ranks rows against their effects: {'; '.join(against)}: "
                        "chance or a forest that fits noise, not heterogeneity; do not read the GATES or the uplift "
                        "curves as an effect's spread")
    bal = result["balance"]
    weighted = bal.get("weighted_values")  # binary treatment: what the propensity weights leave
    trial = (ov or {}).get("declared")  # a trial's weights are one constant: nothing to balance with
    if bal["over_threshold"]:
        warnings.append(f"balance: |{bal['statistic']}| > {SMD_WARNING} for {', '.join(bal['over_threshold'][:10])}"
                        + (": chance imbalance between the trial's arms (its declared propensity weighs every "
                           "row alike); the nuisance models adjust for it" if trial else
                           " before weighting" if weighted else ""))
    left = [c for c, v in (weighted or {}).items() if abs(v) > SMD_WARNING]
    if left and not trial:
        warnings.append(f"balance: |smd| > {SMD_WARNING} after inverse-propensity weighting for "
                        f"{', '.join(left[:10])}: the propensity model does not balance these")
    # The gate reads the weighted SMD where there is one: raw imbalance is what the nuisance
    # models adjust for, imbalance left after weighting is what they failed to.
    worst, stat = ((bal["weighted_max_abs"], "weighted smd") if weighted else (bal["max_abs"], bal["statistic"]))
    if gate.max_abs_smd is not None and worst > gate.max_abs_smd:
        reasons.append(f"balance: max |{stat}| {worst:.3f} exceeds {gate.max_abs_smd}")
    r2 = result["nuisance"].get("y_r2")
    if r2 is not None and r2 < 0:
        warnings.append(f"nuisance: the outcome model's out-of-fold R^2 is {r2:.3f}, worse than the outcome's mean: "
                        "too few rows for it, or covariates that do not predict the outcome")
    if gate.min_outcome_r2 is not None and r2 is not None and r2 < gate.min_outcome_r2:
        reasons.append(f"nuisance: outcome model out-of-fold R^2 {r2:.3f} < {gate.min_outcome_r2}")
    leak = (f"nuisance: the outcome model explains {100 * r2:.2f}% of the outcome out of fold; check the "
            "covariates for the outcome or a copy of it (a leak)") if r2 is not None else ""
    if gate.max_outcome_r2 is not None and r2 is not None and r2 > gate.max_outcome_r2:
        reasons.append(f"{leak} (gate allows {100 * gate.max_outcome_r2:g}%; max_outcome_r2=off if the covariates "
                       "truly predict the outcome so well)")
    elif r2 is not None and r2 > LEAK_WARNING_R2:
        warnings.append(leak)
    copy = result.get("outcome_copy") or {}
    if copy.get("rank_correlation", 0.0) > LEAK_RANK_CORRELATION:
        text = (f"nuisance: {copy['column']!r} ranks the rows as the outcome does (rank correlation "
                f"{copy['rank_correlation']:.5f}): a copy of the outcome among the covariates (a leak)")
        (reasons if gate.max_outcome_r2 is not None else warnings).append(
            text + (" (max_outcome_r2=off if it truly is a covariate)" if gate.max_outcome_r2 is not None else ""))
    checks = result.get("graph_checks", {})
    if checks.get("given"):
        if checks["min_adjusted_p_value"] is None:
            warnings.append("graph: it implies no independence testable on the data's columns; nothing was checked")
        elif gate.min_graph_pvalue is not None:
            contradicted = graph_checks.rejected(checks, gate.min_graph_pvalue)
            if contradicted:
                shown = "; ".join(f"{t['statement']} (Holm-adjusted p = {t['adjusted_p_value']:.2g})"
                                  for t in contradicted[:3])
                more = f" and {len(contradicted) - 3} more" if len(contradicted) > 3 else ""
                reasons.append(f"graph: the data contradict {len(contradicted)} of the {len(checks['statements'])} "
                               f"independences the graph implies: {shown}{more} (gate needs p >= "
                               f"{gate.min_graph_pvalue}); an edge or a common cause between them is missing")
    eff = result["effect"]
    if not all(math.isfinite(eff[k]) for k in ("ate", "ate_lower", "ate_upper")):
        reasons.append("effect: the ATE or its interval is not finite")
    elif gate.require_significant_ate and eff["ate_lower"] <= 0 <= eff["ate_upper"]:
        reasons.append(f"effect: the ATE interval [{eff['ate_lower']:.4g}, {eff['ate_upper']:.4g}] contains 0")
    return {"passed": not reasons, "reasons": reasons, "warnings": warnings}


def _histogram(values: np.ndarray, bins: int = 30) -> dict:
    counts, edges = np.histogram(values, histogram_edges(values.min(), values.max(), bins))
    return {"edges": edges.tolist(), "counts": counts.tolist()}


# ----------------------------------------------------------------------------- KFP components
@component
def evaluate_model(dataset: Input[Dataset], residuals: Input[Dataset], estimate: Input[Artifact],
                   gate: str, seed: int, n_folds: int, model_y: str, model_t: str, evaluation: Output[Artifact],
                   report: Output[HTML], metrics: Output[Metrics], graph: str = "", model_name: str = "",
                   run_id: str = "", reweight_nuisance: bool = True) -> bool:
    """Run the checks, write them (JSON, HTML report, KFP metrics); return whether the gate passed.
    `graph`: the run's causal graph (DOT or GML text, empty for none), whose implications are
    tested; `model_name` and `run_id` name the model and the run in the report's header."""
    import json

    from tauforge.components.data import load_profile, load_validated
    from tauforge.components.estimate import Estimate
    from tauforge.components.evaluate import GateConfig, evaluate, metric_values
    from tauforge.components.graph import CausalGraph
    from tauforge.components.nuisance import NuisanceConfig, Residuals
    from tauforge.components.report import ReportHeader, render_report
    from tauforge.kernels.serialization import finite_json

    data = load_validated(dataset.path)
    result = evaluate(data, Residuals.load(residuals.path),
                      Estimate.load(estimate.path), GateConfig.from_json(gate), int(seed),
                      NuisanceConfig(model_y, model_t, int(n_folds), reweight_nuisance), progress=True,
                      graph=CausalGraph.parse(graph) if graph else None)
    with open(evaluation.path, "w") as f:
        json.dump(finite_json(result), f, indent=2)
    header = ReportHeader(model=model_name, run_id=run_id, data_fingerprint=load_profile(dataset.path)["fingerprint"],
                          treatment=data.spec.treatment, outcome=data.spec.outcome)
    with open(report.path, "w") as f:
        f.write(render_report(result, header))
    for key, value in metric_values(result).items():
        metrics.log_metric(key, value)
    v = result["verdict"]
    print("tauforge: gate " + ("passed" if v["passed"] else "FAILED: " + "; ".join(v["reasons"])), flush=True)
    return bool(v["passed"])


def metric_values(result: dict) -> dict[str, float]:
    """The scalar results shown as KFP Metrics, the undefined (NaN) left out: KFP's metadata, a
    protobuf Struct, has no NaN, and one failed the task after the gate passed (a constant CATE's
    calibration and robustness value). evaluation.json and the report keep them."""
    out = {k: float(result["effect"][k]) for k in ("ate", "ate_stderr", "ate_lower", "ate_upper", "cate_std")}
    out.update({f"nuisance_{k}": v for k, v in result["nuisance"].items()})
    for name, r in result["refuters"].items():
        out[f"refuter_{name}_p_value"] = r["p_value"]
    out[f"balance_max_abs_{result['balance']['statistic']}"] = result["balance"]["max_abs"]
    if "weighted_max_abs" in result["balance"]:
        out["balance_weighted_max_abs_smd"] = result["balance"]["weighted_max_abs"]
    out["robustness_value"] = result["sensitivity"]["robustness_value"]
    cal = result["heterogeneity"]["calibration"]
    out["calibration_mean"] = cal["mean_forest_prediction"]
    out["calibration_differential"] = cal["differential_forest_prediction"]
    out["calibration_differential_p_value"] = cal["differential_pvalue"]
    out["autoc"] = result["heterogeneity"]["rate"]["autoc"]
    out["auuc"], out["qini"] = result["uplift"]["auuc"], result["uplift"]["qini"]
    if result["graph_checks"].get("min_adjusted_p_value") is not None:
        out["graph_min_adjusted_p_value"] = result["graph_checks"]["min_adjusted_p_value"]
    if "overlap" in result:
        out["propensity_share_outside"] = result["overlap"]["share_outside"]
        out["crump_share_trimmed"] = result["overlap"]["crump_share_trimmed"]
    if "treatment_variance" in result:
        out["treatment_variance_share_outside"] = result["treatment_variance"]["share_outside"]
    out["gate_passed"] = float(result["verdict"]["passed"])
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}
