"""Reproduce Han et al. 2015 ("Learning both Weights and Connections") on MNIST: LeNet-300-100 and LeNet-5.

Each model is one `legr run` with ``method: magnitude`` (``configs/han_lenet_300_100_mnist.yaml``,
``configs/han_lenet5_mnist.yaml``): train the dense network from scratch on 55,000 MNIST training images (5,000 held
out for validation, stratified, seed 0), run the sensitivity analysis on the validation split, allocate per-layer
pruned fractions for the overall compression target, run the iterative prune -> retrain rounds (L2, surviving
weights kept, pruned ones masked at zero), remove dead units, store in CSR, and test on the 10,000 test images. This
script adds what the paper reports beyond a run's results: storage both ways, the dead units, the weights remaining
per layer, and the CPU latency of the dense network, the pruned one with dense kernels and with torch's sparse
kernels, timed together in interleaved rounds (the configs' ``eval`` settings). Writes, under
``benchmarks/results/han_mnist/``: ``han_mnist.json`` (all rows + summaries), ``han_mnist.md`` (tables beside the
paper's figures), ``results.json``/``results.csv`` (``legr.reporting`` rows), ``sensitivity_<model>.png``,
``layers.png``. Run folders (resumable) go to ``benchmarks/results/han_mnist/runs/`` (git-ignored).

    LEGR_DATA=/work/shared/data nice -n 19 .venv/bin/python benchmarks/han_mnist.py        # ~15 min on 2 cores
    LEGR_DATA=/work/shared/data .venv/bin/python benchmarks/han_mnist.py --quick --out /tmp/han  # smoke, ~1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from legr.engine.cost import count_params  # noqa: E402
from legr.engine.dead_units import remove_dead_units  # noqa: E402
from legr.engine.latency import measure_interleaved  # noqa: E402
from legr.hardware import git_revision, hardware_info, hardware_label  # noqa: E402
from legr.methods.magnitude.compress import MASK_PREFIX  # noqa: E402
from legr.methods.magnitude.pruning import (  # noqa: E402
    allocate_fractions,
    count_nonzero,
    layer_density,
    reference_stds,
)
from legr.methods.magnitude.sparse import (  # noqa: E402
    encode_sparse,
    sparse_kernel_copy,
    sparse_weight_names,
    storage_report,
)
from legr.models import get_model_spec  # noqa: E402
from legr.models.checkpoint import load_state_dict, read_state_dict  # noqa: E402
from legr.paths import atomic_write_text  # noqa: E402
from legr.pipeline.config_files import load_config  # noqa: E402
from legr.pipeline.steps import Pipeline  # noqa: E402
from legr.reporting import BASELINE, latency_key, save_figure, write_results  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = HERE.parent / "configs"
# Han et al. 2015, Table 1 / Tables 2-3 (error in %, parameters, per-layer weights remaining).
PAPER = {
    "lenet_300_100": {"label": "LeNet-300-100", "error": (1.64, 1.59), "params": (267_000, 22_000), "x": 12,
                      "layers": {"fc1": 0.08, "fc2": 0.09, "fc3": 0.26}},
    "lenet5": {"label": "LeNet-5", "error": (0.80, 0.77), "params": (431_000, 36_000), "x": 12,
               "layers": {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}},
}
# the smoke setting: a few SGD steps per epoch, two rounds, a smaller validation split
QUICK = {"base_training.epochs": 2, "base_training.steps_per_epoch": 20, "finetune.epochs": 2,
         "finetune.steps_per_epoch": 20, "magnitude.rounds": 2, "magnitude.sensitivity_samples": 1000,
         "data.val_size": 1000, "eval.latency_repeats": 5}


def run_config(name: str, quick: bool, target: float | None) -> Any:
    """The model's committed config, with the smoke setting and another compression target when asked; the run's
    own latency timing is off: this script times the three networks of the paper's table together."""
    overrides: dict[str, Any] = {**(QUICK if quick else {}), "eval.latency": False}
    if target is not None:
        overrides["targets"] = [1 / target]
    return load_config(CONFIGS / f"han_{name}_mnist.yaml", overrides)


