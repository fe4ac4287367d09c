"""The local linear correction (kernels/local_linear.py): the regression it claims to solve, the
forest it reduces to, what it buys on a steep effect, and its life as saved arrays."""

import numpy as np
import pytest
import torch
from test_accuracy import interval_score

from tauforge.kernels import CausalForest
from tauforge.kernels.backends import get_backend
from tauforge.kernels.forest import _centred
from tauforge.kernels.local_linear import (
    DEFAULT_RIDGE,
    EFFECT_PENALTY,
    LEVEL_PENALTY,
    RIDGE_PATH,
    LocalLinearCorrection,
    choose_ridge,
    local_linear_estimate,
    n_moments,
    select_variables,
)
from tauforge.kernels.prediction import forest_estimate


def _steep(n, seed, p=5):
    """A binary-treatment-like residual problem whose effect is steep and linear in X1."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, p))
    tau = 1 + 2 * X[:, 0]
    t = rng.binomial(1, 0.5, n) - 0.5
    y = tau * t + rng.normal(size=n)
    return X, t, y, tau


def _forest(**kw):
    """A forest without the correction unless `linear_correction_variables` is given, at the
    penalty 0.1 unless `linear_correction_ridge` is given, with the per-point variance that grf's
    formulas give (test_variance_smoothing.py smooths it) and candidates drawn uniformly
    (test_candidate_weights.py weighs them): the correction alone."""
    kw.setdefault("linear_correction_variables", None)
    kw.setdefault("linear_correction_ridge", DEFAULT_RIDGE)
    kw.setdefault("variance_smoothing", False)
    kw.setdefault("candidate_weights", None)
    return CausalForest(n_estimators=kw.pop("n_estimators", 200), random_state=0, progress=False, **kw)


def test_without_covariates_the_correction_is_the_forest_itself():
    """d = 0: the correction's regression is the forest's own moment equation, and its
    linearized variance the forest's little-bag variance."""
    X, t, y, _ = _steep(1500, 0)
    forest = _forest().fit(X, t, y)
    samples = forest._sampler(len(t)).trees(0, forest.n_estimators // forest._group_size())
    plain = LocalLinearCorrection.fit((), 0.1, X, t, y, np.ones(len(t)), forest._backend, forest.binner_.bin(X).fine,
                                      forest.forest_, samples)
    X_test = _steep(300, 1)[0]
    ids = forest._backend.leaf_ids(forest._codes(X_test), forest.forest_)
    tau_ll, var_ll = local_linear_estimate(forest._backend, ids, plain.leaf_moments, np.zeros((300, 0)), 0.1, 2)
    tau, var = forest_estimate(forest.forest_.leaf_values[ids].astype(np.float64), 2)
    # Leaf means are float32 in both, summed in a different order: agreement to float32 precision.
    np.testing.assert_allclose(tau_ll, tau, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var_ll, var, rtol=1e-3)


def test_the_correction_solves_grfs_weighted_ridge_regression_with_the_forest_weights():
    """Against the regression written out with explicit forest weights alpha_i(x)."""
    X, t, y, _ = _steep(600, 2)
    forest = _forest(n_estimators=20, linear_correction_variables=[0, 2], linear_correction_ridge=0.3).fit(X, t, y)
    t, y = _centred(t, None), _centred(y, None)  # as the forest grows on them
    X_test = _steep(25, 3)[0]
    got = forest.predict(X_test)
    forest.linear_correction_.penalty_blocks = False  # as models saved before the per-block penalty
    got_before = forest.predict(X_test)
    samples = forest._sampler(len(t)).trees(0, 10)
    train_leaf = forest._backend.leaf_ids(forest._codes(X), forest.forest_)
    test_leaf = forest._backend.leaf_ids(forest._codes(X_test), forest.forest_)
    Z = (X[:, [0, 2]] - X[:, [0, 2]].mean(axis=0)) / X[:, [0, 2]].std(axis=0)
    Z_test = (X_test[:, [0, 2]] - X[:, [0, 2]].mean(axis=0)) / X[:, [0, 2]].std(axis=0)
    for k in range(len(X_test)):
        alpha = np.zeros(len(t))
        for b, sample in enumerate(samples):
            rows = sample.estimation[train_leaf[sample.estimation, b] == test_leaf[k, b]]
            alpha[rows] += 1 / len(rows) / len(samples)
        dz = Z - Z_test[k]
        design = np.hstack([np.ones((len(t), 1)), dz, t[:, None], t[:, None] * dz])
        M = design.T @ (alpha[:, None] * design)
        # Each block's slopes by its own diagonal: (1, Z) for the level, (t~, t~ Z) for the effect.
        level, effect = np.diag(M)[:3].mean(), np.diag(M)[3:].mean()
        penalty = 0.3 * np.array([0, LEVEL_PENALTY * level, LEVEL_PENALTY * level,
                                  0, EFFECT_PENALTY * effect, EFFECT_PENALTY * effect])
        theta = np.linalg.solve(M + np.diag(penalty), design.T @ (alpha * y))
        assert got[k] == pytest.approx(theta[3], rel=1e-4, abs=1e-4)
        penalty = 0.3 * np.trace(M) / 6 * np.array([0, 1, 1, 0, 1, 1])  # one trace for both
        theta = np.linalg.solve(M + np.diag(penalty), design.T @ (alpha * y))
        assert got_before[k] == pytest.approx(theta[3], rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("units", [1e-3, 1e3])
def test_the_corrected_effect_does_not_depend_on_the_treatments_units(units):
    # A numerics review: one trace mixed the level's unit-free block with the effect's, in T's
    # units squared, so a continuous treatment's CATE moved by up to 27% with T's units (1e-3).
    X, t, y, _ = _steep(1500, 4)
    t = t + np.random.default_rng(4).normal(scale=0.8, size=len(t))  # continuous
    X_test = _steep(300, 5)[0]
    base = _forest(linear_correction_variables=[0, 1]).fit(X, t, y)
    scaled = _forest(linear_correction_variables=[0, 1]).fit(X, units * t, y)
    tau, var = base.predict_and_var(X_test)
    tau_scaled, var_scaled = scaled.predict_and_var(X_test)
    np.testing.assert_allclose(units * tau_scaled, tau, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(units**2 * var_scaled, var, rtol=1e-3)
    scaled.linear_correction_.penalty_blocks = False  # the one-trace penalty moves with the units
    assert np.abs(units * scaled.predict(X_test) - tau).max() > 0.01


@pytest.mark.parametrize("shift, moved", [(0.5, 0.0), (10.0, 0.0), (1e4, 0.0), (0.3, 2e-3), (1e4 + 0.1, 2e-3)])
def test_the_effect_does_not_move_when_t_or_y_is_shifted_by_a_constant(shift, moved):
    # A review: the correction's ridge shrinks the level's slopes, which a shift of T mixes with
    # the effect's (a raw 0/1 treatment, T + 0.5 against residuals, moved CATEs by up to 0.32),
    # and float32 leaf moments cancel far from 0. The forest centres T and y; before, these
    # shifts moved the CATEs here by up to 0.09, 0.29 and 428. A shift on the centring's grid
    # (2^-11 here: halves, whole numbers) moves nothing; any other, by a rounding of the mean.
    X, t, y, _ = _steep(1500, 4)
    X_test = _steep(300, 5)[0]
    base = _forest(linear_correction_variables=[0, 1]).fit(X, t, y)
    shifted = _forest(linear_correction_variables=[0, 1]).fit(X, t + shift, y - shift)
    tau, var = base.predict_and_var(X_test)
    tau_shifted, var_shifted = shifted.predict_and_var(X_test)
    np.testing.assert_allclose(tau_shifted, tau, rtol=1e-6, atol=1e-6 + moved)
    np.testing.assert_allclose(var_shifted, var, rtol=1e-5 + 10 * moved)
    np.testing.assert_allclose(shifted.oob_predict(X), base.oob_predict(X), rtol=1e-6, atol=1e-6 + moved)


def test_both_backends_give_the_corrected_estimate_and_its_variance():
    """The numba kernels (leaf_means, leaf_scores: no (rows, trees, K) gather) against the torch
    backend's gathered moments, on new rows and out of bag (where trees are excluded per row)."""
    X, t, y, _ = _steep(800, 6)
    forest = _forest(n_estimators=40, linear_correction_variables=[0, 1]).fit(X, t, y)
    X_test = _steep(200, 7)[0]
    results = {}
    for name in ("numba", "torch"):
        forest._backend = get_backend(name, torch.device("cpu"))
        results[name] = (*forest.predict_and_var(X_test), *forest._estimate(X, with_variance=True, oob=True))
    for got, want in zip(results["numba"], results["torch"]):
        assert np.isfinite(want).mean() > 0.5  # not vacuous: out of bag too, most rows have a variance
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.filterwarnings("ignore:intervals from 20 trees")
def test_rows_far_outside_the_training_data_get_the_estimate_the_correction_tends_to_not_nan():
    # Centring at a row squares its covariates: at 1e160 that overflowed, and the CATE, its
    # interval and the served answer were NaN. Far out, the ridge holds the slopes, so the
    # estimate settles; past DESIGN_LIMIT standard deviations the row's covariates are held there.
    X, t, y, _ = _steep(600, 8)
    forest = _forest(n_estimators=20, linear_correction_variables=[0]).fit(X, t, y)
    far = np.array([[1e4], [1e8], [1e160], [np.finfo(np.float64).max], [-1e200]]) * [[1, 0, 0, 0, 0]]
    tau, var = forest.predict_and_var(far)
    assert np.isfinite(tau).all() and np.isfinite(var).all() and (var > 0).all()
    np.testing.assert_allclose(tau[1:4], tau[0], rtol=1e-4)  # settled by 1e4 sd (the column's sd is 0.58)


def test_covariates_are_held_only_past_the_design_limit_far_out():
    # The test above compares rows past 1e4 standard deviations with each other: with the limit at
    # 3 (a mutation review) they agreed too, every row past 3 sd getting the 3-sd row's estimate
    # (2.75 here, where the estimate settles at 2.32). The covariates are exact up to 1e6 sd.
    X, t, y, _ = _steep(600, 8)
    forest = _forest(n_estimators=20, linear_correction_variables=[0]).fit(X, t, y)
    c = forest.linear_correction_
    sd = np.array([3.0, 5.0, 10.0, 1e4, 1e5, 1e7, -1e7])
    rows = np.zeros((len(sd), 5))
    rows[:, 0] = c.center[0] + sd * c.scale[0]
    np.testing.assert_allclose(c.design(rows)[:, 0], [3.0, 5.0, 10.0, 1e4, 1e5, 1e6, -1e6], rtol=1e-9)
    tau = forest.predict(rows)
    assert abs(tau[1] - tau[0]) > 0.05 and abs(tau[2] - tau[1]) > 0.05  # still moving between 3 and 10 sd
    np.testing.assert_allclose(tau[3:5], tau[5], rtol=1e-4)  # settled long before the limit


def test_on_a_steep_effect_the_correction_cuts_the_error_and_keeps_coverage():
    """Less error, and coverage kept without buying it with width: the corrected intervals are no
    wider than the plain ones, and the interval score (width plus 2/alpha times each miss)
    prefers them, and prefers them to themselves at 2/3 or 3/2 their width."""
    X, t, y, _ = _steep(3000, 4)
    X_test, _, _, tau_test = _steep(2000, 5)
    plain = _forest(n_estimators=1000).fit(X, t, y)
    corrected = _forest(n_estimators=1000, linear_correction_variables=[0], linear_correction_ridge=0.01).fit(X, t, y)

    rmse, coverage, width, scores = {}, {}, {}, {}
    for name, forest in (("plain", plain), ("corrected", corrected)):
        tau, lo, hi = forest.predict_with_interval(X_test)
        half = (hi - lo) / 2
        rmse[name] = np.sqrt(np.mean((tau - tau_test) ** 2))
        coverage[name] = np.mean((lo <= tau_test) & (tau_test <= hi))
        width[name] = np.mean(hi - lo)
        scores[name] = [interval_score(tau - k * half, tau + k * half, tau_test, 0.05) for k in (1, 2 / 3, 3 / 2)]
    # Seeded, default forest settings (2026-12-05): RMSE plain 0.169, corrected 0.132; coverage
    # 0.894 and 0.944; width 0.600 and 0.540; score 0.947 and 0.672 (corrected at 2/3 and 3/2 its
    # width: 0.821, 0.834). A correction that did nothing would fail the first two lines; one that
    # inflated its variance 2.25-fold or more, the last three.
    assert rmse["corrected"] < 0.85 * rmse["plain"]
    assert coverage["corrected"] >= max(coverage["plain"], 0.9)
    assert width["corrected"] <= width["plain"]
    assert scores["corrected"][0] < scores["plain"][0]
    assert scores["corrected"][0] < min(scores["corrected"][1:])


def test_auto_chooses_the_covariates_the_effect_moves_with():
    X, t, y, _ = _steep(3000, 6, p=8)
    assert select_variables(X, t, y, seed=0) == (0,)
    rng = np.random.default_rng(7)
    assert select_variables(X, t, 0.5 * t + rng.normal(size=3000), seed=0) == ()  # a constant effect
    # Whatever the units of T and Y: with either 1e-16 times smaller, the lasso's solver
    # stopped on its absolute tolerances and the choice (and so the CATE) changed (a review).
    for units in (1e-16, 1e-20):
        assert select_variables(X, units * t, y, seed=0) == (0,)
        assert select_variables(X, t, units * y, seed=0) == (0,)


def test_saved_and_loaded_the_correction_predicts_the_same(tmp_path):
    X, t, y, _ = _steep(1500, 8)
    forest = _forest(linear_correction_variables="auto").fit(X, t, y)
    assert forest.linear_correction_.variables == (0,)
    forest.save(tmp_path / "m")
    loaded = CausalForest.load(tmp_path / "m")
    X_test = _steep(200, 9)[0]
    for a, b in zip(forest.predict_and_var(X_test), loaded.predict_and_var(X_test)):
        np.testing.assert_array_equal(a, b)
    import json

    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format_version"] == 5 and meta["linear_correction"] == {"variables": [0], "ridge": 0.1,
                                                                         "penalty": "blocks"}
    # A model of format 4 (before the per-block penalty) predicts as it was fit to.
    from tauforge.kernels.serialization import sha256_json

    meta["format_version"] = 4
    del meta["linear_correction"]["penalty"]
    meta["meta_sha256"] = sha256_json(meta, "meta_sha256")  # as format 4 wrote it, checksummed
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    old = CausalForest.load(tmp_path / "m")
    assert not old.linear_correction_.penalty_blocks
    old.save(tmp_path / "again")  # saved again, still format 4: its predictions do not change
    again = CausalForest.load(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "model.json").read_text())["format_version"] == 4
    np.testing.assert_array_equal(again.predict(X_test), old.predict(X_test))
    plain = _forest().fit(X, t, y)
    plain.save(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "model.json").read_text())["format_version"] == 3


