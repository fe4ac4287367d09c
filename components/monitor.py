"""Production monitoring: the serving event log against the reference profile stored with the
version, and, once outcomes arrive, the champion's and challenger's policy values.

`monitor` runs a list of checks (`CHECKS`), each one small type:
  CovariateDrift     per covariate: Kolmogorov-Smirnov (continuous) or chi-square (at most 10
                     distinct values), with the population stability index (PSI) beside it
  DomainClassifier   a classifier telling live rows from reference rows: its held-out AUC against 0.5
  PropensityDrift    the propensity of the training data, P(T = 1 | X) fit on the reference profile,
                     applied to live covariates: its distribution (KS), the share of live rows outside
                     the training overlap region; where the log carries actions, whether live rows are
                     treated at the rate training rows were at the same propensity (a changed policy)
  EffectDrift        the live CATE distribution (KS) and its mean (the ATE) against the reference
  ShadowAgreement    Spearman correlation of champion and shadow CATE, top-decile overlap, action
                     disagreement (reported, never an alert)
Each check returns its summary and its signals: hypothesis tests with a p-value, and thresholds
that alert on their own (PSI, the overlap share). All p-values share one Bonferroni budget: the
level is `alpha` divided by the number of tests the checks actually ran, so a quiet period raises
no alarm with probability at least 1 - alpha. Any alert calls for retraining.

With outcomes, champion against challenger -> promote / hold / roll back, by an always-valid
confidence sequence for the difference (rows clustered by unit):
  a shadow   (both versions answered the same requests; needs logged actions of known propensity)
             inverse-propensity and doubly robust values of the two policies on the same rows.
             Beside it, uplift: how well each model's CATE ranks the same units by their effect
             (gain and Qini curves, AUUC and Qini coefficient, from the per-unit doubly robust
             effect scores of the logged outcomes; components/uplift.py), and the challenger's Qini
             coefficient minus the champion's with a paired bootstrap standard error.
  a canary   (each request or unit met one version at random; no exploration needed) each
             version's mean outcome on its own traffic while both answered, doubly robust
             (`arm_values`): an online A/B comparison of the two deployed policies.

`run_monitor` is the step: it reads the log and the store and runs `monitor`, for the CLI and the
KFP component alike.
"""

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from tauforge.kernels.ate import debiased_scores
from tauforge.kernels.progress import Progress, progress_steps

from . import uplift
from ._kfp import HTML, Metrics, Output, component
from .constants import MONITOR_ALPHA, OVERLAP_BOUNDS, PSI_ALERT
from .events import id_string, input_columns, load_reference, read_events
from .registry import ModelStore


@dataclass
class MonitorConfig:
    alpha: float = MONITOR_ALPHA  # family-wise false-alarm rate of all the tests together
    max_outside_overlap_increase: float = 0.10  # live share outside the overlap bounds minus the reference's
    psi_alert: float = PSI_ALERT
    min_live_rows: int = 200
    cs_alpha: float = 0.05  # confidence sequence level for the policy-value difference
    cs_t_opt: int = 10_000  # outcomes at which the sequence is tightest; fixed in advance, not per look

    def __post_init__(self):
        for name in ("alpha", "cs_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


# ----------------------------------------------------------------------------- statistics
def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """Population stability index over the reference's decile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    q = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    r, q = np.clip(r, 1e-4, None), np.clip(q, 1e-4, None)
    return float(np.sum((q - r) * np.log(q / r)))


def categorical(values: np.ndarray) -> bool:
    distinct = np.unique(values)
    return len(distinct) <= 10 and np.all(distinct == np.round(distinct))


def chi_square_drift(reference: np.ndarray, live: np.ndarray) -> float:
    levels = np.union1d(np.unique(reference), np.unique(live))
    table = np.array([[np.sum(reference == v) for v in levels], [np.sum(live == v) for v in levels]])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table)[1])


def drift_histogram(reference: np.ndarray, live: np.ndarray, levels: bool = False, bins: int = 20) -> dict:
    """Reference and live values binned alike, for the report's drift plots: counts per distinct
    value (`levels`, a categorical covariate), else over `bins` equal bins spanning both samples'
    0.5% to 99.5% quantiles, values beyond them counted in the end bins."""
    if levels:
        values = np.union1d(np.unique(reference), np.unique(live))
        return {"levels": values.tolist(), "reference": [int(np.sum(reference == v)) for v in values],
                "live": [int(np.sum(live == v)) for v in values]}
    lo, hi = np.quantile(np.concatenate([reference, live]), [0.005, 0.995])
    edges = np.histogram_bin_edges([lo, hi], bins)  # equal bins; a single value gets a unit range around it
    def counts(values: np.ndarray) -> list[int]:
        return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()

    return {"edges": edges.tolist(), "reference": counts(reference), "live": counts(live)}


def domain_classifier_auc(reference: np.ndarray, live: np.ndarray, seed: int = 0,
                          early_stopping: bool | str = True) -> tuple[float, float]:
    """AUC of a classifier telling live rows from reference rows, on a held-out half, and the
    one-sided p-value of AUC > 0.5 (Mann-Whitney: exact under no shift on held-out rows, which a
    pooled cross-validated AUC is not). `early_stopping="auto"` (scikit-learn's: 100 rounds at up
    to 10,000 rows, the setting until 2026-12-05) is for the benchmark's comparison."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    Z = np.vstack([reference, live])
    y = np.r_[np.zeros(len(reference)), np.ones(len(live))]
    Z_fit, Z_test, y_fit, y_test = train_test_split(Z, y, test_size=0.5, stratify=y, random_state=seed)
    # Early stopping on a tenth of the fitting half (scikit-learn's default above 10,000 rows, here
    # always): under no shift it stops after a dozen rounds instead of fitting 100 to noise, which
    # is 5 times faster and, at 3,000 rows, catches small shifts 1.3-3 times as often
    # (tests/benchmarks/bench_monitor.py --power).
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, min_samples_leaf=40,
                                         early_stopping=early_stopping, random_state=seed)
    score = clf.fit(Z_fit, y_fit).predict_proba(Z_test)[:, 1]
    n1, n0 = int(y_test.sum()), int(len(y_test) - y_test.sum())
    auc = float(stats.mannwhitneyu(score[y_test == 1], score[y_test == 0]).statistic / (n1 * n0))
    se0 = np.sqrt((n0 + n1 + 1) / (12 * n0 * n1))
    return auc, float(stats.norm.sf((auc - 0.5) / se0))


