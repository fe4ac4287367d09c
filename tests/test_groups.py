"""fit(..., groups=): rows that are not independent (one unit's repeated rows, a household, a
market) are held out together in cross-fitting, drawn together by the trees, validated together
by the nuisance models, and counted as one in the standard errors."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LassoCV, LinearRegression
from sklearn.model_selection import GroupKFold

from tauforge.kernels import CausalForest, CausalForestDML
from tauforge.kernels._inputs import check_groups
from tauforge.kernels.ate import average_effect, oob_effect
from tauforge.kernels.boosting import HistGradientBoostingRegressor
from tauforge.kernels.bootstrap import resample_weights
from tauforge.kernels.datasets import make_clustered_data
from tauforge.kernels.nuisance import AdditiveBoostingRegressor, GCVRidge, cross_fitting_folds, fit_with_groups
from tauforge.kernels.sampling import LittleBagSampler


def _uneven_groups(n: int, seed: int) -> np.ndarray:
    """Codes of groups of 1 to 6 rows, in shuffled order."""
    sizes = np.random.default_rng(seed).integers(1, 7, size=n)
    labels = np.repeat(np.arange(n), sizes)[:n]
    return check_groups(np.random.default_rng(seed + 1).permutation(labels), n)


def test_trees_draw_whole_groups_and_keep_them_on_one_side_of_the_honest_split():
    n = 600
    groups = _uneven_groups(n, 0)
    sampler = LittleBagSampler(n, 16, 4, 0.5, True, 0.5, seed=5, clusters=groups)
    n_groups = groups.max() + 1
    for g in range(sampler.n_groups):
        for tree in sampler.group(g):
            structure, estimation = set(groups[tree.structure]), set(groups[tree.estimation])
            assert not structure & estimation  # no group on both sides of the honest split
            for rows, drawn in ((tree.structure, structure), (tree.estimation, estimation)):
                assert np.array_equal(rows, np.flatnonzero(np.isin(groups, list(drawn))))  # every row of each
            assert len(structure | estimation) == sampler.subsample_size  # groups, not rows, are counted
    assert sampler.subsample_size == n_groups // 2  # half of the groups (the half-sample's size)
    in_bag = sampler.in_bag()
    for code in range(n_groups):  # a row is out of bag exactly where its whole group is
        members = in_bag[groups == code]
        assert (members == members[0]).all()


def test_one_row_a_group_draws_exactly_the_rows_no_groups_draw():
    plain = LittleBagSampler(301, 8, 2, 0.5, True, 0.5, seed=9)
    singletons = LittleBagSampler(301, 8, 2, 0.5, True, 0.5, seed=9, clusters=np.arange(301, dtype=np.int32))
    for g in range(plain.n_groups):
        for a, b in zip(plain.group(g), singletons.group(g)):
            np.testing.assert_array_equal(a.structure, b.structure)
            np.testing.assert_array_equal(a.estimation, b.estimation)
    np.testing.assert_array_equal(resample_weights(301, 2, 4), resample_weights(301, 2, 4, np.arange(301)))


@pytest.mark.parametrize("discrete", [True, False])
def test_cross_fitting_holds_out_whole_groups(discrete):
    n = 900
    groups = _uneven_groups(n, 2)
    rng = np.random.default_rng(3)
    T = rng.binomial(1, 0.3, n).astype(float) if discrete else rng.normal(size=n)
    fold = cross_fitting_folds(T, 3, discrete, seed=4, groups=groups)
    assert set(fold) == {0, 1, 2}
    for code in range(groups.max() + 1):
        assert len(set(fold[groups == code])) == 1
    if discrete:  # still stratified: every fold near the treated share
        assert all(abs(T[fold == k].mean() - T.mean()) < 0.05 for k in range(3))
    np.testing.assert_array_equal(fold, cross_fitting_folds(T, 3, discrete, seed=4, groups=groups))


def test_folds_of_whole_groups_balance_arms_and_rows_and_hold_out_every_arm():
    # A treatment assigned by group, group sizes from 1 to 60: every fold holds out both arms
    # (10 of the 30 groups are treated, twice cv: one of each run of 5 alike groups per fold), and
    # the folds' rows and treated shares stay near equal: measured, rows within 0.05% of n / 5 and
    # shares within 0.0003. Ignoring T (GroupKFold: shares 0.039 apart) or T and sizes (groups
    # at random, 5 seeds: shares 0.03-0.08 apart, rows 2-6% off) fails the bounds.
    rng = np.random.default_rng(5)
    for seed in range(5):
        sizes = rng.integers(1, 61, 30)
        groups = np.repeat(np.arange(30), sizes)
        T = np.repeat(rng.permutation(np.r_[np.ones(10), np.zeros(20)]), sizes)
        fold = cross_fitting_folds(T, 5, True, seed=seed, groups=groups)
        assert all(set(T[fold == k]) == {0.0, 1.0} for k in range(5))
    sizes = rng.integers(1, 21, 3000)
    groups = np.repeat(np.arange(3000), sizes)
    T = np.repeat(rng.binomial(1, 0.3, 3000), sizes).astype(float)
    fold = cross_fitting_folds(T, 5, True, seed=0, groups=groups)
    rows = np.bincount(fold)
    assert np.all(np.abs(rows / rows.mean() - 1) < 0.02), rows
    assert np.ptp([T[fold == k].mean() for k in range(5)]) < 0.01


def test_groups_are_checked_with_errors_that_name_the_problem():
    assert check_groups(None, 3) is None
    np.testing.assert_array_equal(check_groups(["b", "a", "b"], 3), [1, 0, 1])
    with pytest.raises(ValueError, match="one label per row"):
        check_groups([1, 2], 3)
    with pytest.raises(ValueError, match="missing label.*row 1"):
        check_groups([1.0, np.nan, 2.0], 3)
    with pytest.raises(ValueError, match="missing label.*row 2"):
        check_groups(np.array(["a", "b", None], dtype=object), 3)
    import pandas as pd

    with pytest.raises(ValueError, match="missing label.*row 1"):
        check_groups(pd.Series(["a", pd.NA, "b"], dtype="string"), 3)
    with pytest.raises(ValueError, match="missing label.*row 0"):
        check_groups(pd.Series(pd.to_datetime([None, "2026-01-01", "2026-01-02"])), 3)
    X3 = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="different indexes"):  # matched by position, a reordered Series would lie
        CausalForest(n_estimators=4).fit(X3, [0.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 4.0],
                                         groups=pd.Series([1, 1, 2, 2], index=[3, 2, 1, 0]))
    T = np.array([0.0, 1.0] * 10)
    with pytest.raises(ValueError, match="2 group.*cv=3"):
        cross_fitting_folds(T, 3, True, 0, groups=check_groups(np.arange(20) % 2, 20))
    # Treatment assigned by group, and one of the two treated groups: some fold trains on one arm
    one_arm = check_groups(np.repeat(np.arange(4), 5), 20)
    with pytest.raises(ValueError, match="fold .* one arm only"):
        cross_fitting_folds(np.repeat([0.0, 0.0, 0.0, 1.0], 5), 2, True, 0, groups=one_arm)
    X = np.random.default_rng(0).normal(size=(20, 2))
    with pytest.raises(ValueError, match="groups must have one label per row"):
        CausalForestDML(n_estimators=4).fit(X[:, 0], T, X=X, groups=np.arange(19))


def _noise(n: int, p: int, seed: int):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, p)), rng.normal(size=n)


def test_model_validation_holds_out_whole_groups_so_duplicates_cannot_hide_overfitting():
    # Pure noise, every row twice. Validated on rows, a model sees each row's twin and fits the
    # noise (small ridge, boosting to its last tree); validated on whole groups it does not.
    X, y = _noise(300, 20, 0)
    Xd, yd, groups = np.repeat(X, 2, 0), np.repeat(y, 2), np.repeat(np.arange(300), 2)
    leaked, held = GCVRidge().fit(Xd, yd), GCVRidge().fit(Xd, yd, groups=groups)
    assert held.alpha_ >= 10 * leaked.alpha_  # one step of RIDGE_ALPHAS is a factor 3.2
    assert held.alpha_ >= GCVRidge().fit(X, y).alpha_ / 3  # the original rows' own choice, or more
    engine_leaked = HistGradientBoostingRegressor(early_stopping=True, random_state=0).fit(Xd, yd)
    engine_held = HistGradientBoostingRegressor(early_stopping=True, random_state=0).fit(Xd, yd, groups=groups)
    assert engine_held.n_iter_ <= 20 < engine_leaked.n_iter_
    additive_leaked = AdditiveBoostingRegressor(random_state=0).fit(Xd, yd)
    additive_held = AdditiveBoostingRegressor(random_state=0).fit(Xd, yd, groups=groups)
    assert additive_held.trees_.n_iter_ <= 20 < additive_leaked.trees_.n_iter_
    # A scikit-learn model whose fit takes no groups is fit as it always is; one with a `cv`
    # (its number of folds, or a group splitter) gets folds of whole groups.
    assert fit_with_groups(LinearRegression(), X, y, np.arange(300)).coef_.shape == (20,)
    for cv in (None, 4, GroupKFold(3)):
        lasso = fit_with_groups(LassoCV(cv=cv), Xd, yd, groups)
        assert all(not set(groups[train]) & set(groups[test]) for train, test in lasso.cv)
        assert len(lasso.cv) == (5 if cv is None else 4 if cv == 4 else 3)


@pytest.fixture(scope="module")
def duplicated():
    """One data set, and the same rows twice each: with groups, twice the rows carry no more
    information, so the estimates and their standard errors should be the original's."""
    rng = np.random.default_rng(0)
    n, p = 1000, 5
    X = rng.normal(size=(n, p))
    T = rng.binomial(1, 0.5, n).astype(float)
    tau = 1 + X[:, 0]
    Y = X[:, 1] + tau * T + rng.normal(size=n)
    kw = dict(n_estimators=500, random_state=1, progress=False)
    original = CausalForestDML(**kw).fit(Y, T, X=X)
    twice = dict(Y=np.repeat(Y, 2), T=np.repeat(T, 2), X=np.repeat(X, 2, 0))
    grouped = CausalForestDML(**kw).fit(twice["Y"], twice["T"], X=twice["X"], groups=np.repeat(np.arange(n), 2))
    ungrouped = CausalForestDML(**kw).fit(twice["Y"], twice["T"], X=twice["X"])
    return X, tau, original, grouped, ungrouped


