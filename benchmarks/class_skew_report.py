"""The tables, goals and plot of ``benchmarks/class_skew.py`` (PCNN under class skew), from its result dict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from legr.reporting import save_figure

SOURCE = "source"
GROUPS = ("k2-90", "k2-100", "k5-90", "k5-100", "uniform", "change")
GROUP_LABEL = {"k2-90": "k=2, 90%", "k2-100": "k=2, 100%", "k5-90": "k=5, 90%", "k5-100": "k=5, 100%",
               "uniform": "unskewed", "change": "k=2 90%, changes halfway"}
ARM_LABEL = {"none": "without the layer", "oracle": "oracle prior", "estimated": "estimated prior"}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """Per stream group the mean top-1 of every network x arm and of the runtime; the issue's goals; the estimators'
    comparison on the test streams."""
    names = list(r["networks"])  # smallest first
    smallest = names[0]
    streams = r["streams"]
    groups = [g for g in GROUPS if any(s["group"] == g for s in streams)]
    table = {g: {n: {arm: _mean([s["networks"][n][arm]["top1"] for s in streams if s["group"] == g])
                     for arm in ("none", "oracle", "estimated")} for n in names} for g in groups}
    runtime = {g: {key: _mean([s["runtime"][key] for s in streams if s["group"] == g])
                   for key in ("top1", "macs_ratio", "switches")} for g in groups}
    k2 = [s for s in streams if s["group"] in ("k2-90", "k2-100")]
    margins = [s["networks"][smallest]["estimated"]["top1"] - s["networks"][SOURCE]["none"]["top1"] for s in k2]
    stationary = [s for s in streams if s["group"] != "change"]
    warm_gaps = [s["networks"][n]["oracle"]["top1_after_warmup"] - s["networks"][n]["estimated"]["top1_after_warmup"]
                 for s in stationary for n in names]
    uniform = [s for s in streams if s["group"] == "uniform"]
    unskewed_loss = {n: _mean([s["networks"][n]["none"]["top1"] - s["networks"][n]["estimated"]["top1"]
                               for s in uniform]) for n in names}
    change = [s for s in streams if s["group"] == "change"]
    recovered = [s["networks"][n]["oracle"]["top1_after_recovery"] - s["networks"][n]["estimated"]["top1_after_recovery"]
                 for s in change for n in names]
    by_kind = {grp: [s["networks"][n]["oracle"]["top1_after_warmup"] - s["networks"][n]["estimated"]["top1_after_warmup"]
                     for s in stationary if s["group"] == grp for n in names]
               for grp in groups if grp != "change"}
    goals = {
        "smallest": smallest,
        "warm_gap_by_kind": {grp: {"mean": _mean(v), "max": max(v)} for grp, v in by_kind.items()},
        "k2_margin_min": min(margins) if margins else None, "k2_margin_mean": _mean(margins),
        "k2_streams": len(k2), "k2_streams_met": sum(m >= 0 for m in margins),
        "k2_smallest_beats_source": bool(margins) and min(margins) >= 0,
        "warm_gap_max": max(warm_gaps) if warm_gaps else None, "warm_gap_mean": _mean(warm_gaps),
        "warm_gap_within_1pt": bool(warm_gaps) and max(warm_gaps) <= 0.01,
        "warm_gap_streams_met": sum(g <= 0.01 for g in warm_gaps), "warm_gap_cases": len(warm_gaps),
        "unskewed_loss": unskewed_loss,
        "unskewed_within_0.3pt": bool(uniform) and max(unskewed_loss.values()) <= 0.003,
        "recovery_gap_max": max(recovered) if recovered else None, "recovery_gap_mean": _mean(recovered),
        "recovered_within_1pt": bool(recovered) and max(recovered) <= 0.01,
    }
    return {"groups": groups, "table": table, "runtime": runtime, "goals": goals, "estimators": _estimators(r)}


def _estimators(r: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each estimator on the test streams (the source network and the smallest member): the oracle's lead after the
    warm-up on the stationary streams, after the recovery allowance on the changing ones, and the prior's error."""
    chosen = r["tuning"]["estimator"]
    names = [SOURCE, list(r["networks"])[0]]
    out = {}
    for est, best in r["tuning"]["per_estimator"].items():
        key = "estimated" if est == chosen else f"estimated:{est}"
        warm, rec, tv = [], [], []
        for s in r["streams"]:
            for n in names:
                got, oracle = s["networks"][n].get(key), s["networks"][n]["oracle"]
                if got is None:
                    continue
                tv.append(got["tv_after_warmup"])
                if s["group"] == "change":
                    rec.append(oracle["top1_after_recovery"] - got["top1_after_recovery"])
                else:
                    warm.append(oracle["top1_after_warmup"] - got["top1_after_warmup"])
        out[est] = {"memory": best["memory"], "val_top1": best["top1"], "val_gap": best["gap_vs_oracle"],
                    "warm_gap_mean": _mean(warm), "warm_gap_max": max(warm, default=float("nan")),
                    "recovery_gap_mean": _mean(rec), "recovery_gap_max": max(rec, default=float("nan")),
                    "tv_mean": _mean(tv)}
    return out


