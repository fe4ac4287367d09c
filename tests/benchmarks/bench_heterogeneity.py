"""Are the heterogeneity checks' z-scores what their standard errors claim? The calibration
test's differential coefficient and RATE (AUTOC), each as z = estimate / standard error, read on
the rows' own out-of-bag CATE (before 2026-12-07) and on the held-out half evaluate now uses
(`components.heterogeneity.held_out_cate`).

Per seed: n rows, X ~ N(0, 1)^5, a binary treatment confounded by x1, an effect of
0.5 + het x0 (het = 0: none), the pipeline's nuisance step (5 folds) and a forest of 400 trees,
as `evaluate` runs them. Prints, per way of reading, the z's mean and standard deviation (1 for a
valid test without heterogeneity) and the shares of seeds over 1.645 (the one-sided 5% test: its
false alarms, or its power) and under -1.96 (a ranking worse than chance: the warning).

    .venv/bin/python tests/benchmarks/bench_heterogeneity.py                 # 100 seeds, n = 2,000, het 0
    .venv/bin/python tests/benchmarks/bench_heterogeneity.py --het 0.2
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd

from tauforge.components.data import DataSpec, validate
from tauforge.components.estimate import grow_forest_shard, merge_forest
from tauforge.components.heterogeneity import autoc, calibration_test, held_out_cate
from tauforge.components.nuisance import NuisanceConfig, combine_folds, fit_nuisance_fold
from tauforge.kernels.ate import debiased_scores

TREES = 400


def z_scores(seed: int, n: int, het: float) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(1000 + seed)
    X = rng.normal(size=(n, 5))
    e = 1 / (1 + np.exp(-0.5 * X[:, 1]))
    T = rng.binomial(1, e).astype(float)
    Y = X[:, 1] + np.minimum(X[:, 2], 0) + (0.5 + het * X[:, 0]) * T + rng.normal(size=n)
    table = pd.DataFrame(X, columns=[f"x{j}" for j in range(5)]).assign(T=T, Y=Y)
    folds = NuisanceConfig(folds=5)
    data = validate(table, DataSpec(outcome="Y", treatment="T"))
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, folds, 0) for k in range(5)], 0, nuisance=folds)
    _, estimate = merge_forest([grow_forest_shard(data, residuals, {"n_estimators": TREES}, seed, 0, 1)], data,
                               residuals)
    y, t, v = (residuals.column(c) for c in ("y_res", "t_res", "t_var"))

    def z(cate, rows=slice(None)):
        c = calibration_test(y[rows], t[rows], cate)
        a = autoc(cate, debiased_scores(cate, y[rows], t[rows], v[rows]), seed=seed)
        return c["differential_forest_prediction"] / c["differential_stderr"], a["autoc"] / a["stderr"]

    rows, cate = held_out_cate(X, y, t, {"n_estimators": TREES}, seed)
    return {"out-of-bag CATE": z(estimate.oob_cate), "held-out half": z(cate, rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--het", type=float, default=0.0, help="the effect's slope in x0 (0: no heterogeneity)")
    args = parser.parse_args()
    start, found = time.time(), {}
    for seed in range(args.seeds):
        for way, pair in z_scores(seed, args.n, args.het).items():
            found.setdefault(way, []).append(pair)
    print(f"n = {args.n}, effect 0.5 + {args.het} x0, {args.seeds} seeds, {time.time() - start:.0f} s")
    for way, pairs in found.items():
        z = np.array(pairs)
        for j, check in enumerate(("calibration (differential)", "RATE (AUTOC)")):
            print(f"{way:16} {check:27} z mean {z[:, j].mean():+.2f} sd {z[:, j].std(ddof=1):.2f}; "
                  f"over 1.645 {np.mean(z[:, j] > 1.645):.2f}, under -1.96 {np.mean(z[:, j] < -1.96):.2f}")


if __name__ == "__main__":
    main()