def test_duplicated_rows_with_groups_estimate_what_the_original_rows_do(duplicated):
    X, tau, original, grouped, ungrouped = duplicated
    assert abs(grouped.ate_ - original.ate_) < 0.5 * original.ate_stderr_
    assert 0.9 < grouped.ate_stderr_ / original.ate_stderr_ < 1.1
    x = X[:300]

    def rmse(model):
        return float(np.sqrt(np.mean((model.effect(x) - tau[:300]) ** 2)))

    assert rmse(grouped) < 1.1 * rmse(original)
    # Without groups the twins leak through every validation: residuals shrink and the CATE
    # error doubles (0.34 against 0.17 when this test was written).
    assert rmse(ungrouped) > 1.5 * rmse(original)
    assert np.std(ungrouped.residuals_[0]) < 0.85 * np.std(grouped.residuals_[0])
    lo, hi = grouped.effect_interval(x)
    lo0, hi0 = original.effect_interval(x)
    assert 0.85 < np.mean(hi - lo) / np.mean(hi0 - lo0) < 1.25


def test_grouped_forest_saves_its_groups_and_shards_merge(tmp_path):
    rng = np.random.default_rng(4)
    n = 800
    X, t, y = rng.normal(size=(n, 4)), rng.normal(size=n), rng.normal(size=n)
    groups = _uneven_groups(n, 6)
    kw = dict(n_estimators=40, random_state=3, progress=False)
    whole = CausalForest(**kw).fit(X, t, y, groups=groups)
    whole.save(tmp_path / "f")
    loaded = CausalForest.load(tmp_path / "f")
    np.testing.assert_array_equal(loaded.clusters_, groups)
    np.testing.assert_array_equal(loaded.oob_predict(X), whole.oob_predict(X))
    assert not np.allclose(whole.oob_predict(X), CausalForest(**kw).fit(X, t, y).oob_predict(X))
    shards = [CausalForest(**kw).fit_shard(X, t, y, shard=k, n_shards=2, groups=groups) for k in range(2)]
    np.testing.assert_array_equal(CausalForest.merge(shards).predict(X[:50]), whole.predict(X[:50]))
    other = CausalForest(**kw).fit_shard(X, t, y, shard=1, n_shards=2)
    with pytest.raises(ValueError, match="different groups"):
        CausalForest.merge([shards[0], other])


