"""Production monitoring: the serving event log against the reference profile stored with the
version, and, once outcomes arrive, champion against challenger.

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

Rows that are not independent are counted by group: the reference's training groups (a fit
with `groups=`, kept in the reference profile) and the log's units (one `unit_id`, scored again
and again; rows without one count alone). Each test divides its rows by the design effect of
its statistic, estimated from the groups' sums (`design_effect`), or sums its covariance by
group (the ATE, the policy shift); the classifiers are judged on groups they did not learn
from. Counting rows instead, 300 training units of 8 rows against quiet traffic of 250 units
scored 4 times alarmed in 500 of 500 seeds (tests/benchmarks/bench_monitor.py --units).

With outcomes, champion against challenger: promote, hold or roll back, judged from the logged
outcomes of a shadow or a canary (components/judgement.py).

`run_monitor` is the step: it reads the log and the store and runs `monitor`, for the CLI and the
KFP component alike.
"""

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from tauforge.kernels.ate import (
    MIN_GROUPS,
    clustered_cross_products,
    clustered_stderr,
    effective_groups,
    outside_propensity_bounds,
)
from tauforge.kernels.progress import Progress, progress_steps

from ._kfp import HTML, Metrics, Output, component
from .charts import histogram_edges
from .config import ConfigError, redacted_uri
from .constants import MONITOR_ALPHA, PSI_ALERT
from .events import input_columns, load_reference, read_events, reference_groups, with_shadow
from .judgement import (
    MIN_POLICY_ROWS,
    MIN_POLICY_UNITS,
    check_outcomes,
    clusters_of,
    effect_scores,
    judge,
    latest_version,
    outcome_model,
    read_outcomes,
    treatment_probability,
    unmatched_outcomes,
    with_outcomes,
)
from .registry import ModelStore, card_covariates, card_part


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
                raise ConfigError(name, f"must be in (0, 1), got {getattr(self, name)}")


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


def grouped(groups: np.ndarray | None) -> bool:
    """Whether `groups` (codes) hold some rows together; None, or a row a group, is independent rows."""
    if groups is None or not len(groups):
        return False
    if groups.dtype.kind in "iu" and 0 <= groups.min() and groups.max() < 4 * len(groups):
        return bool(np.bincount(groups).max() > 1)  # codes 0..G-1: a count, not a sort (28 sorts a run)
    return len(np.unique(groups)) < len(groups)


def design_effect(scores: np.ndarray, groups: np.ndarray | None) -> float:
    """How many rows weigh as one independent row where the means of the columns of `scores`
    (n, k) are concerned: the largest, over the columns, of the variance of the column's mean
    with rows summed by group (`kernels.ate.clustered_cross_products`, CR1) over its variance as
    independent rows; at least 1, and 1 without groups. Estimated from the data, it holds where
    a group's size goes with its values (units scored often that differ from the rest), where an
    effective number of groups from the sizes alone false-alarmed 5 times too often."""
    if not grouped(groups):
        return 1.0
    clustered, independent = _mean_variances(scores, groups)
    kept = independent > 0
    return float(max(1.0, np.max(clustered[kept] / independent[kept]))) if kept.any() else 1.0


