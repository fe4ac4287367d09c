"""Compile every numba kernel once, into numba's on-disk cache: `python -m tauforge.kernels.warmup`.

The images run it at build time with NUMBA_CACHE_DIR=/opt/tauforge/numba-cache, so that a task or
a predictor starting in a fresh container loads the kernels (0.2-0.4 s) instead of compiling them
(35-40 s of CPU); `kernels/backends/numba_cache.py` says how a read-only copy of that cache is used.

A tiny fit and prediction with each backend on the CPU: the numba backend's kernels, and the
per-node randomness the torch backend draws with numba. Exits 1 if the kernels did not end up in
a cache (the build should fail rather than ship an image that compiles in every container).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np


def warm(seed: int = 0) -> None:
    """Fit and predict a tiny forest with each backend on the CPU (every kernel, with the argument
    types real fits and predictions use)."""
    from .forest import CausalForest

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 4))
    T = rng.normal(size=600)
    y = X[:, 0] * T + rng.normal(size=600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 trees: the interval's noisy-width warning is expected
        for backend in ("numba", "torch"):
            for correction in (None, [0]):  # the plain prediction kernel, and the corrected path
                forest = CausalForest(n_estimators=4, backend=backend, device="cpu", random_state=seed,
                                      linear_correction_variables=correction, progress=False)
                forest.fit(X, T, y).predict_with_interval(X[:20])


def cache_files(directory: str) -> int:
    """Index files (one per cached kernel) under `directory`."""
    return sum(name.endswith(".nbi") for _, _, files in os.walk(directory) for name in files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tauforge.kernels.warmup", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    requested = os.environ.get("NUMBA_CACHE_DIR")  # before configure() may point it at a private copy
    from .backends import numba_cache

    start = time.perf_counter()
    warm()
    seconds = time.perf_counter() - start
    state = numba_cache.configure()
    where = state.directory or "numba's default place"
    print(f"tauforge warmup: kernels compiled or loaded in {seconds:.1f} s; numba cache: {where} ({state.reason})")
    if not state.enabled:
        print("tauforge warmup: the kernels are not cached", file=sys.stderr)
        return 1
    if requested and (state.directory is None
                      or os.path.realpath(state.directory) != os.path.realpath(requested)):
        print(f"tauforge warmup: NUMBA_CACHE_DIR={requested} is not writable: the kernels went to "
              f"{state.directory}, and {requested} stays without them", file=sys.stderr)
        return 1
    if state.directory is not None:
        found = cache_files(state.directory)
        print(f"tauforge warmup: {found} kernels cached in {state.directory}")
        if found == 0:
            print("tauforge warmup: no kernel was written to the cache", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
