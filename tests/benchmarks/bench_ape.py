"""Coverage of the average partial effect of a continuous treatment over many seeds.

Design continuous_hetero (kernels/datasets.py): Var(T | X) = exp(X1) and tau = 1 + X1, so the
average partial effect E[tau(X)] is 1 while the variance-weighted (partially linear) effect
E[Var(T|X) tau(X)] / E[Var(T|X)] is 2. Per seed, tauforge's CausalForestDML (its defaults) reports
the first as `ate_` and the second as `variance_weighted_effect_`. EconML's CausalForestDML (same
nuisance learners, cv=5, its own defaults otherwise) has no `ate_` for a continuous treatment: its
`ate_inference(X)` (the mean CATE over the training rows and its standard error) stands in. Prints how often each 95%
interval covers its target, the mean estimate, the spread of the estimates against the mean
standard error, and the binomial range a correct 95% interval falls in over that many seeds.

    .venv/bin/python tests/benchmarks/bench_ape.py                 # 100 seeds, n = 2,000
    .venv/bin/python tests/benchmarks/bench_ape.py --seeds 20 --n 4000
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


def run(seed: int, n: int, p: int) -> dict[str, tuple[float, float]]:
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    from tauforge.kernels import CausalForestDML
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.nuisance import default_nuisance_model

    d = make_causal_data("continuous_hetero", n=n, p=p, seed=seed)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(False, 0))
    ours = CausalForestDML(**models, cv=5, random_state=seed, progress=False).fit(d.Y, d.T, X=d.X)
    ref = EconMLCausalForestDML(**models, discrete_treatment=False, cv=5, random_state=seed, n_jobs=-1)
    ref.fit(d.Y, d.T, X=d.X)
    summary = ref.ate_inference(X=d.X)  # EconML has no ate_ for a continuous treatment: the mean CATE
    return {"tauforge APE": (ours.ate_, ours.ate_stderr_),
            "tauforge variance-weighted": (ours.variance_weighted_effect_, ours.variance_weighted_stderr_),
            "EconML ate(X)": (float(np.ravel(summary.mean_point)[0]), float(np.ravel(summary.stderr_mean)[0]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--p", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    z = norm.ppf(0.975)
    rows: dict[str, list[tuple[float, float]]] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        result = run(seed, args.n, args.p)
        for name, value in result.items():
            rows.setdefault(name, []).append(value)
        print(f"seed {seed + 1}/{args.seeds} ({time.perf_counter() - start:.0f} s): "
              + "; ".join(f"{name} {est:.3f} ({se:.3f})" for name, (est, se) in result.items()), flush=True)
    lo, hi = binom.ppf(0.025, args.seeds, 0.95), binom.ppf(0.975, args.seeds, 0.95)
    print(f"\ncontinuous_hetero, n = {args.n}, p = {args.p}, {args.seeds} seeds; a correct 95% interval covers "
          f"in {lo:.0f}-{hi:.0f} of {args.seeds} seeds (central 95% of Binomial({args.seeds}, 0.95))")
    print(f"{'estimate':28} {'mean':>7} {'sd':>7} {'mean se':>8} {'covers 1':>9} {'covers 2':>9}")
    for name, values in rows.items():
        est, se = np.array(values).T
        cover = {t: int(np.sum(np.abs(est - t) <= z * se)) for t in (1.0, 2.0)}
        print(f"{name:28} {est.mean():7.3f} {est.std(ddof=1):7.3f} {se.mean():8.3f} {cover[1.0]:9d} {cover[2.0]:9d}")


if __name__ == "__main__":
    main()
