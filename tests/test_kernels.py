"""Both backends against the plain NumPy reference: same trees, same leaves, same traversal."""

import numpy as np
import pytest
import torch
from conftest import cuda
from reference_tree import grow_reference_tree

from tauforge.kernels import sampling
from tauforge.kernels.backends import NumbaBackend, TorchBackend
from tauforge.kernels.backends.torch_level import TorchLevelGrower
from tauforge.kernels.binning import QuantileBinner
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.forest_arrays import ForestArrays
from tauforge.kernels.prediction import forest_estimate
from tauforge.kernels.sampling import LittleBagSampler
from tauforge.kernels.splitting import SplitRule, quantize_weights


def _problem(n, p=4, seed=0, weights=False, max_bins=256, design="simple", honesty_fraction=0.5):
    d = make_causal_data(design, n=n, p=p, seed=seed)
    t, y = d.T - d.e, d.Y - d.m
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 2.0, n) if weights else np.ones(n)
    w = quantize_weights(w)
    data = QuantileBinner(max_bins).fit(d.X).bin(d.X)
    mom = np.ascontiguousarray(np.stack([w, w * t, w * y, w * t * y, w * t * t], axis=1))
    sampler = LittleBagSampler(n, 4, 2, 0.45, True, honesty_fraction, seed)
    return data, mom, sampler.trees(0, 2)


def test_binning_codes_count_the_edges_below_on_any_number_of_threads():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=70_000),  # more distinct values than fine bins: quantile edges
                         rng.integers(0, 7, 70_000).astype(float), rng.uniform(size=70_000)])
    one, two = QuantileBinner(random_state=0).fit(X), QuantileBinner(random_state=0, n_threads=2).fit(X)
    for a, b in zip(one.fine_edges_ + one.coarse_last_fine_, two.fine_edges_ + two.coarse_last_fine_):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.fine_edges_[1], np.arange(6) + 0.5)  # midpoints of the distinct values
    assert len(one.fine_edges_[0]) < 65536 and np.all(np.diff(one.fine_edges_[0]) > 0)
    codes = two.transform(X)
    for j, edges in enumerate(one.fine_edges_):  # fine(x) = the number of fine edges strictly below x
        np.testing.assert_array_equal(codes[:2000, j], (edges[None, :] < X[:2000, j, None]).sum(axis=1))


def test_distinct_values_get_distinct_codes_however_close_or_large():
    # A review: the midpoint of two values an ulp apart rounds onto one of them (the two shared a
    # code in 513 of 1,000 random pairs), and past 9e307 it overflowed to inf.
    rng = np.random.default_rng(0)
    low = rng.uniform(-1e3, 1e3, size=1000)
    pairs = [(a, np.nextafter(a, np.inf)) for a in low] + [(1e308, 1.7e308), (5e-324, 1e-323), (-1.7e308, -1e308)]
    for lo, hi in pairs:
        binner = QuantileBinner().fit(np.array([[lo], [hi]]))
        assert np.isfinite(binner.fine_edges_[0]).all()
        codes = binner.transform(np.array([[lo], [hi]]))[:, 0]
        assert codes[0] != codes[1], (lo, hi)


def _assert_same_trees(a, b):
    assert len(a) == len(b)
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(ta.feature, tb.feature)
        np.testing.assert_array_equal(ta.threshold, tb.threshold)
        np.testing.assert_array_equal(ta.child, tb.child)
        np.testing.assert_allclose(ta.leaf_values, tb.leaf_values, rtol=1e-10, atol=1e-12)


RULES = [
    SplitRule(min_samples_leaf=5, alpha=0.05, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=4),
    SplitRule(min_samples_leaf=3, alpha=0.2, imbalance_penalty=0.5, max_depth=4, mtry=2),
    SplitRule(min_samples_leaf=2, alpha=0.0, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=2, poisson_mtry=True),
    # A fractional minimum: the fine sweep skips candidates by ceil(2 min_samples_leaf) rows.
    SplitRule(min_samples_leaf=2.5, alpha=0.05, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=4),
    # Weighted candidates, one feature never drawn (weight 0).
    SplitRule(min_samples_leaf=3, alpha=0.05, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=2,
              candidate_weights=(3.0, 0.0, 1.0, 0.5)),
]
NO_WEIGHTS = np.zeros(0)


def _reference_trees(data, mom, trees, rule):
    return [grow_reference_tree(data, mom, t.structure, t.estimation, t.key, rule.min_samples_leaf, rule.alpha,
                                rule.imbalance_penalty, rule.max_depth, rule.mtry, rule.poisson_mtry,
                                rule.cumulative_weights()) for t in trees]


