"""The first kernel call of a fresh process, as a script (`python -c PROBE`) for the tests to run in
subprocesses and in containers: it fits and predicts small forests (plain and with the local linear
correction, so that every kernel of a fit and a prediction runs) with the numba kernels and
prints one JSON line saying how long that took, where numba cached, and how many kernels came
from the cache (hits) or were compiled (misses).

`TORCH_PROBE` does the same with the torch backend, which compiles only its few numba kernels (the
per-node randomness and the corrected prediction's sums): 7-8 s of CPU where PROBE compiles every
kernel in 35-40 s, for the tests of where kernels cache, which a handful shows as well as all."""

import json

PROBE_TEMPLATE = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
from tauforge.kernels import CausalForest
from tauforge.kernels.backends import numba_cache, numba_cpu
imported = time.perf_counter()
rng = np.random.default_rng(0)
X = rng.normal(size=(1000, 5))
T = rng.normal(size=1000)
y = X[:, 0] * T + rng.normal(size=1000)
forest = CausalForest(n_estimators=8, backend=BACKEND, device="cpu", random_state=0, progress=False,
                      linear_correction_variables=None)  # the plain prediction
tau, lower, upper = forest.fit(X, T, y).predict_with_interval(X[:50])
corrected = CausalForest(n_estimators=8, backend=BACKEND, device="cpu", random_state=0, progress=False,
                         linear_correction_variables=[0])  # and the corrected one
tau_ll, lower_ll, upper_ll = corrected.fit(X, T, y).predict_with_interval(X[:50])
done = time.perf_counter()
stats = [f.stats for f in vars(numba_cpu).values() if hasattr(f, "stats")]
state = numba_cache.STATE
print(json.dumps({
    "import_seconds": imported - start, "first_call_seconds": done - imported,
    "finite": bool(np.isfinite(tau).all() and (lower <= upper).all() and np.isfinite(tau_ll).all()
                   and (lower_ll <= upper_ll).all()),
    "enabled": state.enabled, "directory": state.directory, "seeded_from": state.seeded_from,
    "copied": state.copied, "reason": state.reason,
    "hits": sum(sum(s.cache_hits.values()) for s in stats),
    "misses": sum(sum(s.cache_misses.values()) for s in stats),
}))
"""
PROBE = PROBE_TEMPLATE.replace("BACKEND", '"numba"')
TORCH_PROBE = PROBE_TEMPLATE.replace("BACKEND", '"torch"')


def parse(stdout: str) -> dict:
    """The probe's JSON line (the last line of its output)."""
    return json.loads(stdout.strip().splitlines()[-1])
