"""Monitoring on simulated traffic with known shifts, and the `tauforge monitor` command."""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats import binom, chi2

from tauforge.components.constants import MONITOR_ALPHA, PSI_ALERT
from tauforge.components.events import reference_profile
from tauforge.components.judgement import confidence_sequence
from tauforge.components.monitor import CHECKS, MonitorConfig, monitor, policy_shift_pvalue, psi

COLUMNS = ["x0", "x1", "x2", "x3", "x4"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tau(X):
    return np.maximum(X[:, 0], 0) - 0.2


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def reference(seed, n=2000):
    rng = np.random.default_rng([seed, 1])
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 3, n)  # a categorical covariate
    T = rng.binomial(1, sigmoid(X[:, 0])).astype(float)
    return reference_profile(X, COLUMNS, T, tau, seed)


def test_the_reference_cate_is_out_of_bag_as_served_rows_see_it():
    """The reference's CATE must spread as the server's answers for fresh rows do. In-sample
    predictions hold each row's own outcome and spread 10-16% wider (the planted defect: the
    pipeline's reference until a user review, whose 20,000 quiet live rows then alarmed the
    CATE drift check every time). Out-of-bag ones are averages of half the trees, whose Monte
    Carlo noise leaves them 3-7% wider. A constant effect: all the spread is the estimate's noise."""
    from tauforge.kernels import CausalForest
    from tauforge.kernels.ate import oob_effect

    def draw(n, seed):
        rng = np.random.default_rng([seed, 7])
        X = rng.normal(size=(n, 5))
        e = sigmoid(0.8 * X[:, 0])
        t = rng.binomial(1, e) - e
        return X, t, t + rng.normal(size=n)

    X, t, y = draw(4000, 0)
    forest = CausalForest(n_estimators=1000, random_state=0, progress=False).fit(X, t, y)
    served = forest.predict(draw(50_000, 1)[0]).std()
    oob = reference_profile(X, COLUMNS, t, oob_effect(forest, X))["cate"].std()
    in_sample = reference_profile(X, COLUMNS, t, forest.predict)["cate"].std()
    # Measured here: 1.041 and 1.100 times the served spread; over seeds 0-5 of a scratch loop
    # out-of-bag 1.028-1.075, in-sample 1.097-1.160, always more than twice as far off.
    assert oob / served < 1.08 and in_sample / served - 1 > 2 * (oob / served - 1)


def traffic(seed, n=1000, shift=None, policy=sigmoid):
    """Champion event-log rows; `shift` moves one covariate's mean; `policy(x0)` assigns actions."""
    rng = np.random.default_rng([seed, 2])
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 3, n)
    if shift is not None:
        X[:, shift] += 0.5
    action = rng.binomial(1, policy(X[:, 0])).astype(float)
    return champion_rows(X, action, seed)


def champion_rows(X, action, seed):
    frame = pd.DataFrame(X, columns=[f"input.{c}" for c in COLUMNS])
    return frame.assign(role="champion", request_id=[f"r{seed}-{i}" for i in range(len(X))], row=0, version=1,
                        cate=tau(X), action=action, propensity=np.nan)


def alerts(result):
    return [(a["check"], a["covariate"]) for a in result["alerts"]]


def test_unshifted_traffic_alarms_in_no_more_seeds_than_the_claimed_1_percent_rate_allows():
    # MONITOR_ALPHA (0.01) is the claimed family-wise false-alarm rate of all checks together. A
    # monitor that keeps it alarms in Binomial(150, 0.01) seeds: more than 5 has probability
    # 0.0042 (binom.isf(0.01, 150, 0.01) = 5). A monitor without the Bonferroni split (each of its
    # 10 tests at 0.01), which alarmed in 7.3% of 2,000 seeds and in 29 of the first 300, passes
    # with probability 0.034 (binom.cdf(5, 150, 0.073)); one alarming in 10% of quiet periods with
    # 0.002, in 5% with 0.23, in 3% with 0.70: a small excess is the benchmark's to measure.
    # Measured: 1 alarm here (seed 85, covariate drift on x2); 1 in 300 seeds, 11 in 2,000 (0.55%),
    # from five different checks, each test's p-value uniform (its share under 0.01 and 0.05
    # within noise of the level, the CATE KS under). 150 seeds take 9 s here (0.06 s a monitor
    # call); tests/benchmarks/bench_monitor.py runs the same loop over 2,000 seeds.
    seeds = 150
    alarms = sum(bool(monitor(traffic(s), reference(s), COLUMNS)["alerts"]) for s in range(seeds))
    assert alarms <= binom.isf(0.01, seeds, MONITOR_ALPHA), alarms


def units_seen_repeatedly(rng, n_units, visits, shift=None, size=0.5):
    """Rows of units met `visits` times each: the unit's covariates (x4 its category) plus a little
    noise at each visit, so that a unit's rows are nearly alike; and each row's unit."""
    U = rng.normal(size=(n_units, 5))
    U[:, 4] = rng.integers(0, 3, n_units)
    X = np.repeat(U, visits, axis=0)
    X[:, :4] += 0.3 * rng.normal(size=(len(X), 4))
    if shift is not None:
        X[:, shift] += size
    return X, np.repeat(np.arange(n_units), visits)


def repeated_units(seed, shift=None, grouped=True, size=0.5):
    """A reference of 300 training units of 8 rows (fit with `groups=`), and champion rows of 250
    other units of the same population, each scored 4 times (its unit id logged); `grouped=False`
    drops both, as a model fit without groups and a caller sending no unit ids would. `shift`
    moves that covariate of the live rows by `size`."""
    rng = np.random.default_rng([seed, 11])
    X, units = units_seen_repeatedly(rng, 300, 8)
    T = rng.binomial(1, sigmoid(X[:, 0])).astype(float)
    reference = reference_profile(X, COLUMNS, T, tau, seed, groups=units if grouped else None)
    X, units = units_seen_repeatedly(rng, 250, 4, shift, size)
    live = champion_rows(X, rng.binomial(1, sigmoid(X[:, 0])).astype(float), seed)
    return (live.assign(unit_id=[f"u{u}" for u in units]) if grouped else live), reference


def test_quiet_traffic_of_units_met_again_and_again_alarms_at_the_claimed_rate_counting_units_not_rows():
    # Counting rows, these samples look 8 and 4 times larger than they are: the same loop alarmed
    # in every seed of the first 10 (below) and in 10 of 10 of a scratch probe at 500 units of 10.
    # Counting groups (each test's design effect, estimated from the units' sums), a monitor
    # keeping the claimed 1% alarms in Binomial(60, 0.01) seeds, more than 3 with probability
    # 0.0033 (binom.isf(0.01, 60, 0.01) = 3). One that alarmed in 10% of quiet periods would pass
    # with probability 0.15, in 20% with 0.0015. Measured: 1 of 60 (seed 22, covariate drift).
    seeds = 60
    alarms = sum(bool(monitor(*repeated_units(s), COLUMNS)["alerts"]) for s in range(seeds))
    assert alarms <= binom.isf(0.01, seeds, MONITOR_ALPHA), alarms
    rows_alarms = sum(bool(monitor(*repeated_units(s, grouped=False), COLUMNS)["alerts"]) for s in range(10))
    assert rows_alarms >= 8, rows_alarms


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shift_among_units_met_again_and_again_is_still_flagged_on_that_covariate(seed):
    result = monitor(*repeated_units(seed, shift=2), COLUMNS)
    assert {c for check, c in alerts(result) if check == "covariate_drift"} == {"x2"}
    assert result["live_effective_rows"] == 250 and result["reference_effective_rows"] == 300
    assert result["retrain"]
    from tauforge.components.report import render_monitor_report

    assert ("1000 live rows (as 250 independent, by group), 2400 reference rows (as 300 independent"
            in render_monitor_report(result))


def units_of_unequal_sizes(rng, n_units, noise=0.0):
    """A unit's covariate z and rows (z, plus `noise`), 1 + Poisson(e^{1.5 z}) of them (at most 61):
    the units scored most often differ from the rest, as heavy users do."""
    z = rng.normal(size=n_units)
    units = np.repeat(np.arange(n_units), 1 + np.minimum(rng.poisson(np.exp(1.5 * z)), 60))
    return z, units, z[units] + noise * rng.normal(size=len(units))


def test_drift_tests_keep_their_level_where_a_units_size_goes_with_its_values():
    # 300 seeds of 400 reference and 400 live units, no drift. A test at its level rejects at 1% in
    # Binomial(300, 0.01) seeds: more than 8 with probability under 0.01. Sample sizes from the
    # group sizes alone ((sum n_g)^2 / sum n_g^2, c45b1c9) let the KS test reject in 13 of these
    # seeds, and in 5.5% of a reviewer's 2,000 (passing with probability 0.006). Measured: KS 0,
    # chi-square 1 of 300.
    from tauforge.components.monitor import chi_square_drift, ks_pvalue

    rejected = {"ks": 0, "chi_square": 0}
    for seed in range(300):
        rng = np.random.default_rng([seed, 21])
        z_ref, g_ref, x_ref = units_of_unequal_sizes(rng, 400)
        z_live, g_live, x_live = units_of_unequal_sizes(rng, 400)
        rejected["ks"] += ks_pvalue(x_ref, x_live, g_ref, g_live) < 0.01
        levels = [np.digitize(z, [-0.5, 0.5])[g].astype(float) for z, g in ((z_ref, g_ref), (z_live, g_live))]
        rejected["chi_square"] += chi_square_drift(*levels, g_ref, g_live) < 0.01
    assert max(rejected.values()) <= binom.isf(0.01, 300, 0.01), rejected


def test_the_chi_square_test_keeps_its_level_on_rare_levels_and_sees_a_new_one():
    # 500 quiet windows of 100 rows against 2,000 reference rows of a covariate with ten levels,
    # seven of them under 2%. At its level the test rejects in Binomial(500, level) windows: more
    # than 11 at 1% (or 3 at 0.1%) with probability under 0.01. Read in the chi-square
    # distribution (before), it rejected 3.7% at 1% and 1% at 0.1% in a scratch run of 1,000
    # (at 3.7% it passes the first bound with probability 0.04); pooling the rare levels kept
    # the level but missed a new level on 5% of traffic in 43% of windows. Measured: 4 and 1.
    from tauforge.components.monitor import chi_square_drift

    shares = np.array([0.6, 0.25, 0.1, 0.02, 0.01, 0.005, 0.005, 0.004, 0.003, 0.003])
    shares /= shares.sum()
    rng = np.random.default_rng(2)
    p = np.array([chi_square_drift(rng.choice(10, 2000, p=shares).astype(float),
                                   rng.choice(10, 100, p=shares).astype(float)) for _ in range(500)])
    assert (p < 0.01).sum() <= binom.isf(0.01, 500, 0.01) and (p < 0.001).sum() <= binom.isf(0.01, 500, 0.001)
    with_new = np.append(shares * 0.95, 0.05)
    p = [chi_square_drift(rng.choice(10, 2000, p=shares).astype(float), rng.choice(11, 250, p=with_new).astype(float))
         for _ in range(20)]
    assert max(p) < 0.001
    # Past what 9,999 draws resolve, the distribution's p-value: half the traffic on a 0.3% level
    # could never alert at a level under 1e-4 (a review).
    moved = np.where(rng.random(250) < 0.5, 9, rng.choice(10, 250, p=shares)).astype(float)
    assert chi_square_drift(rng.choice(10, 2000, p=shares).astype(float), moved) < 1e-10