def test_clustered_ate_interval_covers_at_the_nominal_rate_where_the_rows_one_does_not():
    # 30 seeds of a cluster-randomized design (clusters of 10 sharing shocks in the outcome and
    # the effect: the ATE's spread is 2.5 times what independent rows would give). A correct 95%
    # interval covers at least 25 of 30 with probability 0.997 (binomial tail), so this fails a
    # correct implementation 0.3% of the time. The unclustered standard error covered 54 of 100
    # seeds when this was written, and at that rate passes 25 of 30 with probability 0.0008.
    covered = {"groups": 0, "rows": 0}
    for seed in range(30):
        d = make_clustered_data(seed=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 100 trees: intervals of the CATE are not asked for
            model = CausalForestDML(n_estimators=100, random_state=seed, progress=False).fit(d.Y, d.T, X=d.X,
                                                                                              groups=d.groups)
        y_res, t_res = model.residuals_
        _, rows_stderr = average_effect(oob_effect(model.forest_, d.X), y_res, t_res, model.treatment_variance_)
        lower, upper = model.ate_interval()  # Student's t with 99 degrees of freedom: 100 groups
        covered["groups"] += lower <= d.ate <= upper
        covered["rows"] += abs(model.ate_ - d.ate) <= 1.96 * rows_stderr
    assert covered["groups"] >= 25, covered
    assert covered["rows"] < 25, covered


def test_the_full_bootstrap_reweights_whole_groups():
    d = make_clustered_data(seed=0)
    weights = resample_weights(len(d.Y), 3, 7, d.groups)
    assert all(np.ptp(weights[d.groups == g]) == 0 for g in range(100))  # one weight a group
    assert len(np.unique(weights)) == 100
    stderr = {}
    for name, groups in (("groups", d.groups), ("rows", None)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = CausalForestDML(n_estimators=100, inference="bootstrap", n_bootstrap=20, bootstrap_trees=20,
                                    bootstrap_nuisance=False, random_state=0, progress=False)
            model.fit(d.Y, d.T, X=d.X, groups=groups)
        lower, upper = model.ate_interval()
        stderr[name] = (upper - lower) / (2 * 1.96)
        assert (model.bootstrap_.forests[0].clusters_ is not None) == (groups is not None)
    # The clusters' shared shocks make the ATE 2.5 times as variable as independent rows would:
    # resampling rows misses that (0.15 against 0.26 when this was written).
    assert stderr["groups"] > 1.4 * stderr["rows"], stderr


def test_a_group_column_makes_every_standard_error_of_the_evaluation_count_groups():
    """The pipeline's steps as plain functions, on clusters of 10 rows labelled by strings: every
    standard error the evaluation reports grows by the clusters' design effect (2-4 times here,
    when this test was written), except the placebo's, whose permuted treatment varies within
    clusters and so is independent of their shocks."""
    import pandas as pd

    from tauforge.components.data import DataSpec, validate
    from tauforge.components.estimate import grow_forest_shard, merge_forest
    from tauforge.components.evaluate import GateConfig, evaluate
    from tauforge.components.nuisance import NuisanceConfig, combine_folds, fit_nuisance_fold

    d = make_clustered_data(seed=0)
    table = pd.DataFrame(d.X, columns=["x0", "x1", "x2"]).assign(T=d.T, Y=d.Y, household=[f"h{g}" for g in d.groups])
    two_folds = NuisanceConfig(folds=2)
    stderr = {}
    for name, group in (("groups", "household"), ("rows", None)):
        data = validate(table, DataSpec(outcome="Y", treatment="T", covariates=["x0", "x1", "x2"], group=group))
        residuals = combine_folds(data, [fit_nuisance_fold(data, k, two_folds, 0) for k in range(2)], 0,
                                  nuisance=two_folds)
        _, estimate = merge_forest([grow_forest_shard(data, residuals, {"n_estimators": 40}, 0, 0, 1)], data,
                                   residuals)
        result = evaluate(data, residuals, estimate, GateConfig(), seed=0, nuisance=two_folds, refit_workers=1)
        heterogeneity, sensitivity = result["heterogeneity"], result["sensitivity"]
        stderr[name] = {
            "ate": result["effect"]["ate_stderr"],
            "calibration": heterogeneity["calibration"]["mean_stderr"],
            "differential": heterogeneity["calibration"]["differential_stderr"],
            "rate": heterogeneity["rate"]["stderr"],
            "gates": np.mean([g["stderr"] for g in heterogeneity["gates"]]),
            "sensitivity": np.ptp(sensitivity["ci_bounds"]) - np.ptp(sensitivity["theta_bounds"]),
            "qini": result["uplift"]["qini_stderr"]}
        if group:
            assert result["effect"]["n_groups"] == 100
    # The heterogeneity checks read a held-out half, drawn by group or by row: the grouped run's
    # half and held-out CATE, their standard errors counting rows, are the comparison for them.
    from tauforge.components import heterogeneity as het
    from tauforge.components.uplift import doubly_robust
    from tauforge.kernels.ate import debiased_scores

    data = validate(table, DataSpec(outcome="Y", treatment="T", covariates=["x0", "x1", "x2"], group="household"))
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, two_folds, 0) for k in range(2)], 0, nuisance=two_folds)
    y_res, t_res, t_var = (residuals.column(c) for c in ("y_res", "t_res", "t_var"))
    rows, cate = het.held_out_cate(data.arrays()["X"], y_res, t_res, {"n_estimators": 40}, 0, data.arrays()["groups"])
    scores = debiased_scores(cate, y_res[rows], t_res[rows], t_var[rows])
    calibration = het.calibration_test(y_res[rows], t_res[rows], cate)
    stderr["rows"].update(calibration=calibration["mean_stderr"], differential=calibration["differential_stderr"],
                          rate=het.autoc(cate, scores, seed=0)["stderr"],
                          gates=np.mean([g["stderr"] for g in het.gates(cate, scores)]),
                          qini=doubly_robust(cate, scores, seed=0)["qini_stderr"])
    for statistic, grouped in stderr["groups"].items():
        assert grouped > 1.5 * stderr["rows"][statistic], (statistic, grouped, stderr["rows"][statistic])


