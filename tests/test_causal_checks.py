"""Sensitivity, heterogeneity and refuter checks against known truths and against EconML."""

import numpy as np
import pytest
from econml.validate.sensitivity_analysis import RV, dml_sensitivity_values, sensitivity_interval

from tauforge.components.evaluate import crump_threshold
from tauforge.components.heterogeneity import autoc, calibration_test, gates, held_out_cate
from tauforge.components.sensitivity import SensitivityParams, bounds, robustness_value
from tauforge.kernels import CausalForestDML
from tauforge.kernels.ate import debiased_scores, oob_effect, propensity_variance
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.nuisance import cross_fitting_folds, fit_nuisance


def test_sensitivity_bounds_and_robustness_value_equal_econml_on_the_same_residuals():
    rng = np.random.default_rng(3)
    t_res = rng.normal(size=3000)
    y_res = 0.2 * t_res + rng.normal(scale=2, size=3000)
    ours = SensitivityParams.from_residuals(y_res, t_res)
    ref = dml_sensitivity_values(t_res, y_res)
    assert ours.theta == pytest.approx(ref.theta) and ours.sigma2 == pytest.approx(ref.sigma)
    flip = np.diag([1.0, 1.0, -1.0])  # EconML's covariances with nu2 carry the wrong sign (next test)
    np.testing.assert_allclose(ours.cov, flip @ ref.cov @ flip, rtol=1e-10)
    for c_y, c_t, kind in [(0.05, 0.05, "ci"), (0.2, 0.1, "theta"), (0.3, 0.4, "ci")]:
        np.testing.assert_allclose(bounds(ours, c_y, c_t, 1.0, 0.05, kind),
                                   sensitivity_interval(ours.theta, ours.sigma2, ours.nu2, ours.cov, 0.05, c_y, c_t,
                                                        1.0, kind), rtol=1e-10)
    # EconML's bisection stops at |bound| < 1e-6; ours runs to machine precision.
    assert robustness_value(ours) == pytest.approx(RV(ours.theta, ours.sigma2, ours.nu2, ours.cov, 0.05), abs=2e-3)


def test_sensitivity_covariance_matches_the_spread_of_the_estimates_over_simulations():
    rng = np.random.default_rng(0)
    estimates, formulas = [], []
    for _ in range(1500):
        t = rng.standard_t(5, size=400)
        y = 0.3 * t + rng.normal(size=400) * (1 + 0.5 * np.abs(t))
        p = SensitivityParams.from_residuals(y, t)
        estimates.append((p.theta, p.sigma2, p.nu2))
        formulas.append(p.cov)
    empirical, formula = np.cov(np.array(estimates).T), np.mean(formulas, axis=0)
    assert empirical[1, 2] < 0 and formula[1, 2] < 0  # sigma2 and nu2 move in opposite directions
    np.testing.assert_allclose(np.diag(formula), np.diag(empirical), rtol=0.2)
    assert formula[1, 2] == pytest.approx(empirical[1, 2], rel=0.5)  # heavy tails: fourth moments are noisy


def confounded(n, gamma_t, gamma_y, seed):
    """Continuous treatment, true effect 0.5, an unobserved U in treatment and outcome."""
    rng = np.random.default_rng(seed)
    X, U = rng.normal(size=(n, 3)), rng.normal(size=n)
    T = X[:, 0] + gamma_t * U + rng.normal(size=n)
    Y = 0.5 * T + X[:, 1] + gamma_y * U + rng.normal(size=n)
    return X, U, T, Y


def residualize(X, T, Y, seed=0):
    """Cross-fitted linear nuisance residuals (the true models here are linear)."""
    folds = cross_fitting_folds(T, 2, False, seed)
    y_hat, t_hat = np.empty(len(Y)), np.empty(len(Y))
    for k in range(2):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        y_hat[test], t_hat[test], _ = fit_nuisance(X, Y, T, train, test,
                                                   model_y="sklearn.linear_model.LinearRegression",
                                                   model_t="sklearn.linear_model.LinearRegression", discrete=False,
                                                   seed=seed)
    return Y - y_hat, T - t_hat


