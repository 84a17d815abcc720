"""GDP (Lin et al., IJCAI 2018): global & dynamic filter pruning as the method ``gdp`` (`method.GlobalDynamicPruning`):
masks over every prunable channel chosen from one global Taylor ranking under the budget and re-chosen while the
network trains, so that wrongly masked filters come back (`dynamic`, `masks`); its config section is
`config.GdpConfig` (``gdp:``)."""

from legr.methods.filters.gdp.config import GdpConfig
from legr.methods.filters.gdp.dynamic import DynamicPruning, decision_steps
from legr.methods.filters.gdp.masks import DynamicMasks
from legr.methods.filters.gdp.method import GlobalDynamicPruning

__all__ = ["DynamicMasks", "DynamicPruning", "GdpConfig", "GlobalDynamicPruning", "decision_steps"]
