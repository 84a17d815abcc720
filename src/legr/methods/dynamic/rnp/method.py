"""RNP (Lin, Rao, Lu & Zhou, NeurIPS 2017) as the method ``rnp``: a dynamic family — one trained backbone and
agent, an operating point per budget, the budget counting *average MACs per image*, agent included.

``prepare`` gates every gateable convolution (FBS's `pairs`: residual streams stay dense), splits each one's output
channels into ``rnp.groups`` ordered groups and trains backbone and agent alternately (`training`), resumably, on
the run's ``finetune`` recipe; it writes ``rnp/model.safetensors`` (backbone and agent: the one copy every member
runs) and ``rnp/rnp.json``. ``cut`` chooses the member's operating point on the validation split: a penalty head of
the agent (its greedy policy) and a cap on the groups any layer computes (``cap = K``: the head's policy as trained;
the paper adjusts the trade-off by the penalty, which here needs no retraining: one head per penalty) — among every
(head, cap) whose average MACs per image meet the target, the best validation top-1 (ties: the more MACs). With
``cap = 1`` every layer computes one group, so any target above that cost (checked before training) is met. The test
split's average and worst-case MACs are reported, they choose nothing.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legr.data import normalize
from legr.engine.cost import count_params
from legr.methods.base import register_method
from legr.methods.dynamic.base import DynamicMethod
from legr.methods.dynamic.macs import DynamicCost, Operating
from legr.methods.dynamic.pairs import GatedPair, find_pairs, gateable
from legr.methods.dynamic.rnp.agent import group_ends
from legr.methods.dynamic.rnp.config import RNP_CONFIG
from legr.methods.dynamic.rnp.network import RnpNetwork
from legr.methods.dynamic.rnp.training import agent_phase, generator, round_epochs
from legr.methods.folders import MemberFolder, MethodFolder
from legr.models import load_checkpoint, load_state_dict, save_state_dict
from legr.paths import atomic_file, atomic_write_text

FOLDER, MEMBER_FILE = "rnp", "rnp.json"


@register_method
class RuntimePruning(DynamicMethod):
    name = "rnp"
    description = ("RNP (Lin et al. 2017): a Q-learning agent computes each input's first channel groups per layer; "
                   "one trained network and agent, a penalty head per budget in average MACs per image")
    config_keys = RNP_CONFIG
    entry_keys = ("rnp",)
    folder, trains, least = FOLDER, "its backbone and agent", "one group per gated layer"

    @classmethod
    def entry_label(cls, settings: dict[str, Any]) -> tuple[str, str]:
        return "agent", cls.name

    @classmethod
    def member_files(cls, folder: MethodFolder, member: MemberFolder) -> list[Path]:
        return [member.root / MEMBER_FILE, folder.file(FOLDER) / "model.safetensors"]

    @cached_property
    def pairs(self) -> list[GatedPair]:
        return gateable(self.run.graph, self.run.cfg.model.name, self.name)

    def _network(self, device: torch.device | None = None) -> RnpNetwork:
        self.run.base  # noqa: B018  (trains the source network when the run asks: the graph holds its weights)
        s = self.section
        net = RnpNetwork.build(self.run.graph, self.pairs, s.groups, len(s.penalties), s.hidden, self.run.cfg.seed)
        net.fast_path = s.fast_path
        return net.to(device or self.run.device)

    @cached_property
    def dynamic_cost(self) -> DynamicCost:
        agent = self._network(torch.device("cpu")).agent
        return DynamicCost(self.run.cost, self.pairs, lambda i, inputs: agent.macs(inputs))

    def cheapest(self) -> float:
        """The MACs of an image with one group per layer (the least any operating point costs)."""
        g = self.section.groups
        return self.dynamic_cost.image([np.arange(p.out_channels) < group_ends(p.out_channels, g)[0]
                                        for p in self.pairs])

    def describe(self, prepared: Any) -> str:
        return f"rnp: {len(self.pairs)} gated convolutions, {self.section.groups} groups each"

    def prepare(self) -> RnpNetwork:
        run, folder, s = self.run, self.run.folder.file(FOLDER), self.section
        weights = folder / "model.safetensors"
        net = self._network()
        if weights.exists():
            return load_checkpoint(net, weights).eval()
        folder.mkdir(parents=True, exist_ok=True)
        recipe, seed = run.cfg.finetune, run.cfg.seed
        epochs = round_epochs(recipe.epochs, s.rounds)
        steps = [e * self._steps_per_epoch(recipe) for e in epochs]
        total = sum(steps)
        run.log(f"RNP: {len(self.pairs)} gated convolutions, {s.groups} groups; {len(epochs)} rounds of backbone "
                f"epochs {epochs} and as many Q-learning steps; penalties {list(s.penalties)}")
        history: list[dict[str, Any]] = []
        with run.timed("rank"):  # the method's one-time work (what `legr rank` does for it)
            for r, (e, n) in enumerate(zip(epochs, steps)):
                done = sum(steps[:r])
                eps = s.epsilon_at(done, total)

                def explore(step: int, r: int = r, eps: float = eps) -> None:
                    net.set_policy("explore", epsilon=eps, generator=generator(seed, r, step, 2))

                rows = run.train(net, recipe.model_copy(update={"epochs": e}), folder / f"backbone{r}.pt",
                                 before_step=explore)
                agent_file = folder / f"agent{r}.pt"
                if agent_file.exists():
                    saved = torch.load(agent_file, map_location="cpu", weights_only=True)
                    load_state_dict(net.agent, saved["state"], source=agent_file.name)
                    q_rows = saved["history"]
                else:
                    q_rows = agent_phase(net, s, self._batches(seed, r, recipe.batch_size), n,
                                         lambda i, done=done: s.epsilon_at(done + i, total), seed * 1000 + r)
                    with atomic_file(agent_file) as fh:
                        torch.save({"state": net.agent.state_dict(), "history": q_rows}, fh)
                history.append({"round": r, "backbone": rows, "agent": q_rows})
        net.set_policy("full")
        save_state_dict(net.state_dict(), weights)
        _, dense = find_pairs(run.graph)
        record = {"format": "legr-rnp/1", "gated": [p.describe() for p in self.pairs], "dense": dense,
                  "settings": s.model_dump(mode="json"), "history": history}
        atomic_write_text(folder / "rnp.json", json.dumps(record, indent=1))
        for r in range(len(epochs)):
            for name in (f"backbone{r}.pt", f"agent{r}.pt"):
                (folder / name).unlink(missing_ok=True)
        return net.eval()

    def _batches(self, seed: int, r: int, size: int):
        """Training batches for the agent's steps (normalized, no augmentation), drawn as a function of (seed, round,
        step)."""
        x, y = self.run.data.train
        data, device = self.run.data, self.run.device

        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.randperm(len(y), generator=generator(seed, r, step, 3))[:size]
            return normalize(x[index], data.mean, data.std).to(device), y[index].to(device)

        return batch

    def measure(self, net: RnpNetwork, head: int, cap: int, split: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[Operating, np.ndarray]:
        """The operating point (head, cap) of ``net`` on ``split`` (its ``density`` field: the cap as a fraction of
        the groups) and every image's MACs."""
        net.set_policy("greedy", head=head, cap=cap)
        with net.recording() as trace:
            top1 = self.run.accuracy(net, split).top1
        per_image = self.dynamic_cost.images(net.active(trace))
        return Operating(cap / self.section.groups, float(per_image.mean()), float(per_image.max()), top1), per_image

    def cut(self, prepared: RnpNetwork, target: float, member: MemberFolder) -> None:
        run, s = self.run, self.section
        path = member.root / MEMBER_FILE
        if path.exists():
            return
        n = s.search_images
        val = (run.data.val[0][:n], run.data.val[1][:n]) if n else run.data.val
        budget = target * run.cost.base_macs
        with run.timed("prune"):
            seen = {(h, c): self._point(prepared, h, c, val) for h in range(len(s.penalties))
                    for c in range(1, s.groups + 1)}
            fits = [k for k, o in seen.items() if o.macs <= budget]
            head, cap = max(fits, key=lambda k: (seen[k].top1, seen[k].macs))
            test, _ = self.measure(prepared, head, cap, run.data.test)  # reported, chooses nothing
        best, base = seen[(head, cap)], run.cost.base_macs
        figures = {"method": self.name, "criterion": None, "target": target, "penalty": s.penalties[head],
                   "head": head, "cap": cap, "macs": test.macs, "macs_worst": test.macs_worst,
                   "params": count_params(prepared), "macs_val": best.macs, "macs_val_worst": best.macs_worst,
                   "top1_val": best.top1, "top1_before_ft": test.top1, "fast_path": s.fast_path}
        member.root.mkdir(parents=True, exist_ok=True)
        record = {"format": "legr-rnp-member/1", "figures": figures, "weights": f"{FOLDER}/model.safetensors",
                  "validation": [{"penalty": s.penalties[h], "cap": c, **o.to_dict()} for (h, c), o in seen.items()],
                  "source": run.source_info()}
        atomic_write_text(path, json.dumps(record, indent=1))
        run.log(f"{member.name}: penalty {s.penalties[head]:g}, cap {cap}: {best.macs / base:.1%} of the MACs on "
                f"validation (test: {test.macs / base:.1%} on average, {test.macs_worst / base:.1%} at most)")

    @cached_property
    def _points(self) -> dict[tuple[int, int], Operating]:
        return {}

    def _point(self, net: RnpNetwork, head: int, cap: int, val: tuple[torch.Tensor, torch.Tensor]) -> Operating:
        if (head, cap) not in self._points:
            self._points[(head, cap)] = self.measure(net, head, cap, val)[0]
        return self._points[(head, cap)]

    def finetune(self, member: MemberFolder) -> None:
        """Nothing: backbone and agent were trained once, in `prepare`."""
        atomic_write_text(member.finetuned, "[]")

    def load(self, member: MemberFolder) -> tuple[RnpNetwork, dict[str, Any]]:
        figures = json.loads((member.root / MEMBER_FILE).read_text())["figures"]
        net = load_checkpoint(self._network(torch.device("cpu")), self.run.folder.file(FOLDER) / "model.safetensors")
        net.set_policy("greedy", head=figures["head"], cap=figures["cap"])
        net.fast_path = bool(figures["fast_path"])
        assert figures["params"] == count_params(net), "the member's parameter count is not its network's"
        return net.eval(), figures
