"""Refuters: re-run the estimation on a perturbed problem whose answer is known, and test that the
pipeline gives it.

placebo               the treatment replaced by a random permutation of itself, the nuisance models
                      refit and a new forest grown on the placebo's residuals: the average effect
                      must be 0. A pipeline that finds effects whatever the treatment is fails.
random_common_cause   a random column added to the controls, the nuisance models refit (3 draws):
                      the average effect must not move by more than the draws' own spread.
data_subset           the nuisance models refit on 5 random 80% subsets of the rows: the full-data
                      effect must lie within their spread, as one more draw would.

Each re-estimates through an `EffectRefit`: the run's nuisance settings, folds and seed, the
average effect of `tauforge.kernels.ate`. `perturbations` lists the refits all three ask for, which
`EffectRefit.prefetch` runs side by side (evaluate does, before the refuters). The random common
cause and the subsets keep the forest's out-of-bag CATE fixed (the debiased score corrects for it;
a forest per refit would cost as much as the run), the placebo grows a smaller forest (at most
PLACEBO_TREES trees). Each refuter returns its estimate, a p-value for "nothing is wrong", and the
numbers behind it. The tests plant defects in an `EffectRefit` subclass (a constant
pseudo-effect, the real treatment leaking past the placebo, a dropped confounder, a wrong
denominator) and check that the refuter catches each.
"""

import hashlib
import multiprocessing
import os
from collections.abc import Callable

import numpy as np
from scipy import stats
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from tauforge.kernels.ate import average_effect, oob_effect

from .data import ValidatedData
from .nuisance import NuisanceConfig, refit_residuals

# The placebo's forest: the run's parameters with at most this many trees (its CATE only needs to
# be the pipeline's kind of estimate, not a precise one).
PLACEBO_TREES = 100


