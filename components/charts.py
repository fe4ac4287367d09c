"""Charts for the HTML reports, as inline SVG: no scripts, no external assets, so a report is one
self-contained page that KFP's UI (which shows an HTML artifact in a sandboxed frame) and a browser
opened from disk both show as it is.

`Axes` owns what every chart has: a plotting area, "nice" ticks (1, 2 or 5 times a power of ten,
covering the data), tick labels, gridlines, axis titles (with units: the caller names them), a
zero line wherever 0 lies inside a numeric axis, a title and a legend. The primitives draw on it:
  histogram       one or more series of counts over shared bin edges, overlaid (CATE, propensity
                  by arm, reference against live rows of a covariate)
  bar_chart       grouped bars per category, vertical or horizontal, with reference lines
                  (standardized mean differences against their 0.1 threshold)
  line_chart      named series of (x, y) points with a legend (Qini and uplift curves)
  interval_chart  estimates with error bars (ATE, GATES, refuters, policy values)
  graph_chart     a causal DAG drawn in layers (networkx's topological generations), latent nodes
                  dashed, treatment and outcome highlighted; it has no axes
Negative values are drawn below (left of) zero. Every text is escaped. Text widths are estimated
from the font size (`CHAR_WIDTH`), which is what sizes the margins; tests/test_reports.py checks
in headless Chromium that no label leaves its chart.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
TICK_SIZE, LABEL_SIZE, TITLE_SIZE = 11, 12, 13
# Average advance of a character as a share of the font size: DejaVu Sans (the widest of the usual
# sans-serif fonts) averages about 0.6 em over digits and lower-case letters; 0.62 leaves room.
CHAR_WIDTH = 0.62
ZERO_COLOUR, AXIS_COLOUR, GRID_COLOUR = "#222", "#666", "#e4e4e4"


def histogram_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """`bins` equal bins over [lo, hi], as np.histogram draws them; a single value gets a range
    around it, wide enough for `bins` bins where it is large or its values a few ulps apart (0.3
    and 0.1 x 3, nanosecond timestamps), where NumPy finds no finite-sized bins and raises."""
    try:
        return np.histogram_bin_edges([lo, hi], bins)
    except ValueError:
        half = max(0.5, bins * float(np.spacing(abs(lo))))  # NumPy's +-0.5 vanishes past 2**52
        return np.histogram_bin_edges([lo], bins, range=(lo - half, lo + half))


def esc(text) -> str:
    """Text made safe for SVG/HTML content and attribute values."""
    return html.escape(str(text), quote=True)


def text_width(text: str, size: float = TICK_SIZE) -> float:
    """Estimated rendered width of one line of `text` at font `size` (px)."""
    return len(text) * size * CHAR_WIDTH


def _finite(values: Iterable) -> list[float]:
    out = []
    for v in values:
        if v is not None:
            v = float(v)
            if math.isfinite(v):
                out.append(v)
    return out


def _is_finite(v) -> bool:
    return v is not None and math.isfinite(float(v))


# ----------------------------------------------------------------------------- ticks
def nice_step(span: float) -> float:
    """The step 1, 2 or 5 times a power of ten closest to `span` (Heckbert's nice numbers)."""
    exponent = math.floor(math.log10(span))
    fraction = span / 10**exponent
    nice = 1 if fraction < 1.5 else 2 if fraction < 3.5 else 5 if fraction < 7.5 else 10
    return nice * 10.0**exponent


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` evenly spaced round values whose first is at most `lo` and whose last is at
    least `hi` (an axis from the first to the last covers the data). A single value gets a range
    around it."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need finite bounds, got {lo} and {hi}")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    step = nice_step((hi - lo) / max(count - 1, 1))
    first, last = math.floor(lo / step), math.ceil(hi / step)
    ticks = [k * step for k in range(first, last + 1)]
    # k * step can round past the bound it was meant to cover: extend by a step where it did.
    while ticks[0] > lo:
        ticks.insert(0, ticks[0] - step)
    while ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def tick_label(value: float, step: float) -> str:
    """`value` with as many decimals as the tick step needs; thousands separated; no '-0'."""
    if step >= 1e7 or 0 < step < 1e-5:  # 1.25e-06: mantissa digits down to the step's
        magnitude = math.floor(math.log10(max(abs(value), step)))
        text = f"{value:.{max(0, magnitude - math.floor(math.log10(step) + 1e-9))}e}"
    else:
        decimals = max(0, -math.floor(math.log10(step) + 1e-9))
        text = f"{value:,.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text[1:].replace(",", "")) == 0 else text


# ----------------------------------------------------------------------------- scales
class Linear:
    """A numeric axis over `values` (and 0 with `include_zero`): nice ticks that cover them; the
    axis runs from the first tick to the last. `place` maps it onto pixels."""

    def __init__(self, values: Iterable, include_zero: bool = False, count: int = 5):
        finite = _finite(values)
        if include_zero:
            finite.append(0.0)
        self.empty = not finite
        self.data_lo, self.data_hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        self.retick(count)
        self.start = self.end = 0.0

    def retick(self, count: int) -> None:
        self.count = count
        self.ticks = nice_ticks(self.data_lo, self.data_hi, count)
        self.lo, self.hi = self.ticks[0], self.ticks[-1]

    def place(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    def __call__(self, value: float) -> float:
        return self.start + (value - self.lo) / (self.hi - self.lo) * (self.end - self.start)

    @property
    def step(self) -> float:
        return self.ticks[1] - self.ticks[0]

    def labels(self) -> list[tuple[float, str]]:
        return [(t, tick_label(t, self.step)) for t in self.ticks]

    def label_width(self) -> float:
        return max(text_width(text) for _, text in self.labels())

    @property
    def has_zero(self) -> bool:
        return self.lo < 0 < self.hi


class Bands:
    """A categorical axis: one band per label, in order (top to bottom when vertical). A label may
    hold line breaks ('\\n'); a line longer than `max_chars` is cut with an ellipsis (the whole
    label stays in a tooltip)."""

    def __init__(self, labels: Sequence[str], padding: float = 0.25, max_chars: int = 28):
        self.labels = [str(label) for label in labels]
        self.padding = padding
        self.lines = [[_clip(line, max_chars) for line in label.split("\n")] for label in self.labels]
        self.start = self.end = 0.0

    def place(self, start: float, end: float) -> None:
        self.start, self.end = start, end

    @property
    def band(self) -> float:
        return (self.end - self.start) / max(len(self.labels), 1)

    def center(self, i: int) -> float:
        return self.start + (i + 0.5) * self.band

    def inner(self) -> float:
        """Width of the drawn part of a band (the band less its padding), signed like the axis."""
        return self.band * (1 - self.padding)

    def label_width(self) -> float:
        return max((text_width(line) for lines in self.lines for line in lines), default=0.0)

    def line_count(self) -> int:
        return max((len(lines) for lines in self.lines), default=1)


def _clip(line: str, max_chars: int) -> str:
    return line if len(line) <= max_chars else line[: max_chars - 1] + "\u2026"


def _wrap(text: str, width: float, size: float) -> list[str]:
    """Words of `text` in lines of at most `width` px at font `size` (a long word gets its own line)."""
    lines: list[str] = []
    for word in str(text).split():
        if lines and text_width(lines[-1] + " " + word, size) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


# ----------------------------------------------------------------------------- axes
@dataclass
class LegendEntry:
    name: str
    colour: str
    kind: str = "box"  # box (a filled swatch), line, dashed, point


@dataclass
class Axes:
    """A chart's frame: x and y scales (`Linear` or `Bands`) placed in a `width` x `height` box
    with room for the title, the legend, tick labels and axis titles; `render` draws the frame
    around a body of SVG elements drawn with `x` and `y`."""

    x: Linear | Bands
    y: Linear | Bands
    title: str
    x_label: str = ""
    y_label: str = ""
    width: int = 560
    height: int = 280
    legend: list[LegendEntry] = field(default_factory=list)

    def __post_init__(self):
        self.title_lines = _wrap(self.title, self.width - 16, TITLE_SIZE)
        top = 8 + 17 * len(self.title_lines)
        self.legend_rows = self._layout_legend()
        top += 16 * len(self.legend_rows) + 8
        # Half of the last x tick label may reach past the plotting area's right edge.
        right = self.width - max(14.0, (self.x.label_width() / 2 + 4) if isinstance(self.x, Linear) else 14.0)
        # Axis titles longer than their axis wrap (a y title runs along the plot's height); the
        # margins make room for every line.
        self.x_label_lines = _wrap(self.x_label, right - 70, LABEL_SIZE) if self.x_label else []
        x_lines = self.x.line_count() if isinstance(self.x, Bands) else 1
        bottom = self.height - (8 + 16 * len(self.x_label_lines) + 2 * bool(self.x_label) + 14 * x_lines + 9)
        self.y_label_lines = _wrap(self.y_label, bottom - top, LABEL_SIZE) if self.y_label else []
        left = 10 + 16 * len(self.y_label_lines) + 2 * bool(self.y_label) + self.y.label_width() + 8
        self.left, self.top, self.right, self.bottom = left, top, right, bottom
        self.x.place(left, right)
        # A numeric y axis grows upwards; categories run down from the top, in the order given.
        if isinstance(self.y, Linear):
            self.y.place(bottom, top)
        else:
            self.y.place(top, bottom)
        if isinstance(self.x, Linear):  # fewer ticks until their labels do not touch
            while self.x.count > 2 and self.x.label_width() + 10 > (right - left) / max(len(self.x.ticks) - 1, 1):
                self.x.retick(self.x.count - 1)
        if isinstance(self.y, Linear):
            while self.y.count > 2 and 16 > (bottom - top) / max(len(self.y.ticks) - 1, 1):
                self.y.retick(self.y.count - 1)

    def _layout_legend(self) -> list[list[LegendEntry]]:
        rows: list[list[LegendEntry]] = []
        used = 0.0
        for entry in self.legend:
            w = 22 + text_width(entry.name, TICK_SIZE) + 14
            if not rows or used + w > self.width - 16:
                rows.append([])
                used = 0.0
            rows[-1].append(entry)
            used += w
        return rows

    def render(self, body: Sequence[str], css_class: str = "chart") -> str:
        w, h = self.width, self.height
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="{esc(css_class)}" width="{w}" height="{h}" '
               f'viewBox="0 0 {w} {h}" role="img" aria-label="{esc(self.title)}" font-family="{esc(FONT)}">',
               f"<title>{esc(self.title)}</title>",
               f'<rect class="plot-area" x="{self.left:.1f}" y="{self.top:.1f}" width="{self.right - self.left:.1f}" '
               f'height="{self.bottom - self.top:.1f}" fill="#fff"/>']
        out += self._grid()
        out += list(body)
        out += self._zero_lines()
        out.append(f'<path class="axis-line" d="M{self.left:.1f},{self.top:.1f}V{self.bottom:.1f}H{self.right:.1f}" '
                   f'fill="none" stroke="{AXIS_COLOUR}"/>')
        out += self._ticks()
        out += self._titles()
        out += self._legend()
        out.append("</svg>")
        return "".join(out)

    def _grid(self) -> list[str]:
        out = []
        if isinstance(self.x, Linear):
            out += [f'<line class="grid" x1="{self.x(t):.1f}" y1="{self.top:.1f}" x2="{self.x(t):.1f}" '
                    f'y2="{self.bottom:.1f}" stroke="{GRID_COLOUR}"/>' for t in self.x.ticks]
        if isinstance(self.y, Linear):
            out += [f'<line class="grid" x1="{self.left:.1f}" y1="{self.y(t):.1f}" x2="{self.right:.1f}" '
                    f'y2="{self.y(t):.1f}" stroke="{GRID_COLOUR}"/>' for t in self.y.ticks]
        return out

    def _zero_lines(self) -> list[str]:
        out = []
        if isinstance(self.x, Linear) and self.x.has_zero:
            out.append(f'<line class="zero" x1="{self.x(0):.1f}" y1="{self.top:.1f}" x2="{self.x(0):.1f}" '
                       f'y2="{self.bottom:.1f}" stroke="{ZERO_COLOUR}" stroke-width="1.2"/>')
        if isinstance(self.y, Linear) and self.y.has_zero:
            out.append(f'<line class="zero" x1="{self.left:.1f}" y1="{self.y(0):.1f}" x2="{self.right:.1f}" '
                       f'y2="{self.y(0):.1f}" stroke="{ZERO_COLOUR}" stroke-width="1.2"/>')
        return out

    def _ticks(self) -> list[str]:
        out = []
        # Low enough that the first x label clears the lowest y label at the corner.
        base = self.bottom + 7 + TICK_SIZE
        if isinstance(self.x, Linear):
            out += [_tick("x", (self.x(t), self.bottom, self.x(t), self.bottom + 4), self.x(t), base, "middle", [text])
                    for t, text in self.x.labels()]
        else:
            out += [_tick("x", None, self.x.center(i), base, "middle", lines, label)
                    for i, (label, lines) in enumerate(zip(self.x.labels, self.x.lines))]
        if isinstance(self.y, Linear):
            out += [_tick("y", (self.left - 4, self.y(t), self.left, self.y(t)), self.left - 6, self.y(t) + 4, "end",
                          [text]) for t, text in self.y.labels()]
        else:
            out += [_tick("y", None, self.left - 6, self.y.center(i) + 4 - 6.5 * (len(lines) - 1), "end", lines, label)
                    for i, (label, lines) in enumerate(zip(self.y.labels, self.y.lines))]
        return out

    def _titles(self) -> list[str]:
        out = [f'<text class="chart-title" x="8" y="{8 + 13 + 17 * k}" font-size="{TITLE_SIZE}" '
               f'font-weight="bold">{esc(line)}</text>' for k, line in enumerate(self.title_lines)]
        cx, cy = (self.left + self.right) / 2, (self.top + self.bottom) / 2
        n = len(self.x_label_lines)
        out += [f'<text class="axis-title x" x="{cx:.1f}" y="{self.height - 8 - 16 * (n - 1 - k)}" '
                f'font-size="{LABEL_SIZE}" text-anchor="middle">{esc(line)}</text>'
                for k, line in enumerate(self.x_label_lines)]
        out += [f'<text class="axis-title y" x="0" y="0" transform="translate({20 + 16 * k},{cy:.1f}) rotate(-90)" '
                f'font-size="{LABEL_SIZE}" text-anchor="middle">{esc(line)}</text>'
                for k, line in enumerate(self.y_label_lines)]
        return out

    def _legend(self) -> list[str]:
        out = []
        y0 = 8 + 17 * len(self.title_lines) + 4
        for r, row in enumerate(self.legend_rows):
            x, y = 10.0, y0 + 16 * r
            for entry in row:
                c = esc(entry.colour)
                if entry.kind == "box":
                    out.append(f'<rect x="{x:.1f}" y="{y + 1:.1f}" width="14" height="10" fill="{c}" '
                               f'fill-opacity="0.6" stroke="{c}"/>')
                elif entry.kind == "point":
                    out.append(f'<circle cx="{x + 7:.1f}" cy="{y + 6:.1f}" r="4" fill="{c}"/>')
                else:
                    dash = ' stroke-dasharray="5,3"' if entry.kind == "dashed" else ""
                    out.append(f'<line x1="{x:.1f}" y1="{y + 6:.1f}" x2="{x + 16:.1f}" y2="{y + 6:.1f}" '
                               f'stroke="{c}" stroke-width="2"{dash}/>')
                out.append(f'<text class="legend" x="{x + 20:.1f}" y="{y + 10:.1f}" font-size="{TICK_SIZE}">'
                           f"{esc(entry.name)}</text>")
                x += 22 + text_width(entry.name, TICK_SIZE) + 14
        return out


def _tick(axis: str, mark: tuple[float, float, float, float] | None, x: float, y: float, anchor: str,
          lines: list[str], tip: str = "") -> str:
    """One tick of the x or y `axis`: its mark (a short line, numeric axes) and its label, one
    <tspan> per line; `tip`: the whole label as a tooltip (a category's, which may be cut)."""
    line = (f'<line x1="{mark[0]:.1f}" y1="{mark[1]:.1f}" x2="{mark[2]:.1f}" y2="{mark[3]:.1f}" '
            f'stroke="{AXIS_COLOUR}"/>' if mark else "")
    title = f"<title>{esc(tip)}</title>" if tip else ""
    spans = "".join(f'<tspan x="{x:.1f}" dy="{0 if k == 0 else 13}">{esc(text)}</tspan>'
                    for k, text in enumerate(lines))
    return (f'<g class="tick {axis}">{title}{line}<text x="{x:.1f}" y="{y:.1f}" font-size="{TICK_SIZE}" '
            f'text-anchor="{anchor}">{spans}</text></g>')


def _colour(k: int) -> str:
    return PALETTE[k % len(PALETTE)]


def _rect(x0: float, x1: float, y0: float, y1: float, colour: str, opacity: float, css: str = "bar",
          tip: str = "") -> str:
    """A rectangle between two x and two y pixel positions in any order (a negative bar's end lies
    below or left of its base)."""
    title = f"<title>{esc(tip)}</title>" if tip else ""
    return (f'<rect class="{css}" x="{min(x0, x1):.1f}" y="{min(y0, y1):.1f}" width="{abs(x1 - x0):.1f}" '
            f'height="{abs(y1 - y0):.1f}" fill="{esc(colour)}" fill-opacity="{opacity}">{title}</rect>')


LINE_COLOURS = ("#333", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _line_values(lines: dict[str, float | Sequence[float]] | None) -> dict[str, list[float]]:
    """Reference lines as name -> finite values (one name may stand for several lines: a band's
    two bounds, say)."""
    out = {}
    for name, values in (lines or {}).items():
        values = _finite(values if isinstance(values, list | tuple) else [values])
        if values:
            out[name] = values
    return out


def _line_legend(lines: dict[str, list[float]]) -> list[LegendEntry]:
    return [LegendEntry(name, LINE_COLOURS[k % len(LINE_COLOURS)], "dashed") for k, name in enumerate(lines)]


def _reference_lines(axes: Axes, lines: dict[str, list[float]], vertical: bool) -> list[str]:
    """Dashed lines across the plot at values of the numeric axis (the x axis if `vertical`), in
    the colours their legend entries (`_line_legend`) name them by."""
    out = []
    scale = axes.x if vertical else axes.y
    for k, (name, values) in enumerate(lines.items()):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        for value in values:
            p = scale(value)
            x1, y1, x2, y2 = (p, axes.top, p, axes.bottom) if vertical else (axes.left, p, axes.right, p)
            out.append(f'<line class="reference" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                       f'stroke="{colour}" stroke-width="1.3" stroke-dasharray="6,3"><title>{esc(name)}</title></line>')
    return out


# ----------------------------------------------------------------------------- primitives
def histogram(edges: Sequence[float], series: dict[str, Sequence[float]], *, title: str, x_label: str,
              y_label: str = "rows", normalize: bool = False, lines: dict[str, float | Sequence[float]] | None = None,
              width: int = 560, height: int = 280) -> str:
    """Counts over the bins `edges` (len(edges) - 1 per series), the series overlaid in translucent
    colours with their outlines. `normalize`: each series as a share of its rows (%), so series
    of different sizes compare. `lines`: dashed vertical lines at given x values, named in the
    legend."""
    edges = [float(e) for e in edges]
    if len(edges) < 2:
        raise ValueError(f"histogram {title!r} needs at least two bin edges, got {len(edges)}")
    values = {}
    for name, counts in series.items():
        counts = [float(c) for c in counts]
        if len(counts) != len(edges) - 1:
            raise ValueError(f"histogram {title!r}: series {name!r} has {len(counts)} counts for "
                             f"{len(edges) - 1} bins")
        total = sum(counts)
        values[name] = [100 * c / total if total else 0.0 for c in counts] if normalize else counts
    lines = _line_values(lines)
    legend = [LegendEntry(name, _colour(k)) for k, name in enumerate(values)] if len(values) > 1 else []
    axes = Axes(Linear(edges + [v for vs in lines.values() for v in vs]),
                Linear([v for vs in values.values() for v in vs], include_zero=True), title, x_label, y_label, width,
                height, legend + _line_legend(lines))
    opacity = 0.35 if len(values) > 1 else 0.7
    body, base = [], axes.y(0)
    for k, (name, vs) in enumerate(values.items()):
        colour = _colour(k)
        unit = "%" if normalize else ""
        body += [_rect(axes.x(edges[i]), axes.x(edges[i + 1]), base, axes.y(v), colour, opacity,
                       tip=f"{name}: [{edges[i]:.4g}, {edges[i + 1]:.4g}): {v:.4g}{unit}")
                 for i, v in enumerate(vs) if v]
        if len(values) > 1:  # the outline tells overlaid series apart where they overlap
            d = f"M{axes.x(edges[0]):.1f},{base:.1f}" + "".join(
                f"V{axes.y(v):.1f}H{axes.x(edges[i + 1]):.1f}" for i, v in enumerate(vs)) + f"V{base:.1f}"
            body.append(f'<path class="outline" d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
    body += _reference_lines(axes, lines, vertical=True)
    return axes.render(body)


def bar_chart(categories: Sequence[str], series: dict[str, Sequence[float]], *, title: str, value_label: str,
              category_label: str = "", horizontal: bool = False,
              lines: dict[str, float | Sequence[float]] | None = None,
              width: int = 560, height: int | None = None) -> str:
    """Bars per category, one per series side by side, from zero: a negative value's bar goes
    below zero (left of it, `horizontal`). `lines`: dashed lines at given values, named in the
    legend."""
    categories = [str(c) for c in categories]
    for name, vs in series.items():
        if len(vs) != len(categories):
            raise ValueError(f"bar chart {title!r}: series {name!r} has {len(vs)} values for {len(categories)} "
                             f"categories")
    lines = _line_values(lines)
    numeric = [float(v) for vs in series.values() for v in vs] + [v for vs in lines.values() for v in vs]
    values = Linear(numeric, include_zero=True)
    bands = Bands(categories)
    legend = [LegendEntry(name, _colour(k)) for k, name in enumerate(series)] if len(series) > 1 else []
    legend += _line_legend(lines)
    if horizontal:
        per_row = max(18, 9 * len(series) + 8)
        title_rows = len(_wrap(title, width - 16, TITLE_SIZE))
        height = height or int(60 + 17 * title_rows + 16 * bool(legend) + per_row * len(categories))
        axes = Axes(values, bands, title, value_label, category_label, width, height, legend)
    else:
        axes = Axes(bands, values, title, category_label, value_label, width, height or 280, legend)
    body, n = [], len(series)
    for k, (name, vs) in enumerate(series.items()):
        for i, v in enumerate(vs):
            v = float(v)
            if not math.isfinite(v):
                continue
            size = bands.inner() / n
            lo = bands.center(i) - bands.inner() / 2 + k * size
            tip = f"{categories[i]}, {name}: {v:.4g}"
            if horizontal:
                body.append(_rect(values(0), values(v), lo, lo + size, _colour(k), 0.75, tip=tip))
            else:
                body.append(_rect(lo, lo + size, values(0), values(v), _colour(k), 0.75, tip=tip))
    body += _reference_lines(axes, lines, vertical=horizontal)
    return axes.render(body)


def line_chart(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, x_label: str, y_label: str,
               *, dashed: Iterable[str] = (), include_zero: bool = True, width: int = 560, height: int = 300) -> str:
    """Named series of (xs, ys) as lines with a legend; the series named in `dashed` dashed (a
    baseline, say). Non-finite points break a line. The y axis includes 0 (`include_zero`)."""
    dashed = set(dashed)
    xs = [x for x_values, _ in series.values() for x in x_values]
    ys = [y for _, y_values in series.values() for y in y_values]
    for name, (x_values, y_values) in series.items():
        if len(x_values) != len(y_values):
            raise ValueError(f"line chart {title!r}: series {name!r} has {len(x_values)} x and {len(y_values)} y "
                             f"values")
    legend = [LegendEntry(name, _colour(k), "dashed" if name in dashed else "line") for k, name in enumerate(series)]
    axes = Axes(Linear(xs), Linear(ys, include_zero=include_zero), title, x_label, y_label, width, height, legend)
    body = []
    for k, (name, (x_values, y_values)) in enumerate(series.items()):
        segments, current = [], []
        for x, y in zip(x_values, y_values):
            if _is_finite(x) and _is_finite(y):
                current.append(f"{axes.x(float(x)):.1f},{axes.y(float(y)):.1f}")
            elif current:
                segments.append(current)
                current = []
        if current:
            segments.append(current)
        dash = ' stroke-dasharray="6,4"' if name in dashed else ""
        for points in segments:
            body.append(f'<polyline class="series" points="{" ".join(points)}" fill="none" stroke="{_colour(k)}" '
                        f'stroke-width="2"{dash}><title>{esc(name)}</title></polyline>')
    return axes.render(body)


@dataclass(frozen=True)
class Interval:
    """One row of an interval chart: an estimate, its interval, and optionally the draws behind it
    (refits, say) drawn as small circles."""

    label: str
    estimate: float
    lower: float
    upper: float
    colour: str | None = None
    draws: tuple[float, ...] = ()


def interval_chart(intervals: Sequence[Interval], *, title: str, value_label: str, category_label: str = "",
                   lines: dict[str, float | Sequence[float]] | None = None, bars: bool = False,
                   width: int = 560, height: int = 300) -> str:
    """Estimates as points with error bars from `lower` to `upper`, one per category, on an axis
    that includes 0 (a zero line). `bars`: a bar from 0 to each estimate behind it (below zero for
    a negative estimate). `lines`: dashed lines at given values, named in the legend."""
    numeric = [v for it in intervals for v in (it.estimate, it.lower, it.upper, *it.draws)]
    lines = _line_values(lines)
    numeric += [v for vs in lines.values() for v in vs]
    values = Linear(numeric, include_zero=True)
    bands = Bands([it.label for it in intervals], padding=0.5)
    axes = Axes(bands, values, title, category_label, value_label, width, height, _line_legend(lines))
    body = []
    cap = min(10.0, bands.band * 0.2)
    for i, it in enumerate(intervals):
        colour, cx = it.colour or _colour(0), bands.center(i)
        if bars and _is_finite(it.estimate):
            body.append(_rect(cx - bands.inner() / 2, cx + bands.inner() / 2, values(0), values(it.estimate),
                              colour, 0.25, tip=f"{it.label}: {it.estimate:.4g}"))
        if _is_finite(it.lower) and _is_finite(it.upper):
            lo, hi = values(it.lower), values(it.upper)
            body.append(f'<path class="error-bar" d="M{cx:.1f},{lo:.1f}V{hi:.1f}M{cx - cap:.1f},{lo:.1f}'
                        f'H{cx + cap:.1f}M{cx - cap:.1f},{hi:.1f}H{cx + cap:.1f}" stroke="{esc(colour)}" '
                        f'stroke-width="1.6" fill="none"/>')
        for j, d in enumerate(it.draws):
            if _is_finite(d):
                dx = (j - (len(it.draws) - 1) / 2) * 5 + cap + 8
                body.append(f'<circle class="draw" cx="{cx + dx:.1f}" cy="{values(d):.1f}" r="2.5" fill="none" '
                            f'stroke="{esc(colour)}"/>')
        if _is_finite(it.estimate):
            body.append(f'<circle class="estimate" cx="{cx:.1f}" cy="{values(it.estimate):.1f}" r="4.5" '
                        f'fill="{esc(colour)}"><title>{esc(it.label)}: {it.estimate:.4g} '
                        f'[{it.lower:.4g}, {it.upper:.4g}]</title></circle>')
    body += _reference_lines(axes, lines, vertical=False)
    return axes.render(body)


# ----------------------------------------------------------------------------- the causal graph
NODE_HEIGHT, NODE_GAP, LAYER_GAP = 26, 16, 70
GRAPH_STYLES = {  # role: (fill, stroke, legend)
    "treatment": ("#fde2c8", "#d9640c", "treatment"),
    "outcome": ("#d6e9f8", "#1f77b4", "outcome"),
    "adjusted": ("#ececec", "#555", "adjusted for (covariates, controls)"),
    "other": ("#ffffff", "#555", "other observed"),
    "latent": ("#ffffff", "#888", "latent (not observed)"),
}


def graph_chart(graph, *, title: str, treatment: str | None = None, outcome: str | None = None,
                adjustment: Iterable[str] = (), width: int | None = None) -> str:
    """A causal DAG (a `components.graph.CausalGraph` or the card's graph section) drawn left to
    right in layers: networkx's topological generations, a node's generation its column, so every
    arrow points right. Latent nodes dashed, treatment and outcome coloured, the adjustment set
    grey. An edge that skips a layer is drawn as a curve so that it does not run through the
    nodes between."""
    import networkx as nx

    from .graph import CausalGraph

    if isinstance(graph, dict):
        treatment = treatment or graph.get("treatment")
        outcome = outcome or graph.get("outcome")
        adjustment = tuple(adjustment) or tuple(graph.get("adjustment_set", ()))
        graph = CausalGraph.from_dict(graph)
    adjusted, latent = set(adjustment), set(graph.latent)
    dag = graph.dag()
    layers = [list(layer) for layer in nx.topological_generations(dag)]
    order = {n: i for i, n in enumerate(graph.nodes)}
    row: dict[str, float] = {}
    for layer in layers:
        # Within a column, nodes in the order of their parents' rows (the file's order breaks ties):
        # fewer crossings than the file's order alone.
        def key(n):
            parents = [row[p] for p in dag.predecessors(n)]
            return (sum(parents) / len(parents) if parents else -1.0, order[n])

        for i, n in enumerate(sorted(layer, key=key)):
            row[n] = float(i)
        layer.sort(key=lambda n: row[n])
    node_w = {n: max(54.0, text_width(n, LABEL_SIZE) + 20) for n in graph.nodes}
    col_w = [max(node_w[n] for n in layer) for layer in layers]
    tallest = max(len(layer) for layer in layers)
    plot_h = tallest * NODE_HEIGHT + (tallest - 1) * NODE_GAP
    roles = _roles(graph.nodes, treatment, outcome, adjusted, latent)
    present = [r for r in GRAPH_STYLES if r in set(roles.values())]
    legend_w = sum(30 + text_width(GRAPH_STYLES[r][2], TICK_SIZE) for r in present)
    content_w = sum(col_w) + LAYER_GAP * (len(layers) - 1)
    width = int(width or max(content_w + 40, min(legend_w + 20, 900), 320))
    title_lines = _wrap(title, width - 16, TITLE_SIZE)
    top = 8 + 17 * len(title_lines) + 8
    legend_rows = max(1, math.ceil(legend_w / (width - 20)))
    height = int(top + plot_h + 24 + 16 * legend_rows + 8)
    left = (width - content_w) / 2
    pos: dict[str, tuple[float, float]] = {}
    x = left
    for layer, w in zip(layers, col_w):
        h = len(layer) * NODE_HEIGHT + (len(layer) - 1) * NODE_GAP
        y0 = top + (plot_h - h) / 2
        for i, n in enumerate(layer):
            pos[n] = (x + w / 2, y0 + i * (NODE_HEIGHT + NODE_GAP) + NODE_HEIGHT / 2)
        x += w + LAYER_GAP
    layer_of = {n: k for k, layer in enumerate(layers) for n in layer}
    curves = {(a, b): _control_point(pos[a], pos[b], layer_of[b] - layer_of[a], top + plot_h / 2)
              for a, b in graph.edges}
    # A bent edge may reach above or below the nodes: move everything down, and grow, to keep it inside.
    extremes = [(pos[a][1] + 2 * q[1] + pos[b][1]) / 4 for (a, b), q in curves.items()]
    shift = max(0.0, top + 4 - min(extremes, default=top))
    grow = max(0.0, max(extremes, default=0.0) + 4 - (top + plot_h)) + shift
    pos = {n: (px, py + shift) for n, (px, py) in pos.items()}
    curves = {e: (qx, qy + shift) for e, (qx, qy) in curves.items()}
    height += int(grow)
    plot_bottom = top + plot_h + grow
    uid = "arrow-" + hashlib.sha256(repr((graph.nodes, graph.edges, title)).encode()).hexdigest()[:10]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" font-family="{esc(FONT)}">',
           f"<title>{esc(title)}</title>",
           f'<defs><marker id="{uid}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           f'orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#444"/></marker></defs>']
    out += [f'<text class="chart-title" x="8" y="{8 + 13 + 17 * k}" font-size="{TITLE_SIZE}" font-weight="bold">'
            f"{esc(line)}</text>" for k, line in enumerate(title_lines)]
    for a, b in graph.edges:
        out.append(_edge(pos[a], pos[b], curves[a, b], node_w[b] / 2, uid, a in latent, f"{a} -> {b}"))
    for n in graph.nodes:
        fill, stroke, _ = GRAPH_STYLES[roles[n]]
        cx, cy, w = pos[n][0], pos[n][1], node_w[n]
        dash = ' stroke-dasharray="4,3"' if n in latent else ""
        style = ' font-style="italic"' if n in latent else ""
        bold = ' font-weight="bold"' if roles[n] in ("treatment", "outcome") else ""
        out.append(f'<g class="node {roles[n]}"><title>{esc(n)} ({esc(GRAPH_STYLES[roles[n]][2])})</title>'
                   f'<rect x="{cx - w / 2:.1f}" y="{cy - NODE_HEIGHT / 2:.1f}" width="{w:.1f}" height="{NODE_HEIGHT}" '
                   f'rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"{dash}/>'
                   f'<text x="{cx:.1f}" y="{cy + 4:.1f}" font-size="{LABEL_SIZE}" text-anchor="middle"{style}{bold}>'
                   f"{esc(n)}</text></g>")
    x, y = 10.0, plot_bottom + 24
    for r in present:
        fill, stroke, name = GRAPH_STYLES[r]
        w = 30 + text_width(name, TICK_SIZE)
        if x + w > width - 10:
            x, y = 10.0, y + 16
        dash = ' stroke-dasharray="3,2"' if r == "latent" else ""
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="16" height="11" rx="3" fill="{fill}" stroke="{stroke}"'
                   f'{dash}/><text class="legend" x="{x + 20:.1f}" y="{y:.1f}" font-size="{TICK_SIZE}">'
                   f"{esc(name)}</text>")
        x += w
    out.append("</svg>")
    return "".join(out)


def _roles(nodes, treatment, outcome, adjusted, latent) -> dict[str, str]:
    return {n: "treatment" if n == treatment else "outcome" if n == outcome else "latent" if n in latent
            else "adjusted" if n in adjusted else "other" for n in nodes}


def _control_point(a: tuple[float, float], b: tuple[float, float], span: int, middle: float
                   ) -> tuple[float, float]:
    """The control point of the quadratic curve of an edge from node centre `a` to node centre `b`
    across `span` layers: the chord's midpoint for neighbouring layers; for one that skips layers,
    moved away from the middle row (where the nodes it passes stand) far enough that the curve
    clears a node on the chord."""
    (ax, ay), (bx, by) = a, b
    qx, qy = (ax + bx) / 2, (ay + by) / 2
    if span > 1:
        side = -1 if qy <= middle else 1
        qy += side * (NODE_HEIGHT + NODE_GAP) * 1.5
    return qx, qy


def _edge(a: tuple[float, float], b: tuple[float, float], q: tuple[float, float], half_w: float, uid: str,
          dashed: bool, tip: str) -> str:
    """An arrow from node centre `a` along the quadratic curve with control point `q` to the border
    of the node at `b` (half width `half_w`)."""
    ex, ey = _border(b[0], b[1], q[0], q[1], half_w, NODE_HEIGHT / 2)
    dash = ' stroke-dasharray="5,3"' if dashed else ""
    return (f'<path class="edge" d="M{a[0]:.1f},{a[1]:.1f}Q{q[0]:.1f},{q[1]:.1f} {ex:.1f},{ey:.1f}" fill="none" '
            f'stroke="#444" stroke-width="1.3" marker-end="url(#{uid})"{dash}><title>{esc(tip)}</title></path>')


def _border(cx: float, cy: float, towards_x: float, towards_y: float, half_w: float, half_h: float
            ) -> tuple[float, float]:
    """Where the ray from (cx, cy) towards a point leaves the box of half sizes half_w, half_h."""
    dx, dy = towards_x - cx, towards_y - cy
    if (dx == 0 and dy == 0) or (half_w == 0 and half_h == 0):
        return cx, cy
    t = min(half_w / abs(dx) if dx else math.inf, half_h / abs(dy) if dy else math.inf)
    return cx + dx * t, cy + dy * t