def partial_r2(target, base, extra):
    """Share of the variance of `target` left by `base` that `extra` explains."""
    def resid(y, Z):
        Z = np.column_stack([np.ones(len(y)), Z])
        return y - Z @ np.linalg.lstsq(Z, y, rcond=None)[0]

    short, long = resid(target, base), resid(target, np.column_stack([base, extra]))
    return 1 - long.var() / short.var()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robustness_value_is_below_the_strength_of_a_confounder_that_flips_the_sign(seed):
    X, U, T, Y = confounded(3000, gamma_t=1.0, gamma_y=-2.0, seed=seed)
    y_res, t_res = residualize(X, T, Y, seed)
    p = SensitivityParams.from_residuals(y_res, t_res)
    assert p.theta < 0  # the true effect is +0.5: the omitted confounder flipped the sign
    c_t = partial_r2(T, X, U)
    c_y = partial_r2(Y, np.column_stack([X, T]), U)
    assert robustness_value(p) < min(c_y, c_t)  # a confounder this strong can explain the estimate away


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_confounding_the_robustness_value_exceeds_the_confounders_strength(seed):
    X, U, T, Y = confounded(3000, gamma_t=0.0, gamma_y=0.0, seed=seed)
    y_res, t_res = residualize(X, T, Y, seed)
    p = SensitivityParams.from_residuals(y_res, t_res)
    strength = min(partial_r2(Y, np.column_stack([X, T]), U), partial_r2(T, X, U))
    assert robustness_value(p) > max(strength, 0.05)


@pytest.fixture(scope="module")
def fits():
    out = {}
    for design in ("aw2", "constant"):
        d = make_causal_data(design, n=3000, p=5, seed=0)
        est = CausalForestDML(n_estimators=200, cv=2, random_state=0).fit(d.Y, d.T, X=d.X)
        y_res, t_res = est.residuals_
        out[design] = (d, y_res, t_res, oob_effect(est.forest_, d.X), d.T - t_res)
    return out


def test_calibration_slope_is_near_one_with_real_heterogeneity_and_insignificant_without(fits):
    _, y_res, t_res, tau, _ = fits["aw2"]
    cal = calibration_test(y_res, t_res, tau)
    assert cal["mean_forest_prediction"] == pytest.approx(1, abs=0.1)
    assert cal["differential_forest_prediction"] == pytest.approx(1, abs=0.2)
    assert cal["differential_pvalue"] < 0.001
    _, y_res, t_res, tau, _ = fits["constant"]
    assert calibration_test(y_res, t_res, tau)["differential_pvalue"] > 0.05


def test_a_cate_that_averages_0_is_still_tested_for_heterogeneity():
    # A treatment that helps half the units as much as it harms the others: grf's mean regressor
    # t_res * mean(tau) is the zero column, and the test returned NaN for both coefficients, which
    # the gate's require_heterogeneity read as no heterogeneity.
    rng = np.random.default_rng(3)
    n = 2000
    t_res, x = rng.normal(size=n), rng.normal(size=n)
    y_res = x * t_res + rng.normal(size=n)
    tau = x - x.mean()
    cal = calibration_test(y_res, t_res, tau)
    assert cal["differential_pvalue"] < 1e-6 and cal["differential_forest_prediction"] == pytest.approx(1, abs=0.1)
    assert np.isnan(cal["mean_forest_prediction"]) and "averages 0" in cal["note"]
    assert np.isnan(calibration_test(y_res, t_res, np.full(n, 0.5))["differential_pvalue"])  # constant: nothing to test
    # The test does not depend on the outcome's units (a review: t_res alone as the first column
    # read a CATE of spread 1e-13 as constant).
    tiny = calibration_test(1e-13 * (y_res + t_res), t_res, 1e-13 * (1 + x))
    assert tiny["differential_pvalue"] < 1e-6 and tiny["mean_forest_prediction"] == pytest.approx(1, abs=0.1)


