"""The run-config section of the method ``lowrank`` (``lowrank: {...}``; `LowRank.config_keys`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from legr.methods.lowrank.select import RankRules
from legr.settings import Settings

Selection = Literal["map", "model", "inf"]


class LowRankSection(Settings):
    """SVD low-rank decomposition with ENC's rank selection (``method: lowrank``): every member's per-layer ranks
    for its budget, chosen from one analysis of the source network's singular values."""

    selection: Selection = Field("inf", description="ENC-Map (one metric level for every layer), ENC-Model (the best "
                                                    "network metric under the budget) or ENC-Inf (ENC-Model's best "
                                                    "candidates re-scored on validation images)")
    energy: Literal["squared", "linear"] = Field("squared", description="PCA energy of a rank: the kept share of "
                                                                        "the squared (or plain) singular values")
    safeguard: float = Field(0.1, ge=0.0, le=1.0, description="a layer keeps at least this fraction of its full rank")
    min_rank: int = Field(1, ge=1, description="... and at least this many")
    rank_step: int = Field(1, ge=1, description="ranks above the floor are multiples of it (e.g. 8: fast kernels)")
    candidates: int = Field(8, ge=1, description="ENC-Inf: ENC-Model's best configurations re-scored by inference")
    inf_images: int = Field(1000, ge=1, description="ENC-Inf: validation images each candidate is scored on")
    bins: int = Field(1000, ge=10, description="ENC-Model: cost bins of the search (leftover budget is filled "
                                               "greedily)")

    def rules(self) -> RankRules:
        return RankRules(self.safeguard, self.min_rank, self.rank_step, self.energy)


LOWRANK_CONFIG: dict[str, tuple[Any, Any]] = {"lowrank": (LowRankSection, LowRankSection())}
