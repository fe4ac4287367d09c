"""Two-level quantile binning: every covariate becomes integer codes once, before any tree grows.

Fine codes (uint16, up to 65,536 bins) resolve every distinct value of up to 65,536 values
and are what splits, thresholds and prediction use. Coarse codes (uint8, up to `max_bins`
= 256 bins, equal-frequency) group consecutive fine bins; large nodes search splits on
coarse histograms, small nodes on fine codes, where the extra resolution matters (binned
thresholds cost a forest several percent of CATE RMSE against exact ones at 1e4-1e5 rows).

Code semantics, the same on every device: fine(x) = number of fine edges strictly below x,
so the split "fine <= f" is the split "x <= fine_edges[f]". Coarse edges are a subset of the
fine edges, so the coarse split "coarse <= b" is the fine split "fine <= coarse_last_fine[b]".
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._inputs import is_tensor

MAX_BINS = 256
FINE_BINS = 65536


@dataclass
class BinnedCovariates:
    """Training covariates as the tree growers see them."""

    fine: np.ndarray  # uint16 (rows, features): splits, thresholds, small nodes
    coarse: np.ndarray  # uint8 (rows, features): histograms of large nodes
    n_bins: np.ndarray  # int64 (features,): coarse bins per feature
    coarse_thr: np.ndarray  # int64 (features, 256): fine threshold of the coarse split "coarse <= b"
    max_bins: int


class QuantileBinner:
    """Fit per-feature fine and coarse bin edges on training covariates; map covariates to codes.

    Parameters
    ----------
    max_bins : int, default 256
        Coarse bins per feature (2..256) for the histograms of large nodes.
    subsample : int, default 200_000
        Edges are computed on at most this many rows (as scikit-learn's HistGradientBoosting).
    random_state : int or None
        Seed for the subsample.
    n_threads : int, default 1
        Features binned side by side (NumPy's sorts and searches release the GIL).
    """

    def __init__(self, max_bins: int = MAX_BINS, subsample: int = 200_000, random_state: int | None = None,
                 n_threads: int = 1):
        self.max_bins = max_bins
        self.subsample = subsample
        self.random_state = random_state
        self.n_threads = n_threads

    def _per_feature(self, fn, n_features: int) -> list:
        """[fn(j) for j in range(n_features)], on n_threads threads, in a few blocks of
        consecutive features per thread: one task per feature cost more than the binning itself
        on wide data (33,000 covariates of 100 rows: 7.3 of a 9 s fit went to the pool)."""
        threads = min(int(self.n_threads), n_features)
        if threads <= 1:
            return [fn(j) for j in range(n_features)]
        # 4 blocks a thread: a thread that drew slow features (many distinct values) is not left alone.
        starts = np.linspace(0, n_features, min(n_features, 4 * threads) + 1).astype(np.int64)
        blocks = [range(a, b) for a, b in zip(starts[:-1], starts[1:])]
        with ThreadPoolExecutor(threads, thread_name_prefix="tauforge-bin") as pool:
            return [out for block in pool.map(lambda js: [fn(j) for j in js], blocks) for out in block]

    def fit(self, X: np.ndarray, sample_weight: np.ndarray | None = None) -> QuantileBinner:
        """`sample_weight`: rows of weight 0 make no edges, and coarse bins hold equal weight
        (a weight of 2 bins as the row twice)."""
        if not (2 <= int(self.max_bins) <= MAX_BINS):
            raise ValueError(f"max_bins must be an integer between 2 and {MAX_BINS}, got {self.max_bins}")
        w = None
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if not (w > 0).any():
                raise ValueError("sample_weight is 0 for every row: no row to bin")
            X, w = X[w > 0], w[w > 0]
        n = X.shape[0]
        if n > self.subsample:
            rows = np.sort(np.random.default_rng(self.random_state).choice(n, self.subsample, replace=False))
            X, w = X[rows], (None if w is None else w[rows])
        edges = self._per_feature(lambda j: self._feature_edges(X[:, j], w), X.shape[1])
        self.fine_edges_ = [fine for fine, _ in edges]
        self.coarse_last_fine_ = [coarse_idx for _, coarse_idx in edges]
        self._derive()
        return self

    def _feature_edges(self, col: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fine edges, and the indices of the fine edges that are also coarse edges."""
        # One sort gives the distinct values and the quantiles (np.percentile with 65,535 levels
        # partitions once per level).
        order = np.argsort(col, kind="stable") if w is not None else None
        ordered = np.sort(col) if w is None else col[order]
        first = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
        distinct = ordered[first]
        counts = np.diff(np.append(first, len(ordered))) if w is None else np.add.reduceat(w[order], first)
        if len(distinct) <= FINE_BINS:
            lo, hi = distinct[:-1], distinct[1:]
            with np.errstate(over="ignore"):
                fine = (lo + hi) / 2.0
            fine = np.where(np.isfinite(fine), fine, lo / 2.0 + hi / 2.0)  # past 9e307 the sum overflows
            # Neighbours an ulp apart (or subnormal) have a midpoint that rounds to one of them: an
            # edge equal to hi would give lo and hi one code. Any edge in [lo, hi) keeps them apart.
            fine = np.where((lo <= fine) & (fine < hi), fine, lo)
        else:
            pos = (len(ordered) - 1) * np.arange(1, FINE_BINS) / FINE_BINS
            fine = np.unique((ordered[np.floor(pos).astype(np.int64)] + ordered[np.ceil(pos).astype(np.int64)]) / 2)
            fine = fine[fine < distinct[-1]]  # an edge at the maximum would leave an empty last bin
            counts = np.bincount(np.searchsorted(fine, ordered, side="left"), minlength=len(fine) + 1,
                                 weights=None if w is None else w[order])
        if len(fine) + 1 <= self.max_bins:
            return fine, np.arange(len(fine))
        # Equal-frequency coarse bins made of whole fine bins: cut after the fine bin where the
        # cumulative count crosses each 1/max_bins quantile.
        cum = np.cumsum(counts)[:-1]  # rows at or below each fine edge
        targets = cum[-1] * np.arange(1, self.max_bins) / self.max_bins
        cut = np.unique(np.searchsorted(cum, targets, side="left"))
        return fine, cut[cut < len(fine)]

    def _derive(self) -> None:
        self.n_fine_bins_ = np.array([len(e) + 1 for e in self.fine_edges_], dtype=np.int64)
        self.n_bins_ = np.array([len(c) + 1 for c in self.coarse_last_fine_], dtype=np.int64)
        # fine_to_coarse[j][f]: the coarse bin holding fine bin f = coarse edges strictly below it.
        self.fine_to_coarse_ = [
            np.searchsorted(c, np.arange(nf), side="left").astype(np.uint8)
            for c, nf in zip(self.coarse_last_fine_, self.n_fine_bins_)
        ]

    def coarse_to_fine_thresholds(self) -> np.ndarray:
        """(features, max_bins) table: the fine threshold equal to the coarse split 'coarse <= b'."""
        table = np.zeros((len(self.fine_edges_), MAX_BINS), dtype=np.int64)
        for j, c in enumerate(self.coarse_last_fine_):
            table[j, : len(c)] = c
        return table

    def transform(self, X: Any) -> Any:
        """uint16 fine codes of shape X.shape; a torch input gives an int32 tensor on its device."""
        if X.shape[1] != len(self.fine_edges_):
            raise ValueError(f"X has {X.shape[1]} columns, the forest was fit on {len(self.fine_edges_)}")
        if is_tensor(X):
            import torch

            codes = torch.empty(X.shape, dtype=torch.int32, device=X.device)
            for j, e in enumerate(self.fine_edges_):
                edges = torch.as_tensor(e, dtype=X.dtype, device=X.device)
                codes[:, j] = torch.bucketize(X[:, j].contiguous(), edges, right=False).to(torch.int32)
            return codes
        codes = np.empty(X.shape, dtype=np.uint16)

        def code(j: int) -> None:
            codes[:, j] = np.searchsorted(self.fine_edges_[j], X[:, j], side="left")

        self._per_feature(code, X.shape[1])
        return codes

    def coarse(self, fine_codes: np.ndarray) -> np.ndarray:
        """uint8 coarse codes from fine codes."""
        out = np.empty(fine_codes.shape, dtype=np.uint8)
        for j, table in enumerate(self.fine_to_coarse_):
            out[:, j] = table[fine_codes[:, j]]
        return out

    def bin(self, X: np.ndarray) -> BinnedCovariates:
        """Both code levels of X, C-contiguous, with the tables the growers need."""
        fine = np.ascontiguousarray(self.transform(X))
        return BinnedCovariates(fine=fine, coarse=np.ascontiguousarray(self.coarse(fine)), n_bins=self.n_bins_,
                                coarse_thr=self.coarse_to_fine_thresholds(), max_bins=int(self.max_bins))

    # Serialization: fine edges and coarse cut indices, concatenated, with per-feature offsets.
    def to_arrays(self) -> dict[str, np.ndarray]:
        def pack(parts):
            offsets = np.concatenate([[0], np.cumsum([len(a) for a in parts])]).astype(np.int64)
            return (np.concatenate(parts) if parts else np.empty(0)), offsets

        fine, fine_off = pack(self.fine_edges_)
        cut, cut_off = pack(self.coarse_last_fine_)
        return {"bin_fine_edges": fine.astype(np.float64), "bin_fine_offsets": fine_off,
                "bin_coarse_cuts": cut.astype(np.int64), "bin_coarse_offsets": cut_off}

    @classmethod
    def from_edges(cls, fine_edges: list[np.ndarray], max_bins: int = MAX_BINS) -> QuantileBinner:
        """A binner with the given sorted fine edges per feature (to predict with trees whose
        thresholds are those edges; coarse bins, used only to grow trees, are the first edges)."""
        binner = cls(max_bins=max_bins)
        binner.fine_edges_ = [np.asarray(e, dtype=np.float64) for e in fine_edges]
        binner.coarse_last_fine_ = [np.arange(min(len(e), max_bins - 1)) for e in binner.fine_edges_]
        binner._derive()
        return binner

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], max_bins: int) -> QuantileBinner:
        binner = cls(max_bins=max_bins)
        fe, fo = arrays["bin_fine_edges"], arrays["bin_fine_offsets"]
        cc, co = arrays["bin_coarse_cuts"], arrays["bin_coarse_offsets"]
        for name, values, offsets in (("fine edges", fe, fo), ("coarse cuts", cc, co)):
            if (offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values)
                    or (np.diff(offsets) < 0).any()):
                raise ValueError(f"the saved binner's {name} offsets do not partition its {len(values)} values")
        if len(fo) != len(co):
            raise ValueError("the saved binner has fine edges and coarse cuts for different numbers of features")
        for j in range(len(fo) - 1):
            e = fe[fo[j]:fo[j + 1]]
            # Not strictly increasing nor finite: versions before 2026-12-06 saved equal edges (values
            # an ulp apart) and inf (values past 9e307), which code as they did then.
            with np.errstate(invalid="ignore"):  # inf - inf
                decreasing = (np.diff(e) < 0).any()
            if len(e) >= FINE_BINS or np.isnan(e).any() or decreasing:
                raise ValueError(f"the saved binner's fine edges of feature {j} are not sorted, or NaN, or "
                                 f"{FINE_BINS} or more")
        binner.fine_edges_ = [fe[fo[j]:fo[j + 1]] for j in range(len(fo) - 1)]
        binner.coarse_last_fine_ = [cc[co[j]:co[j + 1]] for j in range(len(co) - 1)]
        binner._derive()
        return binner
