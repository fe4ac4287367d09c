"""Uplift metrics: how well a score ranks units by their treatment effect. The one owner of the
definitions of the cumulative gain (uplift) curve, the Qini curve and their areas (AUUC and the
Qini coefficient); the evaluate and monitor steps import them.

Rows are ranked by the score, highest first (a stable sort), and the curves are read at k = 0,
1, ..., n rows treated. Two estimates of the effect among the top k:

Doubly robust (`doubly_robust`, what evaluate and monitor report). Each row carries a debiased
score psi_i whose mean over any group estimates the group's average effect (evaluate: the AIPW
score of the out-of-bag CATE, `kernels.ate.debiased_scores`; monitor: the AIPW score from logged
outcomes and the logging propensities). As grf's `rank_average_treatment_effect` does:
    gain(k) = (1/n) sum of psi over the top k       the average effect per unit of the whole
                                                     population when the top k/n are treated
    qini(k) = gain(k) - (k/n) gain(n)               the gain over treating k/n at random
                                                    (= q TOC(q), q = k/n)
    AUUC    = mean of gain(k) over k = 0..n;  Qini coefficient = mean of qini(k) = AUUC - ATE/2,
the discrete form of grf's RATE with QINI weights (Yadlowsky et al. 2021). As grf does, rows
whose scores tie share their mean psi (`tie_runs`, `tie_averaged`): a ranking cannot tell them
apart, and their row order must not decide the result (a review: a constant score "found" an
AUTOC with p = 0 on a table sorted by outcome). With sample weights, psi's sums and the share
treated are weighted (n is then the weights' sum, the weights scaled to mean 1 over the rows of
positive weight). They are in the
outcome's units, valid under the same conditions as the average effect (no confounding beyond
what the nuisance models adjust for), binary or continuous treatment alike. The rows must not
have shaped the score: out-of-bag predictions in evaluate (grf ranks its training rows the same
way), live traffic the model never trained on in monitor.

Classic (`cumulative_gain`, `qini_curve`, `auuc_score`, `qini_score`): CausalML's definitions
(`causalml.metrics.get_cumgain`, `get_qini`, `auuc_score`, `qini_score`, version 0.18.0; tied
rows left in row order, not averaged, as `ranking` says), from
outcome, binary treatment and score alone. Differences of mean outcomes between the arms among
the top k, which estimate effects only when the treatment was randomized (with one probability
for every row). Given `effect` (CausalML's `treatment_effect_col`: a known or estimated effect
per row), that replaces the arms' difference. Kept to the digit so that numbers compare with
CausalML's: the lift at k rows is NaN while the top k hold no treated or no control row and is
linearly interpolated from 0 at k = 0, as pandas' `interpolate` does; areas divide by n + 1
points; `normalize` divides a curve by the absolute value of its end.
"""

from __future__ import annotations

import numpy as np

from tauforge.kernels._inputs import weighted_rows
from tauforge.kernels.bootstrap import bootstrap_counts

# The curves kept in a result (for the reports' charts): read at this many evenly spaced shares.
CURVE_POINTS = 101


def ranking(score) -> np.ndarray:
    """Row indices from the highest score to the lowest; tied rows in row order. (CausalML sorts
    with pandas' default quicksort, whose order among ties is arbitrary: compare on tie-free scores.)"""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 1 or not np.isfinite(score).all():
        raise ValueError("score must be one finite value per row")
    return np.argsort(-score, kind="stable")


def tie_runs(ranked_score: np.ndarray) -> np.ndarray | None:
    """For scores in rank order, the run of equal scores each row is in (0, 1, ...); None when no
    two rows tie (nothing to average)."""
    new = np.r_[True, ranked_score[1:] != ranked_score[:-1]]
    return None if new.all() else np.cumsum(new) - 1


def tie_averaged(psi_ranked: np.ndarray, weight: np.ndarray, runs: np.ndarray | None) -> np.ndarray:
    """Effect scores in rank order, each run of tied rows (`tie_runs`) holding its `weight`-ed mean."""
    if runs is None:
        return psi_ranked
    total = np.bincount(runs, weights=weight)
    mean = np.divide(np.bincount(runs, weights=weight * psi_ranked), total, out=np.zeros_like(total),
                     where=total > 0)
    return mean[runs]


def _arrays(outcome, treatment, score, effect) -> tuple:
    order = ranking(score)
    n = len(order)
    if n == 0:
        raise ValueError("score is empty: no rows to rank")
    columns = {"outcome": outcome, "treatment": treatment, "effect": effect}
    out = []
    for name, values in columns.items():
        if values is None:
            out.append(None)
            continue
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n,):
            raise ValueError(f"{name} must have one value per row of score ({n}), got shape {values.shape}")
        if not np.isfinite(values).all():
            first = int(np.argmax(~np.isfinite(values)))
            raise ValueError(f"{name} has a NaN or infinite value (first at row {first})")
        out.append(values[order])
    y, t, tau = out
    if t is not None and not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("treatment must be binary (0 or 1) for the classic uplift curves")
    if tau is None and (y is None or t is None):
        raise ValueError("give outcome and treatment, or effect")
    return y, t, tau, n