@pytest.mark.parametrize("rule", RULES, ids=["defaults", "constrained", "poisson-mtry", "fractional-leaf",
                                             "candidate-weights"])
@pytest.mark.parametrize("weights", [False, True], ids=["unweighted", "weighted"])
def test_backends_match_reference(rule, weights):
    # n=1200: roots hold ~540 rows, so every node splits on fine codes (under SMALL_NODE_ROWS);
    # coarse histograms and moved rows are checked by the test below.
    data, mom, trees = _problem(1200, weights=weights, max_bins=32)
    ref = _reference_trees(data, mom, trees, rule)
    assert all(len(t.feature) > 15 for t in ref), "trees should be non-trivial"
    _assert_same_trees(NumbaBackend().grow(data, mom, trees, rule), ref)
    _assert_same_trees(NumbaBackend(move_rows_bytes=0).grow(data, mom, trees, rule), ref)  # rows moved, not indexed
    _assert_same_trees(TorchBackend(torch.device("cpu")).grow(data, mom, trees, rule), ref)


def test_fine_splits_keep_the_estimation_minimum_when_the_best_candidates_break_it():
    # 85% of each subsample chooses splits: a fine node's best thresholds often leave fewer than
    # min_samples_leaf estimation rows on a side, so the numba grower's pick (which counts those
    # rows only for candidates that could win, best first) must pass over them as the reference does.
    data, mom, trees = _problem(1200, max_bins=32, honesty_fraction=0.85)
    rule = SplitRule(min_samples_leaf=4, alpha=0.05, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=4)
    ref = _reference_trees(data, mom, trees, rule)
    assert all(len(t.feature) > 7 for t in ref), "trees should be non-trivial"
    _assert_same_trees(NumbaBackend().grow(data, mom, trees, rule), ref)


def test_coarse_nodes_match_reference_whether_rows_move_or_not():
    # n=10000: roots hold ~4,500 rows and their children ~2,250, so two levels split on coarse
    # histograms (SMALL_NODE_ROWS = 2,048) before fine nodes take over; the test above never
    # reaches them. A row here is 52 bytes (p = 4): the default threshold indexes every node,
    # 0 moves every coarse node's rows, and 150 KB moves the root's (234 KB) while its
    # children (117 KB) partition an index within the root's block.
    data, mom, trees = _problem(10000, weights=True, max_bins=32)
    trees, rule = trees[:2], RULES[1]
    ref = _reference_trees(data, mom, trees, rule)
    for move_rows_bytes in (NumbaBackend().move_rows_bytes, 0, 150_000):
        _assert_same_trees(NumbaBackend(move_rows_bytes=move_rows_bytes).grow(data, mom, trees, rule), ref)
    _assert_same_trees(TorchBackend(torch.device("cpu")).grow(data, mom, trees, rule), ref)


def _split_nodes(tree, rows, fine):
    """(structure rows of the node, of its left child, of its right child) for every split node."""
    out = []
    stack = [(0, rows)]
    while stack:
        node, here = stack.pop()
        if tree.feature[node] < 0:
            continue
        go_left = fine[here, tree.feature[node]] <= tree.threshold[node]
        left, right = here[go_left], here[~go_left]
        out.append((here, left, right))
        stack += [(tree.child[node], left), (tree.child[node] + 1, right)]
    return out


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_every_child_keeps_grfs_row_counts_and_sum_of_squares_bound(backend):
    """grf's admissibility on an imbalanced design (about 22% treated): each child holds
    min_samples_leaf structure rows on each side of its parent's mean treatment residual, and
    at least alpha times its parent's sum of squares of t. The rule this replaced (rows and a
    variance ratio) left a quarter of the leaves here with one arm only and breaks both."""
    data, mom, trees = _problem(900, p=25, design="imbalanced")
    rule = SplitRule(min_samples_leaf=5, alpha=0.05, imbalance_penalty=0.0, max_depth=2**31 - 1, mtry=25)
    grower = NumbaBackend() if backend == "numba" else TorchBackend(torch.device("cpu"))
    t = mom[:, 1] / mom[:, 0]

    def sum_of_squares(rows):
        return np.sum((t[rows] - t[rows].mean()) ** 2)

    n_splits = 0
    for tree, sample in zip(grower.grow(data, mom, trees, rule), trees):
        for parent, left, right in _split_nodes(tree, sample.structure, data.fine):
            a = t[parent].mean()
            for child in (left, right):
                assert np.sum(t[child] < a) >= 5 and np.sum(t[child] >= a) >= 5
                assert sum_of_squares(child) >= 0.05 * sum_of_squares(parent) * (1 - 1e-12)
            n_splits += 1
    assert n_splits >= 20, "trees should be non-trivial"


