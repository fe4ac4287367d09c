"""How often monitoring alarms on traffic with no shift: the false-alarm rate of all drift checks
together, which MONITOR_ALPHA (0.01) claims.

Per seed: tests/test_monitor.py's design (a reference profile of 2,000 rows, 1,000 champion rows
from the same distribution), one monitor() call. Prints how many seeds raised any alert, which
checks raised them, and the largest count a monitor keeping the claimed rate exceeds with
probability under 1% over that many seeds. The test suite runs the first 150 seeds of this loop
(tests/test_monitor.py::test_unshifted_traffic_alarms_in_no_more_seeds_than_the_claimed_1_percent_rate_allows).

    .venv/bin/python tests/benchmarks/bench_monitor.py                 # 2,000 seeds, about 5 minutes
    .venv/bin/python tests/benchmarks/bench_monitor.py --seeds 300
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

# Set before scikit-learn loads OpenMP: one thread, as the test suite runs monitor() (tests/conftest.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from scipy.stats import binom  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from test_monitor import COLUMNS, reference, traffic

    from tauforge.components.constants import MONITOR_ALPHA
    from tauforge.components.monitor import monitor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2000)
    args = parser.parse_args()
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
