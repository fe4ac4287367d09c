"""Where the numba kernels keep their compiled code, so that importing them never fails.

The kernels of `numba_cpu.py` compile on first use (35-40 s of CPU for a fit and a prediction, 2026-12-04)
unless numba's on-disk cache holds them (0.2-0.4 s). numba caches a `cache=True` function in
NUMBA_CACHE_DIR if set, else in its source's `__pycache__`, else in the user's cache folder, and
when none of them is writable it raises as the function is decorated, on import ("cannot cache
function ...: no locator available"): in a container with a read-only root filesystem, say, or
under a uid with no home.

The images compile the kernels at build time into NUMBA_CACHE_DIR (/opt/tauforge/numba-cache),
which every uid may read and none but root may write. `configure()`, run once before the kernels
are decorated, decides:

1. NUMBA_CACHE_DIR writable by this process (root, a developer's folder): numba uses it.
2. NUMBA_CACHE_DIR set but not writable (the image's prebuilt cache, read-only): its files are
   copied into a private folder of this uid in the temp directory (`tempfile.gettempdir()`:
   $TMPDIR, /tmp, ...), a few milliseconds, and numba caches there (NUMBA_CACHE_DIR is set to it
   for this process and those it starts).
3. NUMBA_CACHE_DIR unset: numba's own choice; if it finds no writable place, a private folder in
   the temp directory as in 2, without files to start from.

When no place is writable (a read-only root filesystem without a writable /tmp or $TMPDIR), the
kernels are compiled without a cache: nothing fails, each process compiles once, and a warning
says so. `njit` below is `numba.njit` with that decision as its `cache` argument.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass

import numba

from .. import private_dirs
from ..private_dirs import writable

log = logging.getLogger(__name__)

PRIVATE_PREFIX = "tauforge-numba-cache-"


@dataclass
class CacheState:
    """What `configure` decided: `enabled` False means the kernels compile in every process."""

    enabled: bool = True
    directory: str | None = None  # NUMBA_CACHE_DIR in effect; None: numba's own choice (or off)
    seeded_from: str | None = None  # the read-only cache copied into `directory`
    copied: int = 0  # files copied from it
    reason: str = ""


STATE: CacheState | None = None


def private_directory() -> str | None:
    """A folder in the temp directory that only this uid can write, or None if there is none.
    The cache holds pickles that numba loads, so a folder another uid could have written is not
    used (`kernels.private_dirs`)."""
    return private_dirs.private_directory(PRIVATE_PREFIX)


def copy_missing(source: str, target: str) -> int:
    """Copy the files of `source` that `target` lacks (never overwriting: target's index files may
    already hold more entries); returns how many. Safe against other processes doing the same."""
    copied = 0
    for root, _, files in os.walk(source):
        into = os.path.join(target, os.path.relpath(root, source))
        try:
            os.makedirs(into, exist_ok=True)
        except OSError:
            continue
        for name in files:
            dest = os.path.join(into, name)
            if os.path.exists(dest):
                continue
            partial = f"{dest}.{os.getpid()}.partial"
            try:
                shutil.copyfile(os.path.join(root, name), partial)
                os.link(partial, dest)  # fails if another process got there first: keep theirs
                copied += 1
            except FileExistsError:
                pass
            except OSError:  # no hard links on this filesystem, say: rename (a race may overwrite)
                try:
                    os.rename(partial, dest)
                    copied += 1
                except OSError:
                    pass
            finally:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
    return copied


def _use(directory: str) -> None:
    numba.config.CACHE_DIR = directory
    os.environ["NUMBA_CACHE_DIR"] = directory  # and the processes this one starts


def configure() -> CacheState:
    """Decide once, before any kernel is decorated, where numba caches (see the module docstring)."""
    global STATE
    if STATE is not None:
        return STATE
    configured = numba.config.CACHE_DIR
    if not configured:
        STATE = CacheState(reason="NUMBA_CACHE_DIR is unset: numba's own choice")
    elif writable(configured):
        STATE = CacheState(directory=configured, reason="NUMBA_CACHE_DIR is writable")
    else:
        private = private_directory()
        if private is None:
            STATE = CacheState(enabled=False, reason=f"NUMBA_CACHE_DIR={configured} is not writable, "
                                                     "and no temp directory is")
        else:
            seed = configured if os.path.isdir(configured) else None
            copied = copy_missing(seed, private) if seed else 0
            _use(private)
            STATE = CacheState(directory=private, seeded_from=seed, copied=copied,
                               reason=f"NUMBA_CACHE_DIR={configured} is not writable: a private copy")
    if not STATE.enabled:
        _warn_off()
    return STATE


def _warn_off() -> None:
    log.warning("tauforge: numba's cache is off (%s): the kernels compile in every process, about 40 s "
                "on first use. Give the process a writable NUMBA_CACHE_DIR, /tmp or $TMPDIR.", STATE.reason)


def _cached(func, options):
    """The dispatcher with cache=True, or None when numba finds no writable place for it."""
    try:
        return numba.njit(cache=True, **options)(func)
    except RuntimeError as exc:
        if "no locator" not in str(exc):  # numba: "cannot cache function ...: no locator available"
            raise
        return None


def njit(**options):
    """`numba.njit(cache=..., **options)`, caching only where `configure` found a writable place."""
    state = configure()

    def decorate(func):
        if state.enabled:
            dispatcher = _cached(func, options)
            if dispatcher is None and state.directory is None:
                # numba's own places are all read-only (case 3 of the module docstring).
                private = private_directory()
                if private is not None:
                    _use(private)
                    state.directory, state.reason = private, "numba found no writable place: a private folder"
                    dispatcher = _cached(func, options)
            if dispatcher is not None:
                return dispatcher
            state.enabled = False
            state.reason = f"no writable cache directory (NUMBA_CACHE_DIR={numba.config.CACHE_DIR or 'unset'})"
            _warn_off()
        return numba.njit(cache=False, **options)(func)

    return decorate
