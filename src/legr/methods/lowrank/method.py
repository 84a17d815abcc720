"""ENC (Kim, Khan & Kyung, CVPR 2019) as a family method (``method: lowrank``): every member is the source network
with its convolutions and Linears decomposed by truncated SVD (`decompose`), at per-layer ranks chosen for the
member's budget (MACs, or parameters with ``budget: params``) by ENC-Map, ENC-Model or ENC-Inf (`select`).

``prepare`` is the one analysis every member shares (learn once, cut many): the singular values of every
decomposable layer, ``lowrank_analysis.json`` in the run folder (resumed layer by layer when interrupted). ``cut``
selects the ranks for one target (ENC-Inf scores its candidates on the first ``inf_images`` *validation* images —
never the test split), decomposes a copy of the source network and writes ``model.safetensors`` and
``ranks.json`` (the ranks, the layers left whole and why, the figures, the candidates ENC-Inf scored); the run's
fine-tuning then trains the factored network as any member. A member's ``macs`` and ``params`` are computed
analytically from its ranks (`Analysis.cost`), which equals torch's count of the built network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from legr.engine.cost import price
from legr.errors import ConfigError
from legr.methods.base import Method, RunContext, register_method
from legr.methods.folders import MemberFolder
from legr.methods.lowrank.analysis import ANALYSIS_FILE, Analysis, analyze
from legr.methods.lowrank.artifacts import RANKS_FILE, load_lowrank, save_lowrank
from legr.methods.lowrank.config import LOWRANK_CONFIG, LowRankSection
from legr.methods.lowrank.decompose import apply_ranks
from legr.methods.lowrank.select import Selector

_DEFAULT = LowRankSection()


def _selection(settings: Mapping[str, Any]) -> str:
    section = settings.get("lowrank") or {}
    return section.get("selection") or _DEFAULT.selection


@register_method
class LowRank(Method):
    name = "lowrank"
    description = ("low rank: SVD decomposition of convolutions and Linears, per-layer ranks by ENC (Kim et al. "
                   "2019): map, model or inf")
    budgets = ("macs", "params")
    config_keys = LOWRANK_CONFIG
    entry_keys = ("lowrank",)

    @classmethod
    def member_prefix(cls, settings: Mapping[str, Any]) -> str:
        return f"enc-{_selection(settings)}"

    @classmethod
    def entry_label(cls, settings: Mapping[str, Any]) -> tuple[str, str]:
        return "svd", f"enc-{_selection(settings)}"

    @classmethod
    def parts(cls) -> list[tuple[str, str, str]]:
        return [("selection", "map", "ENC-Map: one PCA-energy level for every layer, the highest that fits"),
                ("selection", "model", "ENC-Model: the best product of layer energies under the budget"),
                ("selection", "inf", "ENC-Inf: ENC-Model's best candidates scored on validation images")]

    @property
    def section(self) -> LowRankSection:
        return self.run.cfg.lowrank

    def validate(self) -> None:
        """Before any training: ENC-Inf needs a validation split, and every target must lie above the network with
        every layer at its rank floor (shapes only: the traced source network)."""
        if self.section.selection == "inf" and len(self.run.data.val[0]) == 0:
            raise ConfigError("lowrank.selection inf scores candidates on validation images: set data.val_size > 0 "
                              "or choose selection map or model")
        gm, size = self.run.graph.gm, self.run.data.input_size
        base = price(gm, size)
        shapes = analyze(gm, size, {"macs": base.macs, "params": base.params}, svd=_flat)
        selector = Selector(shapes, self.section.rules(), self.budget)
        for target in self.run.cfg.targets:
            selector.check(target * shapes.base[self.budget])

    def _analyze(self, save: bool) -> Analysis:
        run = self.run
        figures = price(run.base, run.data.input_size)
        return analyze(run.base, run.data.input_size, {"macs": figures.macs, "params": figures.params},
                       run.folder.root if save else None, log=run.log)

    def prepare(self) -> Analysis:
        if (self.run.folder.root / ANALYSIS_FILE).exists():
            return self._analyze(save=True)
        with self.run.timed("rank"):
            return self._analyze(save=True)

    def describe(self, prepared: Analysis) -> str:
        return f"lowrank: {prepared.describe()}"

    def sized_network(self, fraction: float) -> nn.Module:
        """The source decomposed by ENC-Map at about ``fraction`` of its MACs (the analysis made in memory)."""
        analysis = self._analyze(save=False)
        selector = Selector(analysis, self.section.rules(), "macs")
        ranks = selector.ranks(selector.select_map(max(fraction * analysis.base["macs"], selector.lowest())))
        return apply_ranks(copy.deepcopy(self.run.base), ranks)

    def cut(self, prepared: Analysis, target: float, member: MemberFolder) -> None:
        run = self.run
        if (member.root / RANKS_FILE).exists() and member.weights.exists():
            return
        with run.timed("prune"):
            net, record, made = decompose(run, self.section, prepared, self.run.base, self.budget,
                                          target * prepared.base[self.budget])
        figures = {"method": self.name, "criterion": None, "target": target, **made,
                   "top1_before_ft": run.accuracy(net.to(run.device), run.data.test).top1}  # reported, chooses nothing
        net.cpu()
        run.log(f"{member.name}: {len(record['ranks'])} layers decomposed, "
                f"{len(record['whole']) - len(prepared.whole)} kept whole by choice, "
                f"{figures['macs'] / prepared.base['macs']:.1%} of the MACs")
        save_lowrank(member.root, net, {"format": "legr-lowrank/1", **record, "figures": figures,
                                        "source": run.source_info()})

    def load(self, member: MemberFolder) -> tuple[nn.Module, dict[str, Any]]:
        net, record = load_lowrank(member.root, copy.deepcopy(self.run.base).cpu())
        return net, dict(record["figures"])


def decompose(run: RunContext, section: LowRankSection, analysis: Analysis, net: nn.Module, unit: str,
              budget: float) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """``net`` (not changed; ``analysis`` is its analysis) decomposed at the ranks ``section``'s selection chooses
    for ``budget`` (in ``unit``, absolute), on the CPU in eval mode; its record for ``ranks.json`` (the ranks, the
    full ranks, the layers left whole and why, the rules, the candidates ENC-Inf scored); its figures (selection,
    macs, params, log metric)."""
    selector = Selector(analysis, section.rules(), unit)
    scored: list[dict[str, Any]] = []
    if section.selection == "map":
        idx = selector.select_map(budget)
    else:
        candidates = selector.model_candidates(budget, section.candidates if section.selection == "inf" else 1,
                                               section.bins)
        idx = candidates[0]
        if section.selection == "inf":
            idx, scored = _infer(run, section, selector, net, candidates)
    ranks = selector.ranks(idx)
    chosen_whole = {o.name: "selected whole: its cheapest rank costs the network metric more than the budget it "
                            "frees" for o, i in zip(selector.options, idx) if o.ranks[i] is None}
    figures = {"selection": section.selection, "macs": analysis.cost(ranks, "macs"),
               "params": analysis.cost(ranks, "params"), "log_metric": selector.score(idx)}
    record = {"ranks": ranks, "full_ranks": {x.name: x.full_rank for x in analysis.layers},
              "whole": {**dict(analysis.whole), **chosen_whole}, "rules": section.model_dump(), "candidates": scored}
    return apply_ranks(copy.deepcopy(net), ranks).cpu().eval(), record, figures


def _infer(run: RunContext, section: LowRankSection, selector: Selector, net: nn.Module,
           candidates: list[list[int]]) -> tuple[list[int], list[dict[str, Any]]]:
    """ENC-Inf: each candidate (ranks for ``net``) decomposed and scored on the first ``inf_images`` validation
    images; the best top-1 wins (ties: lower loss, then the higher network metric, i.e. the earlier candidate)."""
    n = section.inf_images
    split = (run.data.val[0][:n], run.data.val[1][:n])
    scored = []
    for idx in candidates:
        ranks = selector.ranks(idx)
        result = run.accuracy(apply_ranks(copy.deepcopy(net), ranks).to(run.device), split)
        scored.append({"ranks": ranks, "log_metric": selector.score(idx), "val_top1": result.top1,
                       "val_loss": result.loss})
    best = max(range(len(candidates)), key=lambda i: (scored[i]["val_top1"], -scored[i]["val_loss"], -i))
    return candidates[best], scored


def _flat(module: nn.Module) -> torch.Tensor:
    """Placeholder singular values (validation prices shapes only): all equal."""
    w = module.weight
    return torch.ones(min(w.shape[0], w[0].numel()), dtype=torch.float64)
