#!/usr/bin/env python
"""Which torchvision classifiers does legr prune correctly, which does it refuse, and where is it wrong?

For every torchvision classification model of the registry (``get_model_spec(name).source == "torchvision"``),
built with ``num_classes=10`` and random init (seed 0), in one process, one model at a time:

- ``analyze`` raises `legr.errors.UnsupportedModelError` -> **refused**, provided the message is one line and the
  model (parameters, buffers, train/eval mode) is unchanged; so is a model in which every channel group is fixed
  (nothing prunable: `legr run` refuses it with one line before anything trains);
- otherwise the same property as ``tests/test_graph.py::assert_equivalent`` (plans=1) must hold -> **handled**:
  float64, eval mode, batch norms given random statistics (``tests/helpers.randomize_norms``); one random plan
  (``tests/helpers.random_keep``); the physically pruned network equals the masked original (max abs diff
  < 1e-4 and <= 1e-9 * max(1, |output|)), the plan changes the output, the pruned model has fewer parameters and
  trains (forward + backward reach every parameter); and the cost model is exact:
  ``CostModel.base_macs`` == FlopCounterMode FLOPs / 2 of the traced model (batch 1), ``macs(keep)`` == FLOPs / 2
  of the pruned model, ``params(keep)`` / ``base_params`` == the parameter counts of the pruned / traced model;
- anything else (another exception, a failed check) -> **failing**.

Each analysed model also reports its coverage (issue 32): the share of its MACs in layers that read or write a
channel of a prunable group (``prunable_share``) and its channel barriers (ops analysed around, not followed:
``barriers``, ``barrier_ops``); a handled model with barriers counts among *handled with channel barriers*.

To stay within memory on the largest models (regnet_y_128gf: 637M parameters = 5.1 GB in float64), the masked
network is the traced model masked in place after the pruned copy has been measured and freed, instead of a third
copy (`legr.engine.surgery.masked_copy` is `apply_masks_` on a deep copy, so the outputs are the same).

Input: 64x64 for every model except those that need more (inception_v3, ViT, Swin, MaxViT: their spec size).

Results: benchmarks/results/torchvision_tally.{md,json}, written atomically and rewritten after every model, so an
interrupted run keeps what it measured.

Examples:
  nice -n 10 .venv/bin/python benchmarks/torchvision_tally.py
  .venv/bin/python benchmarks/torchvision_tally.py --models resnet18 vit_b_16 --out /tmp/tally
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import math
import resource
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test helpers define the property checked here

from helpers import random_keep, randomize_norms  # noqa: E402

from legr.engine.cost import CostModel, count_params, counted_macs  # noqa: E402
from legr.engine.surgery import apply_masks_, prune  # noqa: E402
from legr.errors import UnsupportedModelError  # noqa: E402
from legr.graph import analyze  # noqa: E402
from legr.hardware import git_revision, hardware_info, hardware_label  # noqa: E402
from legr.models import build_model, get_model_spec, list_models  # noqa: E402
from legr.paths import atomic_write_text  # noqa: E402

SMALL_INPUT = 64


@dataclass(frozen=True)
class Zoo:
    """A family of models to tally: their names, which need their spec's input size, the results' file stem."""

    title: str
    models: Callable[[], list[str]]
    needs_spec_input: tuple[str, ...]  # name prefixes: fixed position embeddings / windows / >= 75 px
    stem: str

    def input_size(self, name: str) -> int:
        bare = name.split(":", 1)[-1]
        return get_model_spec(name).input_size[-1] if bare.startswith(self.needs_spec_input) else SMALL_INPUT


def torchvision_models() -> list[str]:
    return [name for name in list_models() if get_model_spec(name).source == "torchvision"]


TORCHVISION = Zoo("torchvision models", torchvision_models, ("inception_v3", "vit_", "swin_", "maxvit"),
                  "torchvision_tally")


class CheckFailed(AssertionError):
    pass


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


def fingerprint(model: nn.Module) -> tuple[Any, ...]:
    """Exact digest of every parameter and buffer (no copy of the tensors) plus every module's train flag."""
    items = []
    for name, t in model.state_dict(keep_vars=True).items():
        t = t.detach()
        data = t.contiguous().reshape(-1).view(torch.uint8)
        items.append((name, tuple(t.shape), str(t.dtype), hashlib.blake2b(data.numpy().data).hexdigest()))
    return tuple(items), tuple(m.training for m in model.modules())


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip().rstrip(":")


def new_row(name: str, size: int) -> dict[str, Any]:
    return {"model": name, "input": size, "status": None, "groups": None, "prunable_groups": None,
            "params": None, "macs": None, "flop_counter_macs": None, "pruned_macs": None,
            "pruned_flop_counter_macs": None, "pruned_params": None, "max_abs_diff": None, "output_scale": None,
            "reason": None, "error": None, "stage": "build", "prunable_share": None, "barriers": None,
            "barrier_ops": None}