def _propensity_classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, min_samples_leaf=50, early_stopping=True,
                                          random_state=seed)


def propensity_model(reference: pd.DataFrame, columns: list[str], seed: int = 0):
    """P(T = 1 | X) fit on the reference profile (the covariates the server sees)."""
    X = reference[input_columns(columns)].to_numpy()
    return _propensity_classifier(seed).fit(X, reference["T"].to_numpy())


def policy_shift_pvalue(e_ref: np.ndarray, t_ref: np.ndarray, e_live: np.ndarray, a_live: np.ndarray,
                        bins: int = 10) -> float:
    """Are live rows treated at the rate training rows were, at the same propensity? Within each
    decile of the (estimated) training propensity, compare the treated share of training rows
    and of live actions; sum the squared z-scores (chi-square, one degree per decile). Two-sample,
    so an imperfect propensity estimate only coarsens the strata; it does not bias the test."""
    edges = np.unique(np.quantile(e_ref, np.linspace(0, 1, bins + 1)[1:-1]))
    g_ref, g_live = np.searchsorted(edges, e_ref, side="right"), np.searchsorted(edges, e_live, side="right")
    stat, df = 0.0, 0
    for g in np.unique(g_ref):
        r, q = t_ref[g_ref == g], a_live[g_live == g]
        if len(r) < 5 or len(q) < 5:
            continue
        pooled = (r.sum() + q.sum()) / (len(r) + len(q))
        var = pooled * (1 - pooled) * (1 / len(r) + 1 / len(q))
        if var > 0:
            stat += (q.mean() - r.mean()) ** 2 / var
            df += 1
    return float(stats.chi2.sf(stat, df)) if df else 1.0


def confidence_sequence(values: np.ndarray, alpha: float = 0.05, t_opt: int = 10_000) -> tuple[float, float]:
    """Asymptotic confidence sequence for the mean of `values` (Waudby-Smith et al. 2021, the
    normal-mixture boundary): valid simultaneously over every sample size, so checking it after
    every batch of outcomes keeps its coverage, provided `t_opt` (where it is tightest) is fixed
    in advance; choosing it from the data at each look would make it a fixed-sample interval."""
    t = len(values)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    rho2 = (-2 * np.log(alpha) + np.log(-2 * np.log(alpha) + 1)) / t_opt
    half = sd * np.sqrt(2 * (t * rho2 + 1) / (t**2 * rho2) * np.log(np.sqrt(t * rho2 + 1) / alpha))
    return mean - half, mean + half


