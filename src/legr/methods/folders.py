"""The folders a method works in: its run folder (`MethodFolder`) and one folder per member (`MemberFolder`), below
the pipeline so that methods import them without climbing (the layout: `legr.pipeline.folder`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legr.engine.artifacts import PLAN_FILE, WEIGHTS_FILE


def member_name(prefix: str, target: float) -> str:
    """A family member's folder name, e.g. ``legr-47`` for the 47% MACs target of allocator legr."""
    return f"{prefix}-{round(target * 100)}"


@dataclass(frozen=True)
class MemberFolder:
    """One pruned network of a family."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    plan = property(lambda self: self.root / PLAN_FILE)
    weights = property(lambda self: self.root / WEIGHTS_FILE)
    finetuned = property(lambda self: self.root / "finetuned.json")  # written last: the fine-tune is complete
    finetune_checkpoint = property(lambda self: self.root / "finetune.pt")


@dataclass(frozen=True)
class MethodFolder:
    """The part of a run folder a method reads and writes (the pipeline's `legr.pipeline.folder.RunFolder` adds the
    results files)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    latency_model = property(lambda self: self.root / "latency_model.json")
    base_weights = property(lambda self: self.root / "base" / "model.safetensors")
    base_checkpoint = property(lambda self: self.root / "base" / "train.pt")
    timings = property(lambda self: self.root / "timings.json")
    ranking = property(lambda self: self.root / "ranking.json")
    sensitivity = property(lambda self: self.root / "sensitivity.json")
    search_state = property(lambda self: self.root / "search_state.json")
    search_log = property(lambda self: self.root / "search_log.jsonl")
    members = property(lambda self: self.root / "members")

    def file(self, name: str) -> Path:
        """A method's own artifact at the top of the run folder (e.g. ``first_channels.json``)."""
        return self.root / name

    def member(self, name: str) -> MemberFolder:
        return MemberFolder(self.members / name)

    def saved_members(self) -> list[MemberFolder]:
        """The members on disk, by name."""
        return [MemberFolder(p) for p in sorted(self.members.iterdir())] if self.members.is_dir() else []
