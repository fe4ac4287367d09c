import functools
import os
import sys

# Set before torch, numba or scikit-learn load an OpenMP runtime (they bring two copies of libgomp),
# and inherited by every subprocess the tests start (pipeline tasks, servers). The tests' OpenMP
# work is scikit-learn's HistGradientBoosting on 300-8,000 rows, where a second thread costs more
# than it gives, and spinning workers starve whatever else runs on the 2 cores (a pipeline's
# parallel task, a server, another test worker). Measured with one other busy process on the
# machine, 10 monitor() calls: 217 s with the defaults, 8.6 s with passive waiting, 5.2 s with one
# thread. torch sets its own pool below.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: torch and scikit-learn share one OpenMP runtime in this process (torch's libgomp is
# loaded first), so torch's pool size is also scikit-learn's, and its small HistGradientBoosting fits
# run faster on one thread (test_evaluate, test_boosting and an accuracy test: 30 s with 1, 61 s
# with 2). numba keeps its own pool for the forest kernels.
torch.set_num_threads(int(os.environ.get("TAUFORGE_TEST_THREADS", "1")))
sys.path.insert(0, os.path.dirname(__file__))
from background import compile_kernels, in_worker  # noqa: E402


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """Each test starts with one OpenMP thread, as OMP_NUM_THREADS above says. numba's OpenMP
    threading layer sets the shared runtime (torch's libgomp, which scikit-learn's compiled code
    also calls) to numba's thread count when a forest kernel runs, and scikit-learn's small
    boosting fits after it then run on two sleeping threads: the monitor's 150-seed test took 11 s
    alone and 88 s after one forest test in the same process. numba's kernels name their thread
    count themselves, so they keep both cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="openmp"):
        yield


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="session")
def s3():
    """moto's S3-compatible server on 127.0.0.1 for the rest of the session (tests/servers.py), its
    endpoint and credentials in os.environ from then on; from the first test when test_store_s3.py's
    demo run is selected, which starts in the background."""
    from servers import s3_server

    with s3_server() as server:
        yield server


def awaits_background(item) -> bool:
    return "background" in getattr(item, "fixturenames", ())


@functools.cache
def _source(module_path: str) -> str:
    """A test module's source (xdist's controller, which schedules the tests, imports no test
    module); empty for a test id outside the rootdir or a plugin's item."""
    try:
        with open(module_path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def starts_background(module_path: str) -> bool:
    """Whether a test module starts background work: it defines `start_background`."""
    return "\ndef start_background(" in _source(module_path)


def runs_whole(module_path: str) -> bool:
    """Whether a test module is one scheduling unit (`RUN_WHOLE = True` in it): its module
    fixtures cost more than the balance per-test units give (test_reports.py renders three
    pages in Chromium, 11 s, which each worker did)."""
    return "\nRUN_WHOLE = True" in _source(module_path)


def in_background_group(item) -> bool:
    """Whether this worker's `item` is one of the background group's tests (`pytest_xdist_make_scheduler`)."""
    return in_worker(item.config) and starts_background(str(item.path))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`-n N` (`make test`: 2 workers) with xdist's default `--dist load`: the tests of the modules
    that start background work are one unit, sent first, to one worker, which starts that work
    at its first test and waits for it while the other worker runs the other tests; every other
    test is a unit of its own, sent to whichever worker is free (a module's fixtures are then set
    up in both), but in a module that says `RUN_WHOLE = True` (`runs_whole`), which is one unit.
    pytest-xdist's `loadgroup` would do it with marks, but pytest 9.2 ignores the test ids it
    rewrites (xdist 3.8): its groups were split over both workers, each starting all the
    background work."""
    workers = config.getoption("numprocesses")
    if config.getoption("dist") != "load" or not isinstance(workers, int) or workers < 2:
        return None  # the user's --dist (every worker that runs a background test then starts all of it), or -n 1
    from xdist.scheduler import LoadScopeScheduling

    class BackgroundGroupFirst(LoadScopeScheduling):
        """LoadScopeScheduling sends the biggest unit first (its --loadscope-reorder, on by default)
        and gives a worker more only when it has two tests left: the group's worker takes no other
        test until it is nearly done."""

        def _split_scope(self, nodeid: str) -> str:
            path = os.path.join(str(config.rootpath), nodeid.split("::", 1)[0])
            return BACKGROUND_GROUP if starts_background(path) else path if runs_whole(path) else nodeid

    return BackgroundGroupFirst(config, log)


BACKGROUND_GROUP = "background"  # the scheduling unit of the modules that start background work


def pytest_collection_modifyitems(session, config, items):
    """In one process, the modules with tests that await background work run after the others
    (each module whole, in its order): that work, started at the session's first test, then runs
    on the core the other tests leave idle instead of being waited for. Under two or more xdist
    workers they run first, in one worker (`pytest_xdist_make_scheduler`)."""
    if in_worker(config):
        items.sort(key=lambda item: not in_background_group(item))  # a stable sort
    else:
        awaiting = {item.module for item in items if awaits_background(item)}
        items.sort(key=lambda item: item.module in awaiting)


@pytest.fixture(scope="session")
def background(request):
    """The slow work in other processes that selected tests await (tests/background.py): the
    `start_background(request)` of each test module whose selected tests use this fixture (its
    request.getfixturevalue gives session fixtures: tmp_path_factory, s3), by module name; stopped
    at the end of the session."""
    # A module's BACKGROUND_ORDER (lowest first; 1 by default) starts work that needs no compiled
    # kernels before the rest: it then runs on the core that the first `compile_kernels()` (35-40 s
    # on a fresh clone, one thread) leaves idle.
    modules = sorted({item.module for item in request.session.items if awaits_background(item)},
                     key=lambda module: (getattr(module, "BACKGROUND_ORDER", 1), module.__name__))
    started = {}
    try:
        for module in modules:
            started[module.__name__] = module.start_background(request)
        yield started
    finally:
        for work in started.values():
            work.close()


@pytest.fixture(autouse=True)
def start_background_first(request):
    """Starts `background` before the session's first test rather than at the first test that
    awaits it. Most tests run in this process on one thread (seed sweeps, servers started one at
    a time), leaving the other core idle: the pipeline runs, kernel compiles, EconML comparisons,
    image build and container runs, which are processes of their own (at the lowest priority:
    tests/background.py), use it meanwhile instead of running after them. Under xdist, only in the
    worker that runs the background group (`pytest_xdist_make_scheduler`)."""
    if in_worker(request.config) and not in_background_group(request.node):
        return
    if any(awaits_background(item) for item in request.session.items):
        request.getfixturevalue("background")


@pytest.hookimpl(tryfirst=True)  # before the test's fixtures: a module's may fit a forest
def pytest_runtest_setup(item):
    """Under xdist, a worker compiles the kernels (or loads them from numba's cache, 2-4 s) before
    its first test outside the background group, under `compile_kernels`' lock, so that two
    processes never compile them at once; the background group's worker does it as it starts
    that work."""
    if in_worker(item.config) and not in_background_group(item):
        compile_kernels()