def outcome_model(frame: pd.DataFrame, columns: list[str], seed: int = 0, by: str = "action",
                  clusters: np.ndarray | None = None) -> dict[int, np.ndarray]:
    """The logged outcome's model mu(x, a) at a = 0 and 1 for every row, cross-fitted (2 folds);
    `a` is the column `by` (the logged action, or a canary's arm). A cluster's rows (`clusters`:
    a unit's, which share its outcome noise) stay in one fold, so no row's prediction has learned
    its own noise from its unit's other rows."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    X = frame[input_columns(columns)].to_numpy()
    A, Y = frame[by].to_numpy(float), frame["outcome"].to_numpy(float)
    clusters = np.arange(len(Y)) if clusters is None else clusters
    names, index = np.unique(clusters, return_inverse=True)
    fold = np.random.default_rng([seed, 7]).permutation(len(names))[index] % 2
    mu = {0: np.empty(len(Y)), 1: np.empty(len(Y))}
    for k in (0, 1):
        train, test = fold != k, fold == k
        model = HistGradientBoostingRegressor(max_iter=200, learning_rate=0.05, min_samples_leaf=40,
                                              random_state=seed).fit(np.column_stack([X[train], A[train]]), Y[train])
        for a in (0, 1):
            mu[a][test] = model.predict(np.column_stack([X[test], np.full(test.sum(), a)]))
    return mu


def clusters_of(frame: pd.DataFrame) -> np.ndarray:
    """Each row's cluster: its unit (a unit's rows share its outcome noise and, in the router's
    canary, its version), or its request where the row has no unit id."""
    requests = "request:" + frame["request_id"].astype(str)
    if "unit_id" not in frame:
        return requests.to_numpy()
    return frame["unit_id"].where(frame["unit_id"].notna(), requests).astype(str).to_numpy()


def policy_values(frame: pd.DataFrame, columns: list[str], seed: int = 0,
                  mu: dict[int, np.ndarray] | None = None) -> pd.DataFrame:
    """Per-row inverse-propensity and doubly robust scores of the champion's and challenger's
    policies (treat where their CATE > 0) from logged actions with known propensities, with the
    outcome model `mu` (default: `outcome_model`)."""
    A, Y, p = frame["action"].to_numpy(float), frame["outcome"].to_numpy(float), frame["propensity"].to_numpy(float)
    mu = outcome_model(frame, columns, seed) if mu is None else mu
    out = {}
    for who in ("champion", "challenger"):
        pi = (frame[f"cate_{who}"].to_numpy() > 0).astype(float)
        follows = (A == pi).astype(float)
        mu_pi = np.where(pi == 1, mu[1], mu[0])
        mu_a = np.where(A == 1, mu[1], mu[0])
        out[f"ipw_{who}"] = follows * Y / p
        out[f"dr_{who}"] = mu_pi + follows * (Y - mu_a) / p
    return pd.DataFrame(out)


def arm_values(frame: pd.DataFrame, columns: list[str], seed: int = 0, clusters: np.ndarray | None = None,
               share: np.ndarray | None = None) -> pd.DataFrame:
    """Per-row doubly robust scores of each version's mean outcome in a canary. `frame` holds the
    rows each version answered (`arm`: 1 for the challenger's) with their outcomes; the arm was
    drawn at random (a hash of the unit, or Knative's per-request split) with probability `share`
    (per row: the challenger's share of its period, which an operator raising the canary's
    percent changes; default: its share of all rows). The score of arm a,
    mu(x, a) + 1{arm = a} (y - mu(x, a)) / P(arm = a), averages to the mean outcome had every row
    met version a: the difference in the arms' means, with the outcome model `outcome_model`
    taking out the covariates' share of the noise (and unbiased whatever its errors, the
    assignment being random)."""
    Z, Y = frame["arm"].to_numpy(float), frame["outcome"].to_numpy(float)
    q = np.full(len(Z), Z.mean()) if share is None else share
    mu = outcome_model(frame, columns, seed, by="arm", clusters=clusters)
    return pd.DataFrame({"dr_champion": mu[0] + (1 - Z) * (Y - mu[0]) / (1 - q),
                         "dr_challenger": mu[1] + Z * (Y - mu[1]) / q})


def cluster_values(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """One value per cluster (a unit's rows, which share the unit's outcome noise and its arm),
    whose mean is the rows' mean and whose spread is the cluster-robust (linearized) one: the
    mean plus each cluster's summed deviation, times clusters / rows."""
    mean = float(np.mean(values))
    sums = pd.Series(values - mean).groupby(clusters).sum().to_numpy()
    return mean + sums * len(sums) / len(values)


# ----------------------------------------------------------------------------- the checks
@dataclass
class Signal:
    """One thing a check found: a hypothesis test (`p_value`, judged at the shared level) and/or a
    threshold crossed (`over_threshold`, an alert whatever the level)."""

    check: str
    message: str
    p_value: float | None = None
    over_threshold: bool = False
    covariate: str | None = None
    details: dict = field(default_factory=dict)

    def alerts(self, level: float) -> bool:
        return self.over_threshold or (self.p_value is not None and self.p_value < level)


@dataclass
class CheckResult:
    summary: dict
    signals: list[Signal] = field(default_factory=list)


@dataclass
class MonitorInputs:
    """What every check reads: live (champion) and shadow rows of the log, the reference profile."""

    live: pd.DataFrame
    shadow: pd.DataFrame
    reference: pd.DataFrame
    covariates: list[str]
    config: MonitorConfig
    seed: int

    @property
    def columns(self) -> list[str]:
        return input_columns(self.covariates)

    @property
    def binary(self) -> bool:
        return set(np.unique(self.reference["T"])) <= {0.0, 1.0}

    @property
    def has_actions(self) -> bool:
        return "action" in self.live and bool(self.live["action"].notna().all()) and self.binary

    @property
    def actions_drawn_here(self) -> bool:
        """Whether the server drew the logged actions (`serve --explore` logs each one's
        propensity): they follow the served policy by design, not the assignment the training
        data came from."""
        return "propensity" in self.live and bool(self.live["propensity"].notna().any())


class CovariateDrift:
    name = "covariate_drift"
    alerts = ("covariate_drift",)

    def run(self, m: MonitorInputs) -> CheckResult:
        drift, signals = {}, []
        for c, col in zip(m.covariates, m.columns):
            ref, now = m.reference[col].to_numpy(), m.live[col].to_numpy()
            levels = categorical(ref)
            if levels:
                test, p = "chi_square", chi_square_drift(ref, now)
            else:
                test, p = "ks", float(stats.ks_2samp(ref, now).pvalue)
            index = psi(ref, now)
            drift[c] = {"test": test, "p_value": p, "psi": index, "histogram": drift_histogram(ref, now, levels)}
            signals.append(Signal("covariate_drift", f"{c}: {test} p = {p:.2g}, PSI {index:.3f}", p_value=p,
                                  over_threshold=index > m.config.psi_alert, covariate=c,
                                  details={"p_value": p, "psi": index}))
        return CheckResult(drift, signals)


class DomainClassifier:
    name = "domain_classifier"
    alerts = ("domain_classifier",)

    def run(self, m: MonitorInputs) -> CheckResult:
        auc, p = domain_classifier_auc(m.reference[m.columns].to_numpy(), m.live[m.columns].to_numpy(), m.seed)
        return CheckResult({"auc": auc, "p_value": p}, [Signal(
            "domain_classifier", f"a classifier tells live rows from training rows (AUC {auc:.3f}, p = {p:.2g})",
            p_value=p, details={"auc": auc, "p_value": p})])


class PropensityDrift:
    name = "propensity"
    alerts = ("propensity_drift", "overlap")

    def run(self, m: MonitorInputs) -> CheckResult | None:
        if not m.binary:
            return None
        # Fit on half the reference, compare the other half with live rows: both out of sample, so
        # neither the propensity's spread nor its fit to T differs between them by construction.
        reference = m.reference
        half = np.random.default_rng([m.seed, 5]).permutation(len(reference)) < len(reference) // 2
        model = propensity_model(reference[half], m.covariates, m.seed)
        held_out = reference[~half]
        e_ref = model.predict_proba(held_out[m.columns].to_numpy())[:, 1]
        e_live = model.predict_proba(m.live[m.columns].to_numpy())[:, 1]
        lo, hi = OVERLAP_BOUNDS
        out_ref, out_live = np.mean((e_ref < lo) | (e_ref > hi)), np.mean((e_live < lo) | (e_live > hi))
        p = float(stats.ks_2samp(e_ref, e_live).pvalue)
        edges = np.linspace(0, 1, 21)
        summary = {"ks_p_value": p, "psi": psi(e_ref, e_live), "share_outside_reference": float(out_ref),
                   "share_outside_live": float(out_live),
                   "histogram": {"edges": edges.tolist(), "reference": np.histogram(e_ref, edges)[0].tolist(),
                                 "live": np.histogram(e_live, edges)[0].tolist()}}
        signals = [
            Signal("propensity_drift", f"the training propensity of live rows has shifted (KS p = {p:.2g})",
                   p_value=p, details={"p_value": p}),
            Signal("overlap", f"{100 * out_live:.1f}% of live rows lie outside the training overlap region "
                              f"(training: {100 * out_ref:.1f}%)",
                   over_threshold=out_live - out_ref > m.config.max_outside_overlap_increase,
                   details={"share": float(out_live)})]
        if m.has_actions and m.actions_drawn_here:
            summary["policy_note"] = ("actions drawn by the server (--explore) follow the served policy: not "
                                      "compared with the training treatment policy")
        elif m.has_actions:
            p = policy_shift_pvalue(e_ref, held_out["T"].to_numpy(float), e_live, m.live["action"].to_numpy(float))
            summary["policy_p_value"] = p
            signals.append(Signal("propensity_drift", f"live actions no longer follow the training treatment "
                                                      f"policy (treated share at equal propensity: chi-square "
                                                      f"p = {p:.2g})", p_value=p, details={"p_value": p}))
        return CheckResult(summary, signals)


class EffectDrift:
    name = "effect"
    alerts = ("cate_drift", "ate_drift")

    def run(self, m: MonitorInputs) -> CheckResult:
        ref_cate, live_cate = m.reference["cate"].to_numpy(), m.live["cate"].to_numpy()
        p_dist = float(stats.ks_2samp(ref_cate, live_cate).pvalue)
        diff = float(live_cate.mean() - ref_cate.mean())
        se = float(np.sqrt(ref_cate.var(ddof=1) / len(ref_cate) + live_cate.var(ddof=1) / len(live_cate)))
        p_ate = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else 1.0
        summary = {"cate_ks_p_value": p_dist, "cate_psi": psi(ref_cate, live_cate),
                   "ate_reference": float(ref_cate.mean()), "ate_live": float(live_cate.mean()), "ate_p_value": p_ate,
                   "cate_histogram": drift_histogram(ref_cate, live_cate)}
        return CheckResult(summary, [
            Signal("cate_drift", f"the distribution of the served CATE has shifted (KS p = {p_dist:.2g})",
                   p_value=p_dist, details={"p_value": p_dist}),
            Signal("ate_drift", f"the mean served CATE moved by {diff:+.4g} (p = {p_ate:.2g})", p_value=p_ate,
                   details={"p_value": p_ate})])


class ShadowAgreement:
    name = "shadow"
    alerts = ()

    def run(self, m: MonitorInputs) -> CheckResult | None:
        if not len(m.shadow):
            return None
        pairs = m.live.merge(m.shadow, on=["request_id", "row"], suffixes=("", "_shadow"))
        if len(pairs) < 10:
            return None
        a, b = pairs["cate"].to_numpy(), pairs["cate_shadow"].to_numpy()
        k = max(1, len(a) // 10)
        top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        return CheckResult({"pairs": int(len(pairs)), "spearman": float(stats.spearmanr(a, b)[0]),
                            "top_decile_overlap": len(top_a & top_b) / k,
                            "action_disagreement": float(np.mean((a > 0) != (b > 0)))})


CHECKS = (CovariateDrift(), DomainClassifier(), PropensityDrift(), EffectDrift(), ShadowAgreement())
ALERTS = tuple(name for check in CHECKS for name in check.alerts)  # every kind of alert, for the gauges


# ----------------------------------------------------------------------------- the monitor
# Champion rows this close to the challenger's first or last row count as the canary's time: one
# request's rows are scored, and stamped, milliseconds apart.
CANARY_SLACK_S = 60.0
MIN_POLICY_ROWS = 50  # rows with outcomes below which no version is judged (a canary: half that per version)
MIN_POLICY_UNITS = 20  # units (clusters) below which no version is judged: a unit's rows are not independent
# A canary's share is estimated per period of time (equal numbers of rows, at least this many each,
# at most CANARY_PERIODS): an operator raising the canary's percent changes it while outcomes drift.
CANARY_PERIOD_ROWS = 200
CANARY_PERIODS = 20
# Relative costs of monitoring's steps, for its progress lines. Measured at 50,000 live rows: the
# two classifiers (domain, propensity) 1-2 s, the other checks a tenth of that or less.
STEP_COSTS = {"reading the event log": 1, "domain_classifier": 1, "propensity": 1, "policy value": 2}


def monitor_steps(checks, outcomes: bool) -> dict[str, float]:
    """The steps of `monitor` with `checks` (name -> relative cost), and the policy value's with outcomes."""
    steps = {check.name: STEP_COSTS.get(check.name, 0.1) for check in checks}
    return {**steps, "policy value": STEP_COSTS["policy value"]} if outcomes else steps


def monitor(events: pd.DataFrame, reference: pd.DataFrame, columns: list[str], config: MonitorConfig | None = None,
            outcomes: pd.DataFrame | None = None, seed: int = 0, checks=CHECKS, progress: bool | None = False) -> dict:
    """Every check on one model's event log against its reference profile; alerts and a
    recommendation. `outcomes` has request_id and row (or unit_id) and an `outcome` column.
    `progress`: progress on stderr (`tauforge.kernels.progress`), a step per check."""
    outcomes = None if outcomes is None else check_outcomes(outcomes)
    with progress_steps("monitoring", monitor_steps(checks, outcomes is not None), progress) as steps:
        return _monitor(events, reference, columns, config, outcomes, seed, checks, steps)


def _monitor(events, reference, columns, config, outcomes, seed, checks, steps: Progress) -> dict:
    config = config or MonitorConfig()
    live = events[events["role"] == "champion"]
    shadow = events[events["role"] == "shadow"]
    challenger = events[events["role"] == "challenger"]
    result: dict = {"live_rows": int(len(live)), "reference_rows": int(len(reference)), "alerts": [], "checks": {}}
    signals: list[Signal] = []
    if len(live) < config.min_live_rows:  # too few to judge drift; a canary's outcomes may still be judged
        result["note"] = f"{len(live)} live rows; at least {config.min_live_rows} are needed to judge drift"
        steps.update(sum(STEP_COSTS.get(check.name, 0.1) for check in checks))
        checks = ()
    inputs = MonitorInputs(live, shadow, reference, list(columns), config, seed)
    for check in checks:
        found = steps.run(check.name, check.run, inputs)
        if found is not None:
            result["checks"][check.name] = found.summary
            signals += found.signals
    # One Bonferroni budget, over the tests the checks ran.
    tests = sum(s.p_value is not None for s in signals)
    level = config.alpha / max(tests, 1)
    if checks:
        result["checks"].update(tests=tests, test_level=level, psi_alert=config.psi_alert)
    for s in signals:
        if s.alerts(level):
            result["alerts"].append({"check": s.check, "covariate": s.covariate, "message": s.message, **s.details})
    result["recommendation"] = "hold"
    if outcomes is not None:
        result["policy"] = steps.run("policy value", _policy, live, shadow, challenger, outcomes, columns, config,
                                     seed)
        result["recommendation"] = result["policy"]["recommendation"]
    result["retrain"] = bool(result["alerts"])
    return result


def effect_scores(frame: pd.DataFrame, mu: dict[int, np.ndarray]) -> np.ndarray | None:
    """Per-row doubly robust (AIPW) scores of the effect of action 1 from logged outcomes: the
    debiased score of `kernels.ate` with the logging policy's known P(action = 1) (the logged
    propensity is that of the action taken) and the outcome model `mu`; unbiased whatever `mu`'s
    errors, since the propensities are known. None when some row's action was certain (no
    exploration there): no effect can be learned from it."""
    A, Y, p = frame["action"].to_numpy(float), frame["outcome"].to_numpy(float), frame["propensity"].to_numpy(float)
    e = np.where(A == 1, p, 1 - p)
    if not ((e > 0) & (e < 1)).all():
        return None
    tau = mu[1] - mu[0]
    return debiased_scores(tau, Y - (mu[0] + e * tau), A - e, e * (1 - e))


def _uplift(frame: pd.DataFrame, mu: dict[int, np.ndarray], seed: int) -> dict:
    psi = effect_scores(frame, mu)
    if psi is None:
        return {"note": "some logged actions had propensity 1 (no exploration): no per-unit effect can be estimated, "
                        "so no uplift curve; serve with exploration (--explore) to measure it"}
    return {"effect_scores": "doubly robust (AIPW) scores from the logged outcomes and propensities",
            **uplift.compare(psi, {"champion": frame["cate_champion"].to_numpy(float),
                                   "challenger": frame["cate_challenger"].to_numpy(float)}, seed=seed)}


def outcome_keys(outcomes: pd.DataFrame) -> list[str]:
    """The columns that join outcomes to the log's rows: request_id and row where the outcomes
    have them, else unit_id."""
    return ["request_id", "row"] if {"request_id", "row"} <= set(outcomes.columns) else ["unit_id"]


def check_outcomes(outcomes: pd.DataFrame, source: str = "outcomes") -> pd.DataFrame:
    """`outcomes` if the policy judgements can read them: an `outcome` column of numbers (NaN: not
    known yet, left out) and one row per key (`outcome_keys`); else a ValueError naming the problem."""
    keys = outcome_keys(outcomes)
    if "outcome" not in outcomes.columns or not set(keys) <= set(outcomes.columns):
        raise ValueError(f"{source} needs an 'outcome' column and request_id and row (or unit_id); it has "
                         f"{', '.join(map(str, outcomes.columns))}")
    try:
        values = pd.to_numeric(outcomes["outcome"]).astype(float)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: 'outcome' must hold numbers, got {outcomes['outcome'].dtype} values") from None
    if np.isinf(values).any():
        raise ValueError(f"{source}: 'outcome' holds infinite values in {int(np.isinf(values).sum())} rows")
    repeated = outcomes.duplicated(keys, keep=False)
    if repeated.any():
        first = outcomes.loc[repeated, keys].iloc[0].tolist()
        raise ValueError(f"{source}: {int(repeated.sum())} rows share a {' and '.join(keys)} with another (the "
                         f"first: {', '.join(map(str, first))}); give one outcome per "
                         f"{'scored row' if len(keys) == 2 else 'unit'}")
    return outcomes.assign(outcome=values)


def _with_outcomes(rows: pd.DataFrame, outcomes: pd.DataFrame) -> pd.DataFrame:
    """`rows` of the log with their known outcomes (`outcome_keys`); rows without one are left out.
    Ids are joined as the log keeps them (`events.id_string`): a CSV's 7 meets the log's "7"."""
    key = outcome_keys(outcomes)
    ids = [c for c in key if c != "row"]
    known = outcomes.loc[outcomes["outcome"].notna(), key + ["outcome"]]
    known = known.assign(**{c: [id_string(v) for v in known[c]] for c in ids}).dropna(subset=key)
    rows = rows.drop(columns="outcome", errors="ignore").assign(**{c: [id_string(v) for v in rows[c]] for c in ids})
    return rows.merge(known.astype({"row": int}) if "row" in key else known, on=key)


def _latest(rows: pd.DataFrame) -> float:
    return float(rows["time"].max()) if "time" in rows and rows["time"].notna().any() else -np.inf


def _policy(live, shadow, challenger, outcomes, columns, config, seed) -> dict:
    """A shadow is judged by the policy values of both versions' answers to the same requests; a
    canary by the outcomes of each version's own traffic. A log holding both judges the one that
    answered last (the experiment running now), and says so."""
    if not len(challenger) and not len(shadow):
        return {"rows": 0, "recommendation": "hold",
                "note": "the log holds no challenger or shadow rows: nothing to judge the champion against"}
    if len(challenger) and (not len(shadow) or _latest(challenger) >= _latest(shadow)):
        result = judge_canary(live, challenger, outcomes, columns, config, seed)
        other = "shadow" if len(shadow) else None
    else:
        result = _judge_shadow(live, shadow, outcomes, columns, config, seed)
        other = "challenger" if len(challenger) else None
    if other:
        also = f"the log also holds {other} rows, from an earlier experiment: the one that answered last is judged"
        result["note"] = f"{result['note']}; {also}" if result.get("note") else also
    return result


def _judge_shadow(live, shadow, outcomes, columns, config, seed) -> dict:
    frame = _with_outcomes(live, outcomes)
    frame = frame.merge(shadow[["request_id", "row", "cate"]].rename(columns={"cate": "cate_challenger"}),
                        on=["request_id", "row"])
    frame = frame.rename(columns={"cate": "cate_champion"})
    frame = frame[frame["action"].notna() & frame["propensity"].notna()]
    clusters = clusters_of(frame)
    if len(frame) < MIN_POLICY_ROWS or len(np.unique(clusters)) < MIN_POLICY_UNITS:
        return {"judged": "shadow", "rows": int(len(frame)), "recommendation": "hold",
                "note": f"too few rows with an outcome, a logged action and a shadow answer (at least "
                        f"{MIN_POLICY_ROWS} rows of {MIN_POLICY_UNITS} units): {len(frame)} rows of "
                        f"{len(np.unique(clusters))} units"}
    mu = outcome_model(frame, columns, seed, clusters=clusters)
    scores = policy_values(frame, columns, seed, mu)
    diff = cluster_values((scores["dr_challenger"] - scores["dr_champion"]).to_numpy(), clusters)
    lo, hi = confidence_sequence(diff, config.cs_alpha, config.cs_t_opt)
    return {"judged": "shadow", "rows": int(len(frame)),
            "value_champion_ipw": float(scores["ipw_champion"].mean()),
            "value_challenger_ipw": float(scores["ipw_challenger"].mean()),
            "value_champion_dr": float(scores["dr_champion"].mean()),
            "value_challenger_dr": float(scores["dr_challenger"].mean()),
            **_stderrs(scores, clusters), "units": int(len(diff)), **_difference(diff),
            "confidence_sequence": [float(lo), float(hi)], "recommendation": _decision(lo, hi),
            "uplift": _uplift(frame, mu, seed)}


def _stderrs(scores: pd.DataFrame, clusters: np.ndarray) -> dict:
    """Each version's value's standard error, cluster-robust."""
    return {f"value_{who}_dr_stderr": float(np.std(cluster_values(scores[f"dr_{who}"].to_numpy(), clusters), ddof=1)
                                            / np.sqrt(len(np.unique(clusters))))
            for who in ("champion", "challenger")}


def _difference(values: np.ndarray) -> dict:
    """The challenger's value minus the champion's from per-cluster values, with its (fixed-sample)
    standard error."""
    return {"difference_dr": float(np.mean(values)),
            "difference_dr_stderr": float(np.std(values, ddof=1) / np.sqrt(len(values)))}


def _decision(lo: float, hi: float) -> str:
    return "promote" if lo > 0 else "roll back" if hi < 0 else "hold"


def judge_canary(live, challenger, outcomes, columns, config, seed) -> dict:
    """The canary's judgement: each version's mean outcome over the rows it answered, doubly robust
    (`arm_values`), with rows clustered by unit (request where no unit id) and an always-valid
    confidence sequence for the difference. The canary is the latest challenger version other
    than the champion's. Only the time both answered counts (give or take `CANARY_SLACK_S`): an
    earlier or later period, when one version answered alone, is no control. Within it the
    challenger's share is taken per period (`CANARY_PERIODS`). Outcomes given per unit count once
    per unit, not once per visit (a version that brings units back more often would otherwise
    look better), and units that met both versions are then left out."""
    candidates = challenger[~challenger["version"].isin(set(live["version"]))]
    timed = "time" in candidates and candidates["time"].notna().any()
    if not len(candidates):
        return {"judged": "canary", "rows": 0, "recommendation": "hold",
                "note": "the challenger rows answered with the champion's own version: nothing to compare"}
    latest = candidates.loc[candidates["time"].idxmax()] if timed else candidates.loc[candidates["version"].idxmax()]
    version = int(latest["version"])
    notes = []
    if candidates["version"].nunique() > 1:
        notes.append(f"the log holds canaries of versions {', '.join(map(str, sorted(candidates['version'].unique())))}"
                     f"; the latest, version {version}, is judged")
    frame = pd.concat([live.assign(arm=0), candidates[candidates["version"] == version].assign(arm=1)],
                      ignore_index=True)
    if "time" in frame:
        untimed = frame["time"].isna()
        if untimed.any():
            notes.append(f"{int(untimed.sum())} rows without a time left out")
        frame = frame[~untimed]
        spans = frame.groupby("arm")["time"].agg(["min", "max"])
        if len(spans) == 2:
            start, end = spans["min"].max() - CANARY_SLACK_S, spans["max"].min() + CANARY_SLACK_S
            outside = ~frame["time"].between(start, end)
            if outside.any():
                notes.append(f"{int(outside.sum())} rows from when only one version answered left out")
            frame = frame[~outside]
    frame = _with_outcomes(frame, outcomes)
    if outcome_keys(outcomes) == ["unit_id"]:
        frame, mixed = _one_row_per_unit(frame)
        if mixed:
            notes.append(f"{mixed} units met both versions: with one outcome per unit they belong to neither, and "
                         "are left out")
    share = _period_share(frame)
    keep = (share > 0) & (share < 1)  # a period one version answered alone holds no comparison
    frame, share = frame[keep], share[keep]
    counts = {"rows_champion": int((frame["arm"] == 0).sum()), "rows_challenger": int((frame["arm"] == 1).sum())}
    base = {"judged": "canary", "challenger_version": version, "rows": int(len(frame)), **counts}
    clusters = clusters_of(frame)
    units = [len(np.unique(clusters[frame["arm"].to_numpy() == arm])) for arm in (0, 1)]
    if min(counts.values()) < MIN_POLICY_ROWS // 2 or min(units) < MIN_POLICY_UNITS // 2:
        notes.insert(0, f"too few rows with an outcome in each version's traffic (at least {MIN_POLICY_ROWS // 2} "
                        f"rows of {MIN_POLICY_UNITS // 2} units each): champion {counts['rows_champion']} rows of "
                        f"{units[0]} units, challenger {counts['rows_challenger']} of {units[1]}")
        return {**base, "recommendation": "hold", "note": "; ".join(notes)}
    scores = arm_values(frame, columns, seed, clusters, share)
    both = int((frame.groupby(clusters)["arm"].nunique() > 1).sum())
    diff = cluster_values((scores["dr_challenger"] - scores["dr_champion"]).to_numpy(), clusters)
    lo, hi = confidence_sequence(diff, config.cs_alpha, config.cs_t_opt)
    result = {**base, "units": int(len(diff)),
              "challenger_share": float(frame["arm"].mean()),
              **{f"value_{who}_mean": float(frame.loc[frame["arm"] == arm, "outcome"].mean())
                 for arm, who in ((0, "champion"), (1, "challenger"))},
              **{f"value_{who}_dr": float(scores[f"dr_{who}"].mean()) for who in ("champion", "challenger")},
              **_stderrs(scores, clusters), **_difference(diff), "confidence_sequence": [float(lo), float(hi)],
              "recommendation": _decision(lo, hi), "units_in_both_versions": both}
    if both:
        notes.append(f"{both} of {len(diff)} units met both versions (a per-request split, as KServe's "
                     "canaryTrafficPercent makes): where a unit's outcome follows all its requests, it belongs "
                     "to neither version alone, which pulls the difference toward 0; the router's canary "
                     "(serve --mode canary) keeps each unit with one version")
    if notes:
        result["note"] = "; ".join(notes)
    return result


def _one_row_per_unit(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A canary's rows reduced to one per unit (its first, with its version), for outcomes given
    per unit; and how many units met both versions (left out)."""
    frame = frame[frame["unit_id"].notna()].sort_values("time" if "time" in frame else "request_id", kind="stable")
    arms = frame.groupby("unit_id")["arm"].nunique()
    mixed = arms.index[arms > 1]
    return frame[~frame["unit_id"].isin(mixed)].drop_duplicates("unit_id"), int(len(mixed))


def _period_share(frame: pd.DataFrame) -> np.ndarray:
    """The challenger's share of each row's period: the rows in time order cut into equal periods
    (`CANARY_PERIODS` at most, `CANARY_PERIOD_ROWS` rows at least); one period without times."""
    arm = frame["arm"].to_numpy(float)
    periods = int(np.clip(len(arm) // CANARY_PERIOD_ROWS, 1, CANARY_PERIODS))
    if "time" not in frame or periods == 1:
        return np.full(len(arm), arm.mean() if len(arm) else 0.0)
    rank = np.argsort(np.argsort(frame["time"].to_numpy(), kind="stable"), kind="stable")
    period = rank * periods // len(arm)
    return (np.bincount(period, arm) / np.bincount(period))[period]


def monitored_version(store, model: str, events: pd.DataFrame, version=None) -> int:
    """The version to monitor: `version` if given, else the one that answered most champion rows
    in the log (the one being served, which a newer unpromoted version must not hide), else the
    'champion' alias, else the latest."""
    if version not in (None, ""):
        return store.resolve(model, version)
    champion = events[(events["model"] == model) & (events["role"] == "champion")] if len(events) else events
    if len(champion):
        return int(champion["version"].mode()[0])
    return store.resolve(model, "champion" if "champion" in store.aliases(model) else None)


def write_gauges(result: dict, model: str, version: int, path: str) -> None:
    """The monitor's results as Prometheus gauges in the text exposition format (for the node
    exporter's textfile collector or a Pushgateway)."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    labels = {"model": model, "version": str(version)}
    g = Gauge("tauforge_monitor_alerts", "Alerts raised by the last monitoring run", ["model", "version", "check"],
              registry=registry)
    for check in ALERTS:
        g.labels(**labels, check=check).set(sum(a["check"] == check for a in result["alerts"]))
    Gauge("tauforge_monitor_retrain_needed", "1 when drift calls for retraining", ["model", "version"],
          registry=registry).labels(**labels).set(float(result.get("retrain", False)))
    Gauge("tauforge_monitor_live_rows", "Live rows in the monitored window", ["model", "version"],
          registry=registry).labels(**labels).set(result["live_rows"])
    rec = Gauge("tauforge_monitor_recommendation", "1 for the current recommendation",
                ["model", "version", "recommendation"], registry=registry)
    for r in ("promote", "hold", "roll back"):
        rec.labels(**labels, recommendation=r.replace(" ", "_")).set(float(result["recommendation"] == r))
    if "domain_classifier" in result["checks"]:
        Gauge("tauforge_monitor_domain_auc", "Domain classifier AUC, live vs training", ["model", "version"],
              registry=registry).labels(**labels).set(result["checks"]["domain_classifier"]["auc"])
    if "shadow" in result["checks"]:
        Gauge("tauforge_monitor_shadow_spearman", "Spearman correlation of champion and shadow CATE",
              ["model", "version"], registry=registry).labels(**labels).set(result["checks"]["shadow"]["spearman"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_to_textfile(path, registry)


def read_outcomes(path: str) -> pd.DataFrame:
    """Outcomes for policy value: Parquet or CSV (a path or an fsspec URI, read as training data
    is) with an `outcome` column and request_id and row (or unit_id)."""
    from .data import read_table

    try:
        outcomes = read_table(path)
    except ValueError as exc:
        raise ValueError(f"outcomes: {exc}") from None
    return check_outcomes(outcomes, f"outcomes {path}")


def run_monitor(store: str, model: str, log_dir: str, *, version: str | int | None = None,
                outcomes: str | None = None, config: MonitorConfig | None = None,
                progress: bool | None = False) -> dict:
    """The monitoring step: read `model`'s event log under `log_dir` (a folder or an fsspec URI),
    pick the version it served (`monitored_version`), load that version's reference profile from
    `store`, and `monitor`; the result names the model and version. `progress`: progress on
    stderr (`tauforge.kernels.progress`), the reading and each check a step."""
    registry = ModelStore(store)
    read = read_outcomes(outcomes) if outcomes else None
    costs = {"reading the event log": STEP_COSTS["reading the event log"], **monitor_steps(CHECKS, read is not None)}
    with progress_steps("monitoring", costs, progress) as steps:
        events = steps.run("reading the event log", read_events, log_dir, model=model)
        served = monitored_version(registry, model, events, version)
        loaded = registry.load(model, served)
        events = events[(events["role"] != "champion") | (events["version"] == served)]
        result = _monitor(events, load_reference(loaded.reference_path), loaded.card["spec"]["covariates"], config,
                          read, 0, CHECKS, steps)
    card = loaded.card
    result.update(model=model, version=served, training={
        "run_id": card.get("run", {}).get("run_id"), "data_fingerprint": card.get("data", {}).get("fingerprint"),
        "treatment": card["spec"].get("treatment"), "outcome": card["spec"].get("outcome")})
    return result


# ----------------------------------------------------------------------------- KFP component
@component
def monitor_model(store: str, model_name: str, version: str, log_dir: str, outcomes: str, alpha: float,
                  report: Output[HTML], metrics: Output[Metrics], run_id: str = "") -> bool:
    """Monitor the served model's event log; return whether drift calls for retraining. `run_id`
    names the monitoring run in the report's header."""
    from tauforge.components.monitor import MonitorConfig, run_monitor
    from tauforge.components.report import render_monitor_report

    result = run_monitor(store, model_name, log_dir, version=version or None, outcomes=outcomes or None,
                         config=MonitorConfig(alpha=alpha), progress=True)
    with open(report.path, "w") as f:
        f.write(render_monitor_report(result, run_id=run_id))
    metrics.log_metric("alerts", float(len(result["alerts"])))
    metrics.log_metric("live_rows", float(result["live_rows"]))
    metrics.log_metric("retrain", float(result["retrain"]))
    policy = result.get("policy", {})
    if "difference_dr" in policy:  # challenger minus champion (a shadow's policy values, a canary's outcomes)
        metrics.log_metric("difference", policy["difference_dr"])
        metrics.log_metric("difference_lower", policy["confidence_sequence"][0])
        metrics.log_metric("difference_upper", policy["confidence_sequence"][1])
    for a in result["alerts"]:
        print(f"tauforge: ALERT {a['check']}: {a['message']}", flush=True)
    print(f"tauforge: recommendation {result['recommendation']}; retrain {result['retrain']}", flush=True)
    return bool(result["retrain"])
