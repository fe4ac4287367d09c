"""The causal graph's testable implications (components/graph_checks.py): the independences a
graph implies, the conditional-independence test, Holm's correction, and the check on data drawn
from a known graph (it passes at the nominal rate) and from a graph with an edge the declared one
drops (it fails)."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

from tauforge.components.graph import CausalGraph, Independence
from tauforge.components.graph_checks import check_graph, gcm_test, holm, rejected, residual

# A known graph over mixed data: A continuous, B and T binary, the rest continuous; non-linear
# effects (sin, square, |A|) and an interaction (A T), so a linear test would be misled.
TRUE_GRAPH = "digraph { A -> C; B -> C; A -> T; B -> T; C -> M; T -> M; M -> Y; A -> Y; T -> Y }"


def simulate(seed: int, n: int = 1000) -> pd.DataFrame:
    """n rows drawn from TRUE_GRAPH."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=n)
    B = rng.binomial(1, 0.4, n).astype(float)
    C = np.sin(2 * A) + 0.8 * B + rng.normal(size=n)
    T = rng.binomial(1, 1 / (1 + np.exp(-(A + B - 0.5)))).astype(float)
    M = 0.8 * T + 0.4 * C**2 + rng.normal(size=n)
    Y = M + A * T + 0.5 * np.abs(A) + rng.normal(size=n)
    return pd.DataFrame({"A": A, "B": B, "C": C, "T": T, "M": M, "Y": Y})

DROPPED_EDGE = TRUE_GRAPH.replace(" A -> Y;", "")  # the data have A -> Y; this graph says they do not


def test_the_implied_independences_are_one_per_missing_edge_with_a_minimal_observed_separator():
    statements, unseparable = CausalGraph.parse(TRUE_GRAPH).implied_independences()
    assert [str(s) for s in statements] == ["A _||_ B", "A _||_ M | C, T", "C _||_ T | A, B", "C _||_ Y | A, T, M",
                                            "B _||_ M | C, T", "B _||_ Y | A, C, T"]
    assert unseparable == []
    # A latent common cause leaves its children inseparable; a column missing from the data is
    # neither tested nor used to separate (here: without M, nothing separates C from Y).
    latent = CausalGraph.parse('digraph { U [observed="no"]; U -> P; U -> Q; P -> T; Q -> Y; T -> Y }')
    statements, unseparable = latent.implied_independences()
    assert unseparable == [("P", "Q")] and Independence("P", "Y", ("Q", "T")) in statements
    statements, _ = CausalGraph.parse(TRUE_GRAPH).implied_independences(["A", "B", "C", "T", "Y"])
    assert [str(s) for s in statements] == ["A _||_ B", "C _||_ T | A, B", "B _||_ Y | A, C, T"]


def test_the_gcm_statistic_is_the_normalised_mean_of_the_residual_products():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=400), rng.normal(size=400)
    z, p = gcm_test(a, b)
    assert z == pytest.approx(np.sqrt(400) * np.mean(a * b) / np.std(a * b)) and 0 < p < 1
    assert np.isnan(gcm_test(np.zeros(400), b)[1])  # a constant residual: no test


def test_the_residual_removes_a_non_linear_dependence_on_the_conditioning_set():
    rng = np.random.default_rng(1)
    Z = rng.normal(size=(2000, 2))
    a = np.sin(2 * Z[:, 0]) + Z[:, 1] + 0.3 * rng.normal(size=2000)
    b = np.abs(Z[:, 0]) + (Z[:, 1] > 0) + 0.3 * rng.normal(size=2000)  # dependent on a only through Z
    assert gcm_test(a - a.mean(), b - b.mean())[1] < 1e-6
    r_a, r_b = residual(a, Z, seed=0), residual(b, Z, seed=0)
    assert abs(gcm_test(r_a, r_b)[0]) < 3
    assert np.var(r_a) < 0.12 and np.var(r_b) < 0.12  # the signal is explained: the noise's variance is 0.09


