"""PCNN under class skew (issue 37): can a pruned member plus the probability layer match the unpruned network when
the environment shows mostly a few classes, and can the runtime move along the family as the skew changes?

Takes a finished LeGR run folder (``--family``: its source network and fine-tuned members; cifar_resnet20 on
CIFAR-10-JPEG for the committed results). Each network's logits on the validation split (the run's ``data.val_size``
images carved from training) and on the 10,000 test images are computed once (cached under ``$LEGR_CACHE``); every
stream is then replayed on logits, batch by batch (32 images), exactly as `legr.pipeline.adapt.replay` runs a live
network.

Every choice is made on the validation split: streams drawn *with replacement* from the validation images pick, for
each calibration (none, temperature, temperature + class biases), the layer's ``omega`` and ``floor`` (with the oracle
prior) and then the prior estimator and its memory (with the estimated prior), and among these the best. Each tuning
stream is drawn from one half of the validation images and corrected by layers calibrated on the other half. The
per-class validation accuracies drive member selection; the networks' layers on the test streams are calibrated on
the whole validation split. The test streams are only replayed: k in {2, 5}
dominant classes holding 90% or 100% of the images (k = 2: every pair of classes; k = 5: random sets), an unskewed
stream (all 10,000 test images), and streams whose two dominant classes change halfway. For every network: top-1
without the layer, with the oracle prior (each segment's composition) and with the estimated prior; and the runtime
(smallest network whose expected validation accuracy under the estimate meets the source network's validation top-1).

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/class_skew.py \\
        --family ../bench8/runs/compare_resnet20_cifar10jpeg/seed0_legr-floor25/seed0/legr-floor25
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from legr.engine.prior import ProbabilityLayer
from legr.hardware import git_revision, hardware_label
from legr.paths import atomic_write_text, cache_dir
from legr.pipeline.adapt import (SOURCE, AdaptSettings, Family, MemberSelector, NetworkProfile, Trace, open_family,
                                 replay)
from legr.pipeline.streams import Segment, Stream, build_stream, skewed_prior
from legr.training import predict_logits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from class_skew_report import markdown, plot  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OMEGAS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
FLOORS = (1e-5, 1e-4, 1e-3, 3e-3, 1e-2)
ESTIMATORS = ("ema", "window", "em", "counts")
MEMORIES = (250, 500, 1000, 2000)
ARMS = ("none", "oracle", "estimated")
# (the layer's decisions, the estimator's posterior): none, the temperature, the temperature and class biases
CALIBRATIONS = (("none", "none"), ("temperature", "temperature"), ("bias", "bias"), ("temperature", "bias"))
LOSS_LIMIT = 0.003  # top-1 the layer may lose on an unskewed (validation) stream, with any network


@dataclass(frozen=True)
class Spec:
    """A stream to draw: ``phases`` of (dominant classes, their share, images)."""

    name: str
    group: str
    phases: tuple[tuple[tuple[int, ...], float, int], ...]

    @property
    def change_at(self) -> int | None:
        return self.phases[0][2] if len(self.phases) > 1 else None


def specs(classes: int, rng: np.random.Generator, *, pairs: int | None, sets5: int, changes: int,
          lengths: dict[str, int]) -> list[Spec]:
    """k = 2 (every pair when ``pairs`` is None, else that many random pairs) and k = 5 (``sets5`` random sets) at
    90% and 100%, the unskewed stream, ``changes`` streams whose dominant pair changes halfway (90%)."""
    two = list(itertools.combinations(range(classes), 2))
    if pairs is not None:
        two = [two[i] for i in sorted(rng.choice(len(two), size=pairs, replace=False))]
    five = [tuple(sorted(rng.choice(classes, size=5, replace=False).tolist())) for _ in range(sets5)]
    out = []
    for share in (0.9, 1.0):
        out += [Spec(f"k2-{100 * share:.0f}-{a}{b}", f"k2-{100 * share:.0f}", (((a, b), share, lengths["k2"]),))
                for a, b in two]
        out += [Spec(f"k5-{100 * share:.0f}-{''.join(map(str, s))}", f"k5-{100 * share:.0f}",
                     ((s, share, lengths["k5"]),)) for s in five]
    out.append(Spec("uniform", "uniform", (((), 1.0, lengths["uniform"]),)))
    for i in range(changes):
        first = tuple(sorted(rng.choice(classes, size=2, replace=False).tolist()))
        second = tuple(sorted(rng.choice([c for c in range(classes) if c not in first], size=2, replace=False)))
        half = lengths["change"] // 2
        out.append(Spec(f"change-{i}-{''.join(map(str, first))}-{''.join(map(str, second))}", "change",
                        ((first, 0.9, half), (tuple(int(c) for c in second), 0.9, lengths["change"] - half))))
    return out


def draw(spec: Spec, labels: torch.Tensor, classes: int, seed: int, replace: bool) -> Stream:
    """The stream ``spec`` from a pool with ``labels``; the unskewed one drawn without replacement is the pool's own
    composition (on the test split: all of its images, in a seeded order)."""
    if spec.group == "uniform" and not replace:
        composition = torch.bincount(labels, minlength=classes).double()
        return build_stream(labels, [Segment(tuple(composition.tolist()), min(spec.phases[0][2], len(labels)))],
                            seed=seed, name=spec.name)
    segments = [Segment(skewed_prior(classes, dominant, share), n) for dominant, share, n in spec.phases]
    return build_stream(labels, segments, seed=seed, replace=replace, name=spec.name)


# --- logits, once per network ---------------------------------------------------------------------------------------
def _fingerprint(net: torch.nn.Module, images: torch.Tensor) -> str:
    h = hashlib.sha1()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(images.contiguous().numpy().tobytes()[:1 << 20])
    h.update(str(tuple(images.shape)).encode())
    return h.hexdigest()[:20]


def cached_logits(family: Family, log) -> dict[str, dict[str, torch.Tensor]]:
    """{network: {"val": logits, "test": logits}} (float32), from ``$LEGR_CACHE/class_skew`` or computed."""
    from safetensors.torch import load_file, save_file

    d = family.splits
    folder = cache_dir() / "class_skew"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, net in family.networks.items():
        path = folder / f"{name}-{_fingerprint(net, torch.cat([d.val[0], d.test[0]]))}.safetensors"
        if not path.exists():
            start = time.perf_counter()
            found = {split: predict_logits(net, x, d.mean, d.std, batch_size=250).contiguous()
                     for split, (x, _) in (("val", d.val), ("test", d.test))}
            tmp = path.with_suffix(".tmp")
            save_file(found, str(tmp))
            tmp.replace(path)
            log(f"logits of {name}: {time.perf_counter() - start:.0f} s")
        out[name] = load_file(str(path))
    return out


# --- replays -------------------------------------------------------------------------------------------------------
ROLL_WINDOW, ROLL_STEP = 250, 50  # the kept stream's curves: trailing means over 250 images, every 50


def rolling(values: np.ndarray) -> dict[str, list[float]]:
    """Trailing means of ``values`` over ROLL_WINDOW images, every ROLL_STEP images (positions: window ends)."""
    values = np.asarray(values, dtype=float)
    ends = list(range(ROLL_STEP, len(values) + 1, ROLL_STEP))
    return {"positions": ends, "values": [float(values[max(0, e - ROLL_WINDOW):e].mean()) for e in ends]}


def _tv(trace: Trace, stream: Stream, start: int) -> float:
    """Mean total-variation distance between the estimate a batch was corrected with and its segment's composition,
    over the batches that start at or after ``start``."""
    out, begin = [], 0
    bounds = stream.bounds()
    for end, estimate in zip(trace.batch_ends, [None, *trace.estimates[:-1]]):
        if begin >= start and estimate is not None:
            segment = next(i for i, (lo, hi) in enumerate(bounds) if lo <= begin < hi)
            out.append(0.5 * float(np.abs(estimate - stream.priors[segment].numpy()).sum()))
        begin = end
    return float(np.mean(out)) if out else float("nan")


def measures(trace: Trace, spec: Spec, stream: Stream, warmup: int, recovery: int, arm: str) -> dict[str, float]:
    m = {"top1": trace.accuracy(), "top1_after_warmup": trace.accuracy(warmup)}
    if spec.change_at is not None:
        m["top1_after_recovery"] = trace.accuracy(spec.change_at + recovery)
        m["top1_second_half"] = trace.accuracy(spec.change_at)
    if arm == "estimated":
        m["tv_after_warmup"] = _tv(trace, stream, warmup)
    return m


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _group_mean(streams: list[tuple[Spec, Stream]], values: dict[tuple[int, str], float]) -> float:
    """Mean over the stream kinds of the mean over their streams and networks (every kind weighs the same)."""
    groups: dict[str, list[float]] = {}
    for (i, _), v in values.items():
        groups.setdefault(streams[i][0].group, []).append(v)
    return float(np.mean([np.mean(v) for v in groups.values()]))


class Bench:
    def __init__(self, family: Family, logits: dict[str, dict[str, torch.Tensor]], args: argparse.Namespace):
        self.family, self.logits, self.args = family, logits, args
        self.names = sorted(family.networks, key=lambda n: family.macs[n])  # smallest first
        self.classes = family.splits.num_classes
        vy = family.splits.val[1].long()
        self.profiles = [NetworkProfile(n, family.macs[n], logits[n]["val"], vy) for n in self.names]
        # two stratified halves of the validation split: a tuning stream drawn from one half is corrected by layers
        # calibrated on the other (calibration is not scored on the images it was fitted on)
        rank = torch.empty(len(vy), dtype=torch.long)
        for c in vy.unique():
            members = (vy == c).nonzero().flatten()
            rank[members] = torch.arange(len(members))
        self.folds = [(rank % 2 == f).nonzero().flatten() for f in (0, 1)]
        self.fold_profiles = [[NetworkProfile(n, family.macs[n], logits[n]["val"][idx], vy[idx]) for n in self.names]
                              for idx in self.folds]
        self.val_fold: dict[str, int] = {}  # tuning stream -> the half its images come from
        self._layers: dict[tuple, dict[str, ProbabilityLayer]] = {}

    def forward(self, split: str):
        return lambda name, positions: self.logits[name][split][positions]

    def layers(self, settings: AdaptSettings, fold: int | None = None) -> dict[str, ProbabilityLayer]:
        """Every network's layer, calibrated on the whole validation split, or on the half that is not ``fold``."""
        key = (settings.omega, settings.floor, settings.calibrate, settings.estimate_calibrate, fold)
        if key not in self._layers:
            profiles = self.profiles if fold is None else self.fold_profiles[1 - fold]
            self._layers[key] = settings.layers(self.family.train_prior, profiles)
        return self._layers[key]

    def val_streams(self, specs_: list[Spec], seed: int) -> list[tuple[Spec, Stream]]:
        """The tuning streams, alternately from the two halves of the validation split (with replacement)."""
        labels = self.family.splits.val[1]
        out = []
        for i, spec in enumerate(specs_):
            fold = self.folds[i % 2]
            stream = draw(spec, labels[fold], self.classes, seed + i, True)
            stream = replace(stream, indices=fold[stream.indices])  # positions in the whole validation split
            self.val_fold[spec.name] = i % 2
            out.append((spec, stream))
        return out

    def replay(self, split: str, stream: Stream, settings: AdaptSettings, **kw) -> Trace:
        fold = self.val_fold[stream.name] if split == "val" else None
        layers = None if "selector" in kw else self.layers(settings, fold)
        return replay(stream, self.forward(split), train_prior=self.family.train_prior, settings=settings,
                      macs=self.family.macs, layers=layers, **kw)

    def tune(self, streams: list[tuple[Spec, Stream]], log) -> dict[str, Any]:
        """For each calibration: omega and floor with the oracle prior on the skewed validation streams, then
        estimator and memory with the estimated prior on every validation stream; the best of all by the mean top-1
        (after the warm-up for the estimated prior) over the stream kinds, each kind the mean over its streams and the
        networks, among those that lose at most LOSS_LIMIT top-1 on the unskewed stream with any network (the best of
        all if none does)."""
        a = self.args
        skewed = [(s, st) for s, st in streams if s.group != "uniform"]
        unskewed = [i for i, (s, _) in enumerate(streams) if s.group == "uniform"]
        plain = AdaptSettings(chunk=a.chunk)
        alone = {(i, n): self.replay("val", streams[i][1], plain, prior="none", network=n).accuracy()
                 for i in unskewed for n in self.names}
        grid, estimators = [], []
        for calibrate, estimate_calibrate in CALIBRATIONS:
            for omega, floor in itertools.product(OMEGAS, FLOORS):
                settings = AdaptSettings(omega=omega, floor=floor, calibrate=calibrate,
                                         estimate_calibrate=estimate_calibrate, chunk=a.chunk)
                accs = {(i, n): self.replay("val", st, settings, prior="oracle", network=n).accuracy()
                        for i, (_, st) in enumerate(skewed) for n in self.names}
                grid.append({"calibrate": calibrate, "estimate_calibrate": estimate_calibrate, "omega": omega,
                             "floor": floor, "top1": _group_mean(skewed, accs)})
            best = max(grid[-len(OMEGAS) * len(FLOORS):], key=lambda g: g["top1"])
            log(f"layer on validation, calibrate {calibrate} / {estimate_calibrate}: omega {best['omega']}, floor "
                f"{best['floor']} ({100 * best['top1']:.2f}% with the oracle prior)")
            oracle = AdaptSettings(omega=best["omega"], floor=best["floor"], calibrate=calibrate,
                                   estimate_calibrate=estimate_calibrate, chunk=a.chunk)
            oracle_top1 = {(i, n): self.replay("val", st, oracle, prior="oracle", network=n).accuracy(a.warmup)
                           for i, (_, st) in enumerate(streams) for n in self.names}
            for name, memory in itertools.product(ESTIMATORS, MEMORIES):
                settings = oracle.model_copy(update={"estimator": name, "memory": memory})
                traces = {(i, n): self.replay("val", st, settings, network=n)
                          for i, (_, st) in enumerate(streams) for n in self.names}
                accs = {k: t.accuracy(a.warmup) for k, t in traces.items()}
                loss = max((alone[k] - traces[k].accuracy() for k in alone), default=0.0)
                gaps = [oracle_top1[k] - v for k, v in accs.items()]
                top1 = _group_mean(streams, accs)
                estimators.append({"calibrate": calibrate, "estimate_calibrate": estimate_calibrate,
                                   "estimator": name, "memory": memory,
                                   "omega": best["omega"], "floor": best["floor"], "top1": top1,
                                   "gap_vs_oracle": _group_mean(streams, {k: oracle_top1[k] - v
                                                                          for k, v in accs.items()}),
                                   "gap_max": float(np.max(gaps)), "unskewed_loss": loss})
                log(f"  {name} memory {memory}: {100 * top1:.2f}% after warm-up (oracle's lead "
                    f"{100 * estimators[-1]['gap_vs_oracle']:+.2f}, max {100 * np.max(gaps):+.2f}; unskewed loss "
                    f"{100 * loss:+.2f})")
        allowed = [g for g in estimators if g["unskewed_loss"] <= LOSS_LIMIT] or estimators
        chosen = max(allowed, key=lambda g: g["top1"])
        same = [g for g in allowed if (g["calibrate"], g["estimate_calibrate"]) ==
                (chosen["calibrate"], chosen["estimate_calibrate"])]
        per_estimator = {e: max((g for g in same if g["estimator"] == e), key=lambda g: g["top1"], default=None)
                         for e in ESTIMATORS}
        per_estimator = {e: g for e, g in per_estimator.items() if g is not None}
        return {"layer_grid": grid, "loss_limit": LOSS_LIMIT, "calibrate": chosen["calibrate"],
                "estimate_calibrate": chosen["estimate_calibrate"], "omega": chosen["omega"],
                "floor": chosen["floor"], "estimator_grid": estimators, "estimator": chosen["estimator"],
                "memory": chosen["memory"], "per_estimator": per_estimator}

    def calibration_ablation(self, streams: list[tuple[Spec, Stream]], tuned: dict[str, Any],
                             settings: AdaptSettings) -> list[dict[str, Any]]:
        """Report only: every calibration pair with its best configuration on validation, on the unskewed and the
        k = 2 / 90% test streams: per network the top-1 lost on the unskewed stream and the mean top-1 with the
        estimated and with the oracle prior on the skewed ones."""
        out = []
        for calibrate, estimate_calibrate in CALIBRATIONS:
            best = max((g for g in tuned["estimator_grid"] if (g["calibrate"], g["estimate_calibrate"]) ==
                        (calibrate, estimate_calibrate)), key=lambda g: g["top1"])
            config = settings.model_copy(update={k: best[k] for k in ("calibrate", "estimate_calibrate", "omega",
                                                                        "floor", "estimator", "memory")})
            row: dict[str, Any] = {**{k: best[k] for k in ("calibrate", "estimate_calibrate", "estimator", "memory")},
                                   "networks": {}}
            for n in self.names:
                uniform = [st for s, st in streams if s.group == "uniform"]
                skewed = [st for s, st in streams if s.group == "k2-90"]
                row["networks"][n] = {
                    "unskewed_change": _mean([self.replay("test", st, config, network=n).accuracy() -
                                              self.replay("test", st, config, prior="none", network=n).accuracy()
                                              for st in uniform]),
                    "k2_90_estimated": _mean([self.replay("test", st, config, network=n).accuracy() for st in skewed]),
                    "k2_90_oracle": _mean([self.replay("test", st, config, prior="oracle", network=n).accuracy()
                                           for st in skewed])}
            out.append(row)
        return out

    def evaluate(self, streams: list[tuple[Spec, Stream]], settings: AdaptSettings, target: float,
                 comparison: dict[str, AdaptSettings], keep: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        a = self.args
        rows, kept = [], {}
        for spec, st in streams:
            row: dict[str, Any] = {"name": spec.name, "group": spec.group, "length": len(st),
                                   "change_at": spec.change_at,
                                   "phases": [{"dominant": list(d), "share": s, "images": n} for d, s, n in spec.phases],
                                   "networks": {}}
            for n in self.names:
                res = {}
                for arm in ARMS:
                    trace = self.replay("test", st, settings, prior=arm, network=n)
                    res[arm] = measures(trace, spec, st, a.warmup, a.recovery, arm)
                    if spec.name == keep:
                        kept[f"{n}/{arm}"] = rolling(trace.correct)
                for est, other in comparison.items():  # the other estimators, each at its best memory on validation
                    if est != settings.estimator and (n in (SOURCE, self.names[0])):
                        trace = self.replay("test", st, other, network=n)
                        res[f"estimated:{est}"] = measures(trace, spec, st, a.warmup, a.recovery, "estimated")
                row["networks"][n] = res
            selector = MemberSelector(self.profiles, self.layers(settings), target, settings.hysteresis)
            trace = self.replay("test", st, settings, selector=selector)
            switches = sum(1 for x, y in zip(trace.network, trace.network[1:]) if x != y)
            row["runtime"] = {**measures(trace, spec, st, a.warmup, a.recovery, "estimated"),
                              "macs_ratio": trace.mean_macs() / self.family.macs[SOURCE], "switches": switches,
                              "share": {n: trace.network.count(n) / len(st) for n in self.names}}
            if spec.name == keep:
                kept["runtime"] = rolling(trace.correct)
                kept["runtime_macs"] = rolling(trace.macs / self.family.macs[SOURCE])
                dominant = [list(ph[0]) for ph in spec.phases]  # the estimate's mass on each phase's dominant classes
                kept["dominant_mass"] = {"positions": trace.batch_ends, "phases": dominant,
                                         "mass": [[float(e[c].sum()) for c in dominant] for e in trace.estimates]}
            rows.append(row)
        return rows, kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", type=Path, required=True, help="a finished LeGR run folder")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "class_skew")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stream draw")
    parser.add_argument("--chunk", type=int, default=32, help="images per batch")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--recovery", type=int, default=1000, help="images after a change before it must recover")
    parser.add_argument("--lengths", default="k2=2000,k5=4000,uniform=10000,change=4000",
                        help="test stream lengths (the unskewed one: all test images)")
    parser.add_argument("--val-lengths", default="k2=2000,k5=4000,uniform=4000,change=4000")
    parser.add_argument("--pairs", type=int, default=None, help="random k = 2 pairs on test (default: every pair)")
    parser.add_argument("--val-pairs", type=int, default=6)
    parser.add_argument("--sets5", type=int, default=10, help="random k = 5 sets on test")
    parser.add_argument("--changes", type=int, default=10, help="test streams whose dominant classes change")
    parser.add_argument("--hysteresis", type=float, default=0.005)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    lengths = {k: int(v) for k, v in (p.split("=") for p in args.lengths.split(","))}
    val_lengths = {k: int(v) for k, v in (p.split("=") for p in args.val_lengths.split(","))}
    family = open_family(args.family, log=log)
    logits = cached_logits(family, log)
    bench = Bench(family, logits, args)
    classes = bench.classes
    d = family.splits
    timings = {"logits": time.perf_counter() - start}

    rng = np.random.default_rng(args.seed + 1000)  # validation draws: their own stream of randomness
    val_specs = specs(classes, rng, pairs=args.val_pairs, sets5=2, changes=3, lengths=val_lengths)
    val_streams = bench.val_streams(val_specs, args.seed + 1000)
    tuned = bench.tune(val_streams, log)
    timings["tuning"] = time.perf_counter() - start - timings["logits"]
    settings = AdaptSettings(estimator=tuned["estimator"], memory=tuned["memory"], omega=tuned["omega"],
                             floor=tuned["floor"], calibrate=tuned["calibrate"],
                             estimate_calibrate=tuned["estimate_calibrate"], chunk=args.chunk,
                             hysteresis=args.hysteresis)
    comparison = {e: settings.model_copy(update={"estimator": e, "memory": g["memory"]})
                  for e, g in tuned["per_estimator"].items()}
    profiles = {p.name: p for p in bench.profiles}
    target = profiles[SOURCE].top1()

    rng = np.random.default_rng(args.seed)
    test_specs = specs(classes, rng, pairs=args.pairs, sets5=args.sets5, changes=args.changes,
                       lengths={**lengths, "uniform": min(lengths["uniform"], len(d.test[1]))})
    test_streams = [(s, draw(s, d.test[1], classes, args.seed + i, False)) for i, s in enumerate(test_specs)]
    keep = next(s.name for s in test_specs if s.group == "change")
    rows, kept = bench.evaluate(test_streams, settings, target, comparison, keep)
    ablation = bench.calibration_ablation(test_streams, tuned, settings)
    timings["test"] = time.perf_counter() - start - timings["logits"] - timings["tuning"]

    test_top1 = {n: float((logits[n]["test"].argmax(1) == d.test[1]).double().mean()) for n in bench.names}
    cfg = yaml.safe_load((args.family / "config.yaml").read_text())
    shown = args.family.resolve()
    result = {
        "dataset": cfg["data"]["name"], "model": cfg["model"]["name"],
        "family": str(shown.relative_to(ROOT.parent) if shown.is_relative_to(ROOT.parent) else shown),
        "val_images": len(d.val[1]), "test_images": len(d.test[1]), "seed": args.seed, "chunk": args.chunk,
        "warmup": args.warmup, "recovery": args.recovery, "hardware": hardware_label(), "git_rev": git_revision(ROOT),
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "target": target, "hysteresis": args.hysteresis,
        "train_prior": family.train_prior.tolist(),
        "networks": {n: {"macs": family.macs[n], "macs_ratio": family.macs[n] / family.macs[SOURCE],
                         "val_top1": profiles[n].top1(), "test_top1": test_top1[n],
                         "temperature": profiles[n].calibration("temperature")[0],
                         "bcts": {"temperature": profiles[n].calibration("bias")[0],
                                  "class_bias": profiles[n].calibration("bias")[1].tolist()}} for n in bench.names},
        "tuning": tuned, "val_streams": len(val_streams), "streams": rows, "kept_stream": keep, "kept": kept,
        "calibration_ablation": ablation,
    }
    result["elapsed_s"] = {**timings, "total": time.perf_counter() - start}
    args.results.mkdir(parents=True, exist_ok=True)
    from class_skew_report import summarize

    result["summary"] = summarize(result)
    atomic_write_text(args.results / "class_skew.json", json.dumps(result, indent=1))
    atomic_write_text(args.results / "summary.md", markdown(result))
    plot(result, args.results / "class_skew.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
