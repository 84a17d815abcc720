"""Compression methods behind one interface (`legr.methods.base.Method`, registered in ``METHODS``), one folder each:
structured filter pruning (`legr.methods.filters`: filter criteria cut by budget allocators — uniform, global, LCP,
LeGR's learned ranking in `legr.methods.filters.legr`; GDP's dynamic masks, `legr.methods.filters.gdp`) and Han et al.'s unstructured magnitude pruning
(`legr.methods.magnitude`); SVD low-rank decomposition with ENC's rank selection (`legr.methods.lowrank`);
FBS's dynamic channel gating and RNP's runtime pruning agent, one trained network with an operating point per budget
(`legr.methods.dynamic`);
stages that follow a method in a chain (`legr.methods.stages`; int8 quantization:
`legr.methods.int8`; prune + decompose: `legr.methods.lowrank.stage`)."""

import sys

from legr.methods.base import METHODS, Method, RunContext, register_method
from legr.methods.dynamic import FeatureBoosting
from legr.methods.filters import FilterPruning, GlobalDynamicPruning, allocate, criteria, legr
from legr.methods.filters.legr import fitness, ranking
from legr.methods.int8 import Int8Stage
from legr.methods.lowrank.method import LowRank
from legr.methods.lowrank.stage import DecomposeStage
from legr.methods.magnitude.method import MagnitudePruning
from legr.methods.stages import STAGES, Member, Stage, register_stage

# the import paths the README documented before filter pruning became one package (#31) keep working
for _old, _module in {"allocate": allocate, "criteria": criteria, "legr": legr, "legr.fitness": fitness,
                      "legr.ranking": ranking}.items():
    sys.modules.setdefault(f"{__name__}.{_old}", _module)

__all__ = ["METHODS", "STAGES", "DecomposeStage", "FeatureBoosting", "FilterPruning", "GlobalDynamicPruning", "Int8Stage", "LowRank", "MagnitudePruning", "Member", "Method", "RunContext",
           "Stage", "register_method", "register_stage"]