def test_rate_and_gates_find_heterogeneity_where_it_is_and_order_the_quartiles(fits):
    d, y_res, t_res, tau, t_hat = fits["aw2"]
    scores = debiased_scores(tau, y_res, t_res, propensity_variance(t_hat))
    rate = autoc(tau, scores, n_bootstrap=100)
    assert rate["autoc"] > 3 * rate["stderr"]
    groups = gates(tau, scores)
    assert [g["group"] for g in groups] == [1, 2, 3, 4] and sum(g["rows"] for g in groups) == 3000
    assert groups[-1]["effect"] > groups[0]["effect"] + 3 * np.hypot(groups[-1]["stderr"], groups[0]["stderr"])
    true_by_group = [d.tau[(tau >= g["cate_from"]) & (tau <= g["cate_to"])].mean() for g in groups]
    assert np.all(np.diff(true_by_group) > 0)
    d, y_res, t_res, tau, t_hat = fits["constant"]
    rate = autoc(tau, debiased_scores(tau, y_res, t_res, propensity_variance(t_hat)), n_bootstrap=100)
    assert abs(rate["autoc"]) < 3 * rate["stderr"]


def test_crump_threshold_trims_nothing_with_good_overlap_and_the_tails_with_poor():
    assert crump_threshold(np.full(1000, 0.5)) == 0.0
    e = np.random.default_rng(0).beta(0.3, 0.3, 20000).clip(1e-4, 1 - 1e-4)
    alpha = crump_threshold(e)
    assert 0.02 < alpha < 0.2  # Crump et al.: close to 0.1 for most designs
    g = 1 / (e * (1 - e))
    gamma = 1 / (alpha * (1 - alpha))
    assert gamma == pytest.approx(2 * g[g <= gamma].mean(), rel=1e-3)


def test_sensitivity_of_the_average_effect_reduces_to_the_partially_linear_one_for_a_flat_effect():
    # With tau = theta and V = E[t~^2] everywhere the debiased score's mean is the partially linear
    # theta, its representer t~ / E[t~^2], and so sigma2 and nu2 agree too.
    rng = np.random.default_rng(5)
    t_res = rng.normal(size=2000)
    y_res = 0.7 * t_res + rng.normal(size=2000)
    linear = SensitivityParams.from_residuals(y_res, t_res)
    flat = SensitivityParams.from_scores(np.full(2000, linear.theta), y_res, t_res, np.full(2000, np.mean(t_res**2)))
    np.testing.assert_allclose([flat.theta, flat.sigma2, flat.nu2], [linear.theta, linear.sigma2, linear.nu2],
                               rtol=1e-12)


def heteroskedastic_residuals(rng, n):
    """x, V(x) = exp(x) and residuals of a continuous treatment with that variance and the effect
    1 + x: the design the sensitivity tests share."""
    x = rng.normal(size=n)
    v = np.exp(x)
    t_res = np.sqrt(v) * rng.normal(size=n)
    y_res = (1 + x) * t_res + rng.normal(size=n)
    return x, v, t_res, y_res


def test_sensitivity_of_the_average_effect_has_the_spread_its_covariance_claims():
    # Over 200 simulated samples the (theta, sigma2, nu2) estimates' spread matches the mean
    # covariance within 20% (the sampling error of a variance over 200 draws is about 10%).
    est, cov = [], []
    for seed in range(200):
        rng = np.random.default_rng([seed, 9])
        x, v, t_res, y_res = heteroskedastic_residuals(rng, 1000)
        p = SensitivityParams.from_scores(1 + x, y_res, t_res, v)
        est.append([p.theta, p.sigma2, p.nu2])
        cov.append(np.diag(p.cov))
    ratio = np.var(est, axis=0, ddof=1) / np.mean(cov, axis=0)
    assert np.all(np.abs(ratio - 1) < 0.2), ratio


