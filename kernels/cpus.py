"""How many CPUs this process may use: the one count every pool the project sizes starts from
(evaluate's refit processes, a local run's threads per task, the forest codec's threads).

joblib's `cpu_count` counts what the process may run on (its affinity) and a cgroup's CPU quota
(a container's or a pod's limit), where `os.cpu_count` counts the node's cores; OMP_NUM_THREADS,
where set, caps it (the cluster's tasks set it from their CPU limit, and a user who sets it means
it)."""

import os


def usable_cpus() -> int:
    from joblib import cpu_count

    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cpu_count(), int(limit)) if limit.isdigit() and int(limit) > 0 else cpu_count()
