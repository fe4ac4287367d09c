"""Forest settings compared on the same cross-fitted residuals: how the defaults were chosen.

For each case (design:n[:p]) and seed, the nuisance models (tauforge's default learners, 5 folds)
are fit once; then every variant's CausalForest and EconML's `econml.grf.CausalForest` (its
CausalForestDML settings, 500 trees) grow on the same residuals. Prints mean CATE RMSE, coverage
of the 95% intervals and their width on 1,000 fresh rows.

    .venv/bin/python tests/benchmarks/bench_defaults.py aw2:3000,aw3:3000 --seeds 12,13,14,15 \\
        'grf={"min_samples_leaf":5,"max_samples":0.45,"n_estimators":500,"linear_correction_variables":null}' \\
        'default={}'
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np


def residuals(d, binary: bool, seed: int):
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict

    from tauforge.kernels.nuisance import default_nuisance_model

    folds = list((StratifiedKFold if binary else KFold)(5, shuffle=True, random_state=seed).split(d.X, d.T))
    y_hat = cross_val_predict(default_nuisance_model(False, 0), d.X, d.Y, cv=folds)
    model_t = default_nuisance_model(binary, 0)
    t_hat = (cross_val_predict(model_t, d.X, d.T, cv=folds, method="predict_proba")[:, 1] if binary
             else cross_val_predict(model_t, d.X, d.T, cv=folds))
    return d.T - t_hat, d.Y - y_hat


def main() -> None:
    from tauforge.kernels import CausalForest
    from tauforge.kernels.datasets import make_causal_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", help="design:n[:p], comma-separated")
    parser.add_argument("variants", nargs="+", help="name=JSON of CausalForest parameters")
    parser.add_argument("--seeds", default="1,2,3,4")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    variants = {"econml": None}
    for spec in args.variants:
        name, _, params = spec.partition("=")
        variants[name] = json.loads(params or "{}")
    print("| case | variant | RMSE | coverage | width |\n|---|---|---|---|---|")
    for case in args.cases.split(","):
        design, n, *rest = case.split(":")
        p = int(rest[0]) if rest else 10
        results = {name: [] for name in variants}
        for seed in (int(s) for s in args.seeds.split(",")):
            d = make_causal_data(design, n=int(n), p=p, seed=seed)
            test = make_causal_data(design, n=1000, p=p, seed=seed + 100)
            t_res, y_res = residuals(d, design not in ("continuous", "continuous_hetero"), seed)
            for name, params in variants.items():
                if params is None:
                    from econml.grf import CausalForest as EconMLCausalForest

                    ref = EconMLCausalForest(n_estimators=500, min_samples_leaf=5, max_samples=0.45,
                                             min_balancedness_tol=0.45, honest=True, inference=True,
                                             fit_intercept=True, subforest_size=4, random_state=seed, n_jobs=2)
                    tau, lo, hi = (np.ravel(a) for a in ref.fit(d.X, t_res, y_res).predict(test.X, interval=True,
                                                                                           alpha=0.05))
                else:
                    forest = CausalForest(random_state=seed, progress=False, **params).fit(d.X, t_res, y_res)
                    tau, lo, hi = (np.ravel(a) for a in forest.predict_with_interval(test.X, alpha=0.05))
                results[name].append((np.sqrt(np.mean((tau - test.tau) ** 2)),
                                      np.mean((lo <= test.tau) & (test.tau <= hi)), np.mean(hi - lo)))
        for name, rows in results.items():
            rmse, coverage, width = np.mean(rows, axis=0)
            print(f"| {case} | {name} | {rmse:.4f} | {coverage:.3f} | {width:.3f} |", flush=True)


if __name__ == "__main__":
    main()