def test_the_data_contract_checks_the_group_column():
    import pandas as pd

    from tauforge.components.data import DataSpec, DataValidationError, validate

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=60), "T": np.tile([0.0, 1.0], 30), "Y": rng.normal(size=60),
                          "household": np.repeat(np.arange(12), 5)})
    spec = DataSpec(outcome="Y", treatment="T", covariates=["x"], group="household")
    few = validate(table, spec)
    assert any("has 12 groups: standard errors that count groups are too small" in w for w in few.warnings)
    np.testing.assert_array_equal(few.arrays()["groups"], table["household"].to_numpy())
    with pytest.raises(DataValidationError, match="group column 'household' has 1 missing value.*row 3"):
        validate(table.assign(household=table["household"].where(table.index != 3)), spec)
    with pytest.raises(DataValidationError, match="every row in one group"):
        validate(table.assign(household=7), spec)
    with pytest.raises(DataValidationError, match="missing from the table"):
        validate(table.drop(columns="household"), spec)


def test_econmls_forest_is_refused_with_a_group_column_before_any_task():
    from tauforge.components.config import ConfigError
    from tauforge.components.data import DataSpec
    from tauforge.pipelines.config import TrainingConfig

    spec = DataSpec(outcome="Y", treatment="T", group="household")
    with pytest.raises(ConfigError, match="estimator.*draws rows, not groups"):
        TrainingConfig(spec=spec, estimator="econml", trees=40, n_shards=1)
    assert TrainingConfig(spec=spec, trees=40).spec.group == "household"


