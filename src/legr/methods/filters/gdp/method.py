"""GDP (Lin et al., "Accelerating Convolutional Networks via Global & Dynamic Filter Pruning", IJCAI 2018) as the
method ``gdp``: one dynamic run per target. ``cut`` trains a copy of the source network for the first
``gdp.dynamic_epochs`` of the run's fine-tune recipe with global masks re-chosen ``gdp.updates`` times
(`dynamic.DynamicPruning`: GDP's Taylor discriminative function ranked across all layers, kept under the budget by
the filter allocators' solver and floors), then removes the masked channels physically (BN statistics re-estimated,
as every filter member); ``finetune`` trains the pruned network for the rest of the recipe. A GDP member thus takes
the same SGD steps, on the same learning-rate schedule, as every other method's member (plus ``updates x
scoring_batches`` forward/backward passes of scoring); its dynamic epochs run on the full-size network."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from legr.data import make_loader
from legr.engine.artifacts import load_pruned
from legr.engine.cost import count_params
from legr.engine.surgery import prune
from legr.errors import ConfigError
from legr.methods.base import Method, register_method
from legr.methods.filters.allocate import Floors, check_reachable
from legr.methods.filters.criteria import CriterionContext, taylor_saliency
from legr.methods.filters.gdp.config import GDP_CONFIG, GdpConfig
from legr.methods.filters.gdp.dynamic import DynamicPruning, decision_steps
from legr.methods.filters.member import save_member
from legr.methods.folders import MemberFolder
from legr.training import TrainConfig

UPDATES_FILE, DYNAMIC_CHECKPOINT = "gdp_updates.json", "gdp_dynamic.pt"


@register_method
class GlobalDynamicPruning(Method):
    name = "gdp"
    description = "GDP (Lin et al. 2018): global Taylor masks re-chosen while the network trains, then pruned"
    budgets = ("macs", "params")
    config_keys = GDP_CONFIG
    entry_keys = ("gdp",)
    channel_plans = True

    @classmethod
    def entry_label(cls, settings: Mapping[str, Any]) -> tuple[str, str]:
        return "taylor_abs", cls.name

    @classmethod
    def identity(cls, cfg: Any, held: dict[str, Any]) -> dict[str, Any]:
        """The filter method's floors and BN re-estimation shape a GDP member too."""
        return {**held, "floors": cfg.floors.model_dump(mode="json"), "bn_batches": cfg.bn_batches}

    @classmethod
    def member_training(cls, cfg: Any, target: float) -> list[tuple[float, TrainConfig]]:
        """Scoring (about one SGD step per scoring batch), the dynamic phase on the full-size network, then the
        rest of the recipe on the member."""
        recipe, gdp = cfg.finetune, cfg.gdp
        dynamic = min(gdp.dynamic(recipe.epochs), recipe.epochs)
        scoring = recipe.model_copy(update={"epochs": 1, "steps_per_epoch": gdp.updates * gdp.scoring_batches})
        rest = recipe.window(dynamic, recipe.epochs) if dynamic < recipe.epochs else recipe.model_copy(
            update={"epochs": 0})
        return [(1.0, scoring), (1.0, recipe.window(0, dynamic)), (target, rest)] if dynamic else [(target, rest)]

    @property
    def section(self) -> GdpConfig:
        return self.run.cfg.gdp

    @property
    def floors(self) -> Floors:
        f = self.run.cfg.floors
        return Floors(f.safeguard, f.min_channels, f.round_to)

    def validate(self) -> None:
        epochs = self.run.cfg.finetune.epochs
        if epochs < 1:
            raise ConfigError("gdp trains while it prunes: it needs finetune.epochs >= 1 (its dynamic phase is the "
                              "fine-tune's first epochs)")
        if self.section.dynamic(epochs) > epochs:
            raise ConfigError(f"gdp.dynamic_epochs is {self.section.dynamic_epochs} but the fine-tune has {epochs} "
                              "epochs: the dynamic phase is part of the fine-tune")
        check_reachable(self.run.graph, self.run.cost, self.floors, self.run.cfg.targets, self.budget)

    def prepare(self) -> None:
        """Nothing is shared between GDP's members: each is its own dynamic run."""

    def describe(self, prepared: Any) -> str:
        return "gdp: nothing shared (each member is one dynamic run)"

    def cut(self, prepared: Any, target: float, member: MemberFolder) -> None:
        """The dynamic phase for ``target`` (resumed from ``gdp_dynamic.pt``), then the masked channels removed."""
        run, cfg = self.run, self.run.cfg
        if member.plan.exists():
            return
        member.root.mkdir(parents=True, exist_ok=True)
        _, (_, dynamic), _ = self.member_training(cfg, target)
        run.base  # noqa: B018  (trains the source network when the run asks: the graph's modules then hold its weights)
        net = copy.deepcopy(run.graph.gm).to(run.device)
        steps = decision_steps(dynamic.epochs * self._steps_per_epoch(dynamic), self.section.updates)
        hook = DynamicPruning(net, run.graph, run.cost, self.floors, self.budget, target * run.cost.base(self.budget),
                              self._scorer(), steps, member.root / UPDATES_FILE, log=run.log)
        run.log(f"GDP at {target:.0%}: {dynamic.epochs} dynamic epochs, {len(steps)} mask decisions (steps "
                f"{', '.join(map(str, steps))}) on {self.section.scoring_batches} scoring batches each")
        with run.timed("finetune"):  # the dynamic phase is the first part of the member's fine-tuning budget
            history = run.train(net, dynamic, member.root / DYNAMIC_CHECKPOINT, before_step=hook)
        trained, keep = hook.finish()
        source = copy.copy(run.graph)
        source.gm = trained.cpu().eval()
        with run.timed("prune"):
            pruned = prune(source, keep)
        decisions = [{k: v for k, v in r.items() if k != "keep"} for r in hook.records]
        info = {"method": self.name, "criterion": "taylor_abs", "target": target,
                "dynamic_epochs": dynamic.epochs, "finetune_epochs": cfg.finetune.epochs - dynamic.epochs,
                "gdp": {"decisions": decisions, "dynamic_history": history}}
        save_member(run, member, pruned, keep, info, bn_batches=cfg.bn_batches, how=" after its dynamic phase")
        (member.root / DYNAMIC_CHECKPOINT).unlink(missing_ok=True)

    def _scorer(self):
        """GDP's discriminative function (``taylor_abs``) on ``scoring_batches`` training batches, a fresh seeded draw
        per decision (augmented as the fine-tune's; never validation or test images). The batch norms normalize
        with batch statistics, as the network trains: a masked channel's running statistics decay towards zero while
        it is masked, and in eval mode its rescaled output would score it high at every decision (measured on the
        digits: a third of the masked channels swapped at every decision and the training loss tripled)."""
        run, cfg = self.run, self.run.cfg
        x, y = run.data.train

        def score(net: nn.Module, decision: int) -> dict[str, Any]:
            def batches():
                loader = make_loader(x, y, cfg.finetune.batch_size, run.data.mean, run.data.std, shuffle=True,
                                     augment=cfg.finetune.augment, seed=cfg.seed * 1_000_003 + decision,
                                     device=run.device)
                return itertools.islice(loader, self.section.scoring_batches)

            return taylor_saliency(run.graph, net, CriterionContext(seed=cfg.seed, batches=batches), "taylor_abs",
                                   torch.abs, batch_norms=True)

        return score

    def load(self, member: MemberFolder) -> tuple[nn.Module, dict[str, Any]]:
        net, plan = load_pruned(member.root, self.run.base)
        assert int(plan.info["params"]) == count_params(net), "cost model and network disagree on the parameter count"
        return net, plan.info
