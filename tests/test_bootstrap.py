"""The full bootstrap: replicate forests on reweighted rows with the point forest's settings, their
Monte-Carlo noise removed, the nuisance models refit; normal, percentile and pivot intervals."""

import warnings

import numpy as np
import pytest
from scipy.stats import binom

from tauforge.kernels import CausalForest, CausalForestDML
from tauforge.kernels.bootstrap import bootstrap_variance, interval, replicate_forest_params, resample_weights
from tauforge.kernels.datasets import make_causal_data

# Replicates' forests as fit_replicates takes them: tiny, and with fixed candidate weights (uniform
# here; replicate_forest_params passes the point forest's).
SMALL_REPLICATES = {"n_estimators": 4, "max_samples": 0.5, "candidate_weights": None}


def linear_confounded(seed: int, n: int = 600):
    """Confounded binary treatment whose nuisance functions are linear (logistic) in X, so
    linear nuisance models are right and fast; the effect 1 + X3 / 2 averages 1."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    e = 1 / (1 + np.exp(-X[:, 0]))
    T = rng.binomial(1, e).astype(float)
    Y = X[:, 0] + X[:, 1] + T * (1 + X[:, 2] / 2) + rng.normal(size=n)
    return X, T, Y


def nonlinear_confounded(seed: int, n: int = 400):
    """Strong confounding through steep, nonlinear nuisance functions that small trees fit with
    much variance: a design where the nuisance stage's uncertainty matters."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    T = rng.binomial(1, 1 / (1 + np.exp(-1.5 * X[:, 0]))).astype(float)
    Y = 3 * np.sin(2 * X[:, 0]) + 2 * X[:, 1] ** 2 + T + rng.normal(size=n)
    return X, T, Y


def small_bootstrap(**kw) -> CausalForestDML:
    """A cheap bootstrap: linear nuisance models, two folds, a small plain point forest, replicate
    forests of two little bags."""
    from sklearn.linear_model import LinearRegression, LogisticRegression

    params = dict(model_y=LinearRegression(), model_t=LogisticRegression(), cv=2, n_estimators=20,
                  linear_correction_variables=None, inference="bootstrap", n_bootstrap=50, bootstrap_trees=2)
    return CausalForestDML(**{**params, **kw})


def test_resample_weights_are_seeded_positive_and_have_the_mean_and_variance_of_counts():
    a, b = resample_weights(100_000, 3, seed=7), resample_weights(100_000, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, resample_weights(100_000, 4, seed=7))
    # Every row kept (no leaf can lose its rows or hold copies); mean one; variance one, as
    # multinomial counts have (1 - 1/n). Exp(1)'s sample variance over 1e5 draws has sd 0.009.
    assert a.min() > 0 and a.mean() == pytest.approx(1.0, abs=1e-12)
    assert a.var() == pytest.approx(1.0, abs=0.04)


def test_normal_percentile_and_pivot_intervals():
    draws = np.arange(1, 101, dtype=float)[:, None]  # quantiles 3.475 and 97.525 at alpha 0.05
    lo, hi = interval(draws, np.array([60.0]), 0.05, "percentile")
    assert (lo[0], hi[0]) == pytest.approx((3.475, 97.525))
    lo, hi = interval(draws, np.array([60.0]), 0.05, "pivot")
    assert (lo[0], hi[0]) == pytest.approx((120 - 97.525, 120 - 3.475))
    lo, hi = interval(draws, np.array([60.0]), 0.05, "normal")
    half = 1.959963984540054 * np.std(draws, ddof=1)
    assert (lo[0], hi[0]) == pytest.approx((60 - half, 60 + half))
    # Of 6 groups drawn whole: t with 5 degrees of freedom, as the analytic interval (z covered 0.86
    # in a review's simulation, where the analytic t interval covered 0.95).
    lo, hi = interval(draws, np.array([60.0]), 0.05, "normal", n_groups=6)
    assert hi[0] - 60 == pytest.approx(2.570582 * np.std(draws, ddof=1))
    with pytest.raises(ValueError, match="normal, percentile, pivot, got 'bca'"):
        interval(draws, np.array([60.0]), 0.05, "bca")
    # Quantiles of a few replicates are a warning (a review published one of 4); the normal interval is not.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        interval(draws[:49], np.array([60.0]), 0.05, "normal")
        interval(draws[:50], np.array([60.0]), 0.05, "pivot")
    for kind in ("percentile", "pivot"):
        with pytest.warns(UserWarning, match=f"a {kind} interval from 49 bootstrap replicates: .* at least 50"):
            interval(draws[:49], np.array([60.0]), 0.05, kind)