def test_a_continuous_treatments_duplicated_rows_with_groups_estimate_what_the_original_rows_do():
    # The average partial effect's V(x) model validates on groups too (kernels.ate.treatment_variance).
    rng = np.random.default_rng(1)
    n = 800
    X = rng.normal(size=(n, 3))
    T = X[:, 1] / 2 + np.exp(X[:, 0] / 2) * rng.normal(size=n)
    Y = X[:, 1] + (1 + X[:, 0]) * T + rng.normal(size=n)
    kw = dict(n_estimators=200, random_state=2, progress=False, linear_correction_variables=None)
    original = CausalForestDML(**kw).fit(Y, T, X=X)
    twice = CausalForestDML(**kw).fit(np.repeat(Y, 2), np.repeat(T, 2), X=np.repeat(X, 2, 0),
                                      groups=np.repeat(np.arange(n), 2))
    # Other folds and nuisance fits move the estimate by a fraction of its standard error (0.64 here).
    assert abs(twice.ate_ - original.ate_) < original.ate_stderr_
    assert 0.85 < twice.ate_stderr_ / original.ate_stderr_ < 1.15
    assert 0.85 < twice.variance_weighted_stderr_ / original.variance_weighted_stderr_ < 1.15


def test_the_graph_checks_count_groups_so_shared_shocks_do_not_reject_a_true_independence():
    # a and b are independent given z, but each shares a shock within clusters of 10 rows. Tested
    # as independent rows the GCM rejected at 5% in 23 of 40 seeds when this was written; a correct
    # 5% test rejects 7 or more of 40 with probability 0.003, and the rows' rate (0.575) passes
    # this bound with probability 4e-8.
    from tauforge.components.graph_checks import gcm_test, residual

    rejected = {"groups": 0, "rows": 0}
    for seed in range(40):
        rng = np.random.default_rng(seed)
        g = np.repeat(np.arange(100), 10)
        z = rng.normal(size=100)[g] + rng.normal(size=1000)
        a, b = (z + 2 * rng.normal(size=100)[g] + rng.normal(size=1000) for _ in range(2))
        rejected["groups"] += gcm_test(residual(a, z[:, None], seed, groups=g), residual(b, z[:, None], seed, groups=g),
                                       g)[1] < 0.05
        rejected["rows"] += gcm_test(residual(a, z[:, None], seed), residual(b, z[:, None], seed))[1] < 0.05
    assert rejected["groups"] <= 6 < rejected["rows"], rejected


