"""Slow work in other processes that tests await (pipeline runs, kernel compiles, the image build):
a test module starts it in `start_background(request)`, which conftest.py's `background` fixture
calls at the session's first test (see there why), and its tests await each process by name."""

import functools
import os
import signal
import subprocess
import tempfile


class Processes:
    """Processes started together, each awaited by the tests that inspect it: (exit status,
    stdout, stderr) by name. Their output goes to files, not pipes: nothing reads it until a test
    awaits the process, minutes later, and a full pipe would stop it. They run at the lowest
    priority (nice 19, and Linux's SCHED_IDLE where the OS has it; what they start inherits it):
    they take the core the tests in the pytest process leave idle rather than slowing those tests
    down (weights add up: ten at nice 19 took more than half of the CPU from a test at nice 10
    beside them), and get both cores once a test waits for them. On a machine busy with other
    work there is no idle core: they then run mostly while a test waits for them, so `timeout`
    (a guard against a hung process, counted from then) is generous. Extra attributes (folders,
    data) travel with them."""

    def __init__(self, timeout: float = 1200, **attributes):
        self.procs, self.outputs, self.results, self.timeout = {}, {}, {}, timeout
        self.__dict__.update(attributes)

    def start(self, name: str, cmd: list[str], **popen):
        self.outputs[name] = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        # A process group of its own, so that stopping it early also stops what it started (a
        # pipeline's tasks). Not a session of its own: Linux schedules each session (autogroup) as
        # one unit whatever its processes' priorities, so the pytest process would get no more
        # CPU than each background process. In the same session, the priorities count between
        # the tests and their background work only: against other users' sessions the session
        # keeps its share, which goes to the background work while a test awaits it.
        proc = subprocess.Popen(["nice", "-n", "19", *cmd], stdout=self.outputs[name][0],
                                stderr=self.outputs[name][1], text=True, process_group=0, **popen)
        if hasattr(os, "sched_setscheduler"):  # before python, just exec'd, has started anything
            try:
                os.sched_setscheduler(proc.pid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:
                pass  # nice 19 alone
        self.procs[name] = proc
        return self

    def result(self, name: str):
        if name not in self.results:
            code = self.procs[name].wait(timeout=self.timeout)
            out, err = (f.seek(0) or f.read() for f in self.outputs[name])
            self.results[name] = code, out, err
        return self.results[name]

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:  # the session ended (or failed) before a test awaited it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for files in self.outputs.values():
            for f in files:
                f.close()


def in_worker(config) -> bool:
    """Whether this process is one of two or more pytest-xdist workers (`make test` runs two),
    which each collect every test and run those the controller sends; one worker (`-n 1`) runs
    the tests as one process does."""
    return getattr(config, "workerinput", {}).get("workercount", 1) > 1


@functools.cache
def compile_kernels():
    """Compile the numba kernels in this process, once, into numba's cache in their source's
    __pycache__ (empty on a fresh clone): a `start_background` whose processes fit forests calls
    it first. Otherwise the first forest task of each pipeline started together compiles them at
    the same time (35-40 s of CPU each), and this process again at its first fit. Under xdist
    each worker calls it (conftest.py); a lock on the kernels' folder lets one process compile
    at a time, and the other then loads them from the cache: numba's cache has no lock of its own,
    and two processes writing one kernel's index could each number their files from a stale one."""
    import fcntl

    from tauforge.kernels import backends
    from tauforge.kernels.warmup import warm

    folder = os.open(os.path.dirname(os.path.abspath(backends.__file__)), os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        warm()
    finally:
        os.close(folder)  # and the lock with it
