"""CausalForest and CausalForestDML behaviour: determinism, persistence, inputs, errors."""

import json
import re
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression

from tauforge.kernels import CausalForest, CausalForestDML
from tauforge.kernels.ate import variance_weighted_effect
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.forest import _centred
from tauforge.kernels.serialization import save_model


@pytest.fixture(scope="module")
def data():
    d = make_causal_data("simple", n=1500, p=5, seed=3)
    return d, d.T - d.e, d.Y - d.m


@pytest.fixture(scope="module")
def fitted(data):
    d, t, y = data
    return CausalForest(n_estimators=40, random_state=7).fit(d.X, t, y)


def test_same_seed_same_forest_other_seed_other_forest(data, fitted):
    d, t, y = data
    again = CausalForest(n_estimators=40, random_state=7).fit(d.X, t, y)
    for field in ("feature", "threshold", "child", "leaf_values"):
        np.testing.assert_array_equal(getattr(fitted.forest_, field), getattr(again.forest_, field))
    other = CausalForest(n_estimators=40, random_state=8).fit(d.X, t, y)
    assert not np.array_equal(other.predict(d.X[:50]), fitted.predict(d.X[:50]))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_backends_give_the_same_predictions(data, fitted, backend):
    d, t, y = data
    est = CausalForest(n_estimators=40, random_state=7, backend=backend).fit(d.X, t, y)
    tau, var = est.predict_and_var(d.X[:200])
    ref_tau, ref_var = fitted.predict_and_var(d.X[:200])
    np.testing.assert_allclose(tau, ref_tau, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-7, atol=1e-12)


def test_predict_interval_is_normal_interval_of_predict_and_var(fitted, data):
    X = data[0].X[:100]
    tau, var = fitted.predict_and_var(X)
    lo, hi = fitted.predict_interval(X, alpha=0.1)
    np.testing.assert_allclose((lo + hi) / 2, tau, atol=1e-12)
    np.testing.assert_allclose((hi - lo) / 2, 1.6448536269514722 * np.sqrt(var), rtol=1e-9)
    assert np.all(var > 0)
    np.testing.assert_array_equal(fitted.predict(X), tau)


@pytest.fixture(scope="module")
def plain(data):
    """The forest without the local linear correction: prediction is the leaf-mean moment equation."""
    d, t, y = data
    return CausalForest(n_estimators=40, random_state=7, linear_correction_variables=None).fit(d.X, t, y)


