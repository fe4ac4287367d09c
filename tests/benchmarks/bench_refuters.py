"""How often each refuter fails a sound pipeline, and how often it catches a planted defect.

Per seed: tests/test_refuters.py's design (binary T confounded by the control w1, ATE 1) with
n rows, the pipeline's steps in process (2 folds, a forest of 100 trees), then each refuter on
the sound run and on its planted defect (test_refuters.py's EffectRefit subclasses): the placebo
against a constant pseudo-effect, the random common cause against a dropped confounder, the data
subset against a full-data denominator. Prints the share of seeds with p < 0.01 (the gate's
level) and p < 0.05, and the largest count of false alarms at 0.01 that a correct 1% test
exceeds with probability under 1% over that many seeds.

    .venv/bin/python tests/benchmarks/bench_refuters.py            # 100 seeds, n = 1,000
    .venv/bin/python tests/benchmarks/bench_refuters.py --seeds 20 --n 2000

`--timing N` instead times evaluate's refits (the three refuters' nine, with the run's default
nuisance models and 5 folds) on one data set of N rows: in evaluate's own process, then spread
over `default_workers` processes, and checks that both give the same judgements.

    .venv/bin/python tests/benchmarks/bench_refuters.py --timing 100000
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

# Idle OpenMP workers sleep: spinning ones slow side-by-side work on 2 cores many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from scipy.stats import binom

from tauforge.components.evaluate import NEGLIGIBLE_REFUTER_MOVE

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(seed: int, n: int, subset: dict | None = None) -> dict[str, float]:
    from test_refuters import (
        TWO_FOLDS,
        ConstantPseudoEffect,
        DropsTheLastControl,
        FullDataDenominator,
        confounded_table,
    )

    from tauforge.components.estimate import grow_forest_shard, merge_forest
    from tauforge.components.nuisance import combine_folds, fit_nuisance_fold
    from tauforge.components.refuters import EffectRefit, data_subset, placebo, random_common_cause

    data = confounded_table(n, seed)
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, TWO_FOLDS, seed) for k in range(2)], seed)
    _, estimate = merge_forest([grow_forest_shard(data, residuals, {"n_estimators": 100}, seed, 0, 1)], data,
                               residuals)
    params = {**estimate.summary["forest_params"], "n_estimators": 60}
    sound = EffectRefit(data, TWO_FOLDS, seed, estimate.oob_cate, params)
    ate = estimate.summary["ate"]
    dropped = DropsTheLastControl(data, TWO_FOLDS, seed, estimate.oob_cate)
    denominator = FullDataDenominator(data, TWO_FOLDS, seed, estimate.oob_cate)
    subset = subset or {}
    se = estimate.summary["ate_stderr"]

    def moved(result: dict) -> tuple[float, float]:  # its p-value, and its move in the ATE's standard errors
        return result["p_value"], abs(result["change"]) / se

    return {
        "placebo, sound": (placebo(sound, seed)["p_value"], np.nan),
        "placebo, constant pseudo-effect": (placebo(ConstantPseudoEffect(data, TWO_FOLDS, seed, estimate.oob_cate,
                                                                         params), seed)["p_value"], np.nan),
        "random common cause, sound": moved(random_common_cause(sound, ate, seed)),
        "random common cause, dropped confounder": moved(random_common_cause(dropped, dropped.effect()[0], seed)),
        "data subset, sound": moved(data_subset(sound, ate, seed, **subset)),
        "data subset, full-data denominator": moved(data_subset(denominator, denominator.effect()[0], seed,
                                                                **subset)),
    }


def timing(n: int) -> None:
    from test_refuters import confounded_table

    from tauforge.components.estimate import grow_forest_shard, merge_forest
    from tauforge.components.nuisance import NuisanceConfig, combine_folds, fit_nuisance_fold
    from tauforge.components.refuters import (
        PROCESS_MIN_ROWS,
        EffectRefit,
        data_subset_refuter,
        default_workers,
        placebo_refuter,
        random_common_cause_refuter,
        run_refuters,
    )

    nuisance, seed = NuisanceConfig(), 0
    data = confounded_table(n, seed)
    start = time.perf_counter()
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, nuisance, seed) for k in range(nuisance.folds)], seed)
    _, estimate = merge_forest([grow_forest_shard(data, residuals, {"n_estimators": 100}, seed, 0, 1)], data,
                               residuals)
    print(f"n = {n}: nuisance folds and a 100-tree forest in {time.perf_counter() - start:.1f} s", flush=True)
    ate = estimate.summary["ate"]
    seconds, judged = {}, {}
    for workers in sorted({1, default_workers(n, len(data.spec.covariates) + len(data.spec.controls))}):
        refit = EffectRefit(data, nuisance, seed, estimate.oob_cate, estimate.summary["forest_params"], workers=workers)
        start = time.perf_counter()
        judged[workers] = run_refuters(refit, {"placebo": placebo_refuter(refit, seed),
                                               "random_common_cause": random_common_cause_refuter(refit, ate, seed),
                                               "data_subset": data_subset_refuter(refit, ate, seed)})
        seconds[workers] = time.perf_counter() - start
        print(f"nine refits, {workers} process{'es' if workers > 1 else ''}: {seconds[workers]:.1f} s", flush=True)
    if len(seconds) == 1:
        print(f"default_workers chose one process at n = {n} (under {PROCESS_MIN_ROWS:,} rows, or one usable CPU)")
    else:
        one, many = seconds
        from test_refuters import judged_numbers

        same = np.allclose(judged_numbers(judged[one]), judged_numbers(judged[many]), rtol=1e-9, atol=1e-12)
        print(f"ratio {seconds[one] / seconds[many]:.2f}x; the same judgements (to 1e-9): {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--subset-repeats", type=int, default=None,
                        help="subsets the data subset refuter refits on (default: the refuter's)")
    parser.add_argument("--subset-fraction", type=float, default=None,
                        help="share of the rows in each subset (default: the refuter's)")
    parser.add_argument("--timing", type=int, default=None, metavar="N",
                        help="time evaluate's nine refits on N rows, in one process and in several, instead")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.timing is not None:
        return timing(args.timing)
    found: dict[str, list[tuple[float, float]]] = {}
    start = time.perf_counter()
    subset = {k: v for k, v in (("repeats", args.subset_repeats), ("fraction", args.subset_fraction)) if v is not None}
    for seed in range(args.seeds):
        for name, pair in run(seed, args.n, subset).items():
            found.setdefault(name, []).append(pair)
        print(f"seed {seed + 1}/{args.seeds} done, {time.perf_counter() - start:.0f} s", flush=True)
    bound = int(binom.ppf(0.99, args.seeds, 0.01))
    print(f"\nn = {args.n}, {args.seeds} seeds; a correct 1% test has more than {bound} of {args.seeds} "
          f"false alarms with probability < 1%. The gate fails a run at p < 0.01 and a move over "
          f"{NEGLIGIBLE_REFUTER_MOVE} of the ATE's standard errors (the random common cause and the data subset)")
    print(f"{'refuter, case':45} {'p < 0.01':>9} {'p < 0.05':>9} {'gate fails':>10} {'|move| / se, min-max':>22}")
    for name, pairs in found.items():
        p, move = np.array(pairs).T
        fails = (p < 0.01) & ~(move <= NEGLIGIBLE_REFUTER_MOVE)  # a placebo's move is NaN: p alone decides
        span = "" if np.isnan(move).all() else f"{np.nanmin(move):.2f}-{np.nanmax(move):.2f}"
        print(f"{name:45} {np.sum(p < 0.01):9d} {np.sum(p < 0.05):9d} {np.sum(fails):10d} {span:>22}")


if __name__ == "__main__":
    main()
