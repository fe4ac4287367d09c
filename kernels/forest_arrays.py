"""A grown forest as flat arrays: what backends produce, what prediction reads, what is saved.

Trees are stored breadth-first and concatenated. For node i:
  feature[i]   split feature, or -1 for a leaf (int8 when there are fewer than 128 features)
  threshold[i] split fine code (kernels.binning): rows with fine code <= threshold go left
  child[i]     for a split, the global index of the left child (the right child is child[i] + 1);
               for a leaf, the global index of its row in leaf_values
leaf_values[l] = estimation-half leaf means of (t, y, t*y, t*t), float32 (prediction sums them
in float64). tree_offsets[b] is tree b's root.

Compact by construction: breadth-first with each split's children adjacent, a tree's k-th split
has its children at tree-local 2k+1 and 2k+2 and its k-th leaf is leaf row k, so `child` follows
from `feature` alone. It is kept in memory for prediction but never saved (`to_arrays`), and
rebuilt on load. At 1e6 rows (about 30,000 leaves a tree) these arrays are 0.65 MB a tree instead
of 1.43 MB with float64 leaves and saved pointers; on disk kernels/forest_codec.py encodes them
losslessly in about 0.33 MB (forest format 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEAF_T, LEAF_Y, LEAF_TY, LEAF_TT = range(4)
# Trees per block of the vectorized passes over nodes (child pointers, checks): their int64
# temporaries take about 50 bytes a node, 80 MB for a block of 32 trees grown on 1e6 rows.
_TREES_PER_BLOCK = 32


@dataclass
class TreeArrays:
    """One tree in breadth-first order with tree-local child and leaf indices."""

    feature: np.ndarray
    threshold: np.ndarray
    child: np.ndarray
    leaf_values: np.ndarray


@dataclass
class ForestArrays:
    feature: np.ndarray  # int8/int16/int32 [nodes]
    threshold: np.ndarray  # uint16 [nodes]
    child: np.ndarray  # int32/int64 [nodes], rebuilt from feature (never saved)
    leaf_values: np.ndarray  # float32 [leaves, 4]
    tree_offsets: np.ndarray  # int64 [trees + 1]
    leaf_offsets: np.ndarray  # int64 [trees + 1]
    max_depth: int

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    @property
    def roots(self) -> np.ndarray:
        return self.tree_offsets[:-1]

    @classmethod
    def from_trees(cls, trees: list[TreeArrays]) -> ForestArrays:
        node_counts = np.array([len(t.feature) for t in trees], dtype=np.int64)
        leaf_counts = np.array([len(t.leaf_values) for t in trees], dtype=np.int64)
        tree_offsets = np.concatenate([[0], np.cumsum(node_counts)])
        feature = np.concatenate([t.feature for t in trees])
        # Every tree's pointers at once (one call a batch, not a tree: this runs beside growth).
        implicit = _local_child(feature >= 0, tree_offsets) == np.concatenate([t.child for t in trees])
        if not implicit.all():
            b = int(np.searchsorted(tree_offsets, np.argmin(implicit), side="right")) - 1
            raise ValueError(f"tree {b} is not breadth-first with adjacent children; its pointers cannot be "
                             "left implicit")
        return cls._assemble(
            feature=feature.astype(_feature_dtype(int(feature.max(initial=-1)) + 1)),
            threshold=np.concatenate([t.threshold for t in trees]).astype(np.uint16),
            leaf_values=np.concatenate([t.leaf_values for t in trees]).astype(np.float32),
            tree_offsets=tree_offsets,
            leaf_offsets=np.concatenate([[0], np.cumsum(leaf_counts)]),
            max_depth=max(_depth(t) for t in trees),
        )

    @classmethod
    def _assemble(cls, feature, threshold, leaf_values, tree_offsets, leaf_offsets, max_depth) -> ForestArrays:
        """The forest with its global child pointers rebuilt from `feature`, a block of trees at a
        time (whole-forest temporaries would be several GB at 1e8 nodes)."""
        tree_offsets = np.asarray(tree_offsets, dtype=np.int64)
        leaf_offsets = np.asarray(leaf_offsets, dtype=np.int64)
        n_trees = len(tree_offsets) - 1
        child = np.empty(len(feature), dtype=np.int32 if len(feature) < 2**31 else np.int64)
        for lo in range(0, n_trees, _TREES_PER_BLOCK):
            hi = min(lo + _TREES_PER_BLOCK, n_trees)
            a, b = tree_offsets[lo], tree_offsets[hi]
            offsets = tree_offsets[lo:hi + 1] - a
            tree_of = np.repeat(np.arange(hi - lo), np.diff(offsets))
            is_split = feature[a:b] >= 0
            base = np.where(is_split, tree_offsets[lo:hi][tree_of], leaf_offsets[lo:hi][tree_of])
            child[a:b] = base + _local_child(is_split, offsets, tree_of)
        return cls(feature=feature, threshold=threshold, child=child, leaf_values=leaf_values,
                   tree_offsets=tree_offsets, leaf_offsets=leaf_offsets, max_depth=max_depth)

    def tree(self, b: int) -> TreeArrays:
        lo, hi = self.tree_offsets[b], self.tree_offsets[b + 1]
        llo, lhi = self.leaf_offsets[b], self.leaf_offsets[b + 1]
        feature = self.feature[lo:hi].astype(np.int32)
        child = np.where(feature >= 0, self.child[lo:hi] - lo, self.child[lo:hi] - llo)
        return TreeArrays(feature, self.threshold[lo:hi].copy(), child.astype(np.int64), self.leaf_values[llo:lhi])

    @classmethod
    def merge(cls, forests: list[ForestArrays]) -> ForestArrays:
        """One forest of all the trees of `forests`, in order (tree shards grown apart, batches
        of trees grown one after the other). The list is emptied as its forests are copied, so
        that a caller who keeps no other reference to them holds one forest and one part at the
        peak, not two forests (2,000 trees on 1e6 rows are 1.3 GB). Each part's child pointers
        are shifted by its place in the whole, not rebuilt."""
        if not forests:
            raise ValueError("merge needs at least one forest")
        n_nodes = sum(len(f.feature) for f in forests)
        n_leaves = sum(len(f.leaf_values) for f in forests)
        feature = np.empty(n_nodes, dtype=np.result_type(*(f.feature.dtype for f in forests)))
        threshold = np.empty(n_nodes, dtype=np.uint16)
        leaf_values = np.empty((n_leaves, 4), dtype=np.float32)
        child = np.empty(n_nodes, dtype=np.int32 if n_nodes < 2**31 else np.int64)
        tree_offsets, leaf_offsets, max_depth = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)], 0
        node, leaf = 0, 0
        forests.reverse()  # popped from the end, in the original order
        while forests:
            f = forests.pop()
            feature[node:node + len(f.feature)] = f.feature
            threshold[node:node + len(f.feature)] = f.threshold
            child[node:node + len(f.feature)] = f.child + np.where(f.feature >= 0, node, leaf)
            leaf_values[leaf:leaf + len(f.leaf_values)] = f.leaf_values
            tree_offsets.append(f.tree_offsets[1:] + node)
            leaf_offsets.append(f.leaf_offsets[1:] + leaf)
            node, leaf, max_depth = node + len(f.feature), leaf + len(f.leaf_values), max(max_depth, f.max_depth)
            del f
        return cls(feature=feature, threshold=threshold, child=child, leaf_values=leaf_values,
                   tree_offsets=np.concatenate(tree_offsets), leaf_offsets=np.concatenate(leaf_offsets),
                   max_depth=max_depth)

    SAVED = ("feature", "threshold", "leaf_values", "tree_offsets", "leaf_offsets")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What is saved: everything but `child`, which `from_arrays` rebuilds."""
        return {f"forest_{k}": getattr(self, k) for k in self.SAVED}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], max_depth: int) -> ForestArrays:
        a = {k: arrays[f"forest_{k}"] for k in cls.SAVED}
        if (a["feature"].ndim != 1 or a["threshold"].shape != a["feature"].shape
                or a["leaf_values"].ndim != 2 or a["leaf_values"].shape[1] != 4):  # the kernels read these unchecked
            raise ValueError("the saved forest's arrays do not describe binary trees (shapes disagree)")
        n_splits = int((a["feature"] >= 0).sum())
        n_trees = len(a["tree_offsets"]) - 1
        # A forest of binary trees has one more leaf than splits per tree, and a node per split or leaf.
        if not (len(a["leaf_values"]) == n_splits + n_trees == a["leaf_offsets"][-1]
                and len(a["feature"]) == 2 * n_splits + n_trees == a["tree_offsets"][-1]):
            raise ValueError("the saved forest's arrays do not describe binary trees (sizes disagree)")
        nodes, leaves = np.diff(a["tree_offsets"]), np.diff(a["leaf_offsets"])
        shapes_ok = ((leaves >= 1) & (nodes == 2 * leaves - 1)).all()
        if a["tree_offsets"][0] != 0 or a["leaf_offsets"][0] != 0 or not shapes_ok:
            raise ValueError("the saved forest's tree offsets do not describe binary trees")
        forest = cls._assemble(**a, max_depth=max_depth)
        if forest._has_backward_pointer():
            raise ValueError("the saved forest's trees are not breadth-first (a split points backwards)")
        return forest

    def _has_backward_pointer(self) -> bool:
        """Whether some split's left child is not after it (a walk could then loop), or some
        tree's splits are not one fewer than its leaves (pointers would leave the tree)."""
        n_trees = self.n_trees
        for lo in range(0, n_trees, _TREES_PER_BLOCK):
            hi = min(lo + _TREES_PER_BLOCK, n_trees)
            a, b = self.tree_offsets[lo], self.tree_offsets[hi]
            splits = np.flatnonzero(self.feature[a:b] >= 0) + a
            if (self.child[splits] <= splits).any():
                return True
            # Every tree has a node (checked before), so reduceat sums each tree's own nodes.
            splits_per_tree = np.add.reduceat(self.feature[a:b] >= 0, self.tree_offsets[lo:hi] - a, dtype=np.int64)
            if not np.array_equal(splits_per_tree, np.diff(self.leaf_offsets[lo:hi + 1]) - 1):
                return True
        return False


