"""How many CPUs this process may use: the one count every pool the project sizes starts from
(evaluate's refit processes, a local run's threads per task, the forest codec's threads).

joblib's `cpu_count` counts what the process may run on (its affinity) and a cgroup's CPU quota
(a container's or a pod's limit), where `os.cpu_count` counts the node's cores; OMP_NUM_THREADS,
where set, caps it (the cluster's tasks set it from their CPU limit, and a user who sets it means
it)."""

import os


def _env_threads(name: str) -> int | None:
    """The thread count variable `name` sets (its outer level for OpenMP's list form "4,2"), or
    None when unset or not a positive integer."""
    try:
        n = int(os.environ.get(name, "").split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def usable_cpus() -> int:
    from joblib import cpu_count

    try:
        count = cpu_count()
    except ValueError:  # LOKY_MAX_CPU_COUNT that is no integer: joblib's count raises
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _env_threads("OMP_NUM_THREADS")
    return min(count, limit) if limit else count


def limit_thread_pools() -> int:
    """Run numba's kernels (and torch's, if loaded) on `usable_cpus()` threads unless
    NUMBA_NUM_THREADS (OMP_NUM_THREADS) says otherwise: both size their pools from the node's
    cores, so a predictor with a 1-CPU limit on a 32-core node ran 32 threads under a 1-CPU quota."""
    import sys

    import numba

    n = usable_cpus()
    if _env_threads("NUMBA_NUM_THREADS") is None:
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    torch = sys.modules.get("torch")
    if torch is not None and _env_threads("OMP_NUM_THREADS") is None:
        torch.set_num_threads(max(1, min(n, torch.get_num_threads())))
    return n
