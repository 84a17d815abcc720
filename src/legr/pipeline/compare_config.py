"""The ``compare`` section of a comparison config: the methods run under equal budgets, their seeds and plots."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError, model_validator

from legr.methods.allocate import ALLOCATORS
from legr.pipeline.config import (
    AllocatorName,
    CriterionName,
    FloorsConfig,
    MagnitudeSection,
    MethodName,
    RunConfig,
    SearchConfig,
    UnitName,
    _Strict,
    current_schema,
)
from legr.settings import explain


class MethodConfig(_Strict):
    """One compared method: a criterion cut by an allocator (any pair is valid), or another registered method."""

    name: str = Field(description="label in tables and plots, e.g. legr-l2sq")
    method: MethodName = "filters"
    criterion: CriterionName = "l2sq"
    allocator: AllocatorName = "legr"
    search: dict[str, Any] = Field(default_factory=dict, description="this method's changes to the shared search "
                                                                     "section, e.g. {tau: 50}")
    magnitude: dict[str, Any] = Field(default_factory=dict, description="this method's changes to the shared "
                                                                        "magnitude section, e.g. {rounds: 2}")
    floors: dict[str, Any] = Field(default_factory=dict, description="this method's changes to the shared floors "
                                                                     "section, e.g. {safeguard: 0.25}")
    budget: UnitName | None = Field(None, description="this method's budget unit "
                                                                "(latency: the shared latency section's settings)")
    targets: tuple[float, ...] | None = Field(None, min_length=1, description="this method's targets (fractions "
                                                                              "in its budget unit)")

    @model_validator(mode="after")
    def _check(self) -> "MethodConfig":
        if "seed" in self.search:
            raise ValueError("unknown config key 'search.seed' (the comparison's seeds seed it)")
        bad = [t for t in self.targets or () if not 0 < t <= 1]
        if bad:
            raise ValueError(f"targets must be fractions in (0, 1], got {bad}")
        return self


class CompareSection(_Strict):
    methods: tuple[MethodConfig, ...] = Field(min_length=1)
    seeds: tuple[int, ...] = Field((0, 1), min_length=1, description="every method runs once per seed")
    width_target: float | None = Field(None, gt=0, le=1, description="target of the per-layer width plot; "
                                                                     "default: the middle target")
    pipeline_cost: str | None = Field(None, description="method whose search is also run once per target, "
                                                           "to time 'learn once' against 'search per target'")

    @model_validator(mode="after")
    def _check(self) -> "CompareSection":
        names = [m.name for m in self.methods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"method names must be unique, repeated: {dup}")
        if self.pipeline_cost is not None:
            if self.pipeline_cost not in names:
                raise ValueError(f"pipeline_cost names '{self.pipeline_cost}', which is not a method ({', '.join(names)})")
            chosen = self.methods[names.index(self.pipeline_cost)]
            if chosen.method != "filters" or ALLOCATORS[chosen.allocator].search is None:
                raise ValueError(f"pipeline_cost names '{self.pipeline_cost}', whose allocator searches nothing "
                                 "(use an lcp or legr method)")
        return self


class CompareConfig(RunConfig):
    """A run config (the settings every method shares) plus the ``compare`` section."""

    compare: CompareSection

    @model_validator(mode="after")
    def _check_search_overrides(self) -> "CompareConfig":
        for i, m in enumerate(self.compare.methods):
            for section, check in (("search", self.method_search), ("magnitude", self.method_magnitude),
                                   ("floors", self.method_floors)):
                try:
                    check(m)
                except ValidationError as exc:
                    raise ValueError(explain(exc, ("compare", "methods", i, section))) from None
        return self

    def method_search(self, method: MethodConfig) -> SearchConfig:
        """The search settings ``method`` runs with: the shared ones, changed by its ``search`` entries."""
        return SearchConfig.model_validate({**self.search.model_dump(), **method.search}) if method.search \
            else self.search

    def method_magnitude(self, method: MethodConfig) -> MagnitudeSection:
        """The magnitude settings ``method`` runs with: the shared ones, changed by its ``magnitude`` entries."""
        return MagnitudeSection.model_validate({**self.magnitude.model_dump(), **method.magnitude}) \
            if method.magnitude else self.magnitude

    def method_floors(self, method: MethodConfig) -> FloorsConfig:
        """The floors ``method`` runs with: the shared ones, changed by its ``floors`` entries."""
        return FloorsConfig.model_validate({**self.floors.model_dump(), **method.floors}) if method.floors \
            else self.floors

    def run_config(self) -> RunConfig:
        return current_schema(RunConfig).model_validate(self.model_dump(exclude={"compare"}))