def test_holm_adjusts_step_down_as_statsmodels_does():
    from statsmodels.stats.multitest import multipletests  # the reference (EconML depends on statsmodels)

    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.5]), [0.04, 0.09, 0.09, 0.5])
    assert len(holm([])) == 0
    rng = np.random.default_rng(2)
    for m in (1, 2, 7, 40):
        p = rng.uniform(size=m) ** 3  # many small ones: adjustments that reach 1 and that need the running max
        p[rng.integers(m)] = p[0]  # a tie
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_a_true_graph_passes_at_the_nominal_rate_over_seeds():
    # The check fails a graph when a Holm-adjusted p-value is under the level: with the data drawn
    # from the graph, in at most 5% of seeds at 0.05. Here the table holds A, B, C and T only (M
    # and Y unobserved), so the graph implies A _||_ B and C _||_ T | A, B (a binary treatment
    # given a continuous and a binary variable): two regressions a seed, so 80 seeds fit the time.
    # A valid check fails in at most 9 (binom.isf(0.01, 80, 0.05) = 9; more has probability
    # 0.0065). A check failing true graphs in 20% of seeds passes anyway with probability 0.029,
    # in 15% with 0.22. The conditional statement is held to its own 5% level the same way.
    # Measured: the check failed in 7 seeds, C _||_ T | A, B was rejected in 3 (8 and 5 with the
    # additive least-squares regression before 2026-12-06: see components/graph_checks.py).
    # tests/benchmarks/bench_graph_checks.py measures every statement of the full graph over 400
    # seeds (docs/benchmarks.md#statistical-checks).
    graph, seeds = CausalGraph.parse(TRUE_GRAPH), 80
    failed = rejected = 0
    for seed in range(seeds):
        result = check_graph(graph, simulate(seed)[["A", "B", "C", "T"]], seed)
        assert [s["statement"] for s in result["statements"]] == ["A _||_ B", "C _||_ T | A, B"]
        failed += result["min_adjusted_p_value"] < 0.05
        rejected += result["statements"][1]["p_value"] < 0.05
    assert failed <= binom.isf(0.01, seeds, 0.05), failed
    assert rejected <= binom.isf(0.01, seeds, 0.05), rejected


def test_a_true_graph_whose_causes_act_through_interactions_or_waves_passes_at_the_nominal_rate():
    # A review: X <- Z1, Z2 -> W through Z1 Z2 (and X <- Z -> W through sin(3 Z)) left the shared
    # signal in both residuals of an additive model, and the check failed the true graph in 85%
    # (28%) of seeds at 0.05. With pairwise products and 12 spline knots under a ridge penalty the
    # residuals lose it. 40 seeds of each: a valid check fails in at most 6 (binom.isf(0.01, 40,
    # 0.05); more has probability under 0.01); one failing in 28% passes with probability 0.04,
    # in 85% never. Measured: 2 and 2.
    seeds, failed = 40, {"interaction": 0, "wave": 0}
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 31])
        Z1, Z2, noise = rng.normal(size=1000), rng.normal(size=1000), rng.normal(size=(2, 1000))
        interaction = pd.DataFrame({"Z1": Z1, "Z2": Z2, "X": Z1 * Z2 + 0.5 * noise[0], "W": Z1 * Z2 + 0.5 * noise[1]})
        wave = pd.DataFrame({"Z": Z1, "X": np.sin(3 * Z1) + 0.3 * noise[0], "W": np.sin(3 * Z1 + 1) + 0.3 * noise[1]})
        for name, data, text in (("interaction", interaction, "digraph { Z1 -> X; Z1 -> W; Z2 -> X; Z2 -> W }"),
                                 ("wave", wave, "digraph { Z -> X; Z -> W }")):
            failed[name] += check_graph(CausalGraph.parse(text), data, seed)["min_adjusted_p_value"] < 0.05
    assert max(failed.values()) <= binom.isf(0.01, seeds, 0.05), failed


def test_a_graph_missing_an_edge_the_data_have_fails_naming_the_independence_they_contradict():
    table = simulate(0)
    result = check_graph(CausalGraph.parse(DROPPED_EDGE), table, seed=0)
    (contradicted,) = rejected(result, 0.01)
    assert contradicted["statement"] == "A _||_ Y | C, T" and contradicted["adjusted_p_value"] < 1e-4
    assert result["correction"] == "holm" and result["rows"] == 1000 and result["untestable"] == []
    assert check_graph(CausalGraph.parse(TRUE_GRAPH), table, seed=0)["min_adjusted_p_value"] > 0.05


