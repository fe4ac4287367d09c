"""Is the estimated heterogeneity real? Three checks on a held-out CATE and doubly robust scores.

The CATE they judge is held out (`held_out_cate`): a forest grown on a random half of the rows
(of the groups, with them) predicts the other half, and the checks read that half only. On the
rows' own out-of-bag CATE the checks are not valid: each row's prediction averages its neighbours'
scores and theirs its own, a dependence their standard errors ignore. With a constant effect
(n = 2,000, 100 seeds, tests/benchmarks/bench_heterogeneity.py) the calibration test's z had a
standard deviation of 1.31 and fell under -1.96 in 12% of seeds (RATE: 1.25, 9%); held out, 0.88
and 2% (0.95, 1%).
grf's issue 396 saw the same, and its maintainers advise a test sample for both (issue 1407).

calibration  grf's `test_calibration`: regress y~ on t~ mean(tau) and t~ (tau - mean(tau)); a
             coefficient of 1 on the first says the average is right, of 1 on the second that the
             heterogeneity is well calibrated; a one-sided p-value tests that it is there at all.
rate         the rank-weighted average treatment effect (AUTOC, as grf's
             `rank_average_treatment_effect`): how much more the units ranked first by the CATE
             gain than average, integrated over the share treated; standard error by bootstrap.
gates        group average effects by CATE quartile (mean doubly robust score in each).

Each takes the data's `groups` (codes, one per row, or None): with them, standard errors count
groups, not rows, as independent (the cluster sandwich, a bootstrap of whole groups); and
`sample_weight` (or None), as grf weights them: the weighted regression, weighted means and
shares. Rows of weight 0 take no part. Tied CATEs share their mean score (`uplift.tie_averaged`).
"""

import numpy as np
from scipy.stats import norm

from tauforge.kernels._inputs import check_finite, weighted_rows
from tauforge.kernels.ate import clustered_stderr
from tauforge.kernels.bootstrap import bootstrap_counts

from .uplift import ranking, tie_averaged, tie_runs

# The held-out forest's trees at most. Half the rows cost power: in the measurement above, with an
# effect 0.5 + 0.2 x0, the calibration test found it in 67% of seeds held out, 83% out of bag.
HELD_OUT_TREES = 400


