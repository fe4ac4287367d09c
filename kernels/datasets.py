"""Simulated data with a known effect, for the demo, the tests and the benchmarks.

Designs follow grf's `generate_causal_data` (Athey, Tibshirani and Wager) before its rescaling:
grf by default rescales m to sd 1 and tau to sd 0.1 (sigma.m, sigma.tau); here neither is
rescaled (sd(tau): simple 0.58, aw2 and aw3 0.99; sd(m): simple 1.21, aw3 0.72):
  simple   : X ~ N(0, 1); tau = max(X1, 0); e = 0.4 + 0.2 1{X1 > 0}; m = X2 + min(X3, 0) + e tau
  aw1      : X ~ U(0, 1); tau = 0; e = (1 + beta(2, 4).pdf(X1)) / 4 (confounded); m = 2 X1 - 1
  aw2      : X ~ U(0, 1); tau = zeta(X1) zeta(X2), zeta(x) = 1 + 1/(1 + exp(-20 (x - 1/3))); e = 0.5;
             m = e tau (grf's: the control mean is 0)
  aw3      : tau of aw2 with the confounding of aw1; m = 2 X1 - 1 + e tau
and, beyond grf's:
  constant : aw1's confounding with a constant effect tau = 1
  continuous: X ~ N(0, 1); T = sin(X1) + N(0, 1); tau = 1 + X1/2; m = X2 + tau E[T|X]
  imbalanced: X ~ N(0, 1); e = logistic(-1.8 + X1 + X2) (about 21% treated, strongly
              confounded); tau = 1 + max(X1, 0); m = 2 X1 + X2 + e tau
  continuous_hetero: X ~ N(0, 1); T = X2 / 2 + exp(X1 / 2) N(0, 1), so Var(T | X) = exp(X1);
              tau = 1 + X1; m = X2 + tau E[T|X]. The average effect is 1, the variance-weighted
              one E[tau Var(T|X)] / E[Var(T|X)] = 2: an estimator that weights by t~^2 shows it.
For a binary treatment Y = m(x) + (T - e(x)) tau(x) + N(0, 1), so m = E[Y | X].

`make_clustered_data`: rows in clusters (fit(..., groups=)), a cluster-randomized treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DESIGNS = ("simple", "aw1", "aw2", "aw3", "constant", "continuous", "imbalanced", "continuous_hetero")


@dataclass
class CausalData:
    X: np.ndarray
    T: np.ndarray
    Y: np.ndarray
    tau: np.ndarray  # true CATE at each row
    e: np.ndarray  # true propensity E[T | X]
    m: np.ndarray  # true E[Y | X]
    design: str
    groups: np.ndarray | None = None  # cluster of each row (make_clustered_data)

    @property
    def ate(self) -> float:
        """The mean of tau over this sample's rows (the sample's conditional ATE), not the
        design's population mean (simple: 1 / sqrt(2 pi) = 0.3989; the demo's 5,000 rows: 0.3964)."""
        return float(self.tau.mean())


def _zeta(x: np.ndarray) -> np.ndarray:
    return 1 + 1 / (1 + np.exp(-20 * (x - 1 / 3)))


def make_causal_data(design: str = "simple", n: int = 2000, p: int = 10, seed: int | None = 0) -> CausalData:
    """Draw n rows of `design` with p covariates."""
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {', '.join(DESIGNS)}; got {design!r}")
    if p < 3:
        raise ValueError(f"p must be at least 3 for these designs, got {p}")
    rng = np.random.default_rng(seed)
    if design in ("simple", "continuous", "imbalanced", "continuous_hetero"):
        X = rng.normal(size=(n, p))
    else:
        X = rng.uniform(size=(n, p))
    if design in ("continuous", "continuous_hetero"):
        if design == "continuous":
            e, noise_sd, tau = np.sin(X[:, 0]), 1.0, 1 + X[:, 0] / 2
        else:
            e, noise_sd, tau = X[:, 1] / 2, np.exp(X[:, 0] / 2), 1 + X[:, 0]
        T = e + noise_sd * rng.normal(size=n)
        m = X[:, 1] + tau * e
        Y = m + (T - e) * tau + rng.normal(size=n)
        return CausalData(X, T, Y, tau, e, m, design)
    if design == "simple":
        tau = np.maximum(X[:, 0], 0)
        e = 0.4 + 0.2 * (X[:, 0] > 0)
        base = X[:, 1] + np.minimum(X[:, 2], 0)
    elif design == "imbalanced":
        tau = 1 + np.maximum(X[:, 0], 0)
        e = 1 / (1 + np.exp(1.8 - X[:, 0] - X[:, 1]))
        base = 2 * X[:, 0] + X[:, 1]
    elif design == "aw2":
        tau, e, base = _zeta(X[:, 0]) * _zeta(X[:, 1]), np.full(n, 0.5), np.zeros(n)
    else:
        # Here, for the designs that need it: the CLI imports DESIGNS for every command, and the
        # demo's data ('simple') for every demo run; scipy.stats takes 0.6 s to load.
        from scipy.stats import beta

        confounded = (1 + beta.pdf(X[:, 0], 2, 4)) / 4
        if design == "aw1":
            tau, e, base = np.zeros(n), confounded, 2 * X[:, 0] - 1
        elif design == "aw3":
            tau, e, base = _zeta(X[:, 0]) * _zeta(X[:, 1]), confounded, 2 * X[:, 0] - 1
        else:  # constant
            tau, e, base = np.ones(n), confounded, 2 * X[:, 0] - 1
    m = base + e * tau
    T = rng.binomial(1, e).astype(np.float64)
    Y = m + (T - e) * tau + rng.normal(size=n)
    return CausalData(X, T, Y, tau, e, m, design)


def make_clustered_data(n_clusters: int = 100, cluster_size: int = 10, p: int = 3, seed: int | None = 0) -> CausalData:
    """Rows in clusters that are far from independent: the treatment is assigned per cluster
    (e = 0.5), and a cluster's rows share a shock u ~ N(0, 1) in the outcome and in the effect.
    X = the cluster's N(0, 1) covariates plus N(0, 0.5^2) of the row's own; tau = 1 + X1 / 2
    (the effect of the cluster's shock has mean 0); Y = X2 + T tau + u + u T + N(0, 1), so
    m = X2 + tau / 2. With clusters of 10, the ATE's spread over seeds is about 2.5 times what
    independent rows would give (docs/benchmarks.md, "Clustered rows")."""
    if p < 2:
        raise ValueError(f"p must be at least 2 for this design, got {p}")
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_clusters), cluster_size)
    X = rng.normal(size=(n_clusters, p))[groups] + 0.5 * rng.normal(size=(len(groups), p))
    T = rng.binomial(1, 0.5, n_clusters)[groups].astype(np.float64)
    shock = rng.normal(size=n_clusters)[groups]
    tau = 1 + X[:, 0] / 2
    e = np.full(len(groups), 0.5)
    Y = X[:, 1] + T * tau + shock + shock * T + rng.normal(size=len(groups))
    return CausalData(X, T, Y, tau, e, X[:, 1] + e * tau, "clustered", groups)
