"""Graph analysis: trace a model and find the channel groups that must be pruned together."""

from legr.graph.analysis import ChannelGraph, Group, analyze, trace

__all__ = ["ChannelGraph", "Group", "analyze", "trace"]
