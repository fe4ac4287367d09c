"""Is the estimated heterogeneity real? Three checks on out-of-bag CATE and doubly robust scores.

calibration  grf's `test_calibration`: regress y~ on t~ mean(tau) and t~ (tau - mean(tau)); a
             coefficient of 1 on the first says the average is right, of 1 on the second that the
             heterogeneity is well calibrated; a one-sided p-value tests that it is there at all.
rate         the rank-weighted average treatment effect (AUTOC, as grf's
             `rank_average_treatment_effect`): how much more the units ranked first by the CATE
             gain than average, integrated over the share treated; standard error by bootstrap.
gates        group average effects by CATE quartile (mean doubly robust score in each).

Each takes the data's `groups` (codes, one per row, or None): with them, standard errors count
groups, not rows, as independent (the cluster sandwich, a bootstrap of whole groups).
"""

import numpy as np
from scipy.stats import norm

from tauforge.kernels.ate import clustered_stderr
from tauforge.kernels.bootstrap import bootstrap_counts


def calibration_test(y_res: np.ndarray, t_res: np.ndarray, tau: np.ndarray, groups: np.ndarray | None = None) -> dict:
    mean_tau = tau.mean()
    Z = np.stack([t_res * mean_tau, t_res * (tau - mean_tau)], axis=1)
    if np.linalg.matrix_rank(Z) < 2:  # a constant CATE (or a zero mean) leaves nothing to calibrate
        nan = float("nan")
        return {"mean_forest_prediction": nan, "mean_stderr": nan, "differential_forest_prediction": nan,
                "differential_stderr": nan, "mean_pvalue": nan, "differential_pvalue": nan,
                "note": "the CATE is constant or averages 0: the regression is singular"}
    beta, *_ = np.linalg.lstsq(Z, y_res, rcond=None)
    resid = y_res - Z @ beta
    bread = np.linalg.inv(Z.T @ Z)
    if groups is None:
        hat = np.einsum("ij,jk,ik->i", Z, bread, Z)  # leverages, for the HC3 sandwich grf uses
        meat = (Z * (resid / (1 - hat))[:, None] ** 2).T @ Z
    else:
        meat = _cluster_hc3_meat(Z, resid, groups)
    se = np.sqrt(np.diag(bread @ meat @ bread))
    t_stats = beta / se
    return {"mean_forest_prediction": float(beta[0]), "mean_stderr": float(se[0]),
            "differential_forest_prediction": float(beta[1]), "differential_stderr": float(se[1]),
            # one-sided: heterogeneity exists (coefficient > 0), as grf reports it
            "mean_pvalue": float(norm.sf(t_stats[0])), "differential_pvalue": float(norm.sf(t_stats[1]))}


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
          groups: np.ndarray | None = None) -> dict:
    """AUTOC of `priority` with doubly robust `scores`, and its bootstrap standard error (of rows,
    or of whole `groups`)."""
    def estimate(p, s):
        order = np.argsort(-p, kind="stable")
        top_means = np.cumsum(s[order]) / np.arange(1, len(s) + 1)  # TOC(q) + mean at q = k / n
        return float(np.mean(top_means - s.mean()))

    value = estimate(priority, scores)
    rng = np.random.default_rng(seed)
    n = len(scores)
    resamples = (np.repeat(np.arange(n), bootstrap_counts(n, rng, groups).astype(np.int64))
                 for _ in range(n_bootstrap))
    boot = [estimate(priority[idx], scores[idx]) for idx in resamples]
    se = float(np.std(boot, ddof=1))
    return {"autoc": value, "stderr": se, "pvalue": float(norm.sf(value / se)) if se > 0 else float("nan")}


def gates(priority: np.ndarray, scores: np.ndarray, n_quantiles: int = 4,
          groups: np.ndarray | None = None) -> list[dict]:
    """Average effect (mean doubly robust score, standard error) in each quantile of `priority`;
    with `groups`, the standard error counts the data's groups as independent."""
    edges = np.quantile(priority, np.linspace(0, 1, n_quantiles + 1))
    label = np.clip(np.searchsorted(edges, priority, side="right") - 1, 0, n_quantiles - 1)
    out = []
    for g in range(n_quantiles):
        s = scores[label == g]
        stderr = (s.std(ddof=1) / np.sqrt(len(s)) if groups is None
                  else clustered_stderr(s - s.mean(), len(s), groups[label == g]))
        out.append({"group": g + 1, "cate_from": float(edges[g]), "cate_to": float(edges[g + 1]), "rows": int(len(s)),
                    "effect": float(s.mean()), "stderr": float(stderr)})
    return out