def test_monte_carlo_noise_is_removed_from_the_spread_of_the_replicates():
    """Draws = bootstrap signal (variance 1) + each replicate's own noise (variance 3, which the
    replicate reports): the bootstrap variance is the signal's, and every interval has its width."""
    rng = np.random.default_rng(0)
    B, rows = 2000, 50
    draws = rng.normal(size=(B, rows)) + np.sqrt(3) * rng.normal(size=(B, rows))
    noise = np.full((B, rows), 3.0)
    assert np.var(draws, axis=0, ddof=1).mean() == pytest.approx(4.0, rel=0.05)
    assert bootstrap_variance(draws, noise).mean() == pytest.approx(1.0, rel=0.1)
    point = np.zeros(rows)
    for kind in ("normal", "percentile", "pivot"):
        lo, hi = interval(draws, point, 0.05, kind, noise)
        assert np.mean(hi - lo) == pytest.approx(2 * 1.96, rel=0.1), kind
        raw_lo, raw_hi = interval(draws, point, 0.05, kind)
        assert np.mean(raw_hi - raw_lo) == pytest.approx(2 * 1.96 * 2, rel=0.1), kind  # noise left in: twice as wide


def test_the_monte_carlo_variance_of_little_bags_is_their_means_unbiased_variance_over_their_number():
    # Exact: the seeds test below allows 0.8-1.25, and G in place of G - 1 (5% at 20 bags) passed it.
    from tauforge.kernels.prediction import little_bag_variance

    psi = np.array([[1.0, 3.0, -1.0, -3.0, 2.0, -2.0]])  # bags of 2 trees: means 2, -2, 0
    assert little_bag_variance(psi, 2, monte_carlo=True)[0] == pytest.approx(np.var([2, -2, 0], ddof=1) / 3)


@pytest.mark.parametrize("correction", [None, [0]])
def test_a_forests_monte_carlo_variance_is_the_spread_of_forests_grown_with_other_seeds(correction):
    """Forests of 40 trees on the same data with 40 seeds: the variance of their CATE across seeds
    is what each forest's Monte-Carlo variance estimates (its little bags' spread / groups). The
    torch path computes the same numbers (tests/test_kernels.py)."""
    d = make_causal_data("simple", n=800, p=4, seed=0)
    t, y, X = d.T - 0.5, d.Y - d.Y.mean(), d.X[:100]
    tau, mc = zip(*(CausalForest(n_estimators=40, linear_correction_variables=correction,
                                 random_state=s).fit(d.X, t, y).predict_and_monte_carlo_var(X) for s in range(40)))
    ratio = np.var(tau, axis=0, ddof=1).mean() / np.mean(mc)
    # Measured 1.01-1.05. An estimator off by the group size (within-group noise only, or the
    # variance of single trees) would be off by 2x or more; the little-bag variance by 10x.
    assert 0.8 < ratio < 1.25
    with pytest.raises(ValueError, match="at least 2 groups of trees, this forest has 1"):
        CausalForest(n_estimators=2, random_state=0).fit(d.X, t, y).predict_and_monte_carlo_var(X)


def test_replicates_are_grown_with_the_point_forests_configuration(monkeypatch):
    from tauforge.kernels import forest as forest_module

    # A penalty choice that is not the 0.1 a replicate would fall back to (a review: 0.1 was chosen).
    monkeypatch.setattr(forest_module, "choose_ridge", lambda *args, **kwargs: 3.0)
    X, T, Y = linear_confounded(0, 600)
    est = small_bootstrap(n_bootstrap=3, bootstrap_trees=5, min_samples_leaf=4, max_samples=0.4,
                          linear_correction_variables=[2], honesty_fraction=0.6, random_state=0).fit(Y, T, X=X)
    point = est.forest_.get_params()
    for forest in est.bootstrap_.forests:
        params = forest.get_params()
        assert params["n_estimators"] == 6  # 5 trees rounded up to whole little bags of 2
        # The point forest's little bags, resolved: its 'auto' may stand for another size at 6 trees.
        assert params["ci_group_size"] == est.forest_._group_size() == 2
        # Replicates give point estimates only: they smooth no variance (and pay nothing for it).
        assert params["variance_smoothing"] is False and forest.variance_smoother_ is None
        same = [k for k in point if k not in ("n_estimators", "random_state", "progress", "ci_group_size",
                                              "variance_smoothing", "candidate_weights", "linear_correction_ridge")]
        assert {k: params[k] for k in same} == {k: point[k] for k in same}
        # The weights the point forest's pilot chose, not a pilot of each replicate's own, and the
        # penalty its out-of-bag rows chose.
        np.testing.assert_array_equal(forest.candidate_weights_, est.forest_.candidate_weights_)
        assert forest.linear_correction_.variables == (2,)
        chosen = est.forest_.linear_correction_.ridge
        assert params["linear_correction_ridge"] == forest.linear_correction_.ridge == chosen == 3.0
    assert replicate_forest_params({"ci_group_size": 4}, 1, None)["n_estimators"] == 8  # at least two bags
    # The penalty the point forest chose; 'auto' without one (an estimate from before the choice) is 0.1.
    given = {"linear_correction_ridge": "auto"}
    assert replicate_forest_params(given, 4, [0], None, 3.0)["linear_correction_ridge"] == 3.0
    assert replicate_forest_params(given, 4, [0])["linear_correction_ridge"] == 0.1
    # 'auto' takes the point forest's size (8 at 1,000 trees), not the size 'auto' gives 100 trees.
    auto = replicate_forest_params({"n_estimators": 1000}, 100, None)
    assert (auto["ci_group_size"], auto["n_estimators"]) == (8, 104)
    with pytest.raises(ValueError, match="bootstrap_trees must be a positive integer, got 0"):
        small_bootstrap(bootstrap_trees=0).fit(Y, T, X=X)
    with pytest.raises(ValueError, match="bootstrap_nuisance must be True or False, got 'yes'"):
        small_bootstrap(bootstrap_nuisance="yes").fit(Y, T, X=X)


