"""Which search fitness predicts the accuracy a pruned candidate reaches after fine-tuning?

On the comparison's source network (ResNet-20 adapted to CIFAR-10-JPEG, shared with benchmarks/compare_methods.py
through the same work folder), at each MACs target: candidate rankings (identity = global ranking, the transform
reproducing uniform widths, seeded random transforms and the top 3 of a short search with the ``--default`` fitness)
are pruned, scored by every fitness variant on the validation split, and given the same short fine-tune (after
adaptive BN) whose test top-1 is the ground truth. The test split only measures; it picks nothing. Per variant:
Spearman / Kendall correlation with the ground truth, the ground truth of the candidate it ranks first, and its cost.
Resumable: finished candidates are kept in <work>/fitness_study/ and skipped by a rerun of the same command.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/fitness_correlation.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from legr.data import TensorLoader
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.hardware import hardware_label
from legr.methods.filters.allocate import Floors, GlobalSolver
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr import AffineSpace, AffineTransform, EvolutionConfig, aging_evolution
from legr.methods.filters.legr.ranking import layer_score_std, ranked_layers, uniform_transform
from legr.paths import atomic_write_text
from legr.pipeline.compare import Comparison
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config_files import load_config, parse_set_options
from legr.pipeline.steps import Pipeline
from legr.reporting import figure, save_figure
from legr.training import FinetuneConfig, bn_batches, evaluate, finetune, make_sgd, recalibrate_bn, train_steps

ROOT = Path(__file__).resolve().parents[1]
BN_KS, BN_MID, TAU = (5, 20, 50), 20, 20
# procedure -> (BN recalibration batches, augmented BN batches, SGD steps); each gives a "-loss" and a "-top1" variant
PROCEDURES = {"paper": (0, True, 0), **{f"bn{k}": (k, True, 0) for k in BN_KS}, f"bn{BN_MID}noaug": (BN_MID, False, 0),
              f"tau{TAU}": (0, True, TAU), f"bn{BN_MID}-tau{TAU}": (BN_MID, True, TAU)}
VARIANTS = {("paper" if p == "paper" else f"{p}-loss"): (p, "loss") for p in PROCEDURES} | \
           {f"{p}-top1": (p, "top1") for p in PROCEDURES}
PLOTTED = ["paper", f"bn{BN_MID}-loss", f"bn{BN_MID}-top1", f"tau{TAU}-top1"]
KIND_COLORS = {"identity": "#d62728", "uniform": "#2ca02c", "random": "#7f7f7f", "winner": "#1f77b4"}


@dataclass(frozen=True)
class Recipe:
    """Everything a candidate's figures depend on (a resume file with another recipe is refused)."""
    source_weights: str
    batch_size: int = 128      # BN-recalibration, tau-step and fine-tune batches
    val_images: int = 1000     # first images of the (shuffled) validation split scored by the fitness
    test_images: int = 5000    # random test images (seeded) for the ground truth (0: all)
    random: int = 19
    seed: int = 0              # random transforms, search, batch draws, fine-tune
    search: tuple[int, int, int] = (8, 3, 24)  # population, sample, evaluations
    default: str = f"bn{BN_MID}-top1"
    ft_steps: int = 100
    sgd: tuple[float, float, float] = (0.01, 0.9, 5e-4)  # tau steps: lr, momentum, weight decay

    def finetune(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=2, steps_per_epoch=self.ft_steps // 2, milestones=(0.5,), gamma=0.1,
                              batch_size=self.batch_size, seed=self.seed)