def test_the_domain_classifier_keeps_its_level_where_a_few_heavy_units_hold_most_rows():
    # 600 quiet seeds of 100 reference and 100 live units of 1-61 rows, the heavy ones differing
    # from the rest (a covariate and pure noise). At its level the test rejects at 5% in
    # Binomial(600, 0.05) seeds, more than 43 with probability under 0.01. Read in the normal
    # distribution (before), the same statistic rejected in 51 of these seeds (8.5%; it passes
    # with probability 0.14 at that rate): its variance, summed by unit, is estimated from a
    # handful of heavy units. Measured with Student's t: 32 of 600 (3 at 1%).
    from tauforge.components.monitor import domain_classifier_auc

    rejected = 0
    for seed in range(600):
        rng = np.random.default_rng([seed, 21])
        samples = [units_of_unequal_sizes(rng, 100, noise=0.3) for _ in range(2)]
        (_, g_ref, x_ref), (_, g_live, x_live) = samples
        Z_ref, Z_live = (np.c_[x, rng.normal(size=len(x))] for x in (x_ref, x_live))
        p = domain_classifier_auc(Z_ref, Z_live, seed, reference_groups=g_ref, live_groups=g_live)[1]
        rejected += p < 0.05
    assert rejected <= binom.isf(0.01, 600, 0.05), rejected


def test_the_policy_shift_test_keeps_its_level_where_a_unit_is_treated_once_for_all_its_rows():
    # 1,000 quiet seeds: units of 8 training and 4 live rows whose propensities spread over several
    # deciles, each unit treated (or not) for all its rows. At its level the test rejects at 5% in
    # Binomial(1000, 0.05) seeds, more than 67 with probability under 0.01. A Wald test centred on
    # each sample's own share rejects in 74 of these seeds (7.5-8.7% in scratch designs: it
    # passes with probability 0.15 at 7.5%); c45b1c9's z-scores by effective sizes rejected 1.9%
    # for 1% and 0.5% for 0.1% in a reviewer's probe. Measured: 35 of 1,000.
    rejected = 0
    for seed in range(1000):
        rng = np.random.default_rng([seed, 23])
        z_ref, z_live = rng.normal(size=300), rng.normal(size=250)
        g_ref, g_live = np.repeat(np.arange(300), 8), np.repeat(np.arange(250), 4)
        x_ref, x_live = z_ref[g_ref] + 0.3 * rng.normal(size=2400), z_live[g_live] + 0.3 * rng.normal(size=1000)
        t_ref, a_live = rng.binomial(1, sigmoid(z_ref))[g_ref], rng.binomial(1, sigmoid(z_live))[g_live]
        rejected += policy_shift_pvalue(sigmoid(x_ref), t_ref.astype(float), sigmoid(x_live), a_live.astype(float),
                                        reference_groups=g_ref, live_groups=g_live) < 0.05
    assert rejected <= binom.isf(0.01, 1000, 0.05), rejected


def test_groups_of_one_row_give_the_tests_of_independent_rows():
    from tauforge.components.monitor import chi_square_drift, domain_classifier_auc, ks_pvalue

    rng = np.random.default_rng(4)
    ref, live = rng.normal(size=500), rng.normal(0.1, 1, size=300)
    one_each = (np.arange(500), np.arange(300))
    assert ks_pvalue(ref, live, *one_each) == ks_pvalue(ref, live) == stats.ks_2samp(ref, live).pvalue
    levels = (np.round(ref).clip(-1, 1), np.round(live).clip(-1, 1))
    assert chi_square_drift(*levels, *one_each) == chi_square_drift(*levels)
    e_ref, e_live = sigmoid(ref), sigmoid(live)
    t, a = rng.binomial(1, e_ref).astype(float), rng.binomial(1, e_live).astype(float)
    grouped_p = policy_shift_pvalue(e_ref, t, e_live, a, reference_groups=one_each[0], live_groups=one_each[1])
    assert grouped_p == policy_shift_pvalue(e_ref, t, e_live, a)
    Z_ref, Z_live = rng.normal(size=(500, 3)), rng.normal(size=(300, 3))
    grouped_auc = domain_classifier_auc(Z_ref, Z_live, 0, reference_groups=one_each[0], live_groups=one_each[1])
    assert grouped_auc == domain_classifier_auc(Z_ref, Z_live, 0)


def test_a_reference_of_too_few_groups_is_not_judged_and_live_rows_without_a_unit_count_alone():
    live, reference = repeated_units(0)
    few = reference.assign(group=reference["group"] % 4)  # 4 training groups of 600 rows
    result = monitor(live, few, COLUMNS)
    assert result["note"] == ("the reference's 2400 rows come from groups that weigh as 4 independent rows; at least "
                              "20 are needed to judge drift")
    assert not result["alerts"] and not result["checks"]
    assert monitor(live, reference.assign(group=0), COLUMNS)["reference_effective_rows"] == 1  # one group: no crash
    # 20 groups treated by group: the propensity model's half of them can hold one arm only.
    from tauforge.components.report import render_monitor_report

    by_group = reference.assign(group=reference["group"] % 20)
    by_group["T"] = (by_group["group"] == 0).astype(float)  # one group treated
    judged = [monitor(live, by_group, COLUMNS, seed=s) for s in range(4)]
    one_arm = [r for r in judged if "note" in r["checks"]["propensity"]]
    assert one_arm and all("hold one arm only" in r["checks"]["propensity"]["note"] for r in one_arm)
    assert "hold one arm only: not judged" in render_monitor_report(one_arm[0])
    from tauforge.components.monitor import unit_codes

    mixed = pd.DataFrame({"unit_id": ["a", None, "a", "b", None]})
    codes = unit_codes(mixed)
    assert codes[0] == codes[2] and len(set(codes)) == 4  # "a" twice; each row without an id its own unit


