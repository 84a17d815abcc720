"""Rewrite the README's results section from the committed files under benchmarks/results/ (never by hand).

    python benchmarks/readme_results.py            # rewrites README.md between the results markers
    python benchmarks/readme_results.py --check    # exit 1 if README.md is out of date

Each block names its source file; a benchmark whose results file is missing is listed as not yet run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from itertools import groupby
from pathlib import Path

import yaml

from legr.methods import METHODS
from legr.methods.filters.legr.family import PENALTY

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- results:start (written by benchmarks/readme_results.py) -->", "<!-- results:end -->"


def _load(name: str) -> dict | list | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---:" if i else ":---" for i in range(len(headers))]
    return ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def tally(stem: str = "torchvision_tally", what: str = "Every torchvision classification model") -> list[str]:
    d = _load(f"{stem}.json")
    if d is None:
        return [f"Not run yet: `python benchmarks/{stem}.py`."]
    refused: dict[str, list[str]] = {}
    for row in d["rows"]:
        if row["status"] == "refused":
            reason = row["reason"].split(": ", 1)[-1] if row.get("reason") else "?"
            refused.setdefault(reason, []).append(row["model"])
    barriers = [r for r in d["rows"] if r["status"] == "handled" and r.get("barriers")]
    cover = d.get("coverage")
    out = [f"{what} ({d['total']}), {d['hardware']}, {d['date'][:10]}: "
           f"**{d['summary']}**" + (f", of which **{len(barriers)} handled with channel barriers**"
                                    if "handled_with_barriers" in d else "")
           + f" (`benchmarks/results/{stem}.md`). *Handled* means random plans pruned "
           "physically equal the masked original (float64, max abs diff < 1e-4), the pruned model trains, and the cost "
           "model's MACs equal `torch.utils.flop_counter.FlopCounterMode`'s; *with channel barriers*: ops legr cannot "
           "follow exactly were analysed around, their channel groups frozen; *refused* means a one-line "
           "`UnsupportedModelError` before anything is modified."]
    if cover and cover.get("handled"):
        out[-1] += (f" Prunable MACs (the share of a model's MACs in layers that read or write a prunable channel): "
                    f"**>= 70% in {cover['share_at_least_70']} of {cover['handled']} handled models**, median "
                    f"{100 * cover['median_share']:.0f}%.")
    out.append("")
    if barriers:
        out.append("- with channel barriers (prunable MACs): " + ", ".join(
            f"{r['model']} ({100 * r['prunable_share']:.0f}%)" for r in barriers))
    out += [f"- refused, {', '.join(models)}: {reason}"
            for reason, models in sorted(refused.items(), key=lambda kv: -len(kv[1]))]
    return out


def latency() -> list[str]:
    out: list[str] = []
    for stem in ("latency_uniform", "latency_uniform_t1", "lowrank_latency_t1"):
        d = _load(f"{stem}.json")
        if d is None or not d.get("complete"):
            continue
        batches = [str(b) for b in d["settings"]["batch_sizes"]]
        rows = []
        for m in d["models"]:
            for t in m["targets"]:
                rows.append([m["model"], t.get("method", "uniform"), f"{t['target']:.2f}",
                             f"{t['macs'] / m['base_macs']:.3f}", f"{t['params'] / m['base_params']:.3f}"]
                            + [f"{t['latency_ratio'][b]:.3f}" for b in batches]
                            + [f"**{t['efficiency'][b]:.2f}**" for b in batches])
        head = ["model", "method", "target", "MACs ratio", "params ratio"] + [f"latency ratio b{b}" for b in batches] + \
            [f"efficiency b{b}" for b in batches]
        load = d["machine_load"]["mean_foreign_load"]
        names = {"uniform": "uniform L1 pruning", "enc-model": "ENC-Model", "enc-map": "ENC-Map"}
        methods = d["settings"].get("methods", ["uniform"])
        what = ("Uniform L1 pruning, physically applied" if methods == ["uniform"] else
                ", ".join(names[x] for x in methods) + " (SVD decomposition at the same MACs), timed side by side")
        what = what[0].upper() + what[1:]
        out += [f"{what}, CPU latency, {d['settings']['threads']} thread(s) "
                f"({d['hardware_label']}, {d['created'][:10]}, `{d['command']}`; other processes used "
                f"{100 * load:.0f}% of the CPU meanwhile; details in `benchmarks/results/{stem}.md`). "
                "Efficiency = latency speedup / MACs speedup (1.0 = latency falls as fast as MACs):", ""]
        out += _table(head, rows) + [""]
    return out[:-1] or ["Not run yet: `python benchmarks/latency_uniform.py`."]


def latency_budget() -> list[str]:
    d = _load("latency_budget.json")
    if d is None or not d.get("parts"):
        return ["Not run yet: `python benchmarks/latency_budget.py`."]
    parts = d["parts"]
    out = [f"{d['hardware']}, {d['date'][:10]}, `{d['command']}`; clock: {d['clock']} (the thread's CPU time: this "
           f"shared VM's wall clock swings by up to 2x within seconds), statistic: {d['statistic']} (the fastest "
           "forward); networks timed as deployed (batch norms folded); random weights (timings do not depend on "
           "them). Details: `benchmarks/results/latency_budget.md`.", "",
           "**(a) Latency model** (fitted on the full network + 16 random allocations, checked on 30 others + the full "
           "network; ratio error: of the predicted latency relative to the full network's, what a fractional "
           "budget relies on). Goal: median error <= 5%, max <= 15%:", ""]
    out += _table(["model", "batch", "full network ms (measured / predicted)", "median error", "max error",
                   "median ratio error", "max ratio error"],
                  [[p["model"], str(p["batch_size"]), f"{p['baseline_ms']:.2f} / {p['predicted_baseline_ms']:.2f}",
                    f"{p['summary']['median_rel_err']:.1%}", f"{p['summary']['max_rel_err']:.1%}",
                    f"{p['summary']['median_ratio_err']:.1%}", f"{p['summary']['max_ratio_err']:.1%}"] for p in parts])
    out += ["", "**(b) Latency-targeted members** at 30/50/70% of the source network's latency (uniform and the "
            "non-uniform allocator, round_to 1 and 8): measured latency / target, min-max over the members, cut by "
            "the prediction alone and against the clock (`measure_members`, the default). Goal: within 5% below the "
            "target:", ""]
    rows = []
    for p in parts:
        b = [r for r in p["rows"] if r["part"] == "b" and not r.get("unreachable")]
        cells = []
        for measured in (False, True):
            land = [r["latency_ratio"] / r["target"] for r in b if r["measured_cut"] == measured]
            ok = sum(0.95 <= x <= 1.0 for x in land)
            cells.append(f"{min(land):.2f}-{max(land):.2f} ({ok}/{len(land)} within)" if land else "-")
        unreachable = sum(1 for r in p["rows"] if r.get("unreachable"))
        rows.append([p["model"], str(p["batch_size"]), *cells, str(unreachable)])
    out += _table(["model", "batch", "by prediction", "against the clock", "unreachable targets"], rows)
    out += ["", "**(c) Speed-up efficiency** (latency speed-up / MACs speed-up) at 50% MACs, round_to 1 -> 8. Goal: "
            "uniform with round_to 8 >= 0.9 at batch 64 and >= 0.8 at batch 1:", ""]
    rows = []
    for p in parts:
        c = {(r["allocator"], r["round_to"]): r for r in p["rows"] if r["part"] == "c" and r["target"] == 0.5}
        allocs = sorted({a for a, _ in c}, key=lambda a: a != "uniform")
        rows.append([p["model"], str(p["batch_size"]),
                     *[f"{c[(a, 1)]['efficiency']:.2f} -> **{c[(a, 8)]['efficiency']:.2f}** ({a})" for a in allocs]])
    out += _table(["model", "batch", "uniform", "non-uniform"], rows)
    return out


def conv_widths() -> list[str]:
    path = RESULTS / "conv_widths.md"
    if not path.is_file():
        return ["Not run yet: `python benchmarks/conv_widths.py`."]
    return path.read_text().split("\n", 2)[2].strip().splitlines()


def latency_accuracy() -> list[str]:
    path = RESULTS / "latency_accuracy" / "latency_accuracy.md"
    if not path.is_file():
        return ["Not run yet: in pieces of ~1 h each on an otherwise idle machine (a piece refuses to start beside "
                "other jobs: they move the latency cuts), `python benchmarks/latency_accuracy.py --seeds 0 --methods "
                "uniform-l1 legr` and `--seeds 0 --methods legr-macs`, the same for seed 1, then `--merge` (issue 29; "
                "`benchmarks/README.md`, \"Long runs\")."]
    return path.read_text().split("\n", 2)[2].strip().splitlines() + ["",
            "![accuracy vs latency](benchmarks/results/latency_accuracy/accuracy_vs_latency.png)"]


def distill_quantize() -> list[str]:
    path = RESULTS / "distill_quantize" / "distill_quantize.md"
    if not path.is_file():
        return ["Not run yet: in pieces, `python benchmarks/distill_quantize.py --seeds 0 --arms ce`, then the `kd-*` "
                "arms of that seed, `--timing`, then `--merge` (issue 33; `benchmarks/README.md`)."]
    d = json.loads((RESULTS / "distill_quantize" / "distill_quantize.json").read_text())
    return [f"LeGR members of cifar_resnet20 on CIFAR-10-JPEG fine-tuned with cross-entropy (`ce`) or distilled from "
            f"the source network (`kd-*`, alpha and T in `configs/distill_resnet20_cifar10jpeg.yaml`; the KD arm "
            f"reported is chosen on validation: {d['chosen_kd'] or 'none yet'}), then int8 in onnxruntime (static, "
            f"QDQ, 512 training images to calibrate; top-1 and latency measured in onnxruntime, thread CPU time, one "
            f"thread). Hardware: {', '.join(d['hardware']) or '-'}. Below: ResNet-50 / MobileNetV2 (random weights: "
            "time only), unpruned and uniform-L1 at 50% MACs.", "", *path.read_text().strip().splitlines()]


def solver() -> list[str]:
    d = _load("solver_speed.json")
    if d is None or "solve_only_median_s" not in d:
        return ["Not run yet: `python benchmarks/solver_speed.py`."]
    worst = max(r["slack_in_channel_steps"] for r in d["targets"])
    return [f"Budget solver on {d['model']} ({d['hardware']}): one ranking to seven MACs targets in "
            f"{d['seven_targets_median_s'] * 1e3:.0f} ms (building the solver {d['solver_build_median_s'] * 1e3:.0f} ms, "
            f"the seven solves {d['solve_only_median_s'] * 1e3:.1f} ms); one MACs evaluation {d['cost_eval_us']:.0f} µs; "
            f"every target met from below within {worst:.2f} channel steps (`benchmarks/results/solver_speed.json`)."]


def analysis() -> list[str]:
    d = _load("analysis_speed.json")
    if d is None:
        return ["Not run yet: `python benchmarks/analysis_speed.py`."]
    rows = [[r["model"], "x".join(str(s) for s in r["input"][1:]), f"{r['params'] / 1e6:.1f}M", str(r["groups"]),
             f"{r['median_s']:.2f} s", f"{r['ratio_to_target']:.2f}"] for r in d["rows"]]
    return [f"`legr.graph.analyze` + the cost model, median of {d['repeats']} runs after a warm-up ({d['hardware']}, "
            f"{d['threads']} threads; target: under {d['target_s']:g} s for a ResNet-50-size model; "
            "`benchmarks/results/analysis_speed.json`):", ""] \
        + _table(["model", "input", "params", "groups", "analysis", "/ target"], rows)


def scale() -> list[str]:
    path = RESULTS / "scale.md"
    if not path.exists():
        return ["Not run yet: `python benchmarks/scale.py`."]
    return ["Streaming vs in-memory loading, data-parallel SGD and Ray fine-tunes on this machine "
            "(`benchmarks/results/scale.json`):", "", *path.read_text().strip().splitlines()]


def legr_run(folder: str, title: str) -> Callable[[], list[str]]:
    def block() -> list[str]:
        rows = _load(f"{folder}/results.json")
        if rows is None:
            return [f"Not run yet: see `benchmarks/results/{folder}/`."]
        cfg = yaml.safe_load((RESULTS / folder / "config.yaml").read_text())
        s, ft = cfg["search"], cfg["finetune"]
        base = rows[0]
        table = []
        for r in rows:
            before = "" if r.get("top1_before_ft") is None else f"{100 * r['top1_before_ft']:.2f}"
            delta = "" if r is base else f"{100 * (r['top1'] - base['top1']):+.2f}"
            table.append([r["name"], f"{r['macs'] / 1e6:.2f}", f"{100 * r['macs_ratio']:.1f}",
                          f"{100 * r['params_ratio']:.1f}", before, f"{100 * r['top1']:.2f}", delta,
                          f"{r.get('latency_cpu_b1_ms', float('nan')):.2f}", f"{r.get('latency_cpu_b64_ms', float('nan')):.1f}"])
        head = ["network", "MACs (M)", "MACs %", "params %", "top-1 % before FT", "top-1 % after FT", "Δ top-1",
                "CPU b1 ms", "CPU b64 ms"]
        return [f"**{title}** — akamaster ResNet-56 adapted {cfg['base_training']['epochs']} epochs to CIFAR-10-JPEG; "
                f"search: population {s['population']}, sample {s['sample']}, {s['evaluations']} candidates, tau {s['tau']}, "
                f"at {100 * (s['target'] or min(cfg['targets'])):.0f}% MACs, fitness = {s.get('fitness', 'loss')} on {cfg['data']['val_size']} "
                f"held-out training images; {ft['epochs']} fine-tuning epochs per network; seed {cfg['seed']}; "
                f"test = the 10,000 CIFAR-10-JPEG test images; latency on {base['hardware']}. "
                f"Details: `benchmarks/results/{folder}/README.md`.", ""] + _table(head, table)
    return block


def _md_tables(name: str, count: int) -> list[list[str]]:
    """The first ``count`` markdown tables of a results .md file, each as its lines."""
    lines = (RESULTS / name).read_text().splitlines()
    return [list(rows) for is_table, rows in groupby(lines, key=lambda ln: ln.startswith("|")) if is_table][:count]


def han() -> list[str]:
    mnist, resnet = RESULTS / "han_mnist" / "han_mnist.json", RESULTS / "han_resnet56_cifar10jpeg" / "han_resnet56.json"
    if not mnist.is_file():
        return ["Not run yet: `python benchmarks/han_mnist.py`."]
    meta = json.loads(mnist.read_text())["meta"]
    summary, layers = _md_tables("han_mnist/han_mnist.md", 2)
    out = [f"Unstructured magnitude pruning with retraining on MNIST (seed {meta['seed']}, {meta['hardware']}; "
           f"budget: {meta['budget']}; details `benchmarks/results/han_mnist/han_mnist.md`). Paper figures in "
           "parentheses; test error on the 10,000 test images, every choice made on 5,000 held-out training images:",
           "", *summary, "", "Weights remaining per layer:", "", *layers]
    if resnet.is_file():
        out += ["", "ResNet-56 (akamaster adapted to CIFAR-10-JPEG), reduced CPU budget (details "
                "`benchmarks/results/han_resnet56_cifar10jpeg/han_resnet56.md`):", "",
                *_md_tables("han_resnet56_cifar10jpeg/han_resnet56.md", 1)[0]]
    return out


def compare(folder: str) -> Callable[[], list[str]]:
    def block() -> list[str]:
        d = _load(f"{folder}/compare.json")
        if d is None:
            return [f"Not run yet: in pieces, `python benchmarks/compare_methods.py --config configs/{folder}.yaml "
                    f"--seeds 0 --methods amc` (one seed of one method each), then `--merge` (writes "
                    f"`benchmarks/results/{folder}/`)."]
        c, targets = d["config"], d["targets"]
        s, f = c["search"], c["finetune"]
        steps = f["epochs"] * f["steps_per_epoch"] if f.get("steps_per_epoch") else None
        summary = {(r["method"], r["target"]): r for r in d["summary"]}
        base = summary[("baseline", None)]
        pm = lambda r, k: "-" if r.get(k) is None else f"{100 * r[k]:.2f} ± {100 * (r.get(f'{k}_std') or 0):.2f}"  # noqa: E731
        before = "top1_after_bn" if all(r.get("top1_after_bn") is not None for r in d["summary"] if r["target"]) \
            else "top1_before_ft"
        rows = []
        for m in c["compare"]["methods"]:
            mine = [summary.get((m["name"], t)) for t in targets]
            if None in mine:
                rows.append([m["name"], *["-"] * (2 * len(targets)), "not run yet"])
                continue
            t = d["family_time_s"][m["name"]]["mean_s"]
            rows.append([m["name"], *[pm(r, "top1") for r in mine], *[pm(r, before) for r in mine],
                         f"{t / 60:.1f} min"])
        pct = [f"{100 * t:.0f}%" for t in targets]
        label = "after adaptive BN" if before == "top1_after_bn" else "before FT"
        head = ["method", *[f"top-1 {p} after FT" for p in pct], *[f"{p} {label}" for p in pct], "family time"]
        fitness = "; ".join(f"{m['name']}: {', '.join(f'{k} {v}' for k, v in m['search'].items())}"
                            for m in c["compare"]["methods"] if m.get("search"))
        pc = d.get("pipeline_cost")
        out = [f"{d['model']} (akamaster, adapted {c['base_training']['epochs']} epochs) on CIFAR-10-JPEG, seeds "
               f"{', '.join(map(str, d['seeds']))} (mean ± std), source network {100 * base['top1']:.2f}% top-1 "
               f"({base['macs'] / 1e6:.2f}M MACs, CPU b64 {base.get('latency_cpu_b64_ms', float('nan')):.1f} ms). "
               f"Same for every method: splits, targets, {steps or f['epochs']} fine-tuning "
               f"{'SGD steps' if steps else 'epochs'} per network; lcp/legr search with population {s['population']}, "
               f"sample {s['sample']}, {s['evaluations']} candidates"
               + (f" x {s['restarts']} independent searches (the fitter winner kept)" if s.get("restarts", 1) > 1
                  else "") + f", fitness = validation {s['fitness']} after "
               f"adaptive BN on {s.get('bn_batches', 0)} training batches"
               + (f" at {', '.join(f'{100 * t:.0f}%' for t in d['search_targets'])} MACs, "
                  + AGGREGATES[s.get("aggregate", "mean")] + (", guarded: a member whose cut scores below uniform-"
                                                               f"{s.get('fallback_criterion') or 'l2sq'} on validation "
                                                               "is that network" if s.get("guard") else "")
                  if len(d.get("search_targets", ())) > 1 else f" at {100 * targets[0]:.0f}% MACs") + ", tau "
               f"{s['tau']}, on {c['data']['val_size']} held-out training images"
               + (f" (changed per method — {fitness})" if fitness else "") + ". Test top-1 % on the 10,000 "
               f"CIFAR-10-JPEG test images. Hardware: {d['hardware']}; latency timed on {c['eval']['threads'] or 'all'} "
               f"thread(s). Family time = rank + prune + fine-tune of all {len(targets)} networks. Full table (MACs, "
               f"params, CPU latency b1/b64): `benchmarks/results/{folder}/summary.md`.", "", *_table(head, rows)]
        if d.get("missing"):
            out += ["", f"Merged from {d['pieces']} pieces; still missing (seed method): "
                    + ", ".join(f"{seed} {m}" for seed, m in d["missing"]) + "."]
        revisions = _revisions(d["runs"])
        if len(set(revisions.values())) > 1:
            out += ["", "Rows from different code (pieces run at different times; git revision per method): "
                    + "; ".join(f"{m} {rev}" for m, rev in revisions.items()) + "."]
        out += _goal(d, summary, targets)
        restarted = {m: v for m, v in d.get("searches", {}).items() if any(len(r["restart_best"]) > 1 for r in v.values())}
        if restarted:
            out += ["", "Validation fitness of each independent search (restart 0 / restart 1 / ...; the fitter "
                    "winner is kept), per seed, and (where recorded) how many of each search's candidates the guard "
                    "found below uniform:"]
            out += [f"- {m}: " + "; ".join(f"seed {seed} " + " / ".join(_fitness(f) for f in r["restart_best"])
                                            + (f" (infeasible {' / '.join(map(str, r['infeasible']))})"
                                               if "infeasible" in r else "")
                                            for seed, r in v.items()) for m, v in restarted.items()]
        out += _winners(d)
        if pc:
            out += ["", f"Pipeline cost ({pc['method']}, seed {pc['seed']}): learning once and cutting {len(targets)} "
                    f"targets took {pc['learn_once_s'] / 60:.1f} min; a separate search per target (same search "
                    f"budget) would take {pc['search_per_target_s'] / 60:.1f} min: **{pc['pipeline_ratio']:.2f}x** for "
                    f"the whole pipeline, {pc['search_ratio']:.2f}x for the searches alone."]
        return out + ["", f"![accuracy vs MACs](benchmarks/results/{folder}/accuracy_vs_macs.png)", "",
                      f"![channels kept per layer](benchmarks/results/{folder}/widths.png)"]
    return block


AGGREGATES = {"mean": "the plain mean over them", "relative": "the mean relative gain over the uniform allocation",
              "worst": "the worst relative gain over the uniform allocation"}


def _kind(entry: dict) -> str:
    """A compare entry's method (its first stage's): filters, lowrank, ..."""
    method = entry.get("method") or "filters"
    return method if isinstance(method, str) else method[0]


def _prunes_filters(entry: dict) -> bool:
    """A compare entry whose method removes filters (its class lives in legr.methods.filters: any allocator, GDP)."""
    return METHODS[_kind(entry)].__module__.startswith("legr.methods.filters")


def _is_legr(entry: dict) -> bool:
    """A compare entry that is filter pruning with the legr allocator (another method's entry carries the shared
    allocator key too)."""
    return _kind(entry) == "filters" and entry.get("allocator") == "legr"


def _winners(d: dict) -> list[str]:
    """Each search's winner scored at each of its search targets (validation %, per seed; AMC searches every member's
    target on its own): how far the searches got, target by target, where the pieces recorded it."""
    rows = {m: {seed: r.get("winner", r["best_fitness"]) for seed, r in v.items()}
            for m, v in d.get("searches", {}).items()}
    rows = {m: {seed: w for seed, w in v.items() if isinstance(w, list)} for m, v in rows.items()}
    rows = {m: v for m, v in rows.items() if v}
    if not rows:
        return []
    return ["", "The search winner's validation top-1 at each of its search targets (%, lowest target first; per "
            "seed, where the piece recorded it; AMC: a winner per member target):"] + [
        f"- {m}: " + "; ".join(f"seed {seed} " + " / ".join(f"{100 * x:.1f}" for x in w) for seed, w in v.items())
        for m, v in rows.items()]


def _goal(d: dict, summary: dict, targets: list[float]) -> list[str]:
    """Each LeGR method against the best filter-pruning method that is not LeGR, per target and over the family
    (issue 38's goal, computed); methods of another kind (low rank, ...) are set beside the best LeGR method in a
    line of their own. Only methods run at every seed of the comparison count: a one-seed row beside a three-seed
    mean would compare noise."""
    methods = d["config"]["compare"]["methods"]
    seeds = len(d["seeds"])
    complete = lambda m: all((m, t) in summary and summary[(m, t)]["n"] == seeds for t in targets)  # noqa: E731
    others = [m["name"] for m in methods if _prunes_filters(m) and not _is_legr(m) and complete(m["name"])]
    kinds = [m for m in methods if not _prunes_filters(m) and complete(m["name"])]
    partial = [m["name"] for m in methods if not _is_legr(m) and not complete(m["name"])
               and any((m["name"], t) in summary for t in targets)]
    mean = lambda m: sum(summary[(m, t)]["top1"] for t in targets) / len(targets)  # noqa: E731
    out = []
    for name in (m["name"] for m in methods if _is_legr(m) and complete(m["name"])):
        if not others:
            break
        cells = []
        for t in targets:
            best = max(others, key=lambda m: summary[(m, t)]["top1"])
            mine = summary[(name, t)]
            cells.append(f"{100 * t:.0f}%: {100 * (mine['top1'] - summary[(best, t)]['top1']):+.2f} vs {best} "
                         f"(std {100 * mine['top1_std']:.2f})")
        family = max(others, key=mean)
        line = f"- {name}: " + "; ".join(cells) + (f"; family mean {100 * mean(name):.2f} vs {family} "
                                                   f"{100 * mean(family):.2f} ({100 * (mean(name) - mean(family)):+.2f})")
        if "uniform-l1" in others:
            behind = [f"{100 * t:.0f}%" for t in targets
                      if summary[(name, t)]["top1"] < summary[("uniform-l1", t)]["top1"]]
            line += "; below uniform-l1 at " + (", ".join(behind) if behind else "no target")
        out.append(line)
    if not out:
        return []
    legr = max((m["name"] for m in methods if _is_legr(m) and complete(m["name"])), key=mean)
    for m in kinds:
        name = m["name"]
        out.append(f"- {name} ({_kind(m)}, not filter pruning: outside the goal): " + "; ".join(
            f"{100 * t:.0f}%: {100 * (summary[(name, t)]['top1'] - summary[(legr, t)]['top1']):+.2f}"
            for t in targets) + f" vs {legr}; family mean {100 * mean(name):.2f} ({100 * (mean(name) - mean(legr)):+.2f})")
    note = (f" Not counted until all {seeds} seeds are in: {', '.join(partial)}." if partial else "")
    return ["", "LeGR methods against the best non-LeGR filter-pruning method at each target and over the family "
                f"(difference of mean top-1 after FT, points; std over seeds; methods with all {seeds} seeds); "
                f"other kinds of compression against the best LeGR method.{note}", "", *out]


def fitness() -> list[str]:
    d = _load("fitness_correlation/fitness_correlation.json")
    if d is None:
        return ["Not run yet: `python benchmarks/fitness_correlation.py`."]
    r = d["recipe"]
    counts = ", ".join(f"{len(v['candidates'])} candidates at {float(t):.0%}" for t, v in d["targets"].items())
    out = [f"{d['config']['model']['name']} adapted to CIFAR-10-JPEG (the comparison's source network), {counts} "
           f"MACs (identity, uniform-equivalent, random transforms, search winners); fitness on {r['val_images']} "
           f"validation images; ground truth = top-1 on {r['test_images'] or 'all'} random CIFAR-10-JPEG test images "
           f"after adaptive BN + {r['ft_steps']} fine-tuning steps, seed {r['seed']}; {d['hardware']}. "
           f"Correlation of each fitness with the ground truth, and the ground truth of the candidate it picks "
           f"(details and scatter plots: `benchmarks/results/fitness_correlation/summary.md`):", ""]
    names = list(next(iter(d["targets"].values()))["variants"])
    head = ["fitness", *[f"{h} {float(t):.0%}" for t in d["targets"] for h in ("Spearman", "pick")], "s/eval"]
    rows = []
    for n in names:
        v = [d["targets"][t]["variants"][n] for t in d["targets"]]
        cells = [c for x in v for c in ("-" if x["spearman"] is None else f"{x['spearman']:+.2f}",
                                          f"{100 * x['pick_top1']:.1f}")]
        rows.append([f"**{n}** (default)" if n == d["default"] else n, *cells,
                     f"{sum(x['seconds'] for x in v) / len(v):.1f}"])
    best = [f"{float(t):.0%}: best candidate {100 * max(c['ground_truth_top1'] for c in v['candidates']):.1f}%"
            for t, v in d["targets"].items()]
    out += _table(head, rows) + ["", "Best achievable pick — " + "; ".join(best) + "."]
    fam = d.get("family")
    if fam:
        cells = "; ".join(f"{name}: Spearman {v['spearman']['mean']:+.2f}, pick {100 * v['pick_mean_top1']:.1f}%"
                          for name, v in fam["fitnesses"].items())
        out += ["", f"One fitness for the family ({len(fam['candidates'])} rankings scored at every target; against "
                    f"their mean fine-tuned top-1, best {100 * fam['best_mean_top1']:.1f}%, median "
                    f"{100 * fam['median_mean_top1']:.1f}%): {cells}."]
    return out


def family_fitness() -> list[str]:
    d = _load("family_fitness/family_fitness.json")
    if d is None:
        return ["Not run yet: `python benchmarks/family_fitness.py`."]
    text = (RESULTS / "family_fitness" / "summary.md").read_text().split("\n")
    intro = next(line for line in text if line.startswith("Written by"))
    uniform = next(line for line in text if line.startswith("Uniform:"))
    return [intro, "", *_md_tables("family_fitness/summary.md", 1)[0],
            "", f"{uniform} The pool's figures: `benchmarks/results/family_fitness/summary.md`."]


def gdp() -> list[str]:
    path = RESULTS / "gdp" / "summary.md"
    if not path.is_file():
        return ["Not run yet: in pieces, `python benchmarks/compare_methods.py --seeds 0 --methods gdp` (~16 min on one "
                "core), `python benchmarks/gdp_dynamics.py --collect 0`, the same for seeds 1 and 2, then "
                "`compare_methods.py --merge` and `gdp_dynamics.py --merge` (issue 36)."]
    return path.read_text().strip().splitlines() + ["", "![GDP: channels recovered per decision]"
                                                        "(benchmarks/results/gdp/recovery.png)"]


def class_skew() -> list[str]:
    path = RESULTS / "class_skew" / "summary.md"
    if not path.is_file():
        return ["Not run yet: `python benchmarks/class_skew.py --family RUN_DIR` on a finished LeGR run of "
                "cifar_resnet20 on CIFAR-10-JPEG (~15 min on one core; issue 37)."]
    return [line.replace("](class_skew.png)", "](benchmarks/results/class_skew/class_skew.png)")
            for line in path.read_text().strip().splitlines()]


SECTIONS: list[tuple[str, Callable[[], list[str]]]] = [
    ("Engine coverage (`benchmarks/torchvision_tally.py`)", tally),
    ("Engine coverage, timm (`benchmarks/timm_tally.py`)",
     lambda: tally("timm_tally", "Small members of timm's ConvNet families (`timm:<name>`, 64x64 unless the model "
                                 "needs its own size)")),
    ("Engine coverage, timm models it was not developed against (`benchmarks/timm_tally.py --unseen`)",
     lambda: tally("timm_tally_unseen", "One ConvNet per timm family: the smallest not in the list above nor named in "
                                        "the tests, picked by a rule written down before the run (`select_unseen`; "
                                        "the picks: `benchmarks/results/timm_tally_unseen_selection.json`)")),
    ("Analysis speed (`benchmarks/analysis_speed.py`)", analysis),
    ("Do MACs savings become latency? Uniform pruning and SVD low rank (`benchmarks/latency_uniform.py`)", latency),
    ("Latency budgets (`benchmarks/latency_budget.py`)", latency_budget),
    ("Is a convolution's time smooth in its width? (`benchmarks/conv_widths.py`)", conv_widths),
    ("Accuracy at equal measured latency (`benchmarks/latency_accuracy.py`)", latency_accuracy),
    ("Distillation and int8 (`benchmarks/distill_quantize.py`)", distill_quantize),
    ("Budget solver speed (`benchmarks/solver_speed.py`)", solver),
    ("Scale-out: streamed data, data-parallel SGD, Ray (`benchmarks/scale.py`)", scale),
    ("LeGR on ResNet-56, CIFAR-10-JPEG (`benchmarks/legr_resnet56_cifar10jpeg.py`)",
     lambda: legr_run("legr_resnet56_cifar10jpeg", "2-core CPU budget")()
     + [""] + legr_run("legr_resnet56_cifar10jpeg_gpu", "GPU budget (training on one H100)")()),
    ("Which search fitness predicts the fine-tuned network? (`benchmarks/fitness_correlation.py`)", fitness),
    ("Methods under equal budgets (`benchmarks/compare_methods.py`)", compare("compare_resnet20_cifar10jpeg")),
    ("Methods under equal budgets, five targets from 20% to 80% (`benchmarks/compare_methods.py --config "
     "configs/compare_resnet20_cifar10jpeg_family5.yaml`, in pieces)", compare("compare_resnet20_cifar10jpeg_family5")),
    ("AMC against LeGR, seven targets from 20% to 80% (`benchmarks/compare_methods.py --config "
     "configs/compare_resnet20_cifar10jpeg_family7.yaml`, in pieces)", compare("compare_resnet20_cifar10jpeg_family7")),
    ("GDP: do filters masked by mistake come back? (`benchmarks/gdp_dynamics.py`)", gdp),
    ("One fitness for the family (`benchmarks/family_fitness.py`)", family_fitness),
    ("PCNN: a family under class skew, without fine-tuning (`benchmarks/class_skew.py`)", class_skew),
    ("Han et al. 2015 magnitude pruning (`benchmarks/han_mnist.py`, `benchmarks/han_resnet56_cifar10jpeg.py`)", han),
]


def render() -> str:
    lines = [START, ""]
    for title, block in SECTIONS:
        lines += [f"### {title}", "", *block(), ""]
    return "\n".join(lines + [END])


def _revisions(runs: list[dict]) -> dict[str, str]:
    """Per method (in order of appearance), the git revisions its rows were computed at ("-dirty" dropped)."""
    revs: dict[str, list[str]] = {}
    for r in runs:
        if r["method"] != "baseline" and r.get("git_rev"):
            rev = r["git_rev"].removesuffix("-dirty")
            if rev not in revs.setdefault(r["method"], []):
                revs[r["method"]].append(rev)
    return {m: ", ".join(v) for m, v in revs.items()}


def _fitness(value: float) -> str:
    """A search's best validation fitness in %, or "infeasible" when the guard's penalty holds it (the search found
    no candidate within the tolerance of uniform at every search target)."""
    return "infeasible" if value < -PENALTY / 2 else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the results files")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    text = args.readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"error: {args.readme} lacks the results markers")
    head, rest = text.split(START, 1)
    new = head + render() + rest.split(END, 1)[1]
    if args.check:
        sys.exit(0 if new == text else "README.md results section is out of date: run benchmarks/readme_results.py")
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