def test_weighted_sensitivity_is_about_the_weighted_average_effect_the_run_reports():
    from tauforge.kernels.ate import average_effect

    rng = np.random.default_rng(3)
    x, v, t_res, y_res = heteroskedastic_residuals(rng, 600)
    w = rng.integers(1, 4, size=600).astype(float)
    p = SensitivityParams.from_scores(1 + x, y_res, t_res, v, sample_weight=w)
    ate, se = average_effect(1 + x, y_res, t_res, v, w)
    # Before, the evaluate step left the weights out: its theta was the unweighted effect.
    assert p.theta == pytest.approx(ate) and np.sqrt(p.cov[0, 0]) == pytest.approx(se)
    rows = np.repeat(np.arange(600), w.astype(int))  # integer weights: the rows repeated
    repeated = SensitivityParams.from_scores(1 + x[rows], y_res[rows], t_res[rows], v[rows])
    np.testing.assert_allclose([p.theta, p.sigma2, p.nu2], [repeated.theta, repeated.sigma2, repeated.nu2])
    unweighted = SensitivityParams.from_scores(1 + x, y_res, t_res, v)
    assert abs(unweighted.theta - p.theta) > 1e-3
    np.testing.assert_allclose(SensitivityParams.from_scores(1 + x, y_res, t_res, v, np.full(600, 3.0)).cov,
                               unweighted.cov)


def test_autocs_standard_error_is_its_spread_over_independent_samples():
    # The bootstrap standard error of the RATE (AUTOC) against the AUTOC's actual spread over 150
    # independent samples (a fixed priority, effect max(x, 0), noisy scores): 1.06 here. The spread's
    # own relative error is about 6%, so [0.8, 1.25] is 3.5 of them each way; a standard error off
    # by a factor 4 (a test audit's mutation passed the z-score checks above) cannot pass.

    values, stderrs = [], []
    for s in range(150):
        rng = np.random.default_rng([5, s])
        x = rng.normal(size=1000)
        result = autoc(x, np.maximum(x, 0) + 2 * rng.normal(size=1000), seed=s)
        values.append(result["autoc"])
        stderrs.append(result["stderr"])
    assert 0.8 < np.mean(stderrs) / np.std(values, ddof=1) < 1.25


def test_rate_qini_and_gates_give_tied_rows_their_mean_whatever_their_order():
    # A review: ties kept their row order, so a constant CATE on a table sorted by outcome
    # "found" an AUTOC and a Qini with p = 0. grf averages the scores of tied rows.
    from tauforge.components.uplift import doubly_robust

    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    scores = 1 + 2 * rng.normal(size=2000)  # a constant effect: no ranking can gain anything
    coarse = np.round(x, 1)  # a CATE of few values
    by_score = np.argsort(-scores)  # the table sorted so that ties favour the high scores
    shuffled = rng.permutation(2000)
    for priority in (np.zeros(2000), coarse):
        autocs = [autoc(priority[rows], scores[rows], n_bootstrap=20)["autoc"] for rows in (by_score, shuffled)]
        qinis = [doubly_robust(priority[rows], scores[rows], n_bootstrap=20)["qini"] for rows in (by_score, shuffled)]
        np.testing.assert_allclose(autocs[0], autocs[1], atol=1e-9)  # NaN for the constant: it ranks nothing
        assert qinis[0] == pytest.approx(qinis[1], abs=1e-9)
    assert np.isfinite(autocs[0]) and np.isnan(autoc(np.zeros(2000), scores)["autoc"])
    assert doubly_robust(np.zeros(2000), scores)["qini"] == pytest.approx(0, abs=1e-12)
    # GATES merges tied quantiles rather than leave groups empty (NaN effects before).
    assert [g["rows"] for g in gates(np.zeros(2000), scores)] == [2000]
    two = gates((x > 0).astype(float), scores)
    assert [g["rows"] for g in two] == [int((x <= 0).sum()), int((x > 0).sum())]


