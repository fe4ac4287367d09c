"""How often monitoring alarms on traffic with no shift: the false-alarm rate of all drift checks
together, which MONITOR_ALPHA (0.01) claims.

Per seed: tests/test_monitor.py's design (a reference profile of 2,000 rows, 1,000 champion rows
from the same distribution), one monitor() call. Prints how many seeds raised any alert, which
checks raised them, and the largest count a monitor keeping the claimed rate exceeds with
probability under 1% over that many seeds. The test suite runs the first 150 seeds of this loop
(tests/test_monitor.py::test_unshifted_traffic_alarms_in_no_more_seeds_than_the_claimed_1_percent_rate_allows).

    .venv/bin/python tests/benchmarks/bench_monitor.py                 # 2,000 seeds, about 5 minutes
    .venv/bin/python tests/benchmarks/bench_monitor.py --seeds 300

With --power: how often the domain classifier alone (components.monitor.domain_classifier_auc)
finds small shifts at p < 0.01, at its setting (early stopping) and at the setting until 2026-12-05
(scikit-learn's "auto": 100 rounds up to 10,000 rows), on the same draws, with the time a call.
Reference rows as the design's (5 covariates, x4 categorical), live rows shifted: x1's mean,
the correlation of x0 and x1 at unchanged marginals (only a joint test can see it), or a share
of rows moved into x0's upper tail.

    .venv/bin/python tests/benchmarks/bench_monitor.py --power      # 300 seeds, about 7 minutes
    .venv/bin/python tests/benchmarks/bench_monitor.py --power --seeds 50 --reference-rows 5000 --live-rows 20000

With --canary: the canary's judgement (components.monitor.judge_canary) on tests/test_monitor.py's
canary traffic (units visiting several times, each unit with one version, the caller treating
where the answering version's CATE > 0; 20% of the units to the challenger) and drifting canaries
(a share raised, or all traffic moved to the challenger, while outcomes drift): with both
versions the same policy, how often it
decides (promote or roll back; the confidence sequence claims at most 5%) and the mean squared
z-score of the difference (1 where the standard error is right); with the challenger's policy
the better one, how often it promotes and how often its sequence covers the true difference.

    .venv/bin/python tests/benchmarks/bench_monitor.py --canary     # 200 seeds, about 15 minutes

With --units: rows that are not independent, tests/test_monitor.py's `repeated_units` (a reference
of 300 training units of 8 rows fit with groups, live rows of 250 other units scored 4 times each,
a unit's rows nearly alike): how often quiet traffic alarms when monitoring counts groups and when
it counts rows (the reference's groups and the log's unit ids dropped), and how often it flags a
shift of x2 among the units, by the size of the shift in sd.

    .venv/bin/python tests/benchmarks/bench_monitor.py --units      # 500 seeds, about 7 minutes

With --scale ROWS: a week of served traffic, ROWS champion rows and a shadow's answers to 30% of
them, written with the event log's own writer in files of 2,000 rows (a server's rotation) under
its date folders; then `tauforge monitor` on it in a process of its own, whose wall time and peak
memory (the largest resident set) are printed, and once more with `--since 2d`.

    .venv/bin/python tests/benchmarks/bench_monitor.py --scale 1000000   # about 3 minutes
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

# Set before scikit-learn loads OpenMP: one thread, as the test suite runs monitor() (tests/conftest.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.stats import binom  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SHIFTS = {"none": [0.0], "mean": [0.15, 0.2], "correlation": [0.25, 0.35], "tail": [0.05, 0.08]}


def covariates(rng, n: int, shift: str = "none", size: float = 0.0):
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 3, n)
    if shift == "mean":
        X[:, 1] += size
    elif shift == "correlation":
        X[:, 1] = size * X[:, 0] + (1 - size**2) ** 0.5 * X[:, 1]
    elif shift == "tail":
        moved = rng.random(n) < size
        X[moved, 0] = 1.5 + abs(rng.normal(size=moved.sum()))
    return X


def power(args) -> None:
    from tauforge.components.monitor import domain_classifier_auc

    print(f"domain classifier, {args.reference_rows:,} reference and {args.live_rows:,} live rows, "
          f"{args.seeds} seeds: alarms at p < 0.01 (a correct test under no shift exceeds "
          f"{int(binom.isf(0.01, args.seeds, 0.01))} with probability < 1%); mean time a call")
    for shift, sizes in SHIFTS.items():
        for size in sizes:
            row = []
            for setting in (True, "auto"):
                alarms, start = 0, time.perf_counter()
                for seed in range(args.seeds):
                    rng = np.random.default_rng([seed, 7])
                    reference = covariates(rng, args.reference_rows)
                    live = covariates(rng, args.live_rows, shift, size)
                    alarms += domain_classifier_auc(reference, live, seed, early_stopping=setting)[1] < 0.01
                label = "early stopping" if setting is True else "until 2026-12-05"
                row.append(f"{label} {alarms}/{args.seeds}, {(time.perf_counter() - start) / args.seeds * 1e3:.0f} ms")
            print(f"  {shift} {size}: " + "; ".join(row), flush=True)


CANARIES = {  # name: (tests/test_monitor.py's traffic maker, its settings)
    "equal versions, 200 units x 10 visits, unit sd 2": ("canary_traffic", dict(units=200, visits=10, unit_sd=2.0,
                                                                                challenger_good=False)),
    "equal versions, 2,000 units x 2 visits": ("canary_traffic", dict(units=2000, visits=2, challenger_good=False)),
    "equal versions, share 10% then 50%, outcomes drifting 1 sd a week": (
        "drifting_canary", dict(share=lambda s: np.where(s < 0.5, 0.1, 0.5))),
    "equal versions, 20% then all to the challenger, outcomes drifting": (
        "drifting_canary", dict(share=lambda s: np.full(len(s), 0.2), champion_until=4 / 7)),
    "better challenger, 1,000 units x 2 visits": ("canary_traffic", dict(units=1000, visits=2)),
    "better challenger, 3,000 units x 2 visits": ("canary_traffic", dict(units=3000, visits=2)),
    "better challenger, 3,000 units x 2 visits, unit sd 1": ("canary_traffic", dict(units=3000, visits=2, unit_sd=1.0)),
    "better challenger, 10,000 units x 2 visits, unit sd 1": ("canary_traffic", dict(units=10000, visits=2,
                                                                                     unit_sd=1.0)),
}


def canary(args) -> None:
    import test_monitor
    from test_monitor import COLUMNS

    from tauforge.components.judgement import judge_canary
    from tauforge.components.monitor import MonitorConfig

    print(f"canary judgement, {args.seeds} seeds a row")
    for name, (maker, settings) in CANARIES.items():
        decisions, covered, z2, start = collections.Counter(), 0, [], time.perf_counter()
        for seed in range(args.seeds):
            events, outcomes, *rest = getattr(test_monitor, maker)(seed, **settings)
            truth = rest[0] if rest else 0.0
            result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"],
                                  outcomes, COLUMNS, MonitorConfig(), seed)
            decisions[result["recommendation"]] += 1
            lo, hi = result["confidence_sequence"]
            covered += lo <= truth <= hi
            z2.append(((result["difference_dr"] - truth) / result["difference_dr_stderr"]) ** 2)
        print(f"  {name}: {dict(decisions)}; sequence covers the truth {covered}/{args.seeds}; "
              f"mean z^2 {np.mean(z2):.2f}; {(time.perf_counter() - start) / args.seeds:.2f} s a call", flush=True)


def units(args) -> None:
    from test_monitor import COLUMNS, repeated_units

    from tauforge.components.constants import MONITOR_ALPHA
    from tauforge.components.monitor import monitor

    bound = int(binom.isf(0.01, args.seeds, MONITOR_ALPHA))
    print(f"units met again and again, {args.seeds} seeds a row (a monitor keeping the claimed "
          f"{MONITOR_ALPHA:.0%} exceeds {bound} alarms with probability < 1%)")
    for name, settings in {"quiet, counting groups": {}, "quiet, counting rows": dict(grouped=False),
                           "x2 +0.2 sd": dict(shift=2, size=0.2), "x2 +0.3 sd": dict(shift=2, size=0.3),
                           "x2 +0.5 sd": dict(shift=2, size=0.5)}.items():
        alarmed, by_check, start = 0, collections.Counter(), time.perf_counter()
        for seed in range(args.seeds):
            alerts = monitor(*repeated_units(seed, **settings), COLUMNS)["alerts"]
            alarmed += bool(alerts)
            by_check.update({a["check"] for a in alerts})
        print(f"  {name}: {alarmed}/{args.seeds} alarmed ({dict(by_check.most_common())}); "
              f"{(time.perf_counter() - start) / args.seeds:.2f} s a call", flush=True)


def scale(args) -> None:
    import shutil
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="tauforge-bench-monitor-"))
    try:
        _scale(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _scale(args, folder) -> None:
    import datetime as dt
    import json
    import resource
    import subprocess

    from test_monitor import COLUMNS, published_forest

    from tauforge.components.events import event_record, write_events

    forest = published_forest(folder)  # model "m" version 1 in folder/store
    rng, per_file, start = np.random.default_rng(0), 2000, time.perf_counter()
    files = -(-args.scale // per_file)
    end = time.time()
    for b in range(files):
        X = covariates(rng, per_file)
        cate = forest.predict(X)
        low, high = end - 7 * 86400 * (1 - b / files), end - 7 * 86400 * (1 - (b + 1) / files)
        times = np.sort(rng.uniform(low, high, per_file))
        units = rng.integers(0, 200_000, per_file)
        records = []
        for i in range(per_file):
            inputs = dict(zip(COLUMNS, X[i].tolist()))
            for role, answer, shown in (("champion", cate[i], True), ("shadow", cate[i] + 0.05, rng.random() < 0.3)):
                if shown:
                    records.append(event_record(time=float(times[i]), request_id=f"r{b}-{i}", row=0,
                                                unit_id=f"u{units[i]}", model="m", version=1 if role == "champion"
                                                else 2, role=role, cate=float(answer), lower=answer - 0.1,
                                                upper=answer + 0.1, latency_ms=1.0, inputs=inputs))
        write_events(records, str(folder / "events"), seq=b + 1, stamp=dt.datetime.fromtimestamp(high, dt.UTC))
        if (b + 1) % max(1, files // 10) == 0:
            print(f"written {b + 1}/{files} files, {time.perf_counter() - start:.0f} s", flush=True)
    written = sum(1 for _ in (folder / "events").rglob("*.parquet"))
    print(f"{args.scale:,} champion rows and their shadow's in {written:,} files")
    for flags in ([], ["--since", "2d"]):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "monitor", "--store",
                              str(folder / "store"), "--model", "m", "--log-dir", str(folder / "events"), "--json",
                              *flags], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"tauforge monitor exited {out.returncode}:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB to GiB, the largest so far
        print(f"monitor {' '.join(flags) or '(the whole log)'}: {result['live_rows']:,} live rows in {seconds:.1f} s, "
              f"peak memory of the monitor processes so far {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, help="default 2,000 (300 with --power, 200 with --canary, 500 with "
                                                  "--units)")
    parser.add_argument("--power", action="store_true", help="the domain classifier's power against small shifts")
    parser.add_argument("--canary", action="store_true", help="the canary judgement's wrong decisions and power")
    parser.add_argument("--units", action="store_true", help="false alarms and power with rows of repeated units")
    parser.add_argument("--scale", type=int, metavar="ROWS", help="time and memory of tauforge monitor on a week's "
                                                                  "log of ROWS champion rows")
    parser.add_argument("--reference-rows", type=int, default=2000)
    parser.add_argument("--live-rows", type=int, default=1000)
    args = parser.parse_args()
    args.seeds = args.seeds or (300 if args.power else 200 if args.canary else 500 if args.units else 2000)
    if args.power:
        return power(args)
    if args.canary:
        return canary(args)
    if args.units:
        return units(args)
    if args.scale:
        return scale(args)

    from test_monitor import COLUMNS, reference, traffic

    from tauforge.components.constants import MONITOR_ALPHA
    from tauforge.components.monitor import monitor

    alarmed, by_check = [], collections.Counter()
    start = time.perf_counter()
    for seed in range(args.seeds):
        alerts = monitor(traffic(seed), reference(seed), COLUMNS)["alerts"]
        if alerts:
            alarmed.append(seed)
            by_check.update({f"{a['check']}" + (f" ({a['covariate']})" if a.get("covariate") else "") for a in alerts})
        if (seed + 1) % 100 == 0:
            print(f"{seed + 1}/{args.seeds} seeds, {time.perf_counter() - start:.0f} s", flush=True)
    bound = int(binom.isf(0.01, args.seeds, MONITOR_ALPHA))
    print(f"\n{args.seeds} seeds of unshifted traffic: {len(alarmed)} raised an alert "
          f"({len(alarmed) / args.seeds:.2%}; claimed rate {MONITOR_ALPHA:.0%}: a monitor keeping it exceeds {bound} "
          f"with probability < 1%); {time.perf_counter() - start:.0f} s")
    print(f"seeds with an alert: {alarmed}")
    for check, count in by_check.most_common():
        print(f"  {check}: {count}")


if __name__ == "__main__":
    main()
