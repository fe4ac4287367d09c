"""A grown forest as flat arrays: what backends produce, what prediction reads, what is saved.

Trees are stored breadth-first and concatenated. For node i:
  feature[i]   split feature, or -1 for a leaf
  threshold[i] split fine code (kernels.binning): rows with fine code <= threshold go left
  child[i]     for a split, the global index of the left child (the right child is child[i] + 1);
               for a leaf, the global index of its row in leaf_values
leaf_values[l] = estimation-half leaf means of (t, y, t*y, t*t). tree_offsets[b] is tree b's root.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEAF_T, LEAF_Y, LEAF_TY, LEAF_TT = range(4)


@dataclass
class TreeArrays:
    """One tree in breadth-first order with tree-local child and leaf indices."""

    feature: np.ndarray
    threshold: np.ndarray
    child: np.ndarray
    leaf_values: np.ndarray


@dataclass
class ForestArrays:
    feature: np.ndarray  # int16 [nodes]
    threshold: np.ndarray  # uint16 [nodes]
    child: np.ndarray  # int32/int64 [nodes]
    leaf_values: np.ndarray  # float64 [leaves, 4]
    tree_offsets: np.ndarray  # int64 [trees + 1]
    leaf_offsets: np.ndarray  # int64 [trees + 1]
    max_depth: int

    FIELDS = ("feature", "threshold", "child", "leaf_values", "tree_offsets", "leaf_offsets")

    @property
    def n_trees(self) -> int:
        return len(self.tree_offsets) - 1

    @property
    def roots(self) -> np.ndarray:
        return self.tree_offsets[:-1]

    @classmethod
    def from_trees(cls, trees: list[TreeArrays]) -> "ForestArrays":
        node_counts = np.array([len(t.feature) for t in trees], dtype=np.int64)
        leaf_counts = np.array([len(t.leaf_values) for t in trees], dtype=np.int64)
        tree_offsets = np.concatenate([[0], np.cumsum(node_counts)])
        leaf_offsets = np.concatenate([[0], np.cumsum(leaf_counts)])
        feature = np.concatenate([t.feature for t in trees]).astype(np.int16)
        child = np.concatenate([
            np.where(t.feature >= 0, t.child + tree_offsets[b], t.child + leaf_offsets[b])
            for b, t in enumerate(trees)
        ])
        child = child.astype(np.int32 if child.size == 0 or child.max() < 2**31 else np.int64)
        return cls(
            feature=feature,
            threshold=np.concatenate([t.threshold for t in trees]).astype(np.uint16),
            child=child,
            leaf_values=np.concatenate([t.leaf_values for t in trees]).astype(np.float64),
            tree_offsets=tree_offsets,
            leaf_offsets=leaf_offsets,
            max_depth=max(_depth(t) for t in trees),
        )

    def tree(self, b: int) -> TreeArrays:
        lo, hi = self.tree_offsets[b], self.tree_offsets[b + 1]
        llo, lhi = self.leaf_offsets[b], self.leaf_offsets[b + 1]
        feature = self.feature[lo:hi].astype(np.int32)
        child = np.where(feature >= 0, self.child[lo:hi] - lo, self.child[lo:hi] - llo)
        return TreeArrays(feature, self.threshold[lo:hi].copy(), child.astype(np.int64), self.leaf_values[llo:lhi])

    @classmethod
    def merge(cls, forests: list["ForestArrays"]) -> "ForestArrays":
        """One forest of all the trees of `forests`, in order (tree shards grown apart)."""
        return cls.from_trees([f.tree(b) for f in forests for b in range(f.n_trees)])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {f"forest_{k}": getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], max_depth: int) -> "ForestArrays":
        return cls(**{k: arrays[f"forest_{k}"] for k in cls.FIELDS}, max_depth=max_depth)


def _depth(tree: TreeArrays) -> int:
    """Depth of a breadth-first tree, one vectorized pass per level."""
    depth = np.zeros(len(tree.feature), dtype=np.int64)
    parents = np.flatnonzero(tree.feature >= 0)
    left = tree.child[parents]
    while True:
        below = depth[parents] + 1
        if np.array_equal(depth[left], below):
            return int(depth.max()) if len(depth) else 0
        depth[left] = depth[left + 1] = below