def _pct(x: float | None, sign: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _yes(flag: bool) -> str:
    return "**met**" if flag else "**missed**"


def markdown(r: dict[str, Any]) -> str:
    s, t = r["summary"], r["tuning"]
    names = list(r["networks"])
    g = s["goals"]
    lines = [
        f"PCNN's probability layer on a LeGR family under class skew: {r['model']} on {r['dataset']} (family "
        f"`{r['family']}`), stream draws seed {r['seed']}, {r['hardware']}, code {r['git_rev']}, {r['date']}. "
        f"Every choice on the run's {r['val_images']} validation images (carved from training; {r['val_streams']} "
        "streams drawn with replacement, each from one half of them and corrected by layers calibrated on the other "
        "half; the configuration with the best mean top-1 over the stream kinds among those losing at most "
        f"{_pct(r['tuning']['loss_limit'])} points on the unskewed validation stream); the {r['test_images']} test "
        f"images are only replayed, {r['chunk']} images per batch. Written by `benchmarks/class_skew.py`.", "",
        "| network | MACs % | val top-1 % | test top-1 % |", "|:---|---:|---:|---:|"]
    lines += [f"| {n} | {100 * v['macs_ratio']:.1f} | {_pct(v['val_top1'])} | {_pct(v['test_top1'])} |"
              for n, v in r["networks"].items()]
    modes = list(dict.fromkeys((e["calibrate"], e["estimate_calibrate"]) for e in t["estimator_grid"]))
    best = {c: max((e for e in t["estimator_grid"] if (e["calibrate"], e["estimate_calibrate"]) == c),
                   key=lambda e: e["top1"]) for c in modes}
    lines += ["", f"Chosen on validation: calibration **{t['calibrate']}** for the layer's decisions and "
                  f"**{t['estimate_calibrate']}** for the estimator's posteriors (best validation top-1 with the "
                  "estimated prior, decisions / estimate: " + ", ".join(
                      f"{c[0]} / {c[1]} {_pct(best[c]['top1'])}% ({best[c]['estimator']}, unskewed loss "
                      f"{_pct(best[c]['unskewed_loss'])})" for c in modes) + f"), omega {t['omega']:g} "
                  f"(outputs more confident pass through), floor {t['floor']:g}, estimator **{t['estimator']}** with "
                  f"a memory of {t['memory']} images; runtime target: the source network's validation top-1 "
                  f"({_pct(r['target'])}%), hysteresis {_pct(r['hysteresis'])} points.", "",
              "Test top-1 % (mean over the streams of each kind; whole streams, warm-up included). Streams: "
              + ", ".join(f"{GROUP_LABEL[grp]}: {sum(x['group'] == grp for x in r['streams'])} "
                          f"({next(x['length'] for x in r['streams'] if x['group'] == grp)} images)"
                          for grp in s["groups"]) + ":", "",
              "| network | prior | " + " | ".join(GROUP_LABEL[grp] for grp in s["groups"]) + " |",
              "|:---|:---|" + "---:|" * len(s["groups"])]
    for n in reversed(names):
        for arm in ("none", "oracle", "estimated"):
            lines.append(f"| {n} | {ARM_LABEL[arm]} | " + " | ".join(_pct(s["table"][grp][n][arm])
                                                                     for grp in s["groups"]) + " |")
    lines.append("| **runtime** | estimated prior | " + " | ".join(
        f"**{_pct(s['runtime'][grp]['top1'])}** at {100 * s['runtime'][grp]['macs_ratio']:.0f}% MACs"
        for grp in s["groups"]) + " |")
    lines += ["", "Goals (issue 37):", "",
              f"- {g['smallest']} + layer (estimated prior) >= the source network without it on every k = 2 stream at "
              f">= 90%: {_yes(g['k2_smallest_beats_source'])} ({g['k2_streams_met']} of {g['k2_streams']} streams; "
              f"margin min {_pct(g['k2_margin_min'], True)}, mean {_pct(g['k2_margin_mean'], True)} points).",
              f"- Estimated within 1 point of the oracle prior after a {r['warmup']}-image warm-up (every stationary "
              f"stream x network): {_yes(g['warm_gap_within_1pt'])} ({g['warm_gap_streams_met']} of "
              f"{g['warm_gap_cases']}; oracle's lead max {_pct(g['warm_gap_max'], True)}, mean "
              f"{_pct(g['warm_gap_mean'], True)} points; by kind, mean / max: "
              + ", ".join(f"{GROUP_LABEL[k]} {_pct(v['mean'], True)} / {_pct(v['max'], True)}"
                          for k, v in g["warm_gap_by_kind"].items()) + ").",
              f"- At most 0.3 points lost on the unskewed stream: {_yes(g['unskewed_within_0.3pt'])} (top-1 with "
              "the layer and the estimated prior minus without, points: "
              + ", ".join(f"{n} {_pct(-v, True)}" for n, v in g["unskewed_loss"].items()) + ").",
              f"- Within 1 point of the oracle from {r['recovery']} images after the change on: "
              f"{_yes(g['recovered_within_1pt'])} (oracle's lead max {_pct(g['recovery_gap_max'], True)}, mean "
              f"{_pct(g['recovery_gap_mean'], True)} points).", "",
              "Prior estimators (each at its best memory on validation; test: the source network and "
              f"{g['smallest']}; oracle's lead in points, positive = the oracle prior is better):", "",
              "| estimator | memory | val top-1 % | val lead | test lead after warm-up (mean / max) | test lead "
              "after the change + recovery (mean / max) | prior error (TV) |", "|:---|---:|---:|---:|---:|---:|---:|"]
    for est, e in s["estimators"].items():
        mark = " (chosen)" if est == t["estimator"] else ""
        lines.append(f"| {est}{mark} | {e['memory']} | {_pct(e['val_top1'])} | {_pct(e['val_gap'], True)} | "
                     f"{_pct(e['warm_gap_mean'], True)} / {_pct(e['warm_gap_max'], True)} | "
                     f"{_pct(e['recovery_gap_mean'], True)} / {_pct(e['recovery_gap_max'], True)} | "
                     f"{e['tv_mean']:.3f} |")
    names = list(r["networks"])
    lines += ["", "Calibration (each pair with its best configuration on validation; test, report only): top-1 change "
                  "on the unskewed stream with the estimated prior, and mean top-1 on the k = 2, 90% streams with the "
                  "estimated / oracle prior, %:", "",
              "| decisions / estimate | estimator | " + " | ".join(f"{n}: unskewed, k=2 90% est / oracle"
                                                                  for n in names) + " |",
              "|:---|:---|" + "---:|" * len(names)]
    for row in r.get("calibration_ablation", []):
        cells = [f"{_pct(v['unskewed_change'], True)}, {_pct(v['k2_90_estimated'])} / {_pct(v['k2_90_oracle'])}"
                 for v in (row["networks"][n] for n in names)]
        lines.append(f"| {row['calibrate']} / {row['estimate_calibrate']} | {row['estimator']} {row['memory']} | "
                     + " | ".join(cells) + " |")
    lines += ["", f"![class skew](class_skew.png) (plot: the same dataset, model, seed and hardware; the changing "
                  f"stream shown is `{r['kept_stream']}`)"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["summary"]
    names = list(r["networks"])
    smallest = names[0]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    bars = [(SOURCE, "none"), (SOURCE, "estimated"), (smallest, "none"), (smallest, "estimated")]
    width = 0.8 / (len(bars) + 1)
    x = np.arange(len(s["groups"]))
    for i, (n, arm) in enumerate(bars):
        axes[0].bar(x + i * width, [100 * s["table"][grp][n][arm] for grp in s["groups"]], width,
                    label=f"{n}, {ARM_LABEL[arm]}")
    axes[0].bar(x + len(bars) * width, [100 * s["runtime"][grp]["top1"] for grp in s["groups"]], width,
                label="runtime selection", color="black")
    axes[0].set_xticks(x + 0.4 - width / 2, [GROUP_LABEL[grp].replace(", changes halfway", "\nchanging")
                                             for grp in s["groups"]], fontsize=8)
    axes[0].set_ylim(50, 100)
    axes[0].set_ylabel("test top-1 % (mean over streams)")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[0].set_title("top-1 by stream kind")
    kept, change = r["kept"], next(x for x in r["streams"] if x["name"] == r["kept_stream"])["change_at"]
    for key, label, style in [(f"{SOURCE}/none", f"{SOURCE}, {ARM_LABEL['none']}", "k:"),
                              (f"{smallest}/none", f"{smallest}, {ARM_LABEL['none']}", "C2:"),
                              (f"{smallest}/oracle", f"{smallest}, {ARM_LABEL['oracle']}", "C1--"),
                              (f"{smallest}/estimated", f"{smallest}, {ARM_LABEL['estimated']}", "C3-"),
                              ("runtime", "runtime selection", "k-")]:
        axes[1].plot(kept[key]["positions"], [100 * v for v in kept[key]["values"]], style, label=label, lw=1.2)
    axes[2].plot(kept["runtime_macs"]["positions"], [100 * v for v in kept["runtime_macs"]["values"]], "k-",
                 label="runtime MACs % of the source")
    mass = kept["dominant_mass"]
    for j, phase in enumerate(mass["phases"]):
        axes[2].plot(mass["positions"], [100 * m[j] for m in mass["mass"]], f"C{j}-",
                     label=f"estimated prior of classes {phase} (%)")
    for ax in axes[1:]:
        ax.axvline(change, color="grey", lw=0.8)
        ax.set_xlabel("images into the stream")
        ax.legend(fontsize=7)
    axes[1].set_ylabel("top-1 % over the last 250 images")
    axes[1].set_title("dominant classes change halfway")
    axes[2].set_title("runtime: network size and prior estimate")
    fig.suptitle(f"{r['model']} on {r['dataset']}: probability layer and runtime selection (seed {r['seed']}, "
                 f"{r['hardware']})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