class Study:
    def __init__(self, pipeline: Pipeline, recipe: Recipe, folder: Path):
        self.p, self.r, self.folder = pipeline, recipe, folder
        self.graph, self.cost, d, dev = pipeline.graph, pipeline.cost, pipeline.data, pipeline.device
        self.layers = ranked_layers(self.graph)
        self.index = {name: i for i, name in enumerate(self.layers)}
        f = pipeline.cfg.floors
        self.floors = Floors(f.safeguard, f.min_channels, f.round_to)
        self.scores = compute_scores("l2sq", self.graph, pipeline.base)
        self.space = AffineSpace(self.layers, layer_score_std(self.scores, self.layers),
                                 mutate_fraction=pipeline.cfg.search.mutate_fraction)
        self.val = tuple(t[:recipe.val_images] for t in d.val)
        n = len(d.test[0])  # the test images are stored by class: measure on a seeded random subset
        pick = torch.randperm(n, generator=torch.Generator().manual_seed(recipe.seed))[:recipe.test_images or n]
        self.test = tuple(t[pick] for t in d.test)
        draw = lambda k, aug: bn_batches(*d.train, d.mean, d.std, k, recipe.batch_size, augment=aug,  # noqa: E731
                                         seed=recipe.seed, device=dev)
        self.batches = {True: draw(max(BN_KS), True), False: draw(BN_MID, False)}  # drawn once, sliced per K

    def keep(self, t: AffineTransform, target: float) -> np.ndarray:
        """The keep vector of ranking ``t`` cut at ``target`` (exactly as `learn_ranking` cuts)."""
        transformed = group_scores(self.graph, self.scores, lambda name, v: t.apply(self.index[name], v))
        return GlobalSolver(self.graph, self.cost, transformed, self.floors).solve(target * self.cost.base_macs)

    def network(self, t: AffineTransform, target: float) -> nn.Module:
        return prune(self.graph, self.keep(t, target))  # a fresh copy: variants never share weights or statistics

    def procedure(self, t: AffineTransform, target: float, proc: str) -> tuple[dict[str, float], float]:
        """Prune, recalibrate BN / take tau steps as ``proc`` says, score on validation: ({loss, top1}, seconds)."""
        k, aug, tau = PROCEDURES[proc]
        d, r = self.p.data, self.r
        start = time.perf_counter()
        net = self.network(t, target)
        if k:
            recalibrate_bn(net, self.batches[aug][:k])
        if tau:
            loader = TensorLoader(*d.train, r.batch_size, d.mean, d.std, shuffle=True, augment=True, seed=r.seed,
                                  device=self.p.device)
            train_steps(net, loader, tau, make_sgd(net, *r.sgd))
        result = evaluate(net, *self.val, d.mean, d.std, batch_size=self.p.cfg.eval.batch_size, device=self.p.device)
        return {"loss": -result.loss, "top1": result.top1}, time.perf_counter() - start

    def fitness(self, t: AffineTransform, target: float, variant: str) -> float:
        proc, metric = VARIANTS[variant]
        return self.procedure(t, target, proc)[0][metric]

    def candidates(self, target: float) -> list[tuple[str, str, AffineTransform, dict]]:
        """(name, kind, transform, extra fields): identity, uniform, random, then the search's distinct top 3."""
        rng = np.random.default_rng([self.r.seed, 1])  # a stream apart from the search's (PCG64(seed))
        out = [("identity", "identity", self.space.identity(), {}),
               ("uniform", "uniform", AffineTransform(*uniform_transform(
                   self.graph, self.cost, self.scores, target * self.cost.base_macs, self.floors)), {})]
        out += [(f"random-{i + 1:02d}", "random", self.space.random(rng), {}) for i in range(self.r.random)]
        state_path = self.folder / f"search_{round(target * 100)}.json"
        population, sample, evaluations = self.r.search
        print(f"[{target:.0%}] search: {evaluations} candidates, fitness {self.r.default}", flush=True)
        aging_evolution(self.space, lambda t, _: self.fitness(t, target, self.r.default),
                        EvolutionConfig(population, sample, evaluations, self.r.seed),
                        initial=[out[1][2]],  # seeded with uniform, as the product's search (seed_uniform)
                        state_path=state_path, progress=False)
        nets, winners = {self.keep(c[2], target).tobytes() for c in out}, []  # distinct: another network
        for h in sorted(json.loads(state_path.read_text())["history"], key=lambda h: -h["fitness"]):  # stable
            t = self.space.from_json(h["candidate"])
            net = self.keep(t, target).tobytes()
            if len(winners) < 3 and net not in nets:
                nets.add(net)
                winners.append((f"winner-{len(winners) + 1}", "winner", t,
                                {"search_index": h["index"], "search_fitness": h["fitness"]}))
        return out + winners

    def ground_truth(self, t: AffineTransform, target: float) -> tuple[float, float]:
        """Test top-1 after adaptive BN (the K=20 batches) + the recipe's fine-tune, and its seconds."""
        return self.ground_truth_of(self.keep(t, target))

    def ground_truth_of(self, keep: np.ndarray) -> tuple[float, float]:
        """`ground_truth` of the network a keep vector cuts."""
        d, start = self.p.data, time.perf_counter()
        net = prune(self.graph, keep)
        recalibrate_bn(net, self.batches[True][:BN_MID])
        finetune(net, *d.train, d.mean, d.std, self.r.finetune(), progress=False, device=self.p.device)
        top1 = evaluate(net, *self.test, d.mean, d.std, batch_size=self.p.cfg.eval.batch_size,
                        device=self.p.device).top1
        return top1, time.perf_counter() - start

    def run_target(self, target: float) -> list[dict]:
        """Every candidate's record, loaded from the resume file or computed (and saved after each one)."""
        path = self.folder / f"candidates_{round(target * 100)}.json"
        recipe = json.loads(json.dumps(asdict(self.r) | {"finetune": self.r.finetune().state()}))
        done = json.loads(path.read_text()) if path.exists() else {"recipe": recipe, "candidates": {}}
        if done["recipe"] != recipe:
            raise LegrError(f"{path} was written with another recipe; use another --work folder or delete it")
        for name, kind, t, extra in self.candidates(target):
            if name in done["candidates"]:
                continue
            fitness, seconds = {}, {}
            for proc in PROCEDURES:
                values, seconds[proc] = self.procedure(t, target, proc)
                fitness |= {v: values[m] for v, (p, m) in VARIANTS.items() if p == proc}
            truth, ft_seconds = self.ground_truth(t, target)
            macs = self.cost.macs(self.keep(t, target))
            done["candidates"][name] = {
                "name": name, "kind": kind, "ground_truth_top1": truth, "fitness": fitness,
                "seconds": {v: seconds[p] for v, (p, _) in VARIANTS.items()}, "ground_truth_seconds": ft_seconds,
                "macs_ratio": macs / self.cost.base_macs, **extra, **self.space.to_json(t)}
            atomic_write_text(path, json.dumps(done, indent=1))
            print(f"[{target:.0%}] {name:10s} paper {fitness['paper']:+.3f}  bn20-top1 {fitness['bn20-top1']:.1%}  "
                  f"tau20-top1 {fitness['tau20-top1']:.1%}  -> FT top-1 {truth:.2%}  "
                  f"({sum(seconds.values()):.0f} s fitness, {ft_seconds:.0f} s FT)", flush=True)
        return list(done["candidates"].values())


