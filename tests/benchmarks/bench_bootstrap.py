"""The full bootstrap: interval coverage and width over seeds, and time against EconML's BootstrapInference.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice .venv/bin/python tests/benchmarks/bench_bootstrap.py coverage \
        [--seeds 60] [--n 1000] [--design aw3] [--replicates 50] [--jobs 2] [--no-refit] [--out results.json]
    .venv/bin/python tests/benchmarks/bench_bootstrap.py timing [--n 100000] [--replicates 100] [--econml-n 10000] \
        [--refit]
    .venv/bin/python tests/benchmarks/bench_bootstrap.py batching [--n 100000] [--replicates 8] [--backend torch]

coverage: per seed, one CausalForestDML(inference="bootstrap") fit with the code's bootstrap defaults
(but --replicates replicates, 2 folds, and the default nuisance models with 32 bins) on --n rows
of --design (p = 5); the same fit's
little-bag intervals (blb: the forest's CATE interval, the ATE's normal interval) beside the
bootstrap's normal, percentile and pivot intervals (those the code offers:
kernels.bootstrap.INTERVALS). Truths: the CATE at 200 fixed test points drawn from the design,
and the population ATE (the mean CATE of 2e6 draws). Prints, per interval, the share of seeds
whose 95% ATE interval covers the truth and its mean width, the mean pointwise CATE coverage and
mean width, with binomial standard errors, and each variance estimate's mean over the estimate's
variance across seeds (1 is right). --no-refit sets bootstrap_nuisance=False. `summary --out FILE`
prints the tables of a saved run again. Runs on any
tauforge with this API, so the configuration of an older commit is measured by putting its tree
first on PYTHONPATH (docs/benchmarks.md, "The full bootstrap").
timing: tauforge's bootstrap (replicate forests of 100 trees on the main fit's residuals; with
--refit also the nuisance models refit per replicate, the default) at n rows, and EconML's
CausalForestDML with BootstrapInference (which refits everything per replicate) at --econml-n
rows (0: skip), same number of replicates; prints seconds per replicate.
batching: the same replicates (100-tree forests at n rows) grown one forest per call and batched
as on a torch device (within 1 GiB), on --backend, in one process; prints both times, their
ratio, and whether the forests agree.
"""

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import norm

from tauforge.kernels import CausalForestDML  # noqa: E402
from tauforge.kernels.datasets import make_causal_data  # noqa: E402
from tauforge.kernels.nuisance import default_nuisance_model  # noqa: E402

COVERAGE_P, TEST_POINTS, TRUTH_DRAWS = 5, 200, 2_000_000
# scikit-learn 1.9 bins weighted rows with a weighted percentile per bin and covariate: a fit on 500 x 5
# weighted rows takes 0.37 s with 255 bins, 0.05 s with 32 (0.04 s unweighted). 32 bins keep 60 seeds
# of refits within 25 minutes.
NUISANCE_BINS = 32


def _nuisance(classifier: bool, seed: int):
    return default_nuisance_model(classifier, seed).set_params(max_bins=NUISANCE_BINS)


def _coverage_seed(args: tuple) -> dict:
    """Coverage, width and variance estimates of every interval for one seed's fit."""
    from tauforge.kernels.bootstrap import INTERVALS

    design, n, replicates, refit, seed = args
    test = make_causal_data(design, n=TEST_POINTS, p=COVERAGE_P, seed=10_000)
    d = make_causal_data(design, n=n, p=COVERAGE_P, seed=seed)
    kw = {} if refit else {"bootstrap_nuisance": False}
    start = time.perf_counter()
    est = CausalForestDML(model_y=_nuisance(False, seed), model_t=_nuisance(True, seed), cv=2, inference="bootstrap",
                          n_bootstrap=replicates, random_state=seed, **kw).fit(d.Y, d.T, X=d.X)
    seconds = time.perf_counter() - start
    point = est.effect(test.X)
    half = norm.ppf(0.975) * est.ate_stderr_
    intervals = {"blb": (est.forest_.predict_interval(test.X), (est.ate_ - half, est.ate_ + half))}
    for kind in INTERVALS:
        intervals[kind] = (est.bootstrap_.effect_interval(test.X, point, 0.05, kind),
                           est.bootstrap_.ate_interval(est.ate_, 0.05, kind))
    draws = np.stack([f.predict(test.X) for f in est.bootstrap_.forests])
    boot_var = (est.bootstrap_.effect_stderr(test.X) ** 2 if hasattr(est.bootstrap_, "effect_stderr")
                else draws.var(axis=0, ddof=1))  # an older bootstrap: the replicates' raw spread
    out = {"seed": seed, "seconds": seconds, "bootstrap_nuisance": bool(est.bootstrap_nuisance),
           "bootstrap_trees": int(est.bootstrap_trees), "ate": est.ate_, "cate": point.tolist(),
           "variance": {"blb": {"ate": est.ate_stderr_ ** 2, "cate": est.forest_.predict_and_var(test.X)[1].tolist()},
                        "bootstrap": {"ate": float(np.var(est.bootstrap_.ates, ddof=1)), "cate": boot_var.tolist()},
                        "bootstrap_raw": {"cate": draws.var(axis=0, ddof=1).tolist()}}}
    for kind, ((lo, hi), (ate_lo, ate_hi)) in intervals.items():
        out[kind] = {"cate_covered": float(np.mean((lo <= test.tau) & (test.tau <= hi))),
                     "cate_width": float(np.mean(hi - lo)), "ate_lo": float(ate_lo), "ate_hi": float(ate_hi)}
    return out


