"""The HTML reports: the evaluation of a trained candidate (`render_report`, written by the
evaluate step and published with the version) and the monitoring of a served version
(`render_monitor_report`). Each is one self-contained page: inline SVG charts
(`components/charts.py`), no scripts, no external assets, as KFP's UI shows an HTML artifact.

A report opens with a header naming what it is about (model, version, run, data fingerprint),
then the verdict, then a section per check with its chart and the numbers behind it; the result
as JSON comes last, collapsed.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

from scipy import stats

from . import charts
from .charts import Interval
from .constants import SMD_WARNING

# A report is made before its version is numbered; the published copy sits beside the card that
# numbers it (the card cannot be written into it: its checksum is in the card).
CANDIDATE = "assigned at publish: the model_card.json beside a published report names it"
MAX_BALANCE_ROWS = 30  # covariates drawn in the balance chart, largest imbalance first
FAIL_COLOUR, PASS_COLOUR, WARN_COLOUR = "#c0392b", "#1f77b4", "#e67e22"
# Per-row data the charts draw, left out of the JSON at the end of a report.
BULKY_KEYS = ("histogram", "cate_histogram", "curve")

_STYLE = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:0;color:#1d1d1d;background:#f5f6f8}
main{max-width:66em;margin:0 auto;padding:1.2em 2em 3em}
h1{font-size:1.5em;margin:.2em 0 .5em}h2{font-size:1.15em;margin:0 0 .6em}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:1em 1.2em;margin:1em 0}
dl.header{display:grid;grid-template-columns:max-content 1fr;gap:.25em 1.2em;margin:0}
dl.header dt{color:#555}dl.header dd{margin:0;font-family:"DejaVu Sans Mono",monospace;word-break:break-all}
.verdict{border-left:6px solid;padding:.7em 1em;border-radius:4px;margin:1em 0;background:#fff}
.verdict.pass{border-color:#1e8449}.verdict.fail{border-color:#c0392b}.verdict.hold{border-color:#b7950b}
.verdict strong{font-size:1.1em}.pass-text{color:#1e8449}.fail-text{color:#c0392b}.warn{color:#7d6608}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
td,th{border:1px solid #d5d9de;padding:.25em .6em;text-align:left}th{background:#f0f2f4}td.num{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:.8em}.charts>div{border:1px solid transparent;border-radius:4px}
.charts>div.alert{border-color:#c0392b;background:#fdf1f0}
svg{max-width:100%;height:auto;display:block}p.note{color:#555;font-size:.92em}
details{margin-top:.5em}summary{cursor:pointer;color:#333}pre{font-size:.8em;overflow-x:auto}
"""


@dataclass(frozen=True)
class ReportHeader:
    """What the evaluation report is about, shown at its top. `version` empty: a candidate (the
    store assigns the version at publish). `treatment` and `outcome` name the axes' units."""

    model: str = ""
    version: str = ""
    run_id: str = ""
    data_fingerprint: str = ""
    treatment: str = ""
    outcome: str = ""


def _fmt(v) -> str:
    if v is None:
        return "\u2014"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _numeric(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _table(rows, header) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=num' if _numeric(v) else ''}>{html.escape(_fmt(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _section(title: str, *parts: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<section{cls}><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def _page(title: str, header: list[tuple[str, str]], body: list[str], result: dict, what: str) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v or chr(0x2014))}</dd>" for k, v in header)
    dump = html.escape(json.dumps(_without_bulk(result), indent=1, default=str))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><main><h1>{html.escape(title)}</h1>"
            f"<section><dl class='header'>{items}</dl></section>{''.join(body)}"
            f"<details><summary>{html.escape(what)} as JSON (histograms and curves left out: the charts draw them)"
            f"</summary><pre>{dump}</pre></details></main></body></html>")


def _without_bulk(value):
    if isinstance(value, dict):
        return {k: _without_bulk(v) for k, v in value.items() if k not in BULKY_KEYS}
    if isinstance(value, list):
        return [_without_bulk(v) for v in value]
    return value


def _fingerprint(value: str | None) -> str:
    return f"sha256 {value}" if value else "not recorded"


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


def _effect_quantile(eff: dict) -> float:
    """The multiplier the average effect's interval takes: with groups Student's t (G - 1), which
    the GATES and the variance-weighted effect take too (z drew them narrower than their label)."""
    from tauforge.kernels.ate import interval_quantile

    return interval_quantile(eff["alpha"], eff.get("n_groups"))


