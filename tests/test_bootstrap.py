"""The full bootstrap: replicate forests on resampled rows; percentile and pivot intervals."""

import numpy as np
import pytest

from kernels import CausalForestDML
from kernels.bootstrap import interval, resample_counts
from kernels.datasets import make_causal_data


def test_resamples_are_seeded_multinomial_counts():
    a, b = resample_counts(1000, 3, seed=7), resample_counts(1000, 3, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 1000 and (a == 0).mean() == pytest.approx(np.exp(-1), abs=0.05)
    assert not np.array_equal(a, resample_counts(1000, 4, seed=7))


def test_percentile_and_pivot_intervals():
    draws = np.arange(1, 101, dtype=float)[:, None]  # quantiles 3.475 and 97.525 at alpha 0.05
    lo, hi = interval(draws, np.array([60.0]), 0.05, "percentile")
    assert (lo[0], hi[0]) == pytest.approx((3.475, 97.525))
    lo, hi = interval(draws, np.array([60.0]), 0.05, "pivot")
    assert (lo[0], hi[0]) == pytest.approx((120 - 97.525, 120 - 3.475))
    with pytest.raises(ValueError, match="percentile, pivot"):
        interval(draws, np.array([60.0]), 0.05, "bca")


def test_bootstrap_ate_intervals_cover_the_true_ate_in_most_seeds():
    covered = []
    for seed in range(15):
        d = make_causal_data("constant", n=2000, p=3, seed=seed)
        est = CausalForestDML(n_estimators=20, inference="bootstrap", n_bootstrap=100, bootstrap_trees=2,
                              random_state=seed).fit(d.Y, d.T, X=d.X)
        lo, hi = est.ate_interval()
        covered.append(lo <= 1.0 <= hi)
    assert np.mean(covered) >= 0.8  # 95% intervals, 15 seeds; 100 seeds in tests/benchmarks/bench_bootstrap.py


def test_bootstrap_cate_intervals_and_refit_nuisance():
    d = make_causal_data("simple", n=1500, p=4, seed=1)
    est = CausalForestDML(cv=2, n_estimators=40, inference="bootstrap", n_bootstrap=10, bootstrap_trees=20,
                          bootstrap_nuisance=True, bootstrap_interval="pivot", random_state=1).fit(d.Y, d.T, X=d.X)
    lo, hi = est.effect_interval(d.X[:50])
    tau = est.effect(d.X[:50])
    assert np.all(lo <= hi) and np.all(hi - lo > 0)
    assert len(est.bootstrap_.forests) == 10 and len(set(np.round(est.bootstrap_.ates, 10))) == 10
    with pytest.raises(ValueError, match="inference must be"):
        CausalForestDML(inference="jackknife", n_estimators=4, cv=2).fit(d.Y, d.T, X=d.X)
    assert tau.shape == (50,)
