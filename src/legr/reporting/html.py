"""``report.html``: a run's results as one self-contained, offline, interactive page (`write_report_html`).

The page opens with the answer to "which network is the cheapest within 1 point of the source?" and holds the Pareto
chart of test top-1 (each point with its binomial 95% interval) against MACs, params or measured latency (a switch
between x axes), a sortable table of the networks, the members' kept widths per layer against the source network,
the search's fitness per candidate, the run's config, hardware and git revision. A comparison's page
(``compare.json``) draws every seed's network as a point and each method as a line through its seed means (±1 std).

Why Vega-Lite (altair builds the specs; vl-convert-python bundles the JavaScript): the whole charting runtime
(vega, vega-lite, vega-embed) is one ~0.9 MB script that vl-convert ships inside its wheel, so the page inlines it
and loads nothing from a CDN; a spec is declarative data (hover tooltips, layered intervals and fronts, SVG output
that a browser test can find) written from Python without hand-written drawing code. Plotly's bundle is ~3.5 MB
(over the 2 MB page budget) and Bokeh needs its own server-side models; hand-drawn SVG would re-implement axes,
scales and tooltips. The table's sorting is a few lines of plain JavaScript.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

from legr.paths import atomic_write_text
from legr.reporting.charts import pareto_spec, search_spec, widths_spec
from legr.reporting.report_data import COMPARE_FILE, ReportData, comparison_data, report_data
from legr.reporting.rows import RESULTS_JSON

REPORT_HTML = "report.html"
DATA_ID = "legr-report-data"


@functools.cache
def vega_bundle() -> str:
    """The vega-embed, vega-lite and vega JavaScript as one script (from vl-convert-python; nothing is fetched)."""
    import vl_convert

    return vl_convert.javascript_bundle().replace("</script", "<\\/script")


def _json_for_script(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</`` can close it early)."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _cell(value: Any, text: str | None = None) -> str:
    sort = "" if value is None else html.escape(str(value), quote=True)
    shown = text if text is not None else ("" if value is None else str(value))
    return f'<td data-value="{sort}">{html.escape(shown)}</td>'


def _fmt(value: float | None, digits: int) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def members_table(data: ReportData) -> str:
    """The networks as a sortable HTML table (click a header: ascending, again: descending; empty cells last)."""
    latency = data.axes[2:]
    head = ["network", "method", "target", "MACs (M)", "params (K)", "top-1 %", "top-1 95% interval %",
            "top-1 before fine-tuning %"] + [a.title for a in latency]
    rows = []
    for p in data.points:
        cells = [_cell(p["name"]), _cell(p["method"]), _cell(p["target"]), _cell(p["macs_m"], _fmt(p["macs_m"], 3)),
                 _cell(p["params_k"], _fmt(p["params_k"], 2)), _cell(p["top1"], _fmt(p["top1"], 2)),
                 _cell(p["top1_lo"], p["top1_ci"]), _cell(p["top1_before_ft"], _fmt(p["top1_before_ft"], 2))]
        cells += [_cell(p[a.field], _fmt(p[a.field], 3)) for a in latency]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(f'<th scope="col" title="click to sort">{html.escape(h)}</th>' for h in head)
    return (f'<table id="members" class="sortable"><thead><tr>{header}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def page_data(data: ReportData) -> dict[str, Any]:
    """What the page's script reads: the specs per chart and the named datasets they draw."""
    datasets: dict[str, Any] = {"points": data.points, "search": data.search, "means": data.means or []}
    if data.widths is not None:
        w = data.widths
        datasets["layers"] = [{"layer": name, "order": i, "source": w["source"][name]}
                              for i, name in enumerate(w["layers"])]
        datasets["widths"] = [{"member": m, "layer": name, "order": i, "kept": kept[name],
                               "source": w["source"][name], "fraction": kept[name] / max(1, w["source"][name])}
                              for m, kept in w["members"].items() for i, name in enumerate(w["layers"])]
    return {"datasets": datasets, "axes": [a.key for a in data.axes],
            "pareto": {a.key: pareto_spec(a, data.axes, data.title, means=data.means is not None) for a in data.axes},
            "widths": widths_spec(data.widths["layers"], data.title) if data.widths is not None else None,
            "search": search_spec("restart" if data.means is None else "run") if data.search else None}


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #ddd}
.facts{color:#555}.pick{font-size:15px;background:#fff8e6;padding:8px 12px;border-left:4px solid #f2b134}
.facts b{color:#222}.note{color:#777;font-style:italic}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}th:first-child,td:first-child,
th:nth-child(2),td:nth-child(2){text-align:left}
th{cursor:pointer;background:#f6f6f6;user-select:none}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
pre{background:#f7f7f7;padding:12px;overflow:auto;max-height:420px;font-size:12px}
#axis label{margin-right:14px}
"""

_JS = """
const DATA = JSON.parse(document.getElementById('%(data_id)s').textContent);
const OPTIONS = {actions: false, renderer: 'svg'};
function embed(target, spec) {
  return vegaEmbed(target, Object.assign({}, spec, {datasets: DATA.datasets}), OPTIONS);
}
function showPareto(key) { return embed('#pareto', DATA.pareto[key]); }
document.querySelectorAll('#axis input').forEach(input =>
  input.addEventListener('change', () => { if (input.checked) showPareto(input.value); }));
const drawn = [showPareto(DATA.axes[0])];
if (DATA.widths) drawn.push(embed('#widths', DATA.widths));
if (DATA.search) drawn.push(embed('#search', DATA.search));
Promise.all(drawn).then(() => document.body.setAttribute('data-rendered', 'true'), console.error);

function cellValue(row, col) {
  const v = row.cells[col].dataset.value;
  if (v === undefined || v === '') return null;
  return isNaN(Number(v)) ? v : Number(v);
}
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const table = th.closest('table'), body = table.tBodies[0];
  const ascending = th.getAttribute('aria-sort') !== 'ascending';
  table.querySelectorAll('th').forEach(h => h.removeAttribute('aria-sort'));
  th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = cellValue(a, col), y = cellValue(b, col);
    if (x === null || y === null) return (x === null) - (y === null);
    const order = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return ascending ? order : -order;
  });
  rows.forEach(r => body.appendChild(r));
}));
"""


READING = {
    False: "Each point is a network; its bar is the binomial 95% interval (Wilson) of its test top-1 on the test "
           "images (two networks whose bars overlap may differ by sampling noise alone); the wide yellow line is the "
           "Pareto front.",
    True: "Each small point is one seed's network, its thin bar the binomial 95% interval (Wilson) of its test top-1; "
          "each method's diamonds are its means over the seeds, joined by a line, their thick bars ±1 std over the "
          "seeds; the wide yellow line is the Pareto front of the means.",
}


def best_within(data: ReportData, points: float = 1.0) -> str:
    """One line answering "which network is the cheapest within ``points`` pt of the source's top-1?" on the first
    latency axis (MACs when none was measured); a comparison answers with its seed means."""
    source = next((p for p in data.points if p["method"] == "baseline"), None)
    if source is None:
        return "The source network was not evaluated: no network can be read against it."
    axis = data.axes[2] if len(data.axes) > 2 else data.axes[0]
    pool = data.means if data.means is not None else [p for p in data.points if p is not source]
    close = [p for p in pool if p["top1"] >= source["top1"] - points and p.get(axis.field) is not None]
    if not close:
        return (f"No compressed network is within {points:g} pt of the source network's test top-1 "
                f"({source['top1']:.2f}%).")
    best = min(close, key=lambda p: p[axis.field])
    label = (f"{best['method']} at {best['target']:.0%} (mean of {best['seeds']} seeds)" if data.means is not None
             else best["name"])
    return (f"Cheapest within {points:g} pt of the source network's test top-1 ({source['top1']:.2f}%) by "
            f"{axis.title}: {label}, {best[axis.field]:.3f} against the source's {source[axis.field]:.3f} "
            f"({best[axis.field] / source[axis.field]:.0%}), top-1 {best['top1']:.2f}%.")


def render_html(data: ReportData, name: str = "") -> str:
    """The whole page as a string (every script inline)."""
    esc = html.escape
    radios = "".join(f'<label><input type="radio" name="axis" value="{esc(a.key, quote=True)}"'
                     f'{" checked" if i == 0 else ""}> {esc(a.title)}</label>' for i, a in enumerate(data.axes))
    images = ", ".join(str(n) for n in data.test_images) or "not recorded (no intervals)"
    facts = (f"<b>hardware</b>: {esc('; '.join(data.hardware) or 'not recorded')} &middot; "
             f"<b>git revision</b>: {esc(', '.join(data.git_revs) or 'not recorded')} &middot; "
             f"<b>test images</b>: {esc(images)}")
    widths = ('<div id="widths"></div>' if data.widths is not None
              else f'<p class="note">No widths: {esc(data.widths_note)}.</p>')
    search = ('<div id="search"></div>' if data.search else '<p class="note">This run did not search '
              "(no search_log.jsonl).</p>")
    config = f"<pre>{esc(data.config_text)}</pre>" if data.config_text else '<p class="note">No config.yaml.</p>'
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>legr report: {esc(data.title)}</title>
<style>{_CSS}</style>
<script>{vega_bundle()}</script>
</head>
<body>
<h1>{esc(data.title)}</h1>
<p class="facts">run <b>{esc(name)}</b> &middot; {facts}</p>
<p class="pick">{esc(best_within(data))}</p>
<h2>Accuracy against cost</h2>
<p>{READING[data.means is not None]} Hover a point for its figures.</p>
<div id="axis">x axis: {radios}</div>
<div id="pareto"></div>
<h2>Networks</h2>
<p>Click a column header to sort.</p>
{members_table(data)}
<h2>Kept widths per layer</h2>
{widths}
<h2>Search</h2>
{search}
<h2>Config</h2>
{config}
<script type="application/json" id="{DATA_ID}">{_json_for_script(page_data(data))}</script>
<script>{_JS % {"data_id": DATA_ID}}</script>
</body>
</html>
"""


def write_report_html(run: str | Path, path: str | Path | None = None) -> Path:
    """Write ``report.html`` for ``run`` (default: inside it), a run folder (``results.json``) or a comparison's
    (``compare.json`` and no results.json: `comparison_data`); returns its path."""
    run = Path(run)
    out = Path(path) if path is not None else run / REPORT_HTML
    data = comparison_data(run) if is_comparison(run) else report_data(run)
    atomic_write_text(out, render_html(data, run.resolve().name))
    return out


def is_comparison(folder: str | Path) -> bool:
    """A comparison's folder: ``compare.json`` and no ``results.json`` (a run's)."""
    return (Path(folder) / COMPARE_FILE).is_file() and not (Path(folder) / RESULTS_JSON).is_file()