# ----------------------------------------------------------------------------- evaluation
def render_report(result: dict, header: ReportHeader | None = None) -> str:
    """The evaluation report of `result` (`evaluate.evaluate`'s dict)."""
    header = header or ReportHeader()
    eff = result["effect"]
    binary = "overlap" in result
    y, t = header.outcome or "the outcome", header.treatment or "the treatment"
    unit = f"effect of {t} on {y} ({y} units)" if binary else f"effect on {y} per unit of {t} ({y} units)"
    title = f"tauforge evaluation: {header.model}" if header.model else "tauforge evaluation"
    unpublished = "none: the gate failed, so nothing is published"
    facts = [("model", header.model or "not named"),
             ("version", header.version or (CANDIDATE if result["verdict"]["passed"] else unpublished)),
             ("run", header.run_id or "not recorded"), ("training data", _fingerprint(header.data_fingerprint)),
             ("effect", f"{eff['estimand']} of {t} on {y}")]
    body = [_verdict(result["verdict"]), _effect_section(eff, unit), _cate_section(eff, unit),
            _heterogeneity_section(result["heterogeneity"], eff, unit), uplift_section(result.get("uplift"), y)]
    if binary:
        body.append(_overlap_section(result["overlap"], t))
    if "treatment_variance" in result:
        body.append(_treatment_variance_section(result["treatment_variance"], t))
    body += [_balance_section(result["balance"], t), _nuisance_section(result["nuisance"]),
             _refuters_section(result["refuters"], eff, result.get("gate_config", {}), result.get("verdict", {}), unit),
             _sensitivity_section(result["sensitivity"], eff, unit),
             _graph_section(result.get("graph"), result.get("graph_checks"))]
    return _page(title, facts, body, result, "The evaluation")


def _verdict(v: dict) -> str:
    if v["passed"]:
        head = '<strong class="pass-text">Gate passed</strong>: the checks below allow publishing.'
    else:
        head = '<strong class="fail-text">Gate failed</strong>: nothing is published.'
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in v["reasons"])
    warnings = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in v["warnings"])
    return (f'<div class="verdict {"pass" if v["passed"] else "fail"}">{head}'
            + (f"<ul>{reasons}</ul>" if reasons else "") + (f"<ul>{warnings}</ul>" if warnings else "") + "</div>")


def _effect_section(eff: dict, unit: str) -> str:
    level = f"{100 * (1 - eff['alpha']):.0f}%"
    rows = [Interval(eff["estimand"], eff["ate"], eff["ate_lower"], eff["ate_upper"])]
    if _finite(eff.get("variance_weighted_effect")) and _finite(eff.get("variance_weighted_stderr")):
        vw, half = eff["variance_weighted_effect"], _effect_quantile(eff) * eff["variance_weighted_stderr"]
        rows.append(Interval("variance-weighted\neffect", vw, vw - half, vw + half, charts.PALETTE[7]))
    chart = charts.interval_chart(rows, title=f"Average effect with its {level} interval", value_label=unit,
                                  width=460)
    lines = [(eff["method"], eff["ate"], eff["ate_stderr"],
              f"[{eff['ate_lower']:.4g}, {eff['ate_upper']:.4g}] ({eff['ate_interval']})")]
    if len(rows) > 1:  # a continuous treatment's variance-weighted effect, in the chart above
        lines.append(("variance-weighted effect (sum of t~ y~ / sum of t~^2)", rows[1].estimate,
                      eff["variance_weighted_stderr"], f"[{rows[1].lower:.4g}, {rows[1].upper:.4g}]"))
    table = _table(lines, ("method", eff["estimand"], "std. error", f"{level} interval"))
    return _section("Average effect", chart, table)


def _cate_section(eff: dict, unit: str) -> str:
    hist = eff["cate_histogram"]
    chart = charts.histogram(hist["edges"], {"CATE": hist["counts"]}, title="Distribution of the out-of-bag CATE "
                             "over the training rows", x_label=f"CATE: {unit}", y_label="rows",
                             lines={f"{eff['estimand']} {eff['ate']:.3g}": eff["ate"]})
    table = _table([tuple(eff["cate_quantiles"].values())], tuple(f"q{q}" for q in eff["cate_quantiles"]))
    return _section("Conditional effects (CATE)", chart, table)


