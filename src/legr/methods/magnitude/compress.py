"""Han et al. 2015 end to end over a resumable run folder: sensitivity -> per-layer fractions for a compression
target -> iterative prune/retrain rounds -> dead-unit removal -> CSR file.

>>> cfg = MagnitudeConfig(target=12.0, rounds=3, retrain=FinetuneConfig(epochs=3, lr=0.01, augment=False))
>>> result = run_magnitude(model, (1, 28, 28), (train_x, train_y), (val_x, val_y), mean, std, cfg, Path("runs/han"))

Run folder (rerunning the same call resumes after the last finished step; another config raises ConfigError):
``config.json`` · ``sensitivity.json`` · ``round{r}_ft.pt`` (retraining checkpoint, per epoch) ·
``round{r}.safetensors`` (weights + masks after round r) · ``rounds.json`` · ``model.sparse.safetensors`` +
``plan.json`` (the final, dead-unit-free network; reload with ``load_magnitude``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from legr.engine.cost import count_params
from legr.engine.dead_units import remove_dead_units
from legr.errors import BudgetError, CheckpointError, ConfigError
from legr.methods.magnitude.pruning import (
    DEFAULT_FRACTIONS,
    Masker,
    SensitivityCurve,
    adjust_dropout_,
    allocate_fractions,
    layer_density,
    prunable_layers,
    quality_for_fraction,
    reference_stds,
    schedule_fractions,
    sensitivity,
)
from legr.methods.magnitude.sparse import load_sparse, save_sparse
from legr.models.checkpoint import load_state_dict, read_state_dict, save_state_dict
from legr.paths import atomic_write_text, make_folder
from legr.training import FinetuneConfig, evaluate, finetune

MASK_PREFIX = "__mask__."


@dataclass(frozen=True)
class MagnitudeConfig:
    """Every knob of Han et al. 2015.

    - ``target``: overall compression, dense parameters / non-zero parameters (biases count as kept).
    - ``qualities``: explicit final quality per layer (threshold = quality x std of the dense layer); when given,
      the sensitivity analysis and ``target`` are skipped and round r uses ``quality * r / rounds``.
    - ``fractions``: the pruned fractions of the sensitivity analysis; ``sensitivity_samples`` caps the validation
      images it scores on (None: all).
    - ``rounds``: prune -> retrain iterations; the kept density of each layer falls geometrically to its final one.
    - ``regularization`` "l2" (weight decay ``reg_strength``) or "l1" (``reg_strength * sign(w)`` added to the
      gradient, no weight decay); ``retrain`` is the per-round recipe (its weight_decay is replaced by the above),
      ``final_epochs`` optionally gives the last round more epochs.
    - ``scale_dropout``: set Dropout rates to ``D_o * sqrt(C_r / C_o)`` before each retraining.
    - ``remove_dead``: physically remove dead neurons/filters at the end (``legr.engine.dead_units``).
    - ``layers``: the Linear/Conv layers to prune (None: all).
    - ``allocation``: how the sensitivity curves become per-layer fractions (``legr.methods.magnitude.pruning.allocate_fractions``).
    """

    target: float = 12.0
    qualities: Mapping[str, float] | None = None
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    sensitivity_samples: int | None = None
    rounds: int = 3
    regularization: str = "l2"
    reg_strength: float = 5e-4
    retrain: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        epochs=3, lr=0.01, milestones=(0.67,), gamma=0.1, augment=False))
    final_epochs: int | None = None
    scale_dropout: bool = True
    remove_dead: bool = True
    layers: tuple[str, ...] | None = None
    allocation: str = "cost"

    def __post_init__(self) -> None:
        problems = []
        if self.regularization not in ("l1", "l2"):
            problems.append(f"regularization must be 'l1' or 'l2', got {self.regularization!r}")
        if self.reg_strength < 0:
            problems.append(f"reg_strength must be >= 0, got {self.reg_strength}")
        if self.allocation not in ("cost", "tolerance"):
            problems.append(f"allocation must be 'cost' or 'tolerance', got {self.allocation!r}")
        if self.rounds < 1:
            problems.append(f"rounds must be >= 1, got {self.rounds}")
        if self.target < 1:
            problems.append(f"target must be >= 1, got {self.target}")
        if not self.fractions or not all(0 < f < 1 for f in self.fractions):
            problems.append(f"fractions must be in (0, 1), got {self.fractions}")
        if self.qualities is not None and any(q < 0 for q in self.qualities.values()):
            problems.append("qualities must be >= 0")
        if self.final_epochs is not None and self.final_epochs < 1:
            problems.append(f"final_epochs must be >= 1, got {self.final_epochs}")
        if problems:
            raise ConfigError("MagnitudeConfig: " + "; ".join(problems))
        object.__setattr__(self, "fractions", tuple(float(f) for f in self.fractions))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(self.layers))
        if self.qualities is not None:
            object.__setattr__(self, "qualities", dict(self.qualities))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["retrain"] = self.retrain.state()
        return json.loads(json.dumps(out))

    def round_finetune(self, r: int) -> FinetuneConfig:
        """The retraining recipe of round ``r`` (1-based)."""
        epochs = self.final_epochs if (r == self.rounds and self.final_epochs) else self.retrain.epochs
        wd = self.reg_strength if self.regularization == "l2" else 0.0
        return self.retrain.model_copy(update={"epochs": epochs, "weight_decay": wd, "seed": self.retrain.seed + r})


@dataclass
class MagnitudeResult:
    model: nn.Module  # final network: dead units removed (an fx.GraphModule) or the masked dense model
    masked: nn.Module  # the dense-shaped model with its pruned weights at zero
    rounds: list[dict[str, Any]]
    sensitivity: dict[str, SensitivityCurve] | None
    fractions: dict[str, float] | None  # per-layer final pruned fractions from the allocation
    dead: dict[str, Any] | None
    stds: dict[str, float]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def check_reachable(model: nn.Module, cfg: MagnitudeConfig) -> None:
    """Raise `BudgetError` when ``cfg.target`` exceeds what the sensitivity grid allows on ``model`` at best: every
    pruned layer at the largest of ``cfg.fractions``, biases and other parameters dense. Depends on the shapes only,
    so it runs before any training (explicit ``qualities`` skip the target)."""
    if cfg.qualities is not None:
        return
    total = count_params(model)
    removable = max(cfg.fractions) * sum(m.weight.numel() for m in prunable_layers(model, cfg.layers).values())
    best = total / (total - removable)
    if cfg.target > best:
        raise BudgetError(f"compression {cfg.target:g}x is beyond what the sensitivity grid allows on "
                          f"{type(model).__name__} (at most {best:.2f}x with every layer at its largest fraction "
                          f"{max(cfg.fractions):g}); lower the target or add larger fractions")


def _check_config(out: Path, cfg: MagnitudeConfig, extra: Mapping[str, Any]) -> None:
    want = {"magnitude": cfg.to_dict(), **json.loads(json.dumps(dict(extra)))}
    path = out / "config.json"
    if path.exists():
        have = _read_json(path)
        if have != want:
            diffs = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise ConfigError(f"{out} holds a run with another configuration (differs in {', '.join(diffs)}); "
                              "use another --out folder")
    else:
        _write_json(path, want)


def run_magnitude(model: nn.Module, input_size: Sequence[int], train: tuple[Tensor, Tensor],
                  val: tuple[Tensor, Tensor], mean: Sequence[float] | None, std: Sequence[float] | None,
                  cfg: MagnitudeConfig, out: str | Path, *, progress: bool = True,
                  log: Callable[[str], None] = lambda m: None, provenance: Mapping[str, Any] | None = None,
                  curves: Mapping[str, SensitivityCurve] | None = None) -> MagnitudeResult:
    """Compress the trained ``model`` in place (its pruned weights end at zero) and return the result.

    ``val`` (held out from the training data) drives the sensitivity analysis and the per-round logs; the test set
    is never used here. ``provenance`` (model name, seed, base checkpoint fingerprint...) is stored in config.json
    and must match on resume. ``curves``: a sensitivity analysis already done on this model (e.g. shared by
    several runs at different targets); it is stored as the run's sensitivity.json.
    """
    check_reachable(model, cfg)
    out = make_folder(out)
    _check_config(out, cfg, provenance or {})
    layers = list(prunable_layers(model, cfg.layers))
    stds = reference_stds(model, layers)
    original_p = {n: m.p for n, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)}

    fractions = None
    if cfg.qualities is None:
        if curves is None:
            curves = analyze_sensitivity(model, val, mean, std, cfg, out / "sensitivity.json", progress=progress,
                                         log=log)
        elif not (out / "sensitivity.json").exists():  # the run's shared analysis, kept beside the member
            _write_json(out / "sensitivity.json", {n: c.to_dict() for n, c in curves.items()})
        fractions, _ = allocate_fractions(curves, cfg.target, count_params(model), cfg.allocation)
        kept = {n: 100 * (1 - f) for n, f in fractions.items()}
        shown = list(kept.items()) if len(kept) <= 8 else [
            (f"{len(kept)} layers: min", min(kept.values())), ("median", sorted(kept.values())[len(kept) // 2]),
            ("max", max(kept.values()))]
        log(f"allocation ({cfg.allocation}) for {cfg.target:g}x: " + ", ".join(f"{n} {k:.1f}%" for n, k in shown)
            + " kept")
        schedule = schedule_fractions(fractions, cfg.rounds)
    else:
        unknown = sorted(set(cfg.qualities) - set(layers))
        if unknown:
            raise ConfigError(f"qualities name layers that are not pruned: {', '.join(unknown)}")
    masker = Masker(model, layers, l1=cfg.reg_strength if cfg.regularization == "l1" else 0.0)
    rounds_path = out / "rounds.json"
    rounds: list[dict[str, Any]] = _read_json(rounds_path) if rounds_path.exists() else []
    masker.attach()
    try:
        for r in range(1, cfg.rounds + 1):
            done = out / f"round{r}.safetensors"
            if done.exists() and len(rounds) >= r:
                _load_round(done, model, masker)
                continue
            rounds = rounds[:r - 1]
            if cfg.qualities is None:
                qualities = {n: quality_for_fraction(masker.layers[n].weight, schedule[r - 1][n], stds[n])
                             for n in layers}
            else:
                qualities = {n: cfg.qualities.get(n, 0.0) * r / cfg.rounds for n in layers}
            for n in layers:
                masker.prune_(n, qualities[n], stds[n])
            rates = adjust_dropout_(model, masker, original_p) if cfg.scale_dropout else {}
            pruned_top1 = evaluate(model, val[0], val[1], mean, std).top1
            ft = cfg.round_finetune(r)
            log(f"round {r}/{cfg.rounds}: {100 * _kept(masker):.2f}% of the weights kept, val top-1 before "
                f"retraining {100 * pruned_top1:.2f}%; retraining {ft.epochs} epochs")
            history = finetune(model, train[0], train[1], mean, std, ft, checkpoint=out / f"round{r}_ft.pt",
                               val=val, progress=progress)
            masker.apply_()
            rounds.append({"round": r, "qualities": qualities, "thresholds": {n: qualities[n] * stds[n] for n in layers},
                           "density": masker.density(), "kept_fraction": _kept(masker), "dropout": rates,
                           "val_top1_pruned": pruned_top1, "val_top1": history[-1].get("val_top1"),
                           "epochs": ft.epochs, "seconds": sum(h["seconds"] for h in history)})
            save_state_dict({**model.state_dict(), **{MASK_PREFIX + n: m.to(torch.uint8) for n, m in masker.masks.items()}},
                            done)
            _write_json(rounds_path, rounds)
            (out / f"round{r}_ft.pt").unlink(missing_ok=True)
    finally:
        masker.detach()
    if cfg.scale_dropout:
        adjust_dropout_(model, masker, original_p)
    final, dead = model, None
    if cfg.remove_dead:
        final, dead = remove_dead_units(model, input_size)
        log(f"dead units removed: {dead['removed'] and {k: len(v) for k, v in dead['removed'].items()} or 'none'}")
    plan = {"keep": dead["keep"] if dead else None, "input_size": list(input_size), **dict(provenance or {})}
    _write_json(out / "plan.json", plan)
    save_sparse(final, out / "model.sparse.safetensors")
    return MagnitudeResult(final, model, rounds, curves, fractions, dead, stds)


def _kept(masker: Masker) -> float:
    kept, total = masker.kept_connections()
    return kept / total


def _load_round(path: Path, model: nn.Module, masker: Masker) -> None:
    state = read_state_dict(path)
    masks = {k[len(MASK_PREFIX):]: v for k, v in state.items() if k.startswith(MASK_PREFIX)}
    load_state_dict(model, {k: v for k, v in state.items() if not k.startswith(MASK_PREFIX)}, source=str(path))
    masker.load(masks)


def analyze_sensitivity(model: nn.Module, val: tuple[Tensor, Tensor], mean: Sequence[float] | None,
                        std: Sequence[float] | None, cfg: MagnitudeConfig, path: Path, *, progress: bool = True,
                        log: Callable[[str], None] = lambda m: None) -> dict[str, SensitivityCurve]:
    """Each pruned layer's validation top-1 when it alone is pruned by each of ``cfg.fractions`` (on at most
    ``cfg.sensitivity_samples`` random ``val`` images), read from ``path`` when it exists, else computed and saved
    there."""
    if path.exists():
        raw = _read_json(path)
        return {n: SensitivityCurve(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
                for n, c in raw.items()}
    layers = list(prunable_layers(model, cfg.layers))
    x, y = val
    if cfg.sensitivity_samples is not None and cfg.sensitivity_samples < len(x):  # a random subset: datasets
        pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # may be sorted by class
        pick = pick[:cfg.sensitivity_samples].to(x.device)
        x, y = x[pick], y[pick.to(y.device)]
    log(f"sensitivity analysis: {len(layers)} layers x {len(cfg.fractions)} fractions")
    curves = sensitivity(model, lambda m: evaluate(m, x, y, mean, std).top1, cfg.fractions, layers,
                         reference_stds(model, layers), progress)
    _write_json(path, {n: c.to_dict() for n, c in curves.items()})
    return curves


def load_magnitude(run: str | Path, model: nn.Module) -> nn.Module:
    """Rebuild a run's final network from ``plan.json`` + ``model.sparse.safetensors``; ``model``: a fresh
    instance of the source architecture (e.g. ``build_model(name)``)."""
    from legr.engine.surgery import prune
    from legr.graph import analyze

    run = Path(run)
    plan = _read_json(run / "plan.json")
    state = load_sparse(run / "model.sparse.safetensors")
    if plan.get("keep") is not None:
        graph = analyze(model, plan["input_size"])
        model = prune(graph, graph.keep_vector(plan["keep"]))
    return load_state_dict(model, state, source=str(run / "model.sparse.safetensors")).eval()


def per_layer_remaining(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Non-zero weights of each layer as a fraction of that layer's weights (``layer_density``)."""
    return layer_density(model, names)


__all__ = ["MagnitudeConfig", "MagnitudeResult", "analyze_sensitivity", "check_reachable", "load_magnitude",
           "per_layer_remaining", "run_magnitude"]