def test_statements_on_unusable_columns_are_listed_untestable_and_rows_are_capped():
    table = simulate(1).assign(B=lambda d: d["B"].map({0.0: "no", 1.0: "yes"}))
    result = check_graph(CausalGraph.parse(TRUE_GRAPH), table, seed=0, max_rows=300)
    assert result["rows"] == 300
    assert {u["statement"] for u in result["untestable"]} == {"A _||_ B", "C _||_ T | A, B", "B _||_ M | C, T",
                                                              "B _||_ Y | A, C, T"}
    assert all(u["reason"] == "column 'B' is not numeric" for u in result["untestable"])
    assert [s["statement"] for s in result["statements"]] == ["A _||_ M | C, T", "C _||_ Y | A, T, M"]
    assert check_graph(None, table) == {"given": False, "note": "no causal graph was given: no implications to test"}


# ---------------------------------------------------------------------- a mutation review's cases
def test_the_p_value_is_two_sided_for_either_sign_of_the_statistic():
    from scipy.stats import norm

    rng = np.random.default_rng(3)
    a = rng.normal(size=300)
    b = 0.2 * a + rng.normal(size=300)
    for sign in (1, -1):
        z, p = gcm_test(a, sign * b)
        assert np.sign(z) == sign and p == pytest.approx(2 * norm.sf(abs(z)), rel=1e-12) and p < 0.05


def test_a_residual_constant_up_to_rounding_gives_no_test():
    rng = np.random.default_rng(4)
    almost = 1.0 + 1e-15 * rng.normal(size=400)  # a variable the conditioning set determines, after rounding
    assert np.isnan(gcm_test(almost, np.ones(400))[1])


def test_an_unconditional_independence_is_tested_on_centred_variables():
    # Shifting a column moves no covariance: the p-value of A _||_ B is the same, and not small.
    rng = np.random.default_rng(5)
    table = pd.DataFrame({"A": rng.normal(size=500), "B": rng.normal(size=500)})
    graph = CausalGraph.parse("digraph { A; B }")
    (s,) = check_graph(graph, table)["statements"]
    (shifted,) = check_graph(graph, table + 10)["statements"]
    assert shifted["p_value"] == pytest.approx(s["p_value"], rel=1e-9) and s["p_value"] > 0.05
    assert residual(table["A"].to_numpy() + 10, np.empty((500, 0))).mean() == pytest.approx(0, abs=1e-12)


def test_the_residual_is_cross_fitted_in_the_five_folds_the_card_states():
    from tauforge.components.graph_checks import TEST

    rng = np.random.default_rng(6)
    Z = rng.normal(size=(300, 2))
    v = Z[:, 0] + rng.normal(size=300)
    np.testing.assert_array_equal(residual(v, Z, seed=0), residual(v, Z, seed=0, folds=5))
    assert "cross-fitted in 5 folds" in TEST


def test_conditioning_on_one_hot_dummies_whose_product_is_always_zero_is_tested():
    rng = np.random.default_rng(7)
    category = rng.integers(0, 3, 600)
    D1, D2 = (category == 1).astype(float), (category == 2).astype(float)  # D1 * D2 is 0: a constant column
    table = pd.DataFrame({"D1": D1, "D2": D2, "X": D1 - D2 + rng.normal(size=600), "W": D2 + rng.normal(size=600)})
    result = check_graph(CausalGraph.parse("digraph { D1 -> X; D2 -> X; D1 -> W; D2 -> W; D1 -> D2 }"), table)
    (s,) = result["statements"]
    assert s["statement"] == "X _||_ W | D1, D2" and 0 < s["p_value"] <= 1


def test_the_adjusted_p_values_are_holms_over_the_tested_statements():
    result = check_graph(CausalGraph.parse(TRUE_GRAPH), simulate(2), seed=0)
    p = [s["p_value"] for s in result["statements"]]
    np.testing.assert_allclose([s["adjusted_p_value"] for s in result["statements"]], holm(p), rtol=1e-12)
    assert result["min_adjusted_p_value"] == pytest.approx(min(holm(p)), rel=1e-12) and len(p) == 6