def test_oob_predictions_use_only_trees_that_did_not_see_the_row(plain, data):
    d, t, y = data
    oob = plain.oob_predict(d.X)
    in_bag = plain._sampler(len(d.X)).in_bag()
    assert in_bag.mean() == pytest.approx(plain.max_samples, abs=0.01)
    # The property itself, written out: each row's tau from the leaf means of exactly the trees
    # whose subsample left it out. Using every tree, or the in-bag ones, gives other numbers.
    leaves = plain._backend.leaf_ids(plain._codes(d.X), plain.forest_)
    values = plain.forest_.leaf_values.astype(np.float64)[leaves]  # (rows, trees, (t, y, ty, tt))
    for mask, should_match in ((~in_bag, True), (np.ones_like(in_bag), False), (in_bag, False)):
        A = (values * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
        tau = (A[:, 2] - A[:, 0] * A[:, 1]) / (A[:, 3] - A[:, 0] ** 2)
        assert np.allclose(oob, tau, rtol=1e-6, atol=1e-9) == should_match
    with pytest.raises(ValueError, match="training covariates"):
        plain.oob_predict(d.X[:10])


def test_oob_variance_counts_only_little_bags_whose_trees_all_left_the_row_out(data):
    """grf's good groups: a row's out-of-bag variance comes from the little bags none of whose
    trees saw it, with the tau of all its out-of-bag trees; NaN with no such bag, a value from
    one. Written out from the module's linearization. With max_samples=0.5 (the default) a bag's
    trees all draw its whole half-sample, so no bag is partly in bag and counting bags with any
    out-of-bag tree passed every test (a mutation review): 0.3 here, and 4 bags of 2, so that
    rows with partly-out bags, no good bag and exactly one occur."""
    from tauforge.kernels.prediction import debias_between_group_variance

    d, t, y = data
    forest = CausalForest(n_estimators=8, max_samples=0.3, random_state=7, linear_correction_variables=None,
                          progress=False).fit(d.X, t, y)
    with pytest.warns(UserWarning, match="intervals from 8 trees"):
        oob, var = forest.oob_predict_and_var(d.X)
    g, n = forest._group_size(), len(d.X)
    out = ~forest._sampler(n).in_bag()  # (rows, trees): the trees that did not see the row
    leaves = forest._backend.leaf_ids(forest._codes(d.X), forest.forest_)
    values = forest.forest_.leaf_values.astype(np.float64)[leaves]  # (rows, trees, (t, y, ty, tt))
    with np.errstate(invalid="ignore"):  # rows every tree saw: NaN, as oob_predict gives
        A = (values * out[..., None]).sum(axis=1) / out.sum(axis=1, keepdims=True)
    denom = A[:, 3] - A[:, 0] ** 2
    tau = (A[:, 2] - A[:, 0] * A[:, 1]) / denom
    mu = A[:, 1] - tau * A[:, 0]
    tb, yb, tyb, ttb = (values[..., k] for k in range(4))
    psi = (tyb - mu[:, None] * tb - tau[:, None] * ttb) - A[:, [0]] * (yb - mu[:, None] - tau[:, None] * tb)
    bags_out = out.reshape(n, -1, g)
    good = bags_out.all(axis=2)  # every tree of the bag left the row out
    n_good = good.sum(axis=1)
    assert (n_good == 0).sum() > 10 and (n_good == 1).sum() > 10  # not vacuous
    assert (bags_out.any(axis=2) & ~good).any(axis=1).mean() > 0.2  # bags partly out of bag
    psi = psi.reshape(n, -1, g)
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (good * psi.mean(axis=2) ** 2).sum(axis=1) / n_good
        total = (good[..., None] * psi**2).sum(axis=(1, 2)) / (n_good * g)
        want = debias_between_group_variance(between, (total - between) / (g - 1), n_good) / denom**2
    np.testing.assert_allclose(oob, tau, rtol=1e-9)
    np.testing.assert_array_equal(np.isnan(var), n_good == 0)
    np.testing.assert_allclose(var[n_good > 0], want[n_good > 0], rtol=1e-9)


def test_save_load_predicts_exactly_and_refuses_tampering(fitted, data, tmp_path):
    X = data[0].X[:300]
    fitted.save(tmp_path / "cf")
    loaded = CausalForest.load(tmp_path / "cf")
    tau, var = loaded.predict_and_var(X)
    ref_tau, ref_var = fitted.predict_and_var(X)
    np.testing.assert_array_equal(tau, ref_tau)
    np.testing.assert_array_equal(var, ref_var)
    np.testing.assert_array_equal(loaded.oob_predict(data[0].X), fitted.oob_predict(data[0].X))

    arrays = tmp_path / "cf" / "arrays.npz"
    raw = bytearray(arrays.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    arrays.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        CausalForest.load(tmp_path / "cf")

    fitted.save(tmp_path / "cf2")
    meta_path = tmp_path / "cf2" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["params"]["ci_group_size"] = 4
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checksum mismatch"):
        CausalForest.load(tmp_path / "cf2")


def test_format_1_forests_still_load_and_a_newer_format_is_refused(plain, data, tmp_path):
    """Format 1 saved float64 leaves, int16 features and the child pointers; format 2 saves
    neither pointers nor float64 (format 3, its compact encoding, is tested in test_storage.py).
    A version 1 folder, rewritten here from a plain forest, loads and predicts what its leaves say."""
    from tauforge.kernels.forest import FORMAT_VERSION
    from tauforge.kernels.serialization import load_model, save_model

    plain.save(tmp_path / "cf")
    _, meta = load_model(tmp_path / "cf", "tauforge.causal_forest")
    meta = {k: v for k, v in meta.items() if k not in ("files", "meta_sha256", "forest_encoding")}
    arrays = {**plain.forest_.to_arrays(), **plain.binner_.to_arrays()}  # format 2's arrays
    old = dict(arrays, forest_child=plain.forest_.child, forest_feature=arrays["forest_feature"].astype(np.int16),
               forest_leaf_values=arrays["forest_leaf_values"].astype(np.float64))
    save_model(tmp_path / "v1", old, dict(meta, format_version=1))
    X = data[0].X[:100]
    np.testing.assert_allclose(CausalForest.load(tmp_path / "v1").predict(X), plain.predict(X), rtol=0, atol=1e-12)
    save_model(tmp_path / "newer", arrays, dict(meta, format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="saved by a newer tauforge"):
        CausalForest.load(tmp_path / "newer")


def test_a_forest_fit_with_numpy_parameters_or_a_dataframe_saves_and_loads_what_it_was(data, tmp_path):
    d, t, y = data
    X = pd.DataFrame(d.X, columns=[f"c{j}" for j in range(d.X.shape[1])])
    kept = CausalForest(n_estimators=40, random_state=0).fit(X, t, y)
    kept.save(tmp_path / "cf")
    # NumPy scalars and a RandomState, which fit takes, failed in json.dump after the arrays were
    # replaced: the folder's earlier model then failed its checksum (a review).
    numpy_typed = CausalForest(n_estimators=np.int64(40), mtry=np.int64(3), poisson_mtry=np.True_,
                               random_state=np.random.RandomState(0),
                               linear_correction_variables=np.array([0, 2])).fit(X, t, y)
    numpy_typed.save(tmp_path / "np")
    again = CausalForest.load(tmp_path / "np")
    assert again.get_params()["random_state"] == numpy_typed.seed_ and again.n_estimators == 40
    assert again.linear_correction_variables == [0, 2]
    np.testing.assert_array_equal(again.predict(X[:50]), numpy_typed.predict(X[:50]))
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_model(tmp_path / "cf", {"a": np.zeros(3)}, {"bad": object()})
    np.testing.assert_array_equal(CausalForest.load(tmp_path / "cf").predict(X[:50]), kept.predict(X[:50]))
    # The loaded (and a merged) forest refuses the columns reordered, as the fitted one does; it
    # used to lose their names and score them in the new order.
    loaded = CausalForest.load(tmp_path / "cf")
    assert list(loaded.feature_names_in_) == list(X.columns)
    shards = [CausalForest(n_estimators=40, random_state=0).fit_shard(X, t, y, shard=k, n_shards=2) for k in (0, 1)]
    for forest in (loaded, CausalForest.merge(shards)):
        with pytest.raises(ValueError, match="column 0 is 'c4' where the fit had 'c0'"):
            forest.predict(X[X.columns[::-1]])
    other = CausalForest(n_estimators=40, random_state=0).fit_shard(X.set_axis([f"z{j}" for j in range(5)], axis=1),
                                                                     t, y, shard=1, n_shards=2)
    with pytest.raises(ValueError, match="covariates named differently"):
        CausalForest.merge([shards[0], other])


def test_saved_model_has_no_pickle(fitted, tmp_path):
    fitted.save(tmp_path / "cf")
    with np.load(tmp_path / "cf" / "arrays.npz", allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)


def test_accepts_pandas_and_torch_and_returns_the_same_kind(fitted, data):
    X = data[0].X[:64]
    ref = fitted.predict(X)
    df = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    with pytest.warns(UserWarning, match="X has feature names, but the forest was fit without them"):
        np.testing.assert_array_equal(fitted.predict(df), ref)  # fit on arrays: the names go unchecked
    out = fitted.predict(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), ref)
    lo, hi = fitted.predict_interval(torch.from_numpy(X))
    assert isinstance(lo, torch.Tensor) and isinstance(hi, torch.Tensor)


def test_sample_weights_change_the_fit_and_zero_weight_rows_are_ignored(data):
    d, t, y = data
    w = np.ones(len(t))
    w[:500] = 0.0
    w[500:800] = 3.0
    kw = dict(n_estimators=20, random_state=1, linear_correction_variables=[0])
    weighted = CausalForest(**kw).fit(d.X, t, y, sample_weight=w)
    unweighted = CausalForest(**kw).fit(d.X, t, y)
    X = d.X[:100]
    assert np.abs(weighted.predict(X) - unweighted.predict(X)).max() > 0.01  # the weights count
    t2, y2 = t.copy(), y.copy()
    t2[:500] += 100.0  # garbage in zero-weight rows must not matter, corrected or not
    y2[:500] -= 100.0
    garbage = CausalForest(**kw).fit(d.X, t2, y2, sample_weight=w)
    auto = [CausalForest(n_estimators=20, random_state=1).fit(d.X, a, b, sample_weight=w)
            for a, b in ((t, y), (t2, y2))]
    assert auto[0].linear_correction_variables == "auto"
    np.testing.assert_array_equal(auto[0].predict(X), auto[1].predict(X))
    np.testing.assert_allclose(garbage.predict(X), weighted.predict(X), rtol=1e-9, atol=1e-9)
    # Integer weights are repeated rows: weight 3 on rows 500-799 is three copies of each in the
    # leaf means (the subsamples differ, so compare the leaf moments of one fixed tree structure).
    leaf = weighted._backend.leaf_ids(weighted._codes(d.X), weighted.forest_)[:, 0]
    est = weighted._sampler(len(t)).trees(0, 1)[0].estimation
    first = leaf[est] == leaf[est][0]
    rows = est[first]
    expected = np.average(_centred(t, w)[rows], weights=w[rows])  # the forest centres T
    assert weighted.forest_.leaf_values[leaf[est][0], 0] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(X=np.full((50, 3), np.nan)), r"X contains NaN \(first at row 0, column 0\)"),
    (dict(T=np.ones(50)), "T is constant"),
    (dict(y=np.zeros(49)), "same number of rows: X has 50, T has 50, y has 49"),
    (dict(X=np.zeros((1, 3)), T=np.ones(1), y=np.ones(1)), "at least 2"),
    (dict(T=np.array(["a"] * 50)), "T must be numeric"),
    (dict(y=np.r_[np.inf, np.zeros(49)]), "y contains infinite values"),
    # Its leaf moments are float32: an outcome at 1e39 made every estimate NaN.
    (dict(y=np.r_[np.zeros(3), 1e39, np.zeros(46)]), r"the largest \|y\| is 1e\+39 and \|T\| .* over 1e\+35"),
    (dict(T=np.r_[-1e18, np.zeros(49)]), r"T\^2 reaches 1e\+36"),
])
def test_bad_input_raises_value_error_naming_the_problem(bad, match):
    rng = np.random.default_rng(0)
    args = dict(X=rng.normal(size=(50, 3)), T=rng.normal(size=50), y=rng.normal(size=50)) | bad
    with pytest.raises(ValueError, match=match):
        CausalForest(n_estimators=4).fit(args["X"], args["T"], args["y"])


