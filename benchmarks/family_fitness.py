"""One fitness for a family (issue 38): which way of combining a candidate's validation scores at several targets
picks the ranking with the best fine-tuned accuracy at *every* target?

On the comparison's source network (ResNet-20 adapted to CIFAR-10-JPEG, `benchmarks/fitness_correlation.py`'s
setting and `Study`), a pool of candidate rankings is scored at each target (bn20-top1: validation top-1 after adaptive
BN on 20 training batches, the product's fitness) and given the same short fine-tune whose test top-1 is the ground
truth: the identity (global ranking), seeded random transforms, and the winners of three short searches, one per
objective (`legr.methods.filters.legr.family`: plain mean without guard — the default before issue 38 —, plain
mean with the guard, relative gain over uniform with the guard). The uniform allocation is scored and fine-tuned at
every target too: it is the reference of the relative objectives and the baseline to beat. Then every objective
(mean / relative / worst, with and without the guard) picks from the whole pool, and the table shows its pick's
fine-tuned top-1 at each target against uniform's. At the lowest target (``--probe``: others), sharper and dearer
signals are measured too (minus the loss; top-1 and loss after tau SGD steps). The test split only measures; it picks
nothing. Resumable (records, probes and search states in <work>/family_study/).

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/family_fitness.py      # ~75 min, 1 core
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fitness_correlation import BN_KS, BN_MID, ROOT, Recipe, Study  # noqa: E402

from legr.engine.surgery import prune  # noqa: E402
from legr.errors import LegrError  # noqa: E402
from legr.hardware import hardware_label  # noqa: E402
from legr.methods.filters.allocate import solve_uniform  # noqa: E402
from legr.methods.filters.criteria import group_scores  # noqa: E402
from legr.methods.filters.legr import AffineTransform, EvolutionConfig, FamilyObjective, aging_evolution  # noqa: E402
from legr.methods.filters.legr.ranking import uniform_transform  # noqa: E402
from legr.paths import atomic_write_text  # noqa: E402
from legr.pipeline.compare import Comparison  # noqa: E402
from legr.pipeline.compare_config import CompareConfig  # noqa: E402
from legr.pipeline.config_files import load_config, parse_set_options  # noqa: E402
from legr.pipeline.steps import Pipeline  # noqa: E402
from legr.data import TensorLoader  # noqa: E402
from legr.training import evaluate, make_sgd, recalibrate_bn, train_steps  # noqa: E402

PROBE_STEPS = (25, 50)  # tau of the probes
PROBES = [(BN_MID, 0), *((BN_MID, steps) for steps in PROBE_STEPS), (max(BN_KS), 0)]  # (BN batches, SGD steps)
SEARCHES = {"mean": FamilyObjective("mean", guard=False), "mean+guard": FamilyObjective("mean", guard=True),
            "relative+guard": FamilyObjective("relative", guard=True)}


class FamilyStudy:
    def __init__(self, study: Study, targets: list[float], folder: Path):
        self.s, self.targets, self.folder = study, targets, folder
        self.path = folder / "records.json"
        self.records = json.loads(self.path.read_text()) if self.path.exists() else {}
        d = study.p.data
        self.chance, self.val_images = 1 / d.num_classes, len(study.val[1])

    def objective(self, o: FamilyObjective) -> FamilyObjective:
        return FamilyObjective(o.aggregate, o.guard, chance=self.chance, val_images=self.val_images)

    def uniform_keep(self, target: float) -> np.ndarray:
        s = self.s
        return solve_uniform(s.graph, s.cost, group_scores(s.graph, s.scores), target * s.cost.base_macs, s.floors)[0]

    def score(self, keep: np.ndarray) -> float:
        """The product's fitness of one network: validation top-1 after adaptive BN (20 batches)."""
        s, d = self.s, self.s.p.data
        net = prune(s.graph, keep)
        recalibrate_bn(net, s.batches[True][:BN_MID])
        return evaluate(net, *s.val, d.mean, d.std, batch_size=s.p.cfg.eval.batch_size, device=s.p.device).top1

    def scores(self, t: AffineTransform) -> list[float]:
        return [self.score(self.s.keep(t, target)) for target in self.targets]

    def search(self, name: str, reference: list[float]) -> AffineTransform:
        s, (population, sample, evaluations) = self.s, self.s.r.search
        objective = self.objective(SEARCHES[name])
        initial = [AffineTransform(*uniform_transform(s.graph, s.cost, s.scores, t * s.cost.base_macs, s.floors))
                   for t in self.targets]
        print(f"search ({name}): {evaluations} candidates x {len(self.targets)} targets", flush=True)
        result = aging_evolution(s.space, lambda t, _: objective(self.scores(t), reference),
                                 EvolutionConfig(population, sample, evaluations, s.r.seed), initial=initial,
                                 state_path=self.folder / f"search_{name}.json", progress=False)
        return result.best

    def record(self, name: str, kind: str, keeps: list[np.ndarray], extra: dict | None = None) -> dict:
        if name not in self.records:
            row: dict = {"name": name, "kind": kind, "scores": [], "truth": [], "macs_ratio": [], **(extra or {})}
            start = time.perf_counter()
            for target, keep in zip(self.targets, keeps):
                row["scores"].append(self.score(keep))
                row["truth"].append(self.s.ground_truth_of(keep)[0])
                row["macs_ratio"].append(self.s.cost.macs(keep) / self.s.cost.base_macs)
            row["seconds"] = time.perf_counter() - start
            self.records[name] = row
            atomic_write_text(self.path, json.dumps(self.records, indent=1))
            print(f"{name:16s} val {' / '.join(f'{100 * v:.1f}' for v in row['scores'])}  ->  FT top-1 "
                  f"{' / '.join(f'{100 * v:.2f}' for v in row['truth'])}  ({row['seconds']:.0f} s)", flush=True)
        return self.records[name]

    def pool(self, random: int) -> list[tuple[str, str, list[np.ndarray], dict]]:
        """(name, kind, keep vector at each target, extra fields) of every ranking in the pool, in order."""
        s = self.s
        cut = lambda t: [s.keep(t, target) for target in self.targets]  # noqa: E731
        out = [("uniform", "uniform", [self.uniform_keep(t) for t in self.targets], {}),
               ("identity", "identity", cut(s.space.identity()), {})]
        rng = np.random.default_rng([s.r.seed, 1])  # fitness_correlation's stream of random transforms
        out += [(f"random-{i + 1:02d}", "random", cut(s.space.random(rng)), {}) for i in range(random)]
        for name in SEARCHES:  # a finished search is read back from its state file, not run again
            reference = self.record(*out[0])["scores"]
            out.append((f"winner-{name}", "winner", cut(self.search(name, reference)), {"search": name}))
        return out

    def probe(self, name: str, keeps: list[np.ndarray], targets: list[float]) -> dict:
        """Cheaper or sharper signals than the product's fitness, at ``targets``: after the same adaptive BN, minus the
        validation loss, then top-1 and loss after each of ``PROBE_STEPS`` SGD steps (lr/momentum/wd of the recipe's
        tau steps, the same seeded batches for every ranking): LeGR's tau-step fitness, as a search candidate's or
        a member guard's signal; and both after adaptive BN on more batches (``PROBES``). Saved under the record's
        ``probes``; a probe already there is not measured again."""
        s, d, row = self.s, self.s.p.data, self.records[name]
        probes = row.setdefault("probes", {})
        for target, keep in zip(self.targets, keeps):
            key = f"{target:g}"
            todo = [(k, steps) for k, steps in PROBES if f"bn{k}" + (f"-tau{steps}" if steps else "") + "-top1"
                    not in probes.get(key, {})]
            if target not in targets or not todo:
                continue
            values = dict(probes.get(key, {}))
            for k, steps in todo:  # each from the adapted network: the same first batches for every one
                net = prune(s.graph, keep)
                recalibrate_bn(net, s.batches[True][:k])
                loader = TensorLoader(*d.train, s.r.batch_size, d.mean, d.std, shuffle=True, augment=True,
                                      seed=s.r.seed, device=s.p.device)
                step_start = time.perf_counter()
                train_steps(net, loader, steps, make_sgd(net, *s.r.sgd))
                r = evaluate(net, *s.val, d.mean, d.std, batch_size=s.p.cfg.eval.batch_size, device=s.p.device)
                prefix = f"bn{k}" + (f"-tau{steps}" if steps else "")
                values |= {f"{prefix}-top1": r.top1, f"{prefix}-loss": -r.loss,
                           f"{prefix}-step-seconds": time.perf_counter() - step_start}
            probes[key] = values
            atomic_write_text(self.path, json.dumps(self.records, indent=1))
            print(f"probe {name:16s} {target:.0%}: " + "  ".join(
                f"{k} {100 * v:.1f}" for k, v in values.items() if k.endswith("top1")), flush=True)
        return probes


