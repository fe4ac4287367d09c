"""Memory at scale: how big a 2,000-tree forest on 1e6 rows is on disk and in memory, and the peak
memory of scoring 1e6 rows with it (prediction works in chunks of rows).

    .venv/bin/python tests/benchmarks/bench_memory.py [--rows 1000000] [--trees 2000] [--grown 40] [--no-score]

Growing 2,000 trees on 1e6 rows takes about half an hour on 2 cores, so `--grown` trees are grown
on the full data and repeated to `--trees`: every tree is a real tree of that data (the same
size distribution), which is all that size and scoring memory depend on. (Format 3 compresses
some byte planes with zlib, whose 32 KiB window must not reach back to a tree's earlier copy: at
1e6 rows one byte plane of 40 trees is about 1 MB, so it does not; with small --rows the size on
disk is understated.) Scoring runs in a fresh
process (load, verify checksums, score, report its peak resident memory); `--no-score` only loads
there (scoring 1e6 rows takes about 7 minutes). Format 2 (the arrays saved as they are) and the
older layout (float64 leaves, saved child pointers, int16 features) are computed from the same
arrays, for comparison.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

GiB = 2**30


def score_in_fresh_process(path: str, rows: int, score: bool = True) -> dict:
    code = f"""
import json, time
from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data
X = make_causal_data("simple", n={rows}, p=10, seed=1).X
start = time.perf_counter()
forest = CausalForest.load({path!r})
loaded = time.perf_counter() - start
tau, lower, upper = forest.predict_with_interval(X) if {score!r} else (X[:1, 0], X[:1, 0], X[:1, 0] + 1)
score_s = time.perf_counter() - start - loaded
# VmHWM, not getrusage: Linux carries ru_maxrss across fork and exec, so a child started by a
# large parent would report the parent's peak.
peak_kib = int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
print(json.dumps({{"load_s": loaded, "score_s": score_s, "peak_rss_gib": peak_kib / 2**20,
                  "finite": bool((upper > lower).all())}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:  # the child's own error, which capture_output would swallow
        raise RuntimeError(f"scoring in a fresh process failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=2000)
    parser.add_argument("--grown", type=int, default=40, help="trees actually grown, repeated to --trees")
    parser.add_argument("--no-score", action="store_true", help="only save and load, do not score --rows rows")
    args = parser.parse_args()
    if args.trees % args.grown or args.grown % 2:
        raise SystemExit("--trees must be a multiple of --grown, and --grown even (little bags of 2)")

    from tauforge.kernels import CausalForest
    from tauforge.kernels.datasets import make_causal_data
    from tauforge.kernels.forest_arrays import ForestArrays
    from tauforge.kernels.local_linear import AUTO_MAX_LEAF_MOMENT_BYTES, LocalLinearCorrection, leaf_moment_bytes_bound

    d = make_causal_data("simple", n=args.rows, p=10, seed=0)
    start = time.perf_counter()
    forest = CausalForest(n_estimators=args.grown, random_state=0, progress=False).fit(d.X, d.T - d.e, d.Y - d.m)
    grow_s = time.perf_counter() - start
    del d
    grown = forest.forest_
    forest.forest_ = ForestArrays.merge([grown] * (args.trees // args.grown))
    forest.set_params(n_estimators=args.trees)
    correction = forest.linear_correction_  # its leaf moments are aligned with the leaves: repeat them too
    if correction is not None:
        bound = leaf_moment_bytes_bound(args.trees, forest._sampler(args.rows).max_estimation_rows(),
                                        forest.min_samples_leaf, len(correction.variables))
        # 'auto' decides at the forest's size: off where --trees trees' moments could pass the cap
        forest.linear_correction_ = (None if bound > AUTO_MAX_LEAF_MOMENT_BYTES else
                                     LocalLinearCorrection.merge([correction] * (args.trees // args.grown)))
    fa = forest.forest_
    in_memory = sum(a.nbytes for a in (fa.feature, fa.threshold, fa.child, fa.leaf_values))
    nodes, leaves = len(fa.feature), len(fa.leaf_values)
    old_layout = nodes * (2 + 2 + 4) + leaves * 4 * 8  # int16 feature, uint16 threshold, int32 child, float64 leaves
    binner_bytes = sum(a.nbytes for a in forest.binner_.to_arrays().values())
    format_2 = sum(a.nbytes for a in fa.to_arrays().values()) + binner_bytes  # npz headers: a few hundred bytes
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "forest")
        start = time.perf_counter()
        forest.save(path)
        save_s = time.perf_counter() - start
        on_disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        del forest, fa, grown
        scored = score_in_fresh_process(path, args.rows, score=not args.no_score)
    print(f"grew {args.grown} trees on {args.rows:,} rows in {grow_s:.0f} s; repeated to {args.trees} trees: "
          f"{nodes:,} nodes, {leaves:,} leaves ({leaves / args.trees:,.0f} a tree)")
    forest_on_disk = on_disk - binner_bytes
    print(f"on disk {on_disk:,} bytes (format 2: {format_2:,}); the forest alone {forest_on_disk / leaves:.2f} bytes "
          f"a leaf, {forest_on_disk / args.trees / 1e6:.3f} MB a tree "
          f"(format 2: {(format_2 - binner_bytes) / leaves:.2f},"
          f" {(format_2 - binner_bytes) / args.trees / 1e6:.3f}); bin edges {binner_bytes:,} bytes")
    score = "not run" if args.no_score else f"{scored['score_s']:.0f} s"
    print(f"| forest | on disk | format 2 | in memory | old layout | save | load | score {args.rows:,} rows | "
          f"peak RSS {'loading' if args.no_score else 'scoring'} |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.trees} trees, {args.rows:,} rows | {on_disk / GiB:.3f} GiB | {format_2 / GiB:.2f} GiB | "
          f"{in_memory / GiB:.2f} GiB | {old_layout / GiB:.2f} GiB | {save_s:.1f} s | {scored['load_s']:.1f} s | "
          f"{score} | {scored['peak_rss_gib']:.2f} GiB |")
    print(f"(this process's own peak: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)")


if __name__ == "__main__":
    main()