@pytest.mark.parametrize("params, match", [
    (dict(n_estimators=5, ci_group_size=2), "multiple of ci_group_size=2; or pass ci_group_size='auto'"),
    (dict(ci_group_size="big"), "ci_group_size must be 'auto' or a positive integer, got 'big'"),
    (dict(ci_group_size=0), "ci_group_size must be 'auto' or a positive integer, got 0"),
    (dict(max_samples=0.8), r"max_samples must be in \(0, 0.5\]"),
    (dict(mtry=7), "mtry must be an integer between 1 and 3"),
    (dict(min_samples_leaf=0.05), "min_samples_leaf must be a count of rows, at least 1, got 0.05"),  # EconML: a share
    (dict(max_bins=300), "max_bins must be an integer between 2 and 256"),
    # A review: these were taken as 1 tree, truthy, truncated, NaN estimates or a bare TypeError.
    (dict(n_estimators=True), "n_estimators must be a positive integer, got True"),
    (dict(honest="no"), "honest must be True or False, got 'no'"),
    (dict(mtry=2.5), "mtry must be an integer between 1 and 3 .* got 2.5"),
    (dict(max_depth=2.7), "max_depth must be an integer >= 0 or None, got 2.7"),
    (dict(max_depth="3"), "max_depth must be an integer >= 0 or None, got '3'"),
    (dict(min_samples_leaf=None), "min_samples_leaf must be a count of rows, at least 1, got None"),
    (dict(max_bins="64"), "max_bins must be an integer between 2 and 256, got '64'"),
    (dict(linear_correction_ridge=np.inf), "linear_correction_ridge must be 'auto' or a finite number > 0, got inf"),
    (dict(device="tpu"), "device must be"),
    (dict(backend="cuda"), "backend must be"),
    (dict(linear_correction_variables=0), "linear_correction_variables must be None, 'auto' or a list"),
    (dict(progress="yes"), "progress must be True, False or None, got 'yes'"),
])
def test_bad_parameters_raise_value_error(params, match):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=match):
        CausalForest(**({"n_estimators": 4} | params)).fit(rng.normal(size=(60, 3)), rng.normal(size=60),
                                                           rng.normal(size=60))


def test_auto_group_size_is_the_largest_that_leaves_fifty_little_bags(data):
    from tauforge.kernels.sampling import resolve_group_size

    sizes = {n: resolve_group_size("auto", n) for n in (1000, 2000, 500, 400, 100, 40, 6, 5)}
    assert sizes == {1000: 8, 2000: 8, 500: 4, 400: 8, 100: 2, 40: 2, 6: 2, 5: 1}
    assert resolve_group_size(4, 1000) == 4
    # The forest grows what it resolves to: 8 trees share each half-sample at 400 trees.
    d, t, y = data
    forest = CausalForest(n_estimators=400, random_state=0, linear_correction_variables=None)
    forest.fit(d.X[:300], t[:300], y[:300])
    in_bag = forest._sampler(300).in_bag()
    halves = [in_bag[:, g * 8:(g + 1) * 8] for g in range(50)]
    assert all((h == h[:, :1]).all() for h in halves)  # max_samples=0.5: each tree takes its whole half
    assert not (halves[0] == halves[1]).all()
    # An odd number of trees gives point estimates but no intervals, and says why.
    odd = CausalForest(n_estimators=5, random_state=0).fit(d.X[:300], t[:300], y[:300])
    assert np.isfinite(odd.predict(d.X[:5])).all()
    with pytest.raises(ValueError, match=r"odd n_estimators \(5\): refit with an even n_estimators"):
        odd.predict_interval(d.X[:5])


def test_predict_checks_columns_and_fit_state(fitted):
    with pytest.raises(ValueError, match="X has 3 columns, the forest was fit on 5"):
        fitted.predict(np.zeros((2, 3)))
    with pytest.raises(NotFittedError, match="not fitted"):
        CausalForest().predict(np.zeros((2, 3)))


def test_feature_importances_are_grfs_depth_weighted_split_shares(fitted):
    # The simple design's effect moves with x0 alone: the forest splits on it most.
    importance = fitted.feature_importances()
    assert importance.shape == (5,) and importance.sum() == pytest.approx(1.0)
    assert importance.argmax() == 0 and importance[0] > 2 * np.sort(importance)[-2]
    # Against the definition, tree by tree: the splits at depths 1 and 2 (tree-local children of
    # split k at 2k+1 and 2k+2), each depth's shares weighted 1 and 2^-2.
    shares = []
    for b in range(fitted.forest_.n_trees):
        tree = fitted.forest_.tree(b)
        level = [0]
        for _ in range(2):
            split = [i for i in level if tree.feature[i] >= 0]
            shares.append(np.bincount(tree.feature[split], minlength=5))
            level = [c for i in split for c in (tree.child[i], tree.child[i] + 1)]
    depth1, depth2 = sum(shares[0::2]), sum(shares[1::2])
    expected = (depth1 / depth1.sum() + 0.25 * depth2 / depth2.sum()) / 1.25
    np.testing.assert_allclose(fitted.feature_importances(max_depth=2), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="max_depth must be a positive integer"):
        fitted.feature_importances(max_depth=0)


