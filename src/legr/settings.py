"""One base class for every typed settings section (`legr.training.TrainConfig`, a method's own section, the run
config): unknown keys and wrong types are errors naming the key, values are checked once, when the section is built
(a YAML file is read), never later when the work that needs them starts.

Built in code (``TrainConfig(lr=0.05)``), a bad value raises a one-line `ConfigError` naming the class and key;
validated as part of a larger config (``RunConfig.model_validate(data)``), the error names the dotted key path
(`explain`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from legr.errors import ConfigError
from legr.registry import Registry


class Settings(BaseModel):
    """A frozen, strict (unknown keys refused) pydantic model whose construction errors are one-line `ConfigError`s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"{type(self).__name__}: {explain(exc)}") from None

    # only a direct construction comes here: validation inside a larger config (and ``model_validate``) keeps
    # pydantic's own errors, so that the caller names the full key path (pydantic skips an __init__ marked so)
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


def explain(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> str:
    """The first error of ``exc`` on one line, naming its key as a dotted path under ``prefix``."""
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if not prefix and not err["loc"]:
        return msg  # a whole-section check: its message names the keys
    where = ".".join(str(p) for p in (*prefix, *err["loc"]))
    if err["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    if err["type"] == "missing":
        return f"missing config key '{where}'"
    return f"config key '{where}': {msg}"


def registered(registry: Callable[[], Registry]) -> Any:
    """A config value type: a name registered in ``registry()`` (looked up when a config is read, so entries
    registered after this type is made count); an unknown name is a one-line error with close matches."""
    def check(name: str) -> str:
        if name not in registry():
            raise ValueError(registry().unknown(name))
        return name
    return Annotated[str, AfterValidator(check)]
