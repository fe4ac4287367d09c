"""The chart primitives (components/charts.py) and both HTML reports, the reports rendered in
headless Chromium (tests/report_pages.py)."""

import math
import os
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from report_pages import chromium, evaluation_page, monitoring_page, render

from tauforge.components import charts
from tauforge.components.charts import Interval
from tauforge.components.graph import CausalGraph
from tauforge.components.report import monitor_uplift, uplift_section

SVG = "{http://www.w3.org/2000/svg}"
# One xdist worker runs this module (conftest.py): its `rendered` fixture, three pages built and
# rendered in Chromium, took 11 s in each of the two workers.
RUN_WHOLE = True


def parse(svg: str) -> ET.Element:
    """An SVG string as XML: it must be well formed (escaped text included)."""
    return ET.fromstring(svg)


def ticks(root: ET.Element, axis: str) -> list[str]:
    return ["".join(g.itertext()) for g in root.iter(f"{SVG}g") if g.get("class") == f"tick {axis}"]


def zero_line(root: ET.Element) -> ET.Element:
    (line,) = [el for el in root.iter(f"{SVG}line") if el.get("class") == "zero"]
    return line


def bars(root: ET.Element) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}rect") if el.get("class") == "bar"]


# ----------------------------------------------------------------------------- ticks
def test_nice_ticks_cover_the_data_range_with_round_evenly_spaced_steps():
    rng = np.random.default_rng(0)
    ranges = [(0, 1), (-0.62, 2.9), (0.2634, 0.7012), (-1e-7, 3e-7), (12_000, 950_000), (-5, -5), (0, 0),
              (0.1, 0.3), (0.3, 0.7), (-3.2e9, 1e9)]
    ranges += [tuple(sorted(rng.normal(0, 10.0 ** rng.integers(-6, 7), 2))) for _ in range(500)]
    for lo, hi in ranges:
        t = charts.nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi, (lo, hi, t)
        assert 3 <= len(t) <= 12, (lo, hi, t)
        steps = np.diff(t)
        assert np.allclose(steps, steps[0], rtol=1e-9), (lo, hi, t)
        mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-9, (lo, hi, steps[0])
        labels = [charts.tick_label(v, steps[0]) for v in t]
        assert len(set(labels)) == len(labels), labels  # distinct: enough decimals for the step
    assert charts.tick_label(-1e-17, 0.1) == "0.0"  # no "-0"
    assert charts.nice_ticks(-0.45, 1.2) == pytest.approx([-0.5, 0, 0.5, 1.0, 1.5])
    with pytest.raises(ValueError, match="finite"):
        charts.nice_ticks(0, math.nan)


# ----------------------------------------------------------------------------- primitives
def test_negative_bars_are_drawn_below_the_zero_line_and_positive_ones_above():
    root = parse(charts.bar_chart(["a", "b"], {"smd": [-2.0, 3.0]}, title="t", value_label="v"))
    zero = float(zero_line(root).get("y1"))
    neg, pos = bars(root)
    assert float(neg.get("y")) == pytest.approx(zero, abs=0.11)  # hangs from the zero line
    assert float(neg.get("y")) + float(neg.get("height")) > zero + 10
    assert float(pos.get("y")) + float(pos.get("height")) == pytest.approx(zero, abs=0.11)
    assert float(pos.get("height")) == pytest.approx(1.5 * float(neg.get("height")), rel=0.01)  # to scale
    # Horizontal: a negative bar ends left of the zero line.
    root = parse(charts.bar_chart(["a", "b"], {"smd": [-2.0, 3.0]}, title="t", value_label="v", horizontal=True))
    zero = float(zero_line(root).get("x1"))
    neg, pos = bars(root)
    assert float(neg.get("x")) + float(neg.get("width")) == pytest.approx(zero, abs=0.11)
    assert float(neg.get("x")) < zero - 10 and float(pos.get("x")) == pytest.approx(zero, abs=0.11)
    # GATES: a negative group effect's bar and point lie below zero, its interval across it.
    root = parse(charts.interval_chart([Interval("Q1", -0.3, -0.5, 0.1), Interval("Q2", 0.4, 0.2, 0.6)],
                                       title="gates", value_label="effect", bars=True))
    zero = float(zero_line(root).get("y1"))
    q1, q2 = bars(root)
    assert float(q1.get("y")) == pytest.approx(zero, abs=0.11) and float(q1.get("height")) > 0
    assert float(q2.get("y")) + float(q2.get("height")) == pytest.approx(zero, abs=0.11)
    points = [el for el in root.iter(f"{SVG}circle") if el.get("class") == "estimate"]
    assert float(points[0].get("cy")) > zero > float(points[1].get("cy"))
    assert any(t.startswith("-") for t in ticks(root, "y"))  # the axis reaches below zero