def held_out_cate(X: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, forest_params: dict | None, seed: int,
                  groups: np.ndarray | None = None, sample_weight: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cate): a random half of the rows (of whole groups, with `groups`; half of the units
    with weight and half of those without), and the CATE there of a forest grown on the other half
    with the run's `forest_params` (`refit_forest_params`: at most HELD_OUT_TREES trees, in little
    bags of 1, no interval is read). A ValueError when the other half cannot grow one (a few groups)."""
    from tauforge.kernels import CausalForest

    from .refuters import refit_forest_params

    units = np.arange(len(X)) if groups is None else np.asarray(groups)
    n_units = int(units.max()) + 1 if len(units) else 0
    weighted = (np.ones(n_units, bool) if sample_weight is None
                else np.bincount(units, weights=sample_weight > 0, minlength=n_units) > 0)
    order = np.random.default_rng([seed, 0x4E1D]).permutation(n_units)
    held = np.zeros(n_units, bool)
    for kind in (weighted, ~weighted):  # both halves hold weight, or an all-zero half failed the fit
        drawn = order[kind[order]]
        held[drawn[: len(drawn) // 2]] = True
    rows = held[units]
    train = ~rows
    params = {**refit_forest_params(forest_params, HELD_OUT_TREES, seed), "ci_group_size": 1}
    forest = CausalForest(**params).fit(X[train], t_res[train], y_res[train],
                                        sample_weight=None if sample_weight is None else sample_weight[train],
                                        groups=None if groups is None else groups[train])
    return rows, np.asarray(forest.predict(X[rows]), dtype=np.float64)


def calibration_test(y_res: np.ndarray, t_res: np.ndarray, tau: np.ndarray, groups: np.ndarray | None = None,
                     sample_weight: np.ndarray | None = None) -> dict:
    for name, values in (("y_res", y_res), ("t_res", t_res), ("tau", tau)):
        check_finite(values, name)
    w, y_res, t_res, tau, groups = weighted_rows(sample_weight, y_res, t_res, tau, groups=groups)
    mean_tau = np.average(tau, weights=w)
    # Weighted least squares as grf's lm(weights =): ordinary least squares on rows scaled by sqrt(w).
    # grf's first regressor is t_res * mean_tau; it is fit here as t_res * scale and its
    # coefficient and standard error multiplied by scale / mean_tau after. The same column space
    # gives the same residuals, leverages and differential coefficient, and a CATE that averages
    # 0 can still be tested for heterogeneity (a treatment that helps half the units and harms
    # the others). scale puts the column in tau's units, as the second: matrix_rank's tolerance
    # is relative, and t_res alone read a CATE of spread 1e-13 as constant (a review).
    scale = np.abs(tau).max()
    root = np.sqrt(w)
    Z = root[:, None] * np.stack([t_res * scale, t_res * (tau - mean_tau)], axis=1)
    y_res = root * y_res
    if np.linalg.matrix_rank(Z) < 2:  # a constant CATE leaves nothing to calibrate
        nan = float("nan")
        return {"mean_forest_prediction": nan, "mean_stderr": nan, "differential_forest_prediction": nan,
                "differential_stderr": nan, "mean_pvalue": nan, "differential_pvalue": nan,
                "note": "the CATE is constant: the regression is singular"}
    beta, *_ = np.linalg.lstsq(Z, y_res, rcond=None)
    resid = y_res - Z @ beta
    bread = np.linalg.inv(Z.T @ Z)
    if groups is None:
        hat = np.einsum("ij,jk,ik->i", Z, bread, Z)  # leverages, for the HC3 sandwich grf uses
        meat = (Z * (resid / (1 - hat))[:, None] ** 2).T @ Z
    else:
        meat = _cluster_hc3_meat(Z, resid, groups)
    se = np.sqrt(np.diag(bread @ meat @ bread))
    # one-sided: heterogeneity exists (coefficient > 0), as grf reports it
    out = {"differential_forest_prediction": float(beta[1]), "differential_stderr": float(se[1]),
           "differential_pvalue": float(norm.sf(beta[1] / se[1]))}
    if abs(mean_tau) <= 1e-12 * scale:  # 0 up to rounding: a ratio of noise
        nan = float("nan")
        return {"mean_forest_prediction": nan, "mean_stderr": nan, "mean_pvalue": nan, **out,
                "note": "the CATE averages 0: its mean has no calibration coefficient"}
    return {"mean_forest_prediction": float(beta[0] * scale / mean_tau),
            "mean_stderr": float(se[0] * scale / abs(mean_tau)),
            "mean_pvalue": float(norm.sf(beta[0] / se[0] * np.sign(mean_tau))), **out}


def _cluster_hc3_meat(Z: np.ndarray, resid: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The meat of grf's clustered calibration test (sandwich's vcovCL, type HC3, with its G / (G -
    1)): per group, u_g = Z_g' (I - H_gg)^-1 e_g with H_gg = Z_g (Z'Z)^-1 Z_g', summed as u_g u_g'.
    By Woodbury, (I - H_gg)^-1 e_g = e_g + Z_g (Z'Z - Z_g'Z_g)^-1 Z_g' e_g, so each group needs
    only its 2 x 2 Z_g'Z_g and 2-vector Z_g'e_g. One row a group gives HC3 times n / (n - 1)."""
    k = Z.shape[1]
    zz = np.stack([np.bincount(groups, weights=Z[:, a] * Z[:, b]) for a in range(k) for b in range(k)],
                  axis=1).reshape(-1, k, k)
    ze = np.stack([np.bincount(groups, weights=Z[:, a] * resid) for a in range(k)], axis=1)
    u = ze + np.einsum("gab,gb->ga", zz, np.einsum("gab,gb->ga", np.linalg.pinv(Z.T @ Z - zz), ze))
    n_groups = len(u)
    return (u.T @ u) * n_groups / max(n_groups - 1, 1)


