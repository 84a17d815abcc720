"""RNP (Runtime Neural Pruning; Lin, Rao, Lu & Zhou, NeurIPS 2017) as the method ``rnp``: the agent
(`agent`: pooled feature map -> encoder -> GRU -> Q-values per penalty head), the gated network and its fast path
(`network`), Q-learning (`qlearning`), the alternating training schedule (`training`), the method (`method`) and its
config section ``rnp:`` (`config`)."""

from legr.methods.dynamic.rnp.agent import RnpAgent, group_ends
from legr.methods.dynamic.rnp.config import RnpConfig
from legr.methods.dynamic.rnp.method import RuntimePruning
from legr.methods.dynamic.rnp.network import RnpNetwork

__all__ = ["RnpAgent", "RnpConfig", "RnpNetwork", "RuntimePruning", "group_ends"]