def _masked(run: Pipeline, member: Path, rounds: int) -> torch.nn.Module:
    """The dense-shaped network after the last round (its pruned weights at zero), from that round's checkpoint."""
    state = read_state_dict(member / f"round{rounds}.safetensors")
    weights = {k: v for k, v in state.items() if not k.startswith(MASK_PREFIX)}
    return load_state_dict(copy.deepcopy(run.base).cpu(), weights, source=str(member)).eval()


def experiment(name: str, cfg: Any, folder: Path, log: Any) -> dict[str, Any]:
    """Run (or resume) the model's `legr run` in ``folder``; its summary: the run's rows completed with the paper's
    figures (storage, latency three ways, dead units, weights remaining per layer)."""
    start = time.perf_counter()
    run = Pipeline(cfg, folder, log=log)
    base_row, member_row = run.evaluate()
    member = run.members()[0]
    final, info = run.method.load(member)
    rounds = json.loads(member.finetuned.read_text())
    masked = _masked(run, member.root, len(rounds))
    dense = run.base.cpu().eval()
    data, e = run.data, cfg.eval
    _, dead = remove_dead_units(masked, data.input_size)
    target = 1 / cfg.targets[0]
    fractions, _ = allocate_fractions(run.prepared, target, count_params(dense), cfg.magnitude.allocation)
    base_store = storage_report(dense)
    final_store = storage_report(final, encode_sparse(final.state_dict(), sparse_weight_names(final))[0])
    nets = {"dense": dense, "pruned": final, "sparse": sparse_kernel_copy(final)}
    timed = measure_interleaved(nets, data.input_size, e.latency_batch_sizes, device="cpu", rounds=e.latency_rounds,
                                threads=e.threads, warmup=e.latency_warmup, repeats=e.latency_repeats)
    latency = {net: {latency_key("cpu", b): r.median_ms for b, r in per_batch.items()}
               for net, per_batch in timed.items()}
    common = {"model": name, "dataset": "MNIST", "seed": cfg.seed, "git_rev": git_revision(HERE),
              "hardware": hardware_label()}
    scores = {k: base_row[k] for k in ("top1", "top5", "loss")}
    base = {"name": "dense", "method": BASELINE, **common, "macs": base_row["macs"], "params": count_params(dense),
            "compression": 1.0, **scores, "error": 1 - scores["top1"], "nonzero_params": count_nonzero(dense),
            "dense_bytes": base_store["dense_bytes"], **latency["dense"]}
    nonzero, scores = count_nonzero(final), {k: member_row[k] for k in ("top1", "top5", "loss")}
    pruned = {"name": f"han{target:g}x", "method": "han2015", **common, "target": target, "macs": info["macs"],
              "sparse_macs": info["sparse_macs"], "params": final_store["params"], "nonzero_params": nonzero,
              "compression": count_params(dense) / nonzero,
              "storage_compression": base_store["dense_bytes"] / final_store["sparse_bytes"],
              "sparse_bytes": final_store["sparse_bytes"], "index_bytes": final_store["index_bytes"], **scores,
              "error": 1 - scores["top1"], "finetune_epochs": info["finetune_epochs"], **latency["pruned"],
              **{"sparse_kernel_" + k: v for k, v in latency["sparse"].items()},
              "path": str(member.root / "model.sparse.safetensors")}
    return {"rows": [base, pruned], "base_source": "trained here", "base_val_top1": run.accuracy(dense, data.val).top1,
            "masked_test_top1": run.accuracy(masked, data.test).top1,
            "remaining": layer_density(masked, list(rounds[-1]["density"])), "rounds": rounds,
            "fractions": fractions, "stds": reference_stds(dense, list(rounds[-1]["density"])), "dead": dead,
            "sensitivity": {n: c.to_dict() for n, c in run.prepared.items()}, "latency_threads": e.threads,
            "input_size": list(data.input_size), "train_images": len(data.train[0]), "val_images": len(data.val[0]),
            "test_images": len(data.test[0]), "spec": get_model_spec(name).description,
            "config": cfg.model_dump(mode="json"), "seconds_this_call": time.perf_counter() - start}


