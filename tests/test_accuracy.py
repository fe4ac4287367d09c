"""Statistical accuracy against the truth and against EconML on the same data.

Designs with a known CATE (grf's simple, aw2, aw3): tauforge's CausalForestDML and EconML's,
with the same nuisance learners, folds count and number of trees. Fixed seeds make every
number deterministic; `make bench` repeats the comparison at larger n over several seeds.
"""

import json
import os
import sys
import warnings

import numpy as np
import pytest
from background import Processes, compile_kernels

from tauforge.kernels import CausalForestDML
from tauforge.kernels.ate import oob_effect
from tauforge.kernels.datasets import make_causal_data
from tauforge.kernels.nuisance import cross_fitting_folds, default_nuisance_model

N_TREES = 1000  # both libraries; tauforge's default


def _fit_both(design, n, seed):
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    train = make_causal_data(design, n=n, p=10, seed=seed)
    test = make_causal_data(design, n=1000, p=10, seed=seed + 100)
    # The same nuisance learners for both: tauforge's defaults (additive models and early-stopped boosting).
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0))
    ours = CausalForestDML(**models, cv=5, n_estimators=N_TREES, random_state=seed).fit(train.Y, train.T, X=train.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = EconMLCausalForestDML(**models, discrete_treatment=True, cv=5, n_estimators=N_TREES,
                                    random_state=seed, n_jobs=1).fit(train.Y, train.T, X=train.X)
    out = {}
    for name, est in (("tauforge", ours), ("econml", ref)):
        tau = np.ravel(est.effect(test.X))
        lo, hi = (np.ravel(a) for a in est.effect_interval(test.X, alpha=0.05))
        out[name] = dict(rmse=float(np.sqrt(np.mean((tau - test.tau) ** 2))),
                         coverage=float(np.mean((lo <= test.tau) & (test.tau <= hi))),
                         width=float(np.mean(hi - lo)), score=interval_score(lo, hi, test.tau, 0.05))
        # A planted defect: the same intervals at half their width.
        out[name]["score_half"] = interval_score(tau - 0.5 * (tau - lo), tau + 0.5 * (hi - tau), test.tau, 0.05)
        out[name].update(ate=float(np.ravel(est.ate_)[0]), ate_stderr=float(np.ravel(est.ate_stderr_)[0]))
    return out


def interval_score(lo, hi, truth, alpha):
    """Mean interval score of central (1 - alpha) intervals (Gneiting and Raftery 2007, a proper
    scoring rule: lower is better): the width, plus 2 / alpha times how far the truth lies
    outside. It weighs width against misses: too little variance pays for its misses, too much
    for its width."""
    below, above = np.clip(lo - truth, 0, None), np.clip(truth - hi, 0, None)
    return float(np.mean(hi - lo + 2 / alpha * (below + above)))


# (design, n, first seed). tauforge's interval score must be no worse than EconML's on each. On
# aw3, where bias is half of both libraries' error, 10% worse was allowed until 2026-12-07; over 10
# training sets (seeds 13, 63 and 0-7, this test's fits, the defaults of that date: candidates by
# importance, the correction's penalty out of bag) tauforge's mean score is 0.957 against
# EconML's 1.251 (RMSE 0.195 against 0.214, coverage 0.883 against 0.830, width 0.628 against
# 0.664), a set's ratio 0.54-1.10, above 1 on 2 of the 10; this test's two seeds give 0.80.
CASES = [("simple", 3000, 11), ("aw2", 3000, 12), ("aw3", 3000, 13)]
SEEDS = (0, 50)  # added to a case's first seed
FIT_BOTH = "import json, sys; from test_accuracy import fit_seeds; print(json.dumps(fit_seeds(*sys.argv[1:])))"


def fit_seeds(design: str, n: str, seed: str) -> list[dict]:
    return [_fit_both(design, int(n), int(seed) + s) for s in SEEDS]


def start_background(request):
    """The comparisons' fits, one process a design (conftest.py starts them at the session's
    start): 25-35 s of CPU each, two fits by each library, mostly EconML's forest. Numbers equal
    to fits in this process: every fit is seeded."""
    compile_kernels()
    fits = Processes()
    for design, n, seed in CASES:
        fits.start(design, [sys.executable, "-c", FIT_BOTH, design, str(n), str(seed)],
                   cwd=os.path.dirname(os.path.abspath(__file__)))
    return fits


@pytest.mark.parametrize("design, n, seed", CASES)
def test_cate_accuracy_and_intervals_against_econml(design, n, seed, background):
    """Means over two seeds (one seed's RMSE moves by 10% between the libraries on aw3).
    Measured (2026-12-07, the defaults after the correction's penalty chosen out of bag),
    tauforge against EconML (simple, aw2, aw3): RMSE 0.136/0.175, 0.167/0.186, 0.182/0.200;
    coverage 0.926/0.901, 0.922/0.849, 0.883/0.851; width 0.484/0.548, 0.589/0.614,
    0.605/0.653; interval score 0.770/1.207, 0.770/1.084, 0.927/1.164. Before (2026-12-04,
    uniform candidates) tauforge's intervals were narrower and covered less than EconML's on
    aw3: coverage alone is not asserted, the interval score weighs width and misses."""
    code, out, err = background[__name__].result(design)  # fit_seeds(design, n, seed)
    assert code == 0, err[-3000:]
    runs = json.loads(out.strip().splitlines()[-1])
    ours, ref = ({k: float(np.mean([r[lib][k] for r in runs])) for k in runs[0][lib]} for lib in ("tauforge", "econml"))
    summary = f"{design}: tauforge {ours}, econml {ref}"
    assert ours["rmse"] <= 1.0 * ref["rmse"], summary
    assert ours["width"] <= ref["width"], summary
    assert ours["score"] <= ref["score"], summary
    # The score comparison can fail: the same intervals at half their width (a variance
    # understated 4x) lose to EconML's, by 7% on simple, 54% on aw2 and 73% on aw3 (the
    # docstring's fits).
    assert ours["score_half"] > ref["score"], summary
    # The average effect is EconML's `ate_` (the doubly robust score on out-of-bag CATE, an audit:
    # only the CATE was compared). With the same nuisance learners the two differ by at most 0.08
    # of EconML's standard error on these six fits, the standard errors by at most 0.3%. The plain
    # mean of the CATE (the score without its residual term) moves aw3's by 0.34 and fails, as
    # does a standard error off by sqrt(2).
    for r in runs:
        mine, theirs = r["tauforge"], r["econml"]
        assert abs(mine["ate"] - theirs["ate"]) <= 0.25 * theirs["ate_stderr"], (design, mine, theirs)
        assert 0.95 <= mine["ate_stderr"] / theirs["ate_stderr"] <= 1.05, (design, mine, theirs)


@pytest.mark.parametrize("design, true_ate", [("aw1", 0.0), ("constant", 1.0)])
def test_ate_interval_covers_a_known_constant_effect(design, true_ate):
    d = make_causal_data(design, n=4000, p=10, seed=21)
    est = CausalForestDML(n_estimators=100, random_state=21).fit(d.Y, d.T, X=d.X)
    lo, hi = est.ate_interval(alpha=0.05)
    assert lo <= true_ate <= hi, (est.ate_, lo, hi)
    # One seed cannot test a rate (the ATE's standard error against its spread over seeds is in
    # test_bootstrap); it can bound the width: 0.146-0.148 here, so a standard error inflated by
    # 40% fails, where the old bound (0.5) passed one 3.4 times too large.
    assert hi - lo < 0.2
    # With a constant effect the CATE is flat too: no point estimate strays far (0.084 here).
    assert np.abs(est.effect(d.X[:500]) - true_ate).mean() < 0.15


def test_score_is_econmls_held_out_loss_near_the_truths_and_ranks_a_placebo_model_last():
    from econml.dml import CausalForestDML as EconMLCausalForestDML

    train = make_causal_data("aw2", n=2000, p=10, seed=0)
    test = make_causal_data("aw2", n=4000, p=10, seed=100)
    models = dict(model_y=default_nuisance_model(False, 0), model_t=default_nuisance_model(True, 0))
    ours = CausalForestDML(**models, n_estimators=200, random_state=0, progress=False).fit(train.Y, train.T, X=train.X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = EconMLCausalForestDML(**models, discrete_treatment=True, cv=5, n_estimators=200,
                                    random_state=0).fit(train.Y, train.T, X=train.X)
    score = ours.score(test.Y, test.T, test.X)
    # The same loss as EconML's on the same held-out rows (1.0389 and 1.0432: each with its own forest).
    assert score == pytest.approx(ref.score(test.Y, test.T, X=test.X), rel=0.02)
    # The true functions' loss is the noise variance (0.987): a fitted model's is above it, by its
    # own error and its nuisance models' (5% here; 3.9% with the true CATE and these nuisance
    # models). The bound fails a CATE flattened to the model's ATE (31% above) or to 0 (3.3 times).
    truth = np.mean((test.Y - test.m - test.tau * (test.T - test.e)) ** 2)
    assert truth < score < 1.07 * truth
    # A planted defect: a model fit with the treatment permuted (no effect to find) scores 3.39.
    placebo_T = np.random.default_rng(0).permutation(train.T)
    placebo = CausalForestDML(**models, n_estimators=200, random_state=0, progress=False).fit(train.Y, placebo_T,
                                                                                              X=train.X)
    assert placebo.score(test.Y, test.T, test.X) > 2 * score
    # Residuals from the mean of the folds' models, as EconML's score takes them.
    y_hat = np.mean([m.predict(test.X) for m in ours.models_y[0]], axis=0)
    t_hat = np.mean([m.predict_proba(test.X)[:, 1] for m in ours.models_t[0]], axis=0)
    loss = (test.Y - y_hat - ours.effect(test.X) * (test.T - t_hat)) ** 2
    assert score == pytest.approx(loss.mean(), rel=1e-12)
    # Weights: 2 for every row is no weight; 0 for the first half scores the second half alone.
    assert ours.score(test.Y, test.T, test.X, sample_weight=np.full(4000, 2.0)) == pytest.approx(score, rel=1e-12)
    half = np.r_[np.zeros(2000), np.ones(2000)]
    assert ours.score(test.Y, test.T, test.X, sample_weight=half) == pytest.approx(loss[2000:].mean(), rel=1e-12)
    assert ours.score_ == pytest.approx(np.mean((ours.residuals_[0] - oob_effect(ours.forest_, train.X)
                                                 * ours.residuals_[1]) ** 2), rel=1e-12)


def test_a_rare_treatments_ate_stderr_is_not_below_the_efficiency_bound():
    # A numerics review: with 1% of rows treated, propensities clipped at 0.025 shrank every row's
    # correction; ate_stderr_ averaged 0.047 where the estimates' spread over 16 seeds was 0.120,
    # and 95% intervals covered 11 of 16. Randomized here with P(T = 1) = 0.01 and unit noise, so
    # no unbiased estimator's standard error is below sqrt((1 / 0.01 + 1 / 0.99) / n) = 0.112
    # (Hahn's bound, less the effect's own variance). This fit's: 0.147.
    d = make_causal_data("simple", n=8000, p=5, seed=100)
    T = (np.random.default_rng(0).uniform(size=8000) < 0.01).astype(float)
    Y = d.Y + (T - d.T) * d.tau  # the same units under the rarer treatment
    est = CausalForestDML(n_estimators=200, random_state=0, progress=False).fit(Y, T, X=d.X)
    assert est.ate_stderr_ > 0.9 * np.sqrt((1 / 0.01 + 1 / 0.99) / 8000), est.ate_stderr_
    lo, hi = est.ate_interval()
    assert lo <= d.tau.mean() <= hi


def test_propensities_are_clipped_at_the_default_or_half_the_smaller_arms_share():
    # Exact values: the rare-treatment test above passed with the clip at the whole share (0.01
    # there, not 0.005) and with the default at 0.01 for 0.025 (a mutation review).
    from tauforge.kernels.ate import propensity_clip, propensity_variance

    balanced = np.r_[np.ones(30), np.zeros(70)]
    assert CausalForestDML().min_propensity == 0.025 == propensity_clip(balanced)
    rare = np.r_[np.ones(2), np.zeros(198)]  # 1% treated
    assert propensity_clip(rare) == pytest.approx(0.005) and propensity_clip(1 - rare) == pytest.approx(0.005)
    w = np.r_[np.full(2, 3.0), np.ones(198)]  # the treated weigh 6 of 204
    assert propensity_clip(rare, sample_weight=w) == pytest.approx(0.5 * 6 / 204)
    assert propensity_clip(rare, min_propensity=0.001) == 0.001  # a smaller clip asked for is kept
    e = np.array([0.0001, 0.3, 0.9999])
    np.testing.assert_allclose(propensity_variance(e), [0.025 * 0.975, 0.21, 0.025 * 0.975])
    np.testing.assert_allclose(propensity_variance(e, propensity_clip(rare)), [0.005 * 0.995, 0.21, 0.005 * 0.995])


def test_continuous_treatment_reports_the_average_partial_effect_not_the_variance_weighted_one():
    # Var(T | X) = exp(X1) and tau = 1 + X1: the average effect is 1, the variance-weighted one 2.
    d = make_causal_data("continuous_hetero", n=4000, p=5, seed=22)
    est = CausalForestDML(n_estimators=200, random_state=22).fit(d.Y, d.T, X=d.X)
    assert not est.discrete_treatment_
    lo, hi = est.ate_interval()
    assert lo <= 1.0 <= hi and hi < 1.5, (est.ate_, lo, hi)
    # The variance-weighted effect is still there, under its own name, and estimates its own target.
    y_res, t_res = est.residuals_
    assert est.variance_weighted_effect_ == pytest.approx(np.sum(y_res * t_res) / np.sum(t_res**2))
    assert abs(est.variance_weighted_effect_ - 2.0) < 3 * est.variance_weighted_stderr_
    # V(x) tracks the true conditional variance exp(X1).
    assert np.corrcoef(np.log(est.treatment_variance_), d.X[:, 0])[0, 1] > 0.8


def test_a_continuous_treatments_nuisance_models_reweighted_err_less_where_the_treatment_varies_little():
    # Var(T | X) = exp(X1): where X1 < -1 the treatment's standard deviation is under 0.61, and
    # there an error in E[T | X] is large against T's own variation and attenuates the forest's
    # local slope. The inverse-variance refit puts the models' accuracy there. Measured (seeds
    # 22, 23, 24): the reweighted errors against the true E[T | X] and E[Y | X] at those rows are
    # 0.79-0.89 and 0.71-0.87 of the unweighted ones (0.79 and 0.71 here). A refit whose weights
    # were ignored would err as much, and weights V instead of 1 / V more. Over 10 training sets
    # of p = 10 the CATE's error fell from 0.1703 to 0.1354 (docs/benchmarks.md).
    d = make_causal_data("continuous_hetero", n=2000, p=5, seed=22)
    low = d.X[:, 0] < -1
    errors = {}
    for reweight in ("auto", False):
        est = CausalForestDML(n_estimators=200, random_state=22, reweight_nuisance=reweight, progress=False).fit(
            d.Y, d.T, X=d.X)
        assert est.reweighted_nuisance_ == (reweight == "auto")
        y_res, t_res = est.residuals_
        errors[reweight] = [np.sqrt(np.mean((d.T - t_res - d.e)[low] ** 2)),
                            np.sqrt(np.mean((d.Y - y_res - d.m)[low] ** 2))]
        # The models kept (which `score` predicts with) are those that made the residuals.
        fold = cross_fitting_folds(d.T, 5, False, 22)
        for k, (my, mt) in enumerate(zip(est.models_y[0], est.models_t[0], strict=True)):
            np.testing.assert_allclose(my.predict(d.X[fold == k]), (d.Y - y_res)[fold == k], atol=1e-12)
            np.testing.assert_allclose(mt.predict(d.X[fold == k]), (d.T - t_res)[fold == k], atol=1e-12)
    (t_err, y_err), (t_plain, y_plain) = errors["auto"], errors[False]
    assert t_err < 0.9 * t_plain and y_err < 0.85 * y_plain, errors


def test_a_continuous_treatments_variance_is_floored_at_a_twentieth_of_the_weighted_mean_square():
    # Hand numbers: no test reached the floor, or its weights (a mutation review dropped both).
    from tauforge.kernels.ate import floor_variance

    t_res = np.array([1.0, -1.0, 3.0, -3.0])  # mean t~^2 = 5: floor 0.25
    v_hat = np.array([0.01, 2.0, 0.1, 0.3])
    np.testing.assert_allclose(floor_variance(v_hat, t_res), [0.25, 2.0, 0.25, 0.3])
    # Weights 3, 1, 0, 0: the weighted mean t~^2 is 1, the floor 0.05.
    np.testing.assert_allclose(floor_variance(v_hat, t_res, np.array([3.0, 1.0, 0.0, 0.0])), [0.05, 2.0, 0.1, 0.3])


def test_cate_intervals_on_oracle_residuals_cover_and_are_not_inflated():
    """With the true nuisances, 95% CATE intervals cover the truth at most test points, and their
    width is the right scale: the interval score, a proper score, prefers them to the same
    intervals at 2/3 or 3/2 their width."""
    from tauforge.kernels import CausalForest

    d = make_causal_data("aw2", n=8000, p=10, seed=23)
    test = make_causal_data("aw2", n=1000, p=10, seed=24)
    cf = CausalForest(n_estimators=500, random_state=23, progress=False).fit(d.X, d.T - d.e, d.Y - d.m)
    tau, lo, hi = cf.predict_with_interval(test.X)
    half = (hi - lo) / 2
    # Measured (seeded, the smoothed variance): coverage 0.968; the same intervals at 2/3 their
    # width cover 0.856, at half 0.716 (per-point variance: 0.951, 0.844, 0.716). The 1,000
    # points share one fit, so their misses are not independent draws and no binomial tail
    # applies here (the next test has one): 0.90 leaves room for that.
    assert np.mean(np.abs(tau - test.tau) <= half) >= 0.90

    def score(k):  # the intervals at k times their width
        return interval_score(tau - k * half, tau + k * half, test.tau, 0.05)

    # Scores measured 0.704 at this width, 0.797 at 2/3 and 0.917 at 3/2 (per-point variance:
    # 0.783, 0.879, 0.978). A variance overstated
    # (or understated) 2.25-fold or more would put the best of the three at another width, and fail.
    assert score(1) < score(2 / 3)
    assert score(1) < score(3 / 2)


def test_cate_intervals_cover_at_the_nominal_rate_over_independent_training_sets():
    """Pointwise coverage as a rate: one point, 60 independent training sets (true nuisances), each
    fit's 95% interval there an independent Bernoulli draw."""
    from tauforge.kernels import CausalForest

    x0 = np.full((1, 10), 0.5)
    x0[0, :2] = 0.8  # on aw2's plateau, away from its steps: where bias is small
    truth = (1 + 1 / (1 + np.exp(-20 * (0.8 - 1 / 3)))) ** 2  # aw2: zeta(x1) zeta(x2)
    z = []
    for s in range(60):
        d = make_causal_data("aw2", n=2000, p=10, seed=1000 + s)
        cf = CausalForest(n_estimators=500, random_state=s, progress=False).fit(d.X, d.T - d.e, d.Y - d.m)
        tau, var = cf.predict_and_var(x0)
        z.append((tau[0] - truth) / np.sqrt(var[0]))
    z = np.array(z)
    covers = int(np.sum(np.abs(z) <= 1.959963984540054))
    # At least 54 of 60 (measured 59, 57 with the per-point variance; at half the width 43): a
    # correct 95% interval falls short with probability binom.cdf(53, 60, 0.95) = 0.030; one
    # that covers 85% passes with probability 0.18, one that covers 80% with 0.03.
    assert covers >= 54, (covers, z)
    # Not bought with width: the standardized errors spread by at least 0.55 (measured 0.72, 0.89
    # with the per-point variance: the little bags overstate the variance somewhat,
    # docs/benchmarks.md, and at this point the smoothed one is about 1.5 times the per-point
    # one). A variance overstated 1.7-fold more than now puts it near 0.55 and fails; the spread
    # of 60 draws has a sampling sd of about 0.07, so the threshold sits 2.4 of them below the
    # measured value (an audit: at 0.5 a variance overstated twice as much as now passed).
    assert np.std(z) >= 0.55, np.std(z)