def test_every_leaf_holds_min_samples_leaf_distinct_estimation_rows_whatever_their_weights():
    """A replicate's rows carry weights from near 0 to about 10; a leaf of 3 is 3 distinct rows,
    never one heavy row counted three times (the rule counts rows, not weight)."""
    d = make_causal_data("simple", n=1000, p=4, seed=3)
    weights = resample_weights(1000, 0, seed=3)
    weights[:50] = 10.0  # heavy rows, which a weight-counting rule would let fill a leaf alone
    for backend in ("numba", "torch"):
        forest = CausalForest(n_estimators=8, min_samples_leaf=3, linear_correction_variables=None, backend=backend,
                              random_state=1).fit(d.X, d.T - 0.5, d.Y, sample_weight=weights)
        leaves = forest._backend.leaf_ids(forest._codes(d.X), forest.forest_)
        for b, sample in enumerate(forest._sampler(1000).trees(0, 4)):
            rows_per_leaf = np.bincount(leaves[sample.estimation, b])
            assert rows_per_leaf[rows_per_leaf > 0].min() >= 3, backend


def test_bootstrap_ate_intervals_cover_the_true_ate_and_match_the_analytic_standard_error():
    """30 seeds of a design with linear nuisance functions (true ATE 1), nuisance models not
    refit (so the replicates' spread is the reweighting's alone, which the analytic standard
    error of the debiased scores also measures)."""
    covered, ratio = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a 20-tree point forest
        for seed in range(30):
            X, T, Y = linear_confounded(seed)
            est = small_bootstrap(bootstrap_nuisance=False, random_state=seed).fit(Y, T, X=X)
            lo, hi = est.ate_interval()
            covered.append(lo <= 1.0 <= hi)
            ratio.append(np.std(est.bootstrap_.ates, ddof=1) / est.ate_stderr_)
    # At 95% coverage, P(fewer than 26 of 30) = binom.cdf(25, 30, 0.95) = 0.016; an interval
    # covering 80% passes with binom.sf(25, 30, 0.8) = 0.26, one covering 70% with 0.03: the
    # width check below is what catches a too narrow or too wide spread.
    assert binom.cdf(25, 30, 0.95) < 0.02
    assert sum(covered) >= 26
    # 50 replicates estimate a standard deviation within about 10%: over 30 seeds the mean ratio
    # is within 3% of its expectation (measured 0.99); a spread off by 15% fails.
    assert 0.9 < np.mean(ratio) < 1.1


def test_refitting_the_nuisance_models_changes_every_replicate_and_widens_the_ate_spread():
    """With noisy nuisance models on a steep confounded design, refitting them on every
    replicate's weights must (a) change each replicate's residuals, so its forest and its
    average effect, and (b) add the nuisance stage's variance to the replicates' spread. A
    refit that silently does nothing gives the same replicates as no refit: both fail."""
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    X, T, Y = nonlinear_confounded(0)
    fits = {refit: small_bootstrap(model_y=DecisionTreeRegressor(min_samples_leaf=10, random_state=0),
                                   model_t=DecisionTreeClassifier(min_samples_leaf=20, random_state=0),
                                   n_bootstrap=40, bootstrap_nuisance=refit, random_state=0).fit(Y, T, X=X)
            for refit in (False, True)}
    refit, kept = fits[True].bootstrap_, fits[False].bootstrap_
    # Same weights, same forest seeds, same out-of-bag CATE: only the residuals can differ.
    assert np.all(refit.ates != kept.ates)
    for a, b in zip(refit.forests, kept.forests):
        assert np.abs(a.predict(X[:20]) - b.predict(X[:20])).max() > 1e-6
    # Measured: the refit spread is 2.0-2.3x the spread without refit on four seeds of this
    # design (40 replicates estimate each spread within about 11%); no refit gives exactly 1.
    assert np.std(refit.ates, ddof=1) / np.std(kept.ates, ddof=1) > 1.4