def test_rows_of_too_few_units_are_not_judged_for_drift():
    live, reference = repeated_units(0)
    live["unit_id"] = [f"u{i % 125}" for i in range(len(live))]  # 1,000 rows from 125 units of 8
    result = monitor(live, reference, COLUMNS)
    assert result["note"] == ("1000 live rows from units that weigh as 125 independent rows; at least 200 are "
                              "needed to judge drift")
    assert not result["alerts"] and not result["checks"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shift_in_one_covariate_is_flagged_on_that_covariate(seed):
    result = monitor(traffic(seed, shift=2), reference(seed), COLUMNS)
    flagged = {c for check, c in alerts(result) if check == "covariate_drift"}
    assert flagged == {"x2"}
    assert ("domain_classifier", None) in alerts(result)
    assert not any(check == "propensity_drift" for check, _ in alerts(result))  # x2 does not drive treatment
    assert result["retrain"]


@pytest.mark.parametrize("seed", [0, 1])
def test_a_joint_shift_with_unchanged_marginals_is_flagged_by_the_domain_classifier_alone(seed):
    # x1 becomes 0.6 x0 + 0.8 x1: still N(0, 1), so no per-covariate test can see it; the
    # classifier can. Under no shift the same check alarms in 2 of 300 seeds at its share of the
    # budget or less (bench_monitor.py --power), so a broken classifier passes both seeds with
    # probability under 1e-4.
    live = traffic(seed)
    live["input.x1"] = 0.6 * live["input.x0"] + 0.8 * live["input.x1"]
    result = monitor(live, reference(seed), COLUMNS)
    assert alerts(result) == [("domain_classifier", None)]
    assert result["checks"]["domain_classifier"]["p_value"] < 1e-6  # measured: AUC 0.62, p 3e-15


@pytest.mark.parametrize("seed", [0, 1])
def test_a_shift_in_the_treatment_policy_is_flagged_as_propensity_drift(seed):
    result = monitor(traffic(seed, policy=lambda x0: sigmoid(-x0)), reference(seed), COLUMNS)
    assert ("propensity_drift", None) in alerts(result)
    assert not any(check == "covariate_drift" for check, _ in alerts(result))
    assert result["checks"]["propensity"]["policy_p_value"] < 1e-6
    # The same actions drawn by the server (`serve --explore` logs their propensities) follow the
    # served policy by design: no alarm, which would otherwise call for retraining at every run.
    explored = traffic(seed, policy=lambda x0: sigmoid(-x0))
    explored["propensity"] = 0.9
    result = monitor(explored, reference(seed), COLUMNS)
    assert not any(check == "propensity_drift" for check, _ in alerts(result))
    assert "policy_p_value" not in result["checks"]["propensity"]
    assert "follow the served policy" in result["checks"]["propensity"]["policy_note"]


def test_monitoring_reports_each_check_as_progress_only_when_asked(capsys, monkeypatch):
    from tauforge.kernels import progress

    for limit in ("DELAY", "LINE_INTERVAL", "LINE_SHARE"):  # a line at every step, however quick
        monkeypatch.setattr(progress, limit, 0.0)
    quiet = monitor(traffic(0), reference(0), COLUMNS)
    assert capsys.readouterr().err == ""
    shown = monitor(traffic(0), reference(0), COLUMNS, progress=True)
    assert shown == quiet  # progress changes nothing else
    log = capsys.readouterr().err.splitlines()
    # Every check but the last (whose end is the final line) names itself with the time left.
    assert [line.split(": ")[2].split(", ")[0] for line in log[:-1]] == [c.name for c in CHECKS[:-1]]
    assert all("s left" in line for line in log[:-1]) and log[-1].startswith("tauforge: monitoring: done in ")


def test_a_shift_in_the_confounder_moves_the_propensity_and_the_effect():
    result = monitor(traffic(0, shift=0), reference(0), COLUMNS)
    checks = {check for check, _ in alerts(result)}
    assert {"covariate_drift", "propensity_drift", "cate_drift", "ate_drift"} <= checks


def test_policy_shift_test_rejects_at_its_level_under_the_null_and_catches_a_reversed_policy():
    rng = np.random.default_rng(0)
    draws, rejected = 1000, 0
    for _ in range(draws):
        e_ref, e_live = rng.uniform(0.1, 0.9, 5000), rng.uniform(0.1, 0.9, 3000)
        t_ref, a_live = rng.binomial(1, e_ref).astype(float), rng.binomial(1, e_live).astype(float)
        rejected += policy_shift_pvalue(e_ref, t_ref, e_live, a_live) < 0.05
    # A valid test rejects in at most Binomial(1000, 0.05) draws: more than 67 has probability
    # 0.0074. One rejecting at 10% passes with probability 1.6e-4, at 7.5% with 0.19. Measured: 49.
    assert rejected <= binom.isf(0.01, draws, 0.05), rejected
    assert policy_shift_pvalue(e_ref, t_ref, e_live, rng.binomial(1, 1 - e_live).astype(float)) < 1e-6


def test_the_grouped_policy_shift_test_counts_the_smaller_samples_groups():
    # Hotelling's F takes its covariance's degrees of freedom from the groups of the smaller
    # sample (here 8 live units against 300 training units): with no more groups than deciles it
    # cannot judge and says p = 1, even of a reversed policy. Counting the larger sample's groups
    # (a mutation review, which the level tests above let pass) read F off a covariance that 8
    # units cannot estimate: p = 0.51 here, a number with no meaning.
    rng = np.random.default_rng(0)
    ref_groups, live_groups = np.repeat(np.arange(300), 8), np.repeat(np.arange(8), 50)
    e_ref, e_live = rng.uniform(0.1, 0.9, 2400), rng.uniform(0.1, 0.9, 400)
    t_ref, reversed_ = rng.binomial(1, e_ref).astype(float), rng.binomial(1, 1 - e_live).astype(float)
    assert policy_shift_pvalue(e_ref, t_ref, e_live, reversed_, reference_groups=ref_groups,
                               live_groups=live_groups) == 1.0
    many = np.repeat(np.arange(100), 4)  # 100 live units: judged, and the reversal seen
    assert policy_shift_pvalue(e_ref, t_ref, e_live, reversed_, reference_groups=ref_groups, live_groups=many) < 1e-6


def test_psi_is_small_under_the_null_and_large_under_a_shift():
    rng = np.random.default_rng(0)
    assert psi(rng.normal(size=5000), rng.normal(size=5000)) < 0.05
    assert psi(rng.normal(size=5000), rng.normal(1, 1, 5000)) > 0.25


def test_a_large_psi_alerts_on_its_own_where_no_p_value_could():
    # An audit: every shift in this file is also caught by its KS p-value, so a PSI that never
    # alerted passed them all. At a family-wise alpha of 1e-300 no p-value alerts; a shift of 0.8
    # standard deviations (PSI 0.61 here) must still alert, and not above a PSI threshold of 10.
    events = traffic(0, shift=2)
    events["input.x2"] += 0.3
    quiet_tests = MonitorConfig(alpha=1e-300)
    result = monitor(events, reference(0), COLUMNS, config=quiet_tests)
    drift = result["checks"]["covariate_drift"]["x2"]
    assert drift["psi"] > PSI_ALERT and drift["p_value"] > 1e-300, drift
    assert ("covariate_drift", "x2") in alerts(result)
    lenient = monitor(events, reference(0), COLUMNS, config=MonitorConfig(alpha=1e-300, psi_alert=10))
    assert ("covariate_drift", "x2") not in alerts(lenient)


def logged_traffic(seed, n=6000, epsilon=0.5):
    """Champion treats by a wrong CATE, the challenger by a good one; the logged actions follow
    the champion with epsilon-greedy exploration, so their propensities are known."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    true = tau(X)
    champion = -X[:, 1] + 0.1 * rng.normal(size=n)  # unrelated to the true effect
    challenger = true + 0.1 * rng.normal(size=n)
    recommended = (champion > 0).astype(float)
    explore = rng.random(n) < epsilon
    action = np.where(explore, rng.integers(0, 2, n), recommended).astype(float)
    propensity = np.where(action == recommended, 1 - epsilon / 2, epsilon / 2)
    outcome = X[:, 2] + true * action + rng.normal(size=n)
    ids = [f"r{i}" for i in range(n)]
    inputs = pd.DataFrame(X, columns=[f"input.{c}" for c in COLUMNS])
    live = inputs.assign(role="champion", request_id=ids, row=0, version=1, cate=champion, action=action,
                         propensity=propensity)
    shadow = inputs.assign(role="shadow", request_id=ids, row=0, version=2, cate=challenger, action=np.nan,
                           propensity=np.nan)
    truth = np.mean(true * ((challenger > 0).astype(float) - recommended))
    return pd.concat([live, shadow]), pd.DataFrame({"request_id": ids, "row": 0, "outcome": outcome}), truth, X


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_policy_value_picks_the_better_challenger_and_its_confidence_sequence_covers_the_truth(seed):
    events, outcomes, truth, X = logged_traffic(seed)
    ref = reference_profile(X, COLUMNS, (X[:, 0] > 0).astype(float), tau)
    result = monitor(events, ref, COLUMNS, outcomes=outcomes)
    lo, hi = result["policy"]["confidence_sequence"]
    assert lo <= truth <= hi
    assert result["recommendation"] == "promote"
    assert result["policy"]["value_challenger_dr"] > result["policy"]["value_champion_dr"]
    # Uplift on the same units: the challenger ranks by the true effect, the champion by noise.
    lift = result["policy"]["uplift"]
    assert lift["challenger"]["qini"] > 0.05 and lift["challenger"]["qini_pvalue"] < 1e-3
    assert abs(lift["champion"]["qini"]) < 3 * lift["champion"]["qini_stderr"]
    assert lift["qini_difference"]["value"] > 0 and lift["qini_difference"]["pvalue"] < 1e-3
    assert len(lift["champion"]["curve"]["gain"]) == 101 and lift["champion"]["rows"] == len(X)


def test_a_shadow_is_judged_only_from_enough_units_not_enough_rows():
    # 60 rows with outcomes from 10 units of 6 rows: more rows than MIN_POLICY_ROWS (50) but fewer
    # units than MIN_POLICY_UNITS (20), whose rows share their noise: held, not judged. Counting
    # rows as units (a mutation review) judged them. From 30 units of 2 rows it is judged.
    from tauforge.components.judgement import judge_shadow

    events, outcomes, _, _ = logged_traffic(0, n=60)
    for units, judged in ((10, False), (30, True)):
        ids = np.tile([f"u{i % units}" for i in range(60)], 2)
        logged = events.assign(unit_id=ids)
        live, shadow = logged[logged["role"] == "champion"], logged[logged["role"] == "shadow"]
        result = judge_shadow(live, shadow, outcomes, COLUMNS, MonitorConfig(), 0)
        assert ("confidence_sequence" in result) == judged, result
        if not judged:
            assert result["recommendation"] == "hold" and "60 rows of 10 units" in result["note"], result


def explored_traffic(seed, n=2000, effect=tau):
    """Champion rows whose actions were drawn at random (propensity 0.5) with outcomes whose true
    effect is `effect(X)`, while the served CATE is tau(X)."""
    rng = np.random.default_rng([seed, 17])
    X = rng.normal(size=(n, 5))
    X[:, 4] = rng.integers(0, 3, n)
    action = rng.binomial(1, 0.5, n).astype(float)
    rows = champion_rows(X, action, seed).assign(propensity=0.5)
    outcome = X[:, 2] + effect(X) * action + rng.normal(size=n)
    return rows, pd.DataFrame({"request_id": rows["request_id"], "row": 0, "outcome": outcome})


def test_logged_outcomes_of_explored_rows_catch_an_effect_that_turned_and_pass_one_that_did_not():
    # A review: the effect reversed in the world, outcomes and exploration logged, and no check
    # spoke (effect drift sees the served CATE, a function of the traffic). 20 quiet seeds: the
    # two tests run at the shared Bonferroni level (0.01 / 12 here), so a valid check alarms with
    # probability under 0.0017 a seed, in 2 or more of 20 with probability under 6e-4. A test
    # at 20 times its level (3.3% a seed) passes anyway with probability 0.86: the bound is for
    # gross errors; the slope's bound checks the estimate itself. Measured: none.
    ref = reference(0)
    trained = {"ate": float(ref["cate"].mean()), "ate_stderr": 0.01}  # the reference's CATE is the truth here
    quiet = 0
    for seed in range(20):
        events, outcomes = explored_traffic(seed)
        result = monitor(events, ref, COLUMNS, outcomes=outcomes, training_effect=trained)
        quiet += any(a["check"] in ("effect_calibration", "effect_reversal") for a in result["alerts"])
        assert abs(result["checks"]["effect_calibration"]["slope"] - 1) < 0.5
    assert quiet <= 1, quiet
    events, outcomes = explored_traffic(0, effect=lambda X: -tau(X))
    result = monitor(events, ref, COLUMNS, outcomes=outcomes, training_effect=trained)
    assert {"effect_calibration", "effect_reversal"} <= {a["check"] for a in result["alerts"]}
    assert result["retrain"] and result["checks"]["effect_calibration"]["slope"] < 0
    # A model whose mean CATE missed the effect by 0.1 at training and still does is not alarmed
    # at 20,000 rows (against 0, that gap alone would be); the same gap arising now is.
    events, outcomes = explored_traffic(1, n=20000, effect=lambda X: tau(X) + 0.1)
    same = monitor(events, ref, COLUMNS, outcomes=outcomes, training_effect={**trained, "ate": trained["ate"] + 0.1})
    moved = monitor(events, ref, COLUMNS, outcomes=outcomes, training_effect=trained)
    assert "effect_calibration" not in {a["check"] for a in same["alerts"]}
    assert "effect_calibration" in {a["check"] for a in moved["alerts"]}
    assert "only the ranking is tested" in monitor(events, ref, COLUMNS, outcomes=outcomes)["checks"][
        "effect_calibration"]["note"]
    # Without outcomes, or without exploration, it does not run (and says why).
    assert "effect_calibration" not in monitor(events, ref, COLUMNS)["checks"]
    unexplored = monitor(events.assign(propensity=1.0), ref, COLUMNS, outcomes=outcomes)
    assert "serve with exploration" in unexplored["checks"]["effect_calibration"]["note"]


def test_a_shadow_is_judged_one_version_at_a_time_on_valid_propensities_where_its_disagreements_were_explored(
        tmp_path):
    from tauforge.components.monitor import write_gauges

    events, outcomes, truth, X = logged_traffic(0)
    events = events.assign(time=1000.0)
    ref = reference_profile(X, COLUMNS, (X[:, 0] > 0).astype(float), tau)
    # An earlier shadow, version 3, treating by noise: pooled with version 2 and judged under its
    # label (a review), it made the verdict of neither. The latest is judged, and the note says so.
    older = events[events["role"] == "shadow"].head(3000).assign(version=3, time=1.0, cate=-X[:3000, 1])
    policy = monitor(pd.concat([events, older]), ref, COLUMNS, outcomes=outcomes)["policy"]
    alone = monitor(events, ref, COLUMNS, outcomes=outcomes)["policy"]
    assert policy["challenger_version"] == 2 and "shadows of versions 2, 3; the latest, version 2" in policy["note"]
    assert policy["confidence_sequence"] == alone["confidence_sequence"] and policy["recommendation"] == "promote"
    # A constant shadow CATE ranks nothing: no correlation (it was NaN in the JSON and the gauge).
    constant = monitor(events.assign(cate=np.where(events["role"] == "shadow", 0.3, events["cate"])), ref, COLUMNS)
    shadow = constant["checks"]["shadow"]
    assert shadow["version"] == 2 and shadow["spearman"] is None and "a constant CATE ranks nothing" in shadow["note"]
    write_gauges(constant, "m", 1, str(tmp_path / "m.prom"))
    assert "NaN" not in (tmp_path / "m.prom").read_text() and "shadow_spearman" not in (tmp_path / "m.prom").read_text()
    # Propensities another writer logged as 0 or 1.5 are left out, counted (0 made every value NaN).
    bad = events.copy()
    champion = np.flatnonzero(bad["role"].to_numpy() == "champion")
    bad.iloc[champion[:3], bad.columns.get_loc("propensity")] = [0.0, 1.5, -0.25]
    policy = monitor(bad, ref, COLUMNS, outcomes=outcomes)["policy"]
    assert "3 rows whose logged action is not 0 or 1, or whose propensity is not in (0, 1], left out" in policy["note"]
    assert np.isfinite(policy["confidence_sequence"]).all() and policy["rows"] == len(X) - 3
    # Without exploration the policies' disagreements rest on the outcome model alone: held.
    unexplored, outcomes, _, _ = logged_traffic(0, epsilon=0.0)
    policy = monitor(unexplored, ref, COLUMNS, outcomes=outcomes)["policy"]
    assert policy["recommendation"] == "hold" and "confidence_sequence" not in policy
    assert "where the two versions' policies disagree were served without exploration" in policy["note"]


def canary_traffic(seed, units=3000, visits=2, unit_sd=0.0, share=0.2, challenger_good=True, champion_good=False,
                   per_request=False):
    """A canary's log: each unit comes `visits` times and meets the challenger with probability
    `share` (per unit, as the router splits; `per_request`: per request, as Knative does). The
    caller treats where the answering version's CATE > 0, without exploration; a good version's
    CATE is the true effect with noise, a bad one's unrelated to it. `unit_sd`: a unit's own
    outcome level, shared by its visits. The truth: the mean effect of the challenger's policy
    against the champion's over every logged row."""
    rng = np.random.default_rng([seed, 9])
    unit = np.repeat(np.arange(units), visits)
    X = rng.normal(size=(units, 5))[unit]
    n, true = len(unit), tau(X)
    arm = rng.random(n if per_request else units)[np.arange(n) if per_request else unit] < share
    good, bad = true + 0.1 * rng.normal(size=n), -X[:, 1]
    champion, challenger = (good if champion_good else bad), (good if challenger_good else bad)
    action = (np.where(arm, challenger, champion) > 0).astype(float)
    outcome = X[:, 2] + unit_sd * rng.normal(size=units)[unit] + true * action + rng.normal(size=n)
    ids = [f"r{seed}-{i}" for i in range(n)]
    events = pd.DataFrame(X, columns=[f"input.{c}" for c in COLUMNS]).assign(
        request_id=ids, row=0, unit_id=[f"u{u}" for u in unit], time=np.arange(n, dtype=float),
        role=np.where(arm, "challenger", "champion"), version=np.where(arm, 2, 1),
        cate=np.where(arm, challenger, champion), action=action, propensity=np.nan)
    truth = float(np.mean(true * ((challenger > 0).astype(float) - (champion > 0))))
    return events, pd.DataFrame({"request_id": ids, "row": 0, "outcome": outcome}), truth, X


def test_a_canary_is_judged_by_each_versions_own_traffic_over_the_time_both_answered():
    from tauforge.components.judgement import CANARY_SLACK_S
    from tauforge.components.report import render_monitor_report

    # The caller acts on each answer without exploration: a canary needs none, the split being
    # random. Champion rows logged before the canary began (here with outcomes 3 lower: another
    # period) are no control for it; counted, they would move the difference by about +2.4.
    for seed, good in ((0, "challenger"), (1, "challenger"), (2, "champion")):
        events, outcomes, truth, X = canary_traffic(seed, challenger_good=good == "challenger",
                                                    champion_good=good == "champion")
        before = events[events["role"] == "champion"].head(1000).assign(
            time=lambda f: f["time"] - 1e6, request_id=lambda f: "early-" + f["request_id"])
        outcomes = pd.concat([outcomes, outcomes.head(len(before)).assign(
            request_id=before["request_id"].to_numpy(), outcome=lambda f: f["outcome"] - 3)])
        ref = reference_profile(X[:2000], COLUMNS, (X[:2000, 0] > 0).astype(float), tau)
        result = monitor(pd.concat([before, events]), ref, COLUMNS, outcomes=outcomes, seed=seed)
        policy = result["policy"]
        lo, hi = policy["confidence_sequence"]
        assert policy["judged"] == "canary" and policy["challenger_version"] == 2
        span = events.loc[events["role"] == "challenger", "time"].agg(["min", "max"])
        during = events[(events["role"] == "champion")
                        & events["time"].between(span["min"] - CANARY_SLACK_S, span["max"] + CANARY_SLACK_S)]
        assert policy["rows_champion"] == len(during) > 4500  # the earlier rows left out
        assert lo <= truth <= hi, (seed, truth, lo, hi)
        assert result["recommendation"] == ("promote" if good == "challenger" else "roll back")
        judged = set(during["unit_id"]) | set(events.loc[events["role"] == "challenger", "unit_id"])
        assert policy["units"] == len(judged) and policy["units_in_both_versions"] == 0
        assert policy["note"] == "1000 rows from when only one version answered left out"
    page = render_monitor_report(result)
    assert "<h2>Canary (each version&#x27;s mean outcome on its own traffic)</h2>" in page
    assert f"<td class=num>{policy['rows_challenger']}</td>" in page and "<td>roll back</td>" in page


def test_a_canary_between_equal_versions_is_held_and_its_standard_error_counts_units_not_rows():
    # 40 canaries of 200 units with 10 visits each, both versions the same policy; each unit's
    # visits share an outcome level (sd 2) and its version. The confidence sequence claims at
    # most 5% wrong decisions: more than 6 of 40 has probability 0.0034 at 5% (binom.isf(0.01,
    # 40, 0.05) = 6). Measured: none. That bound is weak (a standard error that takes rows as
    # independent made 5 wrong decisions here, and at that rate passes it with probability 0.77),
    # so the standard error is checked harder: if it is right, the sum of the 40 squared z-scores
    # is chi-square with 40 degrees (over 63.7 with probability 0.01). Measured: 34.6. Rows taken
    # as independent gave 299, cross-fitting with a unit's rows in both folds 335: a standard
    # error that small passes with probability about 3e-8.
    from tauforge.components.judgement import judge_canary

    decisions, z2 = 0, []
    for seed in range(40):
        events, outcomes, truth, _ = canary_traffic(seed, units=200, visits=10, unit_sd=2.0, challenger_good=False)
        assert truth == 0
        result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"],
                              outcomes, COLUMNS, MonitorConfig(), seed)
        decisions += result["recommendation"] != "hold"
        z2.append((result["difference_dr"] / result["difference_dr_stderr"]) ** 2)
    assert decisions <= binom.isf(0.01, 40, 0.05), decisions
    assert sum(z2) <= chi2.ppf(0.99, 40), sum(z2)


