"""RNP (issue #16, second half): with every group computed the network is its source; the batch-1 fast path computes
what the masked network does, for random actions and for the agent's own; the MACs counted per image, agent
included, equal torch's count of the fast path; rewards and TD targets on hand numbers; Q-learning on a tiny MDP
learns each penalty's better action; the schedule splits the recipe; a member meets its target on validation and
reloads as measured; bad config values are one-line errors. The method contract (a tiny run, its figures, a killed
run resuming) is tests/methods/test_method_contract.py."""

import json

import pytest
import torch
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.errors import ConfigError
from legr.graph import analyze
from legr.methods.dynamic import DynamicCost, find_pairs
from legr.methods.dynamic.rnp import RnpAgent, RnpNetwork, group_ends
from legr.methods.dynamic.rnp.qlearning import Episodes, q_update, rewards, td_loss
from legr.methods.dynamic.rnp.training import round_epochs
from legr.models import build_model
from legr.pipeline.config import parse_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain():
    """conv (no norm) -> ReLU -> conv -> BN -> ReLU -> max-pool -> conv -> ReLU -> BN -> conv -> head: a pair without
    a batch norm, chained pairs (the agent reading gated channels), a batch norm after the activation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, bias=False),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
                          nn.BatchNorm2d(5), nn.Conv2d(5, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        for bn in (model[3], model[8]):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    return model.eval(), (3, 8, 8)


def _digits():
    return build_model("digits_cnn").eval(), (1, 8, 8)


NETS = {"plain": _plain, "digits": _digits}


def _rnp(name, groups=4, heads=2, hidden=6, seed=0):
    model, size = NETS[name]()
    graph = analyze(model, size)
    pairs, _ = find_pairs(graph)
    net = RnpNetwork.build(graph, pairs, groups, heads, hidden, seed=seed).eval()
    with torch.no_grad():  # a random agent: its greedy actions differ from image to image
        for p in net.agent.parameters():
            p.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(seed + 1))
    return net, model, graph, pairs, size


def _random_actions(pairs, n, groups, seed=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, groups + 1, (n,), generator=g) for _ in pairs]


def test_groups_are_ordered_prefixes_of_the_channels():
    assert group_ends(16, 4) == [4, 8, 12, 16]
    assert group_ends(10, 4) == [3, 5, 8, 10]
    assert group_ends(3, 4) == [1, 2, 3, 3]


@pytest.mark.parametrize("name", sorted(NETS))
def test_with_every_group_computed_the_network_is_its_source(name):
    net, model, _, _, size = _rnp(name)
    x = torch.randn(5, *size, generator=torch.Generator().manual_seed(1))
    net.set_policy("full")
    with torch.no_grad():
        dense = model(x)
        assert torch.allclose(net(x), dense, atol=1e-5)
        assert torch.allclose(torch.cat([net(x[i:i + 1]) for i in range(5)]), dense, atol=1e-5)  # the fast path


@pytest.mark.parametrize("name", sorted(NETS))
def test_fewer_groups_change_the_output_and_zero_the_skipped_channels(name):
    net, model, _, pairs, size = _rnp(name)
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(1))
    net.set_policy("fixed", fixed=[torch.ones(4, dtype=torch.long)] * len(pairs))
    seen = []
    hook = net.gates[0].register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.no_grad():
        assert not torch.allclose(net.masked(x), model(x), atol=1e-3)
    hook.remove()
    first = group_ends(pairs[0].out_channels, 4)[0]
    assert seen[0][:, first:].abs().sum() == 0 and seen[0][:, :first].abs().sum() > 0


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_fast_path_equals_the_masked_path_for_random_actions(name):
    net, _, _, pairs, size = _rnp(name)
    x = torch.randn(6, *size, generator=torch.Generator().manual_seed(1))
    actions = _random_actions(pairs, 6, 4)
    with torch.no_grad():
        net.set_policy("fixed", fixed=actions)
        masked = net(x)
        fast = torch.cat([net.set_policy("fixed", fixed=[a[i:i + 1] for a in actions])(x[i:i + 1]) for i in range(6)])
        assert (masked - fast).abs().max() < 1e-4
        for head in (0, 1):  # the agent's own greedy actions (it reads the gated channels on the fast path)
            for cap in (None, 2):
                net.set_policy("greedy", head=head, cap=cap)
                masked = net(x)
                fast = torch.cat([net(x[i:i + 1]) for i in range(6)])
                assert (masked - fast).abs().max() < 1e-4


@pytest.mark.parametrize("name", sorted(NETS))
def test_macs_per_image_equal_torchs_count_of_the_fast_path(name):
    net, _, graph, pairs, size = _rnp(name)
    cost = DynamicCost(CostModel(graph), pairs, lambda i, inputs: net.agent.macs(inputs))
    x = torch.randn(8, *size, generator=torch.Generator().manual_seed(2))
    varied = False
    for head, cap in ((0, None), (1, None), (0, 2), (1, 1)):
        net.set_policy("greedy", head=head, cap=cap)
        with torch.no_grad(), net.recording() as trace:
            net(x)
        active = net.active(trace)
        per_image = cost.images(active)
        varied |= len(set(per_image.tolist())) > 1
        assert per_image.tolist() == [counted_macs(net, x[i:i + 1]) for i in range(len(x))]
        if cap == 1:  # one group per layer: the least an image costs, agent included
            assert all((a.sum(axis=1) == group_ends(a.shape[1], 4)[0]).all() for a in active)
    assert varied  # the random agent chose differently per image


def test_rewards_and_td_targets_on_hand_numbers():
    fractions = torch.tensor([[0.25, 1.0]])
    r = rewards(fractions, torch.tensor([2.0]), torch.tensor([0.1, 1.0]), alpha=0.5)
    assert torch.allclose(r, torch.tensor([[[-0.025, -0.25], [-0.1 - 1.0, -1.0 - 1.0]]]))
    q = torch.tensor([[[[1.0, 2.0]], [[3.0, 5.0]]]])  # 1 episode, 2 layers, 1 head, K = 2
    reward = torch.tensor([[[-1.0], [-2.0]]])
    # layer 1 took action 1: target -1 + 0.5 * max(3, 5) = 1.5 vs Q 1.0; layer 2 took action 2: target -2 vs Q 5.0
    expected = ((1.0 - 1.5) ** 2 + (5.0 + 2.0) ** 2) / 2
    assert td_loss(q, torch.tensor([[1, 2]]), reward, gamma=0.5).item() == pytest.approx(expected)


def test_q_learning_on_a_tiny_mdp_learns_each_penaltys_better_action():
    """Two layers, K = 2: the classification loss is 1 unless the last layer computes both groups (then 0); the
    first layer's action changes nothing. Penalty 0.01: computing both groups last is worth it; penalty 5: never."""
    torch.manual_seed(0)
    agent = RnpAgent([3, 3], groups=2, heads=2, hidden=8, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(agent.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    penalties = (0.01, 5.0)
    for _ in range(400):  # uniformly random behaviour: Q-learning is off-policy
        n = 64
        states = [torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g)]
        actions = torch.randint(1, 3, (n, 2), generator=g)
        loss = (actions[:, 1] == 1).float()
        q_update(agent, optimizer, Episodes(states, actions, actions.float() / 2, loss), penalties, 1.0, 1.0)
    with torch.no_grad():
        q = agent.q_values([torch.rand(32, 3, generator=g), torch.rand(32, 3, generator=g)])
    best = q.argmax(dim=3) + 1  # (episodes, layers, heads)
    assert (best[:, 1, 0] == 2).all() and (best[:, 1, 1] == 1).all()
    assert (best[:, 0, 1] == 1).all() and (best[:, 0, 0] == 1).all()
    # the values themselves: head 0 at the last layer, both groups: -0.01; one group: -0.005 - 1
    assert q[:, 1, 0, 1].mean().item() == pytest.approx(-0.01, abs=0.05)
    assert q[:, 1, 0, 0].mean().item() == pytest.approx(-1.005, abs=0.05)


def test_the_recipe_epochs_split_over_the_rounds():
    assert round_epochs(4, 2) == [2, 2] and round_epochs(5, 2) == [3, 2] and round_epochs(1, 3) == [1]


BASE = {"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits", "val_size": 200},
        "method": "rnp"}


