"""int8 members of a finished run (`legr quantize RUN_DIR|MEMBER_DIR`): every network of the family exported to ONNX,
quantized statically in onnxruntime (`legr.engine.int8`) and measured there, beside its fp32 ONNX twin.

Data roles: calibration on ``calibration_images`` training images (a seeded sample of the run's training split, not
augmented), the int8 drop judged and the per-layer sensitivity computed on the validation split, accuracy reported on
the test split — the test set chooses nothing. Per network, in its folder (the source network's: ``int8/source``)::

    model.onnx        the fp32 network as deployed (exported, checked against PyTorch, pre-processed: BN folded)
    model.int8.onnx   the int8 network (QDQ)
    int8.json         written last: settings, top-1 fp32/int8 on val and test in onnxruntime, latency and bytes

Idempotent and resumable: a network whose ``int8.json`` holds the same settings is read back, not redone. The run's
results.json / .csv gain ``int8_*`` / ``onnx_*`` columns, and its report and Pareto plot the int8 points.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from legr.engine import int8
from legr.engine.latency import measure_interleaved
from legr.errors import ConfigError, LegrError
from legr.paths import atomic_write_text
from legr.pipeline.config_files import held_config
from legr.pipeline.folder import RunFolder
from legr.pipeline.steps import Pipeline
from legr.reporting import BASELINE, read_results, write_results
from legr.training.evaluate import evaluate

INT8_JSON = "int8.json"
SOURCE_FOLDER = ("int8", "source")


def run_of(path: str | Path) -> tuple[RunFolder, list[str] | None]:
    """The run folder of ``path`` (a run folder, or one member folder in it) and the member names asked for (None:
    all of them)."""
    path = Path(path)
    if not path.is_dir():
        raise LegrError(f"{path} is not a folder: give a run folder or a member folder of one")
    if (path / "config.yaml").is_file():
        return RunFolder(path), None
    if (path / "plan.json").is_file() and (path.parent.parent / "config.yaml").is_file():
        return RunFolder(path.parent.parent), [path.name]
    raise LegrError(f"{path} is neither a run folder (config.yaml) nor a member folder of one (plan.json in "
                    "<run>/members/<name>): int8 needs the run's data for calibration and evaluation")


def _calibration(pipe: Pipeline, settings: int8.Int8Settings) -> list[np.ndarray]:
    x, _ = pipe.data.train
    return int8.calibration_batches(x, pipe.data.mean, pipe.data.std, settings.calibration_images, pipe.cfg.seed)


def quantize_network(pipe: Pipeline, net: nn.Module, folder: Path, settings: int8.Int8Settings,
                     calibration: list[np.ndarray], *, threads: int = 1, clock: str = "wall",
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """fp32 and int8 ONNX files of ``net`` in ``folder`` with their figures (`INT8_JSON`, written last)."""
    record = folder / INT8_JSON
    wanted = json.loads(json.dumps(asdict(settings)))  # as int8.json holds it (tuples as lists)
    if record.is_file():
        held = json.loads(record.read_text())
        if held.get("settings") == wanted:
            return held
    fp32, q8 = folder / int8.FP32_FILE, folder / int8.INT8_FILE
    info = int8.export_quantized(net, pipe.data.input_size, folder, calibration, settings)
    nets = {"fp32": int8.OnnxModule(fp32, threads), "int8": int8.OnnxModule(q8, threads)}

    def top1(module: nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> float:
        return evaluate(module, *split, pipe.data.mean, pipe.data.std, batch_size=pipe.cfg.eval.batch_size).top1

    out: dict[str, Any] = {"settings": wanted, "quantized": info["quantized"], "excluded": info["excluded"],
                           "onnx_bytes": fp32.stat().st_size, "int8_bytes": q8.stat().st_size}
    for split in ("val", "test"):
        pair = getattr(pipe.data, split)
        if len(pair[0]):
            for kind, module in nets.items():
                out[f"{'onnx' if kind == 'fp32' else 'int8'}_{split}_top1"] = top1(module, pair)
    _, batches = pipe.cfg.latency_timing()
    e = pipe.cfg.eval
    timings = measure_interleaved(nets, pipe.data.input_size, batches, rounds=e.latency_rounds, threads=threads,
                                  warmup=e.latency_warmup, repeats=e.latency_repeats, clock=clock)
    for kind, per_batch in timings.items():
        for b, r in per_batch.items():
            out[f"{'onnx' if kind == 'fp32' else 'int8'}_cpu_b{b}_ms"] = r.median_ms
    out["clock"], out["threads"] = clock, threads
    drop = out.get("onnx_val_top1", 0.0) - out.get("int8_val_top1", 0.0)
    if "onnx_val_top1" in out and drop > settings.max_drop:
        log(f"warning: {folder.name}: int8 costs {100 * drop:.2f} points of validation top-1 (> max_drop "
            f"{100 * settings.max_drop:g}); per-layer sensitivity follows (exclude the first layers named)")
        val = pipe.data.val
        out["sensitivity"] = int8.sensitivity(fp32, calibration, lambda p: top1(int8.OnnxModule(p, threads), val),
                                              settings, progress=log)
        worst = ", ".join(f"{r['node']} (+{100 * r['regained']:.2f})" for r in out["sensitivity"][:3])
        log(f"  {folder.name}: layers whose fp32 regains the most validation top-1: {worst}")
    atomic_write_text(record, json.dumps(out, indent=1))
    return out


RESULT_KEYS = {"int8_top1": "int8_test_top1", "onnx_top1": "onnx_test_top1", "int8_bytes": "int8_bytes",
               "onnx_bytes": "onnx_bytes"}


def quantize_run(path: str | Path, settings: int8.Int8Settings = int8.Int8Settings(), *, threads: int = 1,
                 clock: str = "wall", progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Quantize the networks of the finished run at ``path`` (all, or the one member folder given) and add their
    int8 figures to the run's results; returns the updated rows."""
    folder, only = run_of(path)
    if not folder.results_json.is_file():
        raise LegrError(f"run {folder.root} is not finished (no {folder.results_json.name}): run `legr run` first")
    try:
        cfg = held_config(yaml.safe_load(folder.config.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{folder.config} is not valid YAML: {exc}") from None
    pipe = Pipeline(cfg, folder.root, progress=progress, log=log)
    rows = read_results(folder.root)
    names = {r["name"] for r in rows}
    for name in only or []:
        if name not in names:
            raise LegrError(f"member {name} has no row in {folder.results_json}: evaluate the run first")
    calibration = _calibration(pipe, settings)
    for row in rows:
        if only is not None and row["name"] not in only:
            continue
        if row["name"] == BASELINE:
            pipe.base  # noqa: B018  (loads the trained source weights into the graph's modules)
            net, where = pipe.graph.gm, folder.root.joinpath(*SOURCE_FOLDER)  # the members' layer names
        else:
            member = folder.member(row["name"])
            net, _ = pipe.method.load(member)
            where = member.root
        log(f"int8: {row['name']}")
        figures = quantize_network(pipe, net.cpu().eval(), where, settings, calibration, threads=threads,
                                   clock=clock, log=log)
        row.update({key: figures.get(src) for key, src in RESULT_KEYS.items()})
        row.update({k: v for k, v in figures.items() if k.endswith("_ms")})
    write_results(rows, folder.root)
    pipe.report()  # the Pareto plot gains the onnxruntime panel
    return rows


def int8_file(member: str | Path, log: Callable[[str], None] = print) -> Path:
    """The int8 ONNX file of a member folder: as `legr quantize` left it, else quantized now with the defaults."""
    _, only = run_of(member)
    if only is None:
        raise LegrError(f"{member} is a run folder: give one member folder (<run>/members/<name>)")
    path = Path(member)
    if not ((path / INT8_JSON).is_file() and (path / int8.INT8_FILE).is_file()):
        quantize_run(path, progress=False, log=log)
    return path / int8.INT8_FILE
