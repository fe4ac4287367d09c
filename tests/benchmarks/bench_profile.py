"""Where one tree's time goes: the phases of a CausalForest fit on one core, per tree, next to
the limit (histogram adds per second one core reaches on node-sorted rows), and the torch
path's time per tree on the CPU next to numba's.

    .venv/bin/python tests/benchmarks/bench_profile.py                     # 1e5 x 10 and 1e6 x 30
    .venv/bin/python tests/benchmarks/bench_profile.py --sizes 100000:10:40 --torch-trees 0
    .venv/bin/python tests/benchmarks/bench_profile.py --sizes 100000:10:100 --params min_samples_leaf=5
    .venv/bin/python tests/benchmarks/bench_profile.py --sizes 1000000:30:4 --move-rows-bytes 0,16777216,4194304

Everything runs on one thread (NUMBA_NUM_THREADS=1, one torch and BLAS thread), so the figures
are CPU time per tree; growth spreads whole trees over the cores (a tree a thread, numba's thread count),
so a fit of many trees on c cores takes about trees x (time per tree) / c. The grower's phases
come from its own cycle counters (kernels/backends/numba_cpu.py, PHASES), scaled so that they
add up to the growth's measured CPU time (the counters read wall time, which a busy machine
inflates). "Python between kernel calls" is the growth's wall time outside the kernel.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _measure import parse_params  # noqa: E402


def timed(fn, *args, **kwargs):
    """(result, CPU seconds, wall seconds) of fn(*args, **kwargs)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.process_time() - c0, time.perf_counter() - w0


def cycles_per_second() -> float:
    from tauforge.kernels.backends import numba_cpu

    numba_cpu.cycles_now()
    c0, w0 = numba_cpu.cycles_now(), time.perf_counter()
    time.sleep(0.3)
    return (numba_cpu.cycles_now() - c0) / (time.perf_counter() - w0)


class Quiet:
    """A progress bar that shows nothing (`_grow` reports to one)."""

    def update(self, _):
        pass


def histogram_rates(binned, mom, rows: int) -> tuple[float, float]:
    """Adds per second of the grower's histogram kernel over `rows` structure rows: node-sorted
    (the node's rows contiguous in memory, the limit) and gathered in the scattered order a deep
    node's rows have in the tree's sample (how the grower reads them). 5 channel adds a row and
    feature."""
    from tauforge.kernels.backends import numba_cpu

    p = binned.coarse.shape[1]
    hist = np.zeros((p, binned.max_bins, 6))
    codes = np.ascontiguousarray(binned.coarse[:rows])
    moments = np.ascontiguousarray(mom[:rows])
    empty_e = np.zeros(0, dtype=np.int32)
    scattered = np.sort(np.random.default_rng(0).choice(len(mom), rows, replace=False)).astype(np.int32)
    out = []
    for data, idx in ((codes, np.arange(rows, dtype=np.int32)), (binned.coarse, scattered)):
        mom_data = moments if data is codes else mom
        numba_cpu._build_hist(hist, binned.n_bins, data, mom_data, idx, 0, len(idx), data, mom_data, empty_e, 0, 0)
        best = np.inf
        for _ in range(5):
            _, cpu, _ = timed(numba_cpu._build_hist, hist, binned.n_bins, data, mom_data, idx, 0, len(idx), data,
                              mom_data, empty_e, 0, 0)
            best = min(best, cpu)
        out.append(rows * p * 5 / best)
    return out[0], out[1]


