"""Run configuration: a validated schema for YAML files (unknown keys and wrong types are errors naming the key).

Every default is the LeGR paper's where the paper has one. The CLI is the only reader of YAML; library code takes
these typed objects or plain arguments.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, create_model, model_validator

from legr.errors import ConfigError
from legr.methods import METHODS, STAGES
from legr.registry import Registry
from legr.settings import Settings, explain, registered
from legr.training import TrainConfig


def _units() -> Registry:
    from legr.engine.cost import BUDGET_UNITS
    return BUDGET_UNITS




def _chain(value: Any) -> Any:
    """``method: filters``, or a chain ``[filters, stage, ...]``: a method, then stages registered in
    `legr.methods.stages.STAGES` (a chain of one name is that name)."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"must be a method or a list [method, stage, ...], got {value!r}")
    first, *stages = names
    if first not in METHODS:
        raise ValueError(f"a chain starts with a method, not the stage {first!r}" if first in STAGES
                         else METHODS.unknown(first))
    for i, name in enumerate(stages):
        if name not in STAGES:
            raise ValueError(f"a method goes first in a chain, not after: {name!r}" if name in METHODS
                             else STAGES.unknown(name))
        if STAGES[name].last and i < len(stages) - 1:
            raise ValueError(f"the stage {name!r} ends a chain (its member is not a network the next stage can "
                             f"take), not {stages[i + 1]!r} after it")
    return first if not stages else tuple(names)


def chain_of(method: str | tuple[str, ...]) -> tuple[str, ...]:
    """A validated ``method`` value as a chain: the method, then its stages."""
    return (method,) if isinstance(method, str) else tuple(method)


def check_stage_budgets(chain: tuple[str, ...], unit: str | None) -> None:
    """Every stage of ``chain`` keeps the budget unit its method cuts to (``unit``; None: the method's default)."""
    unit = unit or METHODS[chain[0]].budgets[0]
    for name in chain[1:]:
        if unit not in STAGES[name].budgets:
            raise ValueError(f"stage {name} keeps budgets in {' or '.join(STAGES[name].budgets)}, not {unit}: "
                             "remove it from the method chain or choose another budget")


MethodChain = Annotated[str | tuple[str, ...], BeforeValidator(_chain)]
UnitName = registered(_units)  # a budget unit registered in legr.engine.cost.BUDGET_UNITS


_Strict = Settings  # every section: unknown keys refused, values checked when the YAML is read


class ModelConfig(_Strict):
    name: str = Field(description="registered model name (see `legr models`); with a factory, 'factory:<factory>'")
    factory: str | None = Field(None, description="your own model instead of a name: 'package.module:callable' or "
                                                  "'path/to/file.py:callable' returning an nn.Module (legr imports "
                                                  "and runs that code; num_classes is passed when it takes it)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")
    weights: str | None = Field(None, description="checkpoint path, 'pretrained' for the registry's published "
                                                  "weights, or null to train from scratch (see base_training)")
    num_classes: int | None = Field(None, ge=1, description="default: the dataset's number of classes")

    @model_validator(mode="before")
    @classmethod
    def _factory_name(cls, data: Any) -> Any:
        """A factory names the model ``factory:<factory>`` (in logs and results); name and factory are exclusive."""
        if not isinstance(data, dict):
            return data
        factory = data.get("factory")
        if factory is None:
            if data.get("kwargs"):
                raise ValueError("kwargs are the factory's arguments: set model.factory too")
            return data
        if not isinstance(factory, str):
            raise ValueError(f"factory must be 'package.module:callable' or 'path/to/file.py:callable', got {factory!r}")
        label = f"factory:{factory}"
        if data.get("name") not in (None, label):
            raise ValueError("give the model a name or a factory, not both")
        return {**data, "name": label}


class DataConfig(_Strict):
    name: str = "digits"
    root: str | None = Field(None, description="dataset folder/archive; default under $LEGR_DATA")
    val_size: int = Field(5000, ge=0, description="images carved from the training data for search fitness")
    split_seed: int = 0
    options: dict[str, Any] = Field({}, description="the dataset's own options, e.g. imagefolder's image_size, "
                                                    "stream, workers")


