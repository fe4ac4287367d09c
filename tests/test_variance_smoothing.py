"""The little bags' variance smoothed over forest neighbours (kernels/variance_smoothing.py):
what it computes, that it removes Monte-Carlo noise, and how it is saved, merged and refused."""

import json
import warnings

import numpy as np
import pytest

from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.prediction import posterior_mean_variance
from tauforge.kernels.variance_smoothing import REFERENCE_ROWS, VarianceSmoother, reference_rows


@pytest.fixture(scope="module")
def data():
    d = make_causal_data("aw2", n=1500, p=5, seed=5)
    return d, d.T - d.e, d.Y - d.m


@pytest.fixture(scope="module")
def test_X():
    return make_causal_data("aw2", n=300, p=5, seed=6).X


def _forest(**kw):  # uniform candidates, a fixed penalty: the smoothing alone, saved in its own format 7
    return CausalForest(**{"n_estimators": 200, "random_state": 1, "progress": False, "candidate_weights": None,
                           "linear_correction_ridge": 0.1, **kw})


def test_the_smoothed_variance_averages_the_references_estimates_by_shared_leaves(data, test_X):
    """Written out by hand: each reference row's out-of-bag estimate before debiasing, weighted by
    the number of trees in which it shares the point's leaf, the point's own estimate counting
    as a reference in every tree; then grf's posterior mean with the point's own standard error."""
    d, t, y = data
    forest = _forest().fit(d.X, t, y)
    rows = reference_rows(len(d.X), forest.seed_)
    in_bag = forest._sampler(len(d.X)).in_bag()[rows]  # all rows' trees, then the references'
    _, ref_parts = forest._estimate(d.X[rows], with_variance=True, oob=True, parts=True, in_bag=in_bag)
    _, own_parts = forest._estimate(test_X, with_variance=True, parts=True)
    ref_ids = forest._backend.leaf_ids(forest._codes(d.X[rows]), forest.forest_)
    own_ids = forest._backend.leaf_ids(forest._codes(test_X), forest.forest_)
    known = np.isfinite(ref_parts[:, 0])
    shared = (own_ids[:, None, :] == ref_ids[None, known, :]).sum(axis=2)  # (points, references)
    trees = forest.forest_.n_trees
    estimate = (shared @ ref_parts[known, 0] + trees * own_parts[:, 0]) / (shared.sum(axis=1) + trees)
    expected = posterior_mean_variance(estimate, own_parts[:, 1])
    _, var = forest.predict_and_var(test_X)
    np.testing.assert_allclose(var, expected, rtol=1e-10)
    # It is not the per-point variance, and the point estimate is the same either way.
    tau_raw, var_raw = _forest(variance_smoothing=False).fit(d.X, t, y).predict_and_var(test_X)
    np.testing.assert_array_equal(forest.predict(test_X), tau_raw)
    assert np.mean(np.abs(var / var_raw - 1)) > 0.1


def test_smoothing_removes_most_of_the_variances_monte_carlo_noise(data, test_X):
    """The same data, forests of four seeds: at each point the per-point variance moves with the
    seed (Monte-Carlo noise of the little bags); the smoothed one moves far less, at about the
    same mean. Measured: the spread over seeds 0.45 of the mean for the per-point variance,
    0.13 smoothed; mean smoothed / per-point 0.89 (200 trees, 25 little bags: the debiasing adds
    less to a steadier estimate)."""
    d, t, y = data
    spread, level = {}, {}
    for smoothing in (False, True):
        variances = np.array([_forest(random_state=s, variance_smoothing=smoothing).fit(d.X, t, y)
                              .predict_and_var(test_X)[1] for s in range(4)])
        spread[smoothing] = float(np.mean(variances.std(axis=0) / variances.mean(axis=0)))
        level[smoothing] = float(variances.mean())
    assert spread[True] < 0.5 * spread[False], spread
    assert 0.8 < level[True] / level[False] < 1.2, level