def test_bootstrap_cate_intervals_of_each_kind():
    d = make_causal_data("simple", n=1000, p=4, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est = small_bootstrap(n_bootstrap=10, bootstrap_trees=20, random_state=1).fit(d.Y, d.T, X=d.X)
    tau = est.effect(d.X[:50])
    widths, intervals = {}, {}
    for kind in ("normal", "percentile", "pivot"):
        est.bootstrap_interval = kind
        lo, hi = est.effect_interval(d.X[:50])
        assert np.all(lo < hi) and lo.shape == (50,)
        # The setting picks the kind (a test audit: an estimator that always gave normal
        # intervals passed the width comparison below).
        np.testing.assert_allclose((lo, hi), est.bootstrap_.effect_interval(d.X[:50], tau, 0.05, kind))
        widths[kind], intervals[kind] = hi - lo, (lo, hi)
    for a, b in (("normal", "percentile"), ("percentile", "pivot")):
        assert np.abs(intervals[a][0] - intervals[b][0]).max() > 1e-6, (a, b)
    lo, hi = est.bootstrap_.effect_interval(d.X[:50], tau, 0.05, "normal")
    np.testing.assert_allclose((lo + hi) / 2, tau)  # centred on the point forest's estimate
    np.testing.assert_allclose(hi - lo, 2 * 1.959963984540054 * est.bootstrap_.effect_stderr(d.X[:50]))
    inference = est.effect_inference(d.X[:50])  # the bootstrap's standard error, normal intervals
    np.testing.assert_allclose(inference.stderr, est.bootstrap_.effect_stderr(d.X[:50]))
    np.testing.assert_allclose(inference.conf_int(0.05), (lo, hi))
    np.testing.assert_allclose(widths["percentile"], widths["pivot"])  # the same quantiles, reflected
    assert len(est.bootstrap_.forests) == 10 and len(set(np.round(est.bootstrap_.ates, 10))) == 10
    with pytest.raises(ValueError, match="inference must be"):
        CausalForestDML(inference="jackknife", n_estimators=4, cv=2).fit(d.Y, d.T, X=d.X)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_batched_replicates_equal_replicates_fit_one_at_a_time_and_each_equals_its_own_fit(backend):
    from tauforge.kernels.bootstrap import fit_replicates, replicate_seed

    d = make_causal_data("simple", n=800, p=4, seed=2)
    t, y = d.T - d.T.mean(), d.Y - d.Y.mean()
    # Replicates draw candidates with fixed weights (replicate_forest_params passes the point
    # forest's): uniform ones here.
    params = {"n_estimators": 6, "max_samples": 0.5, "backend": backend, "candidate_weights": None}
    fit = lambda batch: fit_replicates(d.X, 5, 11, params, lambda c: (y, t, None),  # noqa: E731
                                       lambda c, *_: float(c @ y), batch_size=batch)
    one, batched = fit(1), fit(3)
    for a, b in zip(one.forests, batched.forests):
        np.testing.assert_array_equal(a.predict(d.X), b.predict(d.X))
    alone = CausalForest(**params, random_state=replicate_seed(11, 4)).fit(
        d.X, t, y, sample_weight=resample_weights(800, 4, 11))
    np.testing.assert_array_equal(alone.predict(d.X), batched.forests[4].predict(d.X))
    with pytest.warns(UserWarning, match="intervals from 6 trees"):  # and its smoothed variance (3 little bags)
        np.testing.assert_array_equal(alone.predict_and_var(d.X)[1], batched.forests[4].predict_and_var(d.X)[1])
    assert len({float(f.predict(d.X[:1])[0]) for f in batched.forests}) == 5  # every replicate its own forest


def test_replicates_fit_in_shards_merge_into_the_whole_bootstrap_and_survive_save_and_load(tmp_path):
    from tauforge.kernels.bootstrap import BootstrapReplicates, fit_replicates

    d = make_causal_data("simple", n=600, p=3, seed=4)
    fit = lambda replicates: fit_replicates(  # noqa: E731
        d.X, replicates, 5, SMALL_REPLICATES, lambda c: (d.Y, d.T, None),
        lambda c, *_: float(c @ d.Y) / 600)
    whole = fit(7)
    later, first = fit(range(4, 7)), fit(range(0, 4))
    later.save(tmp_path / "later")
    merged = BootstrapReplicates.merge([BootstrapReplicates.load(tmp_path / "later"), first], 7)
    np.testing.assert_array_equal(merged.replicates, np.arange(7))
    np.testing.assert_array_equal(merged.ates, whole.ates)
    for a, b in zip(whole.forests, merged.forests):
        np.testing.assert_array_equal(a.predict(d.X), b.predict(d.X))
    np.testing.assert_array_equal(merged.effect_draws(d.X[:5])[1], whole.effect_draws(d.X[:5])[1])
    with pytest.raises(ValueError, match=r"1 missing \(first \[6\]\), 1 repeated"):
        BootstrapReplicates.merge([first, fit(range(3, 6))], 7)
    # Shards of another run's seed, or other settings, were merged into a standard error (a review).
    other_seed = fit_replicates(d.X, range(4, 7), 6, SMALL_REPLICATES,
                                lambda c: (d.Y, d.T, None), lambda c, *_: 0.0)
    with pytest.raises(ValueError, match="replicate 4 has seed 11, not the one replicate 4 of the other shards' run"):
        BootstrapReplicates.merge([first, other_seed], 7)
    other_leaf = fit_replicates(d.X, range(4, 7), 5, {**SMALL_REPLICATES, "min_samples_leaf": 9},
                                lambda c: (d.Y, d.T, None), lambda c, *_: 0.0)
    with pytest.raises(ValueError, match="replicate 4 was grown with other settings or rows than replicate 0"):
        BootstrapReplicates.merge([first, other_leaf], 7)


def test_a_shards_replicates_report_progress_by_their_range_when_asked(capfd, monkeypatch):
    from tauforge.kernels import progress
    from tauforge.kernels.bootstrap import fit_replicates

    monkeypatch.setattr(progress, "DELAY", 0.0)  # show even this quick fit's progress
    d = make_causal_data("simple", n=600, p=3, seed=4)
    fit = lambda shown: fit_replicates(  # noqa: E731
        d.X, range(4, 7), 5, SMALL_REPLICATES, lambda c: (d.Y, d.T, None),
        lambda c, *_: 0.0, progress=shown)
    fit(None), fit(False)  # stderr is captured, not a terminal
    assert capfd.readouterr().err == ""
    fit(True)  # as the pipeline's bootstrap tasks run it
    assert capfd.readouterr().err.startswith("tauforge: bootstrap replicates 4..6: 3/3 replicates in ")


@pytest.mark.parametrize("refit", [True, False])
def test_the_pipelines_bootstrap_shards_equal_causal_forest_dml_with_and_without_the_nuisance_refit(refit):
    """grow_bootstrap_shard (refit_residuals under each replicate's weights) and merge_bootstrap
    give CausalForestDML(inference='bootstrap')'s replicates and ATE interval exactly."""
    import pandas as pd

    from tauforge.components.data import DataSpec, validate
    from tauforge.components.estimate import (
        BootstrapConfig,
        grow_bootstrap_shard,
        grow_forest_shard,
        merge_bootstrap,
        merge_forest,
    )
    from tauforge.components.nuisance import NuisanceConfig, combine_folds, fit_nuisance_fold

    X, T, Y = linear_confounded(5, 500)
    data = validate(pd.DataFrame(X, columns=["a", "b", "c"]).assign(T=T, Y=Y), DataSpec(outcome="Y", treatment="T"))
    nuisance = NuisanceConfig("sklearn.linear_model.LinearRegression", "sklearn.linear_model.LogisticRegression", 2)
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, nuisance, 5) for k in range(2)], 5, nuisance=nuisance)
    params = {"n_estimators": 20, "linear_correction_variables": None}
    _, estimate = merge_forest([grow_forest_shard(data, residuals, params, 5, 0, 1)], data, residuals)
    config = BootstrapConfig(n_bootstrap=6, trees=4, nuisance=refit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        merged = merge_bootstrap(estimate, [grow_bootstrap_shard(data, residuals, estimate, params, 5, k, 2, config,
                                                                 nuisance) for k in range(2)], config)
        est = small_bootstrap(model_y=nuisance.model_y, model_t=nuisance.model_t, n_bootstrap=6, bootstrap_trees=4,
                              bootstrap_nuisance=refit, random_state=5).fit(Y, T, X=X)
    np.testing.assert_allclose(merged.bootstrap.ates, est.bootstrap_.ates, rtol=1e-12)
    assert (merged.summary["ate_lower"], merged.summary["ate_upper"]) == pytest.approx(est.ate_interval(), rel=1e-12)
    for a, b in zip(merged.bootstrap.forests, est.bootstrap_.forests):
        np.testing.assert_allclose(a.predict(X[:20]), b.predict(X[:20]), rtol=1e-12)
    assert merged.summary["ate_interval"] == "bootstrap normal, 6 replicates" + (
        " refitting the nuisance models" if refit else "")


def test_bad_bootstrap_settings_name_the_setting_before_anything_runs(tmp_path, monkeypatch, capsys):
    from tauforge.components.estimate import BootstrapConfig
    from tauforge.pipelines.cli import main

    assert BootstrapConfig().nuisance is True and BootstrapConfig().interval == "normal"
    with pytest.raises(ValueError, match="unknown bootstrap setting.*n_boot; known: n_bootstrap"):
        BootstrapConfig.from_json('{"n_boot": 3}')
    with pytest.raises(ValueError, match="interval must be one of normal, percentile, pivot, got 'bca'"):
        BootstrapConfig.from_json('{"n_bootstrap": 10, "interval": "bca"}')
    for args, message in ((["--bootstrap", "1"], "--bootstrap must be 0 (off) or at least 2 replicates, got 1"),
                          (["--bootstrap", "4", "--bootstrap-shards", "5"],
                           "--bootstrap-shards must be between 1 and 4 (the number of bootstrap replicates), got 5")):
        # `tauforge run` as the console script calls it, in this process (no new process's imports).
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() installs its own
        code = main(["run", "--demo", "--store", str(tmp_path / "s"), "--pipeline-root", str(tmp_path / "runs"),
                     *args])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_the_cli_refits_the_nuisance_models_unless_told_not_to(capsys, tmp_path):
    from tauforge.pipelines.cli import _training_setup, build_parser

    parser = build_parser()
    run = ["run", "--demo", "--bootstrap", "10", "--pipeline-root", str(tmp_path)]

    def bootstrap(*flags):  # the run's settings (the flags' defaults are resolved there: None if not given)
        return _training_setup(parser.parse_args([*run, *flags]))[1].bootstrap

    assert bootstrap().nuisance is True and bootstrap().interval == "normal"
    assert bootstrap("--no-bootstrap-nuisance").nuisance is False
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--bootstrap-nuisance, --no-bootstrap-nuisance" in help_text and "(default: on)" in help_text


def test_compiled_pipeline_runs_each_bootstrap_shard_as_its_own_task_on_accelerators(tmp_path):
    import json

    import yaml

    from tauforge.pipelines.config import ClusterConfig
    from tauforge.pipelines.training import compile_pipeline

    path = compile_pipeline(str(tmp_path / "training.yaml"), n_folds=2, n_shards=2, bootstrap_shards=3,
                            cluster=ClusterConfig(gpus_per_shard=1))
    spec = yaml.safe_load(open(path))
    executors = spec["deploymentSpec"]["executors"]
    dag = spec["root"]["dag"]["tasks"]
    shards = {name: task for name, task in dag.items() if name.startswith(("forest-shard", "bootstrap-shard"))}
    assert sorted(shards) == ["bootstrap-shard", "bootstrap-shard-2", "bootstrap-shard-3", "forest-shard",
                              "forest-shard-2"]
    for task in shards.values():  # each shard its own task, on an accelerator
        container = executors[task["componentRef"]["name"].replace("comp-", "exec-", 1)]["container"]
        assert container["resources"]["accelerator"]["count"] == "1"
    gathered = dag["merge-bootstrap-shards"]["inputs"]["artifacts"]
    assert sorted(a["taskOutputArtifact"]["producerTask"] for k, a in gathered.items() if k.startswith("shards_")) \
        == ["bootstrap-shard", "bootstrap-shard-2", "bootstrap-shard-3"]
    default = json.loads(spec["root"]["inputDefinitions"]["parameters"]["bootstrap"]["defaultValue"])
    assert default["n_bootstrap"] == 100 and default["nuisance"] is True and default["interval"] == "normal"
    # Evaluate and publish read the estimate the bootstrap merge wrote.
    assert dag["evaluate-model"]["inputs"]["artifacts"]["estimate"]["taskOutputArtifact"]["producerTask"] == \
        "merge-bootstrap-shards"
    with pytest.raises(ValueError, match="0 for the monitoring pipeline, which retrains without the full bootstrap"):
        compile_pipeline(str(tmp_path / "m.yaml"), pipeline="monitoring", bootstrap_shards=2)


# ------------------------------------------------------------------ tests from a mutation review
def test_classical_bootstrap_counts_draw_n_rows_or_g_whole_groups_and_can_draw_every_one():
    from tauforge.kernels.bootstrap import bootstrap_counts

    rng = np.random.default_rng(0)
    rows = np.array([bootstrap_counts(5, rng) for _ in range(200)])
    assert (rows.sum(axis=1) == 5).all()  # n rows drawn, no more and no fewer
    # A row missing from all 200 resamples of 5 has probability 5 * 0.8**1000 (about 1e-97).
    assert (rows.sum(axis=0) > 0).all()
    groups = np.repeat(np.arange(4), [1, 2, 3, 4])
    first = np.searchsorted(groups, np.arange(4))  # each group's first row
    for _ in range(200):
        counts = bootstrap_counts(10, rng, groups)
        assert all(np.ptp(counts[groups == g]) == 0 for g in range(4))  # a group comes whole
        assert counts[first].sum() == 4  # G groups drawn
    drawn = np.array([bootstrap_counts(10, rng, groups)[first] for _ in range(200)])
    assert (drawn.sum(axis=0) > 0).all()  # missing from 200 draws of 4 groups: 4 * 0.75**800


def test_percentile_and_pivot_quantiles_are_of_the_draws_shrunk_towards_their_mean_to_the_bootstrap_variance():
    rng = np.random.default_rng(1)
    draws = 5.0 + rng.normal(size=(7, 3)) * 2.0  # centred far from the point estimate 0
    noise = np.full((7, 3), 0.5)
    point = np.zeros(3)
    variance = bootstrap_variance(draws, noise)
    center = draws.mean(axis=0)
    shrunk = center + (draws - center) * np.sqrt(variance / np.var(draws, axis=0, ddof=1))
    np.testing.assert_allclose(np.var(shrunk, axis=0, ddof=1), variance)  # the bootstrap variance
    q_lo, q_hi = np.quantile(shrunk, [0.05, 0.95], axis=0)
    np.testing.assert_allclose(interval(draws, point, 0.1, "percentile", noise), (q_lo, q_hi), rtol=1e-12)
    np.testing.assert_allclose(interval(draws, point, 0.1, "pivot", noise), (-q_hi, -q_lo), rtol=1e-12)


def test_replicate_seeds_differ_from_the_point_forests_and_stay_within_32_bits():
    from tauforge.kernels.bootstrap import replicate_seed

    for seed in (0, 7, 2**32 - 2, 2**32 - 1):  # a run's seed may be 2**32 - 1
        seeds = [replicate_seed(seed, b) for b in range(1000)]
        assert seed not in seeds and len(set(seeds)) == 1000
        assert all(0 <= s < 2**32 for s in seeds)


def test_replicates_take_the_correction_covariates_the_point_forest_chose_not_its_auto_setting():
    params = {"n_estimators": 100, "linear_correction_variables": "auto"}
    assert replicate_forest_params(params, 10, (1, 2))["linear_correction_variables"] == [1, 2]
    assert replicate_forest_params(params, 10, None)["linear_correction_variables"] is None
    assert replicate_forest_params(params, 10, None, np.array([0.5, 1.0]))["candidate_weights"] == [0.5, 1.0]
    assert replicate_forest_params(params, 10, None)["candidate_weights"] is None


def _small_fit(X, replicates, **params):
    from tauforge.kernels.bootstrap import fit_replicates

    y, t = X[:, 0] + np.sin(X[:, 1]), (X[:, 2] > 0) - 0.5
    return fit_replicates(X, replicates, 5, {**SMALL_REPLICATES, **params},
                          lambda c: (y, t, None), lambda c, *_: float(c @ y) / len(y))


def test_merge_refuses_shards_that_repeat_a_replicate_or_were_grown_on_other_rows():
    from tauforge.kernels.bootstrap import BootstrapReplicates

    X = np.random.default_rng(2).normal(size=(300, 3))
    first = _small_fit(X, range(0, 4))
    # Every replicate present, one twice: a replicate counted twice in the standard error.
    with pytest.raises(ValueError, match=r"0 missing \(first \[\]\), 1 repeated"):
        BootstrapReplicates.merge([first, _small_fit(X, range(3, 7))], 7)
    with pytest.raises(ValueError, match="replicate 4 was grown with other settings or rows than replicate 0"):
        BootstrapReplicates.merge([first, _small_fit(X[:250], range(4, 7))], 7)


def test_merge_bootstrap_gives_a_students_t_interval_over_groups_and_records_the_spread_and_the_normal_interval():
    from scipy.stats import t

    from tauforge.components.estimate import BootstrapConfig, Estimate, merge_bootstrap
    from tauforge.kernels.bootstrap import BootstrapReplicates

    X = np.random.default_rng(3).normal(size=(300, 3))
    shards = [_small_fit(X, range(0, 2)), _small_fit(X, range(2, 4))]
    ates = np.concatenate([s.ates for s in shards])
    summary = {"ate": 1.0, "alpha": 0.05, "ate_lower": 0.5, "ate_upper": 1.5, "n_groups": 6}
    merged = merge_bootstrap(Estimate(np.zeros(300), summary), shards, BootstrapConfig(n_bootstrap=4, trees=4))
    s = merged.summary
    # 6 groups drawn whole: Student's t with 5 degrees of freedom, as the analytic interval takes.
    half = t.ppf(0.975, 5) * np.std(ates, ddof=1)
    assert (s["ate_lower"], s["ate_upper"]) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-12)
    # The replicates' spread recorded is the one the normal interval uses; the replaced interval is kept.
    assert s["bootstrap"]["ate_replicate_std"] == pytest.approx(np.sqrt(bootstrap_variance(ates[:, None])[0]),
                                                                rel=1e-12)
    assert s["bootstrap"]["normal_interval"] == [0.5, 1.5]
    lo, hi = BootstrapReplicates(shards[0].forests, np.array([0.0, 2.0]), np.arange(2)).ate_interval(
        1.0, 0.05, "normal", n_groups=6)
    assert (lo, hi) == pytest.approx((1 - t.ppf(0.975, 5) * np.sqrt(2), 1 + t.ppf(0.975, 5) * np.sqrt(2)))