def plot_sensitivity(name: str, summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for layer, curve in summary["sensitivity"].items():
        ax.plot([100 * f for f in curve["fractions"]], [100 * a for a in curve["top1"]], marker="o", ms=3,
                label=f"{layer} ({curve['params']:,} w)")
    if summary["sensitivity"]:
        ax.axhline(100 * next(iter(summary["sensitivity"].values()))["base_top1"], color="gray", ls=":", lw=1,
                   label="dense")
    ax.set_xlabel("weights pruned in that layer alone (%)")
    ax.set_ylabel("validation top-1 (%), no retraining")
    ax.set_ylim(bottom=max(0, ax.get_ylim()[0]))
    ax.set_title(f"{PAPER[name]['label']} on MNIST: sensitivity (cf. Han et al. Fig. 5)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def plot_layers(summaries: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summaries), figsize=(5 * len(summaries), 3.6))
    for ax, (name, summary) in zip(list(axes) if len(summaries) > 1 else [axes], summaries.items()):
        layers = list(PAPER[name]["layers"])
        xs = range(len(layers))
        ax.bar([x - 0.2 for x in xs], [100 * PAPER[name]["layers"][n] for n in layers], 0.4, label="Han et al. 2015")
        ax.bar([x + 0.2 for x in xs], [100 * summary["remaining"][n] for n in layers], 0.4, label="legr (this run)")
        ax.set_xticks(list(xs), layers)
        ax.set_ylabel("weights remaining (%)")
        row = summary["rows"][1]
        ax.set_title(f"{PAPER[name]['label']}: {row['compression']:.1f}x, error "
                     f"{100 * summary['rows'][0]['error']:.2f}% -> {100 * row['error']:.2f}%", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def markdown(summaries: dict, wall: dict, meta: dict) -> str:
    s0 = next(iter(summaries.values()))
    lines = ["# Han et al. 2015 magnitude pruning on MNIST (legr `benchmarks/han_mnist.py`)", "",
             f"Dataset MNIST (train {s0['train_images']:,} / validation {s0['val_images']:,} held out of the training "
             f"set, stratified, seed {meta['seed']}; test {s0['test_images']:,}, used only for the figures below). "
             f"Hardware: {meta['hardware']}. "
             f"git {meta['git_rev']}. Budget: {meta['budget']}.", "",
             "| model | error dense -> pruned (paper) | params dense -> non-zero (paper) | compression params (paper) "
             "| compression bytes (CSR incl. indices) | wall (train + prune + retrain) |", "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        base, row, p = s["rows"][0], s["rows"][1], PAPER[name]
        lines.append(f"| {p['label']} | {100 * base['error']:.2f}% -> {100 * row['error']:.2f}% "
                     f"({p['error'][0]:.2f}% -> {p['error'][1]:.2f}%) | {base['params']:,} -> {row['nonzero_params']:,} "
                     f"({p['params'][0] // 1000}K -> {p['params'][1] // 1000}K) | {row['compression']:.1f}x ({p['x']}x) "
                     f"| {row['storage_compression']:.1f}x ({base['dense_bytes']:,} B -> {row['sparse_bytes']:,} B, "
                     f"{row['index_bytes']:,} B of indices) | {wall[name] / 60:.1f} min |")
    lines += ["", "Weights remaining per layer (non-zero / dense weights of that layer; biases not counted):", "",
              "| model | layer | weights | paper | legr | final quality (threshold / std) |", "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        last = s["rounds"][-1]
        for layer, frac in PAPER[name]["layers"].items():
            params = s["sensitivity"][layer]["params"] if s["sensitivity"] else ""
            lines.append(f"| {PAPER[name]['label']} | {layer} | {params:,} | {100 * frac:.0f}% | "
                         f"{100 * s['remaining'][layer]:.1f}% | {last['qualities'][layer]:.2f} |")
    lines += ["", "Prune -> retrain rounds (validation top-1 right after pruning / after retraining):", "",
              "| model | round | weights kept | val top-1 pruned | val top-1 retrained | epochs |",
              "|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        for r in s["rounds"]:
            lines.append(f"| {PAPER[name]['label']} | {r['round']} | {100 * r['kept_fraction']:.2f}% | "
                         f"{100 * r['val_top1_pruned']:.2f}% | {100 * r['val_top1']:.2f}% | {r['epochs']} |")
    lines += ["", "Dead units removed (physically, `legr.engine.dead_units`): " + "; ".join(
        f"{PAPER[n]['label']}: " + ", ".join(f"{g} {s['dead']['kept'][g]}/{s['dead']['sizes'][g]} kept"
                                             for g in s['dead']['kept']) for n, s in summaries.items()), "",
              f"CPU latency, {meta['threads']} thread, median ms per forward (dense kernels on the pruned network "
              "vs torch CSR kernels for its Linear layers; convolutions stay dense):", "",
              "| model | batch | dense original | pruned, dense kernels | pruned, sparse kernels (Linear) |",
              "|---|---|---|---|---|"]
    for name, s in summaries.items():
        base, row = s["rows"]
        for b in (1, 64):
            k = f"latency_cpu_b{b}_ms"
            if k in base:
                lines.append(f"| {PAPER[name]['label']} | {b} | {base[k]:.3f} | {row[k]:.3f} | "
                             f"{row[f'sparse_kernel_latency_cpu_b{b}_ms']:.3f} |")
    lines += ["", "Figures: `sensitivity_lenet_300_100.png`, `sensitivity_lenet5.png` (per-layer sensitivity, no "
              "retraining), `layers.png` (remaining weights per layer beside the paper's).", ""]
    return "\n".join(lines)


def _add_wall(folder: Path, seconds: float, threads: int) -> float:
    """Wall seconds of every call that worked on ``folder`` (a resumed run adds up its parts); the total."""
    path = folder / "wall.json"
    calls = json.loads(path.read_text())["calls"] if path.exists() else []
    calls.append({"seconds": seconds, "threads": threads})
    total = sum(c["seconds"] for c in calls)
    atomic_write_text(path, json.dumps({"calls": calls, "seconds": total}) + "\n")
    return total


def _threads(folder: Path) -> str:
    calls = json.loads((folder / "wall.json").read_text())["calls"]
    return "/".join(str(c["threads"]) for c in calls)


def _budget(cfgs: dict[str, Any], target: float) -> str:
    """The training budget in words (the same for both models but the dense learning rate)."""
    cfg = next(iter(cfgs.values()))
    ft, rounds = cfg.finetune, cfg.magnitude.rounds
    per_round = ft.epochs // rounds
    lrs = " / ".join(f"{c.base_training.lr:g} {PAPER[n]['label']}" for n, c in cfgs.items())
    steps = f", {ft.steps_per_epoch} steps per epoch" if ft.steps_per_epoch else ""
    return (f"dense training {cfg.base_training.epochs} epochs (SGD, lr {lrs}); {rounds} prune/retrain rounds of "
            f"{per_round} epochs ({ft.epochs - per_round * (rounds - 1)} for the last){steps}; target {target:g}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (20 SGD steps per epoch, 2 rounds)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "han_mnist")
    parser.add_argument("--target", type=float, default=None, help="overall compression target (params; default: "
                                                                   "the configs', 12.5)")
    parser.add_argument("--models", nargs="*", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfgs = {name: run_config(name, args.quick, args.target) for name in PAPER if name in args.models}
    summaries, wall = {}, {}
    for name, cfg in cfgs.items():
        start = time.perf_counter()
        folder = args.out / "runs" / name
        summaries[name] = experiment(name, cfg, folder, log=lambda m: print(m, file=sys.stderr))
        wall[name] = _add_wall(folder, time.perf_counter() - start, args.threads)
    cfg0 = next(iter(cfgs.values()))
    target = 1 / cfg0.targets[0]
    cpu = hardware_label().replace(f" ({torch.get_num_threads()} threads)", "")
    meta = {"seed": cfg0.seed, "hardware": cpu, "git_rev": git_revision(HERE), "threads": cfg0.eval.threads,
            "budget": (_budget(cfgs, target) + "; torch threads per call on the run folder: "
                       + ", ".join(f"{PAPER[n]['label']} {_threads(args.out / 'runs' / n)}" for n in summaries)
                       + " (wall times add up all calls)"),
            "wall_seconds": wall}
    for name, s in summaries.items():
        plot_sensitivity(name, s, args.out / f"sensitivity_{name}.png")
    plot_layers(summaries, args.out / "layers.png")
    payload = {"benchmark": "han_mnist", "meta": meta, "hardware_info": hardware_info(), "paper": PAPER,
               "models": summaries}
    atomic_write_text(args.out / "han_mnist.json", json.dumps(payload, indent=1) + "\n")
    write_results([row for s in summaries.values() for row in s["rows"]], args.out)  # legr.reporting rows
    text = markdown(summaries, wall, meta)
    atomic_write_text(args.out / "han_mnist.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
