"""The declared causal graph's testable implications, checked on the training data (the evaluate
step's `graph_checks` section, and the gate's `min_graph_pvalue`).

What is tested. For each pair of observed nodes with no edge between them, the graph implies one
conditional independence: the pair given a minimal set of observed nodes that d-separates it
(`graph.CausalGraph.implied_independences`, networkx's d-separation; dagitty's "missing edge"
basis, what its `localTests` checks). A graph with a missing edge (or a missing common cause) the
data contradict fails some of them.

The test: the generalised covariance measure (GCM; Shah and Peters 2020, "The hardness of
conditional independence testing and the generalised covariance measure"). Regress each of the
pair on the conditioning set, cross-fitted (5 folds); with residuals r_a, r_b and R = r_a r_b,
    z = sqrt(n) mean(R) / sd(R),  two-sided p-value from N(0, 1).
Why this one:
- mixed data: it needs only conditional means, so a binary variable (a treatment) is regressed
  like a continuous one (E[T | Z] is its propensity); nothing assumes Gaussian or linear data;
- valid variance: sd(R) is estimated from the products themselves, so it stays right when the
  residuals' spread changes with the conditioning set (a binary variable's always does: its
  variance is e(1 - e)). The Fisher z-test of a partial correlation takes Var(R) = Var(r_a)
  Var(r_b), true only when the residuals are independent of the conditioning set as well;
- doubly robust: under independence the mean of R is zero when either regression is right, and
  its bias is the product of the two regression errors (the argument of double machine learning,
  as in the rest of tauforge): cross-fitting keeps overfitting out of it;
- fast: one cross-fitted regression per variable and conditioning set (cached across
  statements), none for an empty set. The regression is an additive model fit by least squares
  (each conditioning variable linearly, and a continuous one by a cubic spline too), then
  gradient-boosted trees (scikit-learn's HistGradientBoosting, early-stopped) on what it leaves,
  for interactions. Trees alone approximate a smooth trend by steps, and the two variables of a
  pair then share the steps' errors; splines remove the smooth part first, and 5 folds train
  each fit on 80% of the rows. Both shrink the regressions' errors, whose product is the test's
  bias under independence. Measured over 500 seeds of tests/test_graph_checks.py's graph
  (n = 1,000), the two worst statements' 5% rejection rates: 8.0% and 8.6% with trees alone in 2
  folds, 9.2% and 7.4% with splines in 2 folds, 7.6% and 7.2% with splines in 5 folds (each
  within about 1.1 points of noise): the GCM stays somewhat liberal at this size. Over 400 other
  seeds (tests/benchmarks/bench_graph_checks.py) every statement stayed within what a valid 5%
  test allows (4.8-7.2%), and the Holm-corrected check failed the true graph in 4.5% of seeds at
  0.05, 1.3% at 0.01. A check of that graph costs 1-1.7 s on 2 busy cores (half in 2 folds).
At most `max_rows` rows (a seeded sample) are used: the cost stays bounded, and a graph that is
only approximately true is not refuted by a million rows' power to see negligible dependence.
Sample weights are not used.

Multiple testing: Holm's step-down correction, which controls the family-wise error rate, the
chance that a true graph has any statement rejected, at the gate's level under any dependence
between the tests. The tests here share variables, so their p-values are dependent in ways not
known in advance; Benjamini-Hochberg needs independence or positive dependence (PRDS) for its
guarantee and controls the false discovery rate, a share of rejections, whereas the gate's
question is whether any implication fails: one rejection refutes the graph.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tauforge.kernels.ate import clustered_stderr

from .graph import CausalGraph, Independence

MAX_ROWS = 20_000
FOLDS = 5
SPLINE_KNOTS = 6
TEST = ("generalised covariance measure (Shah & Peters 2020): residuals of an additive spline model plus "
        "gradient-boosted trees on the conditioning set, cross-fitted in 5 folds; two-sided normal p-value")
CORRECTION = "holm"
NO_GRAPH = "no causal graph was given: no implications to test"


def _regression(seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=20,
                                         early_stopping=True, validation_fraction=0.2, n_iter_no_change=5,
                                         random_state=seed)


def residual(v: np.ndarray, Z: np.ndarray, seed: int = 0, folds: int | None = None,
             groups: np.ndarray | None = None) -> np.ndarray:
    """v minus its cross-fitted prediction from Z (an additive spline model by least squares, then
    boosted trees on what it leaves), whole `groups` (codes, one per row) held out together; v
    minus its mean when Z has no columns."""
    if Z.shape[1] == 0:
        return v - v.mean()
    from sklearn.model_selection import GroupKFold, KFold
    from sklearn.preprocessing import SplineTransformer

    k = folds or FOLDS
    splits = (KFold(k, shuffle=True, random_state=seed).split(Z) if groups is None else
              GroupKFold(min(k, len(np.unique(groups))), shuffle=True, random_state=seed).split(Z, groups=groups))
    out = np.empty_like(v)
    for train, test in splits:
        # Splines for the continuous columns (a binary one is its own basis), knots from this fold.
        smooth = [j for j in range(Z.shape[1]) if len(np.unique(Z[train, j])) > SPLINE_KNOTS + 4]
        splines = (SplineTransformer(n_knots=SPLINE_KNOTS, degree=3, extrapolation="linear").fit(Z[train][:, smooth])
                   if smooth else None)
        fit, held_out = (_additive_design(Z[rows], splines, smooth) for rows in (train, test))
        beta, *_ = np.linalg.lstsq(fit, v[train], rcond=None)  # minimum norm: the bases overlap
        trees = _regression(seed).fit(Z[train], v[train] - fit @ beta)
        out[test] = v[test] - held_out @ beta - trees.predict(Z[test])
    return out


def _additive_design(Z: np.ndarray, splines, smooth: list[int]) -> np.ndarray:
    """An intercept, the columns of Z, and the spline basis of its continuous ones."""
    parts = [np.ones((len(Z), 1)), Z] + ([splines.transform(Z[:, smooth])] if splines is not None else [])
    return np.column_stack(parts)


def gcm_test(r_a: np.ndarray, r_b: np.ndarray, groups: np.ndarray | None = None) -> tuple[float, float]:
    """(z, two-sided p-value) of the generalised covariance measure of two residual vectors; NaN
    when their product is constant (a constant variable). With `groups` (codes, one per row) the
    product's mean has the clustered standard error (`kernels.ate.clustered_stderr`)."""
    from scipy.stats import norm

    product = r_a * r_b
    sd = product.std()
    if not sd > 1e-12 * max(np.abs(product).max(), 1e-300):
        return float("nan"), float("nan")
    z = float(product.mean() / clustered_stderr(product - product.mean(), len(product), groups))
    return z, float(2 * norm.sf(abs(z)))


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values, in the order given: reject where adjusted < level. The k-th
    smallest p-value times the number of hypotheses not yet rejected (m - k + 1), made
    non-decreasing and capped at 1. statsmodels' `multipletests(method="holm")` gives the same
    numbers (tests/test_graph_checks.py compares them) but runs a full `gc.collect()` on every
    call (statsmodels PR #8671, unmerged): 0.2 s in a process holding torch and EconML, more than
    the whole check takes here."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(np.maximum.accumulate(p_values[order] * np.arange(m, 0, -1)), 1.0)
    return adjusted


def check_graph(graph: CausalGraph | None, table: pd.DataFrame, seed: int = 0, max_rows: int = MAX_ROWS,
                groups: np.ndarray | None = None) -> dict:
    """Every independence `graph` implies among `table`'s columns, tested: the `graph_checks`
    section of an evaluation. `min_adjusted_p_value` is what the gate compares (None when nothing
    was testable). With `groups` (codes, one per row of `table`: rows of a group are not
    independent) the folds, the tests' standard errors and a large table's subsample keep
    groups whole."""
    if graph is None:
        return {"given": False, "note": NO_GRAPH}
    statements, unseparable = graph.implied_independences(table.columns)
    if len(table) > max_rows:
        rng = np.random.default_rng([seed, 2])
        if groups is None:
            rows = np.sort(rng.choice(len(table), max_rows, replace=False))
        else:  # whole groups, about max_rows rows of them
            n_groups = int(groups.max()) + 1
            drawn = rng.choice(n_groups, max(2, int(n_groups * max_rows / len(table))), replace=False)
            rows = np.flatnonzero(np.isin(groups, drawn))
            groups = groups[rows]
        table = table.iloc[rows]
    columns, unusable = {}, {}
    for name in {n for s in statements for n in (s.a, s.b, *s.given)}:
        column = table[name]
        if not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
            unusable[name] = f"column {name!r} is not numeric"
            continue
        values = column.to_numpy(np.float64, na_value=np.nan)
        if not np.isfinite(values).all():
            unusable[name] = f"column {name!r} has missing or infinite values"
        elif np.ptp(values) == 0:
            unusable[name] = f"column {name!r} is constant"
        else:
            columns[name] = values
    cache: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def residual_of(name: str, given: tuple[str, ...]) -> np.ndarray:
        if (name, given) not in cache:
            Z = np.column_stack([columns[g] for g in given]) if given else np.empty((len(table), 0))
            cache[name, given] = residual(columns[name], Z, seed, groups=groups)
        return cache[name, given]

    tested, untestable = [], []
    for s in statements:
        bad = [unusable[n] for n in (s.a, s.b, *s.given) if n in unusable]
        if bad:
            untestable.append({"statement": str(s), "reason": bad[0]})
            continue
        z, p = gcm_test(residual_of(s.a, s.given), residual_of(s.b, s.given), groups)
        if np.isnan(p):
            untestable.append({"statement": str(s), "reason": f"{s.a} or {s.b} is a function of the conditioning "
                                                              "set: a residual is constant"})
        else:
            tested.append(_statement(s, z, p))
    adjusted = holm([t["p_value"] for t in tested])
    for t, q in zip(tested, adjusted):
        t["adjusted_p_value"] = float(q)
    return {"given": True, "graph_sha256": graph.sha256, "test": TEST, "correction": CORRECTION,
            "rows": int(len(table)), "statements": tested, "untestable": untestable,
            "unseparable_pairs": [list(pair) for pair in unseparable],
            "min_adjusted_p_value": float(min(adjusted)) if len(tested) else None}


def _statement(s: Independence, z: float, p: float) -> dict:
    return {"statement": str(s), "a": s.a, "b": s.b, "given": list(s.given), "statistic": z, "p_value": p}


def rejected(section: dict, level: float) -> list[dict]:
    """The statements of a `graph_checks` section the data contradict at family-wise `level`,
    most significant first."""
    if not section.get("given"):
        return []
    return sorted((t for t in section["statements"] if t["adjusted_p_value"] < level),
                  key=lambda t: t["adjusted_p_value"])
