"""Refuters: re-run the estimation on a perturbed problem whose answer is known, and test that the
pipeline gives it.

placebo               the treatment replaced by a random permutation of itself, the nuisance models
                      refit and a new forest grown on the placebo's residuals: the average effect
                      must be 0. A pipeline that finds effects whatever the treatment is fails.
random_common_cause   a random column added to the controls, the nuisance models refit (3 draws):
                      the average effect must not move by more than the draws' own spread.
data_subset           the nuisance models refit on 5 random halves of the rows (of the groups, with
                      groups): the full-data effect must lie within their spread, as one more
                      draw would.

Each re-estimates through an `EffectRefit`: the run's nuisance settings, folds and seed, the
average effect of `tauforge.kernels.ate`; the random common cause and the subsets keep the
forest's out-of-bag CATE fixed (the debiased score corrects for it; a forest per refit would cost
as much as the run), the placebo grows a smaller forest (at most PLACEBO_TREES trees). Each
refuter returns its estimate, a p-value for "nothing is wrong", and the numbers behind it. The tests plant defects in an
`EffectRefit` subclass (a constant pseudo-effect, the real treatment leaking past the placebo, a
dropped confounder, a wrong denominator) and check that the refuter catches each.

A refuter is the refits it asks for and a judgement of their results (`Refuter`);
`run_refuters` gathers every refuter's refits into one batch, which an `EffectRefit` with
`workers` > 1 spreads over that many processes: the nine refits are independent, and each is
mostly one core's work (scikit-learn's boosting gains 5-7% from a second thread).
"""

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from joblib.externals.loky.process_executor import TerminatedWorkerError
from scipy import stats
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from tauforge.components.config import REFIT_WORKERS_VARIABLE, refit_workers_from_environment
from tauforge.kernels.ate import average_effect, oob_effect
from tauforge.kernels.cpus import usable_cpus

from .data import ValidatedData
from .nuisance import NuisanceConfig, refit_residuals

# The placebo's forest: the run's parameters with at most this many trees (its CATE only needs to
# be the pipeline's kind of estimate, not a precise one).
PLACEBO_TREES = 100

# Below this many rows the refits run in evaluate's own process: a refit there takes seconds (0.8 s
# at 5,000 rows), and each worker process spends about as long importing torch and scikit-learn.
PROCESS_MIN_ROWS = 50_000
# A worker's peak memory: 0.33 GB idle (its imports) and 2.6 GB at most during a refit of 1e6 rows
# x 30 inputs (one more for the random common cause), measured; with a margin, per data cell.
WORKER_BASE_BYTES = 0.4e9
WORKER_BYTES_PER_CELL = 90




