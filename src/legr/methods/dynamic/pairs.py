"""Which convolutions FBS may gate, found from the engine's channel analysis (`legr.graph.analyze`).

A convolution A is *gateable* when skipping one of its output channels skips exactly one input channel of the next
convolution B and nothing else: A's output channels form a prunable channel group that A alone produces
(`Group.producers == (A,)`, e.g. the first convolution of a ResNet basic block, whose output feeds only the block's
second convolution), and the tensor reaches B through a chain of single-reader, channel-wise ops — at most one
batch norm over A's channels (eval mode: a per-channel affine), then activations that map zero to zero, pooling,
dropout. FBS's gate (`fbs.FbsGate`) multiplies the chain right after its batch norm (after A when it has none),
where the paper multiplies: every op after it keeps a suppressed channel at zero, so B reading it equals B skipping
it. A and B are plain dense `nn.Conv2d` modules called once.

Channels produced by several layers together (a residual stream: every block's second convolution and the
shortcut write it) stay dense, as do convolutions whose output reaches a Linear, a concatenation or anything else;
`find_pairs` returns each ungated convolution with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.errors import LegrError
from legr.graph import ChannelGraph

# ops that act on each channel alone and keep an all-zero channel at zero (what may follow the gate)
ZERO_SAFE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Identity,
                     nn.Dropout, nn.MaxPool2d, nn.AvgPool2d)
ZERO_SAFE_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.hardswish, F.gelu, F.dropout,
                       F.max_pool2d, F.avg_pool2d, torch.max_pool2d}
ZERO_SAFE_METHODS = {"relu", "relu_"}


@dataclass(frozen=True)
class GatedPair:
    """A gated convolution (``producer``) and the convolution reading its channels (``consumer``).

    ``classes``: the channel class (`ChannelGraph.classes`) of each of the producer's output channels, so that a
    per-image set of active channels is a keep vector of the cost model. ``gate_after``: the fx node the gate
    multiplies (the batch norm ``norm`` or the producer). ``source``: the index of the pair whose consumer this
    producer is (its input channels are gated too), else None."""

    producer: str
    producer_node: str
    norm: str | None
    norm_node: str | None
    consumer: str
    consumer_node: str
    in_channels: int
    out_channels: int
    classes: np.ndarray
    source: int | None = None

    @property
    def gate_after(self) -> str:
        return self.norm_node or self.producer_node

    def describe(self) -> dict:
        return {"producer": self.producer, "norm": self.norm, "consumer": self.consumer,
                "in_channels": self.in_channels, "out_channels": self.out_channels, "source": self.source}


def _dense_conv(module: nn.Module) -> bool:
    return type(module) is nn.Conv2d and module.groups == 1


def _zero_safe(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ZERO_SAFE_MODULES)
    if node.op == "call_function":
        return node.target in ZERO_SAFE_FUNCTIONS
    return node.op == "call_method" and node.target in ZERO_SAFE_METHODS


def _describe(gm: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module '{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    if node.op == "output":
        return "the network output"
    return f"'{getattr(node.target, '__name__', node.target)}' (node {node.name})"


def _chain(gm: fx.GraphModule, start: fx.Node, channels: int, calls: dict[str, int]
           ) -> tuple[fx.Node | None, fx.Node | None, str | None]:
    """From a producer's node: (its batch norm's node or None, the consumer's node, None) or (.., .., the reason
    the chain is not gateable)."""
    node, norm = start, None
    while True:
        users = list(node.users)
        if len(users) != 1:
            return None, None, f"its channels are read by {len(users)} ops (from node {node.name})"
        nxt = users[0]
        if nxt.args[:1] != (node,) or any(isinstance(a, fx.Node) for a in (*nxt.args[1:], *nxt.kwargs.values())):
            return None, None, f"its channels meet another tensor at {_describe(gm, nxt)}"
        module = gm.get_submodule(nxt.target) if nxt.op == "call_module" else None
        if module is not None and _dense_conv(module):
            if calls[nxt.target] != 1:
                return None, None, f"the convolution reading it ('{nxt.target}') is called {calls[nxt.target]} times"
            return norm, nxt, None
        if type(module) is nn.BatchNorm2d:
            if norm is not None:
                return None, None, f"two batch norms ('{norm.target}', '{nxt.target}') follow it"
            if module.num_features != channels or not module.track_running_stats:
                return None, None, f"batch norm '{nxt.target}' does not normalize its channels with running statistics"
            norm = nxt
        elif not _zero_safe(gm, nxt):
            return None, None, f"its channels reach {_describe(gm, nxt)}, not a convolution through channel-wise ops"
        node = nxt


def find_pairs(graph: ChannelGraph) -> tuple[list[GatedPair], dict[str, str]]:
    """The gateable convolutions of ``graph`` in graph order, and every other convolution with the reason it stays
    dense."""
    gm = graph.gm
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs: list[GatedPair] = []
    dense: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.Conv2d):
            continue
        name, conv = node.target, gm.get_submodule(node.target)
        reason = None
        if not _dense_conv(conv):
            reason = f"a grouped convolution (groups={conv.groups})"
        elif calls[name] != 1:
            reason = f"called {calls[name]} times"
        elif name not in graph.layers or graph.layers[name].producer_ids is None:
            reason = "the analysis tracks no output channels of it"
        else:
            group = graph.group_of(name)
            if not group.prunable:
                reason = f"its channels cannot be pruned: {group.reason}"
            elif group.producers != (name,):
                reason = (f"its channels are produced together with {len(group.producers) - 1} other layer(s) "
                          f"(e.g. '{next(p for p in group.producers if p != name)}': a residual stream)")
        norm = consumer = None
        if reason is None:
            norm, consumer, reason = _chain(gm, node, conv.out_channels, calls)
        if reason is not None:
            dense[name] = reason
            continue
        pairs.append(GatedPair(name, node.name, norm.target if norm else None, norm.name if norm else None,
                               consumer.target, consumer.name, conv.in_channels, conv.out_channels,
                               graph.classes(graph.layers[name].producer_ids)))
    by_consumer = {p.consumer: i for i, p in enumerate(pairs)}
    return [GatedPair(**{**p.__dict__, "source": by_consumer.get(p.producer)}) for p in pairs], dense


def gateable(graph: ChannelGraph, model: str, method: str = "fbs") -> list[GatedPair]:
    """`find_pairs`'s pairs, or a one-line `LegrError` naming why the first convolution is not gateable."""
    pairs, dense = find_pairs(graph)
    if not pairs:
        first = next(iter(dense.items()), None)
        why = f" (e.g. '{first[0]}': {first[1]})" if first else " (it has no convolution)"
        raise LegrError(f"{method}: {model} has no gateable convolution{why}; {method.upper()} gates a convolution "
                        "whose output channels only the next convolution reads")
    return pairs


__all__ = ["GatedPair", "find_pairs", "gateable"]
