"""Quantile binning: every covariate becomes a uint8 code, once, before any tree is grown.

Code semantics (the same on every device): code(x) = number of edges strictly below x, so a
split "code <= b" is the split "x <= edges[b]". A feature with k distinct training values
gets k bins (edges at midpoints); otherwise edges are quantiles of a subsample, deduplicated.
"""

from __future__ import annotations

import numpy as np
import torch

MAX_BINS = 256


class QuantileBinner:
    """Fit per-feature bin edges on training covariates; map any covariates to uint8 codes.

    Parameters
    ----------
    max_bins : int, default 256
        At most this many bins per feature (2..256). Fewer distinct values give fewer bins.
    subsample : int, default 200_000
        Edges are computed on at most this many rows (as scikit-learn's HistGradientBoosting).
    random_state : int or None
        Seed for the subsample.
    """

    def __init__(self, max_bins: int = MAX_BINS, subsample: int = 200_000, random_state: int | None = None):
        self.max_bins = max_bins
        self.subsample = subsample
        self.random_state = random_state

    def fit(self, X: np.ndarray) -> "QuantileBinner":
        if not (2 <= int(self.max_bins) <= MAX_BINS):
            raise ValueError(f"max_bins must be between 2 and {MAX_BINS}, got {self.max_bins}")
        n = X.shape[0]
        if n > self.subsample:
            rows = np.random.default_rng(self.random_state).choice(n, self.subsample, replace=False)
            X = X[np.sort(rows)]
        self.edges_ = [self._feature_edges(X[:, j]) for j in range(X.shape[1])]
        self.n_bins_ = np.array([len(e) + 1 for e in self.edges_], dtype=np.int32)
        return self

    def _feature_edges(self, col: np.ndarray) -> np.ndarray:
        distinct = np.unique(col)
        if len(distinct) <= self.max_bins:
            return (distinct[:-1] + distinct[1:]) / 2.0
        qs = np.linspace(0, 100, self.max_bins + 1)[1:-1]
        edges = np.unique(np.percentile(col, qs, method="midpoint"))
        return edges[edges < distinct[-1]]  # an edge at the maximum would leave an empty last bin

    def transform(self, X: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """uint8 codes of shape X.shape; a torch input stays a tensor on its device."""
        if X.shape[1] != len(self.edges_):
            raise ValueError(f"X has {X.shape[1]} columns, the forest was fit on {len(self.edges_)}")
        if isinstance(X, torch.Tensor):
            codes = torch.empty(X.shape, dtype=torch.uint8, device=X.device)
            for j, e in enumerate(self.edges_):
                edges = torch.as_tensor(e, dtype=X.dtype, device=X.device)
                codes[:, j] = torch.bucketize(X[:, j].contiguous(), edges, right=False).to(torch.uint8)
            return codes
        codes = np.empty(X.shape, dtype=np.uint8)
        for j, e in enumerate(self.edges_):
            codes[:, j] = np.searchsorted(e, X[:, j], side="left")
        return codes

    # Serialization: the edges, concatenated, with per-feature offsets.
    def to_arrays(self) -> dict[str, np.ndarray]:
        offsets = np.concatenate([[0], np.cumsum([len(e) for e in self.edges_])]).astype(np.int64)
        return {"bin_edges": np.concatenate(self.edges_).astype(np.float64), "bin_edge_offsets": offsets}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], max_bins: int) -> "QuantileBinner":
        binner = cls(max_bins=max_bins)
        edges, offsets = arrays["bin_edges"], arrays["bin_edge_offsets"]
        binner.edges_ = [edges[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]
        binner.n_bins_ = np.array([len(e) + 1 for e in binner.edges_], dtype=np.int32)
        return binner
