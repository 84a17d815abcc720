"""LeGR (Chin et al., CVPR 2020): learn one global filter ranking, cut it at any budget.

The core in reading order: a criterion scores every filter (`legr.methods.filters.criteria`); each layer's scores pass
through an affine transform ``alpha_l * score + kappa_l`` (`affine`); CMA-ES (`cmaes`, the default) or the paper's
aging evolution (`evolution`) searches the transforms (`searchers`; their shared resumable loop: `search_loop`),
scoring each candidate by its pruned network's fitness (the fitness recipe: adaptive BN + validation top-1, `fitness`; the scores at several
targets combined against the uniform allocation's, `family`); the best transform is the learned `Ranking`, whose
global cut (`legr.methods.filters.allocate`) gives a network for any MACs budget (`ranking`).
"""

from legr.methods.filters.legr.affine import AffineSpace, AffineTransform
from legr.methods.filters.legr.evolution import EvolutionConfig, aging_evolution
from legr.methods.filters.legr.search_loop import SearchResult, SearchSpace, space_fingerprint
from legr.methods.filters.legr.family import FamilyObjective
from legr.methods.filters.legr.searchers import SEARCHERS, run_search
from legr.methods.filters.legr.ranking import Ranking, learn_ranking, ranked_layers, uniform_transform

__all__ = ["AffineSpace", "AffineTransform", "EvolutionConfig", "FamilyObjective", "Ranking", "SearchResult", "SearchSpace",
           "SEARCHERS", "aging_evolution", "learn_ranking", "ranked_layers", "run_search", "space_fingerprint",
           "uniform_transform"]
