"""A comparison's summary (``summary.md`` of `legr compare`), from its result (``compare.json``): accuracy and cost
per method and target, the family wall time per method, and the pipeline cost of learning once against searching
per target. Only formatting: what each entry is (its criterion and allocator cells) is the caller's to say."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _search_targets(pc: dict[str, Any]) -> list[float]:
    """The family's own search targets (``search_target``: a compare.json written before multi-target searches)."""
    return pc.get("search_targets") or [pc["search_target"]]


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def comparison_markdown(result: dict[str, Any], labels: Mapping[str, tuple[str, str]]) -> str:
    """The comparison's tables: accuracy/cost per method and target, family wall time, pipeline cost; ``labels``:
    each entry's (criterion, allocator) cells by its name."""
    lat = sorted({k for r in result["summary"] for k in r if k.startswith("latency_")})
    head = ["method", "target", "MACs (M)", "params (K)", *[k.removeprefix("latency_").replace("_ms", " ms")
                                                          for k in lat], "top-1 before FT %",
            "top-1 after adaptive BN %", "top-1 after FT %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
    for r in result["summary"]:
        unit = {"params": " params", "latency": " latency"}.get(r.get("budget"), "")  # MACs: no unit shown
        cells = [r["method"], "-" if r["target"] is None else f"{r['target']:.0%}{unit}", f"{r['macs'] / 1e6:.2f}",
                 f"{r['params'] / 1e3:.1f}", *[("-" if r.get(k) is None else f"{r[k]:.2f}") for k in lat],
                 _pm(r.get("top1_before_ft"), r.get("top1_before_ft_std")),
                 _pm(r.get("top1_after_bn"), r.get("top1_after_bn_std")), _pm(r["top1"], r["top1_std"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | criterion | allocator | family wall time: rank + prune + fine-tune (mean ± std over seeds) "
                  "| search: networks scored per seed (mean) |", "|:---|:---|:---|---:|---:|"]
    for name, t in result["family_time_s"].items():
        cell = "-" if t["mean_s"] is None else f"{_duration(t['mean_s'])} ± {_duration(t['std_s'] or 0.0)}"
        scored = [c["fitness_evaluations"] for c in result.get("search_cost", {}).get(name, {}).values()
                  if c.get("fitness_evaluations") is not None]
        criterion, allocator = labels[name]
        lines.append(f"| {name} | {criterion} | {allocator} | {cell} | "
                     f"{f'{sum(scored) / len(scored):.0f}' if scored else '-'} |")
    pc = result.get("pipeline_cost")
    if pc:
        k = len(pc["targets"])
        searches = ", ".join(f"{float(t):.0%}: {_duration(s)}" for t, s in pc["search_s"].items())
        lines += ["", f"Pipeline cost ({pc['method']}, seed {pc['seed']}, {k} targets): one search at "
                  f"{', '.join(f'{t:.0%}' for t in _search_targets(pc))} + {k} prunes/fine-tunes = "
                  f"{_duration(pc['learn_once_s'])}; one search "
                  f"per target ({searches}) + the same prunes/fine-tunes = {_duration(pc['search_per_target_s'])}. "
                  f"Search time ratio {pc['search_ratio']:.2f}x, whole-pipeline ratio {pc['pipeline_ratio']:.2f}x."]
    return "\n".join(lines) + "\n"
