"""Uplift metrics (components/uplift.py): CausalML's classic definitions to the digit, the doubly
robust curves and areas evaluate and monitor report, their bootstrap, and bad input."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from tauforge.components import uplift

try:  # CausalML is heavy (xgboost with NCCL, matplotlib: 830 MB): an optional extra, `pip install -e .[reference]`
    from causalml.metrics import auuc_score, get_cumgain, get_qini, qini_score
except ImportError:
    causalml = None
else:
    causalml = True
needs_causalml = pytest.mark.skipif(
    causalml is None, reason="CausalML is not installed (pip install -e '.[reference]'); "
                             "test_classic_areas_equal_causalml_0_18_0s_recorded_values checks its numbers without it")


def randomized(seed: int, n: int = 400, treated_first: bool = False):
    """A randomized trial: outcome, treatment, a noisy score of the effect max(x, 0), and a noisy
    per-row effect. `treated_first` ranks every treated row above every control row, so that the
    top rows hold no control row and the classic lift is undefined (NaN, interpolated) there."""
    rng = np.random.default_rng(seed)
    t = rng.binomial(1, 0.5, n).astype(float)
    x = rng.normal(size=n)
    y = x + t * np.maximum(x, 0) + rng.normal(size=n)
    score = np.maximum(x, 0) + rng.normal(scale=0.5, size=n)
    tau = np.maximum(x, 0) + rng.normal(scale=0.1, size=n)
    return y, t, score + 5 * t if treated_first else score, tau


CASES = [(0, False), (1, False), (2, True)]


@needs_causalml
@pytest.mark.parametrize("seed, treated_first", CASES)
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("with_effect", [False, True])
def test_classic_curves_and_areas_equal_causalmls_to_1e9(seed, treated_first, normalize, with_effect):
    y, t, score, tau = randomized(seed, treated_first=treated_first)
    frame = pd.DataFrame({"y": y, "w": t, "model": score})
    effect = None
    if with_effect:
        frame["tau"], effect = tau, tau
    ours = {"gain": uplift.cumulative_gain(y, t, score, effect=effect, normalize=normalize),
            "qini": uplift.qini_curve(y, t, score, effect=effect, normalize=normalize)}
    theirs = {"gain": get_cumgain(frame, normalize=normalize)["model"].to_numpy(),
              "qini": get_qini(frame, normalize=normalize)["model"].to_numpy()}
    for curve in ("gain", "qini"):
        assert len(ours[curve]) == len(y) + 1 and np.isfinite(ours[curve]).all()
        np.testing.assert_allclose(ours[curve], theirs[curve], rtol=0, atol=1e-9)
    assert abs(uplift.auuc_score(y, t, score, effect=effect, normalize=normalize)
               - auuc_score(frame, normalize=normalize)["model"]) < 1e-9
    assert abs(uplift.qini_score(y, t, score, effect=effect, normalize=normalize)
               - qini_score(frame, normalize=normalize)["model"]) < 1e-9


# CausalML 0.18.0's auuc_score and qini_score of `randomized(seed, treated_first)`, recorded with
# repr() (causalml.metrics on pandas 2.3.3, numpy 2.4.6): (normalize, effect given) -> (auuc, qini).
RECORDED = {
    (0, False): {(False, False): (74.95769608435872, 14.232093088808734),
                 (False, True): (123.01582857166245, 23.03227595514909),
                 (True, False): (0.7962852893899467, 0.27869007105199456),
                 (True, True): (0.7901514999885516, 0.2727008461565436)},
    (1, False): {(False, False): (77.25936908132275, 22.387338786644005),
                 (False, True): (123.7792070445913, 24.18890712796719),
                 (True, False): (1.1023009338888496, 0.672446720572274),
                 (True, True): (0.7737405011268814, 0.3183246510549356)},
    (2, True): {(False, False): (-118.75581865711119, -191.49273757669397),
                (False, True): (93.27914241139203, 35.71344011223075),
                (True, False): (-0.8770630446658014, -2.931101816216481),
                (True, True): (0.6474894514780144, 0.5137863015690327)},
}


@pytest.mark.parametrize("seed, treated_first", CASES)
def test_classic_areas_equal_causalml_0_18_0s_recorded_values(seed, treated_first):
    y, t, score, tau = randomized(seed, treated_first=treated_first)
    for (normalize, with_effect), (auuc, qini) in RECORDED[seed, treated_first].items():
        effect = tau if with_effect else None
        assert abs(uplift.auuc_score(y, t, score, effect=effect, normalize=normalize) - auuc) < 1e-9
        assert abs(uplift.qini_score(y, t, score, effect=effect, normalize=normalize) - qini) < 1e-9


@needs_causalml
def test_doubly_robust_gain_is_causalmls_cumulative_gain_of_the_effect_scores_per_row():
    y, t, score, _ = randomized(0)
    psi = 2 * t * y - 2 * (1 - t) * y  # inverse-propensity scores of a 50% trial, as effect scores
    result = uplift.doubly_robust(score, psi, n_bootstrap=0)
    gain = get_cumgain(pd.DataFrame({"y": y, "w": t, "tau": psi, "model": score}))["model"].to_numpy() / len(y)
    assert abs(result["auuc"] - gain.mean()) < 1e-9
    assert abs(result["qini"] - (gain - np.linspace(0, gain[-1], len(gain))).mean()) < 1e-9
    at = (np.array(result["curve"]["share"]) * len(y)).round().astype(int)
    np.testing.assert_allclose(result["curve"]["gain"], gain[at], rtol=0, atol=1e-12)


def test_doubly_robust_areas_follow_their_definition_and_the_curve_ends_at_the_ate():
    rng = np.random.default_rng(3)
    score, psi = rng.normal(size=250), rng.normal(size=250)
    result = uplift.doubly_robust(score, psi, n_bootstrap=0, points=11)
    partial = np.concatenate([[0.0], np.cumsum(psi[np.argsort(-score)])]) / 250
    assert result["auuc"] == pytest.approx(partial.mean(), abs=1e-12)
    assert result["qini"] == pytest.approx((partial - np.arange(251) / 250 * psi.mean()).mean(), abs=1e-12)
    assert result["curve"]["share"] == pytest.approx(np.linspace(0, 1, 11))
    assert result["curve"]["gain"][-1] == pytest.approx(psi.mean()) and result["ate"] == pytest.approx(psi.mean())
    assert result["curve"]["qini"][0] == result["curve"]["qini"][-1] == pytest.approx(0, abs=1e-12)


def test_a_bootstrap_resample_by_counts_equals_repeating_the_rows():
    rng = np.random.default_rng(4)
    psi = rng.normal(size=60)
    counts = np.bincount(rng.integers(0, 60, 60), minlength=60).astype(float)
    repeated = np.repeat(psi, counts.astype(int))
    partial = np.concatenate([[0.0], np.cumsum(repeated)]) / len(repeated)
    auuc, qini = uplift._areas(psi, counts)
    assert auuc == pytest.approx(partial.mean(), abs=1e-12)
    assert qini == pytest.approx(partial.mean() - repeated.mean() / 2, abs=1e-12)


def test_a_ranking_unrelated_to_the_effect_beats_random_at_the_nominal_rate_and_a_good_one_always():
    # The Qini p-value tests "the ranking beats random" (one-sided, 5%). With a score drawn
    # independently of the effect, a valid test rejects in at most Binomial(300, 0.05) draws:
    # more than 24 has probability 0.0093 (binom.isf(0.01, 300, 0.05) = 24). A test rejecting
    # 12% of the time passes anyway with probability 0.017, 10% with 0.14, 8% with 0.55: this
    # catches a standard error off by a large factor, not a slightly liberal one. Measured: 15.
    rng = np.random.default_rng(0)
    draws, rejected = 300, 0
    for _ in range(draws):
        x = rng.normal(size=500)
        psi = np.maximum(x, 0) + rng.normal(scale=2, size=500)  # noisy per-row effects, as AIPW scores are
        rejected += uplift.doubly_robust(rng.normal(size=500), psi, n_bootstrap=100)["qini_pvalue"] < 0.05
        good = uplift.doubly_robust(x, psi, n_bootstrap=100)
        assert good["qini_pvalue"] < 0.05 and good["qini"] > 0
    assert rejected <= binom.isf(0.01, draws, 0.05), rejected


def test_compare_judges_two_rankings_of_the_same_rows_with_a_paired_difference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    psi = np.maximum(x, 0) + rng.normal(size=2000)
    result = uplift.compare(psi, {"champion": -x, "challenger": x})
    d = result["qini_difference"]
    assert d["of"] == "challenger - champion"
    assert d["value"] == pytest.approx(result["challenger"]["qini"] - result["champion"]["qini"])
    assert d["value"] > 0 and d["pvalue"] < 1e-6
    same = uplift.compare(psi, {"champion": x, "challenger": x})["qini_difference"]
    assert same["value"] == 0 and same["stderr"] == 0


def test_the_difference_of_two_equally_good_rankings_is_significant_at_the_nominal_rate():
    # Two scores, each the effect plus independent noise of the same size: neither ranks better,
    # so a valid two-sided 5% test of the difference rejects in at most Binomial(200, 0.05) draws:
    # more than 18 has probability 0.0058 (binom.isf(0.01, 200, 0.05) = 18). A test rejecting 12%
    # of the time passes anyway with probability 0.11, 10% with 0.37. Measured: 10 rejections;
    # the same difference judged with the two areas' standard errors added as if independent
    # (no pairing) rejected 0 times: valid, but blind to what the paired one sees.
    rng = np.random.default_rng(2)
    draws, rejected = 200, 0
    for _ in range(draws):
        x = rng.normal(size=500)
        psi = np.maximum(x, 0) + rng.normal(size=500)
        scores = {"champion": x + rng.normal(size=500), "challenger": x + rng.normal(size=500)}
        rejected += uplift.compare(psi, scores, n_bootstrap=100)["qini_difference"]["pvalue"] < 0.05
    assert rejected <= binom.isf(0.01, draws, 0.05), rejected


@pytest.mark.parametrize("call, message", [
    (lambda: uplift.cumulative_gain([1.0, 2.0], [0, 1], [0.1]), "outcome must have one value per row of score"),
    (lambda: uplift.qini_curve([1.0, 2.0], [0, 2], [0.1, 0.2]), "treatment must be binary"),
    (lambda: uplift.auuc_score([1.0, np.nan], [0, 1], [0.1, 0.2]), r"outcome has a NaN .*\(first at row 1\)"),
    (lambda: uplift.qini_score(score=[0.1, 0.2], effect=[1.0, 2.0]), "the classic Qini curve needs the treatment"),
    (lambda: uplift.doubly_robust([0.1, np.inf], [1.0, 2.0]), "score must be one finite value per row"),
    (lambda: uplift.doubly_robust([0.1, 0.2], [1.0]), "effect_scores must have one value per row of score"),
])
def test_bad_input_is_refused_naming_the_field(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_weighted_gain_and_qini_curves_are_the_hand_computed_ones():
    # Four rows ranked by score, effect scores 1..4, the first of weight 3: the population is 6
    # units, and treating the first row treats half of it. gain(share) is the weighted sum of
    # psi over the units treated / 6, linear within a row: at the shares 0, 0.5, 4/6, 5/6, 1 it is
    # 0, 3/6, 5/6, 8/6, 12/6, read at the curve's shares 0, 1/4, ..., 1 (the shares count weight,
    # not rows: a mutation review found the weighted areas tested, the curves not).
    result = uplift.doubly_robust([4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0], sample_weight=[3.0, 1.0, 1.0, 1.0],
                                  n_bootstrap=0, points=5)
    curve = result["curve"]
    assert curve["share"] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert curve["gain"] == pytest.approx([0, 0.25, 0.5, 13 / 12, 2], abs=1e-12)
    assert curve["qini"] == pytest.approx([0, -0.25, -0.5, -5 / 12, 0], abs=1e-12)
    assert result["ate"] == pytest.approx(2)


def test_weighted_rows_with_tied_scores_share_their_weighted_mean_effect_score():
    # Tied rows share their mean effect score, weighted as the rows are: the result is that of
    # the table where each tie's rows hold the weighted mean already (a mutation review: an
    # unweighted mean of a tie passed every test).
    rng = np.random.default_rng(8)
    score, psi, weight = np.round(rng.normal(size=300), 1), rng.normal(size=300), rng.integers(1, 4, 300) * 1.0
    runs = np.unique(score, return_inverse=True)[1]
    shared = (np.bincount(runs, weights=weight * psi) / np.bincount(runs, weights=weight))[runs]
    assert np.abs(shared - psi).max() > 0.5
    ours = uplift.doubly_robust(score, psi, sample_weight=weight, n_bootstrap=0)
    truth = uplift.doubly_robust(score, shared, sample_weight=weight, n_bootstrap=0)
    for key in ("auuc", "qini", "ate"):
        assert ours[key] == pytest.approx(truth[key], abs=1e-12)
    assert ours["curve"]["gain"] == pytest.approx(truth["curve"]["gain"], abs=1e-12)


def test_the_qini_p_value_is_one_sided_and_the_difference_of_two_rankings_two_sided():
    # "The ranking beats random": a ranking worse than random has p near 1, not near 0 (a
    # two-sided p-value passed the nominal-rate test above: it also rejects 5% of the time). The
    # difference of two rankings is two-sided: the worse one second is as significant as first.
    rng = np.random.default_rng(1)
    x = rng.normal(size=2000)
    psi = np.maximum(x, 0) + rng.normal(size=2000)
    assert uplift.doubly_robust(-x, psi)["qini_pvalue"] > 0.999
    forward = uplift.compare(psi, {"champion": -x, "challenger": x})["qini_difference"]
    backward = uplift.compare(psi, {"champion": x, "challenger": -x})["qini_difference"]
    assert backward["value"] == pytest.approx(-forward["value"]) and backward["pvalue"] < 1e-6
    assert backward["pvalue"] == pytest.approx(forward["pvalue"])


def test_normalized_classic_curves_keep_their_sign_when_they_end_below_0():
    # CausalML divides by the absolute value of the curve's end: a harmful ranking's curves end
    # at -1, not +1. By hand, effects -1, -2, -3 ranked first to last, rows 1 and 3 treated: the
    # gain is k times the mean effect of the top k, 0, -1, -3, -6; the Qini that mean times the
    # treated count, 0, -1, -1.5, -4 (the recorded values all end above 0: a mutation review).
    score, t, effect = [3.0, 2.0, 1.0], [1.0, 0.0, 1.0], [-1.0, -2.0, -3.0]
    assert uplift.cumulative_gain(score=score, effect=effect, normalize=True) == pytest.approx([0, -1 / 6, -0.5, -1])
    assert uplift.qini_curve(treatment=t, score=score, effect=effect, normalize=True) == pytest.approx(
        [0, -0.25, -0.375, -1])


def test_rows_of_almost_no_weight_hardly_move_the_bootstrap_standard_errors():
    # A resampled row counts its draws times its weight: 1000 rows of weight 1e-9 carrying
    # effect scores of +-1000 leave the Qini's and the AUTOC's standard errors near those of the
    # other 1000 rows alone (bootstrap noise, a few percent here). Their draws counted without
    # the weight made the Qini's 400 times larger (a mutation review).
    from tauforge.components.heterogeneity import autoc

    rng = np.random.default_rng(5)
    x = rng.normal(size=1000)
    psi = np.maximum(x, 0) + rng.normal(size=1000)
    wild = np.r_[psi, 1000 * rng.choice([-1.0, 1.0], 1000)]
    score, weight = np.r_[x, rng.normal(size=1000)], np.r_[np.ones(1000), np.full(1000, 1e-9)]
    alone = uplift.doubly_robust(x, psi)["qini_stderr"], autoc(x, psi)["stderr"]
    light = (uplift.doubly_robust(score, wild, sample_weight=weight)["qini_stderr"],
             autoc(score, wild, sample_weight=weight)["stderr"])
    assert 0.8 < light[0] / alone[0] < 1.25 and 0.8 < light[1] / alone[1] < 1.25, (light, alone)
