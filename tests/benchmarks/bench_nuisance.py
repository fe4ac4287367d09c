"""The default nuisance models' additive part: its ridge (`kernels.nuisance.GCVRidge`) against
scikit-learn's RidgeCV with the SVD, on the same design in one process, and a whole cross-fit.

    .venv/bin/python tests/benchmarks/bench_nuisance.py [--sizes 4000 100000] [--cross-fit 100000]

The design is the additive part's (linear columns and cubic splines) of grf's aw2 covariates,
10 covariates at 4,000 rows (a demo fold's 90 columns) and 30 above (270 columns; 100,000 rows
is the most the additive part fits on). Prints each library's seconds (best of three), their
ratio, the penalties chosen and the largest difference of the predictions. `--cross-fit n`
times `kernels.nuisance.cross_fit` (5 folds, both default models) on n rows of aw2 x 30.
"""

import argparse
import time

import numpy as np
from sklearn.linear_model import RidgeCV
from threadpoolctl import threadpool_limits

from tauforge.kernels.datasets import make_causal_data  # noqa: E402
from tauforge.kernels.nuisance import RIDGE_ALPHAS, AdditiveBoostingRegressor, GCVRidge, cross_fit  # noqa: E402


def best_of_three(model, X, y):
    """`model` fit on (X, y) three times: the last fit and the fastest time."""
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        model.fit(X, y)
        seconds.append(time.perf_counter() - start)
    return model, min(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[4000, 100_000])
    parser.add_argument("--cross-fit", type=int, nargs="*", default=[100_000])
    args = parser.parse_args()
    print("| rows x columns | RidgeCV (svd) s | GCVRidge s | ratio | penalties | largest difference / sd |")
    print("|---|---|---|---|---|---|")
    for n in args.sizes:
        data = make_causal_data("aw2", n=n, p=10 if n <= 10_000 else 30, seed=0)
        design = AdditiveBoostingRegressor(max_iter=1, early_stopping=False, random_state=0).fit(
            data.X, data.Y)._design(data.X)
        reference, reference_s = best_of_three(RidgeCV(alphas=RIDGE_ALPHAS, gcv_mode="svd"), design, data.Y)
        ours, ours_s = best_of_three(GCVRidge(alphas=RIDGE_ALPHAS), design, data.Y)
        expected = reference.predict(design)
        difference = np.max(np.abs(ours.predict(design) - expected)) / np.std(expected)
        print(f"| {n:,} x {design.shape[1]} | {reference_s:.3f} | {ours_s:.3f} | {reference_s / ours_s:.1f}x | "
              f"{reference.alpha_:g}, {ours.alpha_:g} | {difference:.1e} |", flush=True)
    for n in args.cross_fit:
        data = make_causal_data("aw2", n=n, p=30, seed=1)
        # One OpenMP thread, as evaluate's refuters refit the models.
        with threadpool_limits(limits=1, user_api="openmp"):
            start = time.perf_counter()
            cross_fit(data.X, data.Y, data.T, n_folds=5, discrete=True, seed=0, with_scores=False)
        print(f"cross_fit, 5 folds, {n:,} rows x 30: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