def _heterogeneity_section(het: dict, eff: dict, unit: str) -> str:
    z = _effect_quantile(eff)
    gates = het["gates"]
    rows = [Interval(f"Q{g['group']}\n[{g['cate_from']:.2g}, {g['cate_to']:.2g}]", g["effect"],
                     g["effect"] - z * g["stderr"], g["effect"] + z * g["stderr"]) for g in gates]
    chart = charts.interval_chart(rows, title=f"Group average effects (GATES) by CATE quartile, "
                                              f"{100 * (1 - eff['alpha']):.0f}% intervals",
                                  value_label=unit, category_label="quartile of the predicted CATE [its range]",
                                  bars=True, height=330, lines={f"{eff['estimand']} {eff['ate']:.3g}": eff["ate"]})
    cal, rate = het["calibration"], het["rate"]
    calibration = _table([("mean forest prediction (1: the average is right)", cal["mean_forest_prediction"],
                           cal["mean_stderr"], cal["mean_pvalue"]),
                          ("differential forest prediction (1: the heterogeneity is right)",
                           cal["differential_forest_prediction"], cal["differential_stderr"],
                           cal["differential_pvalue"]),
                          ("RATE (AUTOC): gain of treating by the CATE's ranking", rate["autoc"], rate["stderr"],
                           rate["pvalue"])],
                         ("calibration test", "estimate", "std. error", "p-value (one-sided, against 0, as grf)"))
    table = _table([(f"Q{g['group']}", f"[{g['cate_from']:.3g}, {g['cate_to']:.3g}]", g.get("rows"), g["effect"],
                     g["stderr"]) for g in gates], ("quartile", "CATE range", "rows", "effect", "std. error"))
    note = f'<p class="note">{html.escape(cal["note"])}</p>' if cal.get("note") else ""  # why a row is NaN
    held = f'<p class="note">{html.escape(het["ranking"])} (the CATE a row\'s own data never saw).</p>' \
        if het.get("ranking") else ""
    return _section("Heterogeneity", held, chart, calibration, note, table)


# ---------------------------------------------------------------- uplift (its section: components/uplift.py)
def uplift_section(section: dict | None, outcome: str = "the outcome", title: str = "Uplift") -> str:
    """Gain and Qini curves of a ranking by the CATE, with their areas: the evaluation's `uplift`
    section, or one model's entry of the monitor's. Nothing when the section is absent or has no
    curve."""
    if not section or not isinstance(section.get("curve"), dict):
        return ""
    return _section(title, *_uplift_charts({"": section}, outcome), _uplift_table({"": section}))


def _uplift_charts(models: dict[str, dict], outcome: str) -> list[str]:
    """The gain and Qini curves of one or more models' uplift results (keyed by model; "" for one)."""
    gain, qini, random = {}, {}, {}
    for name, result in models.items():
        curve = result["curve"]
        share = [100 * s for s in curve.get("share", [])]
        prefix = f"{name}: " if name else ""
        if "gain" in curve:
            gain[f"{prefix}ranked by its CATE"] = (share, curve["gain"])
        if "qini" in curve:
            qini[f"{prefix}Qini"] = (share, curve["qini"])
        if "random" in curve and not random:  # the same units: one random order for all
            random["random order"] = (share, curve["random"])
    if gain:
        gain.update(random)  # last, so that each model keeps its colour in both charts
    x_label = "share of units treated, highest predicted CATE first (%)"
    out = []
    if gain:
        out.append(charts.line_chart(gain, "Gain curve: effect gained per unit of the population", x_label,
                                     f"cumulative gain ({outcome} units per unit)", dashed=["random order"]))
    if qini:
        out.append(charts.line_chart(qini, "Qini curve: gain over treating the same share at random", x_label,
                                     f"gain over random ({outcome} units per unit)"))
    return [f'<div class="charts">{"".join(f"<div>{c}</div>" for c in out)}</div>'] if out else []


def _uplift_table(models: dict[str, dict]) -> str:
    keys = ("auuc", "auuc_stderr", "qini", "qini_stderr", "qini_pvalue")
    return _table([(name or r.get("ranking", "CATE"), *(r.get(k) for k in keys)) for name, r in models.items()],
                  ("ranking", "AUUC", "std. error", "Qini coefficient", "std. error", "p-value (beats random)"))


