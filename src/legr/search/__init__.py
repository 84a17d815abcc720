"""Searchers over candidate spaces: aging evolution (generic) and LeGR's per-layer affine space."""

from legr.search.affine import AffineSpace, AffineTransform
from legr.search.evolution import EvolutionConfig, SearchResult, SearchSpace, aging_evolution, space_fingerprint

__all__ = ["AffineSpace", "AffineTransform", "EvolutionConfig", "SearchResult", "SearchSpace", "aging_evolution",
           "space_fingerprint"]