def drifting_canary(seed, share, trend=1.0, champion_until=None, n=6000):
    """Two versions of the same policy (the truth: no difference), one visit per unit over a week,
    the outcome drifting by `trend` sd over it; `share(s)`: the challenger's share at the fraction
    s of the week; after `champion_until` (a fraction) every request meets the challenger."""
    rng = np.random.default_rng([seed, 11])
    t = np.sort(rng.uniform(0, 7 * 86400, n))
    X, s = rng.normal(size=(n, 5)), t / t.max()
    arm = (rng.random(n) < share(s)) | (s > (champion_until or 2))
    ids = [f"r{i}" for i in range(n)]
    events = pd.DataFrame(X, columns=[f"input.{c}" for c in COLUMNS]).assign(
        request_id=ids, row=0, unit_id=[f"u{i}" for i in range(n)], time=t, cate=0.0,
        role=np.where(arm, "challenger", "champion"), version=np.where(arm, 2, 1))
    return events, pd.DataFrame({"request_id": ids, "row": 0, "outcome": X[:, 2] + trend * s + rng.normal(size=n)})


def test_a_canary_compares_the_versions_only_while_both_answered_and_at_each_periods_share():
    # Planted: an operator raises the canary from 10% to 50% halfway through a week, or sends all
    # traffic to the challenger after four days, while outcomes drift up by 1 sd. With one share
    # for the week and the challenger's later rows kept, the difference was +0.22 and +0.39 and
    # every one of these fits promoted. Over 5 fits a right judgement's squared z-scores sum to
    # chi-square with 5 degrees (over 15.1 with probability 0.01); measured 5.4 and 3.3 here,
    # and 254 and 996 for that judgement.
    from tauforge.components.judgement import judge_canary

    for scenario in ({"share": lambda s: np.where(s < 0.5, 0.1, 0.5)},
                     {"share": lambda s: np.full(len(s), 0.2), "champion_until": 4 / 7}):
        z2 = []
        for seed in range(5):
            events, outcomes = drifting_canary(seed, **scenario)
            result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"],
                                  outcomes, COLUMNS, MonitorConfig(), seed)
            assert result["recommendation"] == "hold", result
            z2.append((result["difference_dr"] / result["difference_dr_stderr"]) ** 2)
        assert sum(z2) <= chi2.ppf(0.99, 5), (scenario, z2)
    assert result["note"].endswith("rows from when only one version answered left out")
    assert result["rows_challenger"] < (events["role"] == "challenger").sum()


def test_outcomes_per_unit_count_once_per_unit_and_ids_match_whatever_their_type(tmp_path):
    # Planted: the challenger brings its more engaged units back three times; each unit's outcome
    # (one per unit) does not depend on the version. Counted once per visit, the difference was
    # +0.38 here, a promote; once per unit it is the units' own difference.
    from tauforge.components.judgement import judge_canary, read_outcomes

    rng = np.random.default_rng(5)
    units = 3000
    X, arm, engaged = rng.normal(size=(units, 5)), rng.random(units) < 0.5, rng.normal(size=units)
    visits = np.repeat(np.arange(units), np.where(arm & (engaged > 0), 3, 1))
    events = pd.DataFrame(X[visits], columns=[f"input.{c}" for c in COLUMNS]).assign(
        request_id=[f"r{i}" for i in range(len(visits))], row=0, unit_id=[str(100000 + u) for u in visits],
        time=np.arange(len(visits), dtype=float), role=np.where(arm[visits], "challenger", "champion"),
        version=np.where(arm[visits], 2, 1), cate=0.0)
    outcome = X[:, 2] + engaged
    # Numeric unit ids in a CSV, read back as integers, meet the log's strings.
    pd.DataFrame({"unit_id": 100000 + np.arange(units), "outcome": outcome}).to_csv(tmp_path / "o.csv", index=False)
    result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"],
                          read_outcomes(str(tmp_path / "o.csv")), COLUMNS, MonitorConfig(), 0)
    assert result["rows"] == result["units"] == units
    truth = outcome[arm].mean() - outcome[~arm].mean()
    assert abs(result["difference_dr"] - truth) < 3 * result["difference_dr_stderr"], (result, truth)
    assert result["recommendation"] == "hold"


def test_the_experiment_that_answered_last_is_judged():
    from tauforge.components.judgement import judge_canary

    old, old_outcomes, _, _ = canary_traffic(1, units=1000, visits=1, share=0.5)  # last week: v2's canary
    new, new_outcomes, truth, X = canary_traffic(2, units=3000, visits=1, share=0.2)
    new = new.assign(time=new["time"] + 1e6, version=np.where(new["role"] == "challenger", 3, 1))
    outcomes = pd.concat([old_outcomes, new_outcomes])
    events = pd.concat([old, new])
    result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"], outcomes,
                          COLUMNS, MonitorConfig(), 0)
    assert result["challenger_version"] == 3 and result["rows_challenger"] == (new["role"] == "challenger").sum()
    assert "canaries of versions 2, 3; the latest, version 3, is judged" in result["note"]
    lo, hi = result["confidence_sequence"]
    assert lo <= truth <= hi and result["recommendation"] == "promote"
    # A canary of the champion's own version (promoted since) is no canary.
    same = judge_canary(old[old["role"] == "champion"].assign(version=2), old[old["role"] == "challenger"],
                        old_outcomes, COLUMNS, MonitorConfig(), 0)
    assert same["recommendation"] == "hold" and "the champion's own version" in same["note"]
    # Shadow rows from an earlier experiment do not hide the canary running now, nor the reverse.
    ref = reference_profile(X[:2000], COLUMNS, (X[:2000, 0] > 0).astype(float), tau)
    shadow = new[new["role"] == "champion"].head(300).assign(role="shadow", version=2, time=-1.0)
    policy = monitor(pd.concat([new, shadow]), ref, COLUMNS, outcomes=new_outcomes)["policy"]
    assert policy["judged"] == "canary" and "also holds shadow rows" in policy["note"]
    policy = monitor(pd.concat([new, shadow.assign(time=1e7)]), ref, COLUMNS, outcomes=new_outcomes)["policy"]
    assert policy["judged"] == "shadow" and "also holds challenger rows" in policy["note"]