@pytest.mark.parametrize("section", [{"groups": 1}, {"penalties": [0.1, -1.0]}, {"penalties": []},
                                     {"epsilon": [1.5, 0.1]}, {"no_such": 1}, {"hidden": 0}])
def test_bad_values_are_one_line_config_errors(section):
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "rnp": section})
    assert "rnp" in str(info.value) and "\n" not in str(info.value)


@pytest.fixture(scope="module")
def digits_run(tiny_dynamic_run):
    return tiny_dynamic_run("rnp", [0.6, 0.8], {"hidden": 8, "agent_batch": 32, "search_images": 100}, steps=4)


def test_a_member_meets_its_target_on_validation_and_reloads_as_measured(digits_run):
    pipeline, out = digits_run
    base = pipeline.cost.base_macs
    record = json.loads((out / "rnp" / "rnp.json").read_text())
    assert [len(r["agent"]) for r in record["history"]] == [4, 4]  # as many Q-learning steps as SGD steps
    assert not list((out / "rnp").glob("*.pt"))
    for member, target in zip(pipeline.members(), (0.6, 0.8)):
        rec = json.loads((member.root / "rnp.json").read_text())
        fig = rec["figures"]
        assert fig["macs_val"] <= target * base
        fitting = [o for o in rec["validation"] if o["macs"] <= target * base]
        assert fig["top1_val"] == max(o["top1"] for o in fitting)
        net, info = pipeline.method.load(member)
        again, _ = pipeline.method.measure(net.to(pipeline.device), fig["head"], fig["cap"],
                                           (pipeline.data.val[0][:100], pipeline.data.val[1][:100]))
        assert again.macs == fig["macs_val"] and again.top1 == fig["top1_val"]