def correlations(cands: list[dict]) -> dict[str, dict]:
    truth = np.array([c["ground_truth_top1"] for c in cands])
    out = {}
    for v in VARIANTS:
        f = np.array([c["fitness"][v] for c in cands], dtype=np.float64)
        ok = np.isfinite(f)
        varied = len(set(f[ok])) > 1 and len(set(truth[ok])) > 1
        out[v] = {"spearman": float(stats.spearmanr(f[ok], truth[ok])[0]) if varied else None,
                  "kendall": float(stats.kendalltau(f[ok], truth[ok])[0]) if varied else None,
                  "pick_top1": float(truth[np.argmax(np.where(ok, f, -np.inf))]),
                  "seconds": float(np.mean([c["seconds"][v] for c in cands]))}
    return out


def family(per_target: dict[str, dict], variant: str) -> dict | None:
    """The candidates scored at every target (identity and the seeded random transforms are the same rankings at each):
    does ``variant`` averaged over the targets (the product's family-aware fitness) rank them better than ``variant``
    at one target? Per fitness: Spearman with the test top-1 after fine-tuning at each target and with its mean over
    the targets, and the mean over the targets of the top-1s of the candidate it picks."""
    if len(per_target) < 2:
        return None
    by_target = {t: {c["name"]: c for c in r["candidates"] if c["kind"] in ("identity", "random")}
                 for t, r in per_target.items()}
    names = sorted(set.intersection(*(set(m) for m in by_target.values())))
    truth = {t: np.array([m[n]["ground_truth_top1"] for n in names]) for t, m in by_target.items()}
    truth["mean"] = np.mean([truth[t] for t in by_target], axis=0)
    scores = {f"{variant} at {float(t):.0%}": np.array([m[n]["fitness"][variant] for n in names])
              for t, m in by_target.items()}
    scores[f"{variant}, mean over the targets"] = np.mean(list(scores.values()), axis=0)
    return {"variant": variant, "candidates": names, "fitnesses": {
        name: {"spearman": {k: float(stats.spearmanr(f, g)[0]) for k, g in truth.items()},
               "pick_mean_top1": float(truth["mean"][np.argmax(f)])} for name, f in scores.items()},
        "best_mean_top1": float(truth["mean"].max()), "median_mean_top1": float(np.median(truth["mean"]))}