class EffectRefit:
    """The pipeline's average effect (`kernels.ate.average_effect`), estimated again on a perturbed
    problem: the nuisance models (and V(x)) cross-fit again with `nuisance` and `seed` on `rows`
    (default all), with `treatment` in place of the data's (a placebo) and `extra_control` as one
    more control the models see; the CATE is the forest's out-of-bag `oob_cate` on those rows, or
    with `regrow` the out-of-bag CATE of a new forest (`forest_params`, at most PLACEBO_TREES trees)
    grown on the new residuals. Unperturbed, it reproduces the run's own estimate.

    `on_refit(cost)`, if given, hears of each finished refit, at its cost in full-data nuisance
    refits (a subset's share of the rows; one for a regrown forest): evaluate's progress.
    `workers`: how many processes `prefetch` refits in."""

    def __init__(self, data: ValidatedData, nuisance: NuisanceConfig, seed: int, oob_cate: np.ndarray,
                 forest_params: dict | None = None, on_refit: Callable[[float], None] | None = None,
                 workers: int = 1):
        self.data, self.nuisance, self.seed, self.oob_cate = data, nuisance, seed, oob_cate
        self.forest_params = dict(forest_params or {})
        self.arrays = data.arrays()
        self.on_refit = on_refit
        self.workers = workers
        self._prefetched: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def n_rows(self) -> int:
        return len(self.arrays["Y"])

    def residuals(self, rows: np.ndarray, treatment: np.ndarray | None,
                  extra_control: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_res, t_res, t_var) of `rows`, the nuisance models refit."""
        return refit_residuals(self.data, self.nuisance, self.seed, rows=rows, extra_control=extra_control,
                               treatment=treatment)

    def prefetch(self, perturbations: list[dict]) -> None:
        """Refit the nuisance models of each perturbation (keyword arguments of `effect`: rows,
        treatment, extra_control) now, in up to `workers` forked processes, so that `effect` finds
        them done. The refits are independent, and one at a time they leave all cores but one
        idle (a refit is mostly scikit-learn's Python, which threads would serialize). Each
        finished refit counts for `on_refit` as it arrives. Where processes cannot fork, or with
        one worker, they run here, one after the other."""
        specs = [{"rows": np.arange(self.n_rows) if p.get("rows") is None else p["rows"],
                  "treatment": p.get("treatment"), "extra_control": p.get("extra_control")} for p in perturbations]
        for spec, found in zip(specs, _refit_all(self, specs)):
            self._prefetched[_perturbation_key(**spec)] = found
            self._report(len(spec["rows"]) / self.n_rows)

    def _refit(self, rows: np.ndarray, treatment: np.ndarray | None,
               extra_control: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One thread in each pool. OpenMP, for the refit's many small boosting fits: on 5,000 rows
        # a refit took 0.8 s so, 1.0 s with two spinning threads (50-100 s beside other work) and
        # 11 s with two sleeping ones (OMP_WAIT_POLICY=PASSIVE). BLAS: the demo's nine refits took
        # 8-9 s with two threads and twice the CPU time, 9-10 s with one, 4.7-4.9 s in two
        # processes of one thread (`prefetch`). Measured on this 2-core machine.
        with threadpool_limits(limits=1):
            return self.residuals(rows, treatment, extra_control)

    def _report(self, cost: float) -> None:
        if self.on_refit is not None:
            self.on_refit(cost)

    def effect(self, *, rows: np.ndarray | None = None, treatment: np.ndarray | None = None,
               extra_control: np.ndarray | None = None, regrow: bool = False) -> tuple[float, float]:
        """(average effect, its standard error) of the perturbed problem."""
        rows = np.arange(self.n_rows) if rows is None else rows
        found = self._prefetched.pop(_perturbation_key(rows, treatment, extra_control), None)
        if found is None:
            found = self._refit(rows, treatment, extra_control)
            self._report(len(rows) / self.n_rows)
        y_res, t_res, t_var = found
        weight = self.arrays["sample_weight"]
        weight = None if weight is None else weight[rows]
        if regrow:
            # Imported here: evaluate's settings (GateConfig) are checked before a run, without torch.
            from tauforge.kernels import CausalForest

            params = {**self.forest_params, "progress": False, "random_state": self.seed,
                      "n_estimators": min(int(self.forest_params.get("n_estimators", PLACEBO_TREES)), PLACEBO_TREES)}
            X = self.arrays["X"][rows]
            tau = oob_effect(CausalForest(**params).fit(X, t_res, y_res, sample_weight=weight), X)
            self._report(1)
        else:
            tau = self.oob_cate[rows]
        return average_effect(tau, y_res, t_res, t_var, weight)


def _perturbation_key(rows: np.ndarray, treatment: np.ndarray | None, extra_control: np.ndarray | None) -> str:
    """What identifies a refit: the bytes of its rows, treatment and extra control."""
    digest = hashlib.sha256()
    for part in (rows, treatment, extra_control):
        part = None if part is None else np.ascontiguousarray(part)
        digest.update(b"none;" if part is None else f"{part.dtype}{part.shape};".encode() + part.tobytes())
    return digest.hexdigest()


# The EffectRefit whose refits a forked pool computes: set before the pool forks, so its processes
# inherit it (subclasses included) and receive only each refit's arrays. Forking is safe here:
# a child runs only the nuisance models, one thread in each pool (`_refit`), never the forest's
# numba threads, which must not start in a process forked from one that ran them.
_POOL_REFIT: EffectRefit | None = None


def _refit_in_pool(spec: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return _POOL_REFIT._refit(**spec)


def _refit_all(refit: EffectRefit, specs: list[dict]):
    """The residuals of each spec, in order, from up to `refit.workers` forked processes."""
    global _POOL_REFIT
    workers = min(refit.workers, len(specs))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from (refit._refit(**spec) for spec in specs)
        return
    _POOL_REFIT = refit
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_refit_in_pool, specs)
    finally:
        _POOL_REFIT = None


def refit_workers() -> int:
    """Processes for the refuters' refits: NUMBA_NUM_THREADS where set (a cluster's tasks carry
    their CPU limit there), else the cores this process may run on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return int(os.environ.get("NUMBA_NUM_THREADS") or 0) or cores