class LatencyBudget(_Strict):
    """``budget: latency`` (these defaults) or ``budget: {unit: latency, batch_size: 64, threads: 1, ...}``: targets
    are fractions of the source network's latency as predicted by a latency model measured on this machine (per
    graph node, on ``probes`` random allocations; cached per device: `legr.engine.latency_model`)."""

    unit: Literal["latency"] = "latency"
    batch_size: int = Field(1, ge=1, description="the batch the latency is measured at")
    threads: int | None = Field(1, ge=1, description="CPU threads (null: torch's default)")
    device: Literal["cpu", "cuda"] = "cpu"
    probes: int = Field(16, ge=2, description="random allocations the model is fitted on (besides the full network)")
    rounds: int = Field(5, ge=1, description="interleaved timing rounds over the probes")
    repeats: int = Field(3, ge=1, description="timed forwards per probe and round")
    clock: Literal["wall", "cpu"] = Field("wall", description="cpu: thread CPU time (threads: 1), for busy machines")
    statistic: Literal["median", "min"] = Field("median", description="the modelled figure: median or fastest forward")
    fold_bn: bool = Field(True, description="time networks as deployed: batch norms folded into the convolutions")
    measure_members: bool = Field(True, description="cut each member against its measured latency (a few timed "
                                                    "cuts), not the prediction alone")

    def setting(self) -> Any:
        """The engine's `LatencySetting` for this budget."""
        from legr.engine.latency_model import LatencySetting

        return LatencySetting(batch_size=self.batch_size, threads=self.threads, device=self.device,
                              repeats=self.repeats, rounds=self.rounds, clock=self.clock, statistic=self.statistic,
                              fold_bn=self.fold_bn)


class EvalConfig(_Strict):
    batch_size: int = Field(512, ge=1)
    latency: bool = True
    latency_batch_sizes: tuple[int, ...] = (1, 64)
    latency_repeats: int = Field(20, ge=1)
    latency_warmup: int = Field(5, ge=0)
    latency_rounds: int = Field(3, ge=1, description="interleaved rounds over all networks; median of round medians")
    fold_bn: bool = Field(True, description="time the networks as deployed: batch norms folded into the convolutions "
                                            "(torch.fx fuse; accuracy is unchanged)")
    threads: int | None = Field(None, ge=1, description="CPU threads for latency; default: all (with a latency "
                                                        "budget: the budget's threads, and its batch size is timed)")


CORE_FIELDS: dict[str, tuple[Any, Any]] = {  # the run's own keys; each method adds its own (`Method.config_keys`)
    "model": (ModelConfig, ...),
    "data": (DataConfig, DataConfig()),
    "base_training": (TrainConfig, TrainConfig(epochs=0)),
    "method": (MethodChain, Field("filters", description="compression method (`legr methods`): filters (criterion + "
                                                        "allocator) or magnitude (Han et al.), or a chain [method, "
                                                        "stage, ...]: stages applied to each member in turn")),
    "budget": (UnitName | LatencyBudget | None, Field(
        None, description="what targets are fractions of: the source's MACs, parameters or latency (`latency` or a "
                          "latency section; null: the method's own unit: filters macs, magnitude params)")),
}
CORE_TAIL: dict[str, tuple[Any, Any]] = {
    "targets": (tuple[float, ...], Field((0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), min_length=1,
                                         description="fractions of the source's cost in the budget unit")),
    "finetune": (TrainConfig, TrainConfig()),
    "eval": (EvalConfig, EvalConfig()),
    "seed": (int, 0),
    "device": (str, Field("auto", description="'auto' (cuda when available), 'cpu' or 'cuda'")),
}


