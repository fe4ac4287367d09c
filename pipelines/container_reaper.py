"""The docker runner's containers end with the process that started them, however it ends.

`tauforge run --runner docker` runs every task as a container, a child of dockerd, not of the
run. A run stopped by SIGINT or SIGTERM removes its containers itself (training.py), but one
killed with SIGKILL (kill -9, the OOM killer, a CI job's last word) cannot, and its containers ran
on, a publish task among them (a failure review). So the first docker run of a process starts
this reaper: a process of its own session, which holds the read end of a pipe whose write end
only the run's process holds. The kernel closes that end when the process dies, for any reason;
the reaper then removes (SIGKILL, then delete) every container labelled with the process's
`LABEL` value. A process that exits normally has removed its containers already and says so
(`CLEAN`, written at exit): the reaper looks once and ends. Otherwise it looks again for
`LATE_SECONDS`, since a container the dead process had asked a busy daemon for may appear late.

    python .../pipelines/container_reaper.py FD VALUE    (started by `run_label`; by its path, not
    `-m`: the run's tauforge may be on its path only, and a reaper that cannot import dies unseen)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid

# Every container a local docker run starts carries LABEL=<this process's value>.
LABEL = "tauforge.local-run"
LATE_SECONDS = 60.0  # how long after a killed process's end a container of its may still appear
CLEAN = b"c"  # written by a process that exits normally: its containers were removed by the run
_started: dict = {}  # this process's label value and the pipe's write end, once a reaper runs
_starting = threading.Lock()  # kfp.local starts a ParallelFor's tasks from threads: one reaper


def run_label() -> dict:
    """The label for this process's containers, starting its reaper on first use. The value is
    the process id (which a test uses to find them) and a random token (process ids are reused)."""
    with _starting:
        if not _started:
            _start_reaper()
    return {LABEL: _started["value"]}


def _start_reaper() -> None:
    value = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
    read_end, write_end = os.pipe()  # not inheritable: no task process holds the write end
    try:
        subprocess.Popen([sys.executable, os.path.abspath(__file__), str(read_end), value], pass_fds=(read_end,),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)  # a terminal's Ctrl-C and SIGHUP never reach it
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    _started.update(value=value, write_end=write_end)  # held open until this process dies
    atexit.register(_exiting_cleanly, write_end)


def _exiting_cleanly(write_end: int) -> None:
    with contextlib.suppress(OSError):
        os.write(write_end, CLEAN)


def reap(value: str) -> int:
    """Remove every container labelled `LABEL=value`, running or not; return how many."""
    import docker

    client = docker.from_env()
    removed = 0
    try:
        for container in client.containers.list(all=True, filters={"label": f"{LABEL}={value}"}):
            with contextlib.suppress(Exception):  # removed meanwhile, or the daemon refused: go on
                container.remove(force=True)
                removed += 1
    finally:
        client.close()
    return removed


def main(argv: list[str]) -> int:
    read_end, value = int(argv[0]), argv[1]
    said = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(read_end, 1):  # b"" once the writer is gone, however it ended
            said += chunk
    # A container whose creation or start the killed process had asked for may appear after it:
    # a busy daemon answered a run's calls after more than 60 s (training.DOCKER_API_TIMEOUT).
    deadline = time.monotonic() + (0.0 if CLEAN in said else LATE_SECONDS)
    while True:
        with contextlib.suppress(Exception):  # a daemon restarting: the next look may reach it
            reap(value)
        if time.monotonic() >= deadline:
            return 0
        time.sleep(2.0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
