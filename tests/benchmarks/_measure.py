"""Timing and peak-memory helpers shared by the benchmarks."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import psutil


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_rss_gib: float = 0.0  # highest resident set size of the process while the block ran


@contextmanager
def measure(poll_seconds: float = 0.25):
    """Wall time and peak RSS of a block, by polling this process (and its children: joblib workers).

    Polling costs CPU that the fit would use (2 cores here), so it is slow: 4 times a second."""
    proc = psutil.Process()
    result = Measurement()
    stop = threading.Event()

    def rss() -> int:
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    peak = [rss()]

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            stop.wait(poll_seconds)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        result.seconds = time.perf_counter() - start
        stop.set()
        thread.join()
        result.peak_rss_gib = max(peak[0], rss()) / 2**30


def parse_params(text: str) -> dict:
    """Forest parameters from the command line, "k=v,k=v": ints, floats (with a dot), None,
    True and False, and any other value as a string (candidate_weights=importance)."""
    def value(v: str):
        if v in ("None", "True", "False"):
            return {"None": None, "True": True, "False": False}[v]
        try:
            return float(v) if "." in v else int(v)
        except ValueError:
            return v

    return {k: value(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}
