"""The full bootstrap: ATE interval coverage over seeds, and time against EconML's BootstrapInference.

    .venv/bin/python tests/benchmarks/bench_bootstrap.py coverage [--seeds 100]
    .venv/bin/python tests/benchmarks/bench_bootstrap.py timing [--n 100000] [--replicates 100] [--econml-n 10000]
    .venv/bin/python tests/benchmarks/bench_bootstrap.py batching [--n 100000] [--replicates 8] [--backend torch]

coverage: the `constant` design (true ATE 1), 2,000 rows, 5 folds, 200 replicates, 95% percentile and pivot
intervals; prints the share of seeds whose interval covers 1.
timing: tauforge's bootstrap (replicate forests of 100 trees on resampled residuals) at n rows,
and EconML's CausalForestDML with BootstrapInference (which refits everything per replicate) at
--econml-n rows, same number of replicates; prints seconds per replicate.
batching: the same replicates (100-tree forests at n rows) grown one forest per call and batched
as on a torch device (within 1 GiB), on --backend, in one process; prints both times, their
ratio, and whether the forests agree.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tauforge.kernels import CausalForestDML  # noqa: E402
from tauforge.kernels.datasets import make_causal_data  # noqa: E402
from tauforge.kernels.nuisance import default_nuisance_model  # noqa: E402


def coverage(seeds: int) -> None:
    hits = {"percentile": [], "pivot": []}
    for seed in range(seeds):
        d = make_causal_data("constant", n=2000, p=3, seed=seed)
        est = CausalForestDML(n_estimators=20, inference="bootstrap", n_bootstrap=200, bootstrap_trees=2,
                              random_state=seed).fit(d.Y, d.T, X=d.X)
        for kind in hits:
            lo, hi = est.bootstrap_.ate_interval(est.ate_, 0.05, kind)
            hits[kind].append(lo <= 1.0 <= hi)
    for kind, h in hits.items():
        print(f"| {kind} | {seeds} seeds | coverage of the true ATE {100 * np.mean(h):.0f}% |")


def timing(n: int, replicates: int, econml_n: int) -> None:
    d = make_causal_data("simple", n=n, p=10, seed=0)
    start = time.perf_counter()
    CausalForestDML(n_estimators=100, inference="bootstrap", n_bootstrap=replicates, bootstrap_trees=100,
                    random_state=0).fit(d.Y, d.T, X=d.X)
    ours = time.perf_counter() - start
    print(f"| tauforge | n = {n:,} | {replicates} replicates | {ours:.1f} s | "
          f"{ours / replicates:.2f} s per replicate |",
          flush=True)
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
    parser.add_argument("what", choices=("coverage", "timing", "batching"), nargs="?", default="coverage")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--replicates", type=int, help="default: 100 (timing), 8 (batching)")
    parser.add_argument("--econml-n", type=int, default=10_000)
    parser.add_argument("--backend", choices=("auto", "numba", "torch"), default="auto",
                        help="batching: the forest backend (default: auto, numba on a CPU)")
    args = parser.parse_args()
    if args.what == "coverage":
        coverage(args.seeds)
    elif args.what == "batching":
        batching(args.n, args.replicates or 8, args.backend)
    else:
        timing(args.n, args.replicates or 100, args.econml_n)


if __name__ == "__main__":
    main()