def picks(rows: list[dict], chance: float, val_images: int) -> dict[str, dict]:
    """Every objective's pick from the whole pool (uniform included: the guard's fallback)."""
    uniform = next(r for r in rows if r["kind"] == "uniform")
    out = {}
    for aggregate in ("mean", "relative", "worst"):
        for guard in (False, True):
            o = FamilyObjective(aggregate, guard, chance=chance, val_images=val_images)
            best = max(rows, key=lambda r: o(r["scores"], uniform["scores"]))
            out[f"{aggregate}{' + guard' if guard else ''}"] = {
                "pick": best["name"], "truth": best["truth"], "scores": best["scores"],
                "vs_uniform": [a - b for a, b in zip(best["truth"], uniform["truth"])]}
    return out


def markdown(result: dict) -> str:
    t = result["targets"]
    rows, uniform = result["pool"], next(r for r in result["pool"] if r["kind"] == "uniform")
    pct = lambda vs: " | ".join(f"{100 * v:.2f}" for v in vs)  # noqa: E731
    lines = [f"# One fitness for the family: {result['model']}, CIFAR-10-JPEG, targets "
             f"{', '.join(f'{x:.0%}' for x in t)} MACs", "",
             f"Written by `benchmarks/family_fitness.py`. Pool: {len(rows)} rankings, each cut at every target, scored "
             f"by the product's fitness (validation top-1 on {result['val_images']} held-out training images after "
             f"adaptive BN on {BN_MID} batches) and fine-tuned ({result['recipe']['ft_steps']} SGD steps after adaptive "
             f"BN; ground truth: test top-1 on {result['recipe']['test_images']} test images, which pick nothing). "
             f"Searches: population/sample/evaluations {'/'.join(map(str, result['recipe']['search']))}, seed "
             f"{result['recipe']['seed']}, first population seeded with the uniform allocation at each target. "
             f"Hardware: {result['hardware']}.", "",
             "## Each objective's pick from the pool", "",
             "| objective | pick | " + " | ".join(f"val {x:.0%}" for x in t) + " | "
             + " | ".join(f"FT top-1 {x:.0%}" for x in t) + " | vs uniform (points) | mean FT top-1 |",
             "|:---|:---|" + "---:|" * (2 * len(t) + 2)]
    for name, p in result["picks"].items():
        lines.append(f"| {name} | {p['pick']} | {pct(p['scores'])} | {pct(p['truth'])} | "
                     + " / ".join(f"{100 * v:+.2f}" for v in p["vs_uniform"]) + f" | {100 * np.mean(p['truth']):.2f} |")
    rho = [stats.spearmanr([r["scores"][k] for r in rows], [r["truth"][k] for r in rows])[0] for k in range(len(t))]
    lines += ["", f"Uniform: val {' / '.join(f'{100 * v:.1f}' for v in uniform['scores'])}, FT top-1 "
                  f"{' / '.join(f'{100 * v:.2f}' for v in uniform['truth'])}. Spearman correlation of the validation "
                  "score with the fine-tuned top-1 over the pool: "
                  + ", ".join(f"{x:.0%}: {r:+.2f}" for x, r in zip(t, rho)) + ".", "", *probe_markdown(result),
              *noise_markdown(result), "## The pool", "",
              "| ranking | " + " | ".join(f"val {x:.0%}" for x in t) + " | "
              + " | ".join(f"FT top-1 {x:.0%}" for x in t) + " |", "|:---|" + "---:|" * (2 * len(t))]
    for r in rows:
        lines.append(f"| {r['name']} | {pct(r['scores'])} | {pct(r['truth'])} |")
    return "\n".join(lines) + "\n"


