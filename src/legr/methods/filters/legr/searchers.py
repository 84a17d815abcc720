"""The searchers LeGR's ``search.optimizer`` names: aging evolution (the paper's) and CMA-ES."""

from __future__ import annotations

from typing import Any, Callable

from legr.methods.filters.legr.cmaes import cma_es
from legr.methods.filters.legr.evolution import EvolutionConfig, aging_evolution
from legr.methods.filters.legr.search_loop import C, SearchResult, SearchSpace

SEARCHERS = {"evolution": aging_evolution, "cma": cma_es}


def run_search(space: SearchSpace[C], evaluate: Callable[[C, int], Any], cfg: EvolutionConfig,
               **kwargs: Any) -> SearchResult[C]:
    """Search ``space`` with the searcher ``cfg.optimizer`` names; the arguments are `aging_evolution`'s."""
    return SEARCHERS[cfg.optimizer](space, evaluate, cfg, **kwargs)