def _mean_variances(scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """n^2 times the variance of each column's mean: with rows summed by group, and as independent rows."""
    centred = scores - scores.mean(axis=0)
    return np.diag(clustered_cross_products(centred, groups)), np.einsum("ij,ij->j", centred, centred)


KS_POINTS = np.linspace(0.05, 0.95, 19)  # where a KS test's design effect is taken: the pooled sample's quantiles


def ks_pvalue(reference: np.ndarray, live: np.ndarray, reference_groups: np.ndarray | None = None,
              live_groups: np.ndarray | None = None) -> float:
    """Two-sample Kolmogorov-Smirnov p-value. With groups (codes) each sample counts as its rows
    over the design effect of its empirical distribution function at the pooled sample's 5%,
    10%, ..., 95% points (`design_effect`), in scipy's asymptotic two-sample distribution."""
    result = stats.ks_2samp(reference, live)
    if not (grouped(reference_groups) or grouped(live_groups)):
        return float(result.pvalue)
    points = np.unique(np.quantile(np.concatenate([reference, live]), KS_POINTS))
    n_ref = len(reference) / design_effect((reference[:, None] <= points).astype(float), reference_groups)
    n_live = len(live) / design_effect((live[:, None] <= points).astype(float), live_groups)
    return float(stats.kstwo.sf(result.statistic, max(1, round(n_ref * n_live / (n_ref + n_live)))))


def chi_square_drift(reference: np.ndarray, live: np.ndarray, reference_groups: np.ndarray | None = None,
                     live_groups: np.ndarray | None = None) -> float:
    """Chi-square test of equal level shares; with groups (codes) each sample's counts divided by
    the design effect of its level shares (`design_effect`)."""
    levels = np.union1d(np.unique(reference), np.unique(live))
    table = np.array([[np.sum(reference == v) for v in levels], [np.sum(live == v) for v in levels]], dtype=float)
    table[0] /= design_effect((reference[:, None] == levels).astype(float), reference_groups)
    table[1] /= design_effect((live[:, None] == levels).astype(float), live_groups)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    _, p_value, _, expected = stats.chi2_contingency(table)
    if expected.min() >= MIN_EXPECTED_COUNT:
        return float(p_value)
    # Rare levels: the chi-square distribution misjudges the statistic's tail (levels of 0.3-0.5%
    # in 250-row windows rejected at 4.9 times the monitor's level, a review), so the p-value
    # comes from tables drawn under the null: both samples from the pooled shares, at their sizes
    # (a parametric bootstrap; R's chisq.test(simulate.p.value = TRUE) fixes both margins).
    # Pooling the rare levels instead kept the level but saw a new level on 5% of traffic in 57%
    # of windows, not 100%.
    rng = np.random.default_rng(0)  # the same data, the same p-value
    shares = table.sum(0) / table.sum()
    sizes = np.maximum(np.round(table.sum(1)).astype(int), 1)
    drawn = np.stack([rng.multinomial(n, shares, MONTE_CARLO_TABLES) for n in sizes], axis=1).astype(float)
    reached = int(np.sum(_pearson(drawn) >= _pearson(table[None])[0] * (1 - 1e-12)))
    # No draw reached it: the p-value is under what the draws resolve, so the distribution's own
    # (smaller, where it errs) serves, and a strict level (--alpha 0.001, many covariates) can alert.
    return float((1 + reached) / (MONTE_CARLO_TABLES + 1) if reached else min(p_value, 1 / (MONTE_CARLO_TABLES + 1)))


# Cochran's rule: the chi-square distribution serves when every expected count is at least this.
MIN_EXPECTED_COUNT = 5.0
# Tables drawn for a simulated p-value: they resolve p-values down to 1e-4; below, the
# distribution's p-value is taken.
MONTE_CARLO_TABLES = 9_999


def _pearson(tables: np.ndarray) -> np.ndarray:
    """Pearson's chi-square statistic of each (samples x levels) table in `tables`; levels no
    table row holds count nothing."""
    expected = tables.sum(2, keepdims=True) * tables.sum(1, keepdims=True) / tables.sum((1, 2), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = np.where(expected > 0, (tables - expected) ** 2 / expected, 0.0)
    return cells.sum((1, 2))


def drift_histogram(reference: np.ndarray, live: np.ndarray, levels: bool = False, bins: int = 20) -> dict:
    """Reference and live values binned alike, for the report's drift plots: counts per distinct
    value (`levels`, a categorical covariate), else over `bins` equal bins spanning both samples'
    0.5% to 99.5% quantiles, values beyond them counted in the end bins."""
    if levels:
        values = np.union1d(np.unique(reference), np.unique(live))
        return {"levels": values.tolist(), "reference": [int(np.sum(reference == v)) for v in values],
                "live": [int(np.sum(live == v)) for v in values]}
    lo, hi = np.quantile(np.concatenate([reference, live]), [0.005, 0.995])
    edges = histogram_edges(lo, hi, bins)
    def counts(values: np.ndarray) -> list[int]:
        return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()

    return {"edges": edges.tolist(), "reference": counts(reference), "live": counts(live)}


def domain_classifier_auc(reference: np.ndarray, live: np.ndarray, seed: int = 0,
                          early_stopping: bool | str = True, reference_groups: np.ndarray | None = None,
                          live_groups: np.ndarray | None = None) -> tuple[float, float]:
    """AUC of a classifier telling live rows from reference rows, on a held-out half, and the
    one-sided p-value of AUC > 0.5 (Mann-Whitney: exact under no shift on held-out rows, which a
    pooled cross-validated AUC is not). With groups (codes) the halves hold whole groups, else
    a classifier that learnt a unit's rows would know its held-out ones, and the standard error
    takes the design effect of the held-out rows' placements (DeLong's: the share of the other
    sample each row outranks), summed by group, and the AUC is read in Student's t (below).
    `early_stopping="auto"` (scikit-learn's: 100 rounds at up to 10,000 rows, the setting until
    2026-12-05) is for the benchmark's comparison."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import train_test_split

    Z = np.vstack([reference, live])
    y = np.r_[np.zeros(len(reference)), np.ones(len(live))]
    groups = np.r_[np.arange(len(reference)) if reference_groups is None else reference_groups,
                   len(reference) + (np.arange(len(live)) if live_groups is None else live_groups)]
    _, first, groups = np.unique(groups, return_index=True, return_inverse=True)
    # Split the groups, stratified by sample; each row follows its group, in the split's order
    # (with a row a group, exactly train_test_split's split of the rows).
    fit_groups, test_groups = train_test_split(np.arange(len(first)), test_size=0.5, stratify=y[first],
                                               random_state=seed)
    position = np.empty(len(first), dtype=np.int64)
    position[np.r_[fit_groups, test_groups]] = np.arange(len(first))
    order = np.argsort(position[groups], kind="stable")
    n_fit = int(np.isin(groups, fit_groups).sum())
    fit, test = order[:n_fit], order[n_fit:]
    Z_fit, Z_test, y_fit, y_test = Z[fit], Z[test], y[fit], y[test]
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
    if not grouped(groups[test]):
        return auc, float(stats.norm.sf((auc - 0.5) / se0))
    live_score, ref_score, clustered, independent, shares = score[y_test == 1], score[y_test == 0], 0.0, 0.0, []
    for rows, other, k in ((live_score, ref_score, 1), (ref_score, live_score, 0)):
        other, codes = np.sort(other), groups[test][y_test == k]
        placement = (np.searchsorted(other, rows) + np.searchsorted(other, rows, "right")) / (2 * len(other))
        by_group, alone = _mean_variances(placement[:, None], codes)
        clustered, independent = clustered + by_group[0] / len(rows) ** 2, independent + alone[0] / len(rows) ** 2
        shares.append(np.unique(codes, return_counts=True)[1] / len(rows))
    se0 *= np.sqrt(max(1.0, clustered / independent)) if independent > 0 else 1.0
    # Student's t, not the normal: where a few groups hold most rows, the variance summed by group
    # rests on those few. Satterthwaite's degrees of freedom as if a group's rows were alike (its
    # term in the variance then goes with its squared share of its sample's rows). With units of
    # 1-61 rows, the heavy ones differing from the rest, the normal rejected 8.5% of quiet samples
    # at 5%, this 5.3% (tests/test_monitor.py); with many groups of similar size it is the normal.
    weight = np.concatenate(shares) ** 2
    return auc, float(stats.t.sf((auc - 0.5) / se0, max(weight.sum() ** 2 / np.sum(weight**2) - 1, 1)))


def _propensity_classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=200, min_samples_leaf=50, early_stopping=True,
                                          random_state=seed)


def propensity_model(reference: pd.DataFrame, columns: list[str], seed: int = 0):
    """P(T = 1 | X) fit on the reference profile (the covariates the server sees)."""
    X = reference[input_columns(columns)].to_numpy()
    return _propensity_classifier(seed).fit(X, reference["T"].to_numpy())


def policy_shift_pvalue(e_ref: np.ndarray, t_ref: np.ndarray, e_live: np.ndarray, a_live: np.ndarray,
                        bins: int = 10, reference_groups: np.ndarray | None = None,
                        live_groups: np.ndarray | None = None) -> float:
    """Are live rows treated at the rate training rows were, at the same propensity? Within each
    decile of the (estimated) training propensity, compare the treated share of training rows
    and of live actions; sum the squared z-scores (chi-square, one degree per decile). Two-sample,
    so an imperfect propensity estimate only coarsens the strata; it does not bias the test.
    With groups (codes) a score test of the deciles' differences, their covariance summed by
    group (`_policy_shift_clustered`): a unit's rows in several deciles, treated alike, tie the
    deciles together."""
    edges = np.unique(np.quantile(e_ref, np.linspace(0, 1, bins + 1)[1:-1]))
    g_ref, g_live = np.searchsorted(edges, e_ref, side="right"), np.searchsorted(edges, e_live, side="right")
    deciles = [g for g in np.unique(g_ref) if np.sum(g_ref == g) >= 5 and np.sum(g_live == g) >= 5]
    if grouped(reference_groups) or grouped(live_groups):
        ref_groups = np.arange(len(t_ref)) if reference_groups is None else reference_groups
        live_groups = np.arange(len(a_live)) if live_groups is None else live_groups
        return _policy_shift_clustered(t_ref, g_ref, ref_groups, a_live, g_live, live_groups, deciles)
    stat, df = 0.0, 0
    for g in deciles:
        r, q = t_ref[g_ref == g], a_live[g_live == g]
        pooled = (r.sum() + q.sum()) / (len(r) + len(q))
        var = pooled * (1 - pooled) * (1 / len(r) + 1 / len(q))
        if var > 0:
            stat += (q.mean() - r.mean()) ** 2 / var
            df += 1
    return float(stats.chi2.sf(stat, df)) if df else 1.0


def _policy_shift_clustered(t_ref, g_ref, ref_groups, a_live, g_live, live_groups, deciles) -> float:
    """The grouped policy-shift test: the deciles' differences in treated share, their covariance
    summed by group about the deciles' pooled shares (a score test: centred on each sample's own
    share, it alarmed at 2-4 times its level), and Hotelling's F for a covariance estimated from
    G groups, G the smaller sample's. On units of 8 and 4 rows, treated by unit or by row, it
    alarmed in 3.6-3.9% of 1,000 quiet seeds at 5%, 0.7-0.9% at 1%."""
    if not deciles:
        return 1.0
    pooled = {g: (t_ref[g_ref == g].sum() + a_live[g_live == g].sum()) / (np.sum(g_ref == g) + np.sum(g_live == g))
              for g in deciles}

    def influence(values, decile_of):  # each row's share in its decile's treated share, about the pooled one
        psi = np.zeros((len(values), len(deciles)))
        for j, g in enumerate(deciles):
            rows = decile_of == g
            psi[rows, j] = (values[rows] - pooled[g]) / rows.sum()
        return psi

    diff = np.array([a_live[g_live == g].mean() - t_ref[g_ref == g].mean() for g in deciles])
    cov = (clustered_cross_products(influence(t_ref, g_ref), ref_groups)
           + clustered_cross_products(influence(a_live, g_live), live_groups))
    df = int(np.linalg.matrix_rank(cov, hermitian=True))
    n_groups = min(len(np.unique(ref_groups)), len(np.unique(live_groups)))
    if df == 0 or n_groups <= df:
        return 1.0
    stat = diff @ np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ diff
    return float(stats.f.sf(stat * (n_groups - df) / (df * (n_groups - 1)), df, n_groups - df))


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
    """What every check reads: live (champion) and shadow rows of the log, the reference profile,
    and which rows of each belong together."""

    live: pd.DataFrame
    shadow: pd.DataFrame
    reference: pd.DataFrame
    covariates: list[str]
    config: MonitorConfig
    seed: int
    reference_groups: np.ndarray  # codes: the training groups, or a row each (`events.reference_groups`)
    live_groups: np.ndarray  # codes: the live rows' units, or a row each (`unit_codes`)
    outcomes: pd.DataFrame | None = None  # `--outcomes`, checked (`judgement.check_outcomes`)
    training_effect: dict | None = None  # the card's `effect`: the trained ATE and its standard error

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
                test, p = "chi_square", chi_square_drift(ref, now, m.reference_groups, m.live_groups)
            else:
                test, p = "ks", ks_pvalue(ref, now, m.reference_groups, m.live_groups)
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
        auc, p = domain_classifier_auc(m.reference[m.columns].to_numpy(), m.live[m.columns].to_numpy(), m.seed,
                                       reference_groups=m.reference_groups, live_groups=m.live_groups)
        return CheckResult({"auc": auc, "p_value": p}, [Signal(
            "domain_classifier", f"a classifier tells live rows from training rows (AUC {auc:.3f}, p = {p:.2g})",
            p_value=p, details={"auc": auc, "p_value": p})])


class Support:
    """Live rows outside the training data's range on some covariate. The forest and the default
    nuisance models hold their edge values past it (they do not extrapolate), so there the served
    CATE is the edge's, and the propensity (the overlap check's measure) cannot show it.

    The test: on one continuous covariate, the chance q that a new row from the training
    distribution falls outside the range of n reference rows is Beta(2, n - 1) distributed over
    reference samples (the two outer spacings of n uniforms; ties only lower it). q0, its upper
    1e-4 / p quantile times p, bounds the chance on any of p covariates, whatever their
    dependence, except with probability 1e-4; the live count outside is tested one-sided against
    Binomial(live rows, q0). A test against the mean of q alone (2p / (n + 1)) would alarm on
    quiet traffic of tens of thousands of rows whenever the reference's range came out narrow.
    With groups, n is the reference's effective number of groups (`effective_groups`), and the
    live count outside and the live rows are divided by the design effect of the share outside
    (`design_effect`): a unit outside, however often scored, counts about once."""

    name = "support"
    alerts = ("support",)

    def run(self, m: MonitorInputs) -> CheckResult:
        ref, live = m.reference[m.columns].to_numpy(float), m.live[m.columns].to_numpy(float)
        outside = (live < ref.min(axis=0)) | (live > ref.max(axis=0))
        n, p = round(effective_groups(m.reference_groups)), ref.shape[1]
        q0 = min(1.0, p * float(stats.beta.isf(1e-4 / p, 2, max(n - 1, 1))))
        count = int(outside.any(axis=1).sum())
        deff = design_effect(outside.any(axis=1)[:, None].astype(float), m.live_groups)
        p_value = float(stats.binom.sf(round(count / deff) - 1, round(len(live) / deff), q0)) if count else 1.0
        share = count / len(live)
        by_covariate = {c: float(outside[:, j].mean()) for j, c in enumerate(m.covariates)}
        most = sorted((c for c in by_covariate if by_covariate[c] > 0), key=lambda c: -by_covariate[c])[:3]
        where = ", ".join(f"{c} {100 * by_covariate[c]:.1f}%" for c in most) or "none"
        return CheckResult({"share_outside": share, "null_bound": q0, "p_value": p_value,
                            "by_covariate": by_covariate}, [Signal(
            "support", f"{100 * share:.1f}% of live rows lie outside the training data's range ({where}); a sample "
                       f"like the training data's would put at most {100 * q0:.1f}% there (p = {p_value:.2g}): the "
                       "model answers them with its edge values", p_value=p_value,
            details={"share": share, "p_value": p_value})])


class PropensityDrift:
    name = "propensity"
    alerts = ("propensity_drift", "overlap")

    def run(self, m: MonitorInputs) -> CheckResult | None:
        if not m.binary:
            return None
        # Fit on half the reference, compare the other half with live rows: both out of sample, so
        # neither the propensity's spread nor its fit to T differs between them by construction.
        # Halves of whole groups: the model must not have seen a held-out row's group.
        reference, groups = m.reference, m.reference_groups
        n_groups = int(groups.max()) + 1
        half = (np.random.default_rng([m.seed, 5]).permutation(n_groups) < n_groups // 2)[groups]
        if len(np.unique(reference["T"][half])) < 2:  # few groups, each of one arm
            return CheckResult({"note": "half the reference's groups, which fit the propensity, hold one arm only: "
                                        "not judged"})
        model = propensity_model(reference[half], m.covariates, m.seed)
        held_out, held_out_groups = reference[~half], groups[~half]
        e_ref = model.predict_proba(held_out[m.columns].to_numpy())[:, 1]
        e_live = model.predict_proba(m.live[m.columns].to_numpy())[:, 1]
        out_ref, out_live = np.mean(outside_propensity_bounds(e_ref)), np.mean(outside_propensity_bounds(e_live))
        p = ks_pvalue(e_ref, e_live, held_out_groups, m.live_groups)
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
            p = policy_shift_pvalue(e_ref, held_out["T"].to_numpy(float), e_live, m.live["action"].to_numpy(float),
                                    reference_groups=held_out_groups, live_groups=m.live_groups)
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
        p_dist = ks_pvalue(ref_cate, live_cate, m.reference_groups, m.live_groups)
        diff = float(live_cate.mean() - ref_cate.mean())
        # Each mean's standard error by groups, with CR1's G / (G - 1): with a row a group, the
        # sample variance (ddof 1) over n.
        se = float(np.hypot(clustered_stderr(ref_cate - ref_cate.mean(), len(ref_cate), m.reference_groups),
                            clustered_stderr(live_cate - live_cate.mean(), len(live_cate), m.live_groups)))
        p_ate = float(2 * stats.norm.sf(abs(diff) / se)) if se > 0 else 1.0
        summary = {"cate_ks_p_value": p_dist, "cate_psi": psi(ref_cate, live_cate),
                   "ate_reference": float(ref_cate.mean()), "ate_live": float(live_cate.mean()), "ate_p_value": p_ate,
                   "cate_histogram": drift_histogram(ref_cate, live_cate)}
        return CheckResult(summary, [
            Signal("cate_drift", f"the distribution of the served CATE has shifted (KS p = {p_dist:.2g})",
                   p_value=p_dist, details={"p_value": p_dist}),
            Signal("ate_drift", f"the mean served CATE moved by {diff:+.4g} (p = {p_ate:.2g})", p_value=p_ate,
                   details={"p_value": p_ate})])


class EffectCalibration:
    """Whether the served CATE still describes the effect, from logged outcomes of the champion's
    explored rows (an action drawn with a known propensity strictly between 0 and 1): per-row
    doubly robust effect scores (`judgement.effect_scores`), unbiased whatever the outcome model
    since the propensities are known. Two tests: the gap between the scores' mean and the served
    CATE's against the gap at training (the card's ATE less the reference's mean CATE: the
    average effect has moved), and the slope of the scores on the served CATE against 0,
    one-sided (the CATE ranks units against their effects: it has turned). Effect drift above
    sees only the traffic, through the model; this sees the world (a review: an effect that
    reversed, with outcomes and exploration logged, raised nothing)."""

    name = "effect_calibration"
    alerts = ("effect_calibration", "effect_reversal")
    needs_outcomes = True

    def run(self, m: MonitorInputs) -> CheckResult | None:
        if m.outcomes is None or not m.binary or not {"action", "propensity"} <= set(m.live.columns):
            return None
        frame = with_outcomes(m.live, m.outcomes)
        unmatched = unmatched_outcomes(m.live, m.outcomes, len(frame))
        e = treatment_probability(frame)
        frame = frame[np.isin(frame["action"].to_numpy(float), (0.0, 1.0)) & (e > 0) & (e < 1)]
        clusters = clusters_of(frame)
        units = len(np.unique(clusters))
        if len(frame) < MIN_POLICY_ROWS or units < MIN_POLICY_UNITS:
            return CheckResult({"rows": int(len(frame)), "note": f"too few explored rows with outcomes (at least "
                                f"{MIN_POLICY_ROWS} of {MIN_POLICY_UNITS} units): {len(frame)} of {units} units; "
                                + (unmatched or "serve with exploration (--explore) to judge the effect")})
        psi = effect_scores(frame, outcome_model(frame, m.covariates, m.seed, clusters=clusters))
        cate = frame["cate"].to_numpy(float)
        gap = psi - cate
        summary = {"rows": int(len(frame)), "units": int(units), "logged_effect": float(psi.mean()),
                   "served_effect": float(cate.mean())}
        signals = []
        # The served CATE's mean misses the effect by the model's own error as well (its bias and
        # its training noise), the same at training as now: the test is of the gap's change since
        # training, the trained ATE's standard error beside the live one (a review: tested against
        # 0, 3 of 8 correct models alarmed at 40,000 live rows).
        trained = m.training_effect or {}
        ate, ate_se = trained.get("ate"), trained.get("ate_stderr")
        if ate is not None and ate_se is not None and np.isfinite([ate, ate_se]).all():
            then = float(ate - m.reference["cate"].mean())
            se = float(np.hypot(clustered_stderr(gap - gap.mean(), len(gap), clusters), ate_se))
            p_mean = float(2 * stats.norm.sf(abs(gap.mean() - then) / se)) if se > 0 else 1.0
            summary.update(gap_training=then, gap_live=float(gap.mean()), p_value=p_mean)
            signals.append(Signal("effect_calibration", f"logged outcomes give an average effect of {psi.mean():.4g} "
                                  f"where the served CATE averages {cate.mean():.4g}: a gap of {gap.mean():+.4g}, "
                                  f"{then:+.4g} at training (p = {p_mean:.2g})", p_value=p_mean,
                                  details={"p_value": p_mean}))
        else:
            summary["note"] = "no trained ATE with a standard error to compare with: only the ranking is tested"
        centred = cate - cate.mean()
        spread = float(np.mean(centred**2))
        if spread > 0:  # a constant CATE ranks nothing
            slope = float(np.mean(centred * (psi - psi.mean())) / spread)
            influence = centred * (psi - psi.mean() - slope * centred) / spread
            slope_se = clustered_stderr(influence - influence.mean(), len(psi), clusters)
            p_turn = float(stats.norm.cdf(slope / slope_se)) if slope_se > 0 else 1.0
            summary.update(slope=slope, slope_stderr=slope_se, slope_p_value=p_turn)
            signals.append(Signal("effect_reversal", f"the served CATE ranks units against their logged effects "
                                  f"(slope {slope:.3g}, p = {p_turn:.2g})", p_value=p_turn,
                                  details={"p_value": p_turn}))
        return CheckResult(summary, signals)


class ShadowAgreement:
    name = "shadow"
    alerts = ()

    def run(self, m: MonitorInputs) -> CheckResult | None:
        if not len(m.shadow):
            return None
        version = latest_version(m.shadow)  # as the judgement: one shadow version, the latest
        shadow = m.shadow[m.shadow["version"] == version]
        pairs = with_shadow(m.live, shadow, ["cate"])
        if len(pairs) < 10:
            return None
        a, b = pairs["cate"].to_numpy(), pairs["cate_shadow"].to_numpy()
        result = {"version": version, "pairs": int(len(pairs)),
                  "action_disagreement": float(np.mean((a > 0) != (b > 0)))}
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # no ranking to compare: a NaN had reached the gauge (a review)
            return CheckResult({**result, "spearman": None, "top_decile_overlap": None,
                                "note": "a constant CATE ranks nothing: no rank correlation or top-decile overlap"})
        k = max(1, len(a) // 10)
        top_a, top_b = set(np.argsort(-a)[:k]), set(np.argsort(-b)[:k])
        return CheckResult({**result, "spearman": float(stats.spearmanr(a, b)[0]),
                            "top_decile_overlap": len(top_a & top_b) / k})


CHECKS = (CovariateDrift(), DomainClassifier(), Support(), PropensityDrift(), EffectDrift(), EffectCalibration(),
          ShadowAgreement())
ALERTS = tuple(name for check in CHECKS for name in check.alerts)  # every kind of alert, for the gauges


# ----------------------------------------------------------------------------- the monitor
# Relative costs of monitoring's steps, for its progress lines. Measured at 50,000 live rows: the
# two classifiers (domain, propensity) 1-2 s, the other checks a tenth of that or less.
STEP_COSTS = {"reading the event log": 1, "domain_classifier": 1, "propensity": 1, "effect_calibration": 1,
              "policy value": 2}


def monitor_steps(checks, outcomes: bool) -> dict[str, float]:
    """The steps of `monitor` with `checks` (name -> relative cost), and the policy value's with outcomes."""
    steps = {check.name: STEP_COSTS.get(check.name, 0.1) if outcomes or not getattr(check, "needs_outcomes", False)
             else 0.01 for check in checks}
    return {**steps, "policy value": STEP_COSTS["policy value"]} if outcomes else steps


