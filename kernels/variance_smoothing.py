"""The little bags' per-point variance, smoothed over the forest's own neighbours.

A little-bag variance at one point rests on a small difference of two large numbers, the spread
of the groups' estimates less the noise within each group: over forests grown on the same data
with other seeds it moves by about 40% at 1,000 trees (docs/benchmarks.md, "Where coverage is
lost"). Spread over the points, that noise puts interval width where the error is not, and for a
given mean width it lowers the mean coverage (a point's coverage is concave in its width near the
truth). The estimate's variance moves smoothly with x, so averaging over the points the forest
itself treats as neighbours removes most of the noise and keeps the shape: on grf's designs it
covers 1.8-4.1 points more at the same mean width (docs/benchmarks.md, "Smoothing the variance
over the forest's neighbours").

What is averaged is the unbiased estimate before grf's debiasing
(`prediction.between_group_estimate`); grf's posterior mean (`prediction.posterior_mean_variance`)
then takes the row's own standard error, as without smoothing. `VarianceSmoother` keeps, for
every leaf a reference row reaches, the sum and the count of the reference rows' estimates
(summed per row by the backend's `shared_leaf_sums`). At x the smoothed estimate is

    (sum over trees of the sums in x's leaves + n_trees e(x)) / (sum of the counts there + n_trees),

the references' estimates averaged with weights by proximity (the share of trees in which a
reference shares x's leaf), x's own estimate e(x) counting as one more reference at proximity 1.
The references are up to `REFERENCE_ROWS` training rows drawn with the forest's seed
(`reference_rows`), each estimated out of bag (from the groups of trees that never drew it, as a
fresh row would be); only sums and counts are kept, no row. grf and EconML report the per-point
variance (`variance_smoothing=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFERENCE_ROWS = 1000  # enough that a leaf of a few rows holds a reference in most trees at 2,000 rows


def reference_rows(n: int, seed: int) -> np.ndarray:
    """The training rows whose variances are smoothed over: `REFERENCE_ROWS` of the `n`, drawn
    without replacement with `seed` (all of them when there are fewer), in order."""
    if n <= REFERENCE_ROWS:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x5EED]).choice(n, size=REFERENCE_ROWS, replace=False))


@dataclass(frozen=True)
class VarianceSmoother:
    """Per leaf reached by a reference row (`leaves`, ascending forest-wide leaf indices), the sum
    of those rows' variance estimates and their count (`totals`, (leaves, 2))."""

    leaves: np.ndarray  # int64
    totals: np.ndarray  # float64 (leaves, 2): sum, count

    @classmethod
    def fit(cls, leaf_ids: np.ndarray, estimate: np.ndarray) -> VarianceSmoother:
        """From the reference rows' leaves (rows, trees) and their variance estimates (rows,);
        rows without one (NaN: no group of trees left them out) are left out."""
        leaf_ids, estimate = np.asarray(leaf_ids, dtype=np.int64), np.asarray(estimate, dtype=np.float64)
        known = np.isfinite(estimate)
        leaf_ids, estimate = leaf_ids[known], estimate[known]
        leaves, where = np.unique(leaf_ids.ravel(), return_inverse=True)
        sums = np.bincount(where, weights=np.repeat(estimate, leaf_ids.shape[1]), minlength=len(leaves))
        counts = np.bincount(where, minlength=len(leaves))
        return cls(leaves, np.stack([sums, counts], axis=1).astype(np.float64))

    def smooth(self, backend, leaf_ids, estimate: np.ndarray, leaf_offsets: np.ndarray) -> np.ndarray:
        """The smoothed estimate of rows whose leaves are `leaf_ids` (rows, trees; arrays of
        `backend`, kernels.backends) and whose own estimate is `estimate` (rows,), in a forest
        whose tree t's leaves start at leaf_offsets[t]."""
        n_trees = leaf_ids.shape[1]
        if not len(self.leaves):
            return estimate
        tree_starts = np.searchsorted(self.leaves, leaf_offsets)
        totals = backend.to_numpy(backend.shared_leaf_sums(leaf_ids, self.leaves, tree_starts, self.totals))
        return (totals[:, 0] + n_trees * estimate) / (totals[:, 1] + n_trees)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"smoother_leaves": self.leaves, "smoother_totals": self.totals}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], n_leaves: int) -> VarianceSmoother | None:
        """The smoother saved in `arrays` (None if none was), checked against the forest's leaves."""
        if "smoother_leaves" not in arrays:
            return None
        leaves, totals = np.asarray(arrays["smoother_leaves"]), np.asarray(arrays.get("smoother_totals"))
        ordered = len(leaves) < 2 or bool(np.all(np.diff(leaves) > 0))
        inside = not len(leaves) or 0 <= leaves[0] <= leaves[-1] < n_leaves
        sound = (np.issubdtype(leaves.dtype, np.integer) and totals.dtype.kind == "f"
                 and totals.shape == (len(leaves), 2) and bool(np.isfinite(totals).all())
                 and bool((totals[:, 1] >= 1).all()))  # every leaf kept holds a reference
        if not sound or not ordered or not inside:
            raise ValueError(f"the variance smoother's arrays do not fit the forest ({len(leaves)} leaves, totals "
                             f"of shape {totals.shape}, for a forest of {n_leaves} leaves)")
        return cls(leaves.astype(np.int64), totals.astype(np.float64))