def check_model(name: str, seed: int, row: dict[str, Any]) -> dict[str, Any]:
    """Fill ``row`` (in place, so a failure leaves the stage it reached) with the outcome for model ``name``."""
    size = row["input"]
    torch.manual_seed(seed)
    model = build_model(name, num_classes=10)
    row["params"] = count_params(model)
    row["stage"] = "randomize_norms/double"
    model = randomize_norms(model).double().eval()
    before = fingerprint(model)
    row["stage"] = "analyze"
    try:
        graph = analyze(model, (3, size, size))
    except UnsupportedModelError as exc:
        message = str(exc)
        row["reason"] = message
        _check("\n" not in message, "the refusal message spans several lines")
        _check(fingerprint(model) == before, "analyze changed the model before refusing it")
        row["status"] = "refused"
        row["stage"] = None
        return row
    _check(fingerprint(model) == before, "analyze changed the model")
    row["groups"], row["prunable_groups"] = len(graph.groups), len(graph.prunable_groups())
    coverage = graph.coverage()  # issue 32: the share of MACs a plan can shrink, the ops frozen as barriers
    row["prunable_share"], row["barriers"] = coverage["prunable_share"], len(graph.barriers)
    row["barrier_ops"] = sorted({b["op"].split(" at node ")[0] for b in coverage["barriers"]})
    if not graph.prunable_groups():  # what `legr run` refuses with one line (allocate.check_reachable)
        reasons = Counter(g.reason for g in graph.groups if g.reason)
        row["reason"] = "nothing prunable: every channel group is fixed, most often because of " \
            + reasons.most_common(1)[0][0]
        row["status"], row["stage"] = "refused", None
        return row

    row["stage"] = "cost model (unpruned)"
    cost = CostModel(graph)
    gm = graph.gm.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    row["macs"], row["flop_counter_macs"] = cost.base_macs, counted_macs(gm, x[:1])
    _check(cost.base_macs == row["flop_counter_macs"], f"base MACs {cost.base_macs:.0f} != FlopCounterMode "
                                                       f"{row['flop_counter_macs']:.0f}")
    _check(cost.base_params == count_params(gm), f"base params {cost.base_params:.0f} != {count_params(gm)}")
    with torch.no_grad():
        original = model(x)

    row["stage"] = "prune"
    keep = random_keep(graph, np.random.default_rng(seed))
    pruned = prune(graph, keep).eval()
    with torch.no_grad():
        a = pruned(x)
    row["stage"] = "cost model (pruned)"
    row["pruned_macs"], row["pruned_params"] = cost.macs(keep), count_params(pruned)
    row["pruned_flop_counter_macs"] = counted_macs(pruned, x[:1])
    _check(row["pruned_macs"] == row["pruned_flop_counter_macs"],
           f"pruned MACs {row['pruned_macs']:.0f} != FlopCounterMode {row['pruned_flop_counter_macs']:.0f}")
    _check(cost.params(keep) == row["pruned_params"], f"pruned params {cost.params(keep):.0f} != {row['pruned_params']}")
    _check(row["pruned_params"] < row["params"], "the pruned model is not smaller")
    row["stage"] = "pruned backward"
    pruned.train()
    pruned(x).sum().backward()
    _check(all(p.grad is not None for p in pruned.parameters()), "backward does not reach every pruned parameter")
    del pruned
    gc.collect()

    row["stage"] = "masked forward"
    masked = apply_masks_(gm, graph, keep).eval()  # in place: the original is not needed any more
    with torch.no_grad():
        b = masked(x)
    _check(a.shape == b.shape == original.shape, f"output shapes {tuple(a.shape)}, {tuple(b.shape)}, "
                                                 f"{tuple(original.shape)} differ")
    diff, scale = (a - b).abs().max().item(), b.abs().max().item()
    row["max_abs_diff"], row["output_scale"] = diff, scale
    _check(diff < 1e-4 and diff <= 1e-9 * max(1.0, scale), f"pruned != masked: max abs diff {diff:.3g} (scale {scale:.3g})")
    _check(not torch.allclose(b, original), "the plan did not change the network: the check would prove nothing")
    row["status"] = "handled"
    row["stage"] = None
    return row