def test_dml_validates_its_inputs():
    d = make_causal_data("simple", n=300, p=3, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        CausalForestDML(n_estimators=4).fit(d.Y[:-1], d.T, X=d.X)
    with pytest.raises(ValueError, match="needs a binary 0/1 treatment, but T takes 3 values"):
        CausalForestDML(n_estimators=4, discrete_treatment=True).fit(d.Y, d.T + (d.Y > 2), X=d.X)
    with pytest.raises(ValueError, match="W contains NaN"):
        W = np.zeros((300, 2))
        W[5, 1] = np.nan
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=d.X, W=W)
    with pytest.raises(ValueError, match="not an importable estimator"):
        CausalForestDML(n_estimators=4, model_y="sklearn.nope.Model").fit(d.Y, d.T, X=d.X)
    with pytest.raises(ValueError, match=r"Y and T are too large for the forest's leaf moments .* rescale them"):
        CausalForestDML(n_estimators=4).fit(d.Y * 1e39 + 1e30, d.T, X=d.X)
    # At the other end they underflow: a continuous T at 1e-25 gave CATEs of -14,000 (a review).
    with pytest.raises(ValueError, match=r"Y and T are too small for the forest's leaf moments .* under 1e-30; "
                                         r"rescale them \(a unit a million times smaller"):
        CausalForestDML(n_estimators=4).fit(d.Y * 1e-31, d.T, X=d.X)
    with pytest.raises(ValueError, match=r"T is too small for .* so T\^2 is only 5.87096e-50, under 1e-30"):
        CausalForestDML(n_estimators=4).fit(d.Y, d.T * 1e-25 + 1e-26 * d.X[:, 0] ** 2, X=d.X)
    # Large, but in range (amounts in wei): the same estimate at every scale, as before the check
    # (a review of a first limit at 1e15, which refused them).
    small, large = (CausalForestDML(n_estimators=20, cv=2, random_state=0).fit(d.Y * scale, d.T, X=d.X).ate_ / scale
                    for scale in (1.0, 1e30))
    assert large == pytest.approx(small, rel=1e-4)
    # Each of these reached the user as a scikit-learn or NumPy error that named nothing of theirs.
    with pytest.raises(ValueError, match="X has no columns"):
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=np.empty((300, 0)))
    with pytest.raises(ValueError, match="model_y must be a regressor .* got the classifier LogisticRegression"):
        CausalForestDML(n_estimators=4, model_y="sklearn.linear_model.LogisticRegression").fit(d.Y, d.T, X=d.X)
    with pytest.raises(ValueError, match="model_t must be a regressor for a continuous treatment"):
        CausalForestDML(n_estimators=4, model_t="sklearn.linear_model.LogisticRegression").fit(d.Y, d.X[:, 0], X=d.X)
    with pytest.raises(ValueError, match="X must be numeric, but its column 'segment' holds object values"):
        frame = pd.DataFrame({"age": d.X[:, 0], "segment": np.where(d.X[:, 1] > 0, "hi", "lo")})
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=frame)
    # An EconML user's labelled treatment, as an array or a pandas category (a review: the conversion's
    # own words, or nothing for a Series), is told how to recode it.
    labels = np.where(d.T == 1, "treated", "control")
    for T in (labels, pd.Series(pd.Categorical(labels))):
        with pytest.raises(ValueError, match=r"T must be numeric.*recode it, e.g. T = \(T == 'treated'\)"):
            CausalForestDML(n_estimators=4).fit(d.Y, T, X=d.X)
    with pytest.warns(UserWarning, match="n_estimators=5 is odd, so ci_group_size='auto' grows single trees"):
        fitted_on_arrays = CausalForestDML(n_estimators=5, cv=2, progress=False).fit(d.Y, d.T, X=d.X)
    # A DataFrame for a fit on arrays: its names cannot be checked, which scikit-learn warns of.
    with pytest.warns(UserWarning, match="X has feature names, but the forest was fit without them"):
        fitted_on_arrays.effect(pd.DataFrame(d.X[:3], columns=[f"c{j}" for j in range(d.X.shape[1])]))
    with pytest.raises(ValueError, match="discrete_treatment must be True, False or 'auto', got 'yes'"):
        CausalForestDML(n_estimators=4, discrete_treatment="yes").fit(d.Y, d.T, X=d.X)
    # A numerics review: a constant outcome gave standard errors of 0, and 3 rows an error from
    # deep inside scikit-learn ("the resulting train set will be empty").
    with pytest.raises(ValueError, match="Y is constant: there is no effect on it to estimate"):
        CausalForestDML(n_estimators=4).fit(np.full(300, 2.0), d.T, X=d.X)
    with pytest.raises(ValueError, match=r"Y has 3 rows; cross-fitting with cv=2 needs at least 2 a fold \(4 rows"):
        CausalForestDML(n_estimators=4, cv=2).fit(d.Y[:3], d.X[:3, 0], X=d.X[:3])
    with pytest.raises(ValueError, match="X contains infinite values .first at row 3, column 0."):
        X = d.X.copy()
        X[3, 0], X[5, 1] = np.inf, np.nan  # the message names what the first bad cell holds
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=X)


def test_score_refuses_rows_unlike_the_fits():
    d = make_causal_data("simple", n=300, p=3, seed=0)
    W = d.X[:, :2] ** 2
    with pytest.raises(NotFittedError, match="not fitted yet"):
        CausalForestDML().score(d.Y, d.T, d.X)
    est = CausalForestDML(n_estimators=4, cv=2, random_state=0, progress=False).fit(d.Y, d.T, X=d.X, W=W)
    assert np.isfinite(est.score(d.Y, d.T, d.X, W)) and len(est.models_y[0]) == len(est.models_t[0]) == 2
    with pytest.raises(ValueError, match=r"W has 0 column\(s\) but the model was fit with 2: pass the same controls"):
        est.score(d.Y, d.T, d.X)
    with pytest.raises(ValueError, match="X has 2 columns"):
        est.score(d.Y, d.T, d.X[:, :2], W)
    with pytest.raises(ValueError, match="T must be 0 or 1: the model was fit with a binary treatment"):
        est.score(d.Y, d.T + 1, d.X, W)
    with pytest.raises(ValueError, match="same number of rows"):
        est.score(d.Y[:-1], d.T, d.X, W)
    with pytest.raises(ValueError, match="score needs at least one row"):
        est.score(d.Y[:0], d.T[:0], d.X[:0], W[:0])
    Y = d.Y.copy()
    Y[7] = np.nan
    with pytest.raises(ValueError, match=r"Y contains NaN \(first at row 7\)"):
        est.score(Y, d.T, d.X, W)
    # W's names are checked as X's are (a review: W's columns swapped moved the score 0.87 -> 3.04).
    import pandas as pd

    Wd = pd.DataFrame(W, columns=["w1", "w2"])
    named = CausalForestDML(n_estimators=4, cv=2, random_state=0, progress=False).fit(d.Y, d.T, X=d.X, W=Wd)
    assert list(named.control_names_in_) == ["w1", "w2"] and est.control_names_in_ is None
    assert named.score(d.Y, d.T, d.X, Wd) == named.score(d.Y, d.T, d.X, W)  # an array: taken in the fitted order
    for other, column in ((Wd[["w2", "w1"]], "column 0 is 'w2' where the fit had 'w1'"),
                          (Wd.set_axis(["p", "q"], axis=1), "column 0 is 'p' where the fit had 'w1'")):
        with pytest.raises(ValueError, match=f"W's columns differ from those the model was fit on: "
                                             f"{column}; .* \\(the model's control_names_in_\\)"):
            named.score(d.Y, d.T, d.X, other)


@pytest.mark.filterwarnings("ignore:intervals from")
def test_a_dataframe_fit_predicts_only_on_its_columns_in_their_order():
    import pandas as pd

    d = make_causal_data("simple", n=300, p=3, seed=0)
    X = pd.DataFrame(d.X, columns=["age", "income", "tenure"])
    est = CausalForestDML(n_estimators=20, random_state=0, progress=False).fit(d.Y, d.T, X=X)
    assert list(est.feature_names_in_) == ["age", "income", "tenure"]
    np.testing.assert_array_equal(est.effect(X), est.effect(d.X))  # arrays are taken in the fitted order
    with pytest.raises(ValueError, match="column 0 is 'tenure' where the fit had 'age'"):
        est.effect(X[["tenure", "income", "age"]])  # would silently be other covariates
    with pytest.raises(ValueError, match="column 1 is 'salary' where the fit had 'income'"):
        est.effect_interval(X.rename(columns={"income": "salary"}))
    with pytest.raises(ValueError, match=r"for a single row pass a 2-D array, X.reshape\(1, -1\)"):
        est.effect(d.X[0])
    refit = est.fit(d.Y, d.T, X=d.X)  # refit on an array: no names left over from the first fit
    assert not hasattr(refit, "feature_names_in_") and not hasattr(refit.forest_, "feature_names_in_")


