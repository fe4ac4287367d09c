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
