"""`CausalForest`: the generalized random forest for heterogeneous treatment effects,
grown on residualized treatment and outcome with quantile-binned covariates."""

from __future__ import annotations

import hashlib
import inspect
import math
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numba
import numpy as np
from scipy.stats import norm
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from . import _inputs, forest_codec
from .backends import LEAF_IDS_PER_CHUNK, get_backend, release_free_heap
from .binning import MAX_BINS, BinnedCovariates, QuantileBinner
from .forest_arrays import ForestArrays
from .local_linear import (
    AUTO_MAX_LEAF_MOMENT_BYTES,
    DEFAULT_RIDGE,
    RIDGE_PATH,
    SELECTION_ROWS,
    LocalLinearCorrection,
    choose_ridge,
    initial_ridge,
    leaf_moment_bytes_bound,
    local_linear_estimate,
    local_linear_taus,
    n_moments,
    select_variables,
)
from .prediction import MIN_INTERVAL_TREES, posterior_mean_variance
from .progress import progress_bar, progress_steps
from .sampling import LittleBagSampler, TreeSample, resolve_group_size, shard_range
from .serialization import load_model, save_model
from .splitting import IMPORTANCE_PILOT_TREES, SplitRule, quantize_weights, weighted_mtry, weights_from_importance
from .variance_smoothing import VarianceSmoother, reference_rows

FORMAT = "tauforge.causal_forest"
# 2: float32 leaves, child pointers implicit; 3: the same arrays encoded compactly (kernels.forest_codec:
# split structure as bits, features and thresholds for splits only, leaf means as byte planes or
# dictionaries, zlib where it pays); 4: format 3 plus a local linear correction's leaf moments
# (written only by forests that have one, so older readers refuse them instead of ignoring the
# correction); 5: format 4 whose correction shrinks each block's slopes by its own scale
# ("penalty": "blocks", kernels.local_linear), so a reader of 4 refuses it rather than predict with
# the one-trace penalty; 6: format 3 or 5 plus the codes of `fit(groups=)` ("clusters"), written
# only by forests grown on groups, so an older reader refuses them rather than compute their
# out-of-bag rows as if rows were drawn; 7: any of those plus the variance smoother's leaf sums
# (kernels.variance_smoothing), so an older reader refuses them rather than widen intervals
# differently; 8: any of those plus the candidate weights its trees were grown with
# (`candidate_weights`), written only by forests grown with weights, so an older reader, whose
# CausalForest has no such parameter, refuses them; 9: any of those fit with
# linear_correction_ridge='auto' (the penalty chosen out of bag), written only by those, so an
# older reader, which refuses that value, says so by the format. 1 to 8 are still read (4 with the
# one-trace penalty it was fit with; before 7 the variance is the per-point one, before 8
# candidates were drawn uniformly).
FORMAT_VERSION = 9
WEIGHTS_FORMAT_VERSION = 8
SMOOTHING_FORMAT_VERSION = 7
CLUSTERS_FORMAT_VERSION = 6
PENALTY_BLOCKS_FORMAT_VERSION = 5
ONE_TRACE_FORMAT_VERSION = 4  # a format-4 forest saved again keeps its format, and its penalty
PLAIN_FORMAT_VERSION = 3
# Prediction works on chunks of rows (backends.LEAF_IDS_PER_CHUNK leaf ids on the numba path). The
# torch and out-of-bag paths gather (rows, trees, 4) float64 values, 64 MB at most.
_GATHERED_PER_CHUNK = 1 << 21


