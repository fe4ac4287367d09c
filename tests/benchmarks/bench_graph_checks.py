"""How often the graph check fails a true graph, and how often each implied independence is
rejected, over seeds: tests/test_graph_checks.py's known graph (mixed binary and continuous,
non-linear), n rows per seed. Prints, per statement, the share of seeds with p < 0.05 and p < 0.01
(a valid test: 5% and 1%), the share of seeds whose smallest Holm-adjusted p-value is under 0.05
and 0.01 (the check's false failures: at most 5% and 1%), and with the edge A -> Y dropped from
the declared graph, the share of seeds the check catches it at 0.01.

    .venv/bin/python tests/benchmarks/bench_graph_checks.py             # 400 seeds, n = 1,000
    .venv/bin/python tests/benchmarks/bench_graph_checks.py --seeds 100 --n 5000
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # small HistGradientBoosting fits: one thread is faster

import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from test_graph_checks import TRUE_GRAPH, simulate

    from tauforge.components.graph import CausalGraph
    from tauforge.components.graph_checks import check_graph

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=400)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    true, dropped = CausalGraph.parse(TRUE_GRAPH), CausalGraph.parse(TRUE_GRAPH.replace(" A -> Y;", ""))
    started = time.perf_counter()
    p_values, smallest, caught = [], [], 0
    for seed in range(args.seeds):
        table = simulate(seed, args.n)
        result = check_graph(true, table, seed)
        p_values.append([s["p_value"] for s in result["statements"]])
        smallest.append(result["min_adjusted_p_value"])
        caught += check_graph(dropped, table, seed)["min_adjusted_p_value"] < 0.01
    names = [s["statement"] for s in result["statements"]]
    p_values, smallest = np.array(p_values), np.array(smallest)
    print(f"{args.seeds} seeds, n = {args.n:,}, {time.perf_counter() - started:.0f} s "
          f"({(time.perf_counter() - started) / args.seeds / 2:.2f} s a check)")
    print(f"a valid 5% test rejects in at most {binom.isf(0.01, args.seeds, 0.05):.0f} seeds, a 1% one in "
          f"{binom.isf(0.01, args.seeds, 0.01):.0f} (each exceeded with probability under 1%)")
    print("| statement | p < 0.05 | p < 0.01 |\n|---|---|---|")
    for j, name in enumerate(names):
        print(f"| {name} | {np.mean(p_values[:, j] < 0.05):.3f} | {np.mean(p_values[:, j] < 0.01):.3f} |")
    print(f"| the check fails (Holm) | {np.mean(smallest < 0.05):.3f} | {np.mean(smallest < 0.01):.3f} |")
    print(f"edge A -> Y dropped: caught at 0.01 in {caught} of {args.seeds} seeds")


if __name__ == "__main__":
    main()
