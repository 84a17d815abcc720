"""AMC (He et al., "AMC: AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018) as the
allocator ``amc`` of filter pruning: a DDPG agent (`agent`) walks the prunable channel groups (`env`), choosing a
keep ratio for each under a resource-constrained action space, and learns from the fitness of the pruned networks
(`search`: one search per target, resumable). `allocator` registers it (`legr.methods.filters.allocate.ALLOCATORS`);
its config section is `config.AmcConfig` (``amc:``)."""

from legr.methods.filters.amc.agent import DDPGAgent
from legr.methods.filters.amc.allocator import AMC, AmcSearch, SearchedSolver
from legr.methods.filters.amc.config import AmcConfig
from legr.methods.filters.amc.env import PruningEnv
from legr.methods.filters.amc.search import TargetResult, reward_function, search_target

__all__ = ["AMC", "AmcConfig", "AmcSearch", "DDPGAgent", "PruningEnv", "SearchedSolver", "TargetResult",
           "reward_function", "search_target"]
