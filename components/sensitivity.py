"""Sensitivity of the average effect to an unobserved confounder: omitted-variable-bias bounds
and the robustness value of Chernozhukov, Cinelli, Newey, Sharma and Syrgkanis (2022).

A confounder that explains a share c_y of the outcome's residual variance and a share c_t of the
Riesz representer's moves theta by at most |rho| sqrt(c_y c_t / (1 - c_t)) sqrt(sigma2 nu2),
where sigma2 is the outcome's residual variance and nu2 = E[alpha^2] the representer's second
moment. The robustness value is the equal strength c_y = c_t at which the bound (or its
confidence interval) first reaches the null.

Two parametrizations (`SensitivityParams`):
- `from_scores`, what the pipeline reports: theta the average effect (ATE, or a continuous
  treatment's average partial effect) of `tauforge.kernels.ate`, alpha = t~ / V(x) its debiasing
  weight and sigma2 = E[(y~ - tau(x) t~)^2];
- `from_residuals`: theta the partially linear (variance-weighted) effect, alpha = t~ / E[t~^2],
  sigma2 = E[(y~ - theta t~)^2], as EconML's CausalForestDML reports it (`sensitivity_interval`,
  `robustness_value`), with one correction: the signs of the covariances of nu2 with theta and
  sigma2 in the delta-method variance (EconML's are flipped).
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from tauforge.kernels.ate import clustered_cross_products, debiased_scores


@dataclass(frozen=True)
class SensitivityParams:
    theta: float
    sigma2: float
    nu2: float
    cov: np.ndarray  # covariance of (theta, sigma2, nu2) estimates

    @classmethod
    def from_residuals(cls, y_res: np.ndarray, t_res: np.ndarray) -> "SensitivityParams":
        n = len(y_res)
        m_tt = np.mean(t_res**2)
        theta = np.mean(y_res * t_res) / m_tt
        sigma2 = np.mean((y_res - theta * t_res) ** 2)
        nu2 = 1 / m_tt
        # Moment conditions of (theta, sigma2, nu2) and the inverse of their Jacobian's diagonal,
        # (-E[t~^2], -1, +E[t~^2]), for the sandwich. EconML drops these signs, which flips the
        # sign of every covariance with nu2 (checked against simulation in the tests).
        moments = np.stack([t_res * (y_res - theta * t_res), (y_res - theta * t_res) ** 2 - sigma2,
                            t_res**2 * nu2 - 1], axis=1)
        jac_inv = 1 / np.array([-m_tt, -1.0, m_tt])
        omega = moments.T @ moments / n
        return cls(float(theta), float(sigma2), float(nu2), (jac_inv[:, None] * omega * jac_inv[None, :]) / n)

    @classmethod
    def from_scores(cls, tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_var: np.ndarray,
                    sample_weight: np.ndarray | None = None,
                    groups: np.ndarray | None = None) -> "SensitivityParams":
        """theta the mean debiased score of the CATE `tau` (the average effect), with the Riesz
        representer alpha = t~ / V. Each of (theta, sigma2, nu2) is a (weighted) mean, so their
        covariance is that of the per-row terms, as `kernels.ate.average_effect`'s standard
        error: with `sample_weight`, theta is the weighted average effect the run reports; with
        `groups` (codes, one per row), a group's terms are summed before their covariance, as
        there."""
        psi = debiased_scores(tau, y_res, t_res, t_var)
        residual2, alpha2 = (y_res - tau * t_res) ** 2, (t_res / t_var) ** 2
        terms = np.stack([psi, residual2, alpha2], axis=1)
        w = np.ones(len(psi)) if sample_weight is None else sample_weight / sample_weight.mean()
        means = w @ terms / w.sum()
        spread = w[:, None] * (terms - means)
        theta, sigma2, nu2 = (float(m) for m in means)
        return cls(theta, sigma2, nu2, clustered_cross_products(spread, groups) / w.sum() ** 2)


def bounds(p: SensitivityParams, c_y: float, c_t: float, rho: float = 1.0, alpha: float = 0.05,
           interval: str = "ci") -> tuple[float, float]:
    """Bounds on theta under a confounder of strengths (c_y, c_t); interval='theta' gives the bias
    bounds alone, 'ci' their (1 - alpha) confidence interval."""
    if not (0 <= c_y < 1 and 0 <= c_t < 1):
        raise ValueError(f"c_y and c_t must be in [0, 1), got {c_y} and {c_t}")
    if not -1 <= rho <= 1:
        raise ValueError(f"rho must be in [-1, 1], got {rho}")
    half = abs(rho) * np.sqrt(c_y) * np.sqrt(c_t / (1 - c_t)) / 2  # the bias is 2 half sqrt(sigma2 nu2)
    with np.errstate(divide="ignore", invalid="ignore"):  # sigma2 = 0 (a perfect fit): no finite bound
        ratio = np.sqrt(np.float64(p.nu2) / np.float64(p.sigma2))
        up = np.array([1.0, half * ratio, half / ratio])  # gradient of theta + bias in (theta, sigma2, nu2)
        down = np.array([1.0, -half * ratio, -half / ratio])
    est = np.array([p.theta, p.sigma2, p.nu2])
    lo, hi = float(est @ down), float(est @ up)
    if interval == "theta":
        return lo, hi
    if interval != "ci":
        raise ValueError(f"interval must be 'theta' or 'ci', got {interval!r}")
    z = norm.ppf(1 - alpha / 2)
    return lo - z * float(np.sqrt(down @ p.cov @ down)), hi + z * float(np.sqrt(up @ p.cov @ up))


def robustness_value(p: SensitivityParams, null: float = 0.0, alpha: float = 0.05, interval: str = "ci") -> float:
    """The equal confounding strength r = c_y = c_t at which the bounds first include `null`
    (0 when they already do at r = 0). Bisection on r."""
    lo, hi = bounds(p, 0.0, 0.0, 1.0, alpha, interval)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # the bisection would run on NaN comparisons
        return float("nan")
    if lo <= null <= hi:
        return 0.0
    side = 0 if lo > null else 1
    r_lo, r_hi = 0.0, 1.0 - 1e-12
    for _ in range(60):
        r = (r_lo + r_hi) / 2
        bound = bounds(p, r, r, 1.0, alpha, interval)[side]
        if (bound - null) * (1 if side == 0 else -1) > 0:
            r_lo = r
        else:
            r_hi = r
    return float((r_lo + r_hi) / 2)


def sensitivity_report(tau: np.ndarray, y_res: np.ndarray, t_res: np.ndarray, t_var: np.ndarray,
                       alpha: float = 0.05, c_y: float = 0.05, c_t: float = 0.05,
                       sample_weight: np.ndarray | None = None, groups: np.ndarray | None = None) -> dict:
    """The bounds and robustness values of the average effect (`SensitivityParams.from_scores`)."""
    p = SensitivityParams.from_scores(tau, y_res, t_res, t_var, sample_weight, groups)
    return {"theta": p.theta, "c_y": c_y, "c_t": c_t,
            "theta_bounds": list(bounds(p, c_y, c_t, 1.0, alpha, "theta")),
            "ci_bounds": list(bounds(p, c_y, c_t, 1.0, alpha, "ci")),
            "robustness_value": robustness_value(p, 0.0, alpha, "ci"),
            "robustness_value_theta": robustness_value(p, 0.0, alpha, "theta")}