def test_every_chart_has_ticks_on_both_axes_that_cover_its_values():
    edges = np.linspace(-1.3, 2.7, 21)
    made = {
        "histogram": charts.histogram(edges, {"a": np.arange(20), "b": np.arange(20)[::-1]}, title="h",
                                      x_label="x (units)", normalize=True, lines={"mark": 0.5}),
        "bar": charts.bar_chart(["x0", "x1", "x2"], {"raw": [0.3, -0.12, 0.05], "weighted": [0.05, 0.02, -0.01]},
                                title="b", value_label="smd", horizontal=True, lines={"threshold": [-0.1, 0.1]}),
        "line": charts.line_chart({"gain": ([0, 50, 100], [0, 0.3, 0.4]), "random": ([0, 100], [0, 0.4])},
                                  "l", "share (%)", "gain", dashed=["random"]),
        "interval": charts.interval_chart([Interval("ATE", 0.45, 0.35, 0.56)], title="i", value_label="effect"),
    }
    for name, svg in made.items():
        root = parse(svg)
        assert root.get("class") == "chart"
        numeric = "y" if name != "bar" else "x"
        labels = [float(t.replace(",", "")) for t in ticks(root, numeric)]
        assert len(labels) >= 3, name
        assert len(ticks(root, "x" if numeric == "y" else "y")) >= 1, name
        axis_titles = [el for el in root.iter(f"{SVG}text") if (el.get("class") or "").startswith("axis-title")]
        assert axis_titles, name
    hist = parse(made["histogram"])
    x_labels = [float(t) for t in ticks(hist, "x")]
    assert x_labels[0] <= -1.3 and x_labels[-1] >= 2.7
    y_labels = [float(t) for t in ticks(hist, "y")]
    assert y_labels[-1] >= 100 * 19 / sum(range(20))  # normalized: the largest share, in percent
    line = parse(made["line"])
    dashed = [el for el in line.iter(f"{SVG}polyline") if el.get("stroke-dasharray")]
    assert len(dashed) == 1 and "".join(dashed[0].itertext()) == "random"


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script> & "quotes"'
    svgs = [charts.histogram([0, 1, 2], {evil: [1, 2], "b": [2, 1]}, title=evil, x_label=evil, y_label=evil),
            charts.bar_chart([evil, "b"], {evil: [1, -1]}, title=evil, value_label=evil, lines={evil: 0.5}),
            charts.line_chart({evil: ([0, 1], [0, 1])}, evil, evil, evil),
            charts.interval_chart([Interval(evil, 1, 0, 2)], title=evil, value_label=evil),
            charts.graph_chart(CausalGraph(("T", "Y", evil), (("T", "Y"), (evil, "Y"))), title=evil)]
    for svg in svgs:
        assert "<script" not in svg
        root = parse(svg)  # well formed: every <, & and quote escaped
        assert not list(root.iter("script")) and not list(root.iter(f"{SVG}script"))
        texts = ["".join(el.itertext()) for el in root.iter(f"{SVG}text")]
        assert any(evil in t or evil[:27] in t for t in texts)  # shown as text (a long label is clipped)
        assert root.get("aria-label") == evil


