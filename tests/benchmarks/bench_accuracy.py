"""CATE accuracy against the truth and against EconML's CausalForestDML, over designs, sizes and seeds.

The same data, nuisance learners (tauforge's default, early-stopped HistGradientBoosting), cv=5
and number of trees for both. Prints per (design, n): mean CATE RMSE, coverage of the 95%
intervals and their width for each library, and the ratios tauforge / EconML.

    .venv/bin/python tests/benchmarks/bench_accuracy.py
    .venv/bin/python tests/benchmarks/bench_accuracy.py --designs aw2 --sizes 2000 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _measure import measure  # noqa: E402


def run(design: str, n: int, seed: int, trees: int) -> dict[str, dict[str, float]]:
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.nuisance import default_nuisance_model

    train = make_causal_data(design, n=n, p=10, seed=seed)
    test = make_causal_data(design, n=2000, p=10, seed=seed + 10_000)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0))
    estimators = {
        "tauforge": CausalForestDML(**models, cv=5, n_estimators=trees, random_state=seed),
        "econml": EconMLCausalForestDML(**models, discrete_treatment=True, cv=5, n_estimators=trees,
                                        random_state=seed, n_jobs=-1),
    }
    out = {}
    for name, est in estimators.items():
        with measure() as m:
            est.fit(train.Y, train.T, X=train.X)
        tau = np.ravel(est.effect(test.X))
        lo, hi = (np.ravel(a) for a in est.effect_interval(test.X, alpha=0.05))
        out[name] = dict(rmse=float(np.sqrt(np.mean((tau - test.tau) ** 2))),
                         coverage=float(np.mean((lo <= test.tau) & (test.tau <= hi))),
                         width=float(np.mean(hi - lo)), fit_s=m.seconds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--designs", default="simple,aw2,aw3")
    parser.add_argument("--sizes", default="2000,5000,20000")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default: 3)")
    parser.add_argument("--trees", type=int, default=500)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    header = ("| design | n | tauforge RMSE | EconML RMSE | RMSE ratio | tauforge coverage | EconML coverage "
              "| tauforge width | EconML width | width ratio | fit s (tauforge / EconML) |")
    print(f"# {args.seeds} seeds per row, {args.trees} trees, p = 10, 95% intervals on 2,000 fresh rows")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for design in args.designs.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            runs = [run(design, n, seed, args.trees) for seed in range(args.seeds)]
            mean = {lib: {k: float(np.mean([r[lib][k] for r in runs])) for k in runs[0][lib]}
                    for lib in ("tauforge", "econml")}
            worst_cov = min(r["tauforge"]["coverage"] for r in runs)
            t, e = mean["tauforge"], mean["econml"]
            print(f"| {design} | {n:,} | {t['rmse']:.4f} | {e['rmse']:.4f} | {t['rmse'] / e['rmse']:.3f} "
                  f"| {t['coverage']:.3f} (min {worst_cov:.3f}) | {e['coverage']:.3f} | {t['width']:.3f} "
                  f"| {e['width']:.3f} | {t['width'] / e['width']:.3f} | {t['fit_s']:.1f} / {e['fit_s']:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
