"""Progress on long work, one facility for every step: a tqdm bar on a terminal, plain lines in a
log (a pipeline task's output is no terminal), or nothing.

    with progress_bar(len(trees), "growing trees", progress) as bar:
        ...
        bar.update(k)

`progress` (the `enabled` argument): None shows a bar on a terminal only, once the work has lasted
DELAY seconds (the engine's default: a shell or a notebook shows it, a log stays clean); True also
writes log lines where stderr is no terminal (what the pipeline's tasks and the CLI turn on);
False shows nothing.

A log line gives the count, the time so far and an estimate of the time left, e.g.

    tauforge: growing trees: 400/1000 trees, 12 s, about 18 s left

at most one per LINE_INTERVAL seconds and per LINE_SHARE of the work (so a long job writes about
ten), and at least one per HEARTBEAT seconds while the work moves (so a slow one still shows it
is alive); a final line when the work is done; none at all for work done within DELAY seconds.
Lines start with "tauforge: ", which `tauforge run` relays from its tasks to the terminal.

Work made of unequal named steps (evaluate's checks, monitoring's) counts in relative costs:
`progress_steps(desc, {name: cost})` and `.run(name, fn, ...)` per step; a step may report its
own parts with `update` (evaluate's refuters report each refit). Their final line says where the
time went, e.g. `tauforge: evaluate: done in 8 s (refuters 7 s, graph checks 1 s)`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

DELAY = 2.0  # seconds: work done sooner shows nothing
LINE_INTERVAL = 10.0  # seconds between log lines, at the least
LINE_SHARE = 0.1  # of the work between log lines, at the least...
HEARTBEAT = 60.0  # ...unless the work is this slow (seconds): then a line at least this often


class Progress:
    """The progress of `total` units of work (`unit`, e.g. 'tree'; None: relative costs, shown in
    percent), shown as `enabled` says (see the module's docstring) on `stream` (default stderr).
    `clock` (seconds, monotonic) is for tests. Use it through `progress_bar` or `progress_steps`."""

    def __init__(self, total: float, desc: str, enabled: bool | None, unit: str | None = "tree", *,
                 steps: dict[str, float] | None = None, stream=None, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.steps = float(total), desc, unit, dict(steps or {})
        self.stream = sys.stderr if stream is None else stream
        terminal = _isatty(self.stream)
        self.mode = ("off" if enabled is False or self.stream is None or (enabled is None and not terminal)
                     else "bar" if terminal else "log")  # no stderr (2>&-): print(file=None) would write to stdout
        self.n, self.stage = 0.0, ""
        self.step_seconds: dict[str, float] = {}
        self._clock = clock
        self._start = self._last_line = clock()
        self._n_last_line = 0.0
        self._first: tuple[float, float] | None = None  # (time, count) at the first update
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit or "", file=self.stream, leave=False,
                             delay=DELAY if enabled is None else 0.0,
                             bar_format=None if unit else "{l_bar}{bar}| {elapsed}<{remaining}")

    def update(self, n: float = 1) -> None:
        """`n` more units done."""
        n = max(0.0, min(float(n), self.total - self.n))
        if n <= 1e-9 * self.total:  # nothing (a step whose parts reported all of it): no line either
            return
        self.n += n
        if self._first is None:  # the first unit carries the one-off costs (compiling, a pool's start)
            self._first = (self._clock(), self.n)
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and not self.done:
            self._maybe_line()

    def set_stage(self, name: str) -> None:
        """What is running now (a step's name), shown beside the count."""
        self.stage = name
        if self._bar is not None:
            self._bar.set_description(f"{self.desc}: {name}" if name else self.desc)

    def run(self, name: str, fn: Callable, *args, **kwargs):
        """fn(*args, **kwargs) as step `name` (a key of `steps`): its cost counts as done when it
        returns, less what it reported itself with `update`."""
        before, start = self.n, self._clock()
        self.set_stage(name)
        out = fn(*args, **kwargs)
        self.step_seconds[name] = self._clock() - start
        self.update(before + self.steps[name] - self.n)
        return out

    @property
    def done(self) -> bool:
        return self.n >= self.total * (1 - 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self.done and self._clock() - self._start >= DELAY:
            what = "done" if self.unit is None else self._count()
            # Where the time went: the steps that took a second or more.
            slow = ", ".join(f"{name} {_duration(t)}" for name, t in self.step_seconds.items() if t >= 0.5)
            self._write(f"{what} in {_duration(self._clock() - self._start)}" + (f" ({slow})" if slow else ""))

    def _maybe_line(self) -> None:
        now = self._clock()
        elapsed, since = now - self._start, now - self._last_line
        if elapsed < DELAY:
            return
        if since >= HEARTBEAT or (since >= LINE_INTERVAL and self.n - self._n_last_line >= LINE_SHARE * self.total):
            t1, n1 = self._first
            rate = (now - t1) / (self.n - n1) if self.n > n1 else elapsed / self.n  # seconds a unit, after the first
            left = f", about {_duration(rate * (self.total - self.n))} left"
            stage = f"{self.stage}, " if self.stage else ""
            self._write(f"{stage}{self._count()}, {_duration(elapsed)}{left}")
            self._last_line, self._n_last_line = now, self.n

    def _count(self) -> str:
        if self.unit is None:
            return f"{100 * self.n / self.total:.0f}%" if self.total > 0 else "0%"
        return f"{self.n:g}/{self.total:g} {self.unit}s"

    def _write(self, text: str) -> None:
        try:
            print(f"tauforge: {self.desc}: {text}", file=self.stream, flush=True)
        except (OSError, ValueError):  # a pipe nobody reads any more, a closed stream, a full disk:
            self.mode = "off"  # the progress is lost, never the work


@contextmanager
def progress_bar(total: float, desc: str, enabled: bool | None, unit: str | None = "tree", *, stream=None,
                 clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """`total` units of work as a `Progress`, closed (its final line written) at the end."""
    progress = Progress(total, desc, enabled, unit, stream=stream, clock=clock)
    try:
        yield progress
    finally:
        progress.close()


@contextmanager
def progress_steps(desc: str, steps: dict[str, float], enabled: bool | None, *, stream=None,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """Work made of named steps with relative costs `steps` (name -> cost); run each with
    `.run(name, fn, ...)`. Shown in percent of the total cost."""
    progress = Progress(sum(steps.values()), desc, enabled, None, steps=steps, stream=stream, clock=clock)
    try:
        yield progress
    finally:
        progress.close()


def _duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 1 h 02 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
