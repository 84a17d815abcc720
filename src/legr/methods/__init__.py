"""Compression methods: filter criteria, budget allocators (uniform, global, LCP, LeGR), LeGR's learned ranking
(`legr.methods.legr`) and Han et al.'s unstructured magnitude pruning (`legr.methods.magnitude`)."""
