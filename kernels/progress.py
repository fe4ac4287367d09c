"""Progress on long work: a tqdm bar on stderr for terminals, one line per step for task logs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "tree") -> Iterator[tqdm]:
    """enabled=None: shown only on a terminal, and only once the work has lasted 2 seconds."""
    disable = (not sys.stderr.isatty()) if enabled is None else not enabled
    bar = tqdm(total=total, desc=desc, unit=unit, disable=disable, delay=2.0 if enabled is None else 0.0,
               file=sys.stderr, leave=False)
    try:
        yield bar
    finally:
        bar.close()


class StepLog:
    """One line per finished step of a long job, for logs where no bar can be drawn (a pipeline
    task's): the step's time and an estimate of the time left, from the steps' relative costs
    `weights` (name -> cost). Silent unless `enabled`; prints to `stream` (default stderr)."""

    def __init__(self, desc: str, weights: dict[str, float], enabled: bool = True, stream=None):
        self.desc, self.weights, self.enabled, self.stream = desc, dict(weights), enabled, stream
        self.done_weight, self.elapsed = 0.0, 0.0

    def run(self, name: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), timed and reported as step `name` (a key of `weights`)."""
        import time

        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = time.perf_counter() - start
        self.elapsed += seconds
        self.done_weight += self.weights[name]
        if self.enabled:
            total = sum(self.weights.values())
            left = self.elapsed / self.done_weight * (total - self.done_weight) if self.done_weight else 0.0
            print(f"tauforge: {self.desc}: {name} done in {seconds:.1f} s; about {left:.0f} s left",
                  file=self.stream or sys.stderr, flush=True)
        return out