def profile(n: int, p: int, trees: int, torch_trees: int, params: dict, seed: int = 0) -> None:
    import torch

    from tauforge.kernels.backends import get_backend, numba_cpu
    from tauforge.kernels.binning import QuantileBinner
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.forest import CausalForest, _grow, _moments
    from tauforge.kernels.local_linear import DEFAULT_RIDGE, LocalLinearCorrection, select_variables

    torch.set_num_threads(1)
    data = make_causal_data("simple", n=n, p=p, seed=seed)
    t_res, y_res = data.T - data.e, data.Y - data.m
    forest = CausalForest(n_estimators=trees, random_state=seed, **params)
    forest.seed_ = seed
    binner, bin_cpu, _ = timed(QuantileBinner(forest.max_bins, random_state=seed).fit, data.X)
    binned, codes_cpu, _ = timed(binner.bin, data.X)
    sampler = forest._sampler(n)
    samples, sample_cpu, _ = timed(lambda: list(sampler.trees(0, sampler.n_groups)))  # drawn when read
    mom = _moments(t_res, y_res, None)
    rule = forest._rule(p)

    numba_backend = get_backend("numba", torch.device("cpu"))
    _grow(numba_backend, binned, [mom], [samples[:2]], rule, Quiet())  # compiled and cached before timing
    numba_backend.phase_cycles[:] = 0
    numba_backend.histogram_adds = 0
    (arrays,), grow_cpu, grow_wall = timed(_grow, numba_backend, binned, [mom], [samples], rule, Quiet())
    variables, select_cpu, _ = timed(select_variables, data.X, t_res, y_res, seed)
    _, ll_cpu, _ = timed(LocalLinearCorrection.fit, variables or (0,), DEFAULT_RIDGE, data.X, t_res,
                         y_res, np.ones(n), numba_backend, binned.fine, arrays, samples)
    _, in_bag_cpu, _ = timed(sampler.in_bag)

    seconds = numba_backend.phase_cycles / cycles_per_second()
    kernel_wall = seconds.sum()
    scale = grow_cpu / max(kernel_wall, 1e-12)  # counters read wall time; the table shows CPU time
    per_tree = 1000.0 / trees
    rows = [("binning (fit the quantiles, code X), whole fit", bin_cpu + codes_cpu, False),
            ("sampling (subsamples, honest halves), whole fit", sample_cpu, False)]
    rows += [(f"growth: {name}", s * scale, True) for name, s in zip(numba_cpu.PHASES, seconds)]
    rows += [("growth: Python between kernel calls", max(grow_wall - kernel_wall, 0.0), True),
             ("local linear correction: choosing covariates (lasso), whole fit", select_cpu, False),
             ("local linear correction: leaf moments (each tree's own rows walked)", ll_cpu, True),
             ("out-of-bag bookkeeping (which trees saw each row), at prediction", in_bag_cpu, False)]
    total = sum(s for _, s, _ in rows)
    print(f"\n### n = {n:,}, p = {p}, {trees} trees on one thread (mtry {rule.mtry}, "
          f"{len(arrays.feature) // trees:,} nodes a tree)\n")
    print("| phase | ms a tree | share |")
    print("|---|---|---|")
    for name, s, _ in rows:
        print(f"| {name} | {s * per_tree:.1f} | {100 * s / total:.1f}% |")
    print(f"| **all** | **{total * per_tree:.1f}** | 100% |")
    growth = sum(s for name, s, per in rows if name.startswith("growth"))
    print(f"\ngrowth alone: {growth * per_tree:.1f} ms a tree of CPU time")

    sorted_rate, gathered_rate = histogram_rates(binned, mom, min(n // 4, 250_000))
    hist_seconds = seconds[numba_cpu.PHASES.index("histogram build")] * scale
    print(f"histogram adds per second on one core: {sorted_rate / 1e6:.0f} M on node-sorted rows (the limit), "
          f"{gathered_rate / 1e6:.0f} M on rows gathered in a deep node's order, "
          f"{numba_backend.histogram_adds / hist_seconds / 1e6:.0f} M in the grower "
          f"({numba_backend.histogram_adds / trees / 1e6:.0f} M adds a tree); the histogram build is "
          f"{100 * hist_seconds / grow_cpu:.0f}% of growth")

    if torch_trees:
        torch_backend = get_backend("torch", torch.device("cpu"))
        _, torch_cpu, _ = timed(_grow, torch_backend, binned, [mom], [samples[:torch_trees]], rule, Quiet())
        numba_per_tree = grow_cpu / trees
        print(f"torch path on the CPU: {1000 * torch_cpu / torch_trees:.0f} ms a tree ({torch_trees} trees), numba "
              f"{1000 * numba_per_tree:.0f} ms: {torch_cpu / torch_trees / numba_per_tree:.1f}x", flush=True)


def compare_move_thresholds(n: int, p: int, trees: int, values: list[int], repeats: int, seed: int = 0) -> None:
    """Growth CPU time a tree with each numba_cpu.MOVE_ROWS_BYTES in `values` (nodes with more
    bytes of rows move them, smaller ones partition an index), the same trees, alternating
    `repeats` times: the median of each."""
    import torch

    from tauforge.kernels.backends import NumbaBackend
    from tauforge.kernels.binning import QuantileBinner
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.forest import CausalForest, _grow, _moments

    torch.set_num_threads(1)
    data = make_causal_data("simple", n=n, p=p, seed=seed)
    forest = CausalForest(n_estimators=trees, random_state=seed)
    forest.seed_ = seed
    binned = QuantileBinner(forest.max_bins, random_state=seed).fit(data.X).bin(data.X)
    sampler = forest._sampler(n)
    samples = list(sampler.trees(0, sampler.n_groups))
    mom, rule = _moments(data.T - data.e, data.Y - data.m, None), forest._rule(p)
    seconds: dict[int, list[float]] = {v: [] for v in values}
    features = None
    for r in range(repeats + 1):  # the first round compiles and warms the caches
        for v in values:
            (arrays,), cpu, _ = timed(_grow, NumbaBackend(move_rows_bytes=v), binned, [mom], [samples], rule, Quiet())
            if features is None:
                features = arrays.feature
            if not np.array_equal(features, arrays.feature):
                raise AssertionError(f"move_rows_bytes={v} grew other trees")
            if r:
                seconds[v].append(cpu)
    print(f"\n### n = {n:,}, p = {p}, {trees} trees on one thread: growth CPU ms a tree by MOVE_ROWS_BYTES "
          f"(median of {repeats})\n")
    print("| move_rows_bytes | ms a tree | runs |")
    print("|---|---|---|")
    for v, s in seconds.items():
        print(f"| {v:,} | {1000 * np.median(s) / trees:.1f} | {', '.join(f'{1000 * x / trees:.0f}' for x in s)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000:10:100,1000000:30:8",
                        help="comma-separated n:p:trees (default: %(default)s)")
    parser.add_argument("--torch-trees", type=int, default=4, help="trees grown on the torch path (0: skip)")
    parser.add_argument("--move-rows-bytes", default="",
                        help="comma-separated thresholds to compare instead of the profile (e.g. 16777216,4194304)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of --move-rows-bytes (default: 3)")
    parser.add_argument("--params", default="",
                        help="forest parameters, e.g. min_samples_leaf=5,max_samples=0.45 (default: none)")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        n, p, trees = (int(v) for v in size.split(":"))
        if args.move_rows_bytes:
            compare_move_thresholds(n, p, trees, [int(v) for v in args.move_rows_bytes.split(",")], args.repeats)
        else:
            profile(n, p, trees, args.torch_trees, parse_params(args.params))


if __name__ == "__main__":
    main()