def summary_markdown(result: dict) -> str:
    r, c = result["recipe"], result["config"]
    num = lambda x: "-" if x is None else f"{x:+.3f}"  # noqa: E731
    source = Path(r["source_weights"])
    source = source.relative_to(ROOT) if source.is_absolute() and source.is_relative_to(ROOT) else source
    lines = [f"# Search fitness vs accuracy after fine-tuning: {c['model']['name']}, CIFAR-10-JPEG", "",
             f"Source network: `{source}`. Candidates per target: identity (global ranking), the uniform-equivalent "
             f"transform, {r['random']} random transforms and the distinct top 3 (by pruned network) of a search "
             f"(population/sample/evaluations {'/'.join(map(str, r['search']))}, fitness `{r['default']}`, seeded "
             f"with identity and uniform). Fitness on {r['val_images']} validation images (held out of the training "
             f"data), higher is better (loss variants: minus the loss); bnK: BatchNorm statistics re-estimated on K "
             f"augmented training batches of {r['batch_size']} (noaug: not augmented); tauT: T SGD steps (lr/momentum/"
             f"wd {'/'.join(map(str, r['sgd']))}). s/eval: pruning + that procedure + validation, mean over the "
             f"candidates. Ground truth (the budget): test top-1 ({r['test_images'] or 'all'} random test images) after "
             f"adaptive BN ({BN_MID} batches) and {r['ft_steps']} SGD steps of fine-tuning (lr 0.01, x0.1 halfway); "
             f"the test set picks nothing. Seed {r['seed']} for the random transforms, the search and every batch "
             f"draw. Product default: `{result['default']}`, averaged over the run's lowest, middle and highest "
             f"targets (the last table). Hardware: {result['hardware']}.", ""]
    for target, res in result["targets"].items():
        cands = res["candidates"]
        truth = {c["name"]: c["ground_truth_top1"] for c in cands}
        lines += [f"## {float(target):.0%} of the source MACs ({len(cands)} candidates)", "",
                  "| variant | Spearman | Kendall | its pick's top-1 after FT % | s/eval |",
                  "|:---|---:|---:|---:|---:|"]
        for name, v in res["variants"].items():
            mark = " (default)" if name == result["default"] else ""
            lines.append(f"| {name}{mark} | {num(v['spearman'])} | {num(v['kendall'])} | "
                         f"{100 * v['pick_top1']:.2f} | {v['seconds']:.2f} |")
        lines += ["", f"Best achievable pick {100 * max(truth.values()):.2f}%, identity "
                      f"{100 * truth['identity']:.2f}%, uniform {100 * truth['uniform']:.2f}%, median candidate "
                      f"{100 * float(np.median(list(truth.values()))):.2f}%.", "",
                  f"![fitness vs ground truth](scatter_{round(float(target) * 100)}.png)", ""]
    fam = result.get("family")
    if fam:
        cols = [k for k in next(iter(fam["fitnesses"].values()))["spearman"]]
        head = [f"Spearman with top-1 at {float(k):.0%}" if k != "mean" else "with the mean top-1" for k in cols]
        lines += ["## One fitness for the family", "",
                  f"The {len(fam['candidates'])} candidates scored at every target (identity and the random transforms: "
                  "the same rankings, cut at each target). Its pick: the mean over the targets of the fine-tuned "
                  "top-1s of the candidate the fitness ranks first.", "",
                  "| fitness | " + " | ".join(head) + " | its pick's mean top-1 % |",
                  "|:---|" + "---:|" * (len(cols) + 1)]
        for name, v in fam["fitnesses"].items():
            lines.append(f"| {name} | " + " | ".join(num(v["spearman"][k]) for k in cols)
                         + f" | {100 * v['pick_mean_top1']:.2f} |")
        lines += ["", f"Best candidate: {100 * fam['best_mean_top1']:.2f}%, median {100 * fam['median_mean_top1']:.2f}%.",
                  ""]
    return "\n".join(lines)