def placebo_treatment(refit: EffectRefit, seed: int) -> np.ndarray:
    """The placebo's treatment: the data's, randomly permuted."""
    return np.random.default_rng([seed, 7]).permutation(refit.arrays["T"])


def common_causes(refit: EffectRefit, seed: int, repeats: int = 3) -> list[np.ndarray]:
    """The random common cause's independent columns, one per repeat."""
    return [np.random.default_rng([seed, 11, r]).normal(size=refit.n_rows) for r in range(repeats)]


def subsets(refit: EffectRefit, seed: int, fraction: float = 0.8, repeats: int = 5) -> list[np.ndarray]:
    """The data subset refuter's rows, one sorted random subset per repeat."""
    n = refit.n_rows
    return [np.sort(np.random.default_rng([seed, 13, r]).choice(n, int(fraction * n), replace=False))
            for r in range(repeats)]


def perturbations(refit: EffectRefit, seed: int) -> list[dict]:
    """The refits that `placebo`, `random_common_cause` and `data_subset` ask for at their
    defaults, for `EffectRefit.prefetch`."""
    return [{"treatment": placebo_treatment(refit, seed)},
            *({"extra_control": column} for column in common_causes(refit, seed)),
            *({"rows": rows} for rows in subsets(refit, seed))]


def placebo(refit: EffectRefit, seed: int) -> dict:
    """The whole estimation re-run with the treatment permuted: a permuted treatment is
    independent of everything, so a sound pipeline's average effect is 0 up to its standard error."""
    effect, stderr = refit.effect(treatment=placebo_treatment(refit, seed), regrow=True)
    return {"effect": effect, "stderr": stderr,
            "p_value": float(2 * norm.sf(abs(effect / stderr))) if stderr > 0 else 1.0}


def _within_spread(effects: list[float], baseline: float) -> dict:
    """Test that `baseline` is one more draw from the distribution of `effects` (a t prediction
    interval with len(effects) - 1 degrees of freedom). The spread of refits includes the noise of
    refitting the nuisance models, which a formula for sampling noise alone misses. Refits that all
    agree (no spread) pass only if they agree with `baseline` too."""
    effects_ = np.array(effects)
    spread = effects_.std(ddof=1) * np.sqrt(1 + 1 / len(effects_))
    change = effects_.mean() - baseline
    if spread > 0:
        p_value = float(2 * stats.t.sf(abs(change / spread), len(effects_) - 1))
    else:
        p_value = 1.0 if abs(change) <= 1e-12 * (1 + abs(baseline)) else 0.0
    return {"effect": float(effects_.mean()), "change": float(change), "spread": float(spread),
            "effects": effects_.tolist(), "p_value": p_value}


def random_common_cause(refit: EffectRefit, baseline: float, seed: int, repeats: int = 3) -> dict:
    """Refit with an independent random column among the controls, `repeats` times: the run's
    effect `baseline` must lie within the refits' spread. A pipeline whose answer depends on which
    controls it is given beyond what they say about T and Y (a control dropped or misaligned by
    position, say) moves every refit the same way and fails."""
    effects = [refit.effect(extra_control=column)[0] for column in common_causes(refit, seed, repeats)]
    return {**_within_spread(effects, baseline), "repeats": repeats}


def data_subset(refit: EffectRefit, baseline: float, seed: int, fraction: float = 0.8, repeats: int = 5) -> dict:
    """Refit on `repeats` random subsets of `fraction` of the rows: the run's effect `baseline` must
    lie within their spread (on correct pipelines a formula for the subset's sampling noise alone
    rejected 3x too often). An estimate that changes with the sample's size, not just its noise,
    fails."""
    effects = [refit.effect(rows=rows)[0] for rows in subsets(refit, seed, fraction, repeats)]
    return {**_within_spread(effects, baseline), "fraction": fraction, "repeats": repeats}