def test_the_forest_alone_takes_any_random_state_scikit_learn_does():
    # A newcomer's review: random_state=None (or a Generator) drew a 63-bit seed that the local
    # linear correction's LassoCV refused ("must be an int in the range [0, 4294967295]").
    d = make_causal_data("simple", n=400, p=3, seed=0)
    for state in (None, np.random.default_rng(3), np.random.RandomState(3), 2**40):
        forest = CausalForest(n_estimators=8, random_state=state, progress=False).fit(d.X, d.T - d.e, d.Y - d.m)
        assert np.isfinite(forest.predict(d.X[:5])).all()  # the correction's covariate selection ran


def test_dml_takes_scikit_learns_random_states_and_explains_its_own_conventions():
    import pandas as pd

    d = make_causal_data("simple", n=300, p=3, seed=0)
    fits = [CausalForestDML(n_estimators=4, random_state=np.random.RandomState(7), progress=False).fit(d.Y, d.T, X=d.X)
            for _ in range(2)]  # a RandomState draws the seed, as in scikit-learn
    np.testing.assert_array_equal(fits[0].effect(d.X), fits[1].effect(d.X))
    for state in ("0", -1, 2**32):  # 2**32: numpy's own error from inside the nuisance models (a review)
        with pytest.raises(ValueError, match=r"random_state must be an int from 0 to 2\*\*32 - 1, .*got"):
            CausalForestDML(n_estimators=4, random_state=state).fit(d.Y, d.T, X=d.X)
    for call in (lambda: fits[0].ate_interval(d.X), lambda: fits[0].ate_interval(X=d.X)):  # EconML's ate_interval(X)
        with pytest.raises(TypeError, match="ate_interval takes alpha only.*use effect_interval"):
            call()
    for alpha in (None, "0.1", True, 0, 1.5):  # None and '0.1': a bare TypeError from '<' (a review)
        for call in (lambda a: fits[0].effect_interval(d.X, alpha=a),
                     lambda a: fits[0].effect_inference(d.X).conf_int(alpha=a)):
            with pytest.raises(ValueError, match=f"alpha must be a number in \\(0, 1\\), got {alpha!r}"):
                call(alpha)
    np.testing.assert_array_equal(fits[0].const_marginal_effect(d.X), fits[0].effect(d.X))  # EconML's names
    np.testing.assert_array_equal(fits[0].feature_importances_, fits[0].forest_.feature_importances())
    X = pd.DataFrame(d.X).astype("Float64")
    X.iloc[5, 1] = pd.NA
    with pytest.raises(ValueError, match=r"X contains NaN \(first at row 5, column 1\)"):
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=X)
    with pytest.raises(ValueError, match=r"X contains NaN \(first at row 5, column 'n_orders'\)"):
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=X.set_axis(["age", "n_orders", "spend"], axis=1))
    with pytest.raises(ValueError, match="X's column 'signup' holds datetime64"):
        CausalForestDML(n_estimators=4).fit(d.Y, d.T, X=frame_with_dates(d.X))
    # Rows are matched by position: an outcome Series sorted another way than X (a data review:
    # ATE -0.06 for a true 3.06, silently) is refused.
    frame = pd.DataFrame(d.X, columns=["a", "b", "c"])
    outcome = pd.Series(d.Y).sort_index(ascending=False)
    with pytest.raises(ValueError, match=r"X and Y are pandas objects with different indexes \(at position 0: 0 and "
                                         r"299\); rows are matched by position"):
        CausalForestDML(n_estimators=4).fit(outcome, d.T, X=frame)
    with pytest.raises(ValueError, match=r"Y must be 1-dimensional, got shape \(300, 2\): one Y column per model"):
        CausalForestDML(n_estimators=4).fit(np.c_[d.Y, d.Y], d.T, X=d.X)  # EconML's several outcomes
    with pytest.warns(UserWarning, match=r"T takes two values \(1, 2\) but not 0 and 1"):
        CausalForestDML(n_estimators=4, progress=False, random_state=0).fit(d.Y, d.T + 1, X=d.X)
    arms = d.T + (np.arange(len(d.T)) % 3 == 0)  # 0, 1, 2: three arms taken as a dose (a review: not a word)
    with pytest.warns(UserWarning, match=r"T takes 3 values \(0, 1, 2\), so it is treated as continuous"):
        CausalForestDML(n_estimators=4, progress=False, random_state=0).fit(d.Y, arms, X=d.X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silenced as the message says
        CausalForestDML(n_estimators=20, progress=False, random_state=0, discrete_treatment=False).fit(d.Y, arms, X=d.X)


def frame_with_dates(X):
    frame = pd.DataFrame(X, columns=[f"x{j}" for j in range(X.shape[1])])
    return frame.assign(signup=pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(len(X)), unit="D"))


class CountingRegression(LinearRegression):
    """LinearRegression that counts its fits (over every clone: a class attribute)."""

    fits = 0

    def fit(self, X, y, sample_weight=None):
        CountingRegression.fits += 1
        return super().fit(X, y, sample_weight)


def test_a_refused_refit_leaves_the_estimator_unfitted_and_is_refused_before_the_nuisance_fits():
    # An API review: mtry=4 on 3 covariates was refused only after cross-fitting, and left the
    # old forest and ate_ beside the new nuisance models; score() on the first data then crashed.
    first, second = make_causal_data("simple", n=400, p=5, seed=0), make_causal_data("continuous", n=400, p=3, seed=1)
    est = CausalForestDML(n_estimators=20, cv=2, mtry=4, random_state=0, model_y=CountingRegression()).fit(
        first.Y, first.T, X=first.X)
    assert np.isfinite(est.ate_)
    CountingRegression.fits = 0
    with pytest.raises(ValueError, match="mtry must be an integer between 1 and 3"):
        est.fit(second.Y, second.T, X=second.X)
    assert CountingRegression.fits == 0
    assert not [a for a in vars(est) if a.endswith("_") and not a.startswith("_")] and not hasattr(est, "models_y")
    with pytest.raises(NotFittedError):
        est.effect(first.X)
    assert est.set_params(mtry=3).fit(second.Y, second.T, X=second.X).ate_ == pytest.approx(1.0, abs=0.5)


def test_a_refused_forest_refit_leaves_the_forest_unfitted(data):
    # A review: a refit refused for its groups kept the new seed and groups beside the old trees,
    # and out-of-bag estimates silently moved by up to 0.55.
    d, t, y = data
    forest = CausalForest(n_estimators=40, random_state=0).fit(d.X, t, y)
    with pytest.raises(ValueError, match="2 groups give each tree a subsample of 1"):
        forest.set_params(random_state=5).fit(d.X, t, y, groups=np.arange(len(t)) % 2)
    assert not [a for a in vars(forest) if a.endswith("_") and not a.startswith("_")]
    with pytest.raises(NotFittedError):
        forest.oob_predict(d.X)
    # The message names what is at fault (a review: it blamed the rows for an extreme honesty_fraction).
    with pytest.raises(ValueError, match=r"honesty_fraction=0.9995 leaves \d+ to choose splits and 0 to estimate"):
        CausalForest(n_estimators=4, honesty_fraction=0.9995).fit(d.X[:1000], t[:1000], y[:1000])
    with pytest.raises(ValueError, match=r"\(max_samples=0.001\).*or a larger max_samples"):
        CausalForest(n_estimators=4, max_samples=0.001).fit(d.X[:1000], t[:1000], y[:1000])