class _Run(Settings):
    """What every run config does (its keys: `CORE_FIELDS`, every registered method's, `CORE_TAIL`)."""

    @model_validator(mode="before")
    @classmethod
    def _latency_shorthand(cls, data: Any) -> Any:
        """``budget: latency`` is a latency section with its defaults; a section's own errors name its keys."""
        if not isinstance(data, dict):
            return data
        for section, field in cls.model_fields.items():  # a library class that takes a seed the run gives it
            if isinstance(data.get(section), dict) and "seed" in data[section] and _seeded(field.annotation):
                raise ValueError(f"unknown config key '{section}.seed' (the run's top-level 'seed' seeds it)")
        budget, units = data.get("budget"), _units()
        if isinstance(budget, str) and budget in units and units[budget].section:
            return {**data, "budget": {"unit": budget}}
        if isinstance(budget, dict):
            try:
                LatencyBudget.model_validate(budget)
            except ValidationError as exc:
                raise ValueError(explain(exc, ("budget",))) from None
        elif budget is not None and (not isinstance(budget, str) or budget not in units):
            *first, last = list(units)  # in registration order
            raise ValueError(f"config key 'budget': must be {', '.join(first)}, {last} or a latency section "
                             f"({{unit: latency, batch_size: .., threads: ..}}), got {budget!r}")
        return data

    def latency_timing(self) -> tuple[int | None, tuple[int, ...]]:
        """CPU threads and batch sizes the evaluation times networks at: eval's, and with a latency budget also the
        budget's batch size (with its threads unless eval.threads is set)."""
        threads, batches = self.eval.threads, tuple(self.eval.latency_batch_sizes)
        if isinstance(self.budget, LatencyBudget):
            threads = self.budget.threads if threads is None else threads
            batches = tuple(sorted({*batches, self.budget.batch_size}))
        return threads, batches

    @property
    def budget_unit(self) -> str | None:
        """The unit the targets count (``macs``, ``params``, ``latency``), None for the method's default."""
        return self.budget.unit if isinstance(self.budget, LatencyBudget) else self.budget

    def source_only(self, **update: Any) -> Any:
        """These settings, changed by ``update``, run by the default method under its `Method.source_settings` at
        one target: a run that does no more than its source network (training or adapting it), whose folder the
        method's other settings do not change."""
        method = type(self).model_fields["method"].default
        return self.model_copy(update={"method": method, **METHODS[method].source_settings,
                                       "targets": (min(self.targets),), **update})

    @property
    def chain(self) -> tuple[str, ...]:
        """The run's method and the stages after it (`legr.methods.stages`)."""
        return chain_of(self.method)

    @model_validator(mode="after")
    def _check_targets(self) -> "_Run":
        bad = [t for t in self.targets if not 0 < t <= 1]
        if bad:
            raise ValueError(f"targets must be fractions in (0, 1], got {bad}")
        if self.base_training.distill is not None:
            raise ValueError("config key 'base_training.distill': the source network is the teacher, it has none "
                             "(distill in finetune)")
        return self

    @model_validator(mode="after")
    def _check_stages(self) -> "_Run":
        """Every stage of the chain keeps the budget unit the method cuts to (its default or the budget key)."""
        check_stage_budgets(self.chain, self.budget_unit)
        return self

    @property
    def search_targets(self) -> tuple[float, ...]:
        """Budget fractions the search scores each candidate at (the first also places the uniform seed).

        Default: the family-aware fitness at the run's lowest, middle and highest targets, so that one ranking serves
        the whole family (benchmarks/results/compare_resnet20_cifar10jpeg: a single-target search at the lowest
        target ranks candidates whose pre-fine-tuning accuracies differ by sampling noise)."""
        if self.search.target is not None:
            return (self.search.target,)
        if self.search.targets is not None:
            return self.search.targets
        ordered = sorted(set(self.targets))
        return tuple(sorted({ordered[0], ordered[len(ordered) // 2], ordered[-1]}))


def _seeded(annotation: Any) -> bool:
    """A section type whose ``seed`` is the library's argument (left out of dumps), not a config key."""
    field = getattr(annotation, "model_fields", {}).get("seed")
    return field is not None and bool(field.exclude)


def _method_fields() -> dict[str, tuple[Any, Any]]:
    """The config keys every registered method and stage declares."""
    out: dict[str, tuple[Any, Any]] = {}
    for registry in (METHODS, STAGES):
        for name, step in registry.items():
            for key, spec in step.config_keys.items():
                if key in out or key in CORE_FIELDS or key in CORE_TAIL:
                    raise ValueError(f"{registry.kind} {name} declares the config key {key!r}, which is already taken")
                out[key] = spec
    return out


# built from the registered methods when this module is imported (every built-in method is registered by then)
RunConfig = create_model("RunConfig", __base__=_Run, __module__=__name__,
                         **CORE_FIELDS, **_method_fields(), **CORE_TAIL)  # type: ignore[call-overload]
RunConfig.__doc__ = """A run's configuration: the run's own keys and those of every registered method."""
_LATE: dict[tuple[type, tuple[str, ...]], type] = {}


def current_schema(schema: Any = None) -> Any:
    """``schema`` (default `RunConfig`) with the config keys of the methods registered since it was built (a method
    registered by a plugin or a test after this module was imported): a subclass, made once per set of keys."""
    schema = schema or RunConfig
    missing = {k: v for k, v in _method_fields().items() if k not in schema.model_fields}
    if not missing:
        return schema
    key = (schema, tuple(sorted(missing)))
    if key not in _LATE:
        _LATE[key] = create_model(schema.__name__, __base__=schema, __module__=schema.__module__,
                                  **missing)  # type: ignore[call-overload]
    return _LATE[key]


def parse_config(data: Any, overrides: dict[str, Any] | None = None, schema: Any = None) -> Any:
    """Validate a mapping (e.g. parsed YAML) against ``schema`` (`RunConfig` or `CompareConfig`), applying dotted
    ``overrides`` such as ``{"search.tau": 0}``."""
    if not isinstance(data, dict):
        raise ConfigError("config must be a mapping of keys to values")
    data = _with_overrides(data, overrides or {})
    schema = current_schema(schema)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(explain(exc)) from None


def _with_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key '{dotted}': '{key}' is not a section")
        node[leaf] = value
    return data
