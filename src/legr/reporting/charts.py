"""The HTML report's charts as Vega-Lite specs (built with altair): the Pareto chart (test top-1 with its 95% interval
against one x axis), the members' kept widths per layer, the search's fitness per candidate.

Every spec reads named data (``points``, ``layers``, ``widths``, ``search``) that the page supplies once from its
embedded JSON, so the data is not repeated per chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import altair as alt

from legr.reporting.report_data import XAxis

WIDTH, HEIGHT = 640, 380
_FRONT = "#f2b134"


def _method_color() -> alt.Color:
    return alt.Color("method:N", title="method", scale=alt.Scale(scheme="tableau10"))


def pareto_spec(axis: XAxis, axes: Sequence[XAxis], title: str, means: bool = False) -> dict[str, Any]:
    """Top-1 (%) against ``axis``: each network a point with its 95% interval, the Pareto front as a step line, and a
    tooltip with the network's figures (name, method, target, MACs, params, top-1 and its interval, top-1 before
    fine-tuning, every latency). With ``means`` (a comparison: the points are every seed's networks), each method is
    also a line through its seed means with ±1 std bars, and the front is the means'."""
    base = alt.Chart(alt.Data(name="points")).transform_filter(f"isValid(datum['{axis.field}'])")
    mean_base = alt.Chart(alt.Data(name="means")).transform_filter(f"isValid(datum['{axis.field}'])")
    x = alt.X(f"{axis.field}:Q", title=axis.title, scale=alt.Scale(zero=False, nice=True))
    y_scale = alt.Scale(zero=False, nice=True)
    front = (mean_base if means else base).transform_filter(f"datum['front_{axis.key}']").mark_line(
        interpolate="step-after", color=_FRONT, opacity=0.45, strokeWidth=7, strokeCap="round").encode(
        x=x, y=alt.Y("top1:Q", scale=y_scale), order=f"{axis.field}:Q")
    interval = base.transform_filter("isValid(datum.top1_lo)").mark_rule(
        strokeWidth=1.5, opacity=0.35 if means else 0.7).encode(
        x=x, y=alt.Y("top1_lo:Q", scale=y_scale), y2="top1_hi:Q", color=_method_color())
    tooltip = [alt.Tooltip("name:N", title="network"), alt.Tooltip("method:N"), alt.Tooltip("target:Q"),
               alt.Tooltip("macs_m:Q", title="MACs (M)", format=".3f"),
               alt.Tooltip("params_k:Q", title="params (K)", format=".2f"),
               alt.Tooltip("top1:Q", title="top-1 %", format=".2f"),
               alt.Tooltip("top1_ci:N", title="top-1 95% interval %"),
               alt.Tooltip("top1_before_ft:Q", title="top-1 before fine-tuning %", format=".2f")]
    tooltip += [alt.Tooltip(f"{a.field}:Q", title=a.title, format=".3f") for a in axes[2:]]
    dots = base.mark_point(filled=True, size=45 if means else 90, opacity=0.5 if means else 0.95).encode(
        x=x, y=alt.Y("top1:Q", title="test top-1 (%)", scale=y_scale), color=_method_color(), tooltip=tooltip)
    layers = [front, interval, dots]
    if means:
        mean_tip = [alt.Tooltip("method:N"), alt.Tooltip("target:Q"), alt.Tooltip("seeds:Q"),
                    alt.Tooltip(f"{axis.field}:Q", title=axis.title, format=".3f"),
                    alt.Tooltip("top1:Q", title="mean top-1 %", format=".2f"),
                    alt.Tooltip("top1_std:Q", title="std over seeds", format=".2f")]
        layers += [mean_base.mark_line(strokeWidth=2).encode(x=x, y=alt.Y("top1:Q", scale=y_scale),
                                                             color=_method_color(), order=f"{axis.field}:Q"),
                   mean_base.mark_rule(strokeWidth=3).encode(x=x, y=alt.Y("top1_lo:Q", scale=y_scale),
                                                             y2="top1_hi:Q", color=_method_color()),
                   mean_base.mark_point(shape="diamond", filled=True, size=120).encode(
                       x=x, y=alt.Y("top1:Q", scale=y_scale), color=_method_color(), tooltip=mean_tip)]
    what = "seed means ± std, each seed a small point" if means else "95% interval"
    chart = alt.layer(*layers).properties(
        width=WIDTH, height=HEIGHT, title=f"{title}: test top-1 ({what}) against {axis.title}")
    return _plain(chart)


def widths_spec(layers: Sequence[str], title: str) -> dict[str, Any]:
    """Output channels kept per prunable layer (``layers``: graph order): the source network's as grey bars, one line
    per member."""
    x = alt.X("layer:N", title="layer (graph order)", sort=list(layers),
              axis=alt.Axis(labelAngle=-60, labelLimit=160))
    bars = alt.Chart(alt.Data(name="layers")).mark_bar(color="#dddddd").encode(
        x=x, y=alt.Y("source:Q", title="output channels kept"),
        tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("source:Q", title="source channels")])
    lines = alt.Chart(alt.Data(name="widths")).mark_line(point=True, strokeWidth=1.6).encode(
        x=x, y="kept:Q", color=alt.Color("member:N", title="member"),
        tooltip=[alt.Tooltip("member:N"), alt.Tooltip("layer:N"), alt.Tooltip("kept:Q", title="kept"),
                 alt.Tooltip("source:Q", title="of"), alt.Tooltip("fraction:Q", title="kept fraction", format=".0%")])
    return _plain(alt.layer(bars, lines).properties(width=WIDTH, height=HEIGHT, title=f"{title}: kept widths"))


def search_spec(series: str = "restart") -> dict[str, Any]:
    """Each candidate's fitness in search order (colour: the series, titled ``series``: a run's restart, a
    comparison's run), the running best as a line; a penalized (infeasible) candidate drawn as a cross at the bottom
    edge, its fitness in the tooltip."""
    base, height = alt.Chart(alt.Data(name="search")), int(HEIGHT / 1.4)
    x = alt.X("candidate:Q", title="candidate (search order, every restart)")
    restart = alt.Color("series:N", title=series)
    tooltip = [alt.Tooltip("candidate:Q"), alt.Tooltip("series:N", title=series), alt.Tooltip("restart:N"),
               alt.Tooltip("index:Q", title="index in restart"),
               alt.Tooltip("fitness:Q", format=".4f"), alt.Tooltip("best_fitness:Q", title="best so far", format=".4f"),
               alt.Tooltip("penalized:N")]
    feasible = base.transform_filter("!datum.penalized")
    best = feasible.transform_filter("isValid(datum.best_fitness)").mark_line(
        interpolate="step-after", strokeDash=[4, 3], opacity=0.8).encode(
        x=x, y=alt.Y("best_fitness:Q", scale=alt.Scale(zero=False)), color=restart, detail="series:N")
    dots = feasible.mark_circle(size=55, opacity=0.85).encode(
        x=x, y=alt.Y("fitness:Q", title="fitness", scale=alt.Scale(zero=False)), color=restart, tooltip=tooltip)
    penalized = base.transform_filter("datum.penalized").mark_point(shape="cross", filled=True, size=60,
                                                                   color="#c0392b").encode(
        x=x, y=alt.value(height - 4), tooltip=tooltip)
    return _plain(alt.layer(best, dots, penalized).properties(width=WIDTH, height=height,
                                                              title="search: fitness per candidate"))


def _plain(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The spec as a dict, without its ``$schema`` URL (the page references nothing outside itself)."""
    spec = chart.to_dict()
    spec.pop("$schema", None)
    return spec