def _overlap_section(ov: dict, treatment: str) -> str:
    hist = ov["histogram"]
    lo, hi = ov["bounds"]
    marks = {f"overlap bounds {lo}, {hi}": [lo, hi]}
    if ov.get("crump_alpha"):
        marks[f"Crump et al. trimming at {ov['crump_alpha']:.3f}"] = [ov["crump_alpha"], 1 - ov["crump_alpha"]]
    chart = charts.histogram(hist["edges"], {"treated": hist["treated"], "control": hist["control"]},
                             title="Estimated propensity by arm", x_label=f"P({treatment} = 1 | covariates) "
                             "(probability)", y_label="rows", lines=marks)
    table = _table([(ov["propensity_min"], ov["propensity_max"], ov["share_outside"], ov.get("crump_share_trimmed"))],
                   ("min propensity", "max propensity", f"share outside [{lo}, {hi}]",
                    "share the Crump et al. rule trims"))
    return _section("Overlap", chart, table)


def _treatment_variance_section(tv: dict, treatment: str) -> str:
    hist = tv["histogram"]
    chart = charts.histogram(hist["edges"], {"rows": hist["counts"]},
                             title=f"Estimated Var({treatment} | covariates) over its mean",
                             x_label="ratio (1 = an average row; the top 1% in the last bin)", y_label="rows",
                             lines={f"overlap bound {tv['bound']:g}": [tv["bound"]]})
    q = tv["ratio_quantiles"]
    table = _table([(tv["ratio_min"], q["0.01"], q["0.05"], q["0.5"], tv["share_outside"])],
                   ("min ratio", "1% quantile", "5% quantile", "median", f"share under {tv['bound']:g}"))
    return _section("Overlap: how much the treatment varies given the covariates", chart, table)


# The weights of evaluate.balance's weighted SMD: a weight column's weights count too (1 without one).
WEIGHTED_SMD = "inverse-propensity (x row weight) weighted"


def _balance_section(bal: dict, treatment: str) -> str:
    names = list(bal["values"])
    weighted = bal.get("weighted_values")
    size = {c: max(abs(bal["values"][c]), abs(weighted[c]) if weighted else 0.0) for c in names}
    shown = sorted(names, key=lambda c: -size[c])[:MAX_BALANCE_ROWS]
    if bal["statistic"] == "smd":
        series = {"raw": [bal["values"][c] for c in shown]}
        if weighted:
            series[WEIGHTED_SMD] = [weighted[c] for c in shown]
        label, what = "standardized mean difference, treated - control (SD units)", "standardized mean difference"
    else:
        series = {"correlation": [bal["values"][c] for c in shown]}
        label, what = f"correlation with {treatment}", f"correlation with {treatment}"
    more = f" (the {len(shown)} largest of {len(names)})" if len(shown) < len(names) else ""
    chart = charts.bar_chart(shown, series, title=f"Balance: {what} per covariate{more}", value_label=label,
                             horizontal=True, width=620,
                             lines={f"warning threshold \u00b1{SMD_WARNING}": [-SMD_WARNING, SMD_WARNING]})
    rows = [(c, bal["values"][c], *((weighted[c],) if weighted else ())) for c in names]
    table = _table(sorted(rows, key=lambda r: -abs(r[1])), ("covariate", bal["statistic"], *(
        (f"{WEIGHTED_SMD} smd",) if weighted else ())))
    return _section("Balance", chart, f"<details><summary>values</summary>{table}</details>")


def _nuisance_section(scores: dict) -> str:
    return _section("Nuisance models (mean out-of-fold score)", _table(list(scores.items()), ("score", "value")))


