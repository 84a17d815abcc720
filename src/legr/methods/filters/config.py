"""The run-config keys of the method ``filters`` (`legr.methods.filters.FilterPruning.config_keys`): which criterion,
which allocator, the layer floors, the LeGR search and AMC's (``amc``, read only with ``allocator: amc``). The run
config (`legr.pipeline.config.RunConfig`) is built from every registered method's keys; these are top-level keys
(``criterion: l2sq``, ``floors: {...}``) as they were before methods declared their own."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from legr.methods.filters.allocate import ALLOCATORS
from legr.methods.filters.amc.config import AmcConfig  # (registers the allocator amc)
from legr.methods.filters.criteria import CRITERIA
from legr.methods.filters.legr.search_config import SearchConfig
from legr.settings import Settings, registered

CriterionName = registered(lambda: CRITERIA)  # a name registered in legr.methods.filters.criteria
AllocatorName = registered(lambda: ALLOCATORS)  # a name registered in legr.methods.filters.allocate


class FloorsConfig(Settings):
    safeguard: float = Field(0.25, ge=0.0, le=1.0, description="each layer keeps at least this fraction (the LeGR "
                                                               "paper: 0.1; 0.25 measured better, issue 38)")
    min_channels: int = Field(2, ge=1, description="... and at least this many channels")
    round_to: int = Field(1, ge=1, description="keep widths that are multiples of this (8: widths that run fast)")


FILTERS_CONFIG: dict[str, tuple[Any, Any]] = {
    "criterion": (CriterionName, Field("l2sq", description="filter criterion (see `legr methods`)")),
    "criterion_batches": (int, Field(8, ge=1, description="training batches seen by data-dependent criteria "
                                                          "(taylor)")),
    "allocator": (AllocatorName, Field("legr", description="budget allocator: uniform, global, lcp, legr or amc "
                                                           "(`legr methods`)")),
    "bn_batches": (int, Field(20, ge=0, description="training batches re-estimating each pruned member's BN "
                                                    "statistics before it is saved and reported (0: off)")),
    "floors": (FloorsConfig, FloorsConfig()),
    "search": (SearchConfig, SearchConfig()),
    "amc": (AmcConfig, AmcConfig()),
}

__all__ = ["FILTERS_CONFIG", "AllocatorName", "AmcConfig", "CriterionName", "FloorsConfig", "SearchConfig"]
