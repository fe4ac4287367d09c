"""Where pointwise coverage is lost: the CATE error split into squared bias and variance over
training seeds, next to the variance the intervals claim, for tauforge and EconML.

One test set (1,000 rows, fixed), `--seeds` training sets of the design, each fit once by each
estimator. Per test point: bias = mean estimate - true CATE, variance = the estimates' variance
over seeds (what an interval's width should reflect), and the mean of the estimated variances
(half the 95% interval's width / 1.96, squared). Printed as means over the test points, with
the coverage and width of the intervals. An estimated/true variance ratio above 1 means the
intervals are wider than the sampling variance calls for; coverage below nominal with such a
ratio means bias, not the variance estimate, costs the coverage.

Estimators: `tauforge` (CausalForestDML, defaults), `econml` (its CausalForestDML with the same
nuisance learners), `tauforge-boosted` (a second forest fit on the residual effect
y~ - tau_oob(x) t~ of the first, added to it, its variance added: the one-step boosted forest of
Ghosal and Hooker, 2021, a bias correction tried for issue 16), `tauforge-oracle` (the same
forest on the residuals of the true E[Y | X] and E[T | X]: what remains without nuisance error),
`tauforge-bias-aware` (tauforge's estimate with a bias-aware interval, Armstrong and Kolesar:
the critical value of |N(b/se, 1)| for a plug-in smoothing bias b(x), the same forest's fit of
tau_oob(X_i) t~_i minus tau(x); tried for issue 16).

The last column is each estimator's coverage with its intervals scaled to the first estimator's
mean width: coverage compared at equal width.

    .venv/bin/python tests/benchmarks/bench_intervals.py
    .venv/bin/python tests/benchmarks/bench_intervals.py --cases aw2:2000 --seeds 10 --estimators tauforge
    .venv/bin/python tests/benchmarks/bench_intervals.py --estimators tauforge --params ci_group_size=4
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))  # bench_accuracy, beside this script
from _measure import parse_params  # noqa: E402

Z = 1.959963984540054  # the 97.5% normal quantile


def fit_predict(name: str, design: str, train, test_X: np.ndarray, seed: int, trees: int, params: dict,
                model_t: str | None = None):
    """(estimate, estimated variance) at test_X; `params` go to tauforge's CausalForestDML,
    `model_t` to both libraries (bench_accuracy.make_estimators)."""
    from bench_accuracy import make_estimators

    from tauforge.kernels import CausalForest

    if name == "tauforge-oracle":  # the design's own nuisance functions: no cross-fitting error
        oracle = CausalForest(n_estimators=trees, random_state=seed, progress=False, **params)
        oracle.fit(train.X, train.T - train.e, train.Y - train.m)
        return tuple(np.ravel(a) for a in oracle.predict_and_var(test_X))
    library = "econml" if name == "econml" else "tauforge"
    est = make_estimators(design, seed, trees, model_t, progress=False, **params)[library]
    est.fit(train.Y, train.T, X=train.X)
    if name == "econml":
        tau = np.ravel(est.effect(test_X))
        lo, hi = (np.ravel(a) for a in est.effect_interval(test_X, alpha=0.05))
        return tau, ((hi - lo) / (2 * Z)) ** 2
    tau, var = (np.ravel(a) for a in est.forest_.predict_and_var(test_X))
    if name == "tauforge-bias-aware":
        from scipy.stats import foldnorm

        bias = plug_in_bias(est, train.X, test_X) - tau
        se = np.sqrt(var)
        half = se * foldnorm.ppf(0.95, np.abs(bias) / se)  # P(|N(b / se, 1)| <= half / se) = 0.95
        return tau, (half / Z) ** 2
    if name == "tauforge-boosted":
        y_res, t_res = est.residuals_
        oob = np.ravel(est.forest_.oob_predict(train.X))
        oob = np.where(np.isnan(oob), np.ravel(est.forest_.predict(train.X)), oob)  # rows every tree saw
        second = CausalForest(n_estimators=trees, random_state=seed + 1, progress=False, **params)
        second.fit(train.X, t_res, y_res - oob * t_res)
        tau2, var2 = (np.ravel(a) for a in second.predict_and_var(test_X))
        tau, var = tau + tau2, var + var2
    return tau, var


def plug_in_bias(est, X, test_X) -> np.ndarray:
    """The fitted forest's estimate at test_X with the outcome residuals replaced by
    tau_oob(X_i) t~_i: what its weights make of its own smoothed effect, an estimate of
    E tau(x) (bias(x) = this minus tau(x))."""
    import copy

    from tauforge.kernels.local_linear import DEFAULT_RIDGE, LocalLinearCorrection

    forest = est.forest_
    _, t_res = est.residuals_
    pilot = np.ravel(forest.oob_predict(X))
    pilot = np.where(np.isnan(pilot), np.ravel(forest.predict(X)), pilot)
    sampler = forest._sampler(X.shape[0])
    samples = sampler.trees(0, sampler.n_groups)
    correction = forest.linear_correction_
    refit = LocalLinearCorrection.fit(() if correction is None else correction.variables,
                                      DEFAULT_RIDGE if correction is None else correction.ridge,  # the one chosen
                                      X, t_res, pilot * t_res, np.ones(X.shape[0]),
                                      forest._backend, forest.binner_.bin(X).fine, forest.forest_, samples)
    smoothed = copy.copy(forest)  # the same trees, leaf moments of the pilot's outcome
    smoothed.linear_correction_ = refit
    return np.ravel(smoothed.predict(test_X))


def main() -> None:
    from tauforge.kernels.datasets import make_causal_data

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="aw3:2000,aw2:2000,simple:2000",
                        help="design:n[:p], comma-separated (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=10, help="training sets per case (default: 10)")
    parser.add_argument("--trees", type=int, default=1000, help="trees per forest (default: 1000)")
    parser.add_argument("--estimators", default="tauforge,econml,tauforge-boosted",
                        help="comma-separated, of tauforge, econml, tauforge-boosted, tauforge-oracle, "
                             "tauforge-bias-aware (default: the first three)")
    parser.add_argument("--params", default="",
                        help="tauforge forest parameters, e.g. ci_group_size=4,max_samples=0.45 (default: none)")
    parser.add_argument("--model-t", default=None,
                        help="import path of a binary treatment's propensity model for both libraries, e.g. "
                             "tauforge.kernels.nuisance.AdditiveBoostingClassifier (default: the default model)")
    args = parser.parse_args()
    params = parse_params(args.params)
    warnings.filterwarnings("ignore")
    print("| design | n | p | estimator | RMSE | bias^2 | variance over seeds | estimated variance | "
          "estimated / true | coverage | width | coverage at the first's width |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in args.cases.split(","):
        parts = case.split(":")
        design, n, p = parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else 10
        test = make_causal_data(design, n=1000, p=p, seed=99_999)
        first_width = None
        for name in args.estimators.split(","):
            taus, variances = [], []
            for seed in range(args.seeds):
                train = make_causal_data(design, n=n, p=p, seed=seed)
                tau, var = fit_predict(name, design, train, test.X, seed, args.trees, params, args.model_t)
                taus.append(tau)
                variances.append(var)
            taus, variances = np.array(taus), np.array(variances)
            bias2 = np.mean((taus.mean(axis=0) - test.tau) ** 2)
            spread = np.mean(taus.var(axis=0, ddof=1))
            claimed = np.mean(variances)
            coverage = np.mean(np.abs(taus - test.tau) <= Z * np.sqrt(variances))
            label = name + (f" ({args.params})" if args.params and name != "econml" else "") + (
                f" (model_t {args.model_t.rsplit('.', 1)[-1]})" if args.model_t and name != "tauforge-oracle" else "")
            rmse = np.sqrt(np.mean((taus - test.tau) ** 2))
            width = np.mean(2 * Z * np.sqrt(variances))
            first_width = width if first_width is None else first_width
            scaled = np.mean(np.abs(taus - test.tau) <= first_width / width * Z * np.sqrt(variances))
            print(f"| {design} | {n:,} | {p} | {label} | {rmse:.4f} | {bias2:.4f} | {spread:.4f} | {claimed:.4f} | "
                  f"{claimed / spread:.2f} | {coverage:.3f} | {width:.3f} | {scaled:.3f} |", flush=True)


if __name__ == "__main__":
    main()
