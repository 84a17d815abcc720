"""FBS (Gao et al., ICLR 2019) as the method ``fbs``: a dynamic family — one trained network, one operating point
(density) per budget, the budget counting *average MACs per image*.

``prepare`` gates every gateable convolution of the source network (`pairs`: residual streams stay dense) and trains
the gated network once, resumably (`fbs/train.pt`), on the run's ``finetune`` recipe with the paper's L1 penalty on
the saliencies and the density lowered stage by stage (`config`); it writes ``fbs/model.safetensors`` (the one copy
of the weights every member uses) and ``fbs/fbs.json`` (the gated and the dense convolutions, with reasons, the
stages and the training history). ``cut`` picks the member's density on the validation split — the largest
operating point whose average MACs per image, predictors included, meet the target from below (`macs`), each
measured with the batch norms' statistics re-estimated at that density (``fbs.bn_batches``) — and records it with the
test split's average and worst-case MACs (reported, they choose nothing) and the batch-1 path it runs in
``members/fbs-<target>/fbs.json``, its statistics in ``norms.safetensors`` (a few kB: the weights are the run's one
copy). ``finetune`` does nothing (the one training is the method's), ``load`` returns the network at the member's
density with its statistics.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legr.engine.cost import count_params
from legr.engine.latency import measure_interleaved
from legr.methods.base import register_method
from legr.methods.dynamic.base import DynamicMethod
from legr.methods.dynamic.config import FBS_CONFIG, stage_density
from legr.methods.dynamic.fbs import winners
from legr.methods.dynamic.macs import DynamicCost, Operating, active_channels, choose_density, recording
from legr.methods.dynamic.network import FbsNetwork
from legr.methods.dynamic.pairs import GatedPair, find_pairs, gateable
from legr.methods.folders import MemberFolder, MethodFolder
from legr.models import load_checkpoint, load_state_dict, read_state_dict, save_state_dict
from legr.paths import atomic_write_text
from legr.training import recalibrate_bn

FOLDER, MEMBER_FILE, NORMS_FILE = "fbs", "fbs.json", "norms.safetensors"


@register_method
class FeatureBoosting(DynamicMethod):
    name = "fbs"
    description = ("FBS (Gao et al. 2019): saliency predictors keep each input's top channels at run time; one "
                   "trained network, a density per budget in average MACs per image")
    config_keys = FBS_CONFIG
    entry_keys = ("fbs",)
    folder, operating, trains, least = FOLDER, "density", "its saliency predictors once", "one channel per gated layer"

    @classmethod
    def entry_label(cls, settings: dict[str, Any]) -> tuple[str, str]:
        return "saliency", cls.name

    @classmethod
    def member_files(cls, folder: MethodFolder, member: MemberFolder) -> list[Path]:
        """The member's density and figures, and the one trained network every member runs."""
        return [member.root / MEMBER_FILE, member.root / NORMS_FILE, folder.file(FOLDER) / "model.safetensors"]

    @cached_property
    def pairs(self) -> list[GatedPair]:
        return gateable(self.run.graph, self.run.cfg.model.name)

    @cached_property
    def dynamic_cost(self) -> DynamicCost:
        return DynamicCost(self.run.cost, self.pairs)

    def cheapest(self) -> float:
        """The worst case of the smallest density (one channel per gated layer)."""
        return self.dynamic_cost.worst(self.dynamic_cost.densities()[0])

    def describe(self, prepared: Any) -> str:
        return f"fbs: {len(self.pairs)} gated convolutions trained at densities {self._schedule()}"

    def _schedule(self) -> tuple[float, ...]:
        return self.section.stages(self.run.cfg.targets)

    def _network(self) -> FbsNetwork:
        """The gated network (predictors drawn with the run's seed) on the run's device."""
        self.run.base  # noqa: B018  (trains the source network when the run asks: the graph holds its weights)
        return FbsNetwork.build(self.run.graph, self.pairs, seed=self.run.cfg.seed).to(self.run.device)

    def prepare(self) -> FbsNetwork:
        run, folder = self.run, self.run.folder.file(FOLDER)
        weights = folder / "model.safetensors"
        net = self._network()
        if weights.exists():
            return load_checkpoint(net, weights).eval()
        folder.mkdir(parents=True, exist_ok=True)
        recipe, schedule = run.cfg.finetune, self._schedule()
        total = recipe.epochs * self._steps_per_epoch(recipe)
        run.log(f"FBS: {len(self.pairs)} gated convolutions; training {recipe.epochs} epochs at densities "
                f"{', '.join(f'{d:g}' for d in schedule)} ({self.section.schedule}; sparsity "
                f"{self.section.sparsity:g})")
        lam, sampled, seed = self.section.sparsity, self.section.schedule == "sampled", run.cfg.seed

        def stage(step: int) -> None:
            net.set_density(stage_density(schedule, step, total, sampled, seed))

        with run.timed("rank"):  # the method's one-time work (what `legr rank` does for it)
            history = run.train(net, recipe, folder / "train.pt", before_step=stage,
                                extra_loss=lambda model: lam * model.sparsity())
        save_state_dict(net.state_dict(), weights)
        _, dense = find_pairs(run.graph)
        record = {"format": "legr-fbs/1", "gated": [p.describe() for p in self.pairs], "dense": dense,
                  "densities": list(schedule), "schedule": self.section.schedule, "sparsity": lam,
                  "history": history}
        atomic_write_text(folder / "fbs.json", json.dumps(record, indent=1))
        (folder / "train.pt").unlink(missing_ok=True)
        return net.eval()

    def calibrate(self, net: FbsNetwork, density: float) -> FbsNetwork:
        """``net`` at ``density`` with its batch norms' statistics re-estimated there (``fbs.bn_batches`` fixed
        training batches, the same for every density: adaptive BN, as every filter member gets)."""
        net.set_density(density)
        if self.section.bn_batches:
            recalibrate_bn(net, self.run.bn_batches(self.section.bn_batches))
        return net

    def measure(self, net: FbsNetwork, density: float, split: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[Operating, np.ndarray]:
        """The operating point of ``net`` at ``density`` (as it stands: its statistics are not re-estimated) on
        ``split`` and every image's MACs."""
        net.set_density(density)
        with recording(net) as records:
            top1 = self.run.accuracy(net, split).top1
        per_image = self.dynamic_cost.images(active_channels(records))
        return Operating(density, float(per_image.mean()), float(per_image.max()), top1), per_image

    @cached_property
    def _points(self) -> dict[float, Operating]:
        """Validation operating points measured so far (shared by the members of one process)."""
        return {}

    def cut(self, prepared: FbsNetwork, target: float, member: MemberFolder) -> None:
        run = self.run
        path = member.root / MEMBER_FILE
        if path.exists():
            return
        n = self.section.search_images
        val = (run.data.val[0][:n], run.data.val[1][:n]) if n else run.data.val

        def on_val(density: float) -> Operating:
            if density not in self._points:
                self._points[density] = self.measure(self.calibrate(prepared, density), density, val)[0]
            return self._points[density]

        with run.timed("prune"):
            best, seen = choose_density(self.dynamic_cost.densities(), target * run.cost.base_macs, on_val)
            self.calibrate(prepared, best.density)
            test, _ = self.measure(prepared, best.density, run.data.test)  # reported, chooses nothing
            fast, timings = self._fast_path(prepared)
        base = run.cost.base_macs
        figures = {"method": self.name, "criterion": None, "target": target, "density": best.density,
                   "macs": test.macs, "macs_worst": test.macs_worst, "params": count_params(prepared),
                   "macs_val": best.macs, "macs_val_worst": best.macs_worst, "top1_val": best.top1,
                   "top1_before_ft": test.top1, "fast_path": fast, "b1_ms": timings,
                   "winners": {p.producer: winners(best.density, p.out_channels) for p in self.pairs}}
        member.root.mkdir(parents=True, exist_ok=True)
        save_state_dict(_norm_statistics(prepared), member.root / NORMS_FILE)
        record = {"format": "legr-fbs-member/1", "figures": figures, "weights": f"{FOLDER}/model.safetensors",
                  "validation": [o.to_dict() for o in seen], "source": run.source_info()}
        atomic_write_text(path, json.dumps(record, indent=1))
        run.log(f"{member.name}: density {best.density:.3f}, {best.macs / base:.1%} of the MACs on validation "
                f"(test: {test.macs / base:.1%} on average, {test.macs_worst / base:.1%} at most; "
                f"{len(seen)} densities measured), batch 1 on the {'fast' if fast else 'masked'} path")

    def _fast_path(self, net: FbsNetwork) -> tuple[bool, dict[str, float]]:
        """Whether batch-1 inference takes the fast path (``fast_path``: auto = the faster on this CPU, one
        thread, measured in interleaved rounds) and the timings (ms) it was decided on."""
        choice = self.section.fast_path
        if choice != "auto":
            return choice == "always", {}
        fast, masked = FbsNetwork(net.masked, net.pairs, True), FbsNetwork(net.masked, net.pairs, False)
        timed = measure_interleaved({"fast": fast, "masked": masked}, self.run.data.input_size, (1,), rounds=3,
                                    threads=1, warmup=3, repeats=10)
        ms = {name: per[1].median_ms for name, per in timed.items()}
        return ms["fast"] < ms["masked"], ms

    def finetune(self, member: MemberFolder) -> None:
        """Nothing: the gated network was trained once, in `prepare`."""
        atomic_write_text(member.finetuned, "[]")

    def load(self, member: MemberFolder) -> tuple[FbsNetwork, dict[str, Any]]:
        figures = json.loads((member.root / MEMBER_FILE).read_text())["figures"]
        net = load_checkpoint(FbsNetwork.build(self.run.graph, self.pairs).cpu(),
                              self.run.folder.file(FOLDER) / "model.safetensors")
        load_state_dict(net, read_state_dict(member.root / NORMS_FILE), strict=False, source=member.name)
        net.set_density(figures["density"]).fast_path = bool(figures["fast_path"])
        assert figures["params"] == count_params(net), "the member's parameter count is not its network's"
        return net.eval(), figures


def _norm_statistics(net: FbsNetwork) -> dict[str, torch.Tensor]:
    """The running statistics of every batch norm of ``net`` (what `FeatureBoosting.calibrate` changes)."""
    return {k: v for k, v in net.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