def test_weights_that_leave_a_tree_without_data_or_the_treatment_without_variation_are_refused(data):
    # A review: 20 positive weights of 400 left some trees' estimation halves empty, and every
    # estimate was NaN; a binary T weighted in one arm only gave NaN or a LinAlgError.
    d, t, y = data
    few = np.zeros(len(t))
    few[:20] = 1.0
    with pytest.raises(ValueError, match="only 20 of 1500 rows have positive sample_weight, and some trees drew none"):
        CausalForest(random_state=0).fit(d.X, t, y, sample_weight=few)
    one_arm = (d.T == 1).astype(float)
    with pytest.raises(ValueError, match="T is constant among the rows of positive sample_weight"):
        CausalForest(random_state=0).fit(d.X, d.T, y, sample_weight=one_arm)


def test_dml_accepts_models_by_import_path_and_reports_nuisance_scores():
    d = make_causal_data("continuous", n=800, p=4, seed=0)
    est = CausalForestDML(model_y="sklearn.linear_model.LinearRegression",
                          model_t="sklearn.linear_model.LinearRegression", cv=3, n_estimators=20,
                          random_state=0).fit(d.Y, d.T, X=d.X)
    assert not est.discrete_treatment_
    assert set(est.nuisance_scores_) == {"y_r2", "t_r2"}
    assert len(est.nuisance_scores_["y_r2"]) == 3
    y_res, t_res = est.residuals_
    assert y_res.shape == t_res.shape == (800,)


def test_progress_is_silent_off_a_terminal_and_logged_on_request(data, capfd, monkeypatch):
    from tauforge.kernels import progress

    monkeypatch.setattr(progress, "DELAY", 0.0)  # show even this quick fit's progress
    d, t, y = data
    CausalForest(n_estimators=8, random_state=0).fit(d.X, t, y)  # stderr is captured, not a TTY
    CausalForest(n_estimators=8, random_state=0, progress=False).fit(d.X, t, y)
    assert capfd.readouterr().err == ""
    CausalForest(n_estimators=8, random_state=0, progress=True, linear_correction_variables=[0]).fit_shard(
        d.X, t, y, shard=1, n_shards=2)
    # The pilot of the candidate weights first (every shard grows the same one), then the shard's
    # trees; the correction's time follows the trees'.
    pilot, growth, correction = capfd.readouterr().err.splitlines()
    assert pilot.startswith("tauforge: pilot forest (candidate weights): 8/8 trees in ")
    assert growth.startswith("tauforge: growing trees (shard 2/2): 4/4 trees in ")
    assert correction.startswith("tauforge: local linear correction (shard 2/2): done in ")


def test_cuda_request_without_a_gpu_is_an_error_not_a_fallback(data):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    d, t, y = data
    with pytest.raises(ValueError, match="no CUDA device"):
        CausalForest(n_estimators=4, device="cuda").fit(d.X, t, y)