def noise_table(result: dict) -> list[dict]:
    """Per target: how much of the pool's spread in validation top-1 is the sampling error of the validation images
    (binomial, averaged over the pool), and the correlation with the fine-tuned top-1 as measured and as unlimited
    validation images would give it (Pearson's r over the square root of the score's reliability: Spearman 1904)."""
    rows, n, out = result["pool"], result["val_images"], []
    for k, target in enumerate(result["targets"]):
        score, truth = (np.array([r[key][k] for r in rows]) for key in ("scores", "truth"))
        spread, error = float(score.var(ddof=1)), float(np.mean(score * (1 - score) / n))
        reliability = max(spread - error, 0.0) / spread if spread > 0 else 0.0
        r = float(stats.pearsonr(score, truth)[0])
        out.append({"target": target, "pool_sd": spread ** 0.5, "sampling_se": error ** 0.5,
                    "reliability": reliability, "pearson": r,
                    "pearson_unlimited": r / reliability ** 0.5 if reliability > 0 else None})
    return out


def noise_markdown(result: dict) -> list[str]:
    lines = ["## Noise or signal? The validation images' sampling error against the pool's spread", "",
             "*pool sd*: the spread of the pool's validation top-1 at each target; *sampling se*: the binomial "
             f"standard error of a top-1 measured on {result['val_images']} images (mean over the pool); "
             "*reliability*: the share of the spread that is not sampling error; Pearson r with the fine-tuned top-1 "
             "as measured, and corrected for that error (what unlimited validation images would give).", "",
             "| target | pool sd (points) | sampling se (points) | reliability | Pearson r | r, unlimited images |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in noise_table(result):
        unlimited = "-" if row["pearson_unlimited"] is None else f"{row['pearson_unlimited']:+.2f}"
        lines.append(f"| {row['target']:.0%} | {100 * row['pool_sd']:.2f} | {100 * row['sampling_se']:.2f} | "
                     f"{row['reliability']:.2f} | {row['pearson']:+.2f} | {unlimited} |")
    return lines + [""]


def probe_table(rows: list[dict], t: list[float], target: float) -> list[dict]:
    """Per probe variant at ``target``: rank correlation with the fine-tuned top-1 over the pool, the fine-tuned top-1 of
    its pick, and how often it orders a ranking against uniform as the fine-tune does (the member guard's decision)."""
    k, rows = t.index(target), [r for r in rows if f"{target:g}" in r.get("probes", {})]
    uniform = next(r for r in rows if r["kind"] == "uniform")
    truth = np.array([r["truth"][k] for r in rows])
    variants = [v for v in uniform["probes"][f"{target:g}"] if not v.endswith("seconds")]
    out = []
    for v in variants:
        f = np.array([r["probes"][f"{target:g}"][v] for r in rows])
        u, ut = uniform["probes"][f"{target:g}"][v], uniform["truth"][k]
        others = [(a, b) for r, a, b in zip(rows, f, truth) if r["kind"] != "uniform"]
        step = v.rsplit("-", 1)[0] + "-step-seconds"
        out.append({"variant": v, "spearman": float(stats.spearmanr(f, truth)[0]),
                    "kendall": float(stats.kendalltau(f, truth)[0]), "pick": rows[int(np.argmax(f))]["name"],
                    "pick_truth": float(truth[int(np.argmax(f))]),
                    "agree_vs_uniform": float(np.mean([(a > u) == (b > ut) for a, b in others])),
                    "step_seconds": float(np.mean([r["probes"][f"{target:g}"][step] for r in rows]))})
    return out


def probe_markdown(result: dict) -> list[str]:
    lines = []
    for target, table in result.get("probes", {}).items():
        lines += [f"## Sharper signals at {float(target):.0%} MACs", "",
                  f"Each pool ranking cut at {float(target):.0%}, adaptive BN ({BN_MID} batches; bn{max(BN_KS)}: "
                  f"{max(BN_KS)}), then scored on validation as is (bn{BN_MID}, bn{max(BN_KS)}) or after tau SGD "
                  "steps on the same seeded training batches (lr/momentum/wd "
                  f"{'/'.join(map(str, result['recipe']['sgd']))}); loss variants score minus the validation loss. "
                  "*agrees vs uniform*: the share of the other rankings that the variant puts on the same side of the "
                  "uniform allocation as the fine-tuned top-1 does (the member guard's decision). *s*: seconds per "
                  "network of the tau steps and the validation pass (adaptive BN, ~6 s here, comes on top).", "",
                  "| variant | Spearman | Kendall | agrees vs uniform | its pick | pick's FT top-1 | s |",
                  "|:---|---:|---:|---:|:---|---:|---:|"]
        lines += [f"| {r['variant']} | {r['spearman']:+.2f} | {r['kendall']:+.2f} | {r['agree_vs_uniform']:.0%} | "
                  f"{r['pick']} | {100 * r['pick_truth']:.2f} | {r['step_seconds']:.1f} |" for r in table]
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "compare_resnet20_cifar10jpeg_family5.yaml")
    parser.add_argument("--work", type=Path, help="default: runs/family_study")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "family_fitness")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    parser.add_argument("--probe", type=float, nargs="*", help="targets scored by the sharper signals too "
                        "(default: the lowest target; none: --probe with no value)")
    parser.add_argument("--random", type=int, default=8, help="random transforms in the pool")
    parser.add_argument("--ft-steps", type=int, default=100, help="ground-truth fine-tune SGD steps (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny end-to-end check (batches of 8, 2 FT steps)")
    parser.add_argument("--report", action="store_true", help="rewrite summary.md from <results>/family_fitness.json")
    args = parser.parse_args()
    if args.report:
        result = json.loads((args.results / "family_fitness.json").read_text())
        atomic_write_text(args.results / "summary.md", markdown(result))
        return
    torch.set_num_threads(1)
    work = args.work or ROOT / "runs" / "family_study"
    try:
        cfg = load_config(args.config, parse_set_options(args.set), schema=CompareConfig)
        source = Comparison(cfg, work)._source()
        recipe = Recipe(str(source.model.weights), random=args.random, seed=args.seed, ft_steps=args.ft_steps)
        if args.smoke:
            recipe = Recipe(recipe.source_weights, batch_size=8, val_images=100, test_images=200, random=1,
                            seed=args.seed, search=(4, 2, 5), ft_steps=2)
        folder = work / ("family_smoke" if args.smoke else "family_study")
        folder.mkdir(parents=True, exist_ok=True)
        study = FamilyStudy(Study(Pipeline(source, folder / "pipeline"), recipe, folder), sorted(args.targets), folder)
        entries = study.pool(recipe.random)
        pool = [study.record(*entry) for entry in entries]
        probed = study.targets[:1] if args.probe is None else sorted(args.probe)
        for name, _, keeps, _ in entries:
            study.probe(name, keeps, probed)
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    result = {"model": cfg.model.name, "targets": sorted(args.targets), "val_images": study.val_images,
              "recipe": {"ft_steps": recipe.ft_steps, "sgd": recipe.sgd, "test_images": recipe.test_images, "search": recipe.search,
                         "seed": recipe.seed, "random": recipe.random, "batch_size": recipe.batch_size},
              "pool": pool, "picks": picks(pool, study.chance, study.val_images), "hardware": hardware_label(),
              "probes": {f"{x:g}": probe_table(pool, study.targets, x) for x in probed}}
    out = args.results if not args.smoke else folder / "results"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "family_fitness.json", json.dumps(result, indent=1))
    atomic_write_text(out / "summary.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