def test_heterogeneity_and_uplift_checks_weigh_rows_as_the_reported_effect_does(fits):
    # A review: the card's ATE and sensitivity were weighted, these checks not, and rows of
    # weight 0 (outside the population) were in them: the gain curve ended at another ATE.
    from tauforge.components.uplift import doubly_robust

    d, y_res, t_res, tau, t_hat = fits["aw2"]
    scores = debiased_scores(tau, y_res, t_res, propensity_variance(t_hat))
    w = np.where(d.X[:, 0] > 0.7, 0.0, 1.0 + (d.X[:, 1] > 0.5))  # weights 0, 1 and 2 (X is uniform on [0, 1])
    kept = w > 0

    def checks(weight, rows):
        cal = calibration_test(y_res[rows], t_res[rows], tau[rows], sample_weight=weight)
        lift = doubly_robust(tau[rows], scores[rows], n_bootstrap=20, sample_weight=weight)
        return ([cal[k] for k in ("mean_forest_prediction", "differential_forest_prediction", "mean_stderr",
                                  "differential_stderr")]
                + [autoc(tau[rows], scores[rows], n_bootstrap=20, sample_weight=weight)["autoc"]]
                + [g["effect"] for g in gates(tau[rows], scores[rows], sample_weight=weight)]
                + [lift["auuc"], lift["qini"], lift["ate"]])

    weighted = checks(w, slice(None))
    np.testing.assert_allclose(weighted, checks(w[kept], kept), rtol=1e-10)  # weight 0: as if the row were not there
    np.testing.assert_allclose(weighted, checks(1000 * w, slice(None)), rtol=1e-10)  # any units
    assert weighted[-1] == pytest.approx(np.average(scores, weights=w))  # the gain curve ends at the weighted ATE
    assert abs(weighted[-1] - scores.mean()) > 0.05
    # A weight of 2 is the row twice, for the calibration regression's coefficients.
    twice = np.repeat(np.flatnonzero(kept), w[kept].astype(int))
    doubled = calibration_test(y_res[twice], t_res[twice], tau[twice])
    assert [doubled[k] for k in ("mean_forest_prediction", "differential_forest_prediction")] == pytest.approx(
        weighted[:2], rel=1e-10)


def test_sensitivity_of_inputs_it_cannot_bound_is_nan_not_a_robustness_of_zero():
    # A review: a zero in V(x) made theta infinite, and the bisection on NaN comparisons reported
    # a robustness value of 4e-19 (any confounder breaks the effect); sigma2 = 0 raised ZeroDivisionError.
    rng = np.random.default_rng(0)
    t_res, tau = rng.normal(size=200), np.ones(200)
    p = SensitivityParams.from_scores(tau, tau * t_res + rng.normal(size=200), t_res, np.r_[0.0, np.ones(199)])
    assert np.isnan(robustness_value(p))
    exact = SensitivityParams.from_scores(tau, tau * t_res, t_res, np.ones(200))  # y~ explained exactly
    assert exact.sigma2 == 0 and np.isnan(robustness_value(exact, interval="theta"))


@pytest.mark.parametrize("weighted", [False, True])
def test_calibrations_differential_test_rejects_at_its_nominal_rate_under_no_heterogeneity(weighted):
    # A CATE estimate that carries no information (independent of the effect, which is constant):
    # the one-sided differential test at 5% over 400 seeds, heteroskedastic noise. A correct test
    # rejects in [7, 36] with probability 0.999 (binomial tails of 0.0005 each). Standard errors
    # 0.6 or 1.6 times the right ones gave 59 and 1 here, a two-sided p-value 49: none passes.
    from scipy.stats import binom

    rejected = 0
    for s in range(400):
        rng = np.random.default_rng([11, s])
        x, t_res, tau_hat = rng.normal(size=1000), rng.normal(size=1000), 1 + 0.3 * rng.normal(size=1000)
        y_res = t_res + rng.normal(size=1000) * (1 + np.abs(x))
        weight = 1 + rng.exponential(size=1000) if weighted else None
        rejected += calibration_test(y_res, t_res, tau_hat, sample_weight=weight)["differential_pvalue"] < 0.05
    assert binom.ppf(0.0005, 400, 0.05) <= rejected <= binom.isf(0.0005, 400, 0.05), rejected