def test_the_causal_graph_is_drawn_in_layers_with_latent_nodes_dashed_and_treatment_and_outcome_marked():
    graph = CausalGraph.parse('digraph { Z -> T; Z -> Y; T -> M; M -> Y; U [observed="no"]; U -> Z; U -> Y; W; }')
    root = parse(charts.graph_chart(graph, title="g", treatment="T", outcome="Y", adjustment=["Z", "W"]))
    assert root.get("class") == "graph"
    nodes = {"".join(g.find(f"{SVG}text").itertext()): g for g in root.iter(f"{SVG}g")
             if (g.get("class") or "").startswith("node")}
    assert set(nodes) == {"Z", "T", "M", "Y", "U", "W"}
    role = {n: g.get("class").split()[1] for n, g in nodes.items()}
    assert role == {"T": "treatment", "Y": "outcome", "U": "latent", "Z": "adjusted", "W": "adjusted",
                    "M": "other"}
    assert nodes["U"].find(f"{SVG}rect").get("stroke-dasharray") and not nodes["Z"].find(f"{SVG}rect").get(
        "stroke-dasharray")
    x = {n: float(g.find(f"{SVG}text").get("x")) for n, g in nodes.items()}
    # Columns are networkx's topological generations: U, W | Z | T | M | Y.
    assert x["U"] == x["W"] < x["Z"] < x["T"] < x["M"] < x["Y"]
    edges = [el for el in root.iter(f"{SVG}path") if el.get("class") == "edge"]
    assert len(edges) == len(graph.edges)
    for el in edges:  # every arrow points right, from its cause to its effect
        cause, effect = "".join(el.itertext()).split(" -> ")
        start, end = re.findall(r"M([\d.]+),[\d.]+Q[\d.]+,[\d.]+ ([\d.]+),", el.get("d"))[0]
        assert float(start) == pytest.approx(x[cause], abs=0.1) and float(end) < x[effect]
        assert float(end) > x[cause]
        assert bool(el.get("stroke-dasharray")) == (cause == "U")  # a latent cause's edges are dashed
    # The card's graph section draws the same, its roles taken from it.
    section = {**graph.to_dict(), "given": True, "treatment": "T", "outcome": "Y", "adjustment_set": ["Z", "W"]}
    assert charts.graph_chart(section, title="g") == charts.graph_chart(graph, title="g", treatment="T",
                                                                         outcome="Y", adjustment=["Z", "W"])
    # With evaluate's graph checks, the section lists each tested independence, the least supported first.
    from tauforge.components.report import _graph_section

    checks = {"given": True, "test": "GCM", "correction": "holm", "statements": [
        {"statement": "W _||_ Z", "statistic": 0.3, "p_value": 0.7, "adjusted_p_value": 0.9},
        {"statement": "W _||_ T | Z", "statistic": 4.1, "p_value": 1e-4, "adjusted_p_value": 2e-4}]}
    html_text = _graph_section(section, checks)
    assert html_text.index("W _||_ T | Z") < html_text.index("W _||_ Z") and "adjusted p-value" in html_text
    assert "adjusted p-value" not in _graph_section(section)


def test_mismatched_series_are_refused_naming_the_series():
    with pytest.raises(ValueError, match="series 'a' has 3 counts for 2 bins"):
        charts.histogram([0, 1, 2], {"a": [1, 2, 3]}, title="h", x_label="x")
    with pytest.raises(ValueError, match="series 'raw' has 1 values for 2 categories"):
        charts.bar_chart(["x0", "x1"], {"raw": [0.1]}, title="b", value_label="v")


# ----------------------------------------------------------------------------- uplift, when present
UPLIFT = {"auuc": 0.31, "auuc_stderr": 0.02, "qini": 0.08, "qini_stderr": 0.01, "qini_pvalue": 1e-9,
          "curve": {"share": [0, 0.5, 1], "gain": [0, 0.3, 0.4], "qini": [0, 0.1, 0], "random": [0, 0.2, 0.4]}}


def test_uplift_curves_are_drawn_when_the_result_has_them_and_nothing_when_not():
    assert uplift_section(None) == "" and uplift_section({"note": "no curve"}) == ""
    drawn = uplift_section(UPLIFT, "Y")
    assert drawn.count('class="chart"') == 2 and "Gain curve" in drawn and "Qini curve" in drawn
    assert monitor_uplift(None, "Y") == ""
    both = monitor_uplift({"champion": UPLIFT, "challenger": UPLIFT, "qini_difference": {
        "of": "challenger - champion", "value": 0.0, "stderr": 0.01, "pvalue": 1.0}}, "Y")
    assert both.count('class="chart"') == 2 and "champion: Qini" in both and "challenger: Qini" in both


# ----------------------------------------------------------------------------- in Chromium
@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    binary = chromium()
    if binary is None:
        message = "no Chromium binary (chromium, chromium-browser, google-chrome) on PATH; .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the reports must be rendered, but {message}")
        pytest.skip(message)
    work = str(tmp_path_factory.mktemp("reports"))
    pages = {"evaluate": evaluation_page(), "monitor": monitoring_page(),
             "evaluate-continuous": evaluation_page(n=800, design="continuous")}
    return {name: (page, render(page, work, name, binary=binary, screenshot=name != "evaluate-continuous"))
            for name, page in pages.items()}