def test_a_canary_with_most_of_the_traffic_is_judged_though_drift_is_not():
    events, outcomes, _, X = canary_traffic(3, units=1500, visits=1, share=0.9)
    ref = reference_profile(X[:1000], COLUMNS, (X[:1000, 0] > 0).astype(float), tau)
    result = monitor(events, ref, COLUMNS, outcomes=outcomes)
    assert result["live_rows"] < 200 and "are needed to judge drift" in result["note"] and not result["alerts"]
    assert result["policy"]["judged"] == "canary" and result["policy"]["rows"] == 1500
    assert result["recommendation"] == result["policy"]["recommendation"]


def test_a_per_request_canary_says_its_units_met_both_versions():
    from tauforge.components.judgement import judge_canary

    events, outcomes, _, _ = canary_traffic(0, units=300, visits=3, per_request=True)
    result = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"],
                          outcomes, COLUMNS, MonitorConfig(), 0)
    both = result["units_in_both_versions"]
    assert 0.3 * 300 < both < 0.6 * 300  # 1 - 0.8^3 - 0.2^3 = 0.48 of the units
    assert 290 < result["units"] <= 300 and f"{both} of {result['units']} units met both versions" in result["note"]
    few = judge_canary(events[events["role"] == "champion"], events[events["role"] == "challenger"].head(10),
                       outcomes, COLUMNS, MonitorConfig(), 0)
    assert few["recommendation"] == "hold" and "challenger 10" in few["note"] and "difference_dr" not in few


def test_uplift_from_logged_outcomes_uses_the_known_propensities_and_needs_exploration():
    from tauforge.components.judgement import effect_scores

    # Logged by a champion with 50% exploration: P(action = 1) is 0.75 where it recommends 1,
    # else 0.25. With a constant outcome model, the AIPW score is the inverse-propensity one.
    frame = pd.DataFrame({"action": [1.0, 0.0, 1.0, 0.0], "propensity": [0.75, 0.25, 0.25, 0.75],
                          "outcome": [3.0, 1.0, 2.0, 4.0]})
    mu = {0: np.zeros(4), 1: np.zeros(4)}
    e = np.array([0.75, 0.75, 0.25, 0.25])  # P(action = 1): the logged action's propensity, or its complement
    expected = np.where(frame["action"] == 1, frame["outcome"] / e, -frame["outcome"] / (1 - e))
    np.testing.assert_allclose(effect_scores(frame, mu), expected)
    assert effect_scores(frame.assign(propensity=1.0), mu) is None  # no exploration: nothing to learn from


def test_confidence_sequence_covers_the_mean_at_every_look_and_is_wider_than_the_fixed_sample_interval():
    # A confidence sequence claims coverage at every sample size at once (that is what lets the
    # monitor look after every batch of outcomes): each path is checked at 25 looks, t = 20..500.
    rng = np.random.default_rng(0)
    paths, covered = 500, 0
    for _ in range(paths):
        x = rng.normal(0.3, 1, 500)
        bounds = [confidence_sequence(x[:t], 0.05, t_opt=500) for t in range(20, 501, 20)]
        covered += all(lo <= 0.3 <= hi for lo, hi in bounds)
        lo, hi = bounds[-1]
        assert hi - lo > 2 * 1.96 * x.std(ddof=1) / np.sqrt(500)
    # Paths covered at every look by a valid 95% sequence: at least Binomial(500, 0.95), under 463
    # with probability 0.0077. Measured: 495 here; over 2,000 other paths this sequence 99.1%, the
    # fixed-sample 95% interval at every look 71% (passes with probability 3e-32), a sequence
    # half as wide 57% (7e-70), three quarters as wide 90% (0.038).
    assert covered >= binom.ppf(0.01, paths, 0.95), covered


def test_confidence_sequence_at_four_values_is_the_normal_mixture_boundary_by_hand():
    # Waudby-Smith et al.'s boundary by hand at t = 4, alpha 0.05, t_opt 100: rho^2 =
    # (2 log 20 + log(2 log 20 + 1)) / 100 = 0.0793615; the sample sd (ddof 1) of 1, 2, 3, 4 is
    # sqrt(5/3) = 1.29099; the half width sd * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) log(sqrt(t rho^2
    # + 1) / alpha)) = 3.29201. With ddof 0 (a mutation review; the coverage test above cannot see
    # it at t >= 20) it is 2.85097.
    lo, hi = confidence_sequence(np.array([1.0, 2.0, 3.0, 4.0]), 0.05, t_opt=100)
    assert (lo, hi) == pytest.approx((2.5 - 3.29201, 2.5 + 3.29201), abs=1e-5)


def test_each_versions_standard_error_counts_units_and_a_sequence_touching_0_holds():
    # By hand: two rows for each of 3 units, whose means are 2, 2 and 6 (cluster_values gives each
    # unit its mean when units are of one size): sd 2.3094 over sqrt(3 units) = 4/3. Over
    # sqrt(6 rows) (a mutation review; the judgement tests above read only the difference's
    # standard error) it is 0.943.
    from tauforge.components.judgement import _decision, _stderrs

    scores = pd.DataFrame({"dr_champion": [1.0, 3.0, 2.0, 2.0, 5.0, 7.0], "dr_challenger": 2.0})
    found = _stderrs(scores, np.array([0, 0, 1, 1, 2, 2]))
    assert found == pytest.approx({"value_champion_dr_stderr": 4 / 3, "value_challenger_dr_stderr": 0.0})
    # Promote or roll back only when the sequence excludes 0; one that reaches it holds.
    assert [_decision(lo, hi) for lo, hi in ((0.0, 0.3), (-0.3, 0.0), (1e-9, 0.3), (-0.3, -1e-9))] == [
        "hold", "hold", "promote", "roll back"]


def published_forest(tmp_path):
    """A small forest published as model "m" version 1 in tmp_path/store, with its reference profile."""
    from tauforge.components.registry import ModelStore
    from tauforge.kernels import CausalForest

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5))
    X[:, 4] = rng.integers(0, 3, 1000)  # as traffic() draws it
    T = rng.binomial(1, sigmoid(X[:, 0])).astype(float)
    forest = CausalForest(n_estimators=20, random_state=0).fit(X, T - sigmoid(X[:, 0]), rng.normal(size=1000))
    src = tmp_path / "v1"
    forest.save(src / "forest")
    reference_profile(X, COLUMNS, T, forest.predict).to_parquet(src / "reference.parquet", index=False)
    ModelStore(str(tmp_path / "store")).publish("m", str(src), {"spec": {"covariates": COLUMNS}})
    return forest