def test_groups_of_weight_0_take_no_part_in_the_bootstraps_and_equal_weights_change_no_standard_error():
    # A diff review: a bootstrap draw of only weight-0 groups had no rows, and its NaN made the
    # AUTOC's and the Qini's standard errors NaN; weighted GATES divided by n, not n - 1.
    from tauforge.components.uplift import doubly_robust

    rng = np.random.default_rng(0)
    x = rng.normal(size=600)
    scores, groups = np.maximum(x, 0) + rng.normal(size=600), np.repeat(np.arange(3), 200)
    w = np.where(groups == 2, 0.0, 1.0)
    kept = w > 0
    for check in (lambda *a, **k: autoc(*a, n_bootstrap=200, **k)["stderr"],
                  lambda *a, **k: doubly_robust(*a, n_bootstrap=200, **k)["qini_stderr"]):
        zero = check(x, scores, groups=groups, sample_weight=w)
        assert np.isfinite(zero) and zero == pytest.approx(check(x[kept], scores[kept], groups=groups[kept]))
    plain, equal = gates(x, scores), gates(x, scores, sample_weight=np.full(600, 2.0))
    assert [g["stderr"] for g in equal] == pytest.approx([g["stderr"] for g in plain], rel=1e-12)

    # GATES' quartiles count weight, as its effects do: a weight of 2 is the row twice (they
    # counted rows: here, half the weight in the top quartile, its effect then another group's).
    w = np.where(x > 0.8, 2.0, 1.0)
    twice = np.concatenate([np.arange(600), np.flatnonzero(w == 2)])
    weighted, duplicated = gates(x, scores, sample_weight=w), gates(x[twice], scores[twice])
    for key in ("cate_from", "cate_to", "effect"):
        assert [g[key] for g in weighted] == pytest.approx([g[key] for g in duplicated], rel=1e-12)
    assert [g["rows"] for g in weighted] != [g["rows"] for g in plain]


def test_calibration_errors_are_statsmodels_hc3_and_clustered_ones_cr3_by_its_definition():
    # grf's calibration test: (weighted) least squares with HC3 errors, one-sided p-values; with
    # groups sandwich's vcovCL(type = "HC3"): CR3 times G / (G - 1). Exact numbers at 40 rows,
    # where HC0 or HC2, CR0 or a dropped G / (G - 1) are a few percent off: the nominal-rate test
    # above cannot see that (a mutation review), nor a two-sided p-value.
    import statsmodels.api as sm
    from scipy.stats import norm

    rng = np.random.default_rng(7)
    n = 40
    t_res, tau = rng.normal(size=n), 1 + rng.normal(size=n)
    y_res = tau * t_res + rng.normal(size=n) * (1 + np.abs(t_res))
    for weight in (None, rng.uniform(0.5, 2, n)):
        cal = calibration_test(y_res, t_res, tau, sample_weight=weight)
        mean = np.average(tau, weights=weight)
        Z = np.column_stack([t_res * mean, t_res * (tau - mean)])
        fit = (sm.OLS(y_res, Z) if weight is None else sm.WLS(y_res, Z, weights=weight)).fit(cov_type="HC3")
        keys = ("forest_prediction", "stderr", "pvalue")
        ours = [[cal[f"{side}_{k}"] for side in ("mean", "differential")] for k in keys]
        np.testing.assert_allclose(ours, [fit.params, fit.bse, norm.sf(fit.tvalues)], rtol=1e-9)
    # Groups of 5 rows: u_g = Z_g' (I - H_gg)^-1 e_g with the inverse taken as it is written.
    groups = np.repeat(np.arange(8), 5)
    Z = np.column_stack([t_res * tau.mean(), t_res * (tau - tau.mean())])
    resid = y_res - Z @ np.linalg.lstsq(Z, y_res, rcond=None)[0]
    bread = np.linalg.inv(Z.T @ Z)
    u = [Z[g].T @ np.linalg.solve(np.eye(5) - Z[g] @ bread @ Z[g].T, resid[g]) for g in np.split(np.arange(n), 8)]
    cr3 = bread @ (np.array(u).T @ np.array(u)) @ bread * 8 / 7
    cal = calibration_test(y_res, t_res, tau, groups=groups)
    np.testing.assert_allclose([cal["mean_stderr"], cal["differential_stderr"]], np.sqrt(np.diag(cr3)), rtol=1e-9)