def default_workers(n_rows: int, n_inputs: int) -> int:
    """How many processes evaluate's refits of `n_rows` x `n_inputs` (covariates and controls) use:
    $TAUFORGE_REFIT_WORKERS where set; else one below PROCESS_MIN_ROWS rows, else one per usable
    CPU (`kernels.cpus.usable_cpus`), as many as the free memory holds."""
    given = refit_workers_from_environment()
    if given is not None:
        return given
    if n_rows < PROCESS_MIN_ROWS:
        return 1
    per_worker = WORKER_BASE_BYTES + WORKER_BYTES_PER_CELL * n_rows * (n_inputs + 1)
    free = available_memory()
    return usable_cpus() if math.isinf(free) else max(1, min(usable_cpus(), int(free // per_worker)))


def available_memory(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup",
                     meminfo: str = "/proc/meminfo") -> float:
    """Bytes this process may still allocate: the least of the machine's available memory
    (/proc/meminfo) and, for its memory cgroup and every cgroup above it (a pod's, a systemd
    slice's), the limit less the use; infinite where none of them is readable. The paths are
    parameters for the tests."""
    free = _cgroup_headrooms(proc_cgroup, cgroup_root)
    try:
        with open(meminfo) as f:
            fields = dict(line.split(":", 1) for line in f)
        free.append(float(fields["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    return min(free, default=float("inf"))


def _cgroup_headrooms(proc_cgroup: str, cgroup_root: str) -> list[float]:
    """limit - usage of each memory cgroup from this process's own up to its hierarchy's root,
    where a limit is set: cgroup v2 (memory.max) and v1 (memory/memory.limit_in_bytes). Inside a
    container with its own cgroup namespace the process's cgroup is the mount's root."""
    try:
        with open(proc_cgroup) as f:
            entries = [line.rstrip("\n").split(":", 2) for line in f if line.count(":") >= 2]
    except OSError:
        entries = [["0", "", "/"]]
    hierarchies = []  # (mount, the process's cgroup under it, limit file, usage file)
    for _, controllers, path in entries:
        if controllers == "":
            hierarchies.append((cgroup_root, path, "memory.max", "memory.current"))
        elif "memory" in controllers.split(","):
            hierarchies.append((os.path.join(cgroup_root, "memory"), path, "memory.limit_in_bytes",
                                "memory.usage_in_bytes"))
    headrooms = []
    for mount, path, limit_name, usage_name in hierarchies:
        mount = os.path.normpath(mount)
        folder = os.path.normpath(os.path.join(mount, path.lstrip("/")))
        if not os.path.isdir(folder) or not folder.startswith(mount):  # the host's path; the mount is the container's
            folder = mount
        while True:
            try:
                with open(os.path.join(folder, limit_name)) as f, open(os.path.join(folder, usage_name)) as g:
                    limit, usage = f.read().strip(), g.read().strip()
                if limit.isdigit() and int(limit) < 2**60:  # v1 writes a huge number for "no limit", v2 "max"
                    headrooms.append(float(int(limit) - int(usage)))
            except (OSError, ValueError):
                pass
            if folder == mount:
                break
            folder = os.path.dirname(folder)
    return headrooms


def refit_forest_params(forest_params: dict | None, max_trees: int, seed: int) -> dict:
    """A check's own forest (the placebo's, the held-out ranking's): the run's `forest_params` with
    at most `max_trees` trees, no progress, and no variance smoothing (its effects only are read)."""
    params = dict(forest_params or {})
    return {**params, "progress": False, "random_state": seed, "variance_smoothing": False,
            "n_estimators": min(int(params.get("n_estimators", max_trees)), max_trees)}


class EffectRefit:
    """The pipeline's average effect (`kernels.ate.average_effect`), estimated again on a perturbed
    problem: the nuisance models (and V(x)) cross-fit again with `nuisance` and `seed` on `rows`
    (default all), with `treatment` in place of the data's (a placebo) and `extra_control` as one
    more control the models see; the CATE is the forest's out-of-bag `oob_cate` on those rows, or
    with `regrow` the out-of-bag CATE of a new forest (`forest_params`, at most PLACEBO_TREES trees)
    grown on the new residuals. Unperturbed, it reproduces the run's own estimate.

    `on_refit(cost)`, if given, hears of each finished refit, at its cost in full-data nuisance
    refits (a subset's share of the rows; one more for a regrown forest): evaluate's progress.
    `workers`: how many processes `effects` spreads a batch of refits over (1: this one)."""

    def __init__(self, data: ValidatedData, nuisance: NuisanceConfig, seed: int, oob_cate: np.ndarray,
                 forest_params: dict | None = None, on_refit: Callable[[float], None] | None = None,
                 workers: int = 1):
        self.data, self.nuisance, self.seed, self.oob_cate = data, nuisance, seed, oob_cate
        self.forest_params = dict(forest_params or {})
        self.arrays = data.arrays()
        self.on_refit = on_refit
        self.workers = workers

    def __getstate__(self) -> dict:
        # What a worker process receives: no callback (progress is the parent's), no derived arrays.
        return {k: v for k, v in vars(self).items() if k not in ("arrays", "on_refit")}

    def __setstate__(self, state: dict) -> None:
        vars(self).update(state, on_refit=None)
        self.arrays = self.data.arrays()

    @property
    def n_rows(self) -> int:
        return len(self.arrays["Y"])

    def residuals(self, rows: np.ndarray, treatment: np.ndarray | None,
                  extra_control: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_res, t_res, t_var) of `rows`, the nuisance models refit."""
        return refit_residuals(self.data, self.nuisance, self.seed, rows=rows, extra_control=extra_control,
                               treatment=treatment)

    def effect(self, *, rows: np.ndarray | None = None, treatment: np.ndarray | None = None,
               extra_control: np.ndarray | None = None, regrow: bool = False) -> tuple[float, float]:
        """(average effect, its standard error) of the perturbed problem."""
        rows = np.arange(self.n_rows) if rows is None else rows
        # One OpenMP thread for the refit's many small boosting fits: on 5,000 rows a refit took
        # 0.8 s so, 1.0 s with two spinning threads (50-100 s beside other work) and 11 s with two
        # sleeping ones (OMP_WAIT_POLICY=PASSIVE), measured on this 2-core machine.
        with threadpool_limits(limits=1, user_api="openmp"):
            y_res, t_res, t_var = self.residuals(rows, treatment, extra_control)
        weight, groups = self.arrays["sample_weight"], self.arrays["groups"]
        weight = None if weight is None else weight[rows]
        groups = None if groups is None else groups[rows]
        if regrow:
            # Imported here: evaluate's settings (GateConfig) are checked before a run, without torch.
            from tauforge.kernels import CausalForest

            params = refit_forest_params(self.forest_params, PLACEBO_TREES, self.seed)
            X = self.arrays["X"][rows]
            tau = oob_effect(CausalForest(**params).fit(X, t_res, y_res, sample_weight=weight, groups=groups), X)
        else:
            tau = self.oob_cate[rows]
        if self.on_refit is not None:
            self.on_refit(self.cost(rows, regrow))
        return average_effect(tau, y_res, t_res, t_var, weight, groups)

    def cost(self, rows: np.ndarray | None = None, regrow: bool = False, **_) -> float:
        """A refit's cost in full-data nuisance refits (what `on_refit` hears)."""
        return (1.0 if rows is None else len(rows) / self.n_rows) + (1 if regrow else 0)

    def effects(self, jobs: list[dict]) -> list[tuple[float, float]]:
        """`effect(**job)` for every job, in their order: one after another, or in `workers`
        processes (each job is seeded by its own arguments, so the answers are the same)."""
        workers = min(self.workers, len(jobs))
        if workers <= 1:
            return [self.effect(**job) for job in jobs]
        # joblib's loky processes (scikit-learn's): spawned, not forked from a process holding
        # OpenMP and torch pools; they do not re-run a script's __main__, and they start with the
        # thread pools (OpenMP, BLAS, numba) sized to their share of the CPUs. No memory-mapping: the
        # refits get plain, writable copies of the data.
        parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered", max_nbytes=None,
                            inner_max_num_threads=max(1, usable_cpus() // workers),
                            idle_worker_timeout=1)  # the workers and their memory go with the batch
        results: list = [None] * len(jobs)
        try:
            for i, result in parallel(delayed(_effect_in_worker)(self, i, job) for i, job in enumerate(jobs)):
                results[i] = result
                if self.on_refit is not None:
                    self.on_refit(self.cost(**jobs[i]))
        except TerminatedWorkerError as exc:
            raise RuntimeError(f"a refuter's refit process ended abruptly (killed for memory?) while {workers} "
                               f"refits ran at once, each with a copy of the data: give the evaluate task more "
                               f"memory (--compute-memory on a cluster), or set ${REFIT_WORKERS_VARIABLE}=1 to refit "
                               f"in its own process") from exc
        return results


def _effect_in_worker(refit: EffectRefit, i: int, job: dict) -> tuple[int, tuple[float, float]]:
    """A job's refit in a worker process, with the job's place in the batch (they finish unordered).
    torch sizes its pool from OMP_NUM_THREADS when it starts, which loky set for the worker."""
    return i, refit.effect(**job)


@dataclass
class Refuter:
    """A refuter as the refits it asks for (`jobs`, keyword arguments of `EffectRefit.effect`) and
    its judgement of their (effect, stderr) results, in the same order."""
    jobs: list[dict]
    judge: Callable[[list[tuple[float, float]]], dict]


def run_refuters(refit: EffectRefit, refuters: dict[str, Refuter]) -> dict[str, dict]:
    """Every refuter's judgement, its refits run as one batch (`EffectRefit.effects`)."""
    results = iter(refit.effects([job for refuter in refuters.values() for job in refuter.jobs]))
    return {name: refuter.judge([next(results) for _ in refuter.jobs]) for name, refuter in refuters.items()}


def placebo_refuter(refit: EffectRefit, seed: int) -> Refuter:
    """The whole estimation re-run with the treatment permuted: a permuted treatment is
    independent of everything, so a sound pipeline's average effect is 0 up to its standard error."""
    T_placebo = np.random.default_rng([seed, 7]).permutation(refit.arrays["T"])

    def judge(results):
        (effect, stderr), = results
        return {"effect": effect, "stderr": stderr,
                "p_value": float(2 * norm.sf(abs(effect / stderr))) if stderr > 0 else 1.0}
    return Refuter([{"treatment": T_placebo, "regrow": True}], judge)


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


def random_common_cause_refuter(refit: EffectRefit, baseline: float, seed: int, repeats: int = 3) -> Refuter:
    """Refit with an independent random column among the controls, `repeats` times: the run's
    effect `baseline` must lie within the refits' spread. A pipeline whose answer depends on which
    controls it is given beyond what they say about T and Y (a control dropped or misaligned by
    position, say) moves every refit the same way and fails."""
    jobs = [{"extra_control": np.random.default_rng([seed, 11, r]).normal(size=refit.n_rows)} for r in range(repeats)]
    return Refuter(jobs, lambda results: {**_within_spread([e for e, _ in results], baseline), "repeats": repeats})


def data_subset_refuter(refit: EffectRefit, baseline: float, seed: int, fraction: float = 0.5,
                        repeats: int = 5) -> Refuter:
    """Refit on `repeats` random subsets of `fraction` of the rows (with the data's groups, of the
    groups, each with all its rows, redrawn while an arm is in fewer groups than folds): the run's
    effect `baseline` must lie within their spread (on correct pipelines a formula for the
    subset's sampling noise alone rejected 3x too often). An estimate that changes with the
    sample's size, not just its noise, fails. Halves, not DoWhy's 80%: an effect that scales with
    the rows used moves by half, not a fifth, and on 2,000 rows was caught at p < 0.01 in 33 of
    40 seeds against 18 (the full-data effect, less noisy than a half's, keeps false alarms rarer
    still: 0 of 40; docs/benchmarks.md)."""
    n, groups = refit.n_rows, refit.arrays["groups"]
    if groups is None:
        jobs = [{"rows": np.sort(np.random.default_rng([seed, 13, r]).choice(n, int(fraction * n), replace=False))}
                for r in range(repeats)]
    else:  # the data's groups stay whole: a subset of groups, each with all its rows
        jobs = [{"rows": _group_subset(refit, fraction, np.random.default_rng([seed, 13, r]))} for r in range(repeats)]
    return Refuter(jobs, lambda results: {**_within_spread([e for e, _ in results], baseline),
                                          "fraction": fraction, "repeats": repeats})


def _group_subset(refit: EffectRefit, fraction: float, rng: np.random.Generator, attempts: int = 20) -> np.ndarray:
    """The rows of `fraction` of the data's groups drawn by `rng`: drawn again (up to `attempts`
    times) while a binary treatment's arm is in fewer groups than the folds, which could not be
    cross-fit (a treatment assigned by group, few groups)."""
    groups, T = refit.arrays["groups"], refit.arrays["T"]
    n_groups, folds = int(groups.max()) + 1, refit.nuisance.folds
    binary = refit.data.spec.binary
    for _ in range(attempts):
        rows = np.flatnonzero(np.isin(groups, rng.choice(n_groups, int(fraction * n_groups), replace=False)))
        if not binary or all(len(np.unique(groups[rows][T[rows] == arm])) >= folds for arm in (0, 1)):
            break
    return rows


def placebo(refit: EffectRefit, seed: int) -> dict:
    """`placebo_refuter`'s judgement."""
    return run_refuters(refit, {"placebo": placebo_refuter(refit, seed)})["placebo"]


def random_common_cause(refit: EffectRefit, baseline: float, seed: int, repeats: int = 3) -> dict:
    """`random_common_cause_refuter`'s judgement."""
    return run_refuters(refit, {"rcc": random_common_cause_refuter(refit, baseline, seed, repeats)})["rcc"]


def data_subset(refit: EffectRefit, baseline: float, seed: int, fraction: float = 0.5, repeats: int = 5) -> dict:
    """`data_subset_refuter`'s judgement."""
    return run_refuters(refit, {"subsets": data_subset_refuter(refit, baseline, seed, fraction, repeats)})["subsets"]


def data_subset_label(result: dict) -> str:
    """The data subset refuter's `result` named by its subsets' share ("50% data subsets"), for the
    gate's reasons and the report; results written before the share was recorded used 80%."""
    return f"{100 * result.get('fraction', 0.8):.0f}% data subsets"