@pytest.mark.gpu
def test_cuda_fit_matches_cpu_and_returns_tensors_on_the_gpu(data, fitted):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    d, t, y = data
    gpu = CausalForest(n_estimators=40, random_state=7, device="cuda").fit(d.X, t, y)
    X = torch.from_numpy(d.X[:100]).cuda()
    tau = gpu.predict(X)
    assert tau.device.type == "cuda"
    np.testing.assert_allclose(tau.cpu().numpy(), fitted.predict(d.X[:100]), rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:intervals from")
def test_a_fit_without_overlap_warns_and_one_with_it_does_not():
    # A review: the treatment decided by X0, ate_ 0.58 [0.43, 0.74] for a true 1.00 without a word.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(600, 5))
    outside = r"\d+% of rows have an estimated propensity outside \[0.05, 0.95\]"
    for decided, expected in ((False, None), (True, outside)):
        T = (X[:, 0] > 0 if decided else rng.random(600) < 1 / (1 + np.exp(-X[:, 0]))).astype(float)
        Y = X[:, 1] + T + rng.normal(size=600)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            CausalForestDML(n_estimators=20, random_state=0, progress=False).fit(Y, T, X=X)
        overlap = [str(w.message) for w in caught if "overlap" in str(w.message)]
        if expected is None:
            assert overlap == []
        else:
            assert len(overlap) == 1 and re.match(expected, overlap[0]), overlap
            assert [w.filename for w in caught if "overlap" in str(w.message)] == [__file__]  # the caller's line
    # A continuous treatment that X decides where X1 < -1 (16% of rows): Var(T | X) is 0 there.
    T = X[:, 0] + rng.normal(size=600) * (X[:, 1] > -1)
    with pytest.warns(UserWarning, match=r"% of rows have an estimated Var\(T \| X\) under 0.1 of its mean") as w:
        CausalForestDML(n_estimators=20, random_state=0, progress=False).fit(X[:, 1] + T, T, X=X)
    # Its advice is a continuous treatment's: no propensity clip, no arms (a review).
    (message,) = [str(m.message) for m in w if "Var(T | X)" in str(m.message)]
    assert "min_propensity" not in message and "arms" not in message and "treatment varies" in message


def test_the_engines_warnings_name_the_callers_line():
    # A review: fixed stack levels pointed at dml.py's and forest.py's own lines, where a filter on
    # the caller's module does not reach them.
    d = make_causal_data("simple", n=300, p=3, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CausalForestDML(n_estimators=21, random_state=0, progress=False).fit(d.Y, d.T + 1, X=d.X)  # odd; 1/2
        fit = CausalForestDML(n_estimators=40, random_state=0, progress=False).fit(d.Y, d.T, X=d.X,
                                                                                  groups=np.arange(300) % 5)
        fit.effect_interval(d.X[:5])  # intervals from 40 trees, deep inside the forest
    messages = {str(w.message).split(" ")[0] + " " + str(w.message).split(" ")[1] for w in caught}
    assert {"n_estimators=21 is", "T takes", "intervals from"} <= messages, messages
    assert all(w.filename == __file__ for w in caught), [(w.filename, str(w.message)[:40]) for w in caught]


@pytest.mark.filterwarnings("ignore:intervals from")
def test_dml_with_very_few_trees_still_has_a_finite_ate_and_scaled_effects():
    d = make_causal_data("simple", n=400, p=3, seed=0)
    # Rows every tree saw enter ate_ in-sample, and it says so (a review: silently, at 1 or 2 trees).
    with pytest.warns(UserWarning, match=r"\d+% of the training rows have no out-of-bag estimate"):
        est = CausalForestDML(n_estimators=4, cv=2, random_state=0).fit(d.Y, d.T, X=d.X)
    assert np.isfinite(est.ate_) and np.isfinite(est.ate_stderr_)
    X = d.X[:20]
    np.testing.assert_allclose(est.effect(X, T0=1, T1=0), -est.effect(X))
    lo, hi = est.effect_interval(X, T0=1, T1=0)  # a negative change flips the interval
    assert np.all(lo <= hi)
    with pytest.raises(ValueError, match="T1 must be 0 or 1 for a binary treatment"):
        est.effect(X, T1=5)  # as EconML's unknown category
    c = make_causal_data("continuous_hetero", n=400, p=3, seed=0)
    est = CausalForestDML(n_estimators=4, cv=2, random_state=0).fit(c.Y, c.T, X=c.X)
    np.testing.assert_allclose(est.effect(X, T0=1, T1=3), 2 * est.effect(X))
    # One treatment change per row, as EconML takes them, in either shape; a (20, 1) column
    # must not broadcast against the 20 effects into a (20, 20) table.
    change = np.linspace(-2, 2, 20)
    for T1 in (change, change[:, None]):
        np.testing.assert_allclose(est.effect(X, T1=T1), change * est.effect(X))
    lo, hi = est.effect_interval(X, T0=change, T1=0)
    base_lo, base_hi = est.effect_interval(X)
    np.testing.assert_allclose(lo, np.minimum(-change * base_lo, -change * base_hi))
    np.testing.assert_allclose(hi, np.maximum(-change * base_lo, -change * base_hi))
    np.testing.assert_allclose(est.effect_inference(X, T1=change).point_estimate, change * est.effect(X))
    with pytest.raises(ValueError, match=r"one value per row of X \(20\), got shape \(5,\)"):
        est.effect(X, T1=np.ones(5))
    with pytest.raises(TypeError, match="T0 must be a number"):
        est.effect(X, T0=None)


def test_weights_say_how_much_rows_count_and_an_arm_of_zero_weight_is_refused():
    d = make_causal_data("simple", n=400, p=3, seed=0)
    fits = [CausalForestDML(n_estimators=8, cv=2, random_state=0, progress=False).fit(d.Y, d.T, X=d.X, sample_weight=w)
            for w in (None, np.full(400, 2.0))]
    # The nuisance models' ridge penalties are not scale-free: unnormalized, 2 * ones moved the
    # outcome residuals by up to 0.13.
    np.testing.assert_allclose(fits[0].residuals_[0], fits[1].residuals_[0], atol=1e-9)
    assert fits[0].ate_ == pytest.approx(fits[1].ate_)
    with pytest.raises(ValueError, match="T is constant among the rows of positive sample_weight"):
        CausalForestDML(n_estimators=8).fit(d.Y, d.T, X=d.X, sample_weight=(d.T == 0).astype(float))
    few = np.ones(400)
    few[np.flatnonzero(d.T == 1)[3:]] = 0.0  # 3 treated rows count
    with pytest.raises(ValueError, match="T has only 3 row.s. of positive sample_weight in its smaller arm"):
        CausalForestDML(n_estimators=8, cv=5).fit(d.Y, d.T, X=d.X, sample_weight=few)
    assert not hasattr(CausalForestDML(), "feature_importances_")  # NotFittedError is an AttributeError


def test_weights_move_the_average_effect_to_the_weighted_population():
    # The effect is 2 where x0 > 0 and 0 elsewhere; those rows weigh 3, so the weighted average
    # effect is 1.485 and the unweighted one 0.98. An estimator that ignored the weights in its
    # average (a test audit's mutation) lands 9 standard errors from the weighted truth.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    T = rng.binomial(1, 0.5, 3000).astype(float)
    tau = np.where(X[:, 0] > 0, 2.0, 0.0)
    Y = X[:, 1] + tau * T + rng.normal(size=3000)
    w = np.where(X[:, 0] > 0, 3.0, 1.0)
    est = CausalForestDML(n_estimators=100, cv=2, random_state=0, progress=False).fit(Y, T, X=X, sample_weight=w)
    lo, hi = est.ate_interval()
    assert lo < np.average(tau, weights=w) < hi and not lo < tau.mean() < hi, (lo, hi)


def test_the_variance_weighted_effect_and_its_standard_error_weigh_rows_by_their_sample_weight():
    # The sandwich written out on the fit's own residuals: fit dropped the weights of this effect
    # and its score its weights, each passing every test (a mutation review).
    d = make_causal_data("simple", n=600, p=3, seed=1)
    w = np.where(d.X[:, 0] > 0.5, 3.0, 1.0)
    est = CausalForestDML(n_estimators=8, cv=2, random_state=0, progress=False).fit(d.Y, d.T, X=d.X,
                                                                                   sample_weight=w)
    y_res, t_res = est.residuals_
    theta = np.sum(w * t_res * y_res) / np.sum(w * t_res**2)
    stderr = np.sqrt(np.sum((w * t_res * (y_res - theta * t_res)) ** 2)) / np.sum(w * t_res**2)
    assert est.variance_weighted_effect_ == pytest.approx(theta, rel=1e-12)
    assert est.variance_weighted_stderr_ == pytest.approx(stderr, rel=1e-12)
    # Not vacuous: the weights move both, and the standard error does not depend on their scale.
    unweighted = np.sum(t_res * y_res) / np.sum(t_res**2)
    assert abs(theta - unweighted) > 0.1 * stderr
    assert abs(np.sqrt(np.sum((t_res * (y_res - theta * t_res)) ** 2)) / np.sum(w * t_res**2) - stderr) > 0.1 * stderr
    assert variance_weighted_effect(y_res, t_res, 5 * w) == pytest.approx((theta, stderr), rel=1e-12)


def test_effect_inference_is_econmls_summary_over_the_forests_own_intervals():
    import warnings

    from econml.dml import CausalForestDML as EconMLCausalForestDML
    from sklearn.linear_model import LinearRegression, LogisticRegression

    d = make_causal_data("simple", n=1000, p=4, seed=0)
    est = CausalForestDML(n_estimators=500, cv=2, random_state=0).fit(d.Y, d.T, X=d.X)
    X = d.X[:200]
    inference = est.effect_inference(X)
    np.testing.assert_allclose(inference.point_estimate, est.effect(X))
    for alpha in (0.05, 0.2):  # the same intervals as effect_interval's
        np.testing.assert_allclose(inference.conf_int(alpha), est.effect_interval(X, alpha=alpha))
    frame = inference.summary_frame(decimals=None)
    # A p-value under 0.05 exactly where the 95% interval leaves out 0 (a sign error or a
    # one-sided p-value would split them), and both sides occur on this design.
    outside = (frame["ci_lower"] > 0) | (frame["ci_upper"] < 0)
    assert ((frame["pvalue"] < 0.05) == outside).all() and 0 < outside.sum() < len(X)
    np.testing.assert_allclose(inference.summary_frame(value=0.5, decimals=None)["zstat"],
                               (frame["point_estimate"] - 0.5) / frame["stderr"])
    moved = est.effect_inference(X, T0=1, T1=0)  # a change of -1: the effect, sign flipped
    np.testing.assert_allclose(moved.point_estimate, -inference.point_estimate)
    np.testing.assert_allclose(moved.conf_int(0.05), est.effect_interval(X, T0=1, T1=0, alpha=0.05))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = EconMLCausalForestDML(model_y=LinearRegression(), model_t=LogisticRegression(), discrete_treatment=True,
                                    n_estimators=100, random_state=0).fit(d.Y, d.T, X=d.X)
    theirs = ref.effect_inference(X[:5]).summary_frame()
    ours = est.effect_inference(X[:5]).summary_frame()
    assert list(ours.columns) == list(theirs.columns) and ours.index.name == theirs.index.name
    assert ours.shape == theirs.shape and ours.equals(ours.round(3))


def test_effect_inference_on_hand_numbers():
    # var was stderr itself, unsquared, and passed every test (a mutation review): it is not in
    # summary_frame, which the test above checks.
    from scipy.stats import norm

    from tauforge.kernels.inference import EffectInference

    inference = EffectInference(np.array([1.0, -3.0]), np.array([0.5, 2.0]))
    np.testing.assert_allclose(inference.var, [0.25, 4.0])
    np.testing.assert_allclose(inference.zstat(), [2.0, -1.5])
    np.testing.assert_allclose(inference.zstat(1.0), [0.0, -2.0])
    np.testing.assert_allclose(inference.pvalue(), [0.0455003, 0.1336144], rtol=1e-6)
    lower, upper = inference.conf_int(0.1)
    half = norm.ppf(0.95) * np.array([0.5, 2.0])
    np.testing.assert_allclose(lower, [1.0, -3.0] - half)
    np.testing.assert_allclose(upper, [1.0, -3.0] + half)


def test_shards_merge_into_the_forest_one_fit_grows(data, fitted, tmp_path):
    d, t, y = data
    shards = [CausalForest(n_estimators=40, random_state=7).fit_shard(d.X, t, y, shard=k, n_shards=3)
              for k in (2, 0, 1)]
    assert sum(s.forest_.n_trees for s in shards) == 40
    for k, s in enumerate(shards):  # shards also survive a save and load, as between pipeline tasks
        s.save(tmp_path / str(k))
    # X smooths the variance; X, T and y choose the correction's penalty as the whole fit did.
    merged = CausalForest.merge([CausalForest.load(tmp_path / str(k)) for k in range(3)], X=d.X, T=t, y=y)
    for field in ("feature", "threshold", "child", "leaf_values"):
        np.testing.assert_array_equal(getattr(merged.forest_, field), getattr(fitted.forest_, field))
    np.testing.assert_array_equal(merged.predict_and_var(d.X[:100])[1], fitted.predict_and_var(d.X[:100])[1])
    np.testing.assert_array_equal(merged.oob_predict(d.X), fitted.oob_predict(d.X))


def test_incomplete_or_mismatched_shards_are_refused(data):
    d, t, y = data
    grow = lambda k, n=3, seed=7: CausalForest(n_estimators=40, random_state=seed).fit_shard(  # noqa: E731
        d.X, t, y, shard=k, n_shards=n)
    s0, s1 = grow(0), grow(1)
    with pytest.raises(ValueError, match="needs shards 0..2 of 3"):
        CausalForest.merge([s0, s1])
    with pytest.raises(ValueError, match="differ in parameters, seed"):
        CausalForest.merge([s0, s1, grow(2, seed=8)])
    # The same covariates bin alike: residuals of another nuisance fit are told apart by the digest.
    other = CausalForest(n_estimators=40, random_state=7).fit_shard(d.X, t, y + 0.01, shard=2, n_shards=3)
    with pytest.raises(ValueError, match="grown on different data"):
        CausalForest.merge([s0, s1, other])
    with pytest.raises(ValueError, match="join the shards with CausalForest.merge"):
        s0.oob_predict(d.X)
    with pytest.raises(ValueError, match="n_shards must be an integer between 1 and"):
        grow(0, n=21)
    with pytest.raises(ValueError, match="needs random_state"):
        CausalForest(n_estimators=40).fit_shard(d.X, t, y, shard=0, n_shards=2)


def test_half_samples_on_an_odd_number_of_rows_are_drawn_whole():
    """max_samples=0.5 (the default) rounds up to 151 of 301 rows, past the 150-row half-sample its
    group shares: the tree takes the whole half rather than failing."""
    rng = np.random.default_rng(5)
    X, t = rng.normal(size=(301, 3)), rng.normal(size=301)
    forest = CausalForest(n_estimators=4, random_state=5, progress=False).fit(X, t, t + rng.normal(size=301))
    sampler = forest._sampler(301)
    assert sampler.subsample_size == sampler.half_size == 150
    assert forest.forest_.n_trees == 4


# A CPU forest's whole life, as the pipeline's shard, merge and evaluate tasks and a model server
# live it: the numba backend works on NumPy arrays, so torch (over a second of each such process's
# start) never loads. The backends' agreement is test_local_linear's and test_kernels' concern.
CPU_FOREST_LIFE = """import json, sys
import numpy as np
from tauforge.kernels import CausalForest
from tauforge.kernels.datasets import make_causal_data
d = make_causal_data("aw2", n=1500, p=4, seed=5)
shards = [CausalForest(n_estimators=40, random_state=0).fit_shard(d.X, d.T - d.e, d.Y - d.m, shard=k, n_shards=2)
          for k in range(2)]
shards[1].save(sys.argv[1])
forest = CausalForest.merge([shards[0], CausalForest.load(sys.argv[1])])
tau, lower, upper = forest.predict_with_interval(d.X[:50])
oob, oob_var = forest.oob_predict_and_var(d.X)
print(json.dumps([forest.device_, forest.linear_correction_ is not None, bool(np.all(lower < upper)),
                  float(np.isfinite(oob_var).mean()), "torch" in sys.modules]))
"""


def test_a_cpu_forest_grows_merges_loads_and_predicts_without_loading_torch(tmp_path):
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", CPU_FOREST_LIFE, str(tmp_path / "shard")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    device, corrected, ordered, oob_with_variance, torch_loaded = json.loads(out.stdout.splitlines()[-1])
    assert (device, corrected, ordered, torch_loaded) == ("cpu", True, True, False)
    assert oob_with_variance > 0.5  # the out-of-bag (gathered, NumPy) path ran and gave variances


def test_thread_counts_from_the_environment_are_read_as_openmp_does_and_nonsense_is_ignored(monkeypatch):
    # A review: OMP_NUM_THREADS='²' passed isdigit() and then failed int(); OpenMP's list form
    # '2,1' and ' 1' were ignored; a LOKY_MAX_CPU_COUNT that is no number failed every save.
    from joblib import cpu_count

    from tauforge.kernels.cpus import usable_cpus

    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    machine = cpu_count()
    for value, want in (("1", 1), (" 1", 1), ("1,1", 1), ("²", machine), ("abc", machine), ("0", machine)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert usable_cpus() == min(want, machine), value
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "abc")
    assert usable_cpus() >= 1


def test_a_server_runs_numbas_kernels_on_the_cpus_its_pod_may_use(monkeypatch):
    # A review: numba sizes its pool from the node's cores, not a pod's CPU limit (which joblib's
    # count reads): a 1-CPU predictor on a large node ran every core's thread under a 1-CPU quota.
    import numba

    from tauforge.kernels import cpus

    before = numba.get_num_threads()
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 1)
    try:
        monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
        cpus.limit_thread_pools()
        assert numba.get_num_threads() == 1
        numba.set_num_threads(before)
        monkeypatch.setenv("NUMBA_NUM_THREADS", str(before))  # set by the operator: kept
        cpus.limit_thread_pools()
        assert numba.get_num_threads() == before
    finally:
        numba.set_num_threads(before)
