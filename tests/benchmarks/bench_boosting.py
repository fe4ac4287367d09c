"""The engine's histogram boosting against scikit-learn's HistGradientBoosting, same data, same process.

    .venv/bin/python tests/benchmarks/bench_boosting.py [--sizes 100000 1000000]

grf's aw3 design (p = 10): outcome regression (R^2) and propensity classification (log loss),
scored out of fold (2-fold cross-fitting, as the nuisance stage uses them); both with learning
rate 0.1, up to 200 iterations, early stopping, depth 6 (scikit-learn: max_depth=6,
max_leaf_nodes=64). Prints fit seconds, the time ratio and the scores.
"""

import argparse
import os
import time

# Idle OpenMP workers sleep: torch's spinning threads slow scikit-learn's fits beside them on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch
from sklearn.ensemble import HistGradientBoostingClassifier as SklearnClassifier
from sklearn.ensemble import HistGradientBoostingRegressor as SklearnRegressor
from sklearn.metrics import log_loss, r2_score
from sklearn.model_selection import KFold

from tauforge.kernels.boosting import HistGradientBoostingClassifier, HistGradientBoostingRegressor  # noqa: E402
from tauforge.kernels.datasets import make_causal_data  # noqa: E402

PARAMS = dict(learning_rate=0.1, max_iter=200, early_stopping=True, random_state=0)


def out_of_fold(model_factory, X, y, proba):
    pred, seconds = np.empty(len(y)), 0.0
    for train, test in KFold(2, shuffle=True, random_state=0).split(X):
        start = time.perf_counter()
        model = model_factory().fit(X[train], y[train])
        seconds += time.perf_counter() - start
        pred[test] = model.predict_proba(X[test])[:, 1] if proba else model.predict(X[test])
    return pred, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())
    print("| n | task | tauforge fit s | scikit-learn fit s | time ratio (tauforge / sklearn) | tauforge score | "
          "scikit-learn score |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        d = make_causal_data("aw3", n=n, p=10, seed=0)
        for task, ours, ref, y, proba, score in [
            ("outcome, R^2", lambda: HistGradientBoostingRegressor(max_depth=6, **PARAMS),
             lambda: SklearnRegressor(max_depth=6, max_leaf_nodes=64, **PARAMS), d.Y, False, r2_score),
            ("propensity, log loss", lambda: HistGradientBoostingClassifier(max_depth=6, **PARAMS),
             lambda: SklearnClassifier(max_depth=6, max_leaf_nodes=64, **PARAMS), d.T, True, log_loss)]:
            p_ours, t_ours = out_of_fold(ours, d.X, y, proba)
            p_ref, t_ref = out_of_fold(ref, d.X, y, proba)
            print(f"| {n:,} | {task} | {t_ours:.1f} | {t_ref:.1f} | {t_ours / t_ref:.1f}x | "
                  f"{score(y, p_ours):.4f} | {score(y, p_ref):.4f} |", flush=True)


if __name__ == "__main__":
    main()
