"""The binary average effect and its propensity: how the clip of the debiasing weights (the
estimator's `min_propensity`) and the propensity model move `ate_`, over independent training sets.

Per design and setting: how often the 95% interval of `ate_` covers the true average effect, the
mean z = (ate_ - truth) / ate_stderr_, the RMSE of `ate_` and its mean standard error, the CATE's
RMSE on fresh rows, and the fitted propensities' range. Settings: the default propensity model
(`AdditiveBoostingClassifier`: least squares on the 0/1 treatment, clipped to [0.001, 0.999])
with the weights' propensities clipped at 0.01 (the default until 2026-12-05), 0.025 (the default
since) and 0.05, from one fit; and at the default clip, that model Platt-scaled (a logistic
regression of T on its raw fit; tried, not kept) and a plain logistic regression.

Designs: "logistic" (e = sigmoid(x1), x ~ N(0, 1): the least-squares line crosses 0 and 1 inside
the data; tau = 1 + x0; n = 1,500, 2 controls W), "steep" (e = sigmoid(2.5 x1), true propensities
down to 0.001; tau = 1 + x0 + x1 / 2), and kernels.datasets' "imbalanced" (n = 800, p = 25),
"aw3" and "simple" (n = 2,000, p = 10).

    .venv/bin/python tests/benchmarks/bench_propensity.py                  # 40 sets each, about 40 minutes
    .venv/bin/python tests/benchmarks/bench_propensity.py --designs logistic --seeds 5
"""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from tauforge.kernels import CausalForestDML  # noqa: E402
from tauforge.kernels.ate import MIN_PROPENSITY, average_effect, oob_effect, propensity_variance  # noqa: E402
from tauforge.kernels.datasets import make_causal_data  # noqa: E402
from tauforge.kernels.nuisance import AdditiveBoostingClassifier  # noqa: E402


class PlattScaledAdditive(AdditiveBoostingClassifier):
    """The default propensity model with its raw least-squares fit passed through a fitted logistic curve."""

    def fit(self, X, y, sample_weight=None):
        super().fit(X, y, sample_weight)
        raw = self.regressor_.predict(np.asarray(X, dtype=np.float64))
        self.platt_ = LogisticRegression(C=1e4).fit(raw[:, None], y, sample_weight=sample_weight)
        return self

    def predict_proba(self, X):
        return self.platt_.predict_proba(self.regressor_.predict(np.asarray(X, dtype=np.float64))[:, None])


def logistic_design(seed: int, n: int = 1500):
    rng = np.random.default_rng(seed)
    X, W = rng.normal(size=(n, 5)), rng.normal(size=(n, 2))
    T = (rng.random(n) < 1 / (1 + np.exp(-X[:, 1]))).astype(float)
    tau = 1 + X[:, 0]
    return X, W, T, tau * T + X[:, 1] + W[:, 0] + rng.normal(size=n), tau


def steep_design(seed: int, n: int = 1500):
    rng = np.random.default_rng(seed)
    X, W = rng.normal(size=(n, 5)), rng.normal(size=(n, 2))
    T = (rng.random(n) < 1 / (1 + np.exp(-2.5 * X[:, 1]))).astype(float)
    tau = 1 + X[:, 0] + 0.5 * X[:, 1]
    return X, W, T, tau * T + X[:, 1] + W[:, 0] + rng.normal(size=n), tau


def draw(design: str, seed: int):
    """(X, W, T, Y, tau) to fit on and (X, tau) of fresh rows (None for the two designs of this file)."""
    if design in ("logistic", "steep"):
        return (logistic_design if design == "logistic" else steep_design)(seed), None
    n, p = (800, 25) if design == "imbalanced" else (2000, 10)
    d = make_causal_data(design, n=n, p=p, seed=seed)
    test = make_causal_data(design, n=2000, p=p, seed=10_000 + seed)
    return (d.X, None, d.T, d.Y, d.tau), (test.X, test.tau)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", default="logistic,steep,imbalanced,aw3,simple")
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--trees", type=int, default=500)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    clips = (0.01, MIN_PROPENSITY, 0.05)
    models = {"Platt-scaled": PlattScaledAdditive(random_state=0),
              "logistic regression": "sklearn.linear_model.LogisticRegression"}
    for design in args.designs.split(","):
        results = {name: [] for name in [*(f"default model, clip {c:g}" for c in clips), *models]}
        for seed in range(args.seeds):
            (X, W, T, Y, tau), test = draw(design, seed)
            fits = {"auto": CausalForestDML(n_estimators=args.trees, random_state=seed, progress=False)
                    .fit(Y, T, X=X, W=W)}
            fits.update({name: CausalForestDML(n_estimators=args.trees, model_t=model_t, random_state=seed,
                                               progress=False).fit(Y, T, X=X, W=W) for name, model_t in models.items()})
            for name, est in fits.items():
                rmse = np.sqrt(np.mean((est.effect(test[0]) - test[1]) ** 2)) if test else np.nan
                y_res, t_res = est.residuals_
                e_hat = T - t_res
                if name != "auto":
                    results[name].append((est.ate_ - tau.mean(), est.ate_stderr_, rmse, e_hat.min(), e_hat.max()))
                    continue
                tau_oob = oob_effect(est.forest_, X)  # the same fit, its weights clipped elsewhere
                for c in clips:
                    ate, stderr = average_effect(tau_oob, y_res, t_res, propensity_variance(e_hat, c))
                    results[f"default model, clip {c:g}"].append((ate - tau.mean(), stderr, rmse, e_hat.min(),
                                                                  e_hat.max()))
        for name, rows in results.items():
            r = np.array(rows)
            z = r[:, 0] / r[:, 1]
            print(f"{design}, {name}: covered {int(np.sum(np.abs(z) < 1.96))}/{len(r)}, mean z {z.mean():+.2f}, "
                  f"ATE RMSE {np.sqrt(np.mean(r[:, 0] ** 2)):.3f} against mean stderr {r[:, 1].mean():.3f}, "
                  f"CATE RMSE {np.nanmean(r[:, 2]):.4f}, propensities {r[:, 3].min():.3f}-{r[:, 4].max():.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