def test_shards_merge_into_the_corrected_forest_fit_grows():
    X, t, y, _ = _steep(1200, 10)
    kw = dict(n_estimators=40, linear_correction_variables=[0, 1])
    whole = _forest(**kw).fit(X, t, y)
    shards = [_forest(**kw).fit_shard(X, t, y, shard=i, n_shards=3) for i in range(3)]
    merged = CausalForest.merge(shards)
    np.testing.assert_array_equal(merged.linear_correction_.leaf_moments, whole.linear_correction_.leaf_moments)
    np.testing.assert_array_equal(merged.predict(X[:50]), whole.predict(X[:50]))
    # Shards correcting on other covariates, or one without a correction, were merged (into
    # estimates reading one shard's leaf moments as another's covariates) or crashed (a review).
    # 'auto' chooses them from each shard's data: here (0,) from y, (2,) and none from others.
    auto = [_forest(n_estimators=40, linear_correction_variables="auto").fit_shard(X, t, y, shard=i, n_shards=3)
            for i in range(2)]
    noise = np.random.default_rng(3).normal(size=len(t))
    for other_y in (3 * t * X[:, 2] + noise, 0.5 * t + noise):
        odd = _forest(n_estimators=40, linear_correction_variables="auto").fit_shard(X, t, other_y, shard=2, n_shards=3)
        chosen = None if odd.linear_correction_ is None else odd.linear_correction_.variables
        assert chosen != auto[0].linear_correction_.variables
        with pytest.raises(ValueError, match="shards were grown on different data"):  # told by its digest
            CausalForest.merge([*auto, odd])
        odd.training_digest_ = None  # as a shard saved before digests were: the corrections tell
        with pytest.raises(ValueError, match="shards have different local linear corrections"):
            CausalForest.merge([*auto, odd])