def monitor(events: pd.DataFrame, reference: pd.DataFrame, columns: list[str], config: MonitorConfig | None = None,
            outcomes: pd.DataFrame | None = None, seed: int = 0, checks=CHECKS, progress: bool | None = False,
            training_effect: dict | None = None) -> dict:
    """Every check on one model's event log against its reference profile; alerts and a
    recommendation. `outcomes` has request_id and row (or unit_id) and an `outcome` column.
    `training_effect` (the card's `effect`: `ate`, `ate_stderr`) lets the effect calibration test
    the average effect. `progress`: progress on stderr (`tauforge.kernels.progress`), a step per check."""
    outcomes = None if outcomes is None else check_outcomes(outcomes)
    with progress_steps("monitoring", monitor_steps(checks, outcomes is not None), progress) as steps:
        return _monitor(events, reference, columns, config, outcomes, seed, checks, steps, training_effect)


def window_start(since: str, now: float) -> float:
    """The monitored window's start in epoch seconds (the event log's `time`): `since` is a
    duration back from `now` ('30m', '24h', '7d') or an ISO-8601 time ('2026-12-01',
    '2026-12-01T08:00:00+00:00'; UTC if it names no zone), from 1970 on. A duration of 0 or less,
    or one reaching before 1970, is refused: pandas read '0h' as the year 1, and the run failed
    after judging, with a message that named no flag (an ops review)."""
    text = str(since).strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    shown = f"--since {since!r}"
    if text[-1:] in units:
        try:
            amount = float(text[:-1])
        except ValueError:
            amount = None
        if amount is not None:
            if not 0 < amount * units[text[-1]] <= now:
                raise ValueError(f"{shown}: a duration must be more than 0 and reach back no further than 1970; "
                                 "leave --since out to judge the whole log")
            return now - amount * units[text[-1]]
    try:
        start = pd.Timestamp(text) if text else pd.NaT
    except (ValueError, OverflowError):
        start = pd.NaT
    if start is pd.NaT:
        raise ValueError(f"{shown} is neither a duration (30m, 24h, 7d) nor an ISO-8601 time (2026-12-01T08:00:00)")
    seconds = (start.tz_localize("UTC") if start.tzinfo is None else start).timestamp()
    if seconds < 0:
        raise ValueError(f"{shown} is before 1970, where no event log reaches; leave --since out to judge the "
                         "whole log")
    return seconds


