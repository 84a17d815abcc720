"""How each module type / function / method moves channels. One registry per kind of graph node.

A handler takes ``(ctx, node)`` and returns the node's value: a `ChanMap` for a tensor with tracked channels, a list
of them for tuple outputs, or None. Any op that receives tracked channels and has no handler is refused with an
error naming it, so an unknown op can never produce a silently wrong model. Handlers live by kind: `layers`
(parametric layers, norms), `elementwise` (pass-through, pooling, binary ops), `shapes` (cat, pad, index, reshape,
permute), `reductions` (mean, sum, p-norms, addcmul); importing this package registers them all, and
`register_library_rules` those for loaded third-party libraries (timm).
"""

from legr.graph.handlers import elementwise, layers, reductions, shapes  # noqa: F401  (registers the handlers)
from legr.graph.handlers.base import (
                                      FUNCTION_HANDLERS,
                                      LEAF_MODULES,
                                      METHOD_HANDLERS,
                                      MODULE_HANDLERS,
                                      Handler,
                                      module_handler,
                                      register,
)
from legr.graph.handlers.layers import register_library_rules

__all__ = ["FUNCTION_HANDLERS", "LEAF_MODULES", "METHOD_HANDLERS", "MODULE_HANDLERS", "Handler", "module_handler",
           "register", "register_library_rules"]
