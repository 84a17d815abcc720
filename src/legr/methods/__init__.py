"""Compression methods behind one interface (`legr.methods.base.Method`, registered in ``METHODS``): structured filter
pruning (`filters`: filter criteria cut by budget allocators — uniform, global, LCP, LeGR's learned ranking in
`legr.methods.legr`) and Han et al.'s unstructured magnitude pruning (`legr.methods.magnitude`)."""

from legr.methods.base import METHODS, Method, RunContext, register_method
from legr.methods.filters import FilterPruning
from legr.methods.magnitude.method import MagnitudePruning

__all__ = ["METHODS", "FilterPruning", "MagnitudePruning", "Method", "RunContext", "register_method"]
