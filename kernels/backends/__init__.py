"""The hot loops behind one small interface: grow trees, find the leaf of each row in each tree,
turn those leaves into effects and variances.

`TorchBackend` runs on any torch device (the CUDA path, also exercised on CPU by the tests);
`NumbaBackend` is the CPU path, chosen on CPU because it measures faster there
(docs/benchmarks.md). Both grow the same trees from the same samples and keys.

A backend's arrays are of its own library: NumPy for numba, torch tensors on the device for
torch (`asarray` makes one, `to_numpy` brings one back). So a CPU process never loads torch,
over a second of every pipeline task's and model server's start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numba
import numpy as np

from .._inputs import resolve_device
from ..binning import BinnedCovariates
from ..forest_arrays import ForestArrays, TreeArrays
from ..local_linear import n_moments
from ..prediction import (
    MIN_TREATMENT_SPREAD,
    as_float64,
    between_group_estimate,
    debias_between_group_variance,
    forest_estimate,
    monte_carlo_variance,
    tree_average,
)
from ..sampling import TreeSample
from ..splitting import SMALL_NODE_ROWS, SplitRule
from . import numba_cpu

if TYPE_CHECKING:
    import torch

_TREES_PER_BLOCK = 64  # local_linear_moments: trees whose estimation rows are listed together
# Leaf walks of many rows work on chunks of rows. The walk streams every tree through the cache
# once per chunk, so larger chunks walk faster (trees grown on 1e6 rows: 472 ns per row and tree
# at 1,048 rows a chunk, 173 ns at 8,192); (rows, trees) int64 leaf ids, 128 MB at most.
LEAF_IDS_PER_CHUNK = 1 << 24


def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_heap() -> None:
    """Give the C heap's free memory back to the OS, after a batch of trees is grown. The grower's
    buffers (about 100 MB a tree at 1e6 rows, allocated by numba's threads) and a batch's output
    arrays are freed into glibc's heaps, which keep them: resident memory was 0.25 GiB higher
    after the first 32 trees at 1e6 rows without this."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class NumbaBackend:
    name = "numba"
    device = "cpu"

    def __init__(self, move_rows_bytes: int = numba_cpu.MOVE_ROWS_BYTES):
        self.move_rows_bytes = move_rows_bytes  # nodes with more bytes of rows move them (numba_cpu)
        # CPU cycles each phase of growth took (numba_cpu.PHASES), summed over the trees grown by
        # this backend: the profile behind docs/benchmarks.md's split of a tree's time.
        self.phase_cycles = np.zeros(len(numba_cpu.PHASES))
        self.histogram_adds = 0  # histogram bin additions in those trees

    def grow(self, data: BinnedCovariates, mom: np.ndarray, trees: list[TreeSample],
             rule: SplitRule) -> list[TreeArrays]:
        """Grow `trees` (`grow_batches` of one batch)."""
        return next(self.grow_batches(data, mom, iter([trees]), rule))

    def grow_batches(self, data: BinnedCovariates, mom: np.ndarray, batches: Iterator[list[TreeSample]],
                     rule: SplitRule) -> Iterator[list[TreeArrays]]:
        """Grow each batch of trees, yielding its trees in order, one tree a thread on numba's
        thread count (NUMBA_NUM_THREADS): `grow_tree` releases the GIL. The next batch's trees
        are queued behind the current one's, so no thread waits for the batch's last tree while
        the caller compacts it: with each call's trees on their own, that wait and the compaction
        left 7% of two cores idle at 1e6 x 30 (docs/benchmarks.md). Threads here rather than a
        numba prange over trees, whose kernel had LLVM optimize the whole grower a second time:
        a cold start compiled for 61 s then, 33-39 s now, and fits take the same time."""
        pool = ThreadPoolExecutor(numba.get_num_threads(), thread_name_prefix="tauforge-grow")
        try:
            queued: deque[list[Future]] = deque()
            for trees in batches:
                queued.append([pool.submit(self._grow_one, data, mom, tree, rule) for tree in trees])
                if len(queued) > 1:
                    yield self._collect(queued.popleft())
            while queued:
                yield self._collect(queued.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # an error or an early close: grow no more

    def _grow_one(self, data: BinnedCovariates, mom: np.ndarray, tree: TreeSample,
                  rule: SplitRule) -> tuple[TreeArrays, np.ndarray, int]:
        """One tree, compacted as soon as it is grown (its arrays are sized for the most nodes it
        could have, about 3x what it has); with the cycles of its phases and its histogram adds."""
        cap = numba_cpu.node_capacity(int((mom[tree.estimation, 0] > 0).sum()), len(tree.structure),
                                      len(tree.estimation), rule.min_samples_leaf)
        feature = np.empty(cap, dtype=np.int32)
        threshold = np.empty(cap, dtype=np.int32)
        child = np.empty(cap, dtype=np.int64)
        leaf = np.empty((cap, 4), dtype=np.float64)
        cycles = np.zeros(len(numba_cpu.PHASES))
        rows = numba_cpu.gather_tree_rows(data.coarse, data.fine, mom, tree.structure, tree.estimation, cycles)
        n_nodes, n_leaves, hist_adds = numba_cpu.grow_tree(
            *rows, data.n_bins, data.coarse_thr, np.uint64(tree.key), float(rule.min_samples_leaf),
            float(rule.alpha), float(rule.imbalance_penalty), int(rule.max_depth), int(rule.mtry),
            bool(rule.poisson_mtry), rule.cumulative_weights(), int(data.max_bins), SMALL_NODE_ROWS,
            int(self.move_rows_bytes), feature, threshold, child, leaf, cycles)
        tree_arrays = TreeArrays(feature[:n_nodes].copy(), threshold[:n_nodes].copy(), child[:n_nodes].copy(),
                                 leaf[:n_leaves].copy())
        return tree_arrays, cycles, int(hist_adds)

    def _collect(self, futures: list[Future]) -> list[TreeArrays]:
        """A batch's trees, once grown (a tree's exception is raised here), its profile added."""
        grown = [f.result() for f in futures]
        for _, cycles, hist_adds in grown:
            self.phase_cycles += cycles
            self.histogram_adds += hist_adds
        return [tree for tree, _, _ in grown]

    @staticmethod
    def asarray(a: Any) -> np.ndarray:
        return np.asarray(a)

    @staticmethod
    def to_numpy(a: np.ndarray) -> np.ndarray:
        return a

    def leaf_ids(self, fine: np.ndarray, forest: ForestArrays) -> np.ndarray:
        out = np.empty((fine.shape[0], forest.n_trees), dtype=np.int64)
        numba_cpu.leaf_ids(np.ascontiguousarray(fine), forest.feature, forest.threshold, forest.child,
                           forest.roots, out)
        return out

    def local_linear_moments(self, fine: np.ndarray, forest: ForestArrays, samples: list[TreeSample],
                             z: np.ndarray, T: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """The local linear correction's leaf moments (leaves, K) in float32 (kernels.local_linear):
        each tree walks its own estimation rows and averages their moments in its leaves, a block
        of trees at a time (their rows listed together)."""
        out = np.empty((len(forest.leaf_values), n_moments(z.shape[1])), dtype=np.float32)
        fine = np.ascontiguousarray(fine)
        for lo in range(0, len(samples), _TREES_PER_BLOCK):
            block = samples[lo:lo + _TREES_PER_BLOCK]
            rows = np.concatenate([t.estimation for t in block]).astype(np.int64)
            offsets = np.concatenate([[0], np.cumsum([len(t.estimation) for t in block])]).astype(np.int64)
            numba_cpu.local_linear_leaf_moments(fine, forest.feature, forest.threshold, forest.child,
                                                forest.roots[lo:lo + len(block)],
                                                forest.leaf_offsets[lo:lo + len(block) + 1], rows, offsets, z, T, y,
                                                w, numba.get_num_threads(), out)
        return out

    def estimate(self, ids: np.ndarray, forest: ForestArrays, ci_group_size: int, with_variance: bool,
                 valid: np.ndarray | None = None, monte_carlo: bool = False,
                 parts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """forest_estimate (kernels/prediction.py), row by row in one kernel when every tree
        counts: the (rows, trees, 4) float64 gather and temporaries cost 3-4x the leaf walk
        itself on a CPU. Out-of-bag rows (`valid`) take the gathered version."""
        if valid is not None:
            return gathered_estimate(forest.leaf_values, ids, ci_group_size, with_variance, valid, monte_carlo,
                                     parts)
        wanted = with_variance and ci_group_size >= (1 if monte_carlo else 2)
        out = np.empty((ids.shape[0], 4))
        numba_cpu.forest_moments(ids, forest.leaf_values, int(ci_group_size if wanted else 0), MIN_TREATMENT_SPREAD,
                                 out)
        tau = out[:, 0]
        if not wanted:
            return tau, None
        n_groups = np.full_like(tau, float(forest.n_trees // ci_group_size))
        between = out[:, 1]
        if monte_carlo:
            var = monte_carlo_variance(between, n_groups)
        elif parts:
            return tau, np.stack(between_group_estimate(between, out[:, 2], n_groups), 1) / out[:, 3, None] ** 2
        else:
            var = debias_between_group_variance(between, out[:, 2], n_groups)
        return tau, var / out[:, 3] ** 2

    def leaf_means(self, ids: np.ndarray, table: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Per row, the mean over its (valid) trees of table[leaf] (rows, K) in float64:
        kernels.prediction.tree_average of the gathered rows, without gathering them."""
        out = np.empty((ids.shape[0], table.shape[1]))
        mask = np.empty((0, 0), dtype=np.bool_) if valid is None else valid
        numba_cpu.leaf_means(ids, table, mask, valid is not None, out)
        return out

    def shared_leaf_sums(self, ids: np.ndarray, leaves: np.ndarray, tree_starts: np.ndarray,
                         table: np.ndarray) -> np.ndarray:
        """Per row, the sum over trees of table[i] where leaves[i] (ascending; tree t's from
        tree_starts[t]) is the row's leaf (rows, K), in float64 (kernels.variance_smoothing)."""
        out = np.empty((ids.shape[0], table.shape[1]))
        numba_cpu.shared_leaf_sums(ids, leaves, tree_starts, table, out)
        return out

    def leaf_scores(self, ids: np.ndarray, table: np.ndarray, center: np.ndarray, coef: np.ndarray) -> np.ndarray:
        """(rows, trees): (table[leaf of row r in tree t] - center[r]) . coef[r], in float64."""
        out = np.empty(tuple(ids.shape))
        numba_cpu.leaf_scores(ids, table, np.ascontiguousarray(center), np.ascontiguousarray(coef), out)
        return out


class TorchBackend:
    name = "torch"

    def __init__(self, device: Any):
        import torch

        self.device = torch.device(device)
        self._forest_cache: tuple[ForestArrays, tuple[torch.Tensor, ...]] | None = None
        self._table: tuple[np.ndarray, torch.Tensor] | None = None
        self._smoother: tuple[np.ndarray, torch.Tensor, torch.Tensor] | None = None

    def asarray(self, a: Any) -> torch.Tensor:
        import torch

        return torch.as_tensor(a, device=self.device)

    @staticmethod
    def to_numpy(a: torch.Tensor) -> np.ndarray:
        return a.cpu().numpy()

    def grow(self, data: BinnedCovariates, mom: np.ndarray, trees: list[TreeSample],
             rule: SplitRule) -> list[TreeArrays]:
        from .torch_level import TorchLevelGrower

        return TorchLevelGrower(self.device).grow(data, self.asarray(mom), trees, rule)

    def grow_batches(self, data: BinnedCovariates, mom: np.ndarray, batches: Iterator[list[TreeSample]],
                     rule: SplitRule) -> Iterator[list[TreeArrays]]:
        """Each batch's trees in turn: a batch fills the device (`NumbaBackend.grow_batches`)."""
        for trees in batches:
            yield self.grow(data, mom, trees, rule)

    def leaf_ids(self, fine: np.ndarray | torch.Tensor, forest: ForestArrays) -> torch.Tensor:
        import torch

        from .torch_level import leaf_ids_torch

        if self._forest_cache is None or self._forest_cache[0] is not forest:
            to = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int64), device=self.device)  # noqa: E731
            self._forest_cache = (forest, (to(forest.feature), to(forest.threshold), to(forest.child),
                                               to(forest.roots)))
        feature, threshold, child, roots = self._forest_cache[1]
        fine = torch.as_tensor(np.asarray(fine, dtype=np.int32) if isinstance(fine, np.ndarray) else fine,
                               device=self.device)
        return leaf_ids_torch(fine, feature, threshold, child, roots, forest.max_depth)

    def local_linear_moments(self, fine: np.ndarray, forest: ForestArrays, samples: list[TreeSample],
                             z: np.ndarray, T: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
        """`NumbaBackend.local_linear_moments`, the rows' leaves found on the device
        (`estimation_leaves`) and their moments summed by numba on the CPU."""
        sums = np.zeros((len(forest.leaf_values), n_moments(z.shape[1])))
        totals = np.zeros(len(forest.leaf_values))
        threads = numba.get_num_threads()
        for rows, leaves in self.estimation_leaves(fine, forest, samples):
            numba_cpu.local_linear_leaf_sums(z, T, y, w, np.ascontiguousarray(rows), np.ascontiguousarray(leaves),
                                             threads, sums, totals)
        np.divide(sums, totals[:, None], out=sums)
        return sums.astype(np.float32)

    def estimation_leaves(self, fine: np.ndarray, forest: ForestArrays, samples: list[TreeSample]):
        """(training row, global leaf row) of every tree's estimation rows, in blocks of rows:
        every row walks every tree at once (the device's way), and each tree keeps its own rows."""
        tree_of = np.concatenate([np.full(len(t.estimation), b, dtype=np.int64) for b, t in enumerate(samples)])
        row_of = np.concatenate([t.estimation for t in samples]).astype(np.int64)
        order = np.argsort(row_of, kind="stable")
        tree_of, row_of = tree_of[order], row_of[order]
        chunk = max(1, LEAF_IDS_PER_CHUNK // forest.n_trees)
        for lo in range(0, fine.shape[0], chunk):
            ids = self.leaf_ids(np.ascontiguousarray(fine[lo:lo + chunk]), forest).cpu().numpy()
            a, b = np.searchsorted(row_of, [lo, lo + chunk])
            yield row_of[a:b], ids[row_of[a:b] - lo, tree_of[a:b]]

    def _on_device(self, table: np.ndarray) -> torch.Tensor:
        """A leaf table (leaf values or moments) on the device, copied once per table."""
        if self._table is None or self._table[0] is not table:
            self._table = (table, self.asarray(table))
        return self._table[1]

    def leaf_means(self, ids: torch.Tensor, table: np.ndarray, valid: torch.Tensor | None = None) -> torch.Tensor:
        """NumbaBackend.leaf_means, on the gathered rows (the device's way)."""
        return tree_average(as_float64(self._on_device(table)[ids]), valid)

    def shared_leaf_sums(self, ids: torch.Tensor, leaves: np.ndarray, tree_starts: np.ndarray,
                         table: np.ndarray) -> torch.Tensor:
        """NumbaBackend.shared_leaf_sums, by one sorted search over every tree's leaves on the
        device (at least one leaf)."""
        import torch

        if self._smoother is None or self._smoother[0] is not leaves:  # copied once per smoother, not per chunk
            self._smoother = (leaves, self.asarray(leaves), as_float64(self.asarray(table)))
        _, leaves, table = self._smoother
        at = torch.searchsorted(leaves, ids.contiguous()).clamp(max=len(leaves) - 1)
        return (table[at] * (leaves[at] == ids)[..., None]).sum(axis=1)

    def leaf_scores(self, ids: torch.Tensor, table: np.ndarray, center: torch.Tensor,
                    coef: torch.Tensor) -> torch.Tensor:
        """NumbaBackend.leaf_scores, on the gathered rows."""
        import torch

        values = as_float64(self._on_device(table)[ids])
        return torch.einsum("rtk,rk->rt", values - center[:, None, :], coef)

    def estimate(self, ids: torch.Tensor, forest: ForestArrays, ci_group_size: int, with_variance: bool,
                 valid: torch.Tensor | None = None, monte_carlo: bool = False,
                 parts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        return gathered_estimate(self._on_device(forest.leaf_values), ids, ci_group_size, with_variance, valid,
                                 monte_carlo, parts)


def gathered_estimate(leaf_values: Any, ids: Any, ci_group_size: int, with_variance: bool, valid: Any | None,
                      monte_carlo: bool = False, parts: bool = False) -> tuple[Any, Any | None]:
    """forest_estimate on the (rows, trees, 4) gather of the rows' leaves (float32 leaves,
    float64 sums); leaf_values, ids and valid of one library and device."""
    return forest_estimate(as_float64(leaf_values[ids]), ci_group_size, valid, with_variance, monte_carlo, parts)


def get_backend(backend: str, device: Any):
    """'auto' is numba on CPU and torch elsewhere; `device` as `resolve_device` names it (or a
    torch.device)."""
    device = resolve_device(device)
    if backend == "auto":
        backend = "numba" if device == "cpu" else "torch"
    if backend == "numba":
        if device != "cpu":
            raise ValueError(f"backend='numba' runs on the CPU only, but device={device}; use backend='torch'")
        return NumbaBackend()
    if backend == "torch":
        return TorchBackend(device)
    raise ValueError(f"backend must be 'auto', 'torch' or 'numba', got {backend!r}")