def _refuters_section(ref: dict, eff: dict, gate: dict, verdict: dict, unit: str) -> str:
    """Each refuter's estimate with an interval at the gate's level (95% for a check switched
    off): the placebo's must hold 0, the refits' (a prediction interval for one more refit) the
    run's ATE; coloured as the verdict judged it (a review: red had followed the p-value alone,
    where the gate passed a negligible move or did not check at all)."""
    levels = {key: gate.get(key) or 0.05 for key in ("min_placebo_pvalue", "min_refuter_pvalue")}
    placebo_level, refit_level = levels["min_placebo_pvalue"], levels["min_refuter_pvalue"]
    shown = {key: f"{100 * (1 - level):g}%" + ("" if gate.get(key) else ", not gated") for key, level in levels.items()}

    def colour(prefix: str) -> str:
        if any(r.startswith(prefix) for r in verdict.get("reasons", ())):
            return FAIL_COLOUR
        return WARN_COLOUR if any(w.startswith(prefix) for w in verdict.get("warnings", ())) else PASS_COLOUR

    rows, table = [], []
    p = ref["placebo"]
    half = _z(placebo_level) * p.get("stderr", float("nan"))
    rows.append(Interval(f"placebo treatment\np = {p['p_value']:.2g}", p["effect"], p["effect"] - half,
                         p["effect"] + half, colour("placebo:")))
    table.append(("placebo treatment (effect should be 0)", p["effect"], p["p_value"]))
    from .refuters import data_subset_label  # loaded already where a report is rendered: evaluate ran it

    for key, name in (("random_common_cause", "random common cause"),
                      ("data_subset", data_subset_label(ref["data_subset"]))):
        r = ref[key]
        draws = tuple(r.get("effects", ()))
        spread = r.get("spread", float("nan"))
        q = float(stats.t.ppf(1 - refit_level / 2, max(len(draws) - 1, 1))) if draws else _z(refit_level)
        rows.append(Interval(f"{name}\np = {r['p_value']:.2g}", r["effect"], r["effect"] - q * spread,
                             r["effect"] + q * spread, colour(f"{key.replace('_', ' ')}:"), draws))
        table.append((f"{name} (ATE should not move)", r["effect"], r["p_value"]))
    chart = charts.interval_chart(
        rows, title=f"Refuters: estimates with intervals at the gate's levels (placebo {shown['min_placebo_pvalue']},"
                    f" refits {shown['min_refuter_pvalue']}); circles: single refits", value_label=unit,
        lines={f"the run's {eff['estimand']}, {eff['ate']:.3g}": eff["ate"]}, width=620, height=340)
    note = ('<p class="note">The placebo\'s interval must hold 0; a refit interval (for one more refit) must hold '
            "the run's ATE. Red: the gate fails on it; amber: the verdict warns about it.</p>")
    return _section("Refuters", chart, note, _table(table, ("refuter", "estimate", "p-value")))


def _sensitivity_section(sens: dict, eff: dict, unit: str) -> str:
    level = f"{100 * (1 - eff['alpha']):.0f}%"
    theta = sens.get("theta", eff["ate"])
    rows = [Interval(f"estimate\n{level} interval", eff["ate"], eff["ate_lower"], eff["ate_upper"]),
            Interval(f"bias bounds\nc_y = {sens['c_y']:g}, c_t = {sens['c_t']:g}", theta, *sens["theta_bounds"],
                     charts.PALETTE[4]),
            Interval("confidence bounds\nwith that confounder", theta, *sens["ci_bounds"], charts.PALETTE[1])]
    chart = charts.interval_chart(rows, title="How far an unobserved confounder could move the average effect",
                                  value_label=unit)
    robust = (f"Robustness value {sens['robustness_value']:.3f}: a confounder explaining that share of the "
              "residual variance of both treatment and outcome would bring the effect's interval to 0 "
              f"({sens['robustness_value_theta']:.3f} for the point estimate)."
              if _finite(sens.get("robustness_value")) else
              "Robustness value undefined: the bounds cannot be computed for these scores (an infinite or "
              "undefined effect, or residuals the nuisance models fit exactly).")
    text = ("<p>" + robust
            + (f" These figures rest on the analytic standard error ({eff['ate_stderr']:.4g}); the interval shown for "
               f"the estimate is the {html.escape(str(eff['ate_interval']))}." if str(eff.get("ate_interval", ""))
               .startswith("bootstrap") and _finite(eff.get("ate_stderr")) else "") + "</p>")
    table = _table([(sens["c_y"], sens["c_t"], f"[{sens['theta_bounds'][0]:.4g}, {sens['theta_bounds'][1]:.4g}]",
                     f"[{sens['ci_bounds'][0]:.4g}, {sens['ci_bounds'][1]:.4g}]")],
                   ("c_y", "c_t", "bias bounds on theta", "confidence bounds"))
    return _section("Sensitivity to an unobserved confounder", text, chart, table)


def _graph_section(graph: dict | None, checks: dict | None = None) -> str:
    """The declared causal graph (the card's `graph` section), or the statement that none was given;
    with `checks` (evaluate's `graph_checks`), the table of its implied independences tested."""
    if not graph:
        return ""
    if not graph.get("given"):
        return _section("Causal graph", f'<p class="note">{html.escape(graph.get("note", "no graph was given"))}</p>')
    chart = charts.graph_chart(graph, title=f"Causal graph (sha256 {graph['sha256'][:12]}), as declared")
    criterion = graph.get("criterion")
    adjustment = ", ".join(graph.get("adjustment_set", ())) or "the empty set"
    text = (f"<p>Adjustment set: {html.escape(adjustment)}. {html.escape(criterion)}.</p>" if criterion else "")
    tests = ""
    if checks and checks.get("given") and checks.get("statements"):
        tests = (f"<p>Implied independences tested ({html.escape(str(checks['test']))}, "
                 f"{html.escape(str(checks['correction']))}-adjusted):</p>"
                 + _table([(t["statement"], t["statistic"], t["p_value"], t["adjusted_p_value"])
                           for t in sorted(checks["statements"], key=lambda t: t["adjusted_p_value"])],
                          ("independence", "statistic", "p-value", "adjusted p-value")))
    return _section("Causal graph", chart, text, tests)


