"""Stages compose (`legr.methods.stages`): ``method: [filters, stage, ...]`` applies each stage to the previous
step's member; members record the chain; a stage's budget units and its need for fine-tuning are honoured; an
unknown stage or one refusing the budget is a one-line error when the config is read."""

import copy
import json
import sys

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from legr.cli import app, main
from legr.engine.cost import counted_macs, price
from legr.engine.surgery import fold_batchnorm
from legr.methods import STAGES, Member, Stage, register_stage
from legr.methods.folders import MemberFolder
from legr.models import load_checkpoint
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline

RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
allocator: uniform
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency: false}
"""


class FoldBatchNorm(Stage):
    """A real stage: every batch norm folded into the convolution before it (outputs unchanged up to rounding;
    fewer parameters), the member's figures priced by the one cost entry point."""

    name = "fold-bn-test"
    description = "batch norms folded into the convolutions (test)"
    budgets = ("macs", "params")

    def apply(self, member: Member, folder: MemberFolder) -> Member:
        net = fold_batchnorm(copy.deepcopy(member.net))
        cost = price(net, self.run.data.input_size)
        return Member(net, member.plan, {**member.figures, "macs": cost.macs, "params": cost.params}, member.chain)


class FoldThenFinetune(FoldBatchNorm):
    name = "fold-bn-tuned-test"
    description = "batch norms folded, then the run's fine-tuning (test)"
    needs_finetune = True


@pytest.fixture
def stages():
    for stage in (FoldBatchNorm, FoldThenFinetune):
        register_stage(stage)
    yield FoldBatchNorm.name, FoldThenFinetune.name
    for stage in (FoldBatchNorm, FoldThenFinetune):
        STAGES.remove(stage.name)


def _config(**changes):
    import yaml

    return parse_config({**yaml.safe_load(RUN), **changes})


def _batchnorms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_each_stage_takes_the_previous_member_and_records_the_chain(stages, tmp_path):
    fold, tuned = stages
    cfg = _config(method=["filters", fold, tuned])
    assert cfg.chain == ("filters", fold, tuned) and "stage" in CliRunner().invoke(app, ["methods"]).output
    run = Pipeline(cfg, tmp_path / "run", progress=False)
    rows = {r["name"]: r for r in run.evaluate()}
    member = run.members()[0]
    cut, info = run.method.load(member)  # the method's own member, as fine-tuned
    x = torch.randn(16, *run.data.input_size, generator=torch.Generator().manual_seed(0))

    first = member.root / fold  # members/uniform-50/fold-bn-test: folded, not fine-tuned (it does not ask)
    record = json.loads((first / "member.json").read_text())
    assert record["chain"] == ["filters", fold] and record["figures"]["method"] == f"uniform+{fold}"
    folded = load_checkpoint(fold_batchnorm(copy.deepcopy(cut)), first / "model.safetensors")
    assert _batchnorms(cut) > 0 and _batchnorms(folded) == 0
    with torch.no_grad():
        assert torch.allclose(folded(x), cut(x), atol=1e-4)  # folding changes no output
    assert record["figures"]["params"] == sum(p.numel() for p in folded.parameters()) < info["params"]
    assert record["figures"]["macs"] == counted_macs(folded, torch.zeros(1, *run.data.input_size))
    assert record["figures"].get("finetune_epochs") == info.get("finetune_epochs")  # not fine-tuned again

    last = first / tuned  # ... then the second stage, which asks for the run's fine-tuning after it
    record = json.loads((last / "member.json").read_text())
    assert record["chain"] == ["filters", fold, tuned] and record["figures"]["finetune_epochs"] == 2
    trained = load_checkpoint(fold_batchnorm(copy.deepcopy(folded)), last / "model.safetensors")
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), folded.parameters()))
    row = rows["uniform-50"]
    assert row["method"] == f"uniform+{fold}+{tuned}" and row["path"] == f"members/uniform-50/{fold}/{tuned}"
    assert row["params"] == record["figures"]["params"] and row["finetune_epochs"] == 2

    again = Pipeline(cfg, tmp_path / "run", progress=False)  # every stage found done: read back, nothing redone
    stamp = (last / "member.json").stat().st_mtime_ns
    assert again.evaluate()[1]["top1"] == row["top1"] and (last / "member.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("chain,budget,message", [
    (["filters", "nosuch"], None, "config key 'method': unknown stage 'nosuch'"),
    (["fold-bn-test", "filters"], None, "config key 'method': a chain starts with a method, not the stage"),
    (["filters", "fold-bn-test"], "latency", "stage fold-bn-test keeps budgets in macs or params, not latency"),
    (["magnitude", "fold-bn-tuned-test"], None, None),  # magnitude's own unit (params) is one the stage keeps
])
def test_a_chain_is_checked_when_the_config_is_read(stages, tmp_path, monkeypatch, capsys, chain, budget, message):
    config = tmp_path / "chain.yaml"
    config.write_text(RUN + f"method: {json.dumps(chain)}\n" + (f"budget: {budget}\n" if budget else ""))
    if message is None:
        assert _config(method=chain).chain == tuple(chain)
        return
    monkeypatch.setattr(sys, "argv", ["legr", "prune", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_a_comparison_refuses_a_shared_chain_it_would_drop(stages):
    from legr.errors import ConfigError
    from legr.pipeline.compare_config import CompareConfig

    with pytest.raises(ConfigError, match="a comparison runs its entries' methods \\(an entry may name a chain\\), not a shared chain"):
        parse_config({"model": {"name": "digits_cnn"}, "method": ["filters", stages[0]],
                      "compare": {"methods": [{"name": "uniform-l1", "criterion": "l1", "allocator": "uniform"}]}},
                     schema=CompareConfig)