def _local_child(is_split: np.ndarray, tree_offsets: np.ndarray, tree_of: np.ndarray | None = None) -> np.ndarray:
    """Tree-local child pointers of concatenated breadth-first trees with adjacent children: a
    tree's k-th split points at node 2k+1, its k-th leaf at leaf row k."""
    if tree_of is None:
        tree_of = np.repeat(np.arange(len(tree_offsets) - 1), np.diff(tree_offsets))
    splits_before = np.cumsum(is_split) - is_split  # running counts over all trees...
    leaves_before = np.arange(len(is_split)) - splits_before
    roots = np.asarray(tree_offsets[:-1])[tree_of]
    split_rank = splits_before - splits_before[roots]  # ...minus the count at the tree's root
    leaf_rank = leaves_before - leaves_before[roots]
    return np.where(is_split, 1 + 2 * split_rank, leaf_rank)


def _feature_dtype(n_features: int) -> type:
    return np.int8 if n_features <= 127 else np.int16 if n_features <= 32767 else np.int32


def _depth(tree: TreeArrays) -> int:
    """Depth of a breadth-first tree with adjacent children (`from_trees` checks that): its levels
    are consecutive ranges of nodes, and a level's splits put twice their number in the next."""
    splits_before = np.concatenate([[0], np.cumsum(tree.feature >= 0)])
    start, end, depth = 0, 1, 0
    while end <= len(tree.feature) and (n_splits := int(splits_before[end] - splits_before[start])) > 0:
        start, end, depth = end, end + 2 * n_splits, depth + 1
    return depth