def test_an_estimates_bootstrap_replicates_survive_save_and_load(tmp_path):
    from tauforge.components.estimate import Estimate

    X = np.random.default_rng(4).normal(size=(300, 3))
    replicates = _small_fit(X, 3)
    Estimate(np.zeros(300), {"ate": 1.0}, replicates).save(str(tmp_path / "estimate"))
    loaded = Estimate.load(str(tmp_path / "estimate"), bootstrap=True).bootstrap
    np.testing.assert_array_equal(loaded.replicates, np.arange(3))
    np.testing.assert_array_equal(loaded.ates, replicates.ates)
    np.testing.assert_array_equal(loaded.forests[2].predict(X), replicates.forests[2].predict(X))
    assert Estimate.load(str(tmp_path / "estimate")).bootstrap is None  # only when asked


def test_a_pipeline_shards_replicates_carry_the_data_weights_and_the_point_forests_correction_covariates():
    """Replicate 0 of a weighted run (nuisance refit) is the forest grown on the residuals the
    nuisance models give under its weights times the data's, with those weights, and its ATE
    the debiased average under them; its correction covariates are the ones the point forest
    chose ('auto')."""
    import pandas as pd

    from tauforge.components.data import DataSpec, validate
    from tauforge.components.estimate import BootstrapConfig, grow_bootstrap_shard, grow_forest_shard, merge_forest
    from tauforge.components.nuisance import NuisanceConfig, combine_folds, fit_nuisance_fold, refit_residuals
    from tauforge.kernels.ate import average_effect
    from tauforge.kernels.bootstrap import replicate_seed

    X, T, Y = linear_confounded(6, 400)
    weight = np.random.default_rng(6).uniform(0.2, 3.0, 400)
    data = validate(pd.DataFrame(X, columns=["a", "b", "c"]).assign(T=T, Y=Y, w=weight),
                    DataSpec(outcome="Y", treatment="T", weight="w"))
    nuisance = NuisanceConfig("sklearn.linear_model.LinearRegression", "sklearn.linear_model.LogisticRegression", 2)
    residuals = combine_folds(data, [fit_nuisance_fold(data, k, nuisance, 5) for k in range(2)], 5, nuisance=nuisance)
    params = {"n_estimators": 20}  # linear correction 'auto'
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        _, estimate = merge_forest([grow_forest_shard(data, residuals, params, 5, 0, 1)], data, residuals)
        shard = grow_bootstrap_shard(data, residuals, estimate, params, 5, 0, 1,
                                     BootstrapConfig(n_bootstrap=2, trees=4), nuisance)
    chosen = estimate.summary["linear_correction_variables"]
    assert chosen  # the point forest chose some covariates, so the check below means something
    assert all(list(f.linear_correction_.variables) == chosen for f in shard.forests)
    w = resample_weights(400, 0, 5) * data.arrays()["sample_weight"]
    y_res, t_res, t_var = refit_residuals(data, nuisance, 5, sample_weight=w)
    assert shard.ates[0] == pytest.approx(average_effect(estimate.oob_cate, y_res, t_res, t_var, w)[0], rel=1e-12)
    forest = shard.forests[0]
    assert forest.seed_ == replicate_seed(5, 0)
    alone = CausalForest(**forest.get_params()).fit(X, t_res, y_res, sample_weight=w)
    np.testing.assert_allclose(alone.predict(X[:50]), forest.predict(X[:50]), rtol=1e-12)


