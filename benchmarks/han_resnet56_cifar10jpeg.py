"""Han et al. 2015 magnitude pruning on the CIFAR ResNet-56 (akamaster, option A) with CIFAR-10-JPEG — a reduced
but real version for a 2-core CPU.

1. Sensitivity of every Linear/Conv layer (each pruned alone to a few fractions, no retraining), scored on a
   subset of the validation split carved from the training images.
2. Accuracy vs overall sparsity, iteratively: each level prunes the retrained network of the previous level (the
   first: the dense one) to the per-layer fractions allocated from those curves (``allocate_fractions``, rule
   "cost"), retrains briefly with the masks, removes dead units, and is scored on the 10,000 CIFAR-10-JPEG test
   images before and after its retraining.

Weights: ``--weights`` (default: the akamaster checkpoint adapted to the JPEG images for 15 epochs by the GPU LeGR
run in ``runs/gpu/base/model.safetensors``, if present; else the unadapted akamaster checkpoint). Both were trained
without the validation split used here (5,000 images, seed 0), the adapted one on the other 45,000.

    LEGR_DATA=/work/shared/data LEGR_WEIGHTS=/work/shared/weights nice -n 19 \\
        .venv/bin/python benchmarks/han_resnet56_cifar10jpeg.py            # ~25 min on 2 shared cores
    ... --quick --out /tmp/han56                                          # smoke, ~2 min
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from legr.data import load_dataset, split_train_val  # noqa: E402
from legr.engine.cost import count_params  # noqa: E402
from legr.hardware import git_revision, hardware_info, hardware_label  # noqa: E402
from legr.methods.magnitude.compress import MagnitudeConfig, run_magnitude  # noqa: E402
from legr.methods.magnitude.pruning import SensitivityCurve, count_nonzero, layer_density, sensitivity  # noqa: E402
from legr.models import build_model, file_fingerprint, load_checkpoint, pretrained_path  # noqa: E402
from legr.paths import atomic_write_text  # noqa: E402
from legr.reporting import BASELINE, save_figure, write_results  # noqa: E402
from legr.training import FinetuneConfig, evaluate  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ADAPTED = ROOT / "runs" / "gpu" / "base" / "model.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ADAPTED if ADAPTED.exists() else None)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "han_resnet56_cifar10jpeg")
    parser.add_argument("--levels", type=float, nargs="*", default=[0.5, 0.8, 0.9],
                        help="overall sparsity levels (fraction of all parameters at zero)")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--sens-images", type=int, default=256, help="validation images scoring the sensitivity")
    parser.add_argument("--train-images", type=int, default=6400, help="training images for the retraining")
    parser.add_argument("--epochs", type=int, default=1, help="retraining epochs per level")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.fractions, args.sens_images, args.train_images = [0.5, 0.8], [0.5, 0.9], 64, 256
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    data = load_dataset("cifar10-jpeg")
    tx, ty, vx, vy = split_train_val(data.train_x, data.train_y, 5000, seed=0)
    # the images are stored class by class: every subset is drawn at random
    sub = torch.randperm(len(tx), generator=torch.Generator().manual_seed(0))[:args.train_images]
    tx, ty = tx[sub], ty[sub]
    shuffle = torch.randperm(len(vx), generator=torch.Generator().manual_seed(1))
    vx, vy = vx[shuffle], vy[shuffle]
    test_x, test_y = data.test_x, data.test_y
    if args.quick:
        pick = torch.randperm(len(test_x), generator=torch.Generator().manual_seed(2))[:500]
        test_x, test_y = test_x[pick], test_y[pick]
    weights = args.weights or pretrained_path("cifar_resnet56")
    dense = load_checkpoint(build_model("cifar_resnet56"), weights).eval()
    work = args.out / "runs"
    score = lambda m: evaluate(m, vx[:args.sens_images], vy[:args.sens_images], data.mean, data.std).top1  # noqa
    sens_path = work / "sensitivity.json"
    if sens_path.exists():
        curves = {n: SensitivityCurve(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                  for n, c in json.loads(sens_path.read_text()).items()}
    else:
        log(f"sensitivity: {len(args.fractions)} fractions x every layer on {args.sens_images} validation images")
        curves = sensitivity(copy.deepcopy(dense), score, args.fractions)
        atomic_write_text(sens_path, json.dumps({n: c.to_dict() for n, c in curves.items()}, indent=1))
    base_test = evaluate(dense, test_x, test_y, data.mean, data.std)
    total = count_params(dense)
    common = {"model": "cifar_resnet56", "dataset": "CIFAR-10-JPEG", "seed": 0, "git_rev": git_revision(ROOT),
              "hardware": hardware_label(), "macs": None}
    rows = [{"name": "dense", "method": BASELINE, **common, "params": total, "nonzero_params": count_nonzero(dense),
             "compression": 1.0, "sparsity": 0.0, "top1": base_test.top1, "top5": base_test.top5}]
    retrain = FinetuneConfig(epochs=args.epochs, lr=0.01, milestones=(0.75,), gamma=0.1, augment=True)
    layers_by_level = {}
    prev = dense  # iterative, as in the paper: each level prunes further the retrained network of the level before
    for level in sorted(args.levels):
        net = copy.deepcopy(prev)
        cfg = MagnitudeConfig(target=1 / (1 - level), rounds=1, retrain=retrain, fractions=tuple(args.fractions))
        t0 = time.perf_counter()
        result = run_magnitude(net, data.input_size, (tx, ty), (vx[:1000], vy[:1000]), data.mean, data.std, cfg,
                               work / f"sparsity{level:g}", log=log, curves=curves,
                               provenance={"weights": str(weights), "weights_sha256": file_fingerprint(weights)})
        # accuracy before this level's retraining: its masks applied to the network it started from
        pruned_only = copy.deepcopy(prev)
        with torch.no_grad():
            for name, module in pruned_only.named_modules():
                if name in result.stds:
                    module.weight.mul_((result.masked.get_submodule(name).weight != 0).to(module.weight.dtype))
        before = evaluate(pruned_only, test_x, test_y, data.mean, data.std)
        after = evaluate(result.model, test_x, test_y, data.mean, data.std)
        prev = result.masked.eval()
        nonzero = count_nonzero(result.model)
        layers_by_level[f"{level:g}"] = layer_density(result.masked, list(result.stds))
        rows.append({"name": f"han-sparsity{level:g}", "method": "han2015", **common, "target": cfg.target,
                     "params": count_params(result.model), "nonzero_params": nonzero, "compression": total / nonzero,
                     "sparsity": 1 - nonzero / total, "top1": after.top1, "top5": after.top5,
                     "top1_before_ft": before.top1, "top5_before_ft": before.top5,
                     "finetune_epochs": args.epochs, "finetune_images": len(tx),
                     "dead_removed": {k: len(v) for k, v in (result.dead or {}).get("removed", {}).items()},
                     "seconds": time.perf_counter() - t0})
        log(f"sparsity {level:g}: test top-1 {100 * before.top1:.2f}% pruned, {100 * after.top1:.2f}% retrained")
    write_results(rows, args.out)
    meta = {"weights": str(weights.relative_to(ROOT) if weights.is_relative_to(ROOT) else weights),
            "weights_sha256": file_fingerprint(weights), "hardware": hardware_label(), "git_rev": git_revision(ROOT),
            "budget": (f"sensitivity on {args.sens_images} validation images, fractions {args.fractions}; one "
                       f"prune/retrain round per level (levels chained), {args.epochs} epoch(s) on {len(tx)} training images "
                       f"(SGD lr 0.01, crop+flip, L2 5e-4), round logs on 1,000 validation images; test on "
                       f"{len(test_x)} test images"),
            "wall_seconds_this_call": time.perf_counter() - start}
    atomic_write_text(args.out / "han_resnet56.json", json.dumps(
        {"meta": meta, "hardware_info": hardware_info(), "rows": rows, "layers": layers_by_level,
         "sensitivity": {n: c.to_dict() for n, c in curves.items()}}, indent=1) + "\n")
    plot(rows, curves, layers_by_level, args.out)
    md = markdown(rows, meta)
    atomic_write_text(args.out / "han_resnet56.md", md)
    print(md)
    return 0


def plot(rows: list, curves: dict, layers: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    pr = [r for r in rows if r["method"] == "han2015"]
    xs = [100 * r["sparsity"] for r in pr]
    ax.plot(xs, [100 * r["top1_before_ft"] for r in pr], "o--", label="pruned, no retraining")
    ax.plot(xs, [100 * r["top1"] for r in pr], "o-", label="pruned + retrained")
    ax.axhline(100 * rows[0]["top1"], color="gray", ls=":", label="dense")
    ax.set_xlabel("parameters at zero (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("ResNet-56, CIFAR-10-JPEG: accuracy vs sparsity (reduced budget)", fontsize=9)
    _finish(plt, fig, ax, out / "accuracy_vs_sparsity.png", legend_size=8)

    names = list(curves)
    fractions = curves[names[0]].fractions
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, f in enumerate(fractions):
        ax.plot(range(len(names)), [100 * (curves[n].base_top1 - curves[n].top1[i]) for n in names], marker=".",
                label=f"{100 * f:.0f}% of the layer pruned")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("validation top-1 drop (points)")
    ax.set_title("ResNet-56 per-layer sensitivity (each layer pruned alone, no retraining)", fontsize=9)
    _finish(plt, fig, ax, out / "sensitivity.png", legend_size=7)


def _finish(plt, fig, ax, path: Path, legend_size: int) -> None:
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def markdown(rows: list, meta: dict) -> str:
    lines = ["# Han et al. 2015 magnitude pruning, ResNet-56 (akamaster, option A), CIFAR-10-JPEG", "",
             f"Written by `benchmarks/han_resnet56_cifar10jpeg.py`. Weights: `{meta['weights']}` (sha256 "
             f"{meta['weights_sha256']}). Budget (reduced, CPU): {meta['budget']}. Hardware: {meta['hardware']}. "
             f"git {meta['git_rev']}. Wall time of this call {meta['wall_seconds_this_call'] / 60:.1f} min.", "",
             "| network | non-zero params | compression | sparsity | test top-1 pruned | test top-1 retrained |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['nonzero_params']:,} | {r['compression']:.2f}x | {100 * r['sparsity']:.1f}% | "
                     f"{100 * r.get('top1_before_ft', r['top1']):.2f}% | {100 * r['top1']:.2f}% |")
    lines += ["", "Figures: `accuracy_vs_sparsity.png`, `sensitivity.png`. Latency is not reported: torch has no "
              "sparse convolution kernels on CPU, so unstructured sparsity leaves the dense ResNet-56 as slow as before.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
