"""The HTML report of an evaluation: one self-contained page (inline SVG, no scripts), as
KFP's UI shows an HTML artifact."""

import html

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
.pass{color:#17692f}.fail{color:#b00020}.warn{color:#8a6d00}svg{background:#fafafa}"""


def bar_chart(edges: list[float], series: dict[str, list[int]], title: str, width: int = 560,
              height: int = 200) -> str:
    """Histogram bars over `edges`, one translucent colour per series, as an SVG element."""
    colours = ["#1f77b4", "#d62728", "#2ca02c"]
    n_bins = len(edges) - 1
    top = max((max(c) for c in series.values() if c), default=1) or 1
    pad, bw = 30, (width - 40) / n_bins
    parts = [f'<svg width="{width}" height="{height + 40}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad}" y="14" font-size="13">{html.escape(title)}</text>']
    for k, (name, counts) in enumerate(series.items()):
        colour = colours[k % len(colours)]
        for i, c in enumerate(counts):
            h = height * c / top
            parts.append(f'<rect x="{pad + i * bw:.1f}" y="{20 + height - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{colour}" fill-opacity="0.55"/>')
        parts.append(f'<text x="{width - 150}" y="{34 + 14 * k}" font-size="12" fill="{colour}">'
                     f'{html.escape(name)}</text>')
    parts.append(f'<text x="{pad}" y="{height + 36}" font-size="11">{edges[0]:.3g}</text>')
    parts.append(f'<text x="{width - 50}" y="{height + 36}" font-size="11">{edges[-1]:.3g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[tuple], header: tuple) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_report(result: dict, title: str = "tauforge evaluation") -> str:
    v, eff = result["verdict"], result["effect"]
    status = ('<p class="pass">Gate passed.</p>' if v["passed"] else
              '<p class="fail">Gate failed: ' + "; ".join(html.escape(r) for r in v["reasons"]) + "</p>")
    warnings = "".join(f'<li class="warn">{html.escape(w)}</li>' for w in v["warnings"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>", status,
             f"<ul>{warnings}</ul>" if warnings else "",
             f"<h2>Average effect ({html.escape(eff['estimand'])})</h2>",
             _table([(eff["method"], eff["ate"], eff["ate_stderr"],
                      f"[{eff['ate_lower']:.4g}, {eff['ate_upper']:.4g}] ({eff['ate_interval']})")],
                    ("method", eff["estimand"], "std. error", f"{100 * (1 - eff['alpha']):.0f}% interval")),
             "<h2>Conditional effects (out-of-bag CATE)</h2>",
             bar_chart(eff["cate_histogram"]["edges"], {"CATE": eff["cate_histogram"]["counts"]},
                       "distribution of the CATE over training rows"),
             _table([tuple(eff["cate_quantiles"].values())], tuple(f"q{q}" for q in eff["cate_quantiles"]))]
    if "overlap" in result:
        ov = result["overlap"]
        parts += ["<h2>Overlap</h2>",
                  bar_chart(ov["histogram"]["edges"], {"treated": ov["histogram"]["treated"],
                                                       "control": ov["histogram"]["control"]},
                            "estimated propensity by arm"),
                  _table([(ov["propensity_min"], ov["propensity_max"], ov["share_outside"])],
                         ("min propensity", "max propensity", f"share outside {ov['bounds']}"))]
    bal = result["balance"]
    if "weighted_values" in bal:
        rows = sorted(((c, v, bal["weighted_values"][c]) for c, v in bal["values"].items()), key=lambda r: -abs(r[1]))
        parts += ["<h2>Balance (standardized mean difference per covariate)</h2>",
                  _table(rows, ("covariate", "raw smd", "inverse-propensity weighted smd"))]
    else:
        parts += [f"<h2>Balance ({bal['statistic']} with the treatment per covariate)</h2>",
                  _table(sorted(bal["values"].items(), key=lambda kv: -abs(kv[1])), ("covariate", bal["statistic"]))]
    ref = result["refuters"]
    sens = result["sensitivity"]
    het = result["heterogeneity"]
    cal, rate = het["calibration"], het["rate"]
    parts += ["<h2>Nuisance models (mean out-of-fold score)</h2>",
              _table(list(result["nuisance"].items()), ("score", "value")),
              "<h2>Refuters</h2>",
              _table([("placebo treatment (effect should be 0)", ref["placebo"]["effect"], ref["placebo"]["p_value"]),
                      ("random common cause (ATE should not move)", ref["random_common_cause"]["effect"],
                       ref["random_common_cause"]["p_value"]),
                      ("80% data subset (ATE should not move)", ref["data_subset"]["effect"],
                       ref["data_subset"]["p_value"])], ("refuter", "estimate", "p-value")),
              "<h2>Sensitivity to an unobserved confounder</h2>",
              f"<p>Robustness value {sens['robustness_value']:.3f}: a confounder explaining that share of the "
              "residual variance of both treatment and outcome would bring the effect's interval to 0 "
              f"({sens['robustness_value_theta']:.3f} for the point estimate).</p>",
              _table([(sens["c_y"], sens["c_t"], f"[{sens['theta_bounds'][0]:.4g}, {sens['theta_bounds'][1]:.4g}]",
                       f"[{sens['ci_bounds'][0]:.4g}, {sens['ci_bounds'][1]:.4g}]")],
                     ("c_y", "c_t", "bias bounds on theta", "confidence bounds")),
              "<h2>Heterogeneity</h2>",
              _table([("mean forest prediction", cal["mean_forest_prediction"], cal["mean_stderr"], cal["mean_pvalue"]),
                      ("differential forest prediction", cal["differential_forest_prediction"],
                       cal["differential_stderr"], cal["differential_pvalue"]),
                      ("RATE (AUTOC)", rate["autoc"], rate["stderr"], rate["pvalue"])]
                     + ([("Qini coefficient (uplift over random targeting)", result["uplift"]["qini"],
                          result["uplift"]["qini_stderr"], result["uplift"]["qini_pvalue"])]
                        if "uplift" in result else []),
                     ("calibration test", "estimate", "std. error", "p-value (one-sided)")),
              bar_chart([0, 1, 2, 3, 4], {"effect by CATE quartile": [max(g["effect"], 0) for g in het["gates"]]},
                        "group average effect by CATE quartile (GATES; negative effects drawn as 0)"),
              _table([(g["group"], f"[{g['cate_from']:.3g}, {g['cate_to']:.3g}]", g["effect"], g["stderr"])
                      for g in het["gates"]], ("quartile", "CATE range", "effect", "std. error")),
              "</body></html>"]
    return "".join(parts)