def test_the_pipeline_keeps_groups_whole_in_its_folds_and_refuter_subsets_and_checks_there_are_enough(tmp_path):
    import pandas as pd

    from tauforge.components.config import ConfigError
    from tauforge.components.data import DataSpec, read_table, validate
    from tauforge.components.nuisance import NuisanceConfig, check_groups_for_folds, combine_folds, fit_nuisance_fold
    from tauforge.components.refuters import EffectRefit, data_subset_refuter

    d = make_clustered_data(seed=1)
    table = pd.DataFrame(d.X, columns=["x0", "x1", "x2"]).assign(T=d.T, Y=d.Y, family=[f"{g:03d}" for g in d.groups])
    table.to_csv(tmp_path / "t.csv", index=False)
    spec = DataSpec(outcome="Y", treatment="T", covariates=["x0", "x1", "x2"], group="family")
    read = read_table(str(tmp_path / "t.csv"), id_columns=[spec.unit_id, spec.group])
    assert read["family"].iloc[7] == "000"  # a CSV's labels as text: 007 and 7 stay apart
    data = validate(read, spec)
    groups = data.arrays()["groups"]
    three = NuisanceConfig(folds=3)
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, three, 0) for k in range(3)], 0, nuisance=three)
    fold = residuals.frame["fold"].to_numpy()
    assert all(len(set(fold[groups == code])) == 1 for code in range(100))  # the fold tasks held out groups
    refit = EffectRefit(data, three, 0, np.zeros(len(groups)), None, workers=1)
    for job in data_subset_refuter(refit, 0.0, 0).jobs:
        drawn = set(groups[job["rows"]])
        assert len(drawn) == 50 and np.array_equal(job["rows"], np.flatnonzero(np.isin(groups, list(drawn))))
    check_groups_for_folds(data, 5)
    few = validate(read[read["family"] < "012"], spec)  # 12 families, 6 or so of each arm
    with pytest.raises(ConfigError, match="folds.*group column 'family' has .* group.*5 folds need at least 10"):
        check_groups_for_folds(few, 5)