def test_poisson_mtry_draws_poisson_feature_counts():
    """With poisson_mtry a node's feature count is max(1, min(Poisson(mtry), p)); without, mtry."""
    from tauforge.kernels.backends.numba_cpu import draw_feature_masks

    keys = np.random.default_rng(0).integers(0, 2**63, size=4000, dtype=np.uint64)
    fixed = draw_feature_masks(keys, 40, 6, False, NO_WEIGHTS).sum(axis=1)
    assert (fixed == 6).all()
    masks = draw_feature_masks(keys, 40, 6, True, NO_WEIGHTS)
    counts = masks.sum(axis=1)
    # Poisson(6): mean and variance 6; over 4000 draws the mean's standard error is 0.039 and the
    # variance's about 0.15, so these bounds (5 standard errors) fail a correct draw with
    # probability below 1e-5 and pass a fixed count (variance 0) or Poisson(5) (mean 5) never.
    assert abs(counts.mean() - 6) < 0.2
    assert abs(counts.var() - 6) < 0.75
    assert counts.min() >= 1 and counts.max() <= 40
    # The same key draws the same features: the level-wise and depth-first growers agree.
    np.testing.assert_array_equal(masks, draw_feature_masks(keys, 40, 6, True, NO_WEIGHTS))


def test_torch_sparse_levels_match_dense():
    """With no histogram budget every level takes the sorted (node, code) path."""
    data, mom, trees = _problem(3000)
    rule = RULES[0]
    mom_t = torch.from_numpy(mom)
    dense = TorchLevelGrower(torch.device("cpu")).grow(data, mom_t, trees, rule)
    sparse = TorchLevelGrower(torch.device("cpu"), hist_budget=0).grow(data, mom_t, trees, rule)
    _assert_same_trees(dense, sparse)
    _assert_same_trees(NumbaBackend().grow(data, mom, trees, rule), dense)


def test_leaf_ids_agree_and_follow_the_splits():
    data, mom, trees = _problem(2000)
    forest = ForestArrays.from_trees(NumbaBackend().grow(data, mom, trees, RULES[0]))
    ids_numba = NumbaBackend().leaf_ids(data.fine, forest)
    ids_torch = TorchBackend(torch.device("cpu")).leaf_ids(data.fine, forest).numpy()
    np.testing.assert_array_equal(ids_numba, ids_torch)
    # Walk tree 0 by hand for a few rows.
    for i in range(0, 2000, 397):
        node = forest.roots[0]
        while forest.feature[node] >= 0:
            node = forest.child[node] + (data.fine[i, forest.feature[node]] > forest.threshold[node])
        assert ids_numba[i, 0] == forest.child[node]


