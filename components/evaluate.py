"""Checks a causal estimate before it is published, and the gate that decides.

First version (a later issue adds sensitivity, more refuters and heterogeneity tests):
  overlap   the estimated propensities' range and share outside [0.05, 0.95]
  balance   standardized mean difference of each covariate between arms (binary treatment), or its
            correlation with the treatment (continuous)
  nuisance  the out-of-fold scores of the nuisance models
  placebo   the treatment replaced by a random permutation of itself: the effect must vanish
  effect    the ATE with its interval, and the distribution of the out-of-bag CATE
The gate compares these with thresholds (`GateConfig`) and returns a verdict with its reasons.
"""

import dataclasses
import json
import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from kernels.dml import partially_linear_ate

from ._kfp import HTML, Artifact, Dataset, Input, Metrics, Model, Output, component
from .data import ValidatedData
from .estimate import Estimate
from .nuisance import Residuals

OVERLAP_BOUNDS = (0.05, 0.95)
SMD_WARNING = 0.1


@dataclass
class GateConfig:
    """Thresholds of the publishing gate; None switches a check off.

    max_share_outside_overlap : the share of rows whose estimated propensity lies outside
        [0.05, 0.95] may be at most this (binary treatment).
    min_placebo_pvalue : the placebo effect's p-value must be at least this; a smaller one
        means the pipeline finds effects where there are none.
    max_abs_smd : the largest absolute standardized mean difference allowed (off by default:
        imbalance is what the nuisance models adjust for; it is reported as a warning).
    min_outcome_r2 : the outcome model's mean out-of-fold R^2 must be at least this (off).
    require_significant_ate : the ATE interval must exclude zero (off).
    """

    max_share_outside_overlap: float | None = 0.10
    min_placebo_pvalue: float | None = 0.01
    max_abs_smd: float | None = None
    min_outcome_r2: float | None = None
    require_significant_ate: bool = False

    @classmethod
    def from_dict(cls, values: dict) -> "GateConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise ValueError(f"unknown gate setting(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
        parsed = {}
        for key, value in values.items():
            if key == "require_significant_ate":
                parsed[key] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif value is None or str(value).lower() in ("none", "off"):
                parsed[key] = None
            else:
                try:
                    parsed[key] = float(value)
                except ValueError:
                    raise ValueError(f"gate setting {key} must be a number or 'off', got {value!r}") from None
        return cls(**parsed)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def overlap(t_hat: np.ndarray, T: np.ndarray) -> dict:
    lo, hi = OVERLAP_BOUNDS
    outside = (t_hat < lo) | (t_hat > hi)
    bins = np.linspace(0, 1, 21)
    return {"propensity_min": float(t_hat.min()), "propensity_max": float(t_hat.max()),
            "share_outside": float(outside.mean()), "bounds": [lo, hi],
            "histogram": {"edges": bins.tolist(),
                          "treated": np.histogram(t_hat[T == 1], bins)[0].tolist(),
                          "control": np.histogram(t_hat[T == 0], bins)[0].tolist()}}


def balance(data: ValidatedData) -> dict:
    """Raw standardized mean differences (binary) or correlations with T (continuous) per covariate."""
    a, spec = data.arrays(), data.spec
    columns = spec.covariates + spec.controls
    Z = a["X"] if a["W"] is None else np.hstack([a["X"], a["W"]])
    T = a["T"]
    if spec.binary:
        m1, m0 = Z[T == 1].mean(0), Z[T == 0].mean(0)
        pooled = np.sqrt((Z[T == 1].var(0, ddof=1) + Z[T == 0].var(0, ddof=1)) / 2)
        stat = np.where(pooled > 0, (m1 - m0) / np.where(pooled > 0, pooled, 1), 0.0)
        kind = "smd"
    else:
        stat = np.array([np.corrcoef(Z[:, j], T)[0, 1] for j in range(Z.shape[1])])
        kind = "correlation"
    values = {c: float(v) for c, v in zip(columns, stat)}
    return {"statistic": kind, "values": values, "max_abs": float(np.max(np.abs(stat))),
            "over_threshold": [c for c, v in values.items() if abs(v) > SMD_WARNING]}


def placebo_refuter(data: ValidatedData, residuals: Residuals, seed: int) -> dict:
    """Effect of a permuted treatment on the outcome residuals. A permuted treatment is
    independent of everything, so its propensity is its mean and the partially linear estimate
    must be zero up to noise; the p-value tests that."""
    a = data.arrays()
    T_placebo = np.random.default_rng([seed, 7]).permutation(a["T"])
    effect, stderr = partially_linear_ate(residuals.column("y_res"), T_placebo - T_placebo.mean(),
                                          a["sample_weight"])
    p_value = float(2 * norm.sf(abs(effect) / stderr)) if stderr > 0 else 1.0
    return {"effect": effect, "stderr": stderr, "p_value": p_value}


def evaluate(data: ValidatedData, residuals: Residuals, estimate: Estimate, gate: GateConfig, seed: int) -> dict:
    """Every check of this module and the gate's verdict, as one JSON-ready dict."""
    a = data.arrays()
    nuisance = {k: float(np.mean(v)) for k, v in residuals.scores.items()}
    cate = estimate.oob_cate
    result = {
        "effect": {**{k: estimate.summary[k] for k in ("estimand", "method", "ate", "ate_stderr", "ate_lower",
                                                         "ate_upper", "alpha")},
                   "cate_mean": float(cate.mean()), "cate_std": float(cate.std()),
                   "cate_quantiles": {str(q): float(np.quantile(cate, q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)},
                   "cate_histogram": _histogram(cate)},
        "nuisance": nuisance,
        "balance": balance(data),
        "placebo": placebo_refuter(data, residuals, seed),
        "gate_config": dataclasses.asdict(gate),
    }
    if data.spec.binary:
        result["overlap"] = overlap(residuals.column("t_hat"), a["T"])
    result["verdict"] = verdict(result, gate)
    return result


def verdict(result: dict, gate: GateConfig) -> dict:
    """{'passed', 'reasons' (why it failed), 'warnings' (recorded, not fatal)}."""
    reasons, warnings = [], []
    ov = result.get("overlap")
    if ov is not None:
        lo, hi = ov["bounds"]
        share = ov["share_outside"]
        text = f"{100 * share:.1f}% of rows have an estimated propensity outside [{lo}, {hi}]"
        if gate.max_share_outside_overlap is not None and share > gate.max_share_outside_overlap:
            reasons.append(f"overlap: {text} (gate allows {100 * gate.max_share_outside_overlap:.1f}%)")
        elif share > 0:
            warnings.append(f"positivity: {text}")
    p = result["placebo"]["p_value"]
    if gate.min_placebo_pvalue is not None and p < gate.min_placebo_pvalue:
        reasons.append(f"placebo: a permuted treatment shows an effect ({result['placebo']['effect']:.4g}, "
                       f"p = {p:.3g} < {gate.min_placebo_pvalue})")
    bal = result["balance"]
    if bal["over_threshold"]:
        warnings.append(f"balance: |{bal['statistic']}| > {SMD_WARNING} for {', '.join(bal['over_threshold'][:10])}")
    if gate.max_abs_smd is not None and bal["max_abs"] > gate.max_abs_smd:
        reasons.append(f"balance: max |{bal['statistic']}| {bal['max_abs']:.3f} exceeds {gate.max_abs_smd}")
    r2 = result["nuisance"].get("y_r2")
    if gate.min_outcome_r2 is not None and r2 is not None and r2 < gate.min_outcome_r2:
        reasons.append(f"nuisance: outcome model out-of-fold R^2 {r2:.3f} < {gate.min_outcome_r2}")
    eff = result["effect"]
    if not all(math.isfinite(eff[k]) for k in ("ate", "ate_lower", "ate_upper")):
        reasons.append("effect: the ATE or its interval is not finite")
    elif gate.require_significant_ate and eff["ate_lower"] <= 0 <= eff["ate_upper"]:
        reasons.append(f"effect: the ATE interval [{eff['ate_lower']:.4g}, {eff['ate_upper']:.4g}] contains 0")
    return {"passed": not reasons, "reasons": reasons, "warnings": warnings}


def _histogram(values: np.ndarray, bins: int = 30) -> dict:
    counts, edges = np.histogram(values, bins)
    return {"edges": edges.tolist(), "counts": counts.tolist()}


# ----------------------------------------------------------------------------- KFP components
@component
def evaluate_model(dataset: Input[Dataset], residuals: Input[Dataset], estimate: Input[Model],
                   gate: str, seed: int, evaluation: Output[Artifact], report: Output[HTML],
                   metrics: Output[Metrics]) -> bool:
    """Run the checks, write them (JSON, HTML report, KFP metrics); return whether the gate passed."""
    import json

    from components.data import load_validated
    from components.estimate import Estimate
    from components.evaluate import GateConfig, evaluate, metric_values
    from components.nuisance import Residuals
    from components.report import render_report

    result = evaluate(load_validated(dataset.path), Residuals.load(residuals.path),
                      Estimate.load(estimate.path), GateConfig.from_dict(json.loads(gate)), int(seed))
    with open(evaluation.path, "w") as f:
        json.dump(result, f, indent=2)
    with open(report.path, "w") as f:
        f.write(render_report(result))
    for key, value in metric_values(result).items():
        metrics.log_metric(key, value)
    v = result["verdict"]
    print("tauforge: gate " + ("passed" if v["passed"] else "FAILED: " + "; ".join(v["reasons"])), flush=True)
    return bool(v["passed"])


def metric_values(result: dict) -> dict[str, float]:
    """The scalar results shown as KFP Metrics."""
    out = {k: float(result["effect"][k]) for k in ("ate", "ate_stderr", "ate_lower", "ate_upper", "cate_std")}
    out.update({f"nuisance_{k}": v for k, v in result["nuisance"].items()})
    out["placebo_p_value"] = result["placebo"]["p_value"]
    out[f"balance_max_abs_{result['balance']['statistic']}"] = result["balance"]["max_abs"]
    if "overlap" in result:
        out["propensity_share_outside"] = result["overlap"]["share_outside"]
    out["gate_passed"] = float(result["verdict"]["passed"])
    return out