def check_live_inputs(live: pd.DataFrame, columns: list[str], files_without: dict | None = None) -> None:
    """The champion's rows hold every covariate the model was trained on, and a CATE, all finite:
    ValueError naming the first that does not (a log written by another tool, or for another
    model's columns), before a check trips over it. `files_without`: the log's files that lack a
    column others hold (`events.read_events`' attrs), named where that is why values are missing."""
    for column in [*input_columns(columns), "cate"]:
        if column not in live.columns:
            raise ValueError(f"the event log has no column {column!r}, which the model's covariates need "
                             f"({', '.join(columns)}): is it this model's log?")
        lacking = (files_without or {}).get(column, [])
        if lacking and live[column].isna().any():  # a walkthrough: read as "missing values", another writer's
            raise ValueError(f"{len(lacking)} of the event log's files have no column {column!r}, which the model's "
                             f"covariates need ({', '.join(columns)}), e.g. {lacking[0]}: is it this model's log?")
        values = pd.to_numeric(live[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ValueError(f"the event log's column {column!r} holds missing or non-finite values in {bad} of "
                             f"{len(values)} champion rows; tauforge serve refuses such requests, so another writer "
                             "logged them: drop those rows")


def unit_codes(live: pd.DataFrame) -> np.ndarray:
    """Each live row's unit as a code, a row without a unit id its own: a unit scored again and
    again sends rows that are not independent. Not `judgement.clusters_of`, which groups such
    rows by request because the canary's split assigns a request whole: a batch request's rows
    are as independent as the rows its caller sent."""
    units = live["unit_id"] if "unit_id" in live else pd.Series(None, index=live.index, dtype=object)
    codes = pd.factorize(units)[0]  # -1 where missing; in order of appearance
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return codes


def rows_text(result: dict, side: str) -> str:
    """'1000 live rows' (`side`: live or reference) from `monitor`'s result, with the effective
    number where groups made it fewer (results from before groups have none)."""
    rows, effective = result[f"{side}_rows"], result.get(f"{side}_effective_rows", result[f"{side}_rows"])
    return f"{rows} {side} rows" + ("" if effective == rows else f" (as {effective:.0f} independent, by group)")


def _monitor(events, reference, columns, config, outcomes, seed, checks, steps: Progress,
             training_effect: dict | None = None) -> dict:
    config = config or MonitorConfig()
    live = events[events["role"] == "champion"]
    if len(live):
        check_live_inputs(live, list(columns), events.attrs.get("files_without"))
    shadow = events[events["role"] == "shadow"]
    challenger = events[events["role"] == "challenger"]
    live_groups, ref_groups = unit_codes(live), reference_groups(reference)
    # The floors' measure, from the sizes alone; each test takes its own `design_effect`.
    live_size = effective_groups(live_groups) if len(live) else 0.0
    ref_size = effective_groups(ref_groups)
    result: dict = {"live_rows": int(len(live)), "reference_rows": int(len(reference)),
                    "live_effective_rows": live_size, "reference_effective_rows": ref_size, "alerts": [], "checks": {}}
    signals: list[Signal] = []
    if live_size < config.min_live_rows or ref_size < MIN_GROUPS:  # a canary's outcomes may still be judged
        units = "" if live_size == len(live) else f" from units that weigh as {live_size:.0f} independent rows"
        result["note"] = (f"{len(live)} live rows{units}; at least {config.min_live_rows} are needed to judge drift"
                          if live_size < config.min_live_rows else
                          f"the reference's {len(reference)} rows come from groups that weigh as {ref_size:.0f} "
                          f"independent rows; at least {MIN_GROUPS} are needed to judge drift")
        steps.update(sum(STEP_COSTS.get(check.name, 0.1) for check in checks))
        checks = ()
    inputs = MonitorInputs(live, shadow, reference, list(columns), config, seed, ref_groups, live_groups, outcomes,
                           training_effect)
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
        result["policy"] = steps.run("policy value", judge, live, shadow, challenger, outcomes, columns, config,
                                     seed)
        result["recommendation"] = result["policy"]["recommendation"]
    result["retrain"] = bool(result["alerts"])
    return result


# The champion's latest rows, which say the version it serves now: those of this last stretch of the log.
SERVED_WINDOW_S = 3600.0


def monitored_version(store, model: str, events: pd.DataFrame, version=None) -> int:
    """The version to monitor: `version` if given; else the 'champion' alias if it answered
    champion rows in the log's last hour (within the hour after a promotion or a rollback the
    version it replaced answered most of them), else the one that answered most of them (the one
    being served now: a version promoted during the window must not be outnumbered by the one it
    replaced); with no champion rows, the 'champion' alias, else the latest."""
    if version not in (None, ""):
        return store.resolve(model, version)
    champion = events[(events["model"] == model) & (events["role"] == "champion")] if len(events) else events
    if len(champion):
        times = pd.to_numeric(champion["time"], errors="coerce").to_numpy(float)
        finite = np.isfinite(times)
        if finite.any():
            champion = champion[times >= times[finite].max() - SERVED_WINDOW_S]
        # The registry's champion, where it answered lately: within the hour after a promotion
        # or a rollback, the version it replaced answered most of the hour's rows.
        if store is not None and "champion" in store.aliases(model):
            promoted = store.resolve(model, "champion")
            if (champion["version"] == promoted).any():
                return promoted
        return int(champion["version"].mode()[0])
    return store.resolve(model, "champion" if "champion" in store.aliases(model) else None)


def write_gauges(result: dict, model: str, version: int, path: str) -> None:
    """The monitor's results as Prometheus gauges in the text exposition format (for the node
    exporter's textfile collector or a Pushgateway)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    from tauforge.kernels.serialization import replaced_whole

    registry = CollectorRegistry()
    labels = {"model": model, "version": str(version)}
    # A run that fails leaves the file as it was, and every gauge below then shows the last good
    # run (a walkthrough): this one's age says how old they are (the TauforgeMonitorStale alert).
    Gauge("tauforge_monitor_last_run_timestamp_seconds", "Unix time the last successful monitoring run wrote this",
          ["model", "version"], registry=registry).labels(**labels).set(time.time())
    g = Gauge("tauforge_monitor_alerts", "Alerts raised by the last monitoring run", ["model", "version", "check"],
              registry=registry)
    for check in ALERTS:
        g.labels(**labels, check=check).set(sum(a["check"] == check for a in result["alerts"]))
    Gauge("tauforge_monitor_retrain_needed", "1 when drift calls for retraining", ["model", "version"],
          registry=registry).labels(**labels).set(float(result.get("retrain", False)))
    Gauge("tauforge_monitor_live_rows", "Live rows in the monitored window", ["model", "version"],
          registry=registry).labels(**labels).set(result["live_rows"])
    # 0 alerts and 0 here is "not judged" (too few live rows, or a log path that reads nothing),
    # which must not look like a quiet period on a dashboard.
    Gauge("tauforge_monitor_drift_judged", "1 when the window held enough live rows to judge drift",
          ["model", "version"], registry=registry).labels(**labels).set(float("note" not in result))
    # Files skipped as unreadable were said only in the report's JSON (an ops review): judged
    # without them, the run looks complete on a dashboard.
    Gauge("tauforge_monitor_unreadable_files", "Event-log files the last monitoring run could not read and skipped",
          ["model", "version"], registry=registry).labels(**labels).set(len(result.get("unreadable_files", [])))
    rec = Gauge("tauforge_monitor_recommendation", "1 for the current recommendation",
                ["model", "version", "recommendation"], registry=registry)
    for r in ("promote", "hold", "roll back"):
        rec.labels(**labels, recommendation=r.replace(" ", "_")).set(float(result["recommendation"] == r))
    if "domain_classifier" in result["checks"]:
        Gauge("tauforge_monitor_domain_auc", "Domain classifier AUC, live vs training", ["model", "version"],
              registry=registry).labels(**labels).set(result["checks"]["domain_classifier"]["auc"])
    policy = result.get("policy", {})
    if "difference_dr" in policy:  # the judgement of champion against challenger, with its bounds
        g = Gauge("tauforge_monitor_challenger_difference", "Challenger minus champion from logged outcomes (a "
                  "shadow's policy values, a canary's outcomes) and its confidence sequence",
                  ["model", "version", "challenger_version", "judged", "bound"], registry=registry)
        lo, hi = policy["confidence_sequence"]
        for bound, value in (("estimate", policy["difference_dr"]), ("lower", lo), ("upper", hi)):
            g.labels(**labels, challenger_version=str(policy.get("challenger_version", "")), judged=policy["judged"],
                     bound=bound).set(value)
    if result["checks"].get("shadow", {}).get("spearman") is not None:
        Gauge("tauforge_monitor_shadow_spearman", "Spearman correlation of champion and shadow CATE",
              ["model", "version"], registry=registry).labels(**labels).set(result["checks"]["shadow"]["spearman"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # Whole or not at all, as the textfile collector needs; /dev/stdout written in place.
    with replaced_whole(path, binary=True) as f:
        f.write(generate_latest(registry))


# Event-log fields no check reads: not kept while the log is read (a fifth of its size in memory).
UNUSED_FIELDS = ("lower", "upper", "recommended_action", "explore_seed", "latency_ms")


# How far ahead of the monitor's clock a logged row's time may be and still be judged now.
FUTURE_SLACK_SECONDS = 3600


def run_monitor(store: str, model: str, log_dir: str, *, version: str | int | None = None,
                outcomes: str | None = None, config: MonitorConfig | None = None,
                progress: bool | None = False, since: str | None = None) -> dict:
    """The monitoring step: read `model`'s event log under `log_dir` (a folder or an fsspec URI),
    pick the version it served (`monitored_version`), load that version's reference profile from
    `store`, and `monitor`; the result names the model and version. `since` (`window_start`)
    keeps the rows logged from then on: without it every period's rows pile up, old traffic
    dilutes new drift and drift once logged alarms for ever. `progress`: progress on stderr
    (`tauforge.kernels.progress`), the reading and each check a step."""
    registry = ModelStore(store)
    now = time.time()
    start = window_start(since, now) if since else None
    read = read_outcomes(outcomes) if outcomes else None
    costs = {"reading the event log": STEP_COSTS["reading the event log"], **monitor_steps(CHECKS, read is not None)}
    with progress_steps("monitoring", costs, progress) as steps:
        reading = costs["reading the event log"]
        events = steps.run("reading the event log", read_events, log_dir, model=model, since=start,
                           skip=UNUSED_FIELDS, on_file=lambda done, total: steps.update(reading / total))
        unreadable, files = events.attrs.get("unreadable_files", []), events.attrs.get("files", 1)
        # Rows stamped ahead of this clock (a pod's clock running fast) are judged once their time
        # comes: kept, they fell in every --since window until then (a monitoring review).
        future = None
        if len(events) and (ahead := (events["time"] > now + FUTURE_SLACK_SECONDS).to_numpy()).any():
            latest = pd.Timestamp(float(events["time"][ahead].max()), unit="s", tz="UTC").floor("s").isoformat()
            future = {"rows": int(ahead.sum()), "latest": latest}
            events = events[~ahead]
        served = monitored_version(registry, model, events, version)
        loaded = registry.load(model, served)
        covariates, spec = card_covariates(loaded.card), loaded.card["spec"]
        others = {} if not len(events) else {
            int(v): int(n) for v, n in events.loc[(events["role"] == "champion") & (events["version"] != served),
                                                  "version"].value_counts().sort_index().items()}
        events = events[(events["role"] != "champion") | (events["version"] == served)]
        result = _monitor(events, load_reference(loaded.reference_path), covariates, config,
                          read, 0, CHECKS, steps, card_part(loaded.card, "effect"))
    card = loaded.card
    if start is not None:
        # To the second (a walkthrough read nanoseconds in `since 2026-12-07T18:28:22.578406811+00:00`).
        result["since"] = pd.Timestamp(start, unit="s", tz="UTC").floor("s").isoformat()
    if unreadable:  # judged without them, and said
        result["unreadable_files"] = unreadable
    if not files:  # an object store has no folders to tell a typo from a quiet log
        written = f" written since {result['since'][:10]}" if start is not None else ""
        result["note"] = (f"no event-log file of {model} under {redacted_uri(log_dir)}{written}: check --log-dir "
                          f"(a mistyped object-store prefix reads as an empty log)")
    if future:
        result["future_rows"] = future
    if others:  # a --version the log did not serve read as "0 live rows" alone (a review)
        result["other_champion_versions"] = others
    result.update(model=model, version=served, training={
        "run_id": card_part(card, "run").get("run_id"), "data_fingerprint": card_part(card, "data").get("fingerprint"),
        "treatment": spec.get("treatment"), "outcome": spec.get("outcome")})
    return result


# ----------------------------------------------------------------------------- KFP component
@component
def monitor_model(store: str, model_name: str, version: str, log_dir: str, outcomes: str, alpha: float,
                  report: Output[HTML], metrics: Output[Metrics], run_id: str = "", since: str = "") -> bool:
    """Monitor the served model's event log (the rows logged `since`, all if empty: see
    `run_monitor`); return whether drift calls for retraining. `run_id` names the monitoring run
    in the report's header."""
    from tauforge.components.monitor import MonitorConfig, run_monitor
    from tauforge.components.report import render_monitor_report

    result = run_monitor(store, model_name, log_dir, version=version or None, outcomes=outcomes or None,
                         config=MonitorConfig(alpha=alpha), progress=True, since=since or None)
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