def summarize(path: str) -> None:
    """Print the coverage tables of a results file written by `coverage --out`."""
    with open(path) as f:
        run = json.load(f)
    results, true_ate = run["results"], run["true_ate"]
    first = results[0]
    print(f"{run['design']}, n = {run['n']:,}, p = {COVERAGE_P}, {len(results)} seeds, {run['replicates']} replicates "
          f"of {first['bootstrap_trees']} trees, nuisance {'refit' if first['bootstrap_nuisance'] else 'not refit'}; "
          f"true ATE {true_ate:.4f}; {run.get('wall_seconds', 0):.0f} s "
          f"({np.mean([r['seconds'] for r in results]):.1f} s per fit)")
    print("| interval | ATE coverage | ATE width | CATE coverage | CATE width |")
    print("|---|---|---|---|---|")
    for kind in [k for k in first if isinstance(first[k], dict) and "ate_lo" in first[k]]:
        hit = np.array([r[kind]["ate_lo"] <= true_ate <= r[kind]["ate_hi"] for r in results])
        width = np.array([r[kind]["ate_hi"] - r[kind]["ate_lo"] for r in results])
        cate = np.array([r[kind]["cate_covered"] for r in results])
        cate_width = np.array([r[kind]["cate_width"] for r in results])
        print(f"| {kind} | {hit.mean():.3f} ± {np.sqrt(hit.mean() * (1 - hit.mean()) / len(hit)):.3f} | "
              f"{width.mean():.3f} | {cate.mean():.3f} ± {cate.std(ddof=1) / np.sqrt(len(cate)):.3f} | "
              f"{cate_width.mean():.3f} |")
    # Estimated variance over the estimate's variance across seeds (1 is right; its own noise is
    # about sqrt(2 / (seeds - 1)) for the ATE, less for the CATE's mean over test points).
    ates, cates = np.array([r["ate"] for r in results]), np.array([r["cate"] for r in results])
    ratios = []
    for name in first["variance"]:
        v = first["variance"][name]
        ate = np.mean([r["variance"][name]["ate"] for r in results]) / np.var(ates, ddof=1) if "ate" in v else None
        cate = np.mean([np.mean(r["variance"][name]["cate"], axis=0) for r in results]) / np.mean(
            np.var(cates, axis=0, ddof=1))
        ratios.append(f"{name}: ATE {'-' if ate is None else f'{ate:.2f}'}, CATE {cate:.2f}")
    print("estimated / across-seed variance: " + "; ".join(ratios))


def coverage(design: str, n: int, seeds: int, replicates: int, refit: bool, jobs: int, out: str | None) -> None:
    true_ate = make_causal_data(design, n=TRUTH_DRAWS, p=3, seed=99).ate
    tasks = [(design, n, replicates, refit, seed) for seed in range(seeds)]
    start = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_coverage_seed, tasks))
    else:
        results = [_coverage_seed(t) for t in tasks]
    out = out or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_bootstrap_{design}_{os.getpid()}.json")
    with open(out, "w") as f:
        json.dump({"design": design, "n": n, "replicates": replicates, "true_ate": true_ate,
                   "wall_seconds": time.perf_counter() - start, "results": results}, f)
    summarize(out)