def test_a_grouped_ate_interval_takes_students_t_with_one_degree_of_freedom_fewer_than_groups():
    from scipy.stats import norm, t

    from tauforge.kernels.ate import interval_quantile

    assert interval_quantile(0.05) == pytest.approx(norm.ppf(0.975))
    assert interval_quantile(0.05, 20) == pytest.approx(t.ppf(0.975, 19)) and interval_quantile(0.05, 20) > 2.09
    d = make_clustered_data(n_clusters=30, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = CausalForestDML(n_estimators=40, random_state=0, progress=False).fit(d.Y, d.T, X=d.X, groups=d.groups)
    lower, upper = model.ate_interval(0.1)
    assert model.n_groups_ == 30
    assert (upper - lower) / 2 == pytest.approx(t.ppf(0.95, 29) * model.ate_stderr_)


def test_the_clustered_standard_error_and_its_quantile_are_the_textbook_numbers():
    # Exact values: the coverage tests run at 100 groups, where CR1's G / (G - 1) is 1.01 and
    # dropping it passed them all (a mutation review); at 10 groups the intervals then cover 0.938.
    from tauforge.kernels.ate import clustered_stderr, interval_quantile

    score, groups = np.array([1.0, -1.0, 2.0, 0.0, -2.0, 0.0]), np.array([0, 0, 1, 1, 2, 2])
    # The groups' sums are 0, 2 and -2: sqrt(3 / 2 * (0 + 4 + 4)), halved by the scale.
    assert clustered_stderr(score, 2.0, groups) == pytest.approx(np.sqrt(1.5 * 8) / 2)
    assert clustered_stderr(score, 1.0) == pytest.approx(np.sqrt(10.0))  # each row its own group, no CR1
    assert interval_quantile(0.05) == pytest.approx(1.959964, abs=1e-6)  # two-sided: not 1.645
    assert interval_quantile(0.05, n_groups=20) == pytest.approx(2.093024, abs=1e-6)  # Student's t, 19 df


def test_unequal_groups_are_counted_as_the_equal_groups_they_weigh_as():
    # Hand numbers: the warning counted groups alone, 40 here, and passed every test (a mutation
    # review); 39 groups of one row and one of 39 weigh as 78^2 / (39^2 + 39) = 3.9 equal ones.
    from tauforge.kernels.ate import effective_groups, few_groups_message

    equal = np.repeat(np.arange(40), 5)
    assert effective_groups(equal) == pytest.approx(40.0) and few_groups_message(equal, "groups") is None
    lopsided = np.r_[np.zeros(39, dtype=int), np.arange(1, 40)]
    assert effective_groups(lopsided) == pytest.approx(78**2 / (39**2 + 39))
    assert few_groups_message(lopsided, "groups") == (
        "groups has 40 groups, as unequal in size as 3.9 equal ones: standard errors that count groups are too "
        "small with fewer than 20")
    assert few_groups_message(np.repeat(np.arange(10), 3), "groups") == (
        "groups has 10 groups: standard errors that count groups are too small with fewer than 20")
