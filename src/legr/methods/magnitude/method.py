"""Han et al. 2015 as a family method (``method: magnitude``): budgets are fractions of the source network's
parameters left non-zero.

``prepare`` runs the sensitivity analysis once (``sensitivity.json`` in the run folder; validation images only);
``cut`` compresses a copy of the source network to ``1 / target`` x in the configured prune -> retrain rounds
(`run_magnitude`, resumable per round), so the member is retrained as it is cut: the run's ``finetune`` epochs are
spread over the rounds (each round gets ``epochs // rounds``, the last one the rest), the same SGD budget as a filter
pruning member's fine-tune. The member folder holds `run_magnitude`'s files (``model.sparse.safetensors`` ...);
``finetuned.json`` marks it complete.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from torch import nn

from legr.engine.cost import price
from legr.errors import ConfigError
from legr.methods.base import Method, WorkUnits, register_method
from legr.methods.magnitude.config import MAGNITUDE_CONFIG
from legr.methods.folders import MemberFolder, MethodFolder
from legr.methods.magnitude.compress import (
    MagnitudeConfig,
    analyze_sensitivity,
    check_reachable,
    load_magnitude,
    run_magnitude,
)
from legr.methods.magnitude.pruning import SensitivityCurve
from legr.paths import atomic_write_text
from legr.training import FinetuneConfig


@register_method
class MagnitudePruning(Method):
    name = "magnitude"
    description = "unstructured: weight magnitude pruning with retraining rounds (Han et al. 2015); sparse storage"
    budgets = ("params",)
    config_keys = MAGNITUDE_CONFIG
    entry_keys = ("magnitude",)

    @classmethod
    def identity(cls, cfg: Any, held: dict[str, Any]) -> dict[str, Any]:
        """The budget as resolved; filter pruning's keys as folders written before methods owned their keys hold
        them (null), so that those folders still match."""
        legacy = dict.fromkeys(("criterion", "criterion_batches", "allocator", "bn_batches", "floors", "search"))
        return {**held, **legacy, "budget": held["budget"] or cls.budgets[0]}

    @classmethod
    def prepare_seconds(cls, cfg: Any, folder: MethodFolder, units: WorkUnits) -> float:
        """The sensitivity analysis: one validation pass per pruned fraction and layer."""
        if folder.sensitivity.exists():
            return 0.0
        layers = len(cfg.magnitude.layers or [m for m in units.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
        return len(cfg.magnitude.fractions) * layers * units.validation(1.0)

    def config(self, target: float = 1.0) -> MagnitudeConfig:
        """The library's `MagnitudeConfig` for a member keeping ``target`` of the parameters."""
        run = self.run
        m, ft = run.cfg.magnitude, run.cfg.finetune
        if ft.epochs < m.rounds:
            raise ConfigError(f"magnitude.rounds ({m.rounds}) needs finetune.epochs >= rounds (the fine-tune budget "
                              f"is spread over the rounds), got {ft.epochs}")
        per_round = ft.epochs // m.rounds
        retrain = FinetuneConfig(**{**ft.model_dump(), "epochs": per_round}, seed=run.cfg.seed)
        return MagnitudeConfig(
            target=1.0 / target, fractions=m.fractions, sensitivity_samples=m.sensitivity_samples, rounds=m.rounds,
            regularization=m.regularization, reg_strength=m.reg_strength, retrain=retrain,
            final_epochs=ft.epochs - per_round * (m.rounds - 1), scale_dropout=m.scale_dropout,
            remove_dead=m.remove_dead, layers=m.layers, allocation=m.allocation)

    def validate(self) -> None:
        if len(self.run.data.val[0]) == 0:
            raise ConfigError("the sensitivity analysis needs a validation split: set data.val_size > 0")
        # shapes only (the traced source network has the model's parameters): refused before any training
        check_reachable(self.run.graph.gm, self.config(min(self.run.cfg.targets)))

    def prepare(self) -> dict[str, SensitivityCurve]:
        run = self.run
        path = run.folder.sensitivity
        if path.exists():
            return analyze_sensitivity(run.base, run.data.val, run.data.mean, run.data.std, self.config(), path)
        with run.timed("rank"):
            return analyze_sensitivity(run.base, run.data.val, run.data.mean, run.data.std, self.config(), path,
                                       progress=run.progress, log=run.log)

    def describe(self, prepared: dict[str, SensitivityCurve]) -> str:
        return f"sensitivity analysis of {len(prepared)} layers x {len(self.run.cfg.magnitude.fractions)} fractions"

    def cut(self, prepared: dict[str, SensitivityCurve], target: float, member: MemberFolder) -> None:
        run = self.run
        if member.finetuned.exists():
            return
        model = copy.deepcopy(run.base)
        cfg = self.config(target)
        run.log(f"compressing {member.name}: {cfg.target:.2f}x fewer non-zero parameters in {cfg.rounds} rounds")
        with run.timed("prune"):
            result = run_magnitude(model, run.data.input_size, run.data.train, run.data.val, run.data.mean,
                                   run.data.std, cfg, member.root, progress=run.progress, log=run.log,
                                   provenance={"source": run.source_info()}, curves=prepared)
        atomic_write_text(member.finetuned, json.dumps(result.rounds, indent=1))

    def finetune(self, member: MemberFolder) -> None:
        """Nothing: the member was retrained in its rounds (`cut`)."""

    def load(self, member: MemberFolder) -> tuple[nn.Module, dict[str, Any]]:
        net = load_magnitude(member.root, copy.deepcopy(self.run.base).cpu())
        cost = price(net, self.run.data.input_size)  # sparse: torch's count (a keep vector prices channels only)
        rounds = json.loads(member.finetuned.read_text())
        target = json.loads((member.root / "config.json").read_text())["magnitude"]["target"]
        return net, {"method": self.name, "criterion": None, "target": round(1.0 / target, 6), "macs": cost.macs,
                     "sparse_macs": cost.nonzero_macs, "params": cost.nonzero_params, "dense_params": cost.params,
                     "finetune_epochs": sum(r["epochs"] for r in rounds)}