def test_causal_forest_dml_replicates_carry_the_sample_weights_and_a_t_interval_over_groups():
    from scipy.stats import t

    from tauforge.kernels.ate import average_effect, oob_effect

    X, T, Y = linear_confounded(7, 400)
    sw = np.random.default_rng(7).uniform(0.2, 3.0, 400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est = small_bootstrap(n_bootstrap=3, bootstrap_nuisance=False, random_state=3).fit(Y, T, X=X, sample_weight=sw)
    w = resample_weights(400, 0, 3) * sw / sw.mean()  # fit scales the weights to mean one
    (y_res, t_res), t_var = est.residuals_, est.treatment_variance_
    tau = oob_effect(est.forest_, X)
    assert est.bootstrap_.ates[0] == pytest.approx(average_effect(tau, y_res, t_res, t_var, w)[0], rel=1e-12)
    forest = est.bootstrap_.forests[0]
    alone = CausalForest(**forest.get_params()).fit(X, t_res, y_res, sample_weight=w)
    np.testing.assert_allclose(alone.predict(X[:50]), forest.predict(X[:50]), rtol=1e-12)
    groups = np.repeat(np.arange(40), 10)  # 40 groups of 10 rows: t with 39 degrees of freedom
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        est = small_bootstrap(n_bootstrap=3, bootstrap_nuisance=False, random_state=3).fit(Y, T, X=X, groups=groups)
    lo, hi = est.ate_interval()
    half = t.ppf(0.975, 39) * np.std(est.bootstrap_.ates, ddof=1)
    assert (lo, hi) == pytest.approx((est.ate_ - half, est.ate_ + half), rel=1e-12)