def _finite(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


# ----------------------------------------------------------------------------- monitoring
def render_monitor_report(result: dict, run_id: str = "") -> str:
    """The monitoring report of `result` (`monitor.run_monitor`'s dict, or `monitor.monitor`'s with
    `model` and `version` added); `run_id`: the monitoring run's (empty: a local run)."""
    from .monitor import rows_text  # loaded already: the report renders its result

    model, version = result.get("model"), result.get("version")
    training = result.get("training") or {}
    y = training.get("outcome") or "the outcome"
    title = f"tauforge monitor: {model} version {version}" if model else "tauforge monitor"
    facts = [("model", str(model or "not named")), ("served version", _fmt(version)),
             ("monitoring run", run_id or "local (tauforge monitor)"),
             ("version trained by run", training.get("run_id") or "not recorded"),
             ("reference data", _fingerprint(training.get("data_fingerprint"))),
             ("rows", ", ".join(rows_text(result, side) for side in ("live", "reference")))]
    facts.append(("window", f"rows logged since {result['since']}" if result.get("since") else "the whole log"))
    if result.get("future_rows"):
        facts.append(("left out (stamped ahead of the clock)", f"{result['future_rows']['rows']} rows, the latest "
                                                                f"{result['future_rows']['latest']}"))
    if result.get("unreadable_files"):
        facts.append(("skipped (unreadable)", "; ".join(result["unreadable_files"])))
    if result.get("other_champion_versions"):
        facts.append(("not judged here", ", ".join(f"version {v} ({n} champion rows)"
                                                     for v, n in result["other_champion_versions"].items())))
    checks = result.get("checks", {})
    body = [_recommendation(result), _alerts_section(result["alerts"], checks)]
    if "covariate_drift" in checks:
        body.append(_drift_section(checks["covariate_drift"], checks.get("domain_classifier"),
                                   {a["covariate"] for a in result["alerts"] if a["check"] == "covariate_drift"},
                                   checks.get("test_level"), checks.get("psi_alert")))
    if "support" in checks:
        sup = checks["support"]
        body.append(_section("Support (live rows outside the training data's range)", _table(
            [(sup["share_outside"], sup["null_bound"], sup["p_value"],
              ", ".join(f"{c} {v:.3f}" for c, v in sup["by_covariate"].items() if v > 0) or "none")],
            ("share outside", "at most, from the training distribution", "p-value", "by covariate"))))
    if "propensity" in checks:
        body.append(_propensity_drift_section(checks["propensity"], training.get("treatment") or "the treatment"))
    if "effect" in checks:
        body.append(_effect_drift_section(checks["effect"], y))
    if "effect_calibration" in checks:
        cal = checks["effect_calibration"]
        body.append(_section("Effect calibration (logged outcomes of explored rows)", _table(
            [(cal["rows"], cal.get("logged_effect"), cal.get("served_effect"), cal.get("gap_training"),
              cal.get("p_value"), cal.get("slope"), cal.get("slope_p_value"))],
            ("rows", "effect, logged", "CATE, served", "gap at training", "p-value (gap moved)",
             "slope on the CATE", "p-value (turned)")),
            f'<p class="note">{html.escape(cal["note"])}</p>' if cal.get("note") else ""))
    if "shadow" in checks:
        sh = checks["shadow"]
        note = f'<p class="note">{html.escape(sh["note"])}</p>' if sh.get("note") else ""
        body.append(_section("Shadow agreement (champion against shadow, same requests)", _table(
            [(sh.get("version"), sh["pairs"], sh["spearman"], sh["top_decile_overlap"], sh["action_disagreement"])],
            ("shadow version", "pairs", "Spearman correlation of CATE", "top-decile overlap", "action disagreement")),
            note))
    if "policy" in result:
        body.append(_policy_section(result["policy"], y))
    return _page(title, facts, body, result, "The monitor's result")


def _recommendation(result: dict) -> str:
    rec = result["recommendation"]
    css = {"promote": "pass", "roll back": "fail"}.get(rec, "hold")
    retrain = ('<strong class="fail-text">retrain</strong>: drift calls for it' if result.get("retrain")
               else "drift not judged (see below)" if result.get("note") else "no retraining needed")
    note = f"<p class=\"note\">{html.escape(result['note'])}</p>" if result.get("note") else ""
    return (f'<div class="verdict {css}"><strong>Recommendation: {html.escape(rec)}</strong> '
            f"(challenger against champion); {retrain}.{note}</div>")


def _alerts_section(alerts: list[dict], checks: dict) -> str:
    level = checks.get("test_level")
    budget = (f'<p class="note">{checks.get("tests")} tests share one false-alarm budget: each is judged at '
              f"p &lt; {level:.2g} (Bonferroni).</p>" if level else "")
    if not alerts:
        return _section("Alerts", "<p>none</p>", budget)
    rows = [(a["check"], a.get("covariate"), a["message"]) for a in alerts]
    return _section(f"Alerts ({len(alerts)})", _table(rows, ("check", "covariate", "message")), budget)


def _drift_section(drift: dict, domain: dict | None, alerted: set, level: float | None,
                   psi_alert: float | None) -> str:
    """Reference against live rows, one small chart per covariate, alerting ones first and framed."""
    plots = []
    for name in sorted(drift, key=lambda c: (c not in alerted, list(drift).index(c))):
        d = drift[name]
        hist = d.get("histogram")
        if not hist:
            continue
        test = {"ks": "KS", "chi_square": "chi-square"}.get(d["test"], d["test"])
        title = f"{name}: {test} p = {d['p_value']:.2g}, PSI {d['psi']:.2f}" + (" (alert)" if name in alerted else "")
        series = {"reference": hist["reference"], "live": hist["live"]}
        if "levels" in hist:
            total = {k: sum(v) or 1 for k, v in series.items()}
            chart = charts.bar_chart([_fmt(v) if not float(v).is_integer() else str(int(v)) for v in hist["levels"]],
                                     {k: [100 * c / total[k] for c in v] for k, v in series.items()}, title=title,
                                     value_label="share of rows (%)", category_label=f"{name} (level)", width=330,
                                     height=240)
        else:
            chart = charts.histogram(hist["edges"], series, title=title, x_label=f"{name} (its units)",
                                     y_label="share of rows (%)", normalize=True, width=330, height=240)
        plots.append(f'<div class="{"alert" if name in alerted else ""}">{chart}</div>')
    text = ""
    if domain:
        text = (f"<p>Domain classifier: held-out AUC {domain['auc']:.3f} telling live rows from reference rows "
                f"(0.5: indistinguishable), p = {domain['p_value']:.2g}.</p>")
    note = (f'<p class="note">Shares of rows per bin (a level\'s, for a covariate of at most 10 integer values); '
            f"a PSI over {psi_alert:g} or p &lt; {level:.2g} alerts.</p>" if level and psi_alert else "")
    return _section("Covariate drift (reference against live rows)", text, note,
                    f'<div class="charts">{"".join(plots)}</div>')


def _reference_against_live(hist: dict, title: str, x_label: str, lines: dict | None = None) -> str:
    return charts.histogram(hist["edges"], {"reference": hist["reference"], "live": hist["live"]}, title=title,
                            x_label=x_label, y_label="share of rows (%)", normalize=True, lines=lines)


def _propensity_drift_section(pr: dict, treatment: str) -> str:
    if "ks_p_value" not in pr:  # not judged (`note` says why)
        return _section("Propensity and overlap", f"<p>{html.escape(pr.get('note', 'not judged'))}</p>")
    parts = []
    if "histogram" in pr:
        parts.append(_reference_against_live(
            pr["histogram"], f"Training propensity of reference and live rows (KS p = {pr['ks_p_value']:.2g})",
            f"P({treatment} = 1 | covariates) (probability)"))
    parts.append(_table([(pr["ks_p_value"], pr["psi"], pr["share_outside_reference"], pr["share_outside_live"],
                          pr.get("policy_p_value"))],
                        ("KS p-value", "PSI", "share outside overlap, reference", "share outside overlap, live",
                         "treatment policy p-value")))
    return _section("Propensity and overlap", *parts)


def _effect_drift_section(ef: dict, outcome: str) -> str:
    parts = []
    if "cate_histogram" in ef:
        parts.append(_reference_against_live(
            ef["cate_histogram"], f"Served CATE, reference against live rows (KS p = {ef['cate_ks_p_value']:.2g})",
            f"CATE: effect on {outcome} ({outcome} units)",
            {f"mean, reference: {ef['ate_reference']:.3g}": ef["ate_reference"],
             f"mean, live: {ef['ate_live']:.3g}": ef["ate_live"]}))
    parts.append(_table([(ef["ate_reference"], ef["ate_live"], ef["ate_p_value"], ef["cate_ks_p_value"],
                          ef["cate_psi"])],
                        ("ATE, reference", "ATE, live", "p-value (ATE moved)", "KS p-value (CATE)", "PSI (CATE)")))
    return _section("Effect drift", *parts)


def _policy_section(policy: dict, outcome: str) -> str:
    """Each version's doubly robust value with a 95% interval, and their difference with its
    confidence sequence (valid at every look): a shadow's policy values on the same requests, or
    a canary's mean outcomes on each version's own traffic."""
    canary = policy.get("judged") == "canary"
    title = ("Canary (each version's mean outcome on its own traffic)" if canary
             else "Policy value (champion against challenger, logged outcomes)")
    if "value_champion_dr" not in policy:
        return _section(title, f'<p class="note">{html.escape(policy.get("note", ""))}</p>')
    z = _z(0.05)
    rows = []
    for who, colour in (("champion", charts.PALETTE[0]), ("challenger", charts.PALETTE[2])):
        value, se = policy[f"value_{who}_dr"], policy.get(f"value_{who}_dr_stderr", float("nan"))
        rows.append(Interval(f"{who}\n(95% interval)", value, value - z * se, value + z * se, colour))
    lo, hi = policy["confidence_sequence"]
    rows.append(Interval("challenger - champion\n(confidence sequence)", policy["difference_dr"], lo, hi,
                         charts.PALETTE[3]))
    what = "mean outcome of its traffic" if canary else "policy values"
    chart = charts.interval_chart(rows, title=f"{what[0].upper() + what[1:]} (doubly robust, {policy['rows']} "
                                              "logged outcomes)",
                                  value_label=f"mean {outcome} under the {'version' if canary else 'policy'} "
                                              f"({outcome} units)", width=560)
    if canary:
        table = _table([(policy["rows_champion"], policy["rows_challenger"], policy["units"],
                         policy["value_champion_mean"], policy["value_challenger_mean"], policy["value_champion_dr"],
                         policy["value_challenger_dr"], policy["difference_dr"], f"[{lo:.4g}, {hi:.4g}]",
                         policy["recommendation"])],
                       ("champion rows", "challenger rows", "units", "champion (mean)", "challenger (mean)",
                        "champion (DR)", "challenger (DR)", "difference (DR)", "confidence sequence",
                        "recommendation"))
        note = f'<p class="note">{html.escape(policy["note"])}</p>' if policy.get("note") else ""
        return _section(title, chart, table, note)
    table = _table([(policy["rows"], policy["value_champion_dr"], policy["value_challenger_dr"],
                     policy["value_champion_ipw"], policy["value_challenger_ipw"], policy["difference_dr"],
                     f"[{lo:.4g}, {hi:.4g}]", policy["recommendation"])],
                   ("rows", "champion (DR)", "challenger (DR)", "champion (IPW)", "challenger (IPW)",
                    "difference (DR)", "confidence sequence", "recommendation"))
    return _section(title, chart, table, monitor_uplift(policy.get("uplift"), outcome))


# ------------------------------------------------------- uplift of champion and challenger (components/uplift.py)
def monitor_uplift(section: dict | None, outcome: str) -> str:
    """The champion's and challenger's gain and Qini curves on the same logged units, when the
    monitor's policy result has them (`policy['uplift']`, one entry per model); nothing otherwise."""
    if not section:
        return ""
    models = {name: r for name, r in section.items() if isinstance(r, dict) and isinstance(r.get("curve"), dict)}
    if not models:
        note = section.get("note")
        return f'<p class="note">{html.escape(note)}</p>' if note else ""
    diff = section.get("qini_difference")
    text = (f"<p>Qini coefficient {html.escape(diff['of'])}: {diff['value']:.4g} (std. error {diff['stderr']:.2g}, "
            f"p = {diff['pvalue']:.2g}).</p>" if isinstance(diff, dict) and "value" in diff else "")
    return "<h3>Uplift</h3>" + "".join(_uplift_charts(models, outcome)) + text + _uplift_table(models)
