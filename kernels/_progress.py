"""Progress on long fits: a tqdm bar on stderr, silent when stderr is not a terminal."""

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