def run_one(name: str, seed: int, size: int) -> dict[str, Any]:
    start = time.perf_counter()
    row = new_row(name, size)
    try:
        check_model(name, seed, row)
    except Exception as exc:  # noqa: BLE001  (a failing model must not stop the tally)
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "/legr/" in f.filename), None)
        row["status"] = "failing"
        row["error"] = f"{first_line(exc)} (stage: {row['stage']}{f', at {where}' if where else ''})"
        row["traceback"] = "".join(traceback.format_exception(exc)[-6:])
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["max_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    gc.collect()
    return row


def _m(v: Any) -> str:
    return "" if v is None else f"{v / 1e6:.2f}"


def _cell(text: Any) -> str:
    return "" if text is None else str(text).replace("|", "\\|")


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("handled", "refused", "failing")}
    lines = [
        f"# {meta['zoo']}: handled / refused / failing",
        "",
        f"- generated by `python benchmarks/{meta['script']}`, {meta['date']}, git {meta['git']}",
        f"- hardware: {meta['hardware']}",
        f"- {len(rows)} / {meta['total']} models checked{'' if meta['complete'] else ' (run in progress or interrupted)'}"
        f", num_classes=10, seed {meta['seed']}, float64, eval mode, randomized batch norms, one random plan",
        "- handled: pruned == masked (max abs diff < 1e-4 and <= 1e-9 x output scale), the pruned model is smaller and"
        " trains, CostModel MACs == FlopCounterMode / 2 (unpruned and pruned, batch 1), params exact;"
        " refused: `UnsupportedModelError` from `analyze` (one line, model unchanged); failing: anything else",
        "",
        f"**handled {counts['handled']} / refused {counts['refused']} / failing {counts['failing']}**"
        f" (handled with channel barriers: {_with_barriers(rows)})",
        "",
        f"Prunable MACs (the share of a model's MACs in layers that read or write a prunable channel): "
        f"{coverage_line(rows)}.",
        "",
        "| model | input | status | groups | prunable groups | prunable MACs | barriers | MACs (M) | pruned MACs (M) |"
        " max abs diff | s | refusal reason / error / barrier ops |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        diff = "" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.1e}"
        share = "" if r.get("prunable_share") is None else f"{100 * r['prunable_share']:.0f}%"
        ops = "; ".join(r.get("barrier_ops") or [])
        lines.append(
            f"| {r['model']} | {r['input']} | {r['status']} | {_cell(r.get('groups'))} | {_cell(r.get('prunable_groups'))}"
            f" | {share} | {_cell(r.get('barriers'))} | {_m(r.get('macs'))} | {_m(r.get('pruned_macs'))} | {diff}"
            f" | {r['seconds']:.1f} | {_cell(r.get('reason') or r.get('error') or ops)} |"
        )
    lines.append("")
    return "\n".join(lines)


def _with_barriers(rows: list[dict[str, Any]]) -> int:
    return sum(r["status"] == "handled" and bool(r.get("barriers")) for r in rows)


def coverage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Over the handled models: how many have >= 70% of their MACs prunable, and the median share."""
    shares = sorted(r["prunable_share"] for r in rows
                    if r["status"] == "handled" and r.get("prunable_share") is not None)
    return {"handled": len(shares), "share_at_least_70": sum(s >= 0.7 for s in shares),
            "median_share": float(np.median(shares)) if shares else None}


def coverage_line(rows: list[dict[str, Any]]) -> str:
    c = coverage(rows)
    if not c["handled"]:
        return "no handled model"
    return (f">= 70% in {c['share_at_least_70']} of {c['handled']} handled models "
            f"({100 * c['share_at_least_70'] / c['handled']:.0f}%), median {100 * c['median_share']:.0f}%")


def main(argv: list[str] | None = None, zoo: Zoo = TORCHVISION, description: str = __doc__) -> int:
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--models", nargs="*", help=f"subset of the {zoo.title} (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="results folder")
    parser.add_argument("--stem", default=zoo.stem)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = zoo.models()
    if args.models:
        unknown = sorted(set(args.models) - set(names))
        if unknown:
            parser.error(f"not among the {zoo.title}: {', '.join(unknown)}")
        names = [n for n in names if n in args.models]
    meta = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "git": git_revision(REPO),
            "hardware": hardware_label(), "hardware_info": hardware_info(), "seed": args.seed, "total": len(names),
            "complete": False, "command": " ".join(sys.argv), "zoo": zoo.title, "script": Path(sys.argv[0]).name}
    rows: list[dict[str, Any]] = []
    print(f"{'model':<20} {'in':>4} {'status':<8} {'groups':>6} {'prun.':>5} {'MACs(M)':>10} {'diff':>8} {'s':>7}  reason/error",
          flush=True)
    for name in names:
        row = run_one(name, args.seed, zoo.input_size(name))
        rows.append(row)
        diff = "" if row.get("max_abs_diff") is None else f"{row['max_abs_diff']:.1e}"
        print(f"{name:<20} {row['input']:>4} {row['status']:<8} {_cell(row.get('groups')):>6} "
              f"{_cell(row.get('prunable_groups')):>5} {_m(row.get('macs')):>10} {diff:>8} {row['seconds']:>7.1f}  "
              f"{row.get('reason') or row.get('error') or ''}", flush=True)
        meta["complete"] = len(rows) == len(names)
        write(args.out, args.stem, rows, meta)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("handled", "refused", "failing")}
    print(f"handled {counts['handled']} / refused {counts['refused']} / failing {counts['failing']}")
    return 1 if counts["failing"] else 0


def write(out: Path, stem: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("handled", "refused", "failing")}
    summary = f"handled {counts['handled']} / refused {counts['refused']} / failing {counts['failing']}"
    payload = {"summary": summary, "counts": counts, "handled_with_barriers": _with_barriers(rows),
               "coverage": coverage(rows), **meta, "rows": rows,
               "models": [{"name": r["model"], "status": r["status"], "reason": r.get("reason") or r.get("error")}
                          for r in rows]}
    atomic_write_text(out / f"{stem}.json", json.dumps(payload, indent=1, default=_json_default) + "\n")
    atomic_write_text(out / f"{stem}.md", render(rows, meta))


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