def test_local_linear_moments_average_each_trees_own_rows_in_their_leaves(monkeypatch):
    """Both backends average in each leaf the weighted row moments of exactly the tree's own
    estimation rows that reach it (a row of zero weight adds nothing), and agree bit for bit."""
    from tauforge.kernels import backends

    data, mom, trees = _problem(2000)
    forest = ForestArrays.from_trees(NumbaBackend().grow(data, mom, trees, RULES[0]))
    ids = NumbaBackend().leaf_ids(data.fine, forest)
    rng = np.random.default_rng(1)
    n = data.fine.shape[0]
    z, t, y = rng.normal(size=(n, 2)), rng.normal(size=n), rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n) * (rng.random(n) > 0.1)
    u = np.hstack([np.ones((n, 1)), z, t[:, None], t[:, None] * z])
    i, j = np.triu_indices(u.shape[1])
    row_moments = np.hstack([u[:, i] * u[:, j], u * y[:, None]])
    sums, totals = np.zeros((len(forest.leaf_values), row_moments.shape[1])), np.zeros(len(forest.leaf_values))
    for b, tree in enumerate(trees):
        np.add.at(sums, ids[tree.estimation, b], w[tree.estimation, None] * row_moments[tree.estimation])
        np.add.at(totals, ids[tree.estimation, b], w[tree.estimation])
    monkeypatch.setattr(backends, "_TREES_PER_BLOCK", 3)  # the 4 trees in two blocks
    numba_moments = NumbaBackend().local_linear_moments(data.fine, forest, trees, z, t, y, w)
    torch_moments = TorchBackend(torch.device("cpu")).local_linear_moments(data.fine, forest, trees, z, t, y, w)
    np.testing.assert_allclose(numba_moments, sums / totals[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(numba_moments, torch_moments)


@pytest.mark.parametrize("keep_bytes", [sampling.KEEP_SAMPLE_BYTES, 0], ids=["kept", "drawn-again"])
def test_tree_samples_are_drawn_when_read_the_same_however_read(keep_bytes, monkeypatch):
    # fit reads each tree's rows as it grows it (2 MB a tree at 1e6 rows): iterating, slicing,
    # indexing out of order and from the end must all give the trees drawing them at once gives,
    # whether the drawn groups are kept or drawn again.
    monkeypatch.setattr(sampling, "KEEP_SAMPLE_BYTES", keep_bytes)
    sampler = LittleBagSampler(1000, 8, 2, 0.45, True, 0.5, 3)
    lazy = sampler.trees(1, 3)
    eager = [t for g in range(1, 4) for t in sampler.group(g)]
    order = [5, 0, 3, 1, 4, 2]
    assert len(lazy) == 6 and len({t.key for t in eager}) == 6
    for got, want in ((list(lazy), eager), (lazy[0:6], eager), ([lazy[i] for i in order], [eager[i] for i in order]),
                      ([lazy[-1]], eager[-1:])):
        assert [t.key for t in got] == [t.key for t in want]
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.structure, b.structure)
            np.testing.assert_array_equal(a.estimation, b.estimation)
    assert len(lazy._kept) == (3 if keep_bytes else 1)
    with pytest.raises(IndexError):
        lazy[6]


def test_forest_arrays_merge_and_tree_roundtrip():
    data, mom, trees = _problem(1500)
    grown = NumbaBackend().grow(data, mom, trees, RULES[0])
    whole = ForestArrays.from_trees(grown)
    merged = ForestArrays.merge([ForestArrays.from_trees(grown[:1]), ForestArrays.from_trees(grown[1:])])
    for field in (*ForestArrays.SAVED, "child"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(merged, field))
    assert whole.max_depth == merged.max_depth > 0


@pytest.mark.parametrize("group_size", [1, 2, 4, 8])
def test_numba_estimate_equals_the_prediction_strategy_in_torch_and_numpy(group_size):
    """The CPU kernel (rows in parallel, no gather) against forest_estimate in float64 on torch
    tensors (the GPU path) and on NumPy arrays (the CPU's out-of-bag path), on the same leaves:
    tau, the debiased little-bag variance, and the Monte-Carlo variance (groups of one tree
    included)."""
    from tauforge.kernels import CausalForest

    d = make_causal_data("simple", n=3000, p=4, seed=3)
    forest = CausalForest(n_estimators=24, ci_group_size=group_size, random_state=0,
                          max_samples=0.45 if group_size > 1 else 0.6).fit(d.X, d.T - d.e, d.Y - d.m)
    X = make_causal_data("simple", n=500, p=4, seed=4).X
    ids = NumbaBackend().leaf_ids(forest._codes(X), forest.forest_)
    with_variance = group_size > 1
    tau, var = NumbaBackend().estimate(ids, forest.forest_, group_size, with_variance)
    _, mc = NumbaBackend().estimate(ids, forest.forest_, group_size, True, monte_carlo=True)
    assert (mc > 0).all()
    if with_variance:
        assert (var > 0).all()
    gathered = forest.forest_.leaf_values[ids].astype(np.float64)
    for values in (torch.as_tensor(gathered), gathered):
        ref_tau, ref_var = forest_estimate(values, group_size, None, with_variance)
        assert isinstance(ref_tau, type(values))  # computed in the library it was given
        np.testing.assert_allclose(tau, np.asarray(ref_tau), rtol=1e-12, atol=1e-12)
        if with_variance:
            np.testing.assert_allclose(var, np.asarray(ref_var), rtol=1e-9)
        else:
            assert var is None and ref_var is None
        _, ref_mc = forest_estimate(values, group_size, None, True, monte_carlo=True)
        np.testing.assert_allclose(mc, np.asarray(ref_mc), rtol=1e-9)


def test_compact_forest_saves_no_pointers_and_rebuilds_them_exactly():
    data, mom, trees = _problem(1500)
    grown = NumbaBackend().grow(data, mom, trees, RULES[0])
    forest = ForestArrays.from_trees(grown)
    assert forest.feature.dtype == np.int8 and forest.leaf_values.dtype == np.float32
    saved = forest.to_arrays()
    assert "forest_child" not in saved
    rebuilt = ForestArrays.from_arrays(saved, forest.max_depth)
    np.testing.assert_array_equal(rebuilt.child, forest.child)
    for b, tree in enumerate(grown):  # the pointers the grower produced, tree by tree
        np.testing.assert_array_equal(rebuilt.tree(b).child, tree.child)
    broken = dict(saved, forest_feature=saved["forest_feature"][:-1])
    with pytest.raises(ValueError, match="do not describe binary trees"):
        ForestArrays.from_arrays(broken, forest.max_depth)
    swapped = grown[0]
    swapped = type(swapped)(swapped.feature, swapped.threshold, swapped.child[::-1].copy(), swapped.leaf_values)
    with pytest.raises(ValueError, match="tree 1 is not breadth-first"):
        ForestArrays.from_trees([grown[0], swapped])


def test_forest_depth_is_the_deepest_node_of_any_tree():
    data, mom, trees = _problem(1500)
    grown = NumbaBackend().grow(data, mom, trees, RULES[0])

    def walked_depth(tree, node=0):  # the depth below `node`, by following the pointers
        if tree.feature[node] < 0:
            return 0
        left = int(tree.child[node])
        return 1 + max(walked_depth(tree, left), walked_depth(tree, left + 1))

    assert ForestArrays.from_trees(grown).max_depth == max(walked_depth(t) for t in grown) > 3
    stump = type(grown[0])(np.array([-1], dtype=np.int32), np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int64),
                           grown[0].leaf_values[:1])
    assert ForestArrays.from_trees([stump]).max_depth == 0


