"""GDP (issue 36): do filters masked by mistake come back, and does the dynamic part buy accuracy over the same
criterion applied once?

The accuracies come from the 30/47/70 comparison (``configs/compare_resnet20_cifar10jpeg.yaml``): ``gdp`` beside
``global-taylor`` (a Taylor criterion ranked across all layers and cut once: the control that isolates "dynamic"),
``uniform-l1`` and LeGR, on the same adapted source network, splits and seeds, each member trained for the same 376 SGD
steps (GDP: its first 2 epochs with dynamic masks on the full-size network, the last 2 on the pruned one). Its pieces
are run by ``compare_methods.py``. This script collects, from a gdp piece's run folder, every mask decision of every
member (channels kept and masked, how many came back since the previous decision, how many were newly masked, the
mask's MACs) and merges them with the comparison's rows into ``benchmarks/results/gdp/``: ``gdp.json``,
``summary.md`` and ``recovery.png`` (channels recovered and newly masked per decision). The test set chooses nothing.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/compare_methods.py --seeds 0 --methods gdp
    python benchmarks/gdp_dynamics.py --collect 0        # seed 0's decisions -> results/gdp/pieces/seed0.json
    python benchmarks/gdp_dynamics.py --merge            # after compare_methods.py --merge
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from legr.hardware import git_revision
from legr.paths import atomic_write_text
from legr.reporting import save_figure

ROOT = Path(__file__).resolve().parents[1]
COMPARISON = "compare_resnet20_cifar10jpeg"
METHODS = ["uniform-l1", "global-taylor", "legr", "legr-floor25", "amc", "gdp"]  # the rows the summary shows
CONTROL = "global-taylor"


def collect(seed: int, work: Path, results: Path) -> Path:
    """Every member's decisions from the seed's gdp run folder (``compare_methods.py --seeds S --methods gdp``)."""
    run = work / f"seed{seed}_gdp" / f"seed{seed}" / "gdp"
    plans = sorted(run.glob("members/gdp-*/plan.json"))
    if not plans:
        raise SystemExit(f"error: no gdp members in {run}: run compare_methods.py --seeds {seed} --methods gdp first")
    members = []
    for path in plans:
        info = json.loads(path.read_text())["info"]
        members.append({"target": info["target"], "dynamic_epochs": info["dynamic_epochs"],
                        "finetune_epochs": info["finetune_epochs"], "decisions": info["gdp"]["decisions"],
                        "dynamic_history": info["gdp"]["dynamic_history"]})
    rows = json.loads((run / "results.json").read_text()) if (run / "results.json").exists() else []
    ran = next((r["git_rev"] for r in rows if r.get("git_rev")), None) or git_revision()  # the code that trained them
    piece = {"seed": seed, "git_rev": ran, "members": sorted(members, key=lambda m: m["target"])}
    out = results / "pieces" / f"seed{seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(piece, indent=1))
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def merge(results: Path, comparison: Path) -> dict[str, Any]:
    pieces = [json.loads(p.read_text()) for p in sorted((results / "pieces").glob("seed*.json"))]
    if not pieces:
        raise SystemExit(f"error: no pieces in {results / 'pieces'}: run --collect first")
    rows = json.loads((comparison / "compare.json").read_text())["runs"]
    seeds = sorted(p["seed"] for p in pieces)
    targets = sorted({m["target"] for p in pieces for m in p["members"]})
    accuracy: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        per_target = {}
        for t in targets:
            found = {r["seed"]: r["top1"] for r in rows if r["method"] == method and abs(r["target"] - t) < 1e-9
                     and r["seed"] in seeds}
            if found:
                mean, std = _mean_std([100 * v for v in found.values()])
                per_target[f"{t:g}"] = {"mean": mean, "std": std, "seeds": sorted(found)}
        if per_target:
            accuracy[method] = per_target
    dynamics = {}
    for t in targets:
        runs = [m["decisions"] for p in pieces for m in p["members"] if abs(m["target"] - t) < 1e-9]
        count = min(len(r) for r in runs)
        dynamics[f"{t:g}"] = [{key: _mean_std([float(r[k][key]) for r in runs])
                               for key in ("masked", "recovered", "newly_masked")} | {"step": runs[0][k]["step"]}
                              for k in range(count)]
    goal = {}
    if "gdp" in accuracy and CONTROL in accuracy:
        margins = {t: accuracy["gdp"][t]["mean"] - accuracy[CONTROL][t]["mean"] for t in accuracy["gdp"]
                   if t in accuracy[CONTROL]}
        lowest = f"{targets[0]:g}"
        goal = {"margin_vs_control": margins,
                "gdp_at_least_control_everywhere": all(m >= 0 for m in margins.values()),
                "lowest_target_margin_at_least_1pt": margins.get(lowest, float("-inf")) >= 1.0,
                "recovered_after_first_decision": all(d[k]["recovered"][0] > 0 for d in dynamics.values()
                                                      for k in range(1, len(d)))}
    shown = comparison.resolve().relative_to(ROOT) if comparison.resolve().is_relative_to(ROOT) else comparison
    return {"comparison": str(shown), "seeds": seeds, "targets": targets,
            "git_revs": sorted({p["git_rev"] for p in pieces}), "accuracy": accuracy, "dynamics": dynamics,
            "goal": goal, "pieces": pieces}


def markdown(result: dict[str, Any]) -> str:
    targets = [f"{t:g}" for t in result["targets"]]
    member = result["pieces"][0]["members"][0]
    lines = [f"GDP vs the same criterion cut once ({CONTROL}) and the other methods of `{result['comparison']}`: "
             f"cifar_resnet20 on CIFAR-10-JPEG, seeds {', '.join(map(str, result['seeds']))} (mean ± std), test "
             "top-1 % after the same SGD steps per member; GDP: "
             f"{len(member['decisions'])} mask decisions during {member['dynamic_epochs']} dynamic epochs on the "
             f"full-size network, then {member['finetune_epochs']} epochs on the pruned one. Code: "
             f"{', '.join(result['git_revs'])}.", "",
             "| method | " + " | ".join(f"top-1 {float(t):.0%}" for t in targets) + " |",
             "|:---|" + "---:|" * len(targets)]
    for method, per in result["accuracy"].items():
        cells = [f"{per[t]['mean']:.2f} ± {per[t]['std']:.2f}" if t in per else "-" for t in targets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Mask decisions (mean over seeds): channels masked / came back since the previous decision / "
              "newly masked", "", "| target | " + " | ".join(f"decision {k + 1}" for k in
                                                            range(max(len(d) for d in result["dynamics"].values())))
              + " |", "|:---|" + "---:|" * max(len(d) for d in result["dynamics"].values())]
    for t, decisions in result["dynamics"].items():
        cells = [f"{d['masked'][0]:.0f} / {d['recovered'][0]:.1f} / {d['newly_masked'][0]:.1f}" for d in decisions]
        lines.append(f"| {float(t):.0%} | " + " | ".join(cells) + " |")
    goal = result["goal"]
    if goal:
        margins = ", ".join(f"{float(t):.0%}: {m:+.2f}" for t, m in goal["margin_vs_control"].items())
        lines += ["", f"GDP − {CONTROL} (points): {margins}. GDP ≥ {CONTROL} at every target: "
                      f"{'yes' if goal['gdp_at_least_control_everywhere'] else 'no'}; by ≥ 1 pt at the lowest: "
                      f"{'yes' if goal['lowest_target_margin_at_least_1pt'] else 'no'}; channels came back after "
                      f"every decision but the first: {'yes' if goal['recovered_after_first_decision'] else 'no'}."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for t, decisions in result["dynamics"].items():
        x = [k + 1 for k in range(len(decisions))]
        for ax, key in zip(axes, ("recovered", "newly_masked")):
            ax.errorbar(x, [d[key][0] for d in decisions], yerr=[d[key][1] for d in decisions], marker="o",
                        capsize=3, label=f"{float(t):.0%} MACs")
    for ax, title in zip(axes, ("channels that came back", "channels newly masked")):
        ax.set_title(title)
        ax.set_xlabel("mask decision")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("channels (mean ± std over seeds)")
    axes[0].legend()
    fig.suptitle("GDP on cifar_resnet20, CIFAR-10-JPEG")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--collect", type=int, nargs="+", metavar="SEED", help="collect these seeds' decisions")
    parser.add_argument("--merge", action="store_true", help="write gdp.json, summary.md and recovery.png")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / COMPARISON, help="the comparison's work folder")
    parser.add_argument("--comparison", type=Path, default=ROOT / "benchmarks" / "results" / COMPARISON)
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "gdp")
    args = parser.parse_args(argv)
    if not (args.collect or args.merge):
        parser.error("nothing to do: --collect SEED ... and/or --merge")
    for seed in args.collect or []:
        print(f"wrote {collect(seed, args.work, args.results)}")
    if args.merge:
        result = merge(args.results, args.comparison)
        atomic_write_text(args.results / "gdp.json", json.dumps(result, indent=1))
        atomic_write_text(args.results / "summary.md", markdown(result))
        plot(result, args.results / "recovery.png")
        print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