def test_an_unreachable_target_is_refused_before_training(tmp_path):
    from legr.errors import LegrError
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({**BASE, "targets": [0.01], "finetune": {"epochs": 1}})
    with pytest.raises(LegrError) as info:
        Pipeline(cfg, tmp_path, progress=False, log=lambda m: None).method.validate()
    assert "one group per gated layer" in str(info.value) and "\n" not in str(info.value)


def test_a_backbone_phase_trains_the_backbone_and_leaves_the_agent_as_it_was():
    from legr.methods.dynamic.rnp.training import generator
    from legr.training import TrainConfig, finetune

    net, _, _, _, size = _rnp("digits")
    agent = {k: v.clone() for k, v in net.agent.state_dict().items()}
    backbone = {k: v.clone() for k, v in net.state_dict().items() if "rnp_agent" not in k}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (64, *size), generator=g, dtype=torch.uint8), torch.randint(0, 10, (64,), generator=g)
    seen = []

    def explore(step):
        net.set_policy("explore", epsilon=1.0, generator=generator(0, step))
        net.agent.policy.trace = seen

    finetune(net, x, y, [0.5], [0.25], TrainConfig(epochs=1, batch_size=16, augment=False, lr=0.1), progress=False,
             before_step=explore)
    assert all(torch.equal(v, net.agent.state_dict()[k]) for k, v in agent.items())
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in backbone.items() if v.is_floating_point())
    actions = torch.cat([a for _, _, a in seen])
    assert set(actions.tolist()) == {1, 2, 3, 4}  # epsilon 1: every action drawn


def test_a_copy_runs_its_own_agent():
    import copy

    net, _, _, _, size = _rnp("plain")
    net.set_policy("greedy", head=0)
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(4))
    twin = copy.deepcopy(net)
    assert all(g.agent is twin.agent for g in twin.gates) and twin.agent is not net.agent
    with torch.no_grad():
        before = net(x[:1])
        assert torch.equal(twin(x[:1]), before)
        for p in twin.agent.parameters():
            p.zero_()  # every Q-value equal: argmax picks one group everywhere in the copy only
        assert torch.equal(net(x[:1]), before) and not torch.allclose(twin(x[:1]), before)


@pytest.mark.parametrize("method", ["fbs", "rnp"])
@pytest.mark.parametrize("change, message", [({"data": {"name": "digits", "val_size": 0}}, "on validation images"),
                                             ({"finetune": {"epochs": 0}}, "needs finetune.epochs >= 1")])
def test_a_dynamic_method_refuses_a_run_without_validation_images_or_training(method, change, message, tmp_path):
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({**BASE, "method": method, "targets": [0.8], "finetune": {"epochs": 1}, **change})
    with pytest.raises(ConfigError) as info:
        Pipeline(cfg, tmp_path, progress=False, log=lambda m: None).method.validate()
    assert str(info.value).startswith(method) and message in str(info.value) and "\n" not in str(info.value)