def test_the_smoother_is_saved_loaded_merged_and_checked(data, test_X, tmp_path):
    d, t, y = data
    whole = _forest().fit(d.X, t, y)
    _, var = whole.predict_and_var(test_X)
    whole.save(tmp_path / "whole")
    meta = json.loads((tmp_path / "whole" / "model.json").read_text())
    assert meta["format_version"] == 7
    np.testing.assert_array_equal(CausalForest.load(tmp_path / "whole").predict_and_var(test_X)[1], var)
    # Shards smooth once merged, with the training covariates: the same variance as one fit.
    shards = [_forest().fit_shard(d.X, t, y, shard=k, n_shards=2) for k in (0, 1)]
    assert all(s.variance_smoother_ is None for s in shards)
    np.testing.assert_array_equal(CausalForest.merge(shards, X=d.X).predict_and_var(test_X)[1], var)
    with pytest.warns(UserWarning, match="merge without X"):
        unsmoothed = CausalForest.merge(shards)
    per_point = _forest(variance_smoothing=False).fit(d.X, t, y).predict_and_var(test_X)[1]
    np.testing.assert_array_equal(unsmoothed.predict_and_var(test_X)[1], per_point)
    with pytest.raises(ValueError, match=r"training covariates \(1500 rows x 5 columns\); got 10 x 5"):
        CausalForest.merge(shards, X=d.X[:10])
    # Without smoothing the format is the older one, which older readers take.
    _forest(variance_smoothing=False).fit(d.X, t, y).save(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "model.json").read_text())["format_version"] == 5
    # A forest saved before format 7 says it does not smooth.
    plain_meta = json.loads((tmp_path / "plain" / "model.json").read_text())
    assert "variance_smoothing" not in plain_meta["params"]  # an older reader passes params to CausalForest


def test_a_forest_saved_before_the_parameter_loads_as_unsmoothed(data, test_X, tmp_path):
    """Forests saved before format 7 have no `variance_smoothing` parameter: they load with it
    False, which is what they do (the per-point variance)."""
    from tauforge.kernels.serialization import load_model, save_model

    d, t, y = data
    forest = _forest(variance_smoothing=False).fit(d.X, t, y)
    forest.save(tmp_path / "new")
    arrays, meta = load_model(tmp_path / "new", "tauforge.causal_forest")
    meta = {k: v for k, v in meta.items() if k not in ("files", "meta_sha256")}
    meta["params"] = {k: v for k, v in meta["params"].items() if k != "variance_smoothing"}
    save_model(tmp_path / "old", arrays, meta)
    old = CausalForest.load(tmp_path / "old")
    assert old.variance_smoothing is False and old.variance_smoother_ is None
    np.testing.assert_array_equal(old.predict_and_var(test_X)[1], forest.predict_and_var(test_X)[1])


def test_damaged_smoother_arrays_are_refused(data, tmp_path):
    nan = np.ones((2, 2))
    nan[0, 0] = np.nan
    for leaves, totals in (([3, 1, 7], np.ones((3, 2))), ([1, 12], np.ones((2, 2))), ([1, 2], np.ones((3, 2))),
                           ([1, 2], nan), ([1, 2], np.array([[1.0, 1.0], [1.0, 0.0]])),
                           ([1.0, 2.5], np.ones((2, 2)))):
        # unordered, past the last leaf, short, NaN, a leaf of no reference, leaves that are no indices
        with pytest.raises(ValueError, match="do not fit the forest"):
            VarianceSmoother.from_arrays({"smoother_leaves": np.array(leaves), "smoother_totals": totals}, 10)
    assert VarianceSmoother.from_arrays({}, 10) is None
    # A forest saved with a smoother whose arrays are gone (rewritten with a fresh checksum) is
    # refused on load, not read as unsmoothed.
    from tauforge.kernels.serialization import load_model, save_model

    d, t, y = data
    _forest().fit(d.X, t, y).save(tmp_path / "whole")
    arrays, meta = load_model(tmp_path / "whole", "tauforge.causal_forest")
    meta = {k: v for k, v in meta.items() if k not in ("files", "meta_sha256")}
    save_model(tmp_path / "bare", {k: v for k, v in arrays.items() if not k.startswith("smoother_")}, meta)
    with pytest.raises(ValueError, match="bare: the metadata says the forest has a variance smoother, but its arrays"):
        CausalForest.load(tmp_path / "bare")


def test_reference_rows_are_seeded_distinct_and_bounded():
    assert np.array_equal(reference_rows(50, 3), np.arange(50))
    rows = reference_rows(10_000, 3)
    assert len(rows) == REFERENCE_ROWS == len(np.unique(rows)) and np.all(np.diff(rows) > 0)
    assert np.array_equal(rows, reference_rows(10_000, 3)) and not np.array_equal(rows, reference_rows(10_000, 4))


def test_variance_smoothing_must_be_a_bool(data):
    d, t, y = data
    with pytest.raises(ValueError, match="variance_smoothing must be True or False, got 'yes'"):
        _forest(variance_smoothing="yes").fit(d.X, t, y)


def test_few_groups_or_single_trees_leave_nothing_to_smooth(data):
    d, t, y = data
    single = _forest(n_estimators=21).fit(d.X, t, y)  # an odd count: groups of one tree, no variance
    assert single.variance_smoother_ is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = _forest(n_estimators=4, ci_group_size=2).fit(d.X, t, y)
    assert tiny.variance_smoother_ is not None and np.all(np.isfinite(tiny.predict_and_var(d.X[:5])[1]))