def test_the_autoc_and_every_bootstrap_replicate_ignore_a_constant_added_to_the_scores():
    # The TOC is a difference of means, so a constant added to every score changes no replicate,
    # also where a resample's weight does not add up to n (whole groups drawn, weights): each
    # replicate compares its own top mean with its own mean (a mutation review: against the
    # scores' sum over n, a priority tying every row had a standard error of 0.02; such a priority
    # now has no AUTOC at all, NaN, so the same mistake is caught by the shift).
    rng = np.random.default_rng(2)
    scores, groups, weight = 1 + rng.normal(size=300), np.repeat(np.arange(30), 10), rng.uniform(0.5, 2, 300)
    priority = np.round(rng.normal(size=300), 1)
    rate, shifted = (autoc(priority, scores + shift, n_bootstrap=50, groups=groups, sample_weight=weight)
                     for shift in (0.0, 10.0))
    assert rate["stderr"] > 0.01
    assert shifted["autoc"] == pytest.approx(rate["autoc"], abs=1e-9)
    assert shifted["stderr"] == pytest.approx(rate["stderr"], abs=1e-9)


def test_the_reported_robustness_values_put_their_bound_at_0_the_intervals_at_a_weaker_confounder():
    # The robustness value is the strength r = c_y = c_t at which the bound reaches the null: at
    # the reported r the lower bound is 0 to the bisection's precision. The confidence interval
    # is wider than the bias bounds, so it reaches 0 first. The report's two keys must not swap.
    from tauforge.components.sensitivity import sensitivity_report

    rng = np.random.default_rng(6)
    x, v, t_res, y_res = heteroskedastic_residuals(rng, 2000)
    report = sensitivity_report(1 + x, y_res, t_res, v)
    p = SensitivityParams.from_scores(1 + x, y_res, t_res, v)
    assert 0 < report["robustness_value"] < report["robustness_value_theta"] < 1
    for key, interval in (("robustness_value", "ci"), ("robustness_value_theta", "theta")):
        r = report[key]
        assert bounds(p, r, r, 1.0, 0.05, interval)[0] == pytest.approx(0, abs=1e-9)


def test_rates_p_value_is_one_sided():
    # "The ranking gains over the average": a priority ranking the rows backwards has p near 1,
    # not near 0 (a two-sided p-value passes every other test: a mutation review).
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    scores = np.maximum(x, 0) + rng.normal(size=2000)
    assert autoc(x, scores, n_bootstrap=100)["pvalue"] < 0.001
    assert autoc(-x, scores, n_bootstrap=100)["pvalue"] > 0.999