def _interpolated(values: np.ndarray) -> np.ndarray:
    """0 at k = 0, then `values` at k = 1..n with NaN filled linearly between known points and
    the last known value carried forward (pandas' `interpolate()` on CausalML's frame)."""
    curve = np.concatenate([[0.0], values])
    known = ~np.isnan(curve)
    if not known.all():
        k = np.arange(len(curve))
        curve[~known] = np.interp(k[~known], k[known], curve[known])
    return curve


def _normalized(curve: np.ndarray) -> np.ndarray:
    return curve / abs(curve[-1])


def cumulative_gain(outcome=None, treatment=None, score=None, *, effect=None, normalize: bool = False) -> np.ndarray:
    """The cumulative gain at k = 0..n rows (CausalML's `get_cumgain`): k times the lift among the
    top k, the lift being the mean of `effect` there or else the treated rows' mean outcome minus
    the control rows'."""
    y, t, tau, n = _arrays(outcome, treatment, score, effect)
    k = np.arange(1, n + 1, dtype=np.float64)
    if tau is not None:
        lift = np.cumsum(tau) / k
    else:
        treated = np.cumsum(t)
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = np.cumsum(y * t) / treated - np.cumsum(y * (1 - t)) / (k - treated)
    gain = _interpolated(lift) * np.arange(n + 1)
    return _normalized(gain) if normalize else gain


def qini_curve(outcome=None, treatment=None, score=None, *, effect=None, normalize: bool = False) -> np.ndarray:
    """The Qini curve at k = 0..n rows (CausalML's `get_qini`, Radcliffe 2007): the treated rows'
    total outcome among the top k minus the control rows' scaled to the treated count, or with
    `effect` its mean over the top k times their treated count."""
    y, t, tau, n = _arrays(outcome, treatment, score, effect)
    if t is None:
        raise ValueError("the classic Qini curve needs the treatment (its treated count)")
    k = np.arange(1, n + 1, dtype=np.float64)
    treated = np.cumsum(t)
    if tau is not None:
        qini = np.cumsum(tau) / k * treated
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            qini = np.cumsum(y * t) - np.cumsum(y * (1 - t)) * treated / (k - treated)
    curve = _interpolated(qini)
    return _normalized(curve) if normalize else curve


def auuc_score(outcome=None, treatment=None, score=None, *, effect=None, normalize: bool = True) -> float:
    """Area under the cumulative gain curve (CausalML's `auuc_score`): its mean over k = 0..n."""
    gain = cumulative_gain(outcome, treatment, score, effect=effect, normalize=normalize)
    return float(gain.sum() / len(gain))


def qini_score(outcome=None, treatment=None, score=None, *, effect=None, normalize: bool = True) -> float:
    """Area between the Qini curve and the straight line of random targeting from its start to its
    end (CausalML's `qini_score`), per point over k = 0..n."""
    qini = qini_curve(outcome, treatment, score, effect=effect, normalize=normalize)
    random = np.linspace(qini[0], qini[-1], len(qini))
    return float((qini.sum() - random.sum()) / len(qini))


# ----------------------------------------------------------------------------- doubly robust
def _areas(psi_ranked: np.ndarray, counts: np.ndarray | None = None,
           runs: np.ndarray | None = None) -> tuple[float, float]:
    """(AUUC, Qini coefficient) of effect scores in rank order; `counts` (how often each row is
    drawn, a bootstrap resample, times its weight) repeats rows in place, so resamples need no
    new sort; tied rows (`runs`) share their mean. With n rows drawn, AUUC = mean over k = 0..n
    of S_k / n, S_k the sum of the first k scores."""
    if counts is None:
        counts = np.ones(len(psi_ranked))
    psi_ranked = tie_averaged(psi_ranked, counts, runs)
    n = counts.sum()
    total = np.cumsum(counts * psi_ranked)
    before = total - counts * psi_ranked
    # Within a row drawn c times the partial sums run S + psi, ..., S + c psi.
    sum_partial = np.sum(counts * before + psi_ranked * counts * (counts + 1) / 2)
    auuc = sum_partial / n / (n + 1)
    return float(auuc), float(auuc - total[-1] / n / 2)


