"""A folder in the temp directory that only this uid can write: for caches whose files are
trusted once found there (numba's pickled kernels, the model store's downloaded versions)."""

from __future__ import annotations

import os
import stat
import tempfile


def writable(path: str) -> bool:
    """Whether this process can create files in `path` (created if missing): numba's own test."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def private_directory(prefix: str) -> str | None:
    """`<temp>/<prefix><uid>`, made 0700 if missing, or None if no folder can be had. One
    that exists is used only if it is this uid's folder with no write bits for others; else a
    fresh one is made (another user may have planted files there before us)."""
    try:
        parent = tempfile.gettempdir()  # raises when no candidate ($TMPDIR, /tmp, ..., cwd) is writable
        path = os.path.join(parent, f"{prefix}{os.getuid()}")
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022):
                path = tempfile.mkdtemp(prefix=prefix)
    except OSError:
        return None
    return path if writable(path) else None
