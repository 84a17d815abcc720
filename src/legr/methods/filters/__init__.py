"""Structured filter pruning (``method: filters``, `method.FilterPruning`): a criterion scores every filter
(`criteria`), an allocator cuts the scores at a budget (`allocate`: uniform, global, LCP, LeGR, AMC), surgery removes the
filters; the method's config keys are `config`. LeGR's learned ranking, the allocator's search, is `legr`; AMC's
per-target DDPG search is `amc`. GDP (``method: gdp``, `gdp`) prunes with the same criteria, solver and floors while the
network trains."""

from legr.methods.filters.method import FilterPruning
from legr.methods.filters.gdp import GlobalDynamicPruning  # noqa: E402  (registers the method gdp)

__all__ = ["FilterPruning", "GlobalDynamicPruning"]