def doubly_robust(score, effect_scores, *, n_bootstrap: int = 200, seed: int = 0,
                  points: int = CURVE_POINTS, groups: np.ndarray | None = None, sample_weight=None) -> dict:
    """Gain and Qini curves and areas of a ranking by `score`, from per-row debiased effect
    scores: {'auuc', 'qini', their bootstrap standard errors, 'qini_pvalue' (one-sided: the
    ranking beats random), 'ate', 'rows', 'curve': the curves at `points` evenly spaced shares}.
    With `groups` (codes, one per row) the bootstrap draws whole groups; with `sample_weight`
    the rows count by their weights (rows of weight 0 not at all)."""
    psi = _effect_scores(effect_scores, score)
    w, score, psi, groups = weighted_rows(sample_weight, np.asarray(score, dtype=np.float64), psi, groups=groups)
    order = ranking(score)
    n = w.sum()
    w_ranked, runs = w[order], tie_runs(score[order])
    tied = tie_averaged(psi[order], w_ranked, runs)  # once, for the areas and the curves
    auuc, qini = _areas(tied, w_ranked)
    (se_auuc, se_qini), = _bootstrap_se(psi, [order], n_bootstrap, seed, groups=groups, weight=w, runs=[runs])
    gain = np.concatenate([[0.0], np.cumsum(w_ranked * tied)]) / n
    treated = np.concatenate([[0.0], np.cumsum(w_ranked)]) / n  # the share treated after each row
    rows = len(psi)
    share = np.unique(np.round(np.linspace(0, rows, min(points, rows + 1)))) / rows
    gain_at, ate = np.interp(share, treated, gain), gain[-1]  # unweighted, read at its own rows exactly
    return {"auuc": auuc, "auuc_stderr": se_auuc, "qini": qini, "qini_stderr": se_qini,
            "qini_pvalue": _one_sided(qini, se_qini), "ate": float(ate), "rows": len(psi),
            "bootstrap": n_bootstrap,
            "curve": {"share": share.tolist(), "gain": gain_at.tolist(), "qini": (gain_at - share * ate).tolist(),
                      "random": (share * ate).tolist()}}


def compare(effect_scores, scores: dict, *, n_bootstrap: int = 200, seed: int = 0, points: int = CURVE_POINTS) -> dict:
    """Rankings of the same rows by two scores (e.g. {'champion': ..., 'challenger': ...}) judged
    by the same effect scores: each one's `doubly_robust` result, and `qini_difference`, the second's
    Qini coefficient minus the first's with a paired bootstrap standard error (both rankings on
    the same resampled rows) and its two-sided p-value."""
    if len(scores) != 2:
        raise ValueError(f"compare takes two scores, got {len(scores)}")
    (first, a), (second, b) = scores.items()
    psi = _effect_scores(effect_scores, a)
    out = {name: doubly_robust(s, psi, n_bootstrap=n_bootstrap, seed=seed, points=points) for name, s in scores.items()}
    orders = [ranking(a), ranking(b)]
    runs = [tie_runs(np.asarray(s, dtype=np.float64)[o]) for s, o in zip((a, b), orders)]
    (_, se), = _bootstrap_se(psi, orders, n_bootstrap, seed, difference=True, runs=runs)
    diff = out[second]["qini"] - out[first]["qini"]
    out["qini_difference"] = {"of": f"{second} - {first}", "value": diff, "stderr": se, "pvalue": _two_sided(diff, se)}
    return out


def _effect_scores(effect_scores, score) -> np.ndarray:
    psi = np.asarray(effect_scores, dtype=np.float64)
    n = len(np.asarray(score))
    if psi.shape != (n,):
        raise ValueError(f"effect_scores must have one value per row of score ({n}), got shape {psi.shape}")
    if not np.isfinite(psi).all():
        first = int(np.argmax(~np.isfinite(psi)))
        raise ValueError(f"effect_scores has a NaN or infinite value (first at row {first})")
    return psi


def _bootstrap_se(psi: np.ndarray, orders: list[np.ndarray], n_bootstrap: int, seed: int,
                  difference: bool = False, groups: np.ndarray | None = None, weight: np.ndarray | None = None,
                  runs: list | None = None) -> list[tuple[float, float]]:
    """Bootstrap standard errors of (AUUC, Qini) of the ranking of `psi` by each order (with
    `difference`, of the second's minus the first's), every ranking on the same resampled rows
    (each row's draws times its `weight`; ties per `runs`, one per order). The rankings stay
    those of the full sample: the score is a fixed function, only the rows vary (as grf's RATE
    bootstrap holds the priorities fixed)."""
    if n_bootstrap < 2:
        return [(float("nan"), float("nan"))] * (1 if difference else len(orders))
    n = len(psi)
    ranked = [psi[o] for o in orders]
    runs = runs or [None] * len(orders)
    rng = np.random.default_rng([seed, 18])
    draws = []
    for _ in range(n_bootstrap):
        counts = bootstrap_counts(n, rng, groups) * (1.0 if weight is None else weight)
        draws.append([_areas(r, counts[o], t) for r, o, t in zip(ranked, orders, runs)])
    draws = np.array(draws)  # (bootstrap, ranking, [auuc, qini])
    if difference:
        draws = draws[:, 1:2] - draws[:, 0:1]
    return [tuple(float(v) for v in s) for s in draws.std(axis=0, ddof=1)]


def _one_sided(value: float, se: float) -> float:
    from scipy.stats import norm

    return float(norm.sf(value / se)) if se > 0 else float("nan")


def _two_sided(value: float, se: float) -> float:
    from scipy.stats import norm

    return float(2 * norm.sf(abs(value) / se)) if se > 0 else float("nan")
