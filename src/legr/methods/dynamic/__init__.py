"""Dynamic (input-dependent) channel pruning. FBS (Gao et al., ICLR 2019) as the method ``fbs``
(`method.FeatureBoosting`): which convolutions may be gated (`pairs`), the saliency predictors and k-winners-take-all
(`fbs`), the gated network (`network`), its batch-1 fast path that computes only the active channels (`fast`), exact
MACs per image and the density meeting a budget on average (`macs`); its config section is `config.FbsConfig`
(``fbs:``). RNP (Lin et al., NeurIPS 2017) as the method ``rnp`` (`rnp.RuntimePruning`: a Q-learning agent
chooses how many ordered channel groups each gated layer computes), on the same pairs, masking and fast path."""

from legr.methods.dynamic.config import FbsConfig
from legr.methods.dynamic.fbs import FbsGate, kwta, winners
from legr.methods.dynamic.macs import DynamicCost
from legr.methods.dynamic.method import FeatureBoosting
from legr.methods.dynamic.network import FbsNetwork
from legr.methods.dynamic.pairs import GatedPair, find_pairs
from legr.methods.dynamic.rnp import RnpNetwork, RuntimePruning

__all__ = ["DynamicCost", "FbsConfig", "FbsGate", "FbsNetwork", "FeatureBoosting", "GatedPair", "RnpNetwork",
           "RuntimePruning", "find_pairs", "kwta", "winners"]