@cuda
def test_cuda_grows_the_cpu_trees():
    data, mom, trees = _problem(3000)
    cpu = NumbaBackend().grow(data, mom, trees, RULES[0])
    gpu = TorchBackend(torch.device("cuda")).grow(data, mom, trees, RULES[0])
    _assert_same_trees(cpu, gpu)


def test_grfs_debiased_variance_is_the_mean_of_the_truncated_normal_it_describes():
    # Exact, against scipy: an error in the estimate's standard error (sqrt(1 / G) for
    # sqrt(2 / G)) passed every test but the slow comparison with EconML (a mutation review).
    from scipy.stats import truncnorm

    from tauforge.kernels.prediction import debias_between_group_variance

    var_between, noise, groups = np.array([1.0, 1.0, 0.2]), np.array([0.3, 1.2, 0.5]), np.array([50, 50, 125])
    got = debias_between_group_variance(var_between, noise, groups)
    center = var_between - noise
    se = np.maximum(var_between, noise) * np.sqrt(2 / groups)  # grf's: the noisier term's sd over G bags
    expected = truncnorm.mean(-center / se, np.inf, loc=center, scale=se)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_weighted_binning_makes_coarse_bins_of_equal_weight_past_the_fine_quantiles():
    # A review: past 65,536 distinct values the coarse bins counted rows, not weight (the positive
    # half at weight 10 got 8 of 16 bins); and weights all 0 raised an IndexError.
    rng = np.random.default_rng(0)
    x = rng.normal(size=100_000)
    w = np.where(x > 0, 10.0, 1.0)
    binner = QuantileBinner(max_bins=16).fit(x[:, None], sample_weight=w)
    codes = binner.transform(x[:, None])[:, 0]
    share = np.bincount(binner.coarse(codes[:, None])[:, 0], weights=w) / w.sum()
    assert share.min() > 0.05 and share.max() < 0.075
    with pytest.raises(ValueError, match="sample_weight is 0 for every row"):
        QuantileBinner().fit(x[:10, None], sample_weight=np.zeros(10))


def test_bin_edges_saved_before_the_ulp_fix_still_load_and_code_as_then():
    # A diff review: the load check first refused equal and infinite edges, which the binning
    # before 2026-12-06 saved for values an ulp apart or past 9e307: those models would not load.
    a = 0.3
    X = np.array([[a, 1e308], [np.nextafter(a, 1), 1.5e308], [np.nextafter(np.nextafter(a, 1), 1), 1.7e308]])
    arrays = QuantileBinner().fit(X).to_arrays()
    old = dict(arrays, bin_fine_edges=np.array([np.nextafter(a, 1)] * 2 + [np.inf, np.inf]))  # as saved then
    binner = QuantileBinner.from_arrays(old, 256)
    assert binner.transform(X).tolist() == [[0, 0], [0, 0], [2, 0]]  # fine(x): edges strictly below x
    with pytest.raises(ValueError, match="not sorted, or NaN"):
        QuantileBinner.from_arrays(dict(arrays, bin_fine_edges=np.array([1.0, 0.0, 1.0, 2.0])), 256)
