"""A whole Han et al. 2015 experiment on a registered model and dataset, as `legr magnitude` and the benchmark run it:
train (or load) the dense model -> ``run_magnitude`` -> test-set figures, storage both ways, CPU latency of dense
kernels vs torch sparse kernels -> ``results.json``/``results.csv`` (``legr.reporting`` rows) + ``summary.json``.

Everything lives in one run folder; rerunning the same experiment resumes (base training per epoch, sensitivity,
each prune/retrain round). The test set is used only for the reported figures.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from legr.data import load_dataset, split_train_val
from legr.engine.cost import count_params, price
from legr.engine.latency import measure_latency
from legr.errors import ConfigError
from legr.hardware import git_revision, hardware_label
from legr.methods.magnitude.compress import (
    MagnitudeConfig,
    check_reachable,
    run_magnitude,
)
from legr.methods.magnitude.pruning import count_nonzero, layer_density
from legr.methods.magnitude.sparse import (
    encode_sparse,
    sparse_kernel_copy,
    sparse_weight_names,
    storage_report,
)
from legr.models import (
    build_model,
    file_fingerprint,
    get_model_spec,
    load_checkpoint,
    save_state_dict,
)
from legr.paths import atomic_write_text, make_folder
from legr.reporting import BASELINE, latency_key, write_results
from legr.training import FinetuneConfig, evaluate, finetune

DATASET_LABELS = {"mnist": "MNIST", "cifar10-jpeg": "CIFAR-10-JPEG", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                  "digits": "digits"}


@dataclass(frozen=True)
class ExperimentConfig:
    """What to compress and how. ``weights`` None trains the dense model from scratch with ``base``."""

    model: str
    dataset: str = "mnist"
    weights: str | None = None
    base: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        epochs=10, lr=0.05, milestones=(0.5, 0.75), gamma=0.1, augment=False))
    magnitude: MagnitudeConfig = field(default_factory=MagnitudeConfig)
    val_size: int = 5000
    train_subset: int | None = None
    seed: int = 0
    latency_threads: int = 1
    latency_batches: tuple[int, ...] = (1, 64)
    latency_repeats: int = 50

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["base"], out["magnitude"] = self.base.state(), self.magnitude.to_dict()
        return json.loads(json.dumps(out))


def _latencies(model: nn.Module, input_size: tuple[int, ...], cfg: ExperimentConfig) -> dict[int, float]:
    return {b: measure_latency(model, input_size, b, threads=cfg.latency_threads, warmup=5,
                               repeats=cfg.latency_repeats).median_ms for b in cfg.latency_batches}


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, progress: bool = True,
                   log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run (or resume) the experiment in ``out``; returns the summary also written to ``out/summary.json``."""
    start = time.perf_counter()
    data = load_dataset(cfg.dataset)
    tx, ty, vx, vy = split_train_val(data.train_x, data.train_y, cfg.val_size, cfg.seed)
    if cfg.train_subset is not None:  # at random: some datasets are stored class by class
        pick = torch.randperm(len(tx), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.train_subset]
        tx, ty = tx[pick], ty[pick]
    spec = get_model_spec(cfg.model)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=data.num_classes)
    check_reachable(model, cfg.magnitude)  # before the dense training and the sensitivity analysis
    out = make_folder(out)
    input_size = data.input_size
    base_path = out / "base.safetensors"
    base_key = {"model": cfg.model, "dataset": cfg.dataset, "base": cfg.base.state(), "val_size": cfg.val_size,
                "train_subset": cfg.train_subset, "seed": cfg.seed}
    base_key = json.loads(json.dumps(base_key))
    if cfg.weights is None and (out / "base.json").exists():
        if json.loads((out / "base.json").read_text()) != base_key:
            raise ConfigError(f"{out} holds a dense model trained with other settings ({out / 'base.json'}); "
                              "use another output folder")
    elif cfg.weights is None:
        atomic_write_text(out / "base.json", json.dumps(base_key, indent=1) + "\n")
    if cfg.weights is not None:
        load_checkpoint(model, cfg.weights)
        base_source = f"{cfg.weights} (sha256 {file_fingerprint(cfg.weights)})"
    elif base_path.exists():
        load_checkpoint(model, base_path)
        base_source = "trained here"
    else:
        log(f"training the dense {cfg.model} on {len(tx)} {cfg.dataset} images ({cfg.base.epochs} epochs)")
        finetune(model, tx, ty, data.mean, data.std, cfg.base, checkpoint=out / "base_ft.pt", val=(vx, vy),
                 progress=progress)
        save_state_dict(model.state_dict(), base_path)
        (out / "base_ft.pt").unlink(missing_ok=True)
        base_source = "trained here"
    model.eval()
    base_test = evaluate(model, data.test_x, data.test_y, data.mean, data.std)
    base_val = evaluate(model, vx, vy, data.mean, data.std)
    log(f"dense {cfg.model}: test top-1 {100 * base_test.top1:.2f}%, val {100 * base_val.top1:.2f}%")
    dense = copy.deepcopy(model)

    provenance = {"experiment": cfg.to_dict()}
    result = run_magnitude(model, input_size, (tx, ty), (vx, vy), data.mean, data.std, cfg.magnitude,
                           out / "magnitude", progress=progress, log=log, provenance=provenance)
    final = result.model.eval()
    test = evaluate(final, data.test_x, data.test_y, data.mean, data.std)
    masked_test = evaluate(result.masked, data.test_x, data.test_y, data.mean, data.std)
    log(f"compressed: test top-1 {100 * test.top1:.2f}% (masked dense-shaped: {100 * masked_test.top1:.2f}%)")

    base_store, final_store = storage_report(dense), storage_report(final)
    tensors, _ = encode_sparse(final.state_dict(), sparse_weight_names(final))
    final_store = storage_report(final, tensors)
    lat_base = _latencies(dense, input_size, cfg)
    lat_final = _latencies(final, input_size, cfg)
    lat_sparse = _latencies(sparse_kernel_copy(final), input_size, cfg)
    dense_macs = price(dense, input_size).macs
    final_price = price(final, input_size)
    final_macs, final_nnz_macs = final_price.macs, final_price.nonzero_macs
    remaining = layer_density(result.masked, list(result.stds))
    common = {"model": cfg.model, "dataset": DATASET_LABELS.get(cfg.dataset, cfg.dataset), "seed": cfg.seed,
              "git_rev": git_revision(Path(__file__).parent), "hardware": hardware_label()}
    base_row = {"name": "dense", "method": BASELINE, **common, "macs": dense_macs, "params": count_params(dense),
                "compression": 1.0, "top1": base_test.top1, "top5": base_test.top5, "loss": base_test.loss,
                "error": 1 - base_test.top1, "nonzero_params": count_nonzero(dense),
                "dense_bytes": base_store["dense_bytes"],
                **{latency_key("cpu", b): v for b, v in lat_base.items()}}
    nonzero = count_nonzero(final)
    pruned_row = {"name": f"han{cfg.magnitude.target:g}x", "method": "han2015", **common,
                  "target": cfg.magnitude.target, "macs": final_macs, "sparse_macs": final_nnz_macs,
                  "params": final_store["params"], "nonzero_params": nonzero,
                  "compression": count_params(dense) / nonzero,
                  "storage_compression": base_store["dense_bytes"] / final_store["sparse_bytes"],
                  "sparse_bytes": final_store["sparse_bytes"], "index_bytes": final_store["index_bytes"],
                  "top1": test.top1, "top5": test.top5, "loss": test.loss, "error": 1 - test.top1,
                  "finetune_epochs": sum(r["epochs"] for r in result.rounds),
                  **{latency_key("cpu", b): v for b, v in lat_final.items()},
                  **{"sparse_kernel_" + latency_key("cpu", b): v for b, v in lat_sparse.items()},
                  "path": str(out / "magnitude" / "model.sparse.safetensors")}
    write_results([base_row, pruned_row], out)
    summary = {"rows": [base_row, pruned_row], "base_source": base_source, "base_val_top1": base_val.top1,
               "masked_test_top1": masked_test.top1, "remaining": remaining, "rounds": result.rounds,
               "fractions": result.fractions, "stds": result.stds, "dead": result.dead,
               "sensitivity": {n: c.to_dict() for n, c in (result.sensitivity or {}).items()},
               "latency_threads": cfg.latency_threads, "input_size": list(input_size),
               "train_images": len(tx), "val_images": len(vx), "test_images": len(data.test_x),
               "spec": spec.description, "config": cfg.to_dict(), "seconds_this_call": time.perf_counter() - start}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def experiment_from_options(*, model: str, dataset: str = "mnist", weights: str | None = None, target: float = 12.0,
                            qualities: dict | None = None, rounds: int = 3, epochs: int = 3,
                            final_epochs: int | None = None, lr: float = 0.01, regularization: str = "l2",
                            reg_strength: float = 5e-4, base_epochs: int = 10, val_size: int = 5000,
                            train_subset: int | None = None, seed: int = 0) -> ExperimentConfig:
    """An ``ExperimentConfig`` from flat options (the CLI's); bad values raise ``ConfigError``."""
    get_model_spec(model)  # unknown name -> LegrError with suggestions
    if qualities and not all(isinstance(v, (int, float)) for v in qualities.values()):
        raise ConfigError(f"--quality expects LAYER=NUMBER, got {qualities}")
    augment = dataset.startswith("cifar")
    retrain = FinetuneConfig(epochs=epochs, lr=lr, milestones=(0.75,), gamma=0.1, augment=augment, seed=seed)
    base = FinetuneConfig(epochs=base_epochs, lr=0.05, milestones=(0.5, 0.75), gamma=0.1, augment=augment, seed=seed)
    mag = MagnitudeConfig(target=target, qualities=qualities or None, rounds=rounds, retrain=retrain,
                          final_epochs=final_epochs, regularization=regularization, reg_strength=reg_strength)
    return ExperimentConfig(model=model, dataset=dataset, weights=weights, base=base, magnitude=mag,
                            val_size=val_size, train_subset=train_subset, seed=seed)
