"""Both HTML reports made from real results on small simulated data, and rendered in headless
Chromium: for tests/test_reports.py, and for the screenshots in docs/img/:

    .venv/bin/python tests/report_pages.py [OUT_DIR]      # default docs/img

The evaluation is the pipeline's steps run in this process on grf's `simple` design with its causal
graph (tests/test_evaluate.py's `pipeline_in_process`); the monitoring is tests/test_monitor.py's
logged traffic (a champion treating by a wrong CATE, a shadow challenger by a good one, outcomes
logged with known propensities), with one covariate shifted so that the drift plots show an alert.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from html import unescape

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_WIDTH = 1100

# The design `simple` with p = 5: x0 confounds (it drives treatment and effect), x1 and x2 act on
# the outcome alone, x3 and x4 on nothing.
SIMPLE_GRAPH = """digraph simple {
  x0 -> T; x0 -> Y; T -> Y;
  x1 -> Y; x2 -> Y;
  x3; x4;
}
"""

# Measures the rendered page for the tests; only ever added to a copy of a report (the reports
# themselves have no scripts). Every <svg>'s box, and the box of each of its texts relative to it.
_MEASURE = """<script>(function () {
  function rel(el, o) { var b = el.getBoundingClientRect();
    return [b.left - o.left, b.top - o.top, b.right - o.left, b.bottom - o.top]; }
  var svgs = Array.prototype.slice.call(document.querySelectorAll('svg')).map(function (svg) {
    var o = svg.getBoundingClientRect();
    var texts = Array.prototype.slice.call(svg.querySelectorAll('text')).map(function (t) {
      var g = t.parentNode; return {text: t.textContent, box: rel(t, o),
        kind: t.getAttribute('class') || (g && g.getAttribute && g.getAttribute('class')) || ''}; });
    return {cls: svg.getAttribute('class'), label: svg.getAttribute('aria-label'), width: o.width,
            height: o.height, texts: texts};
  });
  var pre = document.createElement('pre'); pre.id = 'tauforge-measured';
  pre.textContent = JSON.stringify({height: document.documentElement.scrollHeight, svgs: svgs});
  document.body.appendChild(pre);
})();</script>"""


def chromium() -> str | None:
    """The Chromium (or Chrome) binary: $TAUFORGE_CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("TAUFORGE_CHROMIUM"):
        return os.environ["TAUFORGE_CHROMIUM"]
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def _run_chromium(binary: str, profile: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", "--no-first-run",
             "--force-device-scale-factor=1", f"--user-data-dir={profile}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox (containers, CI)
    out = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"chromium exited {out.returncode}: {out.stderr[-2000:]}")
    return out


@dataclass
class Rendered:
    dom: str  # the DOM Chromium built from the page, serialized
    measured: dict  # page height, and every <svg>'s box with its texts' boxes (`_MEASURE`)
    screenshot: str | None  # a PNG of the whole page


def render(page: str, workdir: str, name: str, *, width: int = PAGE_WIDTH, screenshot: bool = True,
           binary: str | None = None) -> Rendered:
    """Open the HTML `page` in headless Chromium: dump the DOM of a copy with the measuring script,
    then (`screenshot`) screenshot the page itself (without the script) at its full height."""
    binary = binary or chromium()
    if binary is None:
        raise RuntimeError(f"no Chromium binary found (tried {', '.join(CHROMIUM_NAMES)}; or set TAUFORGE_CHROMIUM)")
    os.makedirs(workdir, exist_ok=True)
    measured_path = os.path.join(workdir, f"{name}.measure.html")
    with open(measured_path, "w") as f:
        f.write(page.replace("</body>", _MEASURE + "</body>"))
    page_path = os.path.join(workdir, f"{name}.html")
    with open(page_path, "w") as f:
        f.write(page)
    with tempfile.TemporaryDirectory() as profile:
        dom = _run_chromium(binary, profile, f"--window-size={width},900", "--dump-dom",
                            "file://" + measured_path).stdout
        found = re.search(r'<pre id="tauforge-measured">(.*?)</pre>', dom, re.S)
        if not found:
            raise RuntimeError(f"chromium rendered {name} without running the measuring script: {dom[:500]}")
        measured = json.loads(unescape(found.group(1)))
        png = None
        if screenshot:
            png = os.path.join(workdir, f"{name}.png")
            _run_chromium(binary, profile, f"--window-size={width},{int(measured['height'])}",
                          f"--screenshot={png}", "file://" + page_path)
    return Rendered(dom, measured, png)


# ----------------------------------------------------------------------------- the pages
def evaluation_page(n: int = 2000, seed: int = 0, design: str = "simple") -> str:
    """The evaluation report of a small run of the pipeline's steps on `design` (with its graph
    for `simple`, none for the others)."""
    from test_evaluate import TWO_FOLDS, pipeline_in_process

    from tauforge.components.data import fingerprint
    from tauforge.components.evaluate import GateConfig, evaluate
    from tauforge.components.graph import CausalGraph
    from tauforge.components.report import ReportHeader, render_report

    data, residuals, estimate, _ = pipeline_in_process(design, n=n, seed=seed)
    graph = CausalGraph.parse(SIMPLE_GRAPH) if design == "simple" else None
    if graph is not None:
        graph.adjusted_spec(data.spec)  # as the validate step checks it
    result = evaluate(data, residuals, estimate, GateConfig(), seed=seed, nuisance=TWO_FOLDS, graph=graph)
    header = ReportHeader(model="uplift-demo", run_id="tauforge-training-example", treatment="T", outcome="Y",
                          data_fingerprint=fingerprint(data.table))
    return render_report(result, header)


def monitoring_page(n: int = 2000, seed: int = 0) -> str:
    """The monitoring report of logged traffic with outcomes, a shadow, and x2 shifted by half a
    standard deviation; the header's facts are those `run_monitor` adds from the store's card."""
    from test_monitor import COLUMNS, logged_traffic, reference

    from tauforge.components.monitor import monitor
    from tauforge.components.report import render_monitor_report

    events, outcomes, _, _ = logged_traffic(seed, n=n)
    request = events["request_id"].str[1:].astype(int)
    events["input.x4"] = (request % 3).astype(float)  # the reference's categorical covariate, unshifted
    events["input.x2"] += 0.5
    result = monitor(events, reference(seed), COLUMNS, outcomes=outcomes, seed=seed)
    result.update(model="uplift-demo", version=3, training={
        "run_id": "tauforge-training-example", "data_fingerprint": "0" * 64, "treatment": "T", "outcome": "Y"})
    return render_monitor_report(result, run_id="tauforge-monitoring-example")


def screenshots(out_dir: str, n: int = 5000) -> list[str]:
    """Write both reports' screenshots (PNG, 256 colours) and pages to `out_dir`."""
    from PIL import Image

    written = []
    with tempfile.TemporaryDirectory() as work:
        for name, page in (("evaluate-report", evaluation_page(n)), ("monitor-report", monitoring_page(n))):
            shot = render(page, work, name).screenshot
            target = os.path.join(out_dir, f"{name}.png")
            os.makedirs(out_dir, exist_ok=True)
            Image.open(shot).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)
            written.append(target)
    return written


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import conftest  # noqa: F401  (thread settings, as the tests run)

    for path in screenshots(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "img")):
        print(path, os.path.getsize(path), "bytes")