def scatter(cands: list[dict], variants: dict, path: Path, title: str) -> None:
    fig = figure(10.0, 8.0)
    for ax, name in zip(fig.subplots(2, 2).flat, PLOTTED):
        for kind, color in KIND_COLORS.items():
            mine = [c for c in cands if c["kind"] == kind]
            ax.scatter([c["fitness"][name] for c in mine], [100 * c["ground_truth_top1"] for c in mine], s=28,
                       color=color, label=kind, edgecolors="black", linewidths=0.4)
        rho = variants[name]["spearman"]
        ax.set_title(f"{name}  (Spearman {'-' if rho is None else f'{rho:+.2f}'})", fontsize=10)
        ax.set_xlabel("fitness (higher = better)")
        ax.set_ylabel("test top-1 after fine-tuning (%)")
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "compare_resnet20_cifar10jpeg.yaml")
    parser.add_argument("--work", type=Path, help="run folder shared with the comparison (default: "
                                                  "runs/compare_<config name>)")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/fitness_correlation "
                                                     "(--smoke: a temporary folder)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.47])
    parser.add_argument("--random", type=int, default=19, help="random candidates per target")
    parser.add_argument("--ft-steps", type=int, default=100, help="ground-truth fine-tune SGD steps (even)")
    parser.add_argument("--default", default=f"bn{BN_MID}-top1", choices=list(VARIANTS),
                        help="the fitness the product uses (also the short search's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--smoke", action="store_true", help="tiny end-to-end check: 1 random candidate, 2 FT "
                        "steps, batches of 8, 100 val / 200 test images, a 6-candidate search")
    args = parser.parse_args()
    if args.ft_steps < 2 or args.ft_steps % 2:
        parser.error("--ft-steps must be even and >= 2 (two epochs of ft_steps / 2)")
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or ROOT / "runs" / f"compare_{args.config.stem.removeprefix('compare_')}"
    results = args.results or (Path(tempfile.mkdtemp(prefix="fitness_smoke_")) if args.smoke
                               else ROOT / "benchmarks" / "results" / "fitness_correlation")
    folder = work / ("fitness_smoke" if args.smoke else "fitness_study")
    try:
        cfg = load_config(args.config, parse_set_options(args.set), schema=CompareConfig)
        source = Comparison(cfg, work)._source()
        pipeline = Pipeline(source, folder / "pipeline")
        recipe = Recipe(str(source.model.weights), random=args.random, seed=args.seed, default=args.default,
                        ft_steps=args.ft_steps)
        if args.smoke:
            recipe = Recipe(recipe.source_weights, batch_size=8, val_images=100, test_images=200, random=1,
                            seed=args.seed, search=(4, 2, 6), default=args.default, ft_steps=2)
        study = Study(pipeline, recipe, folder)
        per_target = {}
        for target in args.targets:
            cands = study.run_target(target)
            per_target[str(target)] = {"variants": correlations(cands), "candidates": cands}
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    result = {"default": args.default, "targets": per_target, "family": family(per_target, args.default),
              "recipe": asdict(recipe) | {
        "finetune": recipe.finetune().state(), "adaptive_bn_before_finetune": BN_MID, "procedures": PROCEDURES},
        "config": cfg.model_dump(mode="json"), "hardware": hardware_label()}
    atomic_write_text(results / "fitness_correlation.json", json.dumps(result, indent=1))
    atomic_write_text(results / "summary.md", summary_markdown(result))
    for target, res in per_target.items():
        scatter(res["candidates"], res["variants"], results / f"scatter_{round(float(target) * 100)}.png",
                f"{cfg.model.name} on CIFAR-10-JPEG at {float(target):.0%} MACs: fitness vs accuracy after FT")
    print(summary_markdown(result))
    print(f"written to {results}")


if __name__ == "__main__":
    main()