def autoc(priority: np.ndarray, scores: np.ndarray, n_bootstrap: int = 200, seed: int = 0,
          groups: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> dict:
    """AUTOC of `priority` with doubly robust `scores`, and its bootstrap standard error (of rows,
    or of whole `groups`). The ranking is the full sample's, held fixed in the bootstrap (as grf's)."""
    check_finite(priority, "priority")
    check_finite(scores, "scores")
    w, priority, scores, groups = weighted_rows(sample_weight, priority, scores, groups=groups)
    if len(priority) == 0 or np.ptp(priority) == 0:  # one tie: no ranking, and the ratio of two roundings (a review)
        nan = float("nan")
        return {"autoc": nan, "stderr": nan, "pvalue": nan, "note": "the CATE is constant: it ranks nothing"}
    order = ranking(priority)
    ranked, runs, w = scores[order], tie_runs(priority[order]), w[order]

    def estimate(counts):  # each row's weight (times its bootstrap draws), in rank order
        psi = tie_averaged(ranked, counts, runs)
        seen, total = np.cumsum(counts), np.cumsum(counts * psi)
        kept = counts > 0
        # TOC(q) + mean at each row's q, weighted by the share of the population the row adds
        top_means = total[kept] / seen[kept]
        return float(np.sum(counts[kept] * (top_means - total[-1] / seen[-1])) / seen[-1])

    value = estimate(w)
    rng = np.random.default_rng(seed)
    n = len(scores)
    boot = [estimate(bootstrap_counts(n, rng, groups)[order] * w) for _ in range(n_bootstrap)]
    se = float(np.std(boot, ddof=1))
    return {"autoc": value, "stderr": se, "pvalue": float(norm.sf(value / se)) if se > 0 else float("nan")}


def gates(priority: np.ndarray, scores: np.ndarray, n_quantiles: int = 4,
          groups: np.ndarray | None = None, sample_weight: np.ndarray | None = None) -> list[dict]:
    """Average effect (mean doubly robust score, standard error) in each quantile of `priority`;
    with `groups`, the standard error counts the data's groups as independent. A row's quantile
    is the share of the weight ranked below it plus half its own, tied rows sharing theirs: a
    weight of 2 counts as the row twice, ties stay in one group, and a CATE of few values gives
    fewer groups, none empty (empty groups with NaN effects before)."""
    if n_quantiles < 1:
        raise ValueError(f"n_quantiles must be at least 1, got {n_quantiles}")
    check_finite(priority, "priority")
    check_finite(scores, "scores")
    w, priority, scores, groups = weighted_rows(sample_weight, priority, scores, groups=groups)
    # Unweighted this is (average rank - 1/2) / n; quartiles of the rows counted by weight, as the
    # effects in them are weighted means.
    values, run = np.unique(priority, return_inverse=True)
    run_weight = np.bincount(run, weights=w, minlength=len(values))
    share = ((np.cumsum(run_weight) - run_weight / 2) / run_weight.sum())[run]
    label = np.minimum((share * n_quantiles).astype(int), n_quantiles - 1)
    out = []
    for g in np.unique(label):
        rows = label == g
        s, wg = scores[rows], w[rows]
        effect = np.average(s, weights=wg)
        stderr = clustered_stderr(wg * (s - effect), wg.sum(), None if groups is None else groups[rows])
        if groups is None:  # rows as independent: n / (n - 1), so equal weights give std(ddof=1) / sqrt(n)
            stderr = stderr * np.sqrt(len(s) / (len(s) - 1)) if len(s) > 1 else float("nan")
        out.append({"group": len(out) + 1, "cate_from": float(priority[rows].min()),
                    "cate_to": float(priority[rows].max()), "rows": int(rows.sum()), "effect": float(effect),
                    "stderr": float(stderr)})
    return out