def timing(n: int, replicates: int, econml_n: int, refit: bool) -> None:
    d = make_causal_data("simple", n=n, p=10, seed=0)
    start = time.perf_counter()
    CausalForestDML(n_estimators=100, inference="bootstrap", n_bootstrap=replicates, bootstrap_trees=100,
                    bootstrap_nuisance=refit, random_state=0).fit(d.Y, d.T, X=d.X)
    ours = time.perf_counter() - start
    print(f"| tauforge ({'nuisance refit' if refit else 'forests only'}) | n = {n:,} | {replicates} replicates | "
          f"{ours:.1f} s | {ours / replicates:.2f} s per replicate |", flush=True)
    if not econml_n:
        return
    from econml.dml import CausalForestDML as EconMLCausalForestDML
    from econml.inference import BootstrapInference

    e = make_causal_data("simple", n=econml_n, p=10, seed=0)
    est = EconMLCausalForestDML(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0),
                                discrete_treatment=True, n_estimators=100, random_state=0, n_jobs=-1)
    start = time.perf_counter()
    est.fit(e.Y, e.T, X=e.X, inference=BootstrapInference(n_bootstrap_samples=replicates, n_jobs=-1))
    theirs = time.perf_counter() - start
    print(f"| EconML BootstrapInference | n = {econml_n:,} | {replicates} replicates | {theirs:.1f} s | "
          f"{theirs / replicates:.2f} s per replicate |")


def batching(n: int, replicates: int, backend: str) -> None:
    from tauforge.kernels.bootstrap import fit_replicates
    from tauforge.kernels.forest import forests_per_batch

    d = make_causal_data("simple", n=n, p=10, seed=0)
    t, y = d.T - d.T.mean(), d.Y - d.Y.mean()
    params = {"n_estimators": 100, "max_samples": 0.5, "backend": backend}
    fit_replicates(d.X[:2000], 2, 0, {"n_estimators": 4, "backend": backend},  # compile the kernels untimed
                   lambda c: (y[:2000], t[:2000], None), lambda *_: 0.0)
    timed = {}
    for label, batch in (("one forest per call", 1), ("batched", forests_per_batch(n, 10, replicates, "torch"))):
        start = time.perf_counter()
        timed[label] = fit_replicates(d.X, replicates, 0, params, lambda c: (y, t, None), lambda *_: 0.0,
                                      batch_size=batch)
        seconds = time.perf_counter() - start
        timed[label + " s"] = seconds
        print(f"| {label} ({backend}) | n = {n:,} | {replicates} replicates, {batch} a batch | {seconds:.1f} s | "
              f"{seconds / replicates:.2f} s per replicate |", flush=True)
    one, batched = timed["one forest per call"], timed["batched"]
    same = all(np.array_equal(a.predict(d.X[:1000]), b.predict(d.X[:1000]))
               for a, b in zip(one.forests, batched.forests))
    print(f"batched / one at a time: {timed['batched s'] / timed['one forest per call s']:.2f}x; "
          f"identical forests: {same}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("coverage", "summary", "timing", "batching"), nargs="?", default="coverage")
    parser.add_argument("--seeds", type=int, default=60, help="coverage: seeds (default: 60)")
    parser.add_argument("--n", type=int, help="rows (default: 1,000 coverage, 100,000 timing and batching)")
    parser.add_argument("--design", default="aw3", help="coverage: the design (default: aw3)")
    parser.add_argument("--no-refit", action="store_true", help="coverage: bootstrap_nuisance=False")
    parser.add_argument("--refit", action="store_true", help="timing: bootstrap_nuisance=True (default: forests only)")
    parser.add_argument("--jobs", type=int, default=1, help="coverage: seeds fit in parallel (default: 1)")
    parser.add_argument("--out", help="coverage: write every seed's results to this JSON file; summary: read it")
    parser.add_argument("--replicates", type=int, help="default: 50 (coverage), 100 (timing), 8 (batching)")
    parser.add_argument("--econml-n", type=int, default=10_000)
    parser.add_argument("--backend", choices=("auto", "numba", "torch"), default="auto",
                        help="batching: the forest backend (default: auto, numba on a CPU)")
    args = parser.parse_args()
    if args.what == "summary":
        summarize(args.out)
    elif args.what == "coverage":
        coverage(args.design, args.n or 1000, args.seeds, args.replicates or 50, not args.no_refit, args.jobs,
                 args.out)
    elif args.what == "batching":
        batching(args.n or 100_000, args.replicates or 8, args.backend)
    else:
        timing(args.n or 100_000, args.replicates or 100, args.econml_n, args.refit)


if __name__ == "__main__":
    main()
