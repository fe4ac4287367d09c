"""Forest speed and accuracy: tauforge's CausalForest against econml.grf.CausalForest.

Both fit the same residuals (the simple design's T - e(x) and Y - m(x), so the forest alone is
measured) with the same number of trees, in this one process, one after the other; EconML
with n_jobs=-1. Where EconML runs, tauforge runs twice: at its own defaults (leaves of 3,
half-samples, little bags of 8, the local linear correction), which do more work than
EconML's, and at EconML's defaults ("tauforge, EconML's settings": leaves of 5, subsamples of
45%, little bags of 4, no correction), so that both grow the same kind of forest. Printed per
size: fit and predict seconds, peak memory, CATE RMSE against the true effect, 95% interval
coverage and width on 10,000 fresh rows, and EconML's time over each tauforge row's.

    .venv/bin/python tests/benchmarks/bench_forest.py                 # the table in docs/benchmarks.md
    .venv/bin/python tests/benchmarks/bench_forest.py --sizes 10000:10 --trees 100
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _measure import measure  # noqa: E402

DEFAULT_SIZES = "10000:10:both,100000:10:both,1000000:30:tauforge"
# econml.grf.CausalForest's defaults in tauforge's terms (EconML 0.17).
ECONML_SETTINGS = dict(min_samples_leaf=5, max_samples=0.45, ci_group_size=4, linear_correction_variables=None)
LIBRARIES = {"tauforge": {}, "tauforge, EconML's settings": ECONML_SETTINGS}


def _score(tau, var, truth):
    half = 1.959963984540054 * np.sqrt(var)
    return dict(rmse=float(np.sqrt(np.mean((tau - truth) ** 2))),
                coverage=float(np.mean(np.abs(tau - truth) <= half)), width=float(np.mean(2 * half)))


def run_one(library: str, n: int, p: int, trees: int, seed: int) -> dict:
    from tauforge.kernels.datasets import make_causal_data

    train = make_causal_data("simple", n=n, p=p, seed=seed)
    test = make_causal_data("simple", n=10_000, p=p, seed=seed + 1)
    t_res, y_res = train.T - train.e, train.Y - train.m
    if library in LIBRARIES:
        from tauforge.kernels import CausalForest

        est = CausalForest(n_estimators=trees, random_state=seed, **LIBRARIES[library])
    else:
        from econml.grf import CausalForest as EconMLCausalForest

        est = EconMLCausalForest(n_estimators=trees, n_jobs=-1, random_state=seed)
    with measure() as fit:
        est.fit(train.X, t_res, y_res)
    with measure() as pred:
        tau, var = est.predict_and_var(test.X)
    row = dict(library=library, n=n, p=p, trees=trees, fit_s=fit.seconds, predict_s=pred.seconds,
               peak_gib=max(fit.peak_rss_gib, pred.peak_rss_gib))
    row.update(_score(np.ravel(tau), np.ravel(var), test.tau))
    return row


def warm_up() -> None:
    """Load the compiled kernels once so the first timed fit does not pay for it."""
    from tauforge.kernels import CausalForest
    from tauforge.kernels.datasets import make_causal_data

    d = make_causal_data("simple", n=2000, p=3, seed=0)
    CausalForest(n_estimators=4, random_state=0).fit(d.X, d.T - d.e, d.Y - d.m).predict_and_var(d.X[:10])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help="comma-separated n:p:who, who = both | tauforge (default: %(default)s)")
    parser.add_argument("--trees", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    warm_up()
    import numba
    import torch

    print(f"# threads: numba {numba.get_num_threads()}, torch {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}; EconML n_jobs=-1", flush=True)
    header = ("| n | p | trees | library | fit s | predict s | peak GiB | CATE RMSE | coverage | width "
              "| EconML's fit / this | EconML's predict / this |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for spec in args.sizes.split(","):
        n, p, who = spec.split(":")
        libs = [*LIBRARIES, "econml"] if who == "both" else ["tauforge"]
        rows = {lib: run_one(lib, int(float(n)), int(p), args.trees, args.seed) for lib in libs}
        for lib, r in rows.items():
            ratio_fit = ratio_pred = ""
            if lib != "econml" and "econml" in rows:
                ratio_fit = f"{rows['econml']['fit_s'] / r['fit_s']:.1f}x"
                ratio_pred = f"{rows['econml']['predict_s'] / r['predict_s']:.1f}x"
            print(f"| {r['n']:,} | {r['p']} | {r['trees']} | {lib} | {r['fit_s']:.1f} | {r['predict_s']:.2f} "
                  f"| {r['peak_gib']:.2f} | {r['rmse']:.4f} | {r['coverage']:.3f} | {r['width']:.3f} "
                  f"| {ratio_fit} | {ratio_pred} |", flush=True)


if __name__ == "__main__":
    main()