def test_the_monitoring_component_judges_a_canary_under_kfp_local_and_logs_the_difference(tmp_path):
    import warnings

    from kfp import local

    from tauforge.components.monitor import monitor_model
    from tauforge.serving.event_log import EventLog

    published_forest(tmp_path)
    events, outcomes, truth, _ = canary_traffic(0, units=1500)
    log = EventLog(str(tmp_path / "events"))
    log.append(events.assign(model="m", lower=0.0, upper=0.0, recommended_action=None, action=None,
                             latency_ms=1.0).to_dict("records"))
    log.close()
    outcomes.to_parquet(tmp_path / "outcomes.parquet", index=False)
    local.init(local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"), raise_on_error=True)
    with warnings.catch_warnings():  # the component names the project image, which this environment is
        warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
        task = monitor_model(store=str(tmp_path / "store"), model_name="m", version="",
                             log_dir=str(tmp_path / "events"), outcomes=str(tmp_path / "outcomes.parquet"), alpha=0.01)
    metrics = task.outputs["metrics"].metadata
    assert metrics["live_rows"] == (events["role"] == "champion").sum()
    assert metrics["difference_lower"] < truth < metrics["difference_upper"]
    assert metrics["difference_lower"] < metrics["difference"] < metrics["difference_upper"]
    report = open(task.outputs["report"].path).read()
    assert "<h2>Canary (each version&#x27;s mean outcome on its own traffic)</h2>" in report


def test_rows_stamped_ahead_of_the_clock_are_left_out_and_said_and_judged_once_their_time_comes(tmp_path):
    # A monitoring review: 400 shifted rows stamped 30 days ahead (a pod's fast clock) alarmed in
    # every --since window, without a word about their times.
    from tauforge.components.monitor import run_monitor
    from tauforge.serving.event_log import EventLog

    forest = published_forest(tmp_path)
    now = time.time()
    for folder, shifted_at in (("ahead", now + 30 * 86400), ("now", now)):
        log = EventLog(str(tmp_path / folder), rotate_rows=10_000)
        for seed, shift, stamp in ((0, None, now - 60), (1, 3, shifted_at)):
            live = traffic(seed, n=800, shift=shift)
            live["cate"] = forest.predict(live[[f"input.{c}" for c in COLUMNS]].to_numpy())
            log.append(live.assign(model="m", unit_id=None, lower=0.0, upper=0.0, recommended_action=None,
                                   latency_ms=1.0, time=stamp).to_dict("records"))
        log.close()
    ahead = run_monitor(str(tmp_path / "store"), "m", str(tmp_path / "ahead"), since="24h")
    assert ahead["future_rows"]["rows"] == 800 and ahead["live_rows"] == 800
    assert ahead["future_rows"]["latest"][:10] == time.strftime("%Y-%m-%d", time.gmtime(now + 30 * 86400))
    assert "covariate_drift" not in {a["check"] for a in ahead["alerts"]}
    # The same rows stamped now are judged, and their shift caught.
    judged = run_monitor(str(tmp_path / "store"), "m", str(tmp_path / "now"), since="24h")
    assert "future_rows" not in judged and judged["live_rows"] == 1600
    assert "x3" in {a["covariate"] for a in judged["alerts"] if a["check"] == "covariate_drift"}


def test_monitor_command_reads_the_event_log_and_the_store(tmp_path):
    from tauforge.serving.event_log import EventLog

    forest = published_forest(tmp_path)
    log = EventLog(str(tmp_path / "events"), rotate_rows=300)
    live = traffic(0, n=800, shift=3)
    live["cate"] = forest.predict(live[[f"input.{c}" for c in COLUMNS]].to_numpy())
    log.append(live.assign(model="m", unit_id=None, lower=0.0, upper=0.0, recommended_action=None,
                           latency_ms=1.0, time=0.0).to_dict("records"))
    log.close()
    out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "monitor", "--store", str(tmp_path / "store"),
                          "--model", "m", "--log-dir", str(tmp_path / "events"), "--json",
                          "--report", str(tmp_path / "report.html"), "--metrics-file", str(tmp_path / "m.prom")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["recommendation"] == "hold" and result["version"] == 1 and result["live_rows"] == 800
    assert {a["covariate"] for a in result["alerts"] if a["check"] == "covariate_drift"} == {"x3"}
    gauges = (tmp_path / "m.prom").read_text()
    assert "tauforge_monitor_retrain_needed" in gauges
    assert 'tauforge_monitor_drift_judged{model="m",version="1"} 1.0' in gauges
    # When the run wrote them (a walkthrough: a failed run leaves the file, whose gauges then
    # looked current): within the minutes this test took.
    (stamp,) = re.findall(r'tauforge_monitor_last_run_timestamp_seconds\{model="m",version="1"\} (\S+)', gauges)
    assert 0 <= time.time() - float(stamp) < 300
    report = (tmp_path / "report.html").read_text()
    assert "covariate_drift" in report and "<h1>tauforge monitor: m version 1</h1>" in report
    charts = report.count('<svg xmlns="http://www.w3.org/2000/svg" class="chart"')
    assert charts == 5 + 2  # one per covariate, the propensity's, the CATE's
    assert "x3: KS p = " in report and "(alert)" in report  # the shifted covariate's plot says so
    # A log with too few live rows to judge: the text says so, not just "no alerts".
    few = EventLog(str(tmp_path / "quiet"))
    few.append(live.head(50).assign(model="m", unit_id=None, lower=0.0, upper=0.0, recommended_action=None,
                                    latency_ms=1.0, time=0.0).to_dict("records"))
    few.close()
    out = subprocess.run([sys.executable, "-m", "tauforge.pipelines.cli", "monitor", "--store", str(tmp_path / "store"),
                          "--model", "m", "--log-dir", str(tmp_path / "quiet")],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["tauforge monitor: m version 1, 50 live rows",
                                           "  50 live rows; at least 200 are needed to judge drift"], out.stdout
    # A window keeps the rows logged since then (all 800 above were logged at time 0, in 1970):
    # without one, every period's rows pile up and drift once logged alarms for ever.
    from tauforge.components.monitor import run_monitor, window_start, write_gauges

    args = (str(tmp_path / "store"), "m", str(tmp_path / "events"))
    recent = run_monitor(*args, since="24h")
    assert recent["live_rows"] == 0 and not recent["alerts"] and "at least 200 are needed" in recent["note"]
    write_gauges(recent, "m", 1, str(tmp_path / "recent.prom"))  # not judged is not quiet
    assert 'tauforge_monitor_drift_judged{model="m",version="1"} 0.0' in (tmp_path / "recent.prom").read_text()
    write_gauges({**recent, "unreadable_files": ["a: torn", "b: torn"]}, "m", 1, str(tmp_path / "skipped.prom"))
    assert 'tauforge_monitor_unreadable_files{model="m",version="1"} 2.0' in (tmp_path / "skipped.prom").read_text()
    old = run_monitor(*args, since="1970-01-01")
    assert old["live_rows"] == 800 and old["since"] == "1970-01-01T00:00:00+00:00" and old["alerts"]
    (tmp_path / "nothing").mkdir()  # no file at all, where an object store's mistyped prefix reads empty too
    nothing = run_monitor(str(tmp_path / "store"), "m", str(tmp_path / "nothing"), since="2026-12-01")
    assert nothing["live_rows"] == 0 and nothing["note"] == (
        f"no event-log file of m under {tmp_path / 'nothing'} written since 2026-12-01: check --log-dir "
        "(a mistyped object-store prefix reads as an empty log)")
    # The report says so too (a review: it read "no retraining needed", the window and the
    # skipped files only in its collapsed JSON).
    from tauforge.components.report import render_monitor_report

    page = render_monitor_report({**recent, "unreadable_files": ["a: torn"], "other_champion_versions": {"2": 7}})
    assert "drift not judged (see below)" in page and "no retraining needed" not in page
    assert f"rows logged since {recent['since']}" in page and "a: torn" in page
    assert "version 2 (7 champion rows)" in page
    judged = render_monitor_report(old)
    assert "drift not judged" not in judged and "retrain</strong>: drift calls for it" in judged
    assert "the whole log" in render_monitor_report(run_monitor(*args))
    assert window_start("90m", 10_000.0) == 4_600.0
    assert window_start("2026-12-01T01:00:00+01:00", 0) == window_start("2026-12-01", 0) == 1_796_083_200
    for nonsense, message in (("0h", "a duration must be more than 0"), ("-1h", "a duration must be more than 0"),
                              ("1e12d", "reach back no further than 1970"), ("  ", "neither a duration"),
                              ("0001-01-01", "is before 1970")):  # an ops review: each failed after judging
        with pytest.raises(ValueError, match=message):
            window_start(nonsense, 1_796_083_200)
    with pytest.raises(ValueError, match="--since 'soon' is neither a duration"):
        run_monitor(*args, since="soon")
    # Asked for a version the log did not serve, the result names the versions it did (a review:
    # "0 live rows" alone, beside 50 rows of version 2).
    other = EventLog(str(tmp_path / "other"))
    other.append(live.head(50).assign(model="m", version=2, unit_id=None, lower=0.0, upper=0.0,
                                      recommended_action=None, latency_ms=1.0, time=0.0).to_dict("records"))
    other.close()
    elsewhere = run_monitor(str(tmp_path / "store"), "m", str(tmp_path / "other"), version=1)
    assert elsewhere["live_rows"] == 0 and elsewhere["other_champion_versions"] == {2: 50}
    # A card published through the Python API may hold null for a part (a review of models list):
    # the training block reads it as absent, where `card.get("run", {})` failed on None.
    from tauforge.components.registry import ModelStore

    store = ModelStore(str(tmp_path / "store"))
    store.publish("m", str(tmp_path / "v1"), {"spec": {"covariates": COLUMNS, "treatment": "T"}, "run": None,
                                              "data": "unknown", "effect": None})
    bare = run_monitor(str(tmp_path / "store"), "m", str(tmp_path / "other"), version=2)
    assert bare["version"] == 2 and bare["training"] == {"run_id": None, "data_fingerprint": None,
                                                         "treatment": "T", "outcome": None}


def test_traffic_past_the_training_range_is_flagged_by_the_support_check_and_quiet_traffic_is_not():
    # A user's review: x0 shifted by 2.5 sd put 11.6% of live rows past the training data, where
    # the models hold their edge values; the overlap check (the estimated propensity, which does
    # not extrapolate either) reported 0.0%. On quiet traffic the check's p-values stay near 1
    # (its null bound holds for any reference sample but one in 10,000): see the 150-seed test.
    live = traffic(0)
    live["input.x3"] += 2.5
    result = monitor(live, reference(0), COLUMNS)
    (alert,) = [a for a in result["alerts"] if a["check"] == "support"]
    assert alert["message"].startswith("19.2% of live rows lie outside the training data's range (x3 19.1%, x2 0.1%)")
    assert "would put at most 3.4% there" in alert["message"]
    # A one-sd shift puts 0.6% there, within what the training distribution itself would: the
    # covariate drift check's to see, not this one's.
    live["input.x3"] -= 1.5
    assert not [a for a in monitor(live, reference(0), COLUMNS)["alerts"] if a["check"] == "support"]
    assert monitor(traffic(1), reference(1), COLUMNS)["checks"]["support"]["p_value"] > 0.5


def test_a_log_without_the_models_columns_or_with_missing_values_is_named_not_judged():
    # A user's review: a renamed column crashed with KeyError 'input.x3', NaN with "autodetected
    # range of [nan, nan] is not finite"; tauforge serve refuses both, other writers may not.
    with pytest.raises(ValueError, match="the event log has no column 'input.x3', which the model's covariates"):
        monitor(traffic(0).rename(columns={"input.x3": "input.x3_v2"}), reference(0), COLUMNS)
    live = traffic(0)
    live.loc[:9, "input.x1"] = np.nan
    with pytest.raises(ValueError, match="'input.x1' holds missing or non-finite values in 10 of 1000 champion rows"):
        monitor(live, reference(0), COLUMNS)


def test_a_log_file_without_a_covariate_column_is_named_where_other_files_hold_it(tmp_path):
    # A walkthrough: one file of the log had no input.x3, another had it; the concatenation read
    # the first's rows as missing values, "logged by another writer".
    from tauforge.components.events import read_events

    live = traffic(0)
    live.iloc[:500].drop(columns="input.x3").to_parquet(tmp_path / "events-a.parquet", index=False)
    live.iloc[500:].to_parquet(tmp_path / "events-b.parquet", index=False)
    events = read_events(str(tmp_path))
    assert events.attrs["files_without"] == {"input.x3": [str(tmp_path / "events-a.parquet")]}
    with pytest.raises(ValueError, match=r"1 of the event log's files have no column 'input.x3', .* e\.g\. .*events-a"):
        monitor(events, reference(0), COLUMNS)
    # Both files whole: nothing lacking, and the log is judged.
    live.iloc[:500].to_parquet(tmp_path / "events-a.parquet", index=False)
    events = read_events(str(tmp_path))
    assert events.attrs["files_without"] == {} and monitor(events, reference(0), COLUMNS)["live_rows"] == 1000


def test_outcomes_are_read_from_parquet_or_csv_and_a_bad_file_is_named(tmp_path):
    from tauforge.components.judgement import read_outcomes

    frame = pd.DataFrame({"request_id": ["r0", "r0", "r1"], "row": [0, 1, 0], "outcome": [1.5, -0.5, 2.0]})
    frame.to_parquet(tmp_path / "o.parquet", index=False)
    frame.to_csv(tmp_path / "o.csv", index=False)
    for name in ("o.parquet", "o.csv"):
        pd.testing.assert_frame_equal(read_outcomes(str(tmp_path / name)), frame, check_dtype=False)
    # A CSV's ids as written: 007 stays "007" (the log's), not 7.
    pd.DataFrame({"unit_id": ["007", "010"], "outcome": [1.0, 2.0]}).to_csv(tmp_path / "ids.csv", index=False)
    assert read_outcomes(str(tmp_path / "ids.csv"))["unit_id"].tolist() == ["007", "010"]
    # And NA is a unit the server logged as given (Namibia), not a missing id (the diff review:
    # its outcomes were dropped once training tables read an unquoted NA as missing).
    (tmp_path / "na.csv").write_text("unit_id,outcome\nNA,1.5\nUS,2.0\n")
    assert read_outcomes(str(tmp_path / "na.csv"))["unit_id"].tolist() == ["NA", "US"]
    with pytest.raises(ValueError, match="outcomes: data source .*missing.parquet' does not exist"):
        read_outcomes(str(tmp_path / "missing.parquet"))
    frame.assign(row=[0, None, 0]).to_csv(tmp_path / "no-row.csv", index=False)  # that one is left out, as before
    assert read_outcomes(str(tmp_path / "no-row.csv"))["row"].isna().tolist() == [False, True, False]
    frame.drop(columns="outcome").to_csv(tmp_path / "no-outcome.csv", index=False)
    with pytest.raises(ValueError, match="needs an 'outcome' column and request_id and row"):
        read_outcomes(str(tmp_path / "no-outcome.csv"))
    for bad, message in ((frame.assign(row=0), r"2 rows share a request_id and row with another \(the first: r0, 0\); "
                                               "give one outcome per scored row"),
                         (frame.assign(outcome=["a", "b", "c"]), "'outcome' must hold numbers, got object values"),
                         (frame.assign(outcome=[1.0, np.inf, 0.0]), "'outcome' holds infinite values in 1 rows"),
                         # 1.5 was read as 1: one row counted twice, another dropped (an ops review).
                         (frame.assign(row=[0, 1.5, 0]), r"'row' must hold whole numbers from 0 .*, got 1.5 in 1 row"),
                         (frame.assign(row=["0", "one", "0"]), "'row' must hold whole numbers from 0 .*, got 'one'")):
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(ValueError, match=f"outcomes .*bad.csv: {message}"):
            read_outcomes(str(tmp_path / "bad.csv"))


def test_outcomes_not_known_yet_are_left_out_of_the_judgement():
    events, outcomes, _, X = canary_traffic(0, units=1000)
    ref = reference_profile(X[:2000], COLUMNS, (X[:2000, 0] > 0).astype(float), tau)
    unknown = outcomes.assign(outcome=outcomes["outcome"].where(np.arange(len(outcomes)) % 4 != 0))  # NaN: not yet
    policy = monitor(events, ref, COLUMNS, outcomes=unknown)["policy"]
    known = monitor(events, ref, COLUMNS, outcomes=unknown.dropna())["policy"]
    assert policy["rows"] == known["rows"] == unknown["outcome"].notna().sum()
    assert policy["difference_dr"] == known["difference_dr"] and np.isfinite(policy["difference_dr"])


def test_outcomes_that_meet_no_logged_row_say_why():
    # A walkthrough: outcomes of another log, or a log without request ids, read only as "too few
    # rows with an outcome ... 0 rows of 0 units".
    events, outcomes, _, X = canary_traffic(0, units=1000)
    ref = reference_profile(X[:2000], COLUMNS, (X[:2000, 0] > 0).astype(float), tau)
    elsewhere = outcomes.assign(request_id="other-" + outcomes["request_id"].astype(str))
    note = monitor(events, ref, COLUMNS, outcomes=elsewhere)["policy"]["note"]
    assert f"none of the {len(outcomes)} outcomes matched the (request_id, row) of the" in note, note
    note = monitor(events.assign(request_id=None), ref, COLUMNS, outcomes=outcomes)["policy"]["note"]
    assert "the event log's rows hold no request_id, which the outcomes are joined on" in note, note
    # Matched, no such note.
    assert "matched" not in monitor(events, ref, COLUMNS, outcomes=outcomes)["policy"].get("note", "")


def test_reading_the_log_skips_and_names_unreadable_files_and_with_since_leaves_old_days_unread(tmp_path):
    # An ops review: one truncated file (a node crash before the writer synced) stopped the
    # monitor with "Parquet magic bytes not found", and --since read the whole history.
    import time

    from tauforge.components.events import event_record, read_events
    from tauforge.serving.event_log import EventLog

    now = time.time()
    log = EventLog(str(tmp_path))
    log.append([event_record(time=now - 60 * i, request_id=f"r{i}", row=0, unit_id=None, model="m", version=1,
                             role="champion", cate=0.0, lower=0.0, upper=0.0, latency_ms=1.0, inputs={"x0": 0.0})
                for i in range(10)])
    log.close()
    (written,) = log.files_written
    today = os.path.dirname(written)
    with open(os.path.join(today, "events-truncated.parquet"), "wb") as f:
        f.write(b"PAR1\x00")
    old_day = os.path.join(os.path.dirname(today), "date=2020-01-01")
    os.makedirs(old_day)
    with open(os.path.join(old_day, "events-old.parquet"), "wb") as f:
        f.write(b"")
    # Pages that do not read behind a footer that does (a review: the whole read failed), and a
    # file whose column holds text where the others hold numbers (a traceback).
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = bytearray(open(written, "rb").read())
    data[4:len(data) // 2] = b"\xff" * (len(data) // 2 - 4)
    with open(os.path.join(today, "events-bad-pages.parquet"), "wb") as f:
        f.write(bytes(data))
    typed = pq.read_table(written).to_pandas().head(3)
    pq.write_table(pa.Table.from_pandas(typed.assign(**{"input.x0": "zero"}), preserve_index=False),
                   os.path.join(today, "events-text.parquet"))
    frame = read_events(str(tmp_path), model="m")
    assert len(frame) == 10
    assert sorted(os.path.basename(u.split(": ")[0]) for u in frame.attrs["unreadable_files"]) == [
        "events-bad-pages.parquet", "events-old.parquet", "events-text.parquet", "events-truncated.parquet"]
    recent = read_events(str(tmp_path), model="m", since=now - 60 * 4.5)
    assert sorted(recent.request_id) == ["r0", "r1", "r2", "r3", "r4"]
    # The 2020 folder is not opened: only today's truncated file is reported.
    skipped = [os.path.basename(u.split(": ")[0]) for u in recent.attrs["unreadable_files"]]
    assert sorted(skipped) == ["events-bad-pages.parquet", "events-text.parquet", "events-truncated.parquet"]
    assert len(read_events(str(tmp_path), model="m", since=-1e13)) == 10  # before year 1: no folder is left out
    # Logs written before the server capped ids hold longer ones: the readers' joins take them.
    from tauforge.components.events import id_string

    assert id_string("u" * 300) == "u" * 300


def test_the_log_reads_as_one_table_in_hive_aware_readers_and_older_files_read_as_before(tmp_path):
    # A serving review: the files repeated the folders' model, version and role with other types,
    # and pandas and pyarrow.dataset failed to merge them ("string vs dictionary", "int64 vs int32").
    import pyarrow as pa
    import pyarrow.dataset
    import pyarrow.parquet as pq

    from tauforge.components.events import EVENT_SCHEMA, event_record, read_events, write_events

    records = [event_record(time=float(i), request_id=f"r{i}", row=0, unit_id=None, model="m", version=v,
                            role=role, cate=float(i), lower=0.0, upper=1.0, latency_ms=1.0, inputs={"x0": 0.5})
               for i, (v, role) in enumerate([(1, "champion"), (2, "shadow"), (2, "shadow"), (1, "champion")])]
    write_events(records, str(tmp_path), seq=1)
    by_pandas = pd.read_parquet(tmp_path).sort_values("time")
    assert list(by_pandas.request_id) == ["r0", "r1", "r2", "r3"]
    assert [str(v) for v in by_pandas.version] == ["1", "2", "2", "1"]
    assert list(by_pandas.model.astype(str)) == ["m"] * 4
    by_arrow = pyarrow.dataset.dataset(tmp_path, partitioning="hive").to_table().to_pandas().sort_values("time")
    assert list(by_arrow.role) == ["champion", "shadow", "shadow", "champion"]
    # tauforge's reader puts the partition's fields back, typed as the log's schema, in its order.
    ours = read_events(str(tmp_path))
    assert list(ours.columns[:7]) == ["time", "request_id", "row", "unit_id", "model", "version", "role"]
    assert list(ours.version) == [1, 2, 2, 1] and ours.version.dtype == np.int64 and set(ours.model) == {"m"}
    # A file written before (the fields inside it) reads as before.
    (old,) = [p for p in tmp_path.rglob("*.parquet") if "version=1" in str(p)]
    table = pq.read_table(old)
    for name in ("model", "version", "role"):
        value = {"model": "m", "version": 1, "role": "champion"}[name]
        table = table.append_column(pa.field(name, EVENT_SCHEMA.field(name).type),
                                    pa.array([value] * table.num_rows, EVENT_SCHEMA.field(name).type))
    pq.write_table(table, old)
    again = read_events(str(tmp_path))
    assert again.equals(ours) and again.attrs["unreadable_files"] == []


def test_the_log_reads_in_time_order_since_counts_its_own_second_and_allows_a_day_of_clock_skew(tmp_path):
    # A mutation test of the reader: unsorted frames (files in name order, rows as written), a
    # `since` that left out records logged at it, and no day's margin for a pod whose clock runs
    # behind (its file filed under the day before) passed every test.
    import datetime

    from tauforge.components.events import event_record, id_string, read_events, write_events

    def records(times):
        return [event_record(time=t, request_id=f"r{t:g}", row=0, unit_id=None, model="m", version=1,
                             role="champion", cate=0.0, lower=0.0, upper=0.0, latency_ms=1.0, inputs={"x0": 0.0})
                for t in times]

    write_events(records([3.0, 1.0, 2.0]), str(tmp_path / "order"), seq=1)
    write_events(records([0.0]), str(tmp_path / "order"), seq=2)
    assert list(read_events(str(tmp_path / "order")).request_id) == ["r0", "r1", "r2", "r3"]
    assert list(read_events(str(tmp_path / "order"), since=2.0).request_id) == ["r2", "r3"]
    since = datetime.datetime(2026, 3, 10, 0, 30, tzinfo=datetime.UTC).timestamp()
    behind = datetime.datetime(2026, 3, 9, 23, 59, tzinfo=datetime.UTC)  # the writer's clock, 31 minutes behind
    write_events(records([since + 60]), str(tmp_path / "skew"), seq=1, stamp=behind)
    assert len(read_events(str(tmp_path / "skew"), since=since)) == 1
    # A unit id True is no unit 1 (bool is an int in Python); NaN, a missing id in a numeric column, is None.
    with pytest.raises(ValueError, match="must be a string or an integer"):
        id_string(True)
    assert id_string(float("nan")) is None and id_string(np.float32(7.0)) == id_string(np.int64(7)) == "7"


def check_inputs(live, reference, covariates=(), shadow=None):
    """What a check reads, rows independent (a group each), for calling one check alone."""
    from tauforge.components.monitor import MonitorConfig, MonitorInputs

    return MonitorInputs(live, live.iloc[:0] if shadow is None else shadow, reference, list(covariates),
                         MonitorConfig(), 0, np.arange(len(reference)), np.arange(len(live)))


def test_the_ate_drift_p_value_is_two_sided_on_each_means_standard_error():
    # Exact: the served CATE's mean moved by 1.96 standard errors (each mean's, ddof 1, added in
    # quadrature), up or down, is p = 0.05. The shift tests above pass with p halved (one-sided,
    # doubling the check's false alarms) or the move's sign ignored; a mutation review.
    from tauforge.components.monitor import EffectDrift

    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"cate": rng.normal(size=400)})
    for sign in (1, -1):
        live = rng.normal(size=300)
        se = np.hypot(ref["cate"].std(ddof=1) / np.sqrt(400), live.std(ddof=1) / np.sqrt(300))
        live += ref["cate"].mean() - live.mean() + sign * 1.96 * se
        found = EffectDrift().run(check_inputs(pd.DataFrame({"cate": live}), ref))
        assert found.summary["ate_p_value"] == pytest.approx(0.05, abs=1e-4), sign


def test_the_domain_classifiers_p_value_is_one_sided_on_the_held_out_auc():
    # Exact: held out, 500 rows of each sample; the p-value of AUC > 0.5 is the normal tail of
    # (AUC - 0.5) over the Mann-Whitney null standard error, one-sided, so an AUC under 0.5 (the
    # classifier no better than chance) never alarms. A two-sided p doubles it (a mutation review:
    # the shift and level tests above passed with it), and one of an AUC under 0.5 turns small.
    from tauforge.components.monitor import domain_classifier_auc

    rng = np.random.default_rng(0)
    se0 = np.sqrt((500 + 500 + 1) / (12 * 500 * 500))
    aucs = []
    for seed in range(6):
        auc, p = domain_classifier_auc(rng.normal(size=(1000, 3)), rng.normal(size=(1000, 3)), seed)
        assert p == pytest.approx(stats.norm.sf((auc - 0.5) / se0), rel=1e-9), (seed, auc, p)
        aucs.append(auc)
    assert min(aucs) < 0.5 < max(aucs), aucs  # both sides seen (measured: 4 under, 2 over)


def test_the_overlap_alert_is_on_the_rise_of_the_share_outside_not_on_the_share():
    # A steep training policy puts about 45% of rows outside the overlap bounds; quiet traffic from
    # the same population keeps that share and must not alert (a mutation review: the alert on the
    # live share alone passed every test). Live rows moved by 1.5 in x0 put about 78% there.
    from tauforge.components.monitor import PropensityDrift

    def steep(x):
        return sigmoid(4 * x)

    rng = np.random.default_rng([0, 1])
    X = rng.normal(size=(2000, 5))
    X[:, 4] = rng.integers(0, 3, 2000)
    ref = reference_profile(X, COLUMNS, rng.binomial(1, steep(X[:, 0])).astype(float), tau, 0)
    quiet = monitor(traffic(0, policy=steep), ref, COLUMNS, checks=(PropensityDrift(),))
    summary = quiet["checks"]["propensity"]
    assert summary["share_outside_reference"] > 0.3 and summary["share_outside_live"] > 0.3, summary
    assert "overlap" not in [check for check, _ in alerts(quiet)], quiet["alerts"]
    moved = traffic(1, policy=steep)
    moved["input.x0"] += 1.5
    assert "overlap" in [check for check, _ in alerts(monitor(moved, ref, COLUMNS, checks=(PropensityDrift(),)))]


def test_the_support_tests_p_value_is_that_of_at_least_the_rows_outside():
    # Exact: 2 of 500 live rows past the range of 1,000 reference rows on one of 2 covariates;
    # under the null bound q0 the count is Binomial(500, q0), and the p-value is P(count >= 2).
    # P(count > 2) (a mutation review) passed the support tests above.
    from tauforge.components.monitor import Support

    rng = np.random.default_rng(0)
    names = ["input.a", "input.b"]
    ref = pd.DataFrame(rng.uniform(size=(1000, 2)), columns=names)
    live = pd.DataFrame(rng.uniform(0.01, 0.99, size=(500, 2)), columns=names)
    live.iloc[:2, 0] = 2.0
    q0 = 2 * stats.beta.isf(1e-4 / 2, 2, 999)
    found = Support().run(check_inputs(live, ref, ["a", "b"]))
    assert found.summary["null_bound"] == pytest.approx(q0)
    assert found.summary["p_value"] == pytest.approx(1 - (1 - q0) ** 500 - 500 * q0 * (1 - q0) ** 499, rel=1e-9)


def test_shadow_rows_pair_on_request_row_and_inputs_where_callers_reuse_request_ids():
    # A serving review: three requests under one x-request-id (a client's retries, an upstream id
    # passed on) paired each champion row with all three shadow rows: 18 pairs from 6. The inputs
    # are in the key now; a shadow answer logged twice for one row counts once.
    from tauforge.components.events import with_shadow
    from tauforge.components.monitor import ShadowAgreement

    events, _, _, _ = logged_traffic(0, n=300)
    live, shadow = events[events["role"] == "champion"], events[events["role"] == "shadow"]
    unique = ShadowAgreement().run(check_inputs(live, live, shadow=shadow)).summary
    reused = [f"retry-{i // 3}" for i in range(300)]
    live, shadow = live.assign(request_id=reused), shadow.assign(request_id=reused)
    shadow = pd.concat([shadow, shadow.head(10)])  # logged twice
    pairs = with_shadow(live, shadow, ["cate"])
    assert len(pairs) == 300
    np.testing.assert_array_equal(pairs["cate_shadow"], shadow["cate"].head(300))
    assert ShadowAgreement().run(check_inputs(live, live, shadow=shadow)).summary == unique
    # A challenger with a covariate of its own: read from one log, the champion's rows hold NaN
    # there, which decides nothing (the diff review: no pair was left).
    extra = shadow.assign(**{"input.x_new": 1.0})
    assert len(with_shadow(live.assign(**{"input.x_new": np.nan}), extra, ["cate"])) == 300


def test_shadow_agreement_compares_both_top_deciles_and_the_signs():
    # Known answers: a shadow whose CATE is an increasing function of the champion's ranks alike
    # (rank correlation 1, top decile the same rows); a reversed one shares no top-decile row. The
    # signs differ on the rows whose champion CATE lies in (-0.5, 0], 50 of 200.
    from tauforge.components.monitor import ShadowAgreement

    a = np.linspace(-1, 1, 200)
    live = pd.DataFrame({"request_id": [f"r{i}" for i in range(200)], "row": 0, "cate": a})
    for b, rho, overlap in ((2 * a + 1, 1.0, 1.0), (-a, -1.0, 0.0)):
        shadow = live.assign(cate=b, version=2)
        found = ShadowAgreement().run(check_inputs(live, live, shadow=shadow)).summary
        assert found["spearman"] == pytest.approx(rho) and found["top_decile_overlap"] == overlap, found
    shifted = ShadowAgreement().run(check_inputs(live, live, shadow=live.assign(cate=a + 0.5, version=2))).summary
    assert shifted["action_disagreement"] == np.mean((a > -0.5) & (a <= 0)) == 0.25


def test_reading_the_log_drops_unused_columns_file_by_file_and_reports_each_file(tmp_path):
    # A production-scale review: a week's log (8.9 million records, 6,048 files) went past 8 GB
    # while being read, with no progress line in minutes: every column was kept, a pandas sort
    # and filter each copied the frame, and the read was one silent step.
    from tauforge.components.events import event_record, read_events, write_events

    for seq in range(1, 4):
        write_events([event_record(time=float(10 * seq + i), request_id=f"r{seq}-{i}", row=0, unit_id=None,
                                   model="m", version=1, role="champion", cate=0.1, lower=0.0, upper=0.2,
                                   latency_ms=1.0, inputs={"x0": float(i)}) for i in range(3)],
                     str(tmp_path), seq=seq)
    seen = []
    frame = read_events(str(tmp_path), model="m", since=21.0, skip=("lower", "upper", "latency_ms", "nonesuch"),
                        on_file=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert not {"lower", "upper", "latency_ms"} & set(frame.columns) and "explore_seed" in frame.columns
    assert list(frame.request_id) == ["r2-1", "r2-2", "r3-0", "r3-1", "r3-2"]
    assert str(frame["explore_seed"].dtype) == "Int64"


def test_the_monitored_version_is_the_one_serving_at_the_end_of_the_log_after_a_promotion():
    # A review: champion version 1 for four days, version 2 (promoted) for three; by rows the
    # retired version 1 was judged, and the one serving was "not judged here".
    from tauforge.components.monitor import monitored_version

    events = pd.DataFrame({"model": "m", "role": "champion", "version": [1] * 400 + [2] * 300,
                           "time": np.r_[np.linspace(0, 4 * 86400, 400), np.linspace(4 * 86400 + 1, 7 * 86400, 300)]})
    assert monitored_version(None, "m", events) == 2
    # A rollback is the same: the version answering at the end of the log.
    assert monitored_version(None, "m", events.assign(version=3 - events["version"])) == 1


def test_outcomes_without_a_request_id_are_left_out_not_refused_as_duplicates():
    from tauforge.components.judgement import check_outcomes

    outcomes = pd.DataFrame({"request_id": ["a", None, None, "b"], "row": [0, 0, 0, 0], "outcome": [1.0, 2, 3, 4]})
    assert len(check_outcomes(outcomes)) == 4
    with pytest.raises(ValueError, match="2 rows share a request_id and row"):
        check_outcomes(pd.concat([outcomes, outcomes.head(1)]))


def test_grouped_counts_codes_as_np_unique_did():
    from tauforge.components.monitor import grouped

    for groups, expected in ((None, False), (np.arange(5), False), (np.array([0, 1, 1]), True),
                             (np.array([], dtype=np.int64), False), (np.array([3, 7, 3]), True),
                             (np.array([-1, 2]), False), (np.array([0.5, 0.5]), True),
                             (np.array([2**40, 5, 2**40]), True), (np.array([2**40, 5]), False)):
        assert grouped(groups) is expected


def test_the_frame_read_from_the_log_can_be_edited_in_place(tmp_path):
    # A review of the reading mends: Arrow's zero-copy columns (split_blocks) are read-only.
    from tauforge.components.events import event_record, read_events, write_events

    write_events([event_record(time=float(i), request_id=f"r{i}", row=0, unit_id=None, model="m", version=1,
                               role="champion", cate=0.1, lower=0.0, upper=0.2, latency_ms=1.0, inputs={"x": 1.0})
                  for i in range(3)], str(tmp_path), seq=1)
    frame = read_events(str(tmp_path), model="m")
    frame.loc[0, "cate"] = 5.0  # was: ValueError: assignment destination is read-only
    frame.loc[frame["row"] == 0, "input.x"] = 2.0
    assert frame["cate"].tolist() == [5.0, 0.1, 0.1] and set(frame["input.x"]) == {2.0}


def test_a_log_whose_request_ids_a_writer_stored_as_a_categorical_is_read_and_sorted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tauforge.components.events import read_events

    folder = tmp_path / "model=m" / "date=2026-12-01"
    folder.mkdir(parents=True)
    for i, ids in enumerate((["z", "a"], ["m", "b"])):
        df = pd.DataFrame({"time": 1.0, "request_id": pd.Categorical(ids), "row": [0, 0]})
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), folder / f"events-{i}.parquet")
    assert sorted(read_events(str(tmp_path), model="m")["request_id"].astype(str)) == ["a", "b", "m", "z"]
    # was: ArrowTypeError: Unsupported type for RecordBatch sorting: dictionary<...>


