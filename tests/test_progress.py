"""Progress on long work (kernels/progress.py): log lines off a terminal with the time left, at a
limited rate; a bar on a terminal; nothing when switched off. A fake clock stands in for real time."""

import io

from tauforge.kernels.progress import progress_bar, progress_steps


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run(total, step, seconds_per_step, enabled=True, unit="tree", stream=None):
    """`total` units done `step` at a time, each step taking `seconds_per_step`; the lines written."""
    clock, stream = FakeClock(), stream if stream is not None else io.StringIO()
    with progress_bar(total, "growing trees", enabled, unit, stream=stream, clock=clock) as bar:
        for _ in range(0, total, step):
            clock.now += seconds_per_step
            bar.update(step)
    return stream.getvalue().splitlines()


def test_log_lines_give_the_count_the_time_and_an_estimate_of_the_time_left():
    # 1,000 trees at 10 a second: a line every 10 s (each also a tenth of the work), then the final one.
    assert run(1000, 10, 1.0) == [
        "tauforge: growing trees: 100/1000 trees, 10 s, about 1 min 30 s left",
        "tauforge: growing trees: 200/1000 trees, 20 s, about 1 min 20 s left",
        "tauforge: growing trees: 300/1000 trees, 30 s, about 1 min 10 s left",
        "tauforge: growing trees: 400/1000 trees, 40 s, about 1 min 00 s left",
        "tauforge: growing trees: 500/1000 trees, 50 s, about 50 s left",
        "tauforge: growing trees: 600/1000 trees, 1 min 00 s, about 40 s left",
        "tauforge: growing trees: 700/1000 trees, 1 min 10 s, about 30 s left",
        "tauforge: growing trees: 800/1000 trees, 1 min 20 s, about 20 s left",
        "tauforge: growing trees: 900/1000 trees, 1 min 30 s, about 10 s left",
        "tauforge: growing trees: 1000/1000 trees in 1 min 40 s"]


def seconds(line: str) -> float:
    """The time so far in a line ('..., 1 min 20 s, about ...' or '... in 1 min 20 s')."""
    text = line.split(", ")[1] if ", about" in line else line.split(" in ")[-1]
    parts = text.replace(" s", "").split(" min ")
    return 60 * float(parts[0]) + float(parts[1]) if len(parts) == 2 else float(parts[0])


def test_log_lines_are_at_least_10_s_and_a_tenth_of_the_work_apart():
    # 1,000 units at 16 a second (62.5 s): only the 10 s rule holds the lines back.
    fast = run(1000, 1, 1 / 16)
    assert [seconds(line) for line in fast] == [10, 20, 30, 40, 50, 60, 62]  # 62.5 s rounds to even
    # 200 units at one a second: a tenth of the work takes 20 s, so the lines come every 20 s, not 10.
    slow_share = run(200, 1, 1.0)
    assert [seconds(line) for line in slow_share[:-1]] == [20, 40, 60, 80, 100, 120, 140, 160, 180]
    # A job whose tenth takes 100 s still writes a line a minute (the heartbeat), and every
    # intermediate line carries an estimate of the time left.
    slow = run(1000, 1, 1.0)
    assert [seconds(line) for line in slow[:-1]] == list(range(60, 1000, 60))
    assert all("left" in line for line in slow[:-1]) and slow[-1].endswith("1000/1000 trees in 16 min 40 s")


def test_work_done_within_2_s_writes_nothing_and_a_few_seconds_only_the_final_line():
    assert run(500, 10, 0.03) == []  # 1.5 s
    assert run(500, 10, 0.1) == ["tauforge: growing trees: 500/500 trees in 5 s"]


def test_unfinished_work_writes_no_final_line():
    clock, stream = FakeClock(), io.StringIO()
    try:
        with progress_bar(100, "growing trees", True, stream=stream, clock=clock) as bar:
            clock.now += 30
            bar.update(50)
            raise RuntimeError("out of memory")
    except RuntimeError:
        pass
    assert stream.getvalue().splitlines() == ["tauforge: growing trees: 50/100 trees, 30 s, about 30 s left"]


def test_progress_false_writes_nothing_and_none_writes_nothing_off_a_terminal():
    assert run(1000, 1, 1.0, enabled=False) == []
    assert run(1000, 1, 1.0, enabled=None) == []
    assert run(1000, 1, 1.0, enabled=False, stream=Terminal()) == []


def test_a_terminal_gets_a_bar_not_log_lines():
    terminal = Terminal()
    run(100, 10, 1.0, enabled=True, stream=terminal)
    shown = terminal.getvalue()
    assert "growing trees" in shown and "/100" in shown and "|" in shown
    assert "tauforge: " not in shown


def test_steps_show_their_name_and_the_share_done_and_may_report_their_parts():
    clock, stream = FakeClock(), io.StringIO()

    def refits(bar, k):
        for _ in range(k):
            clock.now += 10
            bar.update(1)

    with progress_steps("evaluate", {"placebo": 2, "subsets": 5, "quick": 1}, True, stream=stream, clock=clock) as bar:
        bar.run("placebo", lambda: clock.__setattr__("now", clock.now + 20))
        bar.run("subsets", refits, bar, 5)
        bar.run("quick", lambda: None)
    assert stream.getvalue().splitlines() == [
        "tauforge: evaluate: placebo, 25%, 20 s, about 1 min 00 s left",
        "tauforge: evaluate: subsets, 38%, 30 s, about 50 s left",
        "tauforge: evaluate: subsets, 50%, 40 s, about 40 s left",
        "tauforge: evaluate: subsets, 62%, 50 s, about 30 s left",
        "tauforge: evaluate: subsets, 75%, 1 min 00 s, about 20 s left",
        "tauforge: evaluate: subsets, 88%, 1 min 10 s, about 10 s left",
        "tauforge: evaluate: done in 1 min 10 s (placebo 20 s, subsets 50 s)"]  # "quick" took no time


def test_the_time_left_leaves_out_the_first_units_one_off_cost():
    # A review: a first tree that compiled the kernels for 35 s (then 1 s a tree) gave "about 39 min
    # left" at 25 of 1,000 trees, where 975 s were left.
    from tauforge.kernels.progress import _duration

    clock, stream = FakeClock(), io.StringIO()
    with progress_bar(1000, "growing trees", True, "tree", stream=stream, clock=clock) as bar:
        clock.now += 35
        bar.update(1)
        for _ in range(199):
            clock.now += 1
            bar.update(1)
    first = stream.getvalue().splitlines()[0]
    done = int(first.split(": ")[2].split("/")[0])
    assert first.endswith(f"about {_duration(1000 - done)} left"), first


class BrokenPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_that_fails_loses_the_progress_not_the_work(capsys):
    # A review: a reader gone from the pipe, a closed stream or a full disk raised from a progress
    # line and lost the fit; without stderr (2>&-) the lines went to stdout.
    import sys

    closed = io.StringIO()
    closed.close()
    for stream in (BrokenPipe(), closed, None):
        real, clock = sys.stderr, FakeClock()
        if stream is None:
            sys.stderr = None
        try:
            with progress_bar(100, "growing trees", True, "tree", stream=stream, clock=clock) as bar:
                for _ in range(10):
                    clock.now += 5
                    bar.update(10)
        finally:
            sys.stderr = real
        assert bar.n == 100
    assert capsys.readouterr().out == ""
