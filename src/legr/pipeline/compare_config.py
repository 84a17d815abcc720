"""The ``compare`` section of a comparison config: the methods run under equal budgets, their seeds and plots.

An entry of ``compare.methods`` names a registered method and may set the keys that method lets an entry set
(`Method.entry_keys`): a plain key (``criterion: l1``) replaces the shared value, a section (``search: {tau: 50}``)
changes the shared section. The entry schema is built from the METHODS registry, like the run config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from legr.methods import METHODS, STAGES
from legr.pipeline.config import (
    MethodChain,
    RunConfig,
    UnitName,
    _seeded,
    _Strict,
    chain_of,
    check_stage_budgets,
    current_schema,
)
from legr.settings import explain


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _entry_fields() -> tuple[dict[str, tuple[Any, Any]], tuple[str, ...]]:
    """The entry keys every registered method and stage lets an entry set, and which of them are sections."""
    fields: dict[str, tuple[Any, Any]] = {}
    sections = []
    for step in [*(m for _, m in METHODS.items()), *(s for _, s in STAGES.items())]:
        for key in step.entry_keys:
            annotation, default = step.config_keys[key]
            if _is_section(annotation):
                sections.append(key)
                fields[key] = (dict[str, Any], Field(default_factory=dict, description=f"this entry's changes to the "
                                                                                        f"shared {key} section"))
            else:
                fields[key] = (annotation, default)
    return fields, tuple(sections)


ENTRY_FIELDS, SECTIONS = _entry_fields()


class _Entry(_Strict):
    """One compared method: a registered method with its own settings (e.g. a criterion cut by an allocator), or a
    chain of it and stages (``method: [filters, int8]``)."""

    @property
    def chain(self) -> tuple[str, ...]:
        return chain_of(self.method)

    @model_validator(mode="after")
    def _check(self) -> "_Entry":
        for key in SECTIONS:  # a library class that takes a seed: the comparison's seeds give it
            if "seed" in getattr(self, key) and _seeded(RunConfig.model_fields[key].annotation):
                raise ValueError(f"unknown config key '{key}.seed' (the comparison's seeds seed it)")
        bad = [t for t in self.targets or () if not 0 < t <= 1]
        if bad:
            raise ValueError(f"targets must be fractions in (0, 1], got {bad}")
        return self


MethodConfig = create_model(
    "MethodConfig", __base__=_Entry, __module__=__name__,
    name=(str, Field(description="label in tables and plots, e.g. legr-l2sq")),
    method=(MethodChain, RunConfig.model_fields["method"].default),
    **ENTRY_FIELDS,
    budget=(UnitName | None, Field(None, description="this method's budget unit (latency: the shared latency "
                                                     "section's settings)")),
    targets=(tuple[float, ...] | None, Field(None, min_length=1, description="this method's targets (fractions in "
                                                                             "its budget unit)")),
)  # type: ignore[call-overload]


def entry_method(entry: Mapping[str, Any]) -> Any:
    """The method class of a compare entry as ``compare.json`` stores it (no ``method``: the default method; a
    chain: its first name)."""
    return METHODS[chain_of(entry.get("method", MethodConfig.model_fields["method"].default))[0]]


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
            if not METHODS[chosen.chain[0]].searches(chosen.model_dump()):
                raise ValueError(f"pipeline_cost names '{self.pipeline_cost}', whose allocator searches nothing "
                                 "(use an lcp or legr method)")
        return self


class CompareConfig(RunConfig):
    """A run config (the settings every method shares) plus the ``compare`` section."""

    compare: CompareSection

    @model_validator(mode="after")
    def _check_entry_sections(self) -> "CompareConfig":
        if len(self.chain) > 1:  # each entry names its method; a shared chain would be dropped without a word
            raise ValueError("config key 'method': a comparison runs its entries' methods (an entry may name a "
                             "chain), not a shared chain")
        for i, m in enumerate(self.compare.methods):
            unit = m.budget if m.budget is not None else self.budget_unit
            try:
                check_stage_budgets(m.chain, unit)
            except ValueError as exc:
                raise ValueError(f"compare.methods[{i}] ({m.name}): {exc}") from None
            for key in SECTIONS:
                try:
                    self.entry_section(m, key)
                except ValidationError as exc:
                    raise ValueError(explain(exc, ("compare", "methods", i, key))) from None
        return self

    def entry_section(self, entry: Any, key: str) -> Any:
        """The section ``key`` as ``entry`` runs with it: the shared one, changed by the entry's own changes."""
        shared, changes = getattr(self, key), getattr(entry, key)
        return type(shared).model_validate({**shared.model_dump(), **changes}) if changes else shared

    def entry_settings(self, entry: Any) -> dict[str, Any]:
        """Every entry key of ``entry`` as it runs: plain keys as the entry sets them, sections merged."""
        return {key: self.entry_section(entry, key) if key in SECTIONS else getattr(entry, key)
                for key in ENTRY_FIELDS}

    def run_config(self) -> RunConfig:
        return current_schema(RunConfig).model_validate(self.model_dump(exclude={"compare"}))