@pytest.mark.parametrize("bad, message", [
    ("all", "linear_correction_variables must be None, 'auto' or a list"),
    ([0, 9], r"distinct column indices in \[0, 5\)"),
    ([1, 1], "distinct column indices"),
])
def test_bad_correction_variables_are_named(bad, message):
    X, t, y, _ = _steep(300, 11)
    with pytest.raises(ValueError, match=message):
        _forest(linear_correction_variables=bad).fit(X, t, y)


def _row_moments(z, t, y):
    """Per row: the upper triangle of u u' (row-major), then u y, u = (1, z, t, t z)."""
    n, d = z.shape
    v = np.hstack([np.ones((n, 1)), z])
    u = np.hstack([v, t[:, None] * v])
    i, j = np.triu_indices(2 * d + 2)
    return np.hstack([u[:, i] * u[:, j], u * y[:, None]])


def test_leaf_sums_are_the_weighted_row_moments_summed_by_leaf():
    from tauforge.kernels.backends.numba_cpu import local_linear_leaf_sums

    rng = np.random.default_rng(5)
    n, d, leaves = 400, 3, 17
    z, t, y = rng.normal(size=(n, d)), rng.normal(size=n), rng.normal(size=n)
    w = rng.uniform(0, 2, n) * (rng.random(n) > 0.1)  # some rows of zero weight
    rows = rng.integers(0, n, 3000)
    leaf = rng.integers(0, leaves, 3000)
    expected, expected_totals = np.zeros((leaves, n_moments(d))), np.zeros(leaves)
    np.add.at(expected, leaf, w[rows, None] * _row_moments(z, t, y)[rows])
    np.add.at(expected_totals, leaf, w[rows])
    results = []
    for n_parts in (1, 2, 5):  # threads, each a range of leaves
        sums, totals = np.zeros((leaves, n_moments(d))), np.zeros(leaves)
        local_linear_leaf_sums(z, t, y, w, rows, leaf, n_parts, sums, totals)
        np.testing.assert_allclose(sums, expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(totals, expected_totals, rtol=1e-12)
        results.append((sums, totals))
    for sums, totals in results[1:]:  # each leaf's rows added in one order, whatever the split
        np.testing.assert_array_equal(sums, results[0][0])
        np.testing.assert_array_equal(totals, results[0][1])


def test_auto_leaves_the_correction_off_where_its_leaf_moments_could_outgrow_memory(monkeypatch):
    """'auto' keeps the covariates it chose while the bound on their leaf moments is within
    AUTO_MAX_LEAF_MOMENT_BYTES, and turns the correction off, with a warning, above it."""
    import tauforge.kernels.forest as forest_module
    from tauforge.kernels.local_linear import leaf_moment_bytes_bound

    X, t, y, _ = _steep(1500, 7)
    kept = _forest(n_estimators=40, linear_correction_variables="auto").fit(X, t, y)
    assert kept.linear_correction_ is not None and 0 in kept.linear_correction_.variables
    bound = leaf_moment_bytes_bound(40, 375, 3, len(kept.linear_correction_.variables))
    monkeypatch.setattr(forest_module, "AUTO_MAX_LEAF_MOMENT_BYTES", bound - 1)
    with pytest.warns(UserWarning, match="the correction is off"):
        dropped = _forest(n_estimators=40, linear_correction_variables="auto").fit(X, t, y)
    assert dropped.linear_correction_ is None
    # Chosen by hand, the correction stays whatever its size.
    forced = _forest(n_estimators=40, linear_correction_variables=[0]).fit(X, t, y)
    assert forced.linear_correction_ is not None


def test_the_corrected_variance_is_grfs_pseudo_residual_little_bag_variance():
    """grf's LLCausalPredictionStrategy::compute_variance written out with explicit forest weights
    (pseudo-residuals zeta' u_i (y_i - u_i' theta) averaged in each tree's leaf, their mean over
    groups subtracted), on a continuous treatment: with a binary +-0.5 one t~^2 is 0.25 in every
    leaf, and errors in its coefficients (the diagonal's halving) went unseen."""
    from tauforge.kernels.prediction import debias_between_group_variance

    rng = np.random.default_rng(2)
    n = 600
    X = rng.uniform(-1, 1, (n, 5))
    t = rng.normal(size=n)
    y = (1 + 2 * X[:, 0]) * t + rng.normal(size=n)
    forest = _forest(n_estimators=40, linear_correction_variables=[0, 2], linear_correction_ridge=0.3).fit(X, t, y)
    t, y = _centred(t, None), _centred(y, None)  # as the forest grows on them
    X_test = rng.uniform(-1, 1, (25, 5))
    with pytest.warns(UserWarning, match="intervals from 40 trees"):
        tau, var = forest.predict_and_var(X_test)
    g, B = forest._group_size(), 40
    samples = forest._sampler(n).trees(0, B // g)
    train_leaf = forest._backend.leaf_ids(forest._codes(X), forest.forest_)
    test_leaf = forest._backend.leaf_ids(forest._codes(X_test), forest.forest_)
    Z, Z_test = forest.linear_correction_.design(X), forest.linear_correction_.design(X_test)
    for k in range(len(X_test)):
        leaves = [s.estimation[train_leaf[s.estimation, b] == test_leaf[k, b]] for b, s in enumerate(samples)]
        alpha = np.zeros(n)
        for rows in leaves:
            alpha[rows] += 1 / len(rows) / B
        dz = Z - Z_test[k]
        U = np.hstack([np.ones((n, 1)), dz, t[:, None], t[:, None] * dz])
        M = U.T @ (alpha[:, None] * U)
        level, effect = np.diag(M)[:3].mean(), np.diag(M)[3:].mean()
        M_pen = M + np.diag(0.3 * np.array([0, LEVEL_PENALTY * level, LEVEL_PENALTY * level,
                                            0, EFFECT_PENALTY * effect, EFFECT_PENALTY * effect]))
        theta = np.linalg.solve(M_pen, U.T @ (alpha * y))
        zeta = np.linalg.solve(M_pen, np.eye(6)[3])
        pseudo = (U @ zeta) * (y - U @ theta)
        psi = np.array([pseudo[rows].mean() for rows in leaves]).reshape(-1, g)
        between = (psi.mean(axis=1) ** 2).mean() - psi.mean() ** 2
        total = (psi**2).mean() - psi.mean() ** 2
        want = debias_between_group_variance(np.array([between]), np.array([(total - between) / (g - 1)]),
                                             np.array([B // g]))[0]
        assert tau[k] == pytest.approx(theta[3], rel=1e-5, abs=1e-6)
        assert var[k] == pytest.approx(want, rel=1e-5)


def test_the_corrected_out_of_bag_estimate_uses_only_the_trees_that_did_not_see_the_row():
    X, t, y, _ = _steep(600, 12)
    forest = _forest(n_estimators=40, linear_correction_variables=[0, 1]).fit(X, t, y)
    oob = forest.oob_predict(X)[:30]
    in_bag = forest._sampler(len(t)).in_bag()
    ids = forest._backend.leaf_ids(forest._codes(X[:30]), forest.forest_)
    z = forest.linear_correction_.design(X[:30])
    for k in range(30):
        out = ~in_bag[k]
        want, _ = local_linear_estimate(forest._backend, np.ascontiguousarray(ids[k:k + 1, out]),
                                        forest.linear_correction_.leaf_moments, z[k:k + 1], 0.1, 2,
                                        with_variance=False)
        assert oob[k] == pytest.approx(want[0], rel=1e-12)
        assert out.sum() < 40  # not vacuous: some trees saw the row


@pytest.mark.filterwarnings("ignore:intervals from")
@pytest.mark.parametrize("arms", [(-0.5, 0.5), (0.0, 3.0)])
def test_a_row_whose_neighbours_share_one_treatment_gets_nan_not_an_error_for_every_row(arms):
    # Two trees, out of bag: some rows' only leaf holds one value of t, a singular local
    # regression, where the plain forest gives 0 / 0. np.linalg.solve raised for the whole call.
    # With a raw 0/3 treatment, once centred, float32 moments left a residue for a denominator:
    # CATEs of +-inf (plain) and 2e6 (corrected), until both met MIN_TREATMENT_SPREAD.
    X, t, y, _ = _steep(600, 8)
    t = np.where(t > 0, arms[1], arms[0])
    plain = _forest(n_estimators=2, ci_group_size=1).fit(X, t, y).oob_predict(X)
    for name in ("numba", "torch"):
        corrected = _forest(n_estimators=2, ci_group_size=1, linear_correction_variables=[0]).fit(X, t, y)
        corrected._backend = get_backend(name, torch.device("cpu"))
        tau = corrected.oob_predict(X)
        np.testing.assert_array_equal(np.isnan(tau), np.isnan(plain))
        assert np.nanmax(np.abs(tau)) < 10 and np.nanmax(np.abs(plain)) < 10  # the effect is 1 + 2 X1
        assert np.isnan(plain).sum() > (corrected._sampler(len(t)).in_bag().all(axis=1)).sum()  # not vacuous


def test_the_standardization_counts_rows_by_their_weight():
    X, t, y, _ = _steep(600, 13)
    w = np.random.default_rng(13).uniform(0, 3, len(t)) * (np.arange(len(t)) % 5 > 0)
    c = _forest(n_estimators=20, linear_correction_variables=[0, 3]).fit(X, t, y, sample_weight=w).linear_correction_
    np.testing.assert_allclose(c.center, np.average(X[:, [0, 3]], axis=0, weights=w), rtol=1e-4)
    np.testing.assert_allclose(c.scale, np.sqrt(np.average((X[:, [0, 3]] - c.center) ** 2, axis=0, weights=w)),
                               rtol=1e-4)


# ----------------------------------------------------------------------------- the penalty, chosen
def _flat(n, seed, p=5):
    """_steep's covariates and treatment with an effect that does not move: slopes in X1 only add
    variance."""
    X, t, _, _ = _steep(n, seed, p)
    return X, t, 1.0 * t + np.random.default_rng(seed).normal(size=n), np.ones(n)


@pytest.mark.parametrize("seed", [0, 2])
def test_auto_penalty_is_small_on_a_steep_linear_effect_and_large_on_a_flat_one(seed):
    """Both directions, so that a choice stuck at either end of the path, or at the default,
    fails one of them (measured on seeds 0-3 at 400 trees: steep 0.03 on all four, flat 10 on
    seeds 0 and 2, the default 0.1 on 1 and 3, whose evidence fell short)."""
    kw = dict(n_estimators=400, linear_correction_variables=[0], linear_correction_ridge="auto")
    steep = _forest(**kw).fit(*_steep(2000, seed)[:3])
    flat = _forest(**kw).fit(*_flat(2000, seed)[:3])
    assert steep.linear_correction_.ridge == RIDGE_PATH[0]
    assert flat.linear_correction_.ridge >= 1.0
    assert steep.linear_correction_ridge == "auto"  # the parameter untouched, the choice on the fitted correction


def test_auto_penalty_applies_the_rule_to_the_whole_prediction_paths_out_of_bag_estimates():
    """The fit's one-pass path (local_linear_taus on a subsample's leaves) against oob_predict
    at each penalty in turn, through the same rule."""
    X, t, y, _ = _steep(2000, 0)
    forest = _forest(n_estimators=400, linear_correction_variables=[0], linear_correction_ridge="auto").fit(X, t, y)
    chosen = forest.linear_correction_.ridge
    taus = []
    for ridge in RIDGE_PATH:
        forest.linear_correction_.ridge = ridge
        taus.append(forest.oob_predict(X))
    assert chosen == choose_ridge(np.stack(taus, axis=1), t, y, np.ones(len(t))) != DEFAULT_RIDGE


def test_the_out_of_bag_estimates_the_fit_kept_are_the_ones_the_trees_give():
    """Choosing the penalty computes every training row's out-of-bag CATE under each penalty;
    oob_predict returns the chosen penalty's without walking the trees again (15% of a DML fit
    at 20,000 rows, docs/benchmarks.md). The same numbers, for a whole fit and a merged one, and
    none kept that another penalty would make stale."""
    X, t, y, _ = _steep(1500, 3)
    kw = dict(n_estimators=200, linear_correction_variables=[0], linear_correction_ridge="auto")
    whole = _forest(**kw).fit(X, t, y)
    merged = CausalForest.merge([_forest(**kw).fit_shard(X, t, y, shard=i, n_shards=2) for i in range(2)],
                                X=X, T=t, y=y)
    for forest in (whole, merged):
        assert forest._oob_cate is not None and forest._oob_cate[0] == forest.linear_correction_.ridge
        kept = forest.oob_predict(X)
        # Other rows of the same count (here the training rows reversed) are computed, not the kept
        # values returned (a review: a test set of the training set's size got the training rows' CATE).
        other = forest.oob_predict(X[::-1])
        stored, forest._oob_cate = forest._oob_cate, None
        np.testing.assert_array_equal(kept, forest.oob_predict(X))
        np.testing.assert_array_equal(other, forest.oob_predict(X[::-1]))
        assert np.mean(other != kept) > 0.9
        forest._oob_cate = stored
    whole._oob_cate = (RIDGE_PATH[-1], whole._oob_cate[1], np.zeros(len(t)))  # kept for another penalty
    assert np.all(whole.oob_predict(X) != 0)
    # A subsample judged the penalty (rows of weight 0 are left out): nothing kept.
    weight = np.r_[np.zeros(10), np.ones(len(t) - 10)]
    assert _forest(**kw).fit(X, t, y, sample_weight=weight)._oob_cate is None


def _noisy_estimates(sd_03, n, seed=0):
    """Out-of-bag estimates of a known effect (1) under each penalty of the path: every penalty
    errs by N(0, 0.3) per row, but 0.3 by N(0, sd_03)."""
    rng = np.random.default_rng(seed)
    t = rng.binomial(1, 0.5, n) - 0.5
    y = 1.0 * t + rng.normal(size=n)
    taus = 1.0 + rng.normal(0, 0.3, (n, 1)) * np.ones((1, len(RIDGE_PATH)))
    taus[:, RIDGE_PATH.index(0.3)] = 1.0 + rng.normal(0, sd_03, n)
    return taus, t, y


def test_choose_ridge_moves_off_the_default_only_on_enough_evidence():
    """The R-loss gap is t~^2 (err_0.3^2 - err_0.1^2), 0.25 x (0.01 - 0.09) = -0.02 for sd 0.1,
    about 4 standard errors at 4,000 rows; for sd 0.28 it is -0.003, under one: chosen, and not."""
    assert choose_ridge(*_noisy_estimates(0.1, 4000), np.ones(4000)) == 0.3
    assert choose_ridge(*_noisy_estimates(0.28, 4000), np.ones(4000)) == DEFAULT_RIDGE
    taus, t, y = _noisy_estimates(0.1, 4000)
    taus[:10] = np.nan  # rows every tree saw: left out, not NaN
    assert choose_ridge(taus, t, y, np.ones(4000)) == 0.3
    assert choose_ridge(taus, t, y, np.zeros(4000)) == DEFAULT_RIDGE  # no weight: nothing to judge by


def test_choose_ridge_takes_groups_as_the_independent_units():
    """Rows repeated within groups carry no more evidence than one row each: 40 rows copied 100
    times prove, as 4,000 independent rows, a gap that 40 groups do not prove."""
    taus, t, y = _noisy_estimates(0.1, 40, seed=1)
    copies = (np.repeat(taus, 100, axis=0), np.repeat(t, 100), np.repeat(y, 100))
    assert choose_ridge(*copies, np.ones(4000)) == 0.3
    assert choose_ridge(*copies, np.ones(4000), groups=np.repeat(np.arange(40), 100)) == DEFAULT_RIDGE


def test_auto_penalty_weighs_the_loss_by_sample_weight():
    """Rows of weight 0 do not count: the steep effect's rows alone choose the smallest penalty,
    the flat effect's alone a large one."""
    X, t, y, _ = _steep(2000, 5)
    Xf, tf, yf, _ = _flat(2000, 6)
    both = (np.vstack([X, Xf]), np.concatenate([t, tf]), np.concatenate([y, yf]))
    w = np.r_[np.ones(2000), np.zeros(2000)]
    kw = dict(n_estimators=400, linear_correction_variables=[0], linear_correction_ridge="auto")
    assert _forest(**kw).fit(*both, sample_weight=w).linear_correction_.ridge == RIDGE_PATH[0]
    assert _forest(**kw).fit(*both, sample_weight=1 - w).linear_correction_.ridge >= 1.0


def test_sharded_auto_penalty_is_chosen_by_merge_on_the_training_data():
    X, t, y, _ = _steep(2000, 0)
    kw = dict(n_estimators=400, linear_correction_variables=[0], linear_correction_ridge="auto")
    whole = _forest(**kw).fit(X, t, y)
    shards = [_forest(**kw).fit_shard(X, t, y, shard=i, n_shards=2) for i in range(2)]
    merged = CausalForest.merge(shards, X=X, T=t, y=y)
    assert merged.linear_correction_.ridge == whole.linear_correction_.ridge != DEFAULT_RIDGE
    np.testing.assert_array_equal(merged.predict(X[:50]), whole.predict(X[:50]))
    with pytest.warns(UserWarning, match="cannot choose the local linear correction's penalty"):
        assert CausalForest.merge(shards, X=X).linear_correction_.ridge == DEFAULT_RIDGE
    with pytest.raises(ValueError, match="merge was given other data than the shards were grown on"):
        CausalForest.merge(shards, X=X, T=t, y=-y)


def test_auto_penalty_is_saved_as_format_9_and_refused_by_a_reader_of_8(tmp_path, monkeypatch):
    from tauforge.kernels import forest as forest_module

    X, t, y, _ = _steep(2000, 0)
    forest = _forest(n_estimators=400, linear_correction_variables=[0], linear_correction_ridge="auto").fit(X, t, y)
    forest.save(tmp_path / "f")
    loaded = CausalForest.load(tmp_path / "f")
    assert loaded.linear_correction_ridge == "auto"
    assert loaded.linear_correction_.ridge == forest.linear_correction_.ridge != DEFAULT_RIDGE
    np.testing.assert_array_equal(loaded.predict(X[:40]), forest.predict(X[:40]))
    monkeypatch.setattr(forest_module, "FORMAT_VERSION", 8)
    with pytest.raises(ValueError, match="forest format 9, this version reads up to 8"):
        CausalForest.load(tmp_path / "f")


@pytest.mark.parametrize("bad", ["fast", -1.0, 0, float("nan"), None])
def test_bad_penalties_are_named(bad):
    X, t, y, _ = _steep(300, 11)
    with pytest.raises(ValueError, match="linear_correction_ridge must be 'auto' or a finite number > 0"):
        _forest(linear_correction_variables=[0], linear_correction_ridge=bad).fit(X, t, y)


def test_the_penalty_is_judged_on_rows_of_positive_weight(monkeypatch):
    """Zero-weight rows carry no loss: the fit's subsample for the choice (here at most 500 rows)
    is drawn from rows of positive weight only (a review: drawn from all rows, a subsample of a
    mostly zero-weight table held few rows that counted)."""
    from tauforge.kernels import forest as forest_module

    seen = {}

    def record(taus, t, y, w, groups=None):
        seen["w"] = w
        return choose_ridge(taus, t, y, w, groups)

    monkeypatch.setattr(forest_module, "SELECTION_ROWS", 500)
    monkeypatch.setattr(forest_module, "choose_ridge", record)
    X, t, y, _ = _steep(2000, 7)
    w = np.r_[np.ones(600), np.zeros(1400)]
    _forest(n_estimators=40, linear_correction_variables=[0], linear_correction_ridge="auto").fit(X, t, y, w)
    assert len(seen["w"]) == 500 and (seen["w"] > 0).all()
