"""Clustered rows: fit(..., groups=) against fitting as if rows were independent, and EconML.

Design `make_clustered_data` (kernels/datasets.py): 100 clusters of 10 rows, the treatment
assigned per cluster, a shock per cluster in the outcome and in the effect; tau = 1 + X1 / 2.
Per seed, four fits on the same data with the same nuisance learners (tauforge's defaults) and
cv=5: tauforge and EconML's CausalForestDML, each with `groups` (the clusters) and without.
EconML's `groups` keep clusters together in cross-fitting only; its forest draws rows and its
`ate_stderr_` treats rows as independent. Prints, per fit: the ATE's mean, spread over seeds,
mean standard error and how often its 95% interval covers the true ATE; the CATE's RMSE, its
pointwise 95% coverage and mean interval width.

`--duplicated`: one data set of 1,000 independent rows (tests/test_groups.py's design), fit as it
is and with every row twice, with and without groups, by both libraries (500 trees; tauforge
at its defaults, cv=5; EconML with tauforge's nuisance learners, cv=2); the CATE's RMSE and
interval width on the first 300 rows.

    .venv/bin/python tests/benchmarks/bench_groups.py              # 100 seeds (about 5 min)
    .venv/bin/python tests/benchmarks/bench_groups.py --seeds 20
    .venv/bin/python tests/benchmarks/bench_groups.py --duplicated
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

# Idle OpenMP workers sleep: spinning ones slow side-by-side work on 2 cores many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from scipy.stats import binom, norm

FITS = ("tauforge, groups", "tauforge, rows", "EconML, groups", "EconML, rows")


def run(seed: int, n_clusters: int, size: int) -> dict[str, tuple[float, ...]]:
    """Per fit: (ATE, its standard error, CATE RMSE, CATE pointwise coverage, mean width)."""
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.datasets import make_clustered_data
    from tauforge.kernels.nuisance import default_nuisance_model

    d = make_clustered_data(n_clusters, size, seed=seed)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0))
    out = {}
    for name in FITS:
        groups = d.groups if name.endswith("groups") else None
        if name.startswith("tauforge"):
            model = CausalForestDML(**models, cv=5, random_state=seed, progress=False)
        else:
            model = EconMLCausalForestDML(**models, discrete_treatment=True, cv=5, random_state=seed, n_jobs=1)
        model.fit(d.Y, d.T, X=d.X, groups=groups)
        cate = np.ravel(model.effect(d.X))
        lower, upper = (np.ravel(b) for b in model.effect_interval(d.X))
        out[name] = (float(np.ravel(model.ate_)[0]), float(np.ravel(model.ate_stderr_)[0]),
                     float(np.sqrt(np.mean((cate - d.tau) ** 2))), float(np.mean((lower <= d.tau) & (d.tau <= upper))),
                     float(np.mean(upper - lower)))
    out["truth"] = (d.ate,)
    return out


def duplicated() -> None:
    """The same rows once, and twice with and without groups: ATE, its standard error, the CATE's
    RMSE and mean interval width on the first 300 rows."""
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.nuisance import default_nuisance_model

    rng = np.random.default_rng(0)
    n = 1000
    X = rng.normal(size=(n, 5))
    T = rng.binomial(1, 0.5, n).astype(float)
    tau = 1 + X[:, 0]
    Y = X[:, 1] + tau * T + rng.normal(size=n)
    twice = dict(Y=np.repeat(Y, 2), T=np.repeat(T, 2), X=np.repeat(X, 2, 0))
    groups = np.repeat(np.arange(n), 2)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0))
    print(f"true ATE of the sample {tau.mean():.3f}")
    print(f"{'fit':24} {'ATE':>6} {'stderr':>7} {'CATE RMSE':>10} {'width':>6}")
    for library in ("tauforge", "EconML"):
        for name, data, g in (("original rows", dict(Y=Y, T=T, X=X), None), ("twice, groups", twice, groups),
                              ("twice, rows", twice, None)):
            model = (CausalForestDML(n_estimators=500, random_state=1, progress=False) if library == "tauforge" else
                     EconMLCausalForestDML(**models, discrete_treatment=True, cv=2, n_estimators=500, random_state=1))
            model.fit(data["Y"], data["T"], X=data["X"], groups=g)
            lower, upper = (np.ravel(b) for b in model.effect_interval(X[:300]))
            rmse = np.sqrt(np.mean((np.ravel(model.effect(X[:300])) - tau[:300]) ** 2))
            print(f"{library + ', ' + name:24} {float(np.ravel(model.ate_)[0]):6.3f} "
                  f"{float(np.ravel(model.ate_stderr_)[0]):7.3f} {rmse:10.3f} {np.mean(upper - lower):6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--size", type=int, default=10, help="rows a cluster")
    parser.add_argument("--duplicated", action="store_true", help="the duplicated-rows comparison instead")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.duplicated:
        duplicated()
        return
    z = norm.ppf(0.975)
    rows: dict[str, list[tuple[float, ...]]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        result = run(seed, args.clusters, args.size)
        for name, value in result.items():
            rows.setdefault(name, []).append(value)
        print(f"seed {seed + 1}/{args.seeds} ({time.perf_counter() - start:.0f} s): "
              + "; ".join(f"{name} {r[0]:.3f} ({r[1]:.3f})" for name, r in result.items() if name != "truth"),
              flush=True)
    truth = np.array(rows.pop("truth"))[:, 0]
    lo, hi = binom.ppf(0.025, args.seeds, 0.95), binom.ppf(0.975, args.seeds, 0.95)
    print(f"\nclustered, {args.clusters} clusters of {args.size}, {args.seeds} seeds; a correct 95% interval "
          f"covers in {lo:.0f}-{hi:.0f} of {args.seeds} seeds (central 95% of Binomial({args.seeds}, 0.95))")
    print(f"{'fit':18} {'ATE error':>9} {'sd':>6} {'mean se':>8} {'covers':>7} {'CATE RMSE':>10} "
          f"{'coverage':>9} {'width':>6}")
    for name in FITS:
        ate, se, rmse, coverage, width = np.array(rows[name]).T
        covers = int(np.sum(np.abs(ate - truth) <= z * se))
        print(f"{name:18} {np.mean(ate - truth):+9.3f} {np.std(ate - truth, ddof=1):6.3f} {se.mean():8.3f} "
              f"{covers:7d} {rmse.mean():10.3f} {coverage.mean():9.3f} {width.mean():6.3f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