def test_nan_and_null_times_tie_as_pandas_did(tmp_path):
    # Arrow sorts NaN before null; pandas took both as missing, tied, ordered by the next keys.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tauforge.components.events import read_events

    folder = tmp_path / "model=m" / "date=2026-12-01"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"time": pa.array([float("nan"), None, float("nan")]), "request_id": ["c", "a", "b"],
                             "row": pa.array([0, 0, 0])}), folder / "events-1.parquet")
    assert read_events(str(tmp_path), model="m")["request_id"].tolist() == ["a", "b", "c"]


class ChampionAlias:
    """The store's part monitored_version reads: a 'champion' alias naming `champion`."""

    def __init__(self, champion):
        self.champion = champion

    def aliases(self, model):
        return {"champion": {"version": self.champion, "history": []}}

    def resolve(self, model, ref=None):
        return self.champion


def test_the_registry_champion_is_monitored_in_the_hour_after_a_promotion_or_a_rollback():
    # By the last hour's rows alone the retired version won for half an hour after a promotion.
    from tauforge.components.monitor import monitored_version

    minute = 60.0
    end = 7 * 86400.0
    times = np.arange(0, end + 1, minute)  # a row a minute
    promoted = pd.DataFrame({"model": "m", "role": "champion", "time": times,
                             "version": np.where(times > end - 20 * minute, 2, 1)})  # promoted 20 minutes ago
    assert monitored_version(ChampionAlias(2), "m", promoted) == 2
    rolled_back = promoted.assign(version=np.where(times > end - 10 * minute, 1, 2))  # v2 rolled back 10 min ago
    assert monitored_version(ChampionAlias(1), "m", rolled_back) == 1
    unpromoted = promoted.assign(version=np.where(times > end - 20 * minute, 3, 1))  # 3 answers, not promoted
    assert monitored_version(ChampionAlias(1), "m", unpromoted) == 1
