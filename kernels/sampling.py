"""Which rows each tree sees: little bags (half-samples shared by a group of trees), the
tree's subsample, and its honest split into a structure half and an estimation half.

As in grf: for inference, trees come in groups of `ci_group_size`; each group draws half of
the rows without replacement, and each tree of the group draws its subsample from that half.
Everything derives from one seed, and any tree's rows can be regenerated from the seed alone,
which is how out-of-bag membership is recovered after a save and load.

With clusters (`fit(..., groups=)`: rows of one unit, household or market), grf's clustered
sampling: the half-samples, subsamples and honest halves draw whole clusters, so a cluster's
rows are in a tree together or not at all, never on both sides of its honest split, and a row
is out of bag only where its whole cluster is. The little bags' variance then measures how the
estimate moves with the clusters drawn, which is the variance when rows of a cluster are
dependent. grf also offers equal weights per cluster (`equalize.cluster.weights`); here a
cluster weighs as many rows as it has.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from math import ceil

import numpy as np

# ci_group_size="auto" takes the largest of these that divides the number of trees into at least
# AUTO_MIN_GROUPS groups (else 2 for an even number, 1 for an odd one: no intervals). Larger
# groups make the little-bag variance less noisy at equal trees, so intervals less inflated: at
# 1,000 trees on grf's aw2 and aw3, groups of 8 claimed 1.31-1.47 times the estimates' variance
# over training sets, groups of 2 1.66-1.81 (docs/benchmarks.md, "Where coverage is lost"), at
# the same CATE error. A row is out of bag only in groups whose half-sample left it out, so with
# G groups a row has no out-of-bag tree with probability 2^-G: AUTO_MIN_GROUPS keeps that nil.
AUTO_GROUP_SIZES = (8, 4, 2)
AUTO_MIN_GROUPS = 50


def resolve_group_size(ci_group_size: int | str, n_trees: int) -> int:
    """Trees per little bag: `ci_group_size`, or under "auto" the largest of AUTO_GROUP_SIZES
    that divides n_trees into at least AUTO_MIN_GROUPS groups (2 for any other even n_trees, 1
    for an odd one). Raises ValueError, naming the parameter, for anything else or for a number
    that does not divide n_trees: the one check of `ci_group_size` (forest and pipeline config)."""
    if isinstance(ci_group_size, str) and ci_group_size == "auto":
        fits = [g for g in AUTO_GROUP_SIZES if n_trees % g == 0 and n_trees // g >= AUTO_MIN_GROUPS]
        return fits[0] if fits else (2 if n_trees % 2 == 0 else 1)
    if not (isinstance(ci_group_size, (int, np.integer)) and not isinstance(ci_group_size, bool)
            and ci_group_size >= 1):
        raise ValueError(f"ci_group_size must be 'auto' or a positive integer, got {ci_group_size!r}")
    if n_trees % ci_group_size:
        raise ValueError(f"n_estimators={n_trees} must be a multiple of ci_group_size={ci_group_size}; "
                         "or pass ci_group_size='auto'")
    return int(ci_group_size)


@dataclass(frozen=True)
class TreeSample:
    structure: np.ndarray  # int32 row indices used to choose splits
    estimation: np.ndarray  # int32 row indices that populate the leaves (== structure if not honest)
    key: np.uint64  # the tree's seed for per-node randomness (mtry draws)


class LittleBagSampler:
    """Draws tree subsamples in groups sharing a half-sample (bootstrap of little bags)."""

    def __init__(self, n_rows: int, n_trees: int, ci_group_size: int, max_samples: float,
                 honest: bool, honesty_fraction: float, seed: int, clusters: np.ndarray | None = None):
        self.n_rows = n_rows
        self.n_trees = n_trees
        self.ci_group_size = ci_group_size
        self.max_samples = max_samples
        self.honest = honest
        self.honesty_fraction = honesty_fraction
        self.seed = seed
        # What is drawn: rows, or whole clusters (codes 0..C-1 of each row, `_inputs.check_groups`).
        # Clusters given as 0..n-1 draw exactly the rows that no clusters do.
        self.clusters = clusters
        if clusters is None:
            self.n_units = n_rows
        else:
            counts = np.bincount(clusters)
            self.n_units = len(counts)
            self._cluster_rows = np.argsort(clusters, kind="stable").astype(np.int32)  # rows, cluster by cluster
            self._cluster_start = np.concatenate([[0], np.cumsum(counts)])
        self.half_size = self.n_units // 2 if ci_group_size > 1 else self.n_units
        # Rounded up, but never past the half-sample: max_samples=0.5 (grf's default) on an odd
        # number of rows draws the whole half.
        self.subsample_size = min(int(ceil(max_samples * self.n_units)), self.half_size)

    @property
    def n_groups(self) -> int:
        return self.n_trees // self.ci_group_size

    @property
    def rows_per_tree(self) -> float:
        """A tree's subsample in rows (on average, with clusters)."""
        return self.subsample_size * self.n_rows / self.n_units

    def max_estimation_rows(self) -> int:
        """The most rows a tree's estimation half can hold: with clusters, those of the largest."""
        s = self.subsample_size
        units = s - int(round(s * self.honesty_fraction)) if self.honest else s
        if self.clusters is None:
            return units
        return int(np.sort(np.diff(self._cluster_start))[::-1][:units].sum())

    def minimum_rows_message(self) -> str | None:
        """Why this many rows (or clusters) cannot grow honest trees, or None when they can."""
        s = self.subsample_size
        n_struct = int(round(s * self.honesty_fraction)) if self.honest else s
        if n_struct < 1 or s - n_struct < (1 if self.honest else 0) or s < 2:
            units = "rows" if self.clusters is None else "groups"
            if s < 2:
                return (f"{self.n_units} {units} give each tree a subsample of {s} (max_samples={self.max_samples}), "
                        f"too few to split into a structure and an estimation half; pass more {units} or a "
                        "larger max_samples")
            return (f"{self.n_units} {units} give each tree a subsample of {s}, of which honesty_fraction="
                    f"{self.honesty_fraction} leaves {n_struct} to choose splits and {s - n_struct} to estimate; "
                    "each half needs at least one: pass a honesty_fraction nearer 0.5")
        return None

    def _rows(self, units: np.ndarray) -> np.ndarray:
        """The rows of `units` (rows, or cluster codes), sorted, as int32."""
        if self.clusters is None:
            return np.sort(units).astype(np.int32)
        start, stop = self._cluster_start[units], self._cluster_start[units + 1]
        sizes = stop - start
        offsets = np.repeat(start - np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
        return np.sort(self._cluster_rows[offsets + np.arange(int(sizes.sum()))])

    def group(self, g: int) -> list[TreeSample]:
        """The samples of every tree in group g (deterministic in seed and g)."""
        rng = np.random.default_rng([self.seed, g])
        half = rng.permutation(self.n_units)[: self.half_size] if self.ci_group_size > 1 else None
        out = []
        for _ in range(self.ci_group_size):
            pool = half if half is not None else np.arange(self.n_units)
            sub = pool[rng.permutation(len(pool))[: self.subsample_size]]
            key = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
            if self.honest:
                n_struct = int(round(len(sub) * self.honesty_fraction))
                struct, est = self._rows(sub[:n_struct]), self._rows(sub[n_struct:])
            else:
                struct = est = self._rows(sub)
            out.append(TreeSample(struct, est, key))
        return out

    def trees(self, first_group: int, n_groups: int) -> TreeSamples:
        """The samples of every tree in groups first_group .. first_group + n_groups - 1, drawn
        when read."""
        return TreeSamples(self, first_group, n_groups)

    def in_bag(self, rows: np.ndarray | None = None, trees: Sequence[TreeSample] | None = None) -> np.ndarray:
        """Boolean matrix (n_rows, n_trees): row i was in tree b's subsample; with `rows`
        (distinct row indices), only theirs, in their order (len(rows), n_trees). `trees`: the
        samples of every tree when already drawn (`trees(0, n_groups)`), else drawn again."""
        trees = self.trees(0, self.n_groups) if trees is None else trees
        position = None
        if rows is not None:
            position = np.full(self.n_rows, -1, dtype=np.int64)
            position[rows] = np.arange(len(rows))
        mask = np.zeros((self.n_rows if rows is None else len(rows), self.n_trees), dtype=bool)
        for b, t in enumerate(trees):
            for drawn in (t.structure, t.estimation):
                if position is None:
                    mask[drawn, b] = True
                else:
                    at = position[drawn]
                    mask[at[at >= 0], b] = True
        return mask


# Drawn groups are kept while all of a TreeSamples' rows take at most this many bytes: a forest
# reads its samples twice (growth, then the local linear correction), and drawing them again
# costs as much CPU as growing 4% of the trees at 1e5 rows.
KEEP_SAMPLE_BYTES = 256 << 20


class TreeSamples(Sequence):
    """The trees of a range of little-bag groups, each group drawn from the seed when a tree of
    it is read. All of them are kept once drawn if they fit KEEP_SAMPLE_BYTES; otherwise only the
    last group drawn is (so reading in order draws each group once): held all at once they would
    take 2 MB a tree at 1e6 rows, 4 GB for 2,000 trees."""

    def __init__(self, sampler: LittleBagSampler, first_group: int, n_groups: int):
        self.sampler, self.first_group, self.n_groups = sampler, first_group, n_groups
        self._keep_all = n_groups * sampler.ci_group_size * sampler.rows_per_tree * 4 <= KEEP_SAMPLE_BYTES
        self._kept: dict[int, list[TreeSample]] = {}

    def __len__(self) -> int:
        return self.n_groups * self.sampler.ci_group_size

    def group(self, g: int) -> list[TreeSample]:
        """The trees of the g-th group of this range."""
        trees = self._kept.get(g)
        if trees is None:
            trees = self.sampler.group(self.first_group + g)
            if not self._keep_all:
                self._kept.clear()
            self._kept[g] = trees
        return trees

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"tree {i} of {len(self)}")
        g, k = divmod(i % len(self), self.sampler.ci_group_size)
        return self.group(g)[k]

    def __iter__(self) -> Iterator[TreeSample]:
        for g in range(self.n_groups):
            yield from self.group(g)


def shard_range(n_items: int, shard: int, n_shards: int, items: str, total: str) -> range:
    """Shard `shard` of `n_shards` of n_items (little-bag groups, bootstrap replicates): a
    contiguous range, shard sizes differing by at most one. `items` and `total` name them in errors."""
    if not (isinstance(n_shards, (int, np.integer)) and 1 <= n_shards <= n_items):
        raise ValueError(f"n_shards must be an integer between 1 and the number of {items} "
                         f"({n_items} = {total}), got {n_shards!r}")
    if not (isinstance(shard, (int, np.integer)) and 0 <= shard < n_shards):
        raise ValueError(f"shard must be an integer in [0, {n_shards}), got {shard!r}")
    bounds = np.linspace(0, n_items, n_shards + 1).round().astype(int)
    return range(int(bounds[shard]), int(bounds[shard + 1]))