class CausalForest(BaseEstimator):
    """Causal forest (GRF) on residuals: fit(X, T, y) with T and y already residualized.

    Use `CausalForestDML` to residualize with cross-fitted nuisance models first.
    Defaults follow grf where grf and EconML differ, except five chosen by measurement
    (docs/benchmarks.md, "Choosing the defaults" and "Where coverage is lost"): 1,000 trees,
    leaves of 3, little bags of 8 trees, every covariate a split candidate, and the local linear
    correction on, which together give a lower CATE error than EconML's on grf's designs with
    narrower intervals at equal trees.

    Parameters
    ----------
    n_estimators : int, default 1000
        Number of trees; a multiple of `ci_group_size` when that is a number. Intervals from
        fewer than MIN_INTERVAL_TREES (500) trees warn: their width is noisy.
        grf: num.trees=2000; EconML: 100.
    min_samples_leaf : float, default 3
        Every child holds at least this many structure rows with a treatment residual below
        its parent's mean and as many at or above it (grf's min.node.size, the same rule, whose
        default is 5: with 5, leaves are larger and the smoothing bias costs coverage on steep
        effects), and at least this many estimation rows; rows of positive weight count once
        whatever their weight.
        EconML: min_samples_leaf=5 rows of each half, whatever their treatment (a number below 1
        is a share of the rows there, refused here).
    max_depth : int or None, default None
        Maximum depth; None grows until the leaf constraints stop it. grf: none; EconML: None.
    mtry : int or None, default None
        Features drawn per node; None means all p, as EconML (max_features='auto'), when
        candidates are drawn uniformly (`candidate_weights=None`); see `candidate_weights`. grf draws
        min(ceil(sqrt(p) + 20), p), the same up to p = 26: on grf's aw2 effect among 50
        covariates, all 50 cut the CATE error by 9% and the squared bias by a quarter against
        grf's 28 (docs/benchmarks.md, "Where coverage is lost").
    poisson_mtry : bool, default False
        Draw each node's number of candidate features from Poisson(mtry) (at least 1, at most
        p), as grf does; False draws exactly `mtry`, as EconML does.
    candidate_weights : 'importance', None or sequence of float, default 'importance'
        How each node draws its candidate features. 'importance': a pilot forest of
        IMPORTANCE_PILOT_TREES (100) trees, grown with every covariate a candidate, measures
        grf's variable importance (`feature_importances`), and each covariate is then drawn in
        proportion to its importance over the largest plus f/p (`splitting.weights_from_importance`;
        f = 0.5 up to 2,000 rows of positive weight, 0.5 sqrt(n / 2,000) beyond: 1.6 at 20,000):
        the covariates the effect moves with are candidates in nearly every node, the others in
        a few, so fewer splits go to noise and the forest's smoothing bias falls (on grf's
        designs at n = 2,000 a third to a half of the squared bias and 4-15% of the CATE error;
        a tie at 20,000: docs/benchmarks.md, "Candidates drawn by importance"). The pilot
        reads every row's outcome, as a tuned parameter does; each tree stays honest given the
        weights. A fit pays for the pilot's trees (each shard of `fit_shard` for its own). A
        sequence gives the weights (one per covariate, >= 0, some > 0; 0 never splits on it);
        None draws uniformly, as grf and EconML do. With weights, a node makes `mtry` draws
        with replacement (a covariate drawn twice is one candidate), `mtry` None meaning
        min(p, max(5, ceil(sqrt(p)))). `candidate_weights_` holds the weights used.
    max_samples : float, default 0.5
        Fraction of rows in each tree's subsample, drawn without replacement; at most 0.5
        when `ci_group_size` > 1. grf: sample.fraction=0.5; EconML: max_samples=0.45.
    ci_group_size : int or 'auto', default 'auto'
        Trees per little bag (they share a half-sample) for the variance estimate; 1 disables
        intervals. 'auto' takes the largest of 8, 4 and 2 that divides `n_estimators` into at
        least 50 groups (8 for the default 1,000 trees, 4 for 500, 2 for 40; 1 for an odd
        number): at equal trees, larger groups give a less noisy variance, so narrower intervals
        at the same CATE error. grf: ci.group.size=2; EconML: subforest_size=4.
    honest : bool, default True
        Choose splits on one part of the subsample, fill leaves with the other. grf and EconML: True.
    honesty_fraction : float, default 0.5
        Share of the subsample used to choose splits. grf: 0.5; EconML: 0.5 (fixed).
    alpha : float, default 0.05
        Each child's sum of squares of the treatment residual about its own mean must be at
        least `alpha` times its parent's (grf's alpha=0.05, the same rule). EconML:
        min_balancedness_tol=0.45 bounds each child's share of rows instead.
    imbalance_penalty : float, default 0.0
        Subtracts penalty * (1/size_left + 1/size_right) from each split's score, size being
        that sum of squares (grf's imbalance.penalty=0, on the same scale). EconML: none.
    linear_correction_variables : None, 'auto' or sequence of int, default 'auto'
        Covariates (column indices) of the local linear correction of the CATE
        (kernels.local_linear): the forest's weights fit a local regression with slopes in these
        covariates, which removes the bias of a locally constant fit where the effect is steep.
        'auto' takes those a cross-validated lasso of the R-learner's linear model keeps (at most
        4, chosen on at most 50,000 rows; none where the effect does not move linearly, and none,
        with a warning, where their leaf moments could take over 1 GiB: large forests on many
        rows); None turns it off. Each leaf then stores (2d+2)(2d+3)/2 + 2d + 2 more numbers for
        d covariates.
        grf: predict.causal_forest's linear.correction.variables (a beta feature: chosen by hand,
        no sample weights, training rows kept for prediction); EconML: none.
    linear_correction_ridge : 'auto' or float, default 'auto'
        Ridge penalty on the correction's slopes, relative to the mean diagonal of the local
        Gram matrix's block each slope belongs to, the level's or the effect's (grf's ll.lambda,
        with covariates standardized; grf takes one mean diagonal for both, which makes a
        continuous treatment's CATE depend on its units). 'auto' chooses it from 0.03, 0.1, 0.3,
        1, 3 and 10 by the R-loss of the out-of-bag CATE, mean w (y~ - tau(x) t~)^2, on at most
        50,000 training rows (grf's tune_ll_causal_forest takes the least on its own path): 0.1
        unless another's loss is lower by 1.5 standard errors of the paired difference, since at
        n = 2,000 the loss is noisy (docs/benchmarks.md, "The correction's penalty chosen out of
        bag"). A steep linear effect takes a small one, a flat or stepped effect on many rows a
        large one, which leaves little of the correction. The choice is
        `linear_correction_.ridge`; a sharded forest's is made by `merge`.
    variance_smoothing : bool, default True
        Average each point's little-bag variance with those of up to 1,000 training rows that
        share its leaves, weighted by how many trees they share (kernels.variance_smoothing):
        the per-point variance is noisy, and at equal mean width the smoothed one covers more
        (docs/benchmarks.md, "Smoothing the variance over the forest's neighbours"). A saved
        forest grows by about a sixth. False gives the per-point variance, as grf and EconML
        report it.
    max_bins : int, default 256
        Quantile bins per covariate (2..256). grf and EconML split on exact values.
    device : {'auto', 'cpu', 'cuda'}, default 'auto'
        'auto' uses CUDA when torch sees a GPU. torch is loaded only for a GPU (or a tensor
        input): a CPU forest runs on numba without it. `device_` names the device chosen.
    backend : {'auto', 'numba', 'torch'}, default 'auto'
        Kernels for the hot loops: numba on CPU, torch on GPU under 'auto'.
    random_state : int, numpy RandomState or Generator, or None
        Seed of all randomness; the same seed and device give the same forest (a RandomState or
        Generator draws the seed at fit; `fit_shard` over several shards needs an int).
    progress : bool or None, default None
        Progress on stderr (`kernels.progress`): None shows a bar on a terminal when the fit takes
        over 2 s; True also writes a log line every 10 s or so elsewhere (a pipeline task's log);
        False shows nothing.
    """

    def __init__(self, n_estimators: int = 1000, *, min_samples_leaf: float = 3, max_depth: int | None = None,
                 mtry: int | None = None, poisson_mtry: bool = False, candidate_weights: Any = "importance",
                 max_samples: float = 0.5,
                 ci_group_size: int | str = "auto", honest: bool = True, honesty_fraction: float = 0.5,
                 alpha: float = 0.05,
                 imbalance_penalty: float = 0.0, linear_correction_variables: Any = "auto",
                 linear_correction_ridge: Any = "auto", variance_smoothing: bool = True,
                 max_bins: int = 256, device: str = "auto",
                 backend: str = "auto", random_state: Any = None, progress: bool | None = None):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_depth = max_depth
        self.mtry = mtry
        self.poisson_mtry = poisson_mtry
        self.candidate_weights = candidate_weights
        self.max_samples = max_samples
        self.ci_group_size = ci_group_size
        self.honest = honest
        self.honesty_fraction = honesty_fraction
        self.alpha = alpha
        self.imbalance_penalty = imbalance_penalty
        self.linear_correction_variables = linear_correction_variables
        self.linear_correction_ridge = linear_correction_ridge
        self.variance_smoothing = variance_smoothing
        self.max_bins = max_bins
        self.device = device
        self.backend = backend
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ fit
    def check_params(self, n_features: int | None = None) -> None:
        """Raise ValueError naming the first parameter that is not valid. Called by `fit`; a
        pipeline calls it before any task runs. Without `n_features` the checks that need the
        number of covariates (mtry, linear_correction_variables) check their type only."""
        p = n_features

        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(msg)

        def integer(v: Any) -> bool:  # bool is an int, and True trees is 1 tree: refused
            return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

        def number(v: Any) -> bool:  # a finite real number (a string or None failed with a bare TypeError)
            return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    and bool(np.isfinite(v)))

        check(integer(self.n_estimators) and self.n_estimators >= 1,
              f"n_estimators must be a positive integer, got {self.n_estimators!r}")
        group = self._group_size()  # raises on a bad ci_group_size
        check(number(self.max_samples) and 0 < self.max_samples <= (0.5 if group > 1 else 1.0),
              f"max_samples must be in (0, 0.5] with ci_group_size > 1 (in (0, 1] otherwise), "
              f"got {self.max_samples!r}")
        # Below 1 EconML and scikit-learn read a share of the rows; here it was read as 1 row, the
        # least regularized forest there is (an API review): refused, with the count to pass.
        check(number(self.min_samples_leaf) and self.min_samples_leaf >= 1,
              f"min_samples_leaf must be a count of rows, at least 1, got {self.min_samples_leaf!r} (a share of the "
              "rows, as EconML reads a number below 1, is not taken: pass that share times the rows)")
        check(self.max_depth is None or integer(self.max_depth) and self.max_depth >= 0,
              f"max_depth must be an integer >= 0 or None, got {self.max_depth!r}")
        check(self.mtry is None or integer(self.mtry) and 1 <= self.mtry <= (self.mtry if p is None else p),
              f"mtry must be an integer between 1 and {f'{p} (features)' if p else 'the number of features'}, "
              f"got {self.mtry!r}")
        check(isinstance(self.poisson_mtry, (bool, np.bool_)),
              f"poisson_mtry must be True or False, got {self.poisson_mtry!r}")
        cw = self.candidate_weights
        if cw is not None and not (isinstance(cw, str) and cw == "importance"):
            values = None if isinstance(cw, str) or np.ndim(cw) != 1 else np.asarray(cw, dtype=object)
            ok = values is not None and len(values) > 0 and all(number(v) for v in values)
            check(ok and _usable_weights(values.astype(np.float64)),
                  f"candidate_weights must be 'importance', None or one finite weight >= 0 per covariate, some > 0, "
                  f"got {cw!r}")
            check(p is None or len(values) == p,
                  f"candidate_weights has {len(values)} weights for {p} covariates: pass one per column of X")
        check(isinstance(self.honest, (bool, np.bool_)), f"honest must be True or False, got {self.honest!r}")
        check(isinstance(self.variance_smoothing, (bool, np.bool_)),
              f"variance_smoothing must be True or False, got {self.variance_smoothing!r}")
        check(number(self.honesty_fraction) and 0 < self.honesty_fraction < 1,
              f"honesty_fraction must be in (0, 1), got {self.honesty_fraction!r}")
        check(number(self.alpha) and 0 <= self.alpha < 1, f"alpha must be in [0, 1), got {self.alpha!r}")
        check(number(self.imbalance_penalty) and self.imbalance_penalty >= 0,
              f"imbalance_penalty must be a finite number >= 0, got {self.imbalance_penalty!r}")
        check(integer(self.max_bins) and 2 <= self.max_bins <= MAX_BINS,
              f"max_bins must be an integer between 2 and {MAX_BINS}, got {self.max_bins!r}")
        v = self.linear_correction_variables
        if v is not None and not (isinstance(v, str) and v == "auto"):
            ok = not isinstance(v, str) and np.ndim(v) == 1 and all(
                isinstance(j, (int, np.integer)) and not isinstance(j, bool) for j in np.asarray(v, dtype=object))
            check(ok, f"linear_correction_variables must be None, 'auto' or a list of column indices, got {v!r}")
            cols = [int(j) for j in v]
            check(all(0 <= j < (j + 1 if p is None else p) for j in cols) and len(set(cols)) == len(cols),
                  f"linear_correction_variables must be distinct column indices in [0, {p or 'features'}), "
                  f"got {cols}")
        ridge = self.linear_correction_ridge
        check(isinstance(ridge, str) and ridge == "auto" or number(ridge) and ridge > 0,
              f"linear_correction_ridge must be 'auto' or a finite number > 0, got {ridge!r}")
        check(self.backend in ("auto", "numba", "torch"),
              f"backend must be 'auto', 'numba' or 'torch', got {self.backend!r}")
        check(self.progress is None or isinstance(self.progress, (bool, np.bool_)),
              f"progress must be True, False or None, got {self.progress!r}")

    def fit(self, X: Any, T: Any, y: Any, sample_weight: Any = None, groups: Any = None) -> CausalForest:
        """Grow the forest on covariates X (n, p), treatment residuals T (n,), outcome residuals y (n,).
        `groups` (one label per row, or None) keeps each group's rows together: trees draw
        whole groups, so a row is out of bag only where its group is, and the variance is the
        one of drawing groups (grf's clusters; kernels.sampling)."""
        return self.fit_shard(X, T, y, shard=0, n_shards=1, sample_weight=sample_weight, groups=groups)

    def fit_shard(self, X: Any, T: Any, y: Any, *, shard: int, n_shards: int,
                  sample_weight: Any = None, groups: Any = None) -> CausalForest:
        """Grow only shard `shard` of `n_shards` of the forest `fit` would grow: a contiguous
        range of its little-bag groups. `CausalForest.merge` joins the shards of one seed into
        the forest `fit` grows with that seed, tree for tree (how the pipeline spreads trees
        over tasks). Needs `random_state` set so every shard draws from the same seed. A fit that
        fails leaves the forest unfitted."""
        with _inputs.unfitted_on_failure(self, ("_backend", "_oob_cate")):
            return self._fit_shard(X, T, y, shard, n_shards, sample_weight, groups)

    def _fit_shard(self, X, T, y, shard, n_shards, sample_weight, groups) -> CausalForest:
        names = _inputs.feature_names(X)
        _inputs.check_same_index(X=X, T=T, y=y, sample_weight=sample_weight, groups=groups)
        X, T, y, w = self._check_fit_inputs(X, T, y, sample_weight)
        n = X.shape[0]
        if n_shards > 1 and not isinstance(self.random_state, (int, np.integer)):
            raise ValueError("fit_shard needs random_state set to an int: the shards of one forest share its seed")
        self.seed_ = _inputs.seed_from(self.random_state, 63)
        self.clusters_ = _inputs.check_groups(groups, n)
        sampler = self._sampler(n)
        problem = sampler.minimum_rows_message()
        if problem:
            raise ValueError(problem)
        groups = shard_range(sampler.n_groups, shard, n_shards, "little-bag groups",
                             "n_estimators / ci_group_size")
        device = _inputs.resolve_device(self.device)
        backend = get_backend(self.backend, device)
        binner = QuantileBinner(self.max_bins, random_state=self.seed_, n_threads=numba.get_num_threads()).fit(X)
        samples = sampler.trees(groups.start, len(groups))
        binned = binner.bin(X)
        moments = _moments(T, y, w)
        self.candidate_weights_ = self._candidate_weights(backend, binned, moments)
        which = "" if n_shards == 1 else f" (shard {int(shard) + 1}/{int(n_shards)})"  # shards run side by side
        with progress_bar(len(samples), "growing trees" + which, self.progress) as bar:
            forest = _grow(backend, binned, [moments], [samples], self._rule(X.shape[1]), bar)[0]
        if w is not None and np.isnan(forest.leaf_values).any():  # 0 / 0: an estimation half of weight 0
            raise ValueError(f"only {int((w > 0).sum())} of {n} rows have positive sample_weight, and some trees drew "
                             "none of them into their estimation half (their leaves have no data): pass more rows "
                             "of positive weight, or leave the zero-weight rows out")
        self._set_fitted(X, binner, forest, device, backend, (int(shard), int(n_shards)))
        # What merge compares: shards grown on other residuals of the same covariates bin alike.
        self.training_digest_ = _training_digest(X, T, y, w) if n_shards > 1 else None
        _inputs.set_feature_names(self, names)
        self._fit_linear_correction(X, T, y, w, samples, binned, "local linear correction" + which)
        if n_shards == 1:  # a shard's variance needs the whole forest: merge(shards, X) smooths
            self._fit_variance_smoother(X, samples)
        return self

    def _check_fit_inputs(self, X: Any, T: Any, y: Any, sample_weight: Any):
        X = _inputs.to_numpy(X, "X", 2)
        T = _inputs.to_numpy(T, "T", 1)
        y = _inputs.to_numpy(y, "y", 1)
        n = _inputs.check_same_length(X=X, T=T, y=y)
        for arr, name in ((X, "X"), (T, "T"), (y, "y")):
            _inputs.check_finite(arr, name)
        _inputs.check_moments(y, T, "y", "T", limit=100 * _inputs.MAX_LEAF_MOMENT)  # residuals: twice their input
        if n < 2:
            raise ValueError(f"X has {n} row(s); a causal forest needs at least 2 (in practice hundreds)")
        _inputs.check_has_columns(X)
        if np.ptp(T) == 0:
            raise ValueError("T is constant: the treatment must vary to estimate its effect")
        w = _inputs.check_sample_weight(sample_weight, n)
        if w is not None and np.ptp(T[w > 0]) == 0:  # zero-weight rows are not part of the data
            raise ValueError("T is constant among the rows of positive sample_weight: the treatment must vary "
                             "there to estimate its effect")
        # Centred, so that shifting T or y by a constant changes nothing: the splits and the plain
        # CATE are shift-free in exact arithmetic, but float32 leaf moments cancel far from 0, and
        # the correction's ridge shrinks the level's slopes, which a shift of T mixes with the
        # effect's (a review: a raw 0/1 treatment moved CATEs by up to 0.32, T + 10 by 0.39).
        T, y = _centred(T, w), _centred(y, w)
        self.check_params(X.shape[1])
        return X, T, y, w

    def _candidate_weights(self, backend, binned: BinnedCovariates, moments: np.ndarray) -> np.ndarray | None:
        """The weights of each node's candidate draws (`candidate_weights`): given, or from the
        importance of a pilot forest's trees, grown on the fit's own codes and moments with every
        covariate a candidate in every node (the same seed gives the same pilot, so every shard of
        one fit draws alike; only its splits are read, never its leaves), or None for uniform draws."""
        if self.candidate_weights is None:
            return None
        if not isinstance(self.candidate_weights, str):
            return np.asarray(self.candidate_weights, dtype=np.float64)
        n, p = binned.fine.shape
        trees = min(IMPORTANCE_PILOT_TREES, self.n_estimators)
        sampler = LittleBagSampler(n, trees, 1, self.max_samples, self.honest, self.honesty_fraction,
                                   (self.seed_ + 0x9E3779B97F4A7C15) % 2**63, getattr(self, "clusters_", None))
        rule = replace(self._rule(p), mtry=p, poisson_mtry=False, candidate_weights=())
        with progress_bar(trees, "pilot forest (candidate weights)", self.progress) as bar:
            pilot = _grow(backend, binned, [moments], [sampler.trees(0, sampler.n_groups)], rule, bar)[0]
        return weights_from_importance(_variable_importance(pilot, p), int(np.count_nonzero(moments[:, 0])))

    def _set_fitted(self, X: np.ndarray, binner: QuantileBinner, forest: ForestArrays, device: str, backend,
                    shard: tuple[int, int]) -> None:
        self.device_ = device
        self.n_features_in_ = X.shape[1]
        self.n_train_ = X.shape[0]
        self.binner_ = binner
        self.forest_ = forest
        self.shard_ = shard
        self.source_ = "tauforge"
        self.linear_correction_ = None
        self.variance_smoother_ = None
        # (penalty, the training covariates' digest, out-of-bag CATE), where the fit computes it
        # (_choose_linear_correction_ridge)
        self._oob_cate = None
        self._backend = backend  # kept: the torch backend caches the forest on its device

    def _fit_linear_correction(self, X: np.ndarray, T: np.ndarray, y: np.ndarray, w: np.ndarray | None,
                               samples: list[TreeSample], binned: BinnedCovariates,
                               desc: str = "local linear correction") -> None:
        """Leaf moments of the local linear correction from each tree's estimation rows. Its
        progress (as `desc`) follows the trees': at 20,000 rows it took as long as growing 500."""
        if self.linear_correction_variables is None:
            return
        weights = _row_weights(w, len(T))
        auto = isinstance(self.linear_correction_variables, str)  # 'auto'
        # A shard's penalty is chosen by merge, which sees the whole forest's out-of-bag rows.
        penalty_chosen = isinstance(self.linear_correction_ridge, str) and self.shard_[1] == 1
        # Relative costs measured at 20,000 rows x 10 covariates, 500 trees: 2.1 s and 1.7 s.
        with progress_steps(desc, {"choosing covariates": 1 if auto else 0, "leaf moments": 1,
                                   "choosing the penalty": 1 if penalty_chosen else 0}, self.progress) as steps:
            if auto:
                variables = steps.run("choosing covariates", select_variables, X, T, y, self.seed_,
                                      None if w is None else weights, getattr(self, "clusters_", None))
            else:
                variables = tuple(int(j) for j in self.linear_correction_variables)
            if auto and variables:
                bound = leaf_moment_bytes_bound(self.n_estimators, self._sampler(self.n_train_).max_estimation_rows(),
                                                self.min_samples_leaf, len(variables))
                if bound > AUTO_MAX_LEAF_MOMENT_BYTES:
                    _inputs.warn(f"linear_correction_variables='auto' chose covariates {list(variables)}, but their "
                                 f"leaf moments could take {bound / 2**30:.1f} GiB at {self.n_estimators} trees on "
                                 f"{self.n_train_} rows (more than {AUTO_MAX_LEAF_MOMENT_BYTES / 2**30:.0f} GiB): "
                                 "the correction is off. At this size its bias correction is small; pass them as "
                                 "linear_correction_variables to have it anyway")
                    variables = ()
            if not variables:
                steps.update(steps.total)
                return  # nothing to correct with: the plain forest
            self.linear_correction_ = steps.run(
                "leaf moments", LocalLinearCorrection.fit, variables, initial_ridge(self.linear_correction_ridge),
                X, T, y, weights,
                self._backend, binned.fine, self.forest_, samples)
            if penalty_chosen:
                steps.run("choosing the penalty", self._choose_linear_correction_ridge, X, T, y, weights, samples)

    def _choose_linear_correction_ridge(self, X: np.ndarray, T: np.ndarray, y: np.ndarray, w: np.ndarray,
                                        samples: Sequence[TreeSample] | None = None) -> None:
        """linear_correction_ridge='auto': the correction's `ridge` chosen from the out-of-bag
        CATE of at most SELECTION_ROWS training rows (a seeded subsample) under each penalty of
        RIDGE_PATH (`local_linear.choose_ridge`); `samples`: every tree's, when already drawn.
        Smaller penalties fit steeper local slopes: where the effect is linear in the covariates
        they remove the forest's bias, where it is flat or a step they mostly add variance, and
        which one wins depends on the design and n (docs/benchmarks.md, "The correction's penalty
        chosen out of bag")."""
        correction = self.linear_correction_
        n = X.shape[0]
        rows = np.flatnonzero(w > 0)  # rows of weight 0 carry no loss (a review: 95% of a subsample could)
        if len(rows) > SELECTION_ROWS:
            rows = np.sort(np.random.default_rng(self.seed_).choice(rows, SELECTION_ROWS, replace=False))
        in_bag = self._sampler(n).in_bag(rows, samples)
        codes = self._codes(X[rows])
        z = correction.design(X[rows])
        chunk = self._rows_per_chunk(correction, True)
        backend = self._kernels()
        taus = np.concatenate([
            local_linear_taus(backend, backend.leaf_ids(codes[lo:lo + chunk], self.forest_),
                              correction.leaf_moments, backend.asarray(z[lo:lo + chunk]), RIDGE_PATH,
                              backend.asarray(~in_bag[lo:lo + chunk]), correction.penalty_blocks)
            for lo in range(0, len(rows), chunk)])
        clusters = getattr(self, "clusters_", None)
        correction.ridge = choose_ridge(taus, T[rows], y[rows], w[rows], None if clusters is None else clusters[rows])
        if len(rows) == n:  # every training row: the chosen penalty's column is what oob_predict(X) computes
            self._oob_cate = (correction.ridge, _covariates_digest(X),
                              np.ascontiguousarray(taus[:, RIDGE_PATH.index(correction.ridge)]))

    def _fit_variance_smoother(self, X: Any, samples: Sequence[TreeSample] | None = None) -> None:
        """`variance_smoother_` from the reference rows of the training covariates X (the whole
        forest's: a variance needs every group of trees; `samples`, every tree's, when the fit
        has them drawn); None where there is no variance."""
        self.variance_smoother_ = None
        group = self._group_size()
        if not self.variance_smoothing or group < 2 or self.forest_.n_trees // group < 2:
            return
        rows = reference_rows(self.n_train_, self.seed_)
        reference = _inputs.to_numpy(X, "X", 2)[rows]
        # Out of bag: a training row's own noise sits in its leaves in half the groups, which
        # widens its in-bag intervals by 5-12% (docs/benchmarks.md); a fresh row has none.
        in_bag = self._sampler(self.n_train_).in_bag(rows, samples)
        _, parts = self._estimate(reference, with_variance=True, oob=True, parts=True, in_bag=in_bag)
        backend = self._kernels()
        ids = backend.to_numpy(backend.leaf_ids(self._codes(reference), self.forest_))
        self.variance_smoother_ = VarianceSmoother.fit(ids, parts[:, 0])

    def growth_params(self) -> dict:
        """The parameters that shape the trees, but the seed (`seed_` is the one drawn): progress
        and device do not change them. Candidate weights and correction covariates given as
        arrays come as tuples, so that two such dicts compare with ==."""
        params = {k: v for k, v in self.get_params().items() if k not in ("random_state", "progress", "device")}
        if params["candidate_weights"] is not None and not isinstance(params["candidate_weights"], str):
            params["candidate_weights"] = tuple(float(v) for v in np.ravel(params["candidate_weights"]))
        if isinstance(params["linear_correction_variables"], (list, tuple, np.ndarray)):
            params["linear_correction_variables"] = tuple(int(j) for j in params["linear_correction_variables"])
        return params

    @classmethod
    def merge(cls, shards: list[CausalForest], X: Any = None, T: Any = None, y: Any = None,
              sample_weight: Any = None) -> CausalForest:
        """The forest of all `shards` (from `fit_shard` with one seed and parameters, shard
        0..k-1 of k, in any order): predicts exactly what `fit` with that seed predicts. With
        `variance_smoothing` that needs X, the training covariates: the smoother's reference rows
        are read from it (`kernels.variance_smoothing`); without X the merged forest's variance is
        the per-point one, with a warning. With linear_correction_ridge='auto' it needs the
        training data the shards were fit on, X, T, y and sample_weight: the penalty is chosen
        on the whole forest's out-of-bag rows; without them the penalty is 0.1, with a warning."""
        if not shards:
            raise ValueError("merge needs at least one shard")
        for s in shards:
            s._check_fitted()
        foreign = {s.source_ for s in shards} - {"tauforge"}
        if foreign:
            raise ValueError(f"merge joins shards grown by fit_shard; got a forest imported from {foreign.pop()}")
        first = shards[0]
        k = first.shard_[1]
        indices = sorted(s.shard_[0] for s in shards)
        if any(s.shard_[1] != k for s in shards) or indices != list(range(k)):
            got = ", ".join(f"{i}/{n}" for i, n in sorted(s.shard_ for s in shards))
            raise ValueError(f"merge needs shards 0..{k - 1} of {k}, each once; got {got}")
        def grown_the_same(a, b) -> bool:
            return a.growth_params() == b.growth_params() and a.seed_ == b.seed_ and a.n_train_ == b.n_train_

        for s in shards[1:]:
            if not grown_the_same(s, first):
                raise ValueError("shards differ in parameters, seed or training rows; "
                                 "grow every shard with the same settings and data")
            digests = (getattr(s, "training_digest_", None), getattr(first, "training_digest_", None))
            if None not in digests and digests[0] != digests[1]:  # shards saved before 2026-12-06 have none
                raise ValueError("shards were grown on different data (covariates, T, y or sample_weight): grow "
                                 "every shard on the same rows")
            if not all(np.array_equal(a, b) for a, b in zip(s.binner_.to_arrays().values(),
                                                             first.binner_.to_arrays().values())):
                raise ValueError("shards were binned differently: grow every shard on the same covariates")
            if not _same_optional_arrays(s.clusters_, first.clusters_):
                raise ValueError("shards were grown with different groups: pass every shard the same groups")
            if not _same_optional_arrays(getattr(s, "candidate_weights_", None),
                                         getattr(first, "candidate_weights_", None)):
                raise ValueError("shards drew their candidate features with different weights: grow every shard "
                                 "with the same candidate_weights and data")
            names = [getattr(x, "feature_names_in_", None) for x in (s, first)]
            if not (names[0] is None and names[1] is None or names[0] is not None and names[1] is not None
                    and list(names[0]) == list(names[1])):
                raise ValueError("shards were grown on covariates named differently: fit every shard on the "
                                 "same DataFrame columns, in the same order")
            if not LocalLinearCorrection.same_fit(s.linear_correction_, first.linear_correction_):
                raise ValueError("shards have different local linear corrections (covariates, standardization or "
                                 "penalty): grow every shard with the same settings and data")
        ordered = sorted(shards, key=lambda s: s.shard_[0])
        merged = cls(**first.get_params())
        merged.device_, merged.seed_ = first.device_, first.seed_
        merged.n_features_in_, merged.n_train_ = first.n_features_in_, first.n_train_
        merged.binner_ = first.binner_
        merged.clusters_ = first.clusters_
        merged.candidate_weights_ = getattr(first, "candidate_weights_", None)
        _inputs.set_feature_names(merged, getattr(first, "feature_names_in_", None))
        merged.forest_ = ForestArrays.merge([s.forest_ for s in ordered])
        merged.shard_ = (0, 1)
        merged.training_digest_ = None
        merged.source_ = "tauforge"
        parts = [s.linear_correction_ for s in ordered]
        merged.linear_correction_ = None if parts[0] is None else LocalLinearCorrection.merge(parts)
        merged.variance_smoother_ = None
        merged._oob_cate = getattr(first, "_oob_cate", None) if k == 1 else None  # k > 1: set below
        Xn = None
        if X is not None:
            Xn = _inputs.to_numpy(X, "X", 2)
            if Xn.shape != (merged.n_train_, merged.n_features_in_):
                raise ValueError(f"merge needs X, the shards' training covariates ({merged.n_train_} rows x "
                                 f"{merged.n_features_in_} columns); got {Xn.shape[0]} x {Xn.shape[1]}")
            _inputs.check_finite(Xn, "X")
        if k > 1 and merged.linear_correction_ is not None and isinstance(merged.linear_correction_ridge, str):
            if Xn is None or T is None or y is None:
                _inputs.warn("merge without the training data (X, T, y) cannot choose the local linear correction's "
                             f"penalty (linear_correction_ridge='auto'): it stays {DEFAULT_RIDGE}; pass X=, T=, y= "
                             "(and sample_weight=) to merge")
            else:
                _, Tn, yn, w = merged._check_fit_inputs(Xn, T, y, sample_weight)
                digest = getattr(first, "training_digest_", None)  # None: shards saved before 2026-12-06
                if digest is not None and _training_digest(Xn, Tn, yn, w) != digest:
                    raise ValueError("merge was given other data than the shards were grown on (X, T, y or "
                                     "sample_weight): pass the rows every shard was fit on")
                merged._choose_linear_correction_ridge(Xn, Tn, yn, _row_weights(w, len(Tn)))
        if k == 1 and getattr(first, "variance_smoother_", None) is not None:
            merged.variance_smoother_ = first.variance_smoother_  # fit as a whole: already smoothed
        elif Xn is not None:
            merged._fit_variance_smoother(Xn)
        elif merged.variance_smoothing and merged._group_size() >= 2:
            _inputs.warn("merge without X, the training covariates, cannot smooth the variance "
                         "(variance_smoothing=True): the merged forest's intervals use the per-point variance; pass "
                         "X=... to merge")
        return merged

    def _group_size(self) -> int:
        """Trees per little bag: `ci_group_size` with 'auto' resolved (kernels.sampling)."""
        return resolve_group_size(self.ci_group_size, self.n_estimators)

    def _sampler(self, n: int) -> LittleBagSampler:
        return LittleBagSampler(n, self.n_estimators, self._group_size(), self.max_samples, self.honest,
                                self.honesty_fraction, self.seed_, getattr(self, "clusters_", None))

    def _rule(self, p: int) -> SplitRule:
        weights = getattr(self, "candidate_weights_", None)
        mtry = self.mtry if self.mtry is not None else p if weights is None else weighted_mtry(p)
        return SplitRule(min_samples_leaf=float(self.min_samples_leaf), alpha=float(self.alpha),
                         imbalance_penalty=float(self.imbalance_penalty),
                         max_depth=int(self.max_depth) if self.max_depth is not None else 2**31 - 1, mtry=int(mtry),
                         poisson_mtry=bool(self.poisson_mtry),
                         candidate_weights=() if weights is None else tuple(float(v) for v in weights))

    # -------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "forest_"):
            raise NotFittedError("this CausalForest is not fitted yet; call fit(X, T, y) first")

    def _codes(self, X: Any) -> np.ndarray:
        Xn = _inputs.to_numpy(X, "X", 2)
        _inputs.check_columns(X, Xn, self.n_features_in_, getattr(self, "feature_names_in_", None), "the forest")
        _inputs.check_finite(Xn, "X")
        return np.ascontiguousarray(self.binner_.transform(Xn))

    def _estimate(self, X: Any, with_variance: bool, oob: bool = False, monte_carlo: bool = False,
                  parts: bool = False, in_bag: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """CATE and, `with_variance`, its variance: smoothed (`variance_smoother_`) unless out of
        bag or Monte-Carlo. With `parts` the variance before debiasing, (rows, 2) (the smoother's
        references; no warning). Out of bag, X holds the training rows (all of them, or those
        whose trees `in_bag` gives: the sampler's `in_bag(rows)`)."""
        self._check_fitted()
        group = self._group_size()
        if with_variance and group < 2 and not monte_carlo:
            why = (f"ci_group_size='auto' grows single trees for an odd n_estimators ({self.n_estimators})"
                   if self.ci_group_size == "auto" else "this forest has ci_group_size=1")
            raise ValueError(f"variance needs little bags of at least 2 trees; {why}: refit with an even n_estimators "
                             "and ci_group_size='auto' (the default)")
        if monte_carlo and self.forest_.n_trees // group < 2:
            raise ValueError(f"the Monte-Carlo variance needs at least 2 groups of trees, this forest has "
                             f"{self.forest_.n_trees // group}")
        if with_variance and not (monte_carlo or parts) and self.forest_.n_trees < MIN_INTERVAL_TREES:
            _inputs.warn(f"intervals from {self.forest_.n_trees} trees (in groups of {group}) have noisy widths; "
                         f"grow at least {MIN_INTERVAL_TREES} trees (n_estimators) for intervals")
        codes = self._codes(X)
        if oob and codes.shape[0] != (self.n_train_ if in_bag is None else len(in_bag)):
            raise ValueError(f"oob_predict needs the training covariates ({self.n_train_} rows), "
                             f"got {codes.shape[0]} rows")
        correction = getattr(self, "linear_correction_", None)
        Xn = _inputs.to_numpy(X, "X", 2) if correction is not None else None
        if oob and in_bag is None and not with_variance and (kept := self._kept_oob_cate(Xn)) is not None:
            return kept, None
        if oob:
            self._check_whole("out-of-bag prediction")
            in_bag = self._sampler(self.n_train_).in_bag() if in_bag is None else in_bag
        else:
            in_bag = None
        backend = self._kernels()
        if correction is not None:
            z = correction.design(Xn)
        chunk = self._rows_per_chunk(correction, in_bag is not None)
        smoother = None if (oob or monte_carlo or parts) else getattr(self, "variance_smoother_", None)
        parts = parts or smoother is not None
        taus, variances = [], []
        for lo in range(0, codes.shape[0], chunk):
            ids = backend.leaf_ids(codes[lo:lo + chunk], self.forest_)
            valid = None if in_bag is None else backend.asarray(~in_bag[lo:lo + chunk])  # out-of-bag trees
            if correction is not None:
                tau, var = local_linear_estimate(backend, ids, correction.leaf_moments,
                                                 backend.asarray(z[lo:lo + chunk]), correction.ridge, group, valid,
                                                 with_variance, monte_carlo, correction.penalty_blocks, parts)
            else:
                tau, var = backend.estimate(ids, self.forest_, group, with_variance, valid, monte_carlo, parts)
            taus.append(backend.to_numpy(tau))
            if var is not None:
                var = backend.to_numpy(var)
                if smoother is not None:  # the unbiased estimate smoothed, then debiased with the row's own error
                    smoothed = smoother.smooth(backend, ids, var[:, 0], self.forest_.leaf_offsets)
                    var = posterior_mean_variance(smoothed, var[:, 1])
                variances.append(var)
        tau = np.concatenate(taus) if taus else np.empty(0)
        if not with_variance:
            return tau, None
        return tau, (np.concatenate(variances) if variances else np.empty(0))

    def _kernels(self):
        """The backend of the forest's device (kept: the torch backend caches the forest there)."""
        if getattr(self, "_backend", None) is None:
            self._backend = get_backend(self.backend, self.device_)
        return self._backend

    def _rows_per_chunk(self, correction: LocalLinearCorrection | None, out_of_bag: bool) -> int:
        """Rows whose leaves in every tree are walked at once: the correction's moments gathered
        per row and tree, or the leaf ids alone where numba reads the leaves without gathering."""
        if correction is not None:
            budget = _GATHERED_PER_CHUNK * 4 // n_moments(len(correction.variables))
        else:
            budget = (LEAF_IDS_PER_CHUNK if self._kernels().name == "numba" and not out_of_bag
                      else _GATHERED_PER_CHUNK)
        return max(1, budget // self.forest_.n_trees)

    def predict(self, X: Any) -> Any:
        """CATE tau(x) for each row of X, as an array of the input's kind (NumPy, torch, CuPy)."""
        tau, _ = self._estimate(X, with_variance=False)
        return _inputs.as_output(tau, _inputs.array_kind(X))

    def predict_and_var(self, X: Any) -> tuple[Any, Any]:
        """CATE and its variance (bootstrap of little bags) for each row of X."""
        tau, var = self._estimate(X, with_variance=True)
        kind = _inputs.array_kind(X)
        return _inputs.as_output(tau, kind), _inputs.as_output(var, kind)

    def predict_and_monte_carlo_var(self, X: Any) -> tuple[Any, Any]:
        """CATE and the Monte-Carlo variance of this finite forest's CATE about the CATE of
        infinitely many trees grown on the same data (`kernels.prediction.monte_carlo_variance`,
        from the spread of its groups of trees): the noise a forest of few trees adds, which the
        full bootstrap subtracts from the spread of its replicates. Works with groups of one tree."""
        tau, var = self._estimate(X, with_variance=True, monte_carlo=True)
        kind = _inputs.array_kind(X)
        return _inputs.as_output(tau, kind), _inputs.as_output(var, kind)

    def predict_interval(self, X: Any, alpha: float = 0.05) -> tuple[Any, Any]:
        """Pointwise (1 - alpha) normal confidence interval (lower, upper) of the CATE."""
        _, lower, upper = self.predict_with_interval(X, alpha)
        return lower, upper

    def predict_with_interval(self, X: Any, alpha: float = 0.05) -> tuple[Any, Any, Any]:
        """CATE and its pointwise (1 - alpha) normal interval, (tau, lower, upper), in one pass."""
        _inputs.check_alpha(alpha)
        tau, var = self._estimate(X, with_variance=True)
        half = norm.ppf(1 - alpha / 2) * np.sqrt(var)
        kind = _inputs.array_kind(X)
        return (_inputs.as_output(tau, kind), _inputs.as_output(tau - half, kind),
                _inputs.as_output(tau + half, kind))

    def _check_whole(self, what: str) -> None:
        if self.source_ != "tauforge":
            raise ValueError(f"{what} is not available on a forest imported from {self.source_}: "
                             "its subsamples are not ours to regenerate")
        if getattr(self, "shard_", (0, 1))[1] != 1:
            raise ValueError(f"{what} needs the whole forest, but this is shard {self.shard_[0]} of "
                             f"{self.shard_[1]}; join the shards with CausalForest.merge first")

    def _kept_oob_cate(self, Xn: np.ndarray | None) -> np.ndarray | None:
        """The out-of-bag CATE the fit kept (`_choose_linear_correction_ridge`), if it was kept
        for the correction's penalty and `Xn` are the training rows themselves (a review: other
        rows of the same count, a test set or the training rows shuffled, got the training rows'
        values); else None. `Xn`: the rows as float64 (None without a correction)."""
        kept = getattr(self, "_oob_cate", None)  # (penalty, the covariates' digest, values)
        correction = getattr(self, "linear_correction_", None)
        if kept is None or correction is None or len(kept) != 3 or kept[0] != correction.ridge \
                or kept[1] != _covariates_digest(Xn):
            return None
        return kept[2].copy()

    def oob_predict(self, X: Any) -> Any:
        """Out-of-bag CATE for the training rows X: each row uses only trees that never saw it
        (NaN for a row that every tree saw, which takes very few trees). A fit that chose the
        correction's penalty over every training row (linear_correction_ridge='auto', at most
        SELECTION_ROWS rows of positive weight) computed them already and kept them: they are
        returned without walking the trees again (the same numbers; the ATE, the refuters and the
        pipeline's estimate step ask for them right after the fit, and at 20,000 rows the walk
        took 15% of a CausalForestDML fit)."""
        tau, _ = self._estimate(X, with_variance=False, oob=True)
        return _inputs.as_output(tau, _inputs.array_kind(X))

    def oob_predict_and_var(self, X: Any) -> tuple[Any, Any]:
        """Out-of-bag CATE and variance (groups whose trees all exclude the row; NaN if none)."""
        tau, var = self._estimate(X, with_variance=True, oob=True)
        kind = _inputs.array_kind(X)
        return _inputs.as_output(tau, kind), _inputs.as_output(var, kind)

    def feature_importances(self, max_depth: int = 4, depth_decay_exponent: float = 2.0) -> np.ndarray:
        """grf's `variable_importance`: per covariate, the share of the splits at each depth
        1..`max_depth` that split on it, averaged over the depths with weights depth^-exponent
        (the root's splits count most). Sums to 1 when the trees split at every depth up to
        `max_depth`; a depth without splits counts as none (as in grf)."""
        self._check_fitted()
        if not (isinstance(max_depth, (int, np.integer)) and max_depth >= 1):
            raise ValueError(f"max_depth must be a positive integer, got {max_depth!r}")
        return _variable_importance(self.forest_, self.n_features_in_, max_depth, depth_decay_exponent)

    # ------------------------------------------------------------ save/load
    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted forest as arrays plus JSON (no pickle), checksummed."""
        self._check_fitted()
        forest_arrays, encoding = forest_codec.encode(self.forest_)
        arrays = {**forest_arrays, **self.binner_.to_arrays()}
        correction = getattr(self, "linear_correction_", None)
        if correction is not None:
            arrays.update(correction.to_arrays())
        clusters = getattr(self, "clusters_", None)
        if clusters is not None:
            arrays["clusters"] = clusters
        smoother = getattr(self, "variance_smoother_", None)
        if smoother is not None:
            arrays.update(smoother.to_arrays())
        # How a fit was shown (progress) is no part of the model. NumPy scalars are written as the
        # numbers they hold, and a RandomState or Generator as the seed it gave (a review: save
        # failed on np.int64(0), which fit takes).
        params = {k: (str(v) if k == "device" else _inputs.plain(v) if np.ndim(v) == 0 else v)
                  for k, v in self.get_params().items() if k != "progress"}
        if not (params["random_state"] is None or isinstance(params["random_state"], int)):
            params["random_state"] = self.seed_
        if isinstance(params["linear_correction_variables"], (list, tuple, np.ndarray)):
            params["linear_correction_variables"] = [int(j) for j in params["linear_correction_variables"]]
        names = getattr(self, "feature_names_in_", None)
        # An older reader builds CausalForest(**params): each parameter is written only in the format
        # that introduced it (variance_smoothing in 7, candidate_weights in 8), which that reader refuses.
        smoothing = bool(params.pop("variance_smoothing", False))
        weighting = params.pop("candidate_weights", None)
        if weighting is not None and not isinstance(weighting, str):
            weighting = [float(v) for v in weighting]
        weights = getattr(self, "candidate_weights_", None)
        version = (FORMAT_VERSION if isinstance(params["linear_correction_ridge"], str)
                   else WEIGHTS_FORMAT_VERSION if weighting is not None or weights is not None
                   else SMOOTHING_FORMAT_VERSION if smoothing or smoother is not None
                   else CLUSTERS_FORMAT_VERSION if clusters is not None
                   else PLAIN_FORMAT_VERSION if correction is None
                   else PENALTY_BLOCKS_FORMAT_VERSION if correction.penalty_blocks else ONE_TRACE_FORMAT_VERSION)
        if version >= SMOOTHING_FORMAT_VERSION:
            params["variance_smoothing"] = smoothing
        if version >= WEIGHTS_FORMAT_VERSION:
            params["candidate_weights"] = weighting
        meta = {"format": FORMAT, "format_version": version, "params": params, "seed": self.seed_,
                "n_features_in": self.n_features_in_, "n_train": self.n_train_,
                "max_depth_grown": self.forest_.max_depth, "device": str(self.device_),
                "shard": list(getattr(self, "shard_", (0, 1))), "source": self.source_,
                "forest_encoding": encoding,
                "linear_correction": None if correction is None else correction.to_json()}
        if version >= SMOOTHING_FORMAT_VERSION:
            meta["variance_smoother"] = smoother is not None
        if version >= WEIGHTS_FORMAT_VERSION:
            meta["candidate_weights"] = None if weights is None else [float(v) for v in weights]
        if names is not None:  # a DataFrame's columns: the loaded forest refuses them reordered, as this one does
            meta["feature_names"] = [str(c) for c in names]
        if getattr(self, "training_digest_", None) is not None:
            meta["training_digest"] = self.training_digest_
        save_model(path, arrays, meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> CausalForest:
        """Load a forest written by `save`; raises ValueError if any file fails its checksum."""
        arrays, meta = load_model(path, FORMAT)
        if meta.get("format_version", 1) > FORMAT_VERSION:
            raise ValueError(f"{path} was saved by a newer tauforge (forest format {meta['format_version']}, this "
                             f"version reads up to {FORMAT_VERSION}); upgrade tauforge to load it")
        params = dict(meta["params"])
        params.setdefault("variance_smoothing", False)  # saved before format 7: the per-point variance
        params.setdefault("candidate_weights", None)  # before format 8: candidates drawn uniformly
        if device is not None:
            params["device"] = device
        forest = cls(**params)
        forest.seed_ = meta["seed"]
        forest.n_features_in_ = meta["n_features_in"]
        forest.n_train_ = meta["n_train"]
        forest.device_ = _inputs.resolve_device(forest.device)
        forest.binner_ = QuantileBinner.from_arrays(arrays, forest.max_bins)
        if meta.get("format_version", 1) >= 3:
            forest.forest_ = forest_codec.decode(arrays, meta.get("forest_encoding"), meta["max_depth_grown"])
        else:
            forest.forest_ = ForestArrays.from_arrays(arrays, meta["max_depth_grown"])
        if forest.forest_.feature.max(initial=-1) >= forest.n_features_in_:
            raise ValueError(f"{path}: a split uses feature {int(forest.forest_.feature.max())}, but the forest "
                             f"has {forest.n_features_in_} features")
        if len(forest.binner_.fine_edges_) != forest.n_features_in_:
            raise ValueError(f"{path}: the binner has {len(forest.binner_.fine_edges_)} features, the forest "
                             f"{forest.n_features_in_}")
        forest.shard_ = tuple(meta.get("shard", (0, 1)))
        forest.training_digest_ = meta.get("training_digest")
        forest.clusters_ = arrays.get("clusters")
        if forest.clusters_ is not None and len(forest.clusters_) != forest.n_train_:
            raise ValueError(f"{path}: {len(forest.clusters_)} group codes for {forest.n_train_} training rows")
        forest.source_ = meta.get("source", "tauforge")
        names = meta.get("feature_names")
        if names is not None and len(names) != forest.n_features_in_:
            raise ValueError(f"{path}: {len(names)} feature names for {forest.n_features_in_} features")
        _inputs.set_feature_names(forest, None if names is None else np.asarray(names, dtype=object))
        saved = meta.get("linear_correction")
        forest.linear_correction_ = (None if saved is None else
                                     LocalLinearCorrection.from_saved(saved, arrays, len(forest.forest_.leaf_values)))
        if meta.get("format_version", 1) >= WEIGHTS_FORMAT_VERSION and "candidate_weights" not in meta:
            raise ValueError(f"{path}: the metadata of a format-{meta['format_version']} forest has no "
                             "candidate_weights (None for uniform draws): it is damaged")
        forest.candidate_weights_ = _saved_candidate_weights(meta.get("candidate_weights"), forest.n_features_in_, path)
        forest.variance_smoother_ = None
        if meta.get("format_version", 1) >= SMOOTHING_FORMAT_VERSION:
            try:
                forest.variance_smoother_ = VarianceSmoother.from_arrays(arrays, len(forest.forest_.leaf_values))
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            if forest.variance_smoother_ is None and meta.get("variance_smoother", True):
                raise ValueError(f"{path}: the metadata says the forest has a variance smoother, but its arrays are "
                                 "missing")
        return forest


def _variable_importance(forest: ForestArrays, n_features: int, max_depth: int = 4,
                         depth_decay_exponent: float = 2.0) -> np.ndarray:
    """grf's variable importance of `forest`'s trees (`CausalForest.feature_importances`)."""
    nodes, total, weights = forest.roots, np.zeros(n_features), 0.0
    for depth in range(1, max_depth + 1):
        feature = forest.feature[nodes].astype(np.int64)  # this depth's nodes only, not the whole forest's
        splits = nodes[feature >= 0]
        weight = depth ** -float(depth_decay_exponent)
        total += weight * np.bincount(feature[feature >= 0], minlength=n_features) / max(len(splits), 1)
        weights += weight
        nodes = np.concatenate([forest.child[splits], forest.child[splits] + 1])  # children are adjacent
    return total / weights


def _usable_weights(weights: np.ndarray) -> bool:
    """Candidate weights a node can draw from: finite, >= 0, some > 0, and a finite sum (the draw
    scales by it: a sum past the largest float sent every draw to the last covariate)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(weights).all() and (weights >= 0).all() and 0 < weights.sum() < np.inf)


def _saved_candidate_weights(saved: Any, n_features: int, path: Any) -> np.ndarray | None:
    """A saved forest's `candidate_weights_` (None: drawn uniformly), refused unless one finite
    weight >= 0 per feature, some > 0."""
    if saved is None:
        return None
    ok = isinstance(saved, list) and len(saved) == n_features and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in saved)
    weights = np.asarray(saved, dtype=np.float64) if ok else None
    if weights is None or not _usable_weights(weights):
        raise ValueError(f"{path}: candidate_weights must be one finite weight >= 0 per feature ({n_features}), "
                         "some > 0")
    return weights


