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
  statements), none for an empty set. The regression is a ridge regression (penalty by
  generalized cross-validation, `kernels.nuisance.GCVRidge`) on the conditioning variables, a
  12-knot cubic spline basis of each continuous one and the products of each pair, all
  standardized; then gradient-boosted trees (scikit-learn's HistGradientBoosting, early-stopped)
  on what it leaves. Trees alone approximate a smooth trend by steps, and the two variables of
  a pair then share the steps' errors, which are the test's bias under independence. A review
  (2026-12-06) drew data from graphs whose common causes act through sin(3 Z) or Z1 Z2: with 6
  knots and no products (least squares), the true graph was rejected at 5% in 25-85% of seeds;
  with these, 7% of 60. Over 40 seeds of each of three other designs, and 400 of
  tests/test_graph_checks.py's graph (tests/benchmarks/bench_graph_checks.py: each statement
  rejected at 5% in 4.0-6.8%, the Holm check failing in 4.3% at 0.05 and 1.3% at 0.01), every
  rate stayed within what a valid test allows; the dropped edge A -> Y was caught in 395 of 400
  (400 before). A check of that graph costs about 0.3 s.
What it cannot see: the GCM tests a zero average conditional covariance, so a dropped edge whose
effect changes sign with the conditioning variables and averages to zero (T -> Y where the
effect is A T with A centred: exactly the heterogeneity a causal forest estimates) passes. The
"hardness" of Shah and Peters holds for every test: none has power against every alternative.
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
SPLINE_KNOTS = 12
SMOOTH_MIN_VALUES = 10  # a column with more distinct values than this gets a spline basis
TEST = ("generalised covariance measure (Shah & Peters 2020): residuals of a ridge regression on splines and "
        "pairwise products plus gradient-boosted trees on the conditioning set, cross-fitted in 5 folds; two-sided "
        "normal p-value")
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

    from tauforge.kernels.nuisance import GCVRidge

    k = folds or FOLDS
    splits = (KFold(k, shuffle=True, random_state=seed).split(Z) if groups is None else
              GroupKFold(min(k, len(np.unique(groups))), shuffle=True, random_state=seed).split(Z, groups=groups))
    out = np.empty_like(v)
    for train, test in splits:
        # Splines for the continuous columns (a binary one is its own basis), knots from this fold.
        smooth = [j for j in range(Z.shape[1]) if len(np.unique(Z[train, j])) > SMOOTH_MIN_VALUES]
        splines = (SplineTransformer(n_knots=SPLINE_KNOTS, degree=3, extrapolation="linear").fit(Z[train][:, smooth])
                   if smooth else None)
        fit, held_out = (_additive_design(Z[rows], splines, smooth) for rows in (train, test))
        center, scale = fit.mean(axis=0), fit.std(axis=0)
        scale[scale == 0] = 1.0
        ridge = GCVRidge().fit((fit - center) / scale, v[train])  # one penalty for columns of one scale
        trees = _regression(seed).fit(Z[train], v[train] - ridge.predict((fit - center) / scale))
        out[test] = v[test] - ridge.predict((held_out - center) / scale) - trees.predict(Z[test])
    return out


def _additive_design(Z: np.ndarray, splines, smooth: list[int]) -> np.ndarray:
    """The columns of Z, the spline basis of its continuous ones and the products of its pairs."""
    pairs = np.triu_indices(Z.shape[1], 1)
    parts = [Z, Z[:, pairs[0]] * Z[:, pairs[1]]] + ([splines.transform(Z[:, smooth])] if splines is not None else [])
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