# The charts each report draws: evaluate: effect, CATE, GATES, overlap, balance, refuters,
# sensitivity, and the graph; a continuous treatment's overlap is its Var(T | X), and no graph was given;
# monitor: 5 covariates, propensity, CATE, policy value. Plus a gain and a Qini chart wherever the
# result has uplift curves (test_uplift_curves_are_drawn_... checks that they are drawn).
EXPECTED = {"evaluate": (7, 1), "monitor": (8, 0), "evaluate-continuous": (7, 0)}


def overlapping(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 0.5 and min(a[3], b[3]) - max(a[1], b[1]) > 0.5


@pytest.mark.parametrize("name", list(EXPECTED))
def test_both_reports_render_in_chromium_with_every_chart_on_labelled_axes(rendered, name):
    page, shown = rendered[name]
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert shown.dom.count("<svg") == page.count("<svg")  # the browser's parser kept every chart
    title = re.search(r"<h1>(.*?)</h1>", page).group(1)
    assert f"<h1>{title}</h1>" in shown.dom and "uplift-demo" in title
    svgs = shown.measured["svgs"]
    chart_svgs = [s for s in svgs if s["cls"] == "chart"]
    graphs = [s for s in svgs if s["cls"] == "graph"]
    uplift = page.count('aria-label="Gain curve:') + page.count('aria-label="Qini curve:')
    assert (len(chart_svgs) - uplift, len(graphs)) == EXPECTED[name]
    for s in svgs:
        assert s["width"] > 100 and s["height"] > 100, s["label"]
        for t in s["texts"]:
            left, top, right, bottom = t["box"]
            # Every label rendered, and inside its chart: none clipped at an edge.
            assert right > left and bottom > top, (s["label"], t["text"])
            assert left >= -0.5 and top >= -0.5 and right <= s["width"] + 0.5 and bottom <= s["height"] + 0.5, (
                s["label"], t["text"], t["box"], s["width"], s["height"])
    for s in svgs:  # no two labels of a chart drawn over each other
        texts = s["texts"]
        for i, a in enumerate(texts):
            for b in texts[i + 1:]:
                assert not overlapping(a["box"], b["box"]), (s["label"], a["text"], a["box"], b["text"], b["box"])
    for s in chart_svgs:
        x_ticks = sorted((t for t in s["texts"] if t["kind"] == "tick x"), key=lambda t: t["box"][0])
        y_ticks = [t for t in s["texts"] if t["kind"] == "tick y"]
        assert len(x_ticks) >= 1 and len(y_ticks) >= 1 and len(x_ticks) + len(y_ticks) >= 4, s["label"]
        assert all(t["text"].strip() for t in x_ticks + y_ticks), s["label"]
        for a, b in zip(x_ticks, x_ticks[1:]):  # tick labels side by side, not on top of each other
            assert a["box"][2] <= b["box"][0] + 0.5, (s["label"], a["text"], b["text"])
        assert any(t["kind"].startswith("axis-title") for t in s["texts"]), s["label"]
    for s in graphs:
        assert len([t for t in s["texts"] if t["kind"].startswith("node")]) == 7  # x0..x4, T, Y


@pytest.mark.parametrize("name", ["evaluate", "monitor"])
def test_the_screenshots_show_the_whole_page_in_colour(rendered, name):
    from PIL import Image

    _, shown = rendered[name]
    image = Image.open(shown.screenshot).convert("RGB")
    assert image.size == (1100, shown.measured["height"])
    pixels = np.asarray(image, dtype=float)
    assert pixels.std() > 20  # a blank or single-colour page is near 0
    # Coloured pixels (chroma over 50) come from the charts' bars, lines and points: about 33,000
    # (evaluate) and 56,000 (monitor) here; the pages without their charts have under 3,000.
    chroma = pixels.max(axis=2) - pixels.min(axis=2)
    assert (chroma > 50).sum() > 20_000, (chroma > 50).sum()


def test_the_evaluate_report_header_names_model_version_run_and_data_and_its_axes_carry_units(rendered):
    page, _ = rendered["evaluate"]
    assert "assigned at publish: the model_card.json beside a published report names it" in page
    assert "tauforge-training-example" in page
    assert re.search(r"sha256 [0-9a-f]{64}", page)
    assert "Gate passed" in page and "Causal graph (sha256" in page
    assert "effect of T on Y (Y units)" in page  # the axes carry units


def test_under_a_bootstrap_interval_the_sensitivity_section_says_its_figures_rest_on_the_standard_error():
    # A review: beside a bootstrap interval, "would bring the effect's interval to 0" meant the
    # normal interval of the analytic standard error, which the report did not show.
    from tauforge.components.report import _sensitivity_section

    sens = {"theta": 0.35, "c_y": 0.1, "c_t": 0.1, "theta_bounds": [0.2, 0.5], "ci_bounds": [0.18, 0.51],
            "robustness_value": 0.128, "robustness_value_theta": 0.2}
    eff = {"ate": 0.35, "ate_lower": 0.29, "ate_upper": 0.41, "alpha": 0.05, "ate_stderr": 0.0305}
    normal = _sensitivity_section(sens, {**eff, "ate_interval": "normal, from the standard error"}, "Y")
    boot = _sensitivity_section(sens, {**eff, "ate_interval": "bootstrap percentile, 20 replicates"}, "Y")
    assert "analytic standard error" not in normal
    assert ("These figures rest on the analytic standard error (0.0305); the interval shown for the estimate is "
            "the bootstrap percentile, 20 replicates.") in boot


def test_a_continuous_treatments_variance_weighted_effect_is_tabled_and_with_groups_drawn_at_students_t():
    # A review: with groups the ATE's interval takes t(G - 1) and the variance-weighted effect's and
    # the GATES bars took z, narrower than their "95%"; the variance-weighted effect had no table row.
    from scipy import stats

    from tauforge.components.report import _effect_quantile, _effect_section

    eff = {"estimand": "average partial effect", "method": "debiased", "ate": 1.0, "ate_stderr": 0.1,
           "ate_lower": 0.8, "ate_upper": 1.2, "ate_interval": "t", "alpha": 0.05,
           "variance_weighted_effect": 2.0, "variance_weighted_stderr": 0.1}
    half = {"plain": stats.norm.ppf(0.975) * 0.1, "grouped": stats.t.ppf(0.975, 19) * 0.1}
    for name, extra in (("plain", {}), ("grouped", {"n_groups": 20})):
        page = _effect_section({**eff, **extra}, "Y")
        assert f"[{2 - half[name]:.4g}, {2 + half[name]:.4g}]" in page and "variance-weighted effect (sum" in page
        # The GATES bars take the same multiplier.
        assert _effect_quantile({**eff, **extra}) == pytest.approx(half[name] / 0.1)
    from tauforge.components.report import _heterogeneity_section

    het = {"gates": [{"group": 1, "cate_from": 0.0, "cate_to": 1.0, "effect": 1.0, "stderr": 0.1}],
           "calibration": {"mean_forest_prediction": 1.0, "mean_stderr": 0.1, "differential_forest_prediction": 1.0,
                           "differential_stderr": 0.1, "mean_pvalue": 0.01, "differential_pvalue": 0.01},
           "rate": {"autoc": 0.1, "stderr": 0.05, "pvalue": 0.02}}
    plain, grouped = (_heterogeneity_section(het, {**eff, **extra}, "Y") for extra in ({}, {"n_groups": 20}))
    assert plain != grouped  # the bars' ends moved out with Student's t


def test_histograms_of_values_a_few_float_steps_apart_are_drawn_not_raised():
    # A review: np.histogram found no finite-sized bins between 0.3 and 0.1 * 3 and failed the run.
    from tauforge.components.evaluate import _histogram
    from tauforge.components.monitor import drift_histogram

    for close in (np.array([0.3, 0.1 * 3] * 50), np.array([1.7e18, np.nextafter(1.7e18, 2e18)] * 50)):
        assert sum(_histogram(close)["counts"]) == 100  # nanosecond timestamps: +-0.5 is below their ulp
        drawn = drift_histogram(close, close[::-1])
        assert sum(drawn["reference"]) == sum(drawn["live"]) == 100


def test_an_undefined_robustness_value_is_said_to_be_undefined():
    from tauforge.components.report import _sensitivity_section

    sens = {"theta": 0.35, "c_y": 0.1, "c_t": 0.1, "theta_bounds": [float("nan")] * 2,
            "ci_bounds": [float("nan")] * 2, "robustness_value": float("nan"), "robustness_value_theta": float("nan")}
    eff = {"ate": 0.35, "ate_lower": 0.29, "ate_upper": 0.41, "alpha": 0.05, "ate_stderr": 0.0305,
           "ate_interval": "normal, from the standard error"}
    page = _sensitivity_section(sens, eff, "Y")
    assert "Robustness value undefined" in page and "Robustness value nan" not in page