@pytest.mark.parametrize("case", ["tied priorities", "interleaved groups"])
def test_autocs_standard_error_is_its_spread_with_ties_and_with_groups(case):
    # As the test above, for what it does not exercise: a priority of two values (each resample
    # averages its own tied rows: with the full sample's tie means held fixed the standard error
    # was 0.09 of the spread), and groups whose rows are not next to each other in the table (a
    # resample draws the groups of the ranked rows: with the table's row order instead, 0.25 of
    # the spread, as if rows were independent). Measured 1.03 and 0.90 over 100 samples.
    values, stderrs = [], []
    for s in range(100):
        rng = np.random.default_rng([21, s])
        if case == "tied priorities":
            x, groups = rng.normal(size=1000), None
            priority, scores = (x > 0).astype(float), np.maximum(x, 0) + 2 * rng.normal(size=1000)
        else:
            groups, z = np.arange(1000) % 50, rng.normal(size=50)  # 50 groups of 20, interleaved
            priority = z[groups] + 0.1 * rng.normal(size=1000)
            scores = np.maximum(z, 0)[groups] + rng.normal(size=50)[groups] + rng.normal(size=1000)
        result = autoc(priority, scores, n_bootstrap=100, seed=s, groups=groups)
        values.append(result["autoc"])
        stderrs.append(result["stderr"])
    assert 0.7 < np.mean(stderrs) / np.std(values, ddof=1) < 1.4


def test_gates_quartiles_by_hand_and_their_standard_errors_are_the_textbook_ones():
    # A row's quantile is the share ranked below it plus half its own: for 6 rows 1/12, 3/12,
    # ..., 11/12, times 4 and floored, quartiles 0, 1, 1, 2, 3, 3 (a share counted without the
    # half gave 2, 1, 2, 1 rows). Unweighted rows without groups: the standard error of a mean,
    # std(ddof=1) / sqrt(n) (a mutation review: the weighted test compares GATES with itself).
    rng = np.random.default_rng(3)
    assert [g["rows"] for g in gates(np.arange(6.0), rng.normal(size=6))] == [1, 2, 1, 2]
    x = rng.normal(size=400)
    scores = x + rng.normal(size=400)
    for g in gates(x, scores):
        rows = (x >= g["cate_from"]) & (x <= g["cate_to"])
        assert g["rows"] == 100 and g["effect"] == pytest.approx(scores[rows].mean())
        assert g["stderr"] == pytest.approx(scores[rows].std(ddof=1) / 10, rel=1e-10)


def test_the_calibration_test_on_the_held_out_cate_has_the_spread_its_standard_error_claims():
    # A review (and grf's issue 396): on the rows' own out-of-bag CATE the calibration test's z,
    # with a constant effect, spread far wider than N(0, 1), so that it found heterogeneity, or its
    # reverse, in a constant effect well beyond its nominal rate. Held out (a forest on one half
    # ranks the other) it has the spread it claims. 60 training sets, the true nuisance functions,
    # plain forests (no candidate weights or correction: the same dependence, a third of the time):
    # the sample standard deviation of 60 z's exceeds 1.2 with probability 0.015 when they are
    # N(0, 1) (chi-square, 59 degrees of freedom), and stays under it with probability 0.06 when
    # their spread is 1.4, the out-of-bag CATE's (1.31 here, planted below: it must fail the bound);
    # their mean lies within 0.4 of 0 (3 standard errors) but with probability 0.003.
    from tauforge.kernels import CausalForest

    held, out_of_bag = [], []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(1000, 4))
        e = 1 / (1 + np.exp(-0.5 * X[:, 1]))
        t_res = rng.binomial(1, e) - e
        y_res = 0.5 * t_res + rng.normal(size=1000)  # a constant effect
        plain = {"n_estimators": 100, "candidate_weights": None, "linear_correction_variables": None}
        rows, cate = held_out_cate(X, y_res, t_res, plain, seed)
        c = calibration_test(y_res[rows], t_res[rows], cate)
        held.append(c["differential_forest_prediction"] / c["differential_stderr"])
        forest = CausalForest(**plain, random_state=seed, progress=False, variance_smoothing=False)
        c = calibration_test(y_res, t_res, forest.fit(X, t_res, y_res).oob_predict(X))
        out_of_bag.append(c["differential_forest_prediction"] / c["differential_stderr"])
    assert np.std(held, ddof=1) < 1.2 and abs(np.mean(held)) < 0.4, (np.std(held, ddof=1), np.mean(held))
    assert np.std(out_of_bag, ddof=1) > 1.2  # the defect the held-out half removes