def _training_digest(X: np.ndarray, T: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> str:
    """sha256 of a shard's training arrays, read in place (0.15 s for 1e6 x 30 here)."""
    digest = hashlib.sha256()
    for a in (X, T, y, np.zeros(0) if w is None else w):
        digest.update(np.ascontiguousarray(a, dtype=np.float64).data)
        digest.update(str(np.shape(a)).encode())
    return digest.hexdigest()


def _centred(v: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """v less its (weighted) mean, rounded to a power of two 2^-10 of v's standard deviation: a
    treatment of few values keeps values whose squares float32 holds exactly. So a shift of v on
    that grid (whole numbers, halves) changes nothing at all, and any other leaves v within
    2^-11 standard deviations of where it was."""
    mean = np.average(v, weights=w)
    sd = math.sqrt(np.average((v - mean) ** 2, weights=w))
    if sd == 0 or not math.isfinite(sd):  # a constant outcome: exactly 0 once centred
        return v - mean
    step = 2.0 ** (math.floor(math.log2(sd)) - 10)
    return v - round(mean / step) * step


def _covariates_digest(X: np.ndarray) -> str:
    """sha256 of covariates as float64: which rows a kept out-of-bag CATE belongs to."""
    return _training_digest(X, np.zeros(0), np.zeros(0), None)


def _same_optional_arrays(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


# The growth parameters: every parameter of CausalForest but the seed and the progress display.
# What CausalForestDML passes through to its forest, and what a pipeline run may set.
FOREST_PARAMS = tuple(name for name in inspect.signature(CausalForest.__init__).parameters
                      if name not in ("self", "random_state", "progress"))


def fit_forests(forests: list[CausalForest], X: Any, targets: list[tuple[Any, Any, Any]],
                binner: QuantileBinner, binned: BinnedCovariates | None = None,
                progress: bool | None = None, groups: Any = None) -> list[CausalForest]:
    """Fit `forests[i]` on (X, *targets[i]), a target being (T, y, sample_weight), growing the
    trees of all of them in the same backend calls: how bootstrap replicates are batched on a
    device. The forests differ only in `random_state`; they share `binner` (fitted on X) and its
    codes of X, `binned` (computed when not given: pass them to bin X once for many calls), and
    `groups`. Each equals `forests[i].fit(X, T, y, sample_weight, groups)` whenever that fit bins
    X the same way (always below QuantileBinner's 200,000-row subsample, for the same max_bins).

    The rows are stacked, one copy of X's codes and moments per forest (trees index their own
    copy), so a batch costs (3 p + 40) bytes a row per forest: keep batches within memory
    (`forests_per_batch`)."""
    if not forests:
        return []
    first = forests[0]
    if len(targets) != len(forests):
        raise ValueError(f"fit_forests needs one (T, y, sample_weight) per forest: {len(forests)} forests, "
                         f"{len(targets)} targets")
    if any((f.growth_params(), f.device, f.progress) != (first.growth_params(), first.device, first.progress)
           for f in forests):
        raise ValueError("fit_forests grows forests that differ only in random_state")
    if any(f.random_state is None for f in forests):
        raise ValueError("fit_forests needs random_state set on every forest")
    if isinstance(first.candidate_weights, str):
        raise ValueError("fit_forests grows forests of fixed candidate weights: pass candidate_weights as weights "
                         "(a fitted forest's candidate_weights_) or None, not 'importance', which needs a pilot "
                         "forest per fit")
    checked = [f._check_fit_inputs(X, T, y, w) for f, (T, y, w) in zip(forests, targets)]
    X = checked[0][0]
    n = X.shape[0]
    clusters = _inputs.check_groups(groups, n)
    samples = []
    for r, f in enumerate(forests):
        f.seed_ = int(f.random_state)
        f.clusters_ = clusters
        f.candidate_weights_ = (None if f.candidate_weights is None  # given, never 'importance' (above)
                                else np.asarray(f.candidate_weights, dtype=np.float64))
        sampler = f._sampler(n)
        problem = sampler.minimum_rows_message()
        if problem:
            raise ValueError(problem)
        # Forest r's trees index its copy of the rows, r * n onwards.
        samples.append([TreeSample(t.structure + np.int32(r * n), t.estimation + np.int32(r * n), t.key)
                        for t in sampler.trees(0, sampler.n_groups)])
    device = _inputs.resolve_device(first.device)
    backend = get_backend(first.backend, device)
    binned = binner.bin(X) if binned is None else binned
    stacked = binned if len(forests) == 1 else BinnedCovariates(
        np.tile(binned.fine, (len(forests), 1)), np.tile(binned.coarse, (len(forests), 1)), binned.n_bins,
        binned.coarse_thr, binned.max_bins)
    moments = [_moments(T, y, w) for _, T, y, w in checked]
    with progress_bar(sum(map(len, samples)), "growing trees", progress) as bar:
        grown = _grow(backend, stacked, moments, samples, first._rule(X.shape[1]), bar)
    for r, (f, forest, tree_samples, (_, T, y, w)) in enumerate(zip(forests, grown, samples, checked)):
        f._set_fitted(X, binner, forest, device, backend, (0, 1))
        unstacked = [TreeSample(t.structure - np.int32(r * n), t.estimation - np.int32(r * n), t.key)
                     for t in tree_samples]
        f._fit_linear_correction(X, T, y, w, unstacked, binned)
        f._fit_variance_smoother(X, unstacked)
    return forests


# Memory for one batch of stacked forests (fit_forests): codes and moments of every copy of the rows.
_STACKED_BYTES = 1 << 30


def forests_per_batch(n_rows: int, n_features: int, n_forests: int, backend: str) -> int:
    """How many forests `fit_forests` should grow at once: one on the numba backend, whose
    grower already keeps every core busy within one forest (measured: stacking copies of the
    rows only costs memory there), else as many as fit in 1 GiB of stacked rows."""
    if backend == "numba":
        return 1
    per_forest = n_rows * (3 * n_features + 40)
    return int(max(1, min(n_forests, _STACKED_BYTES // max(per_forest, 1))))


def _moments(T: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The five weighted moment channels (w, w t, w y, w t y, w t^2) the split rule sums."""
    w = _row_weights(w, len(T))
    return np.ascontiguousarray(np.stack([w, w * T, w * y, w * T * y, w * T * T], axis=1))


def _row_weights(w: np.ndarray | None, n: int) -> np.ndarray:
    """The rows' weights as the forest sums them: quantized, so that sums are exact in any order
    (kernels.splitting); ones without sample_weight."""
    return np.ones(n) if w is None else quantize_weights(w)


def _grow(backend, binned: BinnedCovariates, moments: list[np.ndarray], samples: list[Sequence[TreeSample]],
          rule: SplitRule, bar) -> list[ForestArrays]:
    """One forest per sequence of `samples` (one per moments array, rows stacked in that order),
    grown in backend calls of `_trees_per_batch` trees. Each call's trees are compacted into
    forest arrays at once (a grown tree's arrays are about 3x its compact ones), and samples are
    read as they are needed (at 1e6 rows and 2,000 trees both held whole would take 8 GB), the
    next call's on a thread of their own while the backend grows, not between calls with the
    cores idle (drawing takes about 2 ms a tree at 1e5 rows, 4% of growing it)."""
    mom = moments[0] if len(moments) == 1 else np.concatenate(moments)
    per_call = _trees_per_batch(backend.name, len(moments[0]))
    parts: list[list[ForestArrays]] = [[] for _ in samples]

    def batches():
        batch, owner = [], []
        for r, tree_samples in enumerate(samples):
            for sample in tree_samples:
                batch.append(sample)
                owner.append(r)
                if len(batch) == per_call:
                    yield batch, owner
                    batch, owner = [], []
        if batch:
            yield batch, owner

    owners: deque[list[int]] = deque()  # the forest of each tree of the batches drawn, in order

    def drawn_ahead():
        """The batches' samples, each drawn on a thread while the one before it is taken."""
        drawn = batches()
        with ThreadPoolExecutor(1, thread_name_prefix="tauforge-samples") as drawing:
            upcoming = drawing.submit(next, drawn, None)
            while (current := upcoming.result()) is not None:
                upcoming = drawing.submit(next, drawn, None)
                batch, owner = current
                owners.append(owner)
                yield batch

    for grown in backend.grow_batches(binned, mom, drawn_ahead(), rule):
        owner = owners.popleft()
        for r in dict.fromkeys(owner):
            parts[r].append(ForestArrays.from_trees([t for t, o in zip(grown, owner) if o == r]))
        del grown
        release_free_heap()
        bar.update(len(owner))
    return [ForestArrays.merge(p) for p in parts]


def _trees_per_batch(backend: str, n_rows: int) -> int:
    """Trees grown per backend call: enough to keep every numba thread busy and the progress bar
    moving; on torch, few enough that a level's samples fit the device."""
    if backend == "numba":
        return max(16, 8 * numba.get_num_threads())
    return max(1, int(4e6 // max(n_rows, 1)))
