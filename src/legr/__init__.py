"""legr: learned global filter ranking and friends, on one structural pruning engine."""

__version__ = "0.1.0"
