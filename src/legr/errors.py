"""Error types. Every user-facing failure is a `LegrError`: the CLI prints its message on one line and exits 2."""


class LegrError(Exception):
    """Base class of errors caused by the user's input (bad path, bad config, unsupported model...)."""


class UnsupportedModelError(LegrError):
    """The model contains a module or op whose channel semantics legr cannot track (raised before anything is modified)."""


class CheckpointError(LegrError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class DatasetError(LegrError):
    """A dataset cannot be found, read or is malformed."""


class BudgetError(LegrError):
    """A FLOPs/params budget cannot be met (e.g. below the smallest reachable cost)."""


class ConfigError(LegrError):
    """A configuration key is unknown or has the wrong type/value."""