def test_the_check_is_seeded_the_same_seed_the_same_numbers_another_seed_other_folds():
    table = simulate(2)[["A", "B", "C", "T"]]
    graph = CausalGraph.parse(TRUE_GRAPH)
    first, again, other = (check_graph(graph, table, seed=s)["statements"][1]["p_value"] for s in (0, 0, 1))
    assert first == again and first != other


@pytest.mark.parametrize("change, reason", [
    (lambda t: t.assign(B=t["B"].where(t.index != 5)), "column 'B' has missing or infinite values"),
    (lambda t: t.assign(B=t["B"].where(t.index != 5, np.inf)), "column 'B' has missing or infinite values"),
    (lambda t: t.assign(B=1.0), "column 'B' is constant"),
])
def test_statements_on_a_column_with_missing_or_infinite_values_or_a_constant_one_are_untestable(change, reason):
    result = check_graph(CausalGraph.parse(TRUE_GRAPH), change(simulate(1)[["A", "B", "C", "T"]]), seed=0)
    assert result["untestable"] == [{"statement": "A _||_ B", "reason": reason},
                                    {"statement": "C _||_ T | A, B", "reason": reason}]
    assert result["statements"] == [] and result["min_adjusted_p_value"] is None


def test_with_groups_the_check_holds_groups_out_whole_and_clusters_the_standard_error():
    table, groups = simulate(3, n=600)[["A", "B", "C", "T"]], np.repeat(np.arange(150), 4)
    (_, s) = check_graph(CausalGraph.parse(TRUE_GRAPH), table, seed=0, groups=groups)["statements"]
    Z = table[["A", "B"]].to_numpy()
    r_c, r_t = (residual(table[v].to_numpy(), Z, 0, groups=groups) for v in ("C", "T"))
    assert s["statement"] == "C _||_ T | A, B"
    assert s["statistic"] == pytest.approx(gcm_test(r_c, r_t, groups)[0], rel=1e-9)
    assert s["statistic"] != pytest.approx(gcm_test(r_c, r_t)[0], rel=1e-3)  # not as independent rows


def test_a_capped_table_with_groups_draws_whole_groups_for_about_max_rows_rows():
    table, groups = simulate(3, n=1200)[["A", "B", "C", "T"]], np.repeat(np.arange(300), 4)
    result = check_graph(CausalGraph.parse(TRUE_GRAPH), table, seed=0, max_rows=400, groups=groups)
    assert result["rows"] == 400 and len(result["statements"]) == 2  # 100 groups of 4


def test_rejected_lists_statements_under_the_level_by_adjusted_p_value_most_significant_first():
    section = {"given": True, "statements": [
        {"statement": "a", "p_value": 0.001, "adjusted_p_value": 0.004},
        {"statement": "b", "p_value": 0.0001, "adjusted_p_value": 0.0004},
        {"statement": "c", "p_value": 0.002, "adjusted_p_value": 0.012}]}
    assert [t["statement"] for t in rejected(section, 0.01)] == ["b", "a"]
    assert rejected(check_graph(None, pd.DataFrame({"A": [1.0]})), 0.01) == []


def test_with_fewer_groups_than_folds_each_group_is_a_fold():
    rng = np.random.default_rng(8)
    Z, groups = rng.normal(size=(300, 1)), np.repeat(np.arange(3), 100)
    r = residual(Z[:, 0] + rng.normal(size=300), Z, seed=0, groups=groups)
    assert np.isfinite(r).all() and np.var(r) < 1.5


def test_a_capped_table_is_a_random_sample_not_its_first_rows():
    # Sorted by B, the first 300 rows all have B = 0: a head would find B constant.
    table = simulate(1).sort_values("B", kind="stable").reset_index(drop=True)
    result = check_graph(CausalGraph.parse(TRUE_GRAPH), table[["A", "B", "C", "T"]], seed=0, max_rows=300)
    assert result["rows"] == 300 and result["untestable"] == [] and len(result["statements"]) == 2
