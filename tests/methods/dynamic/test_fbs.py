"""FBS (issue #16): which convolutions are gated; k-winners-take-all keeps exactly k per sample; the gate boosts and
suppresses as the paper's formula says (hand numbers); the fast path computes what the gated (masked) network does,
for random gates and with every channel active; the MACs counted per image equal torch's count of the fast path on
that image; a member's density meets its target from below on the validation images. The method contract (a tiny run,
its figures, a killed run resuming) is tests/methods/test_method_contract.py."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.errors import LegrError
from legr.graph import analyze
from legr.methods.dynamic import DynamicCost, FbsGate, FbsNetwork, find_pairs, kwta, winners
from legr.methods.dynamic.config import FbsConfig, stage_density
from legr.methods.dynamic.macs import Operating, active_channels, choose_density, recording
from legr.models import build_model, load_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet20(shared):
    model = build_model("cifar_resnet20")
    load_checkpoint(model, shared("weights", "akamaster-cifar10", "resnet20-12fca82f.th"))
    return model


def _plain():
    """conv+bias (no norm) -> ReLU -> conv -> BN -> ReLU -> max-pool -> conv -> ReLU -> BN -> conv -> head: a pair
    without a batch norm, chained pairs (a predictor reading gated channels), a pooling in a chain and a batch norm
    after the activation (not folded into its convolution on the fast path)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1, bias=False),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(),
                          nn.BatchNorm2d(5), nn.Conv2d(5, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        for bn in (model[3], model[8]):
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    return model


NETS = {"resnet20": (None, (3, 32, 32)), "vgg16_bn": ("cifar_vgg16_bn", (3, 32, 32)), "plain": (_plain, (3, 8, 8)),
        "digits": ("digits_cnn", (1, 8, 8))}


def _gated(name, shared, scale=0.3, seed=0):
    """(network with random gates: predictor weights N(0, scale), biases N(0.2, 0.5) so that some saliencies are 0,
    graph, pairs, input size)."""
    builder, size = NETS[name]
    model = _resnet20(shared) if name == "resnet20" else builder() if callable(builder) else build_model(builder)
    if name == "vgg16_bn":  # untrained: give the batch norms statistics of a forward so activations stay O(1)
        with torch.no_grad():
            model.train()(torch.randn(32, *size))
    graph = analyze(model.eval(), size)
    pairs, _ = find_pairs(graph)
    net = FbsNetwork.build(graph, pairs, seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in net.gates:
            gate.predictor.weight.normal_(0.0, scale, generator=g)
            gate.predictor.bias.normal_(0.2, 0.5, generator=g)
    return net, graph, pairs, size


# ------------------------------------------------------------------ which layers are gated


def test_resnet20_gates_each_blocks_first_convolution_and_keeps_the_residual_stream_dense(shared):
    graph = analyze(_resnet20(shared), (3, 32, 32))
    pairs, dense = find_pairs(graph)
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]
    assert [(p.producer, p.norm, p.consumer) for p in pairs] == [(f"{b}.conv1", f"{b}.bn1", f"{b}.conv2")
                                                                 for b in blocks]
    assert set(dense) == {"conv1"} | {f"{b}.conv2" for b in blocks}
    assert all("residual stream" in why for why in dense.values())


def test_chained_pairs_know_their_gated_input():
    graph = analyze(_plain(), (3, 8, 8))
    pairs, dense = find_pairs(graph)
    assert [(p.producer, p.norm, p.consumer, p.source) for p in pairs] == [("0", None, "2", None), ("2", "3", "6", 0),
                                                                           ("6", "8", "9", 1)]
    assert set(dense) == {"9"} and "AdaptiveAvgPool2d" in dense["9"]


def test_a_network_without_a_gateable_convolution_is_one_line_error():
    from legr.methods.dynamic.pairs import gateable

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(LegrError) as info:
        gateable(analyze(net, (3, 8, 8)), "tiny")
    assert "no gateable convolution" in str(info.value) and "'0'" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ the gate's semantics


def test_winners_and_kwta_keep_exactly_k_per_sample():
    assert [winners(d, 10) for d in (0.01, 0.1, 0.25, 0.3, 0.31, 0.7, 1.0)] == [1, 1, 3, 3, 4, 7, 10]
    g = torch.Generator().manual_seed(0)
    saliency = F.relu(torch.randn(64, 16, generator=g))  # many exact zeros: ties
    saliency[:4] = 0.0  # rows of nothing but ties
    for k in (1, 5, 16):
        kept = kwta(saliency, k)
        mask = torch.zeros_like(saliency).scatter_(1, saliency.topk(k, dim=1).indices, 1.0)
        assert (mask.sum(dim=1) == k).all()
        assert torch.equal(kept, saliency * mask)
        kth = saliency.topk(k, dim=1).values[:, -1:]
        assert ((kept > 0) <= (saliency >= kth)).all() and ((saliency > kth) <= (kept > 0) | (saliency == 0)).all()


def test_the_gate_boosts_and_suppresses_as_the_papers_formula_on_hand_numbers():
    gate = FbsGate(2, 3)
    with torch.no_grad():
        gate.predictor.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        gate.predictor.bias.copy_(torch.tensor([0.0, 0.5, -2.5]))
    x = torch.tensor([[[[1.0, -1.0]], [[2.0, -2.0]]]])  # s(x) = mean |x| per channel = [1, 2]
    y = torch.tensor([[[[1.0, -3.0]], [[2.0, 0.5]], [[4.0, 4.0]]]])
    # g = relu(W s + b) = [2, 2.5, 0.5]; density 2/3 keeps the 2 largest: pi = [2, 2.5, 0]
    gate.density = 2 / 3
    assert torch.allclose(gate(y, x), torch.tensor([[[[2.0, -6.0]], [[5.0, 1.25]], [[0.0, 0.0]]]]))
    gate.density = 1.0  # all kept: each channel times its saliency (0.5 damps, 2 and 2.5 boost)
    assert torch.allclose(gate(y, x), torch.tensor([[[[2.0, -6.0]], [[5.0, 1.25]], [[2.0, 2.0]]]]))
    gate.density = 0.2  # one winner
    assert torch.allclose(gate(y, x)[0, :, 0, 0], torch.tensor([0.0, 5.0, 0.0]))


def test_the_gated_network_is_the_papers_formula_and_its_source_at_unit_saliency():
    """relu(pi(x) * BN(conv1(x))) feeds conv2 (the gate after the batch norm, before the activation); with
    saliencies all 1 and density 1 the gated network is its source."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                          nn.Conv2d(6, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2), model[1].bias.uniform_(-1, 1)
    graph = analyze(model, (3, 5, 5))
    net = FbsNetwork.build(graph, find_pairs(graph)[0]).eval()
    gate = net.gates[0]
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        gate.predictor.weight.zero_(), gate.predictor.bias.fill_(1.0)
        assert torch.allclose(net(x), model(x), atol=1e-6)
        gate.predictor.weight.normal_(0, 0.5), gate.predictor.bias.normal_(0.3, 0.5)
        net.set_density(0.5)
        pi = kwta(F.relu(gate.predictor(x.abs().mean(dim=(2, 3)))), 3)
        expected = model[5](model[4](model[3](F.relu(pi[:, :, None, None] * model[1](model[0](x))))))
        assert torch.allclose(net(x), expected, atol=1e-6)


def test_only_the_active_channels_saliencies_learn_from_the_task_loss():
    """The winner-take-all is a choice, not differentiated: a channel no sample kept (or kept at saliency 0) sends
    its predictor no gradient; the kept ones do."""
    net, _, _, size = _gated("plain", None)
    net.train().set_density(0.5)
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(4))
    with recording(net) as records:
        F.cross_entropy(net(x), torch.tensor([0, 1, 2, 0])).backward()
    for gate, active in zip(net.gates, active_channels(records)):
        used = active.any(axis=0)
        assert (~used).any() and used.any()
        assert (gate.predictor.bias.grad[torch.from_numpy(~used)] == 0).all()
        assert (gate.predictor.bias.grad[torch.from_numpy(used)] != 0).all()


def test_the_sparsity_penalty_is_the_l1_norm_of_the_saliencies():
    net, _, _, size = _gated("plain", None)
    x = torch.randn(5, *size)
    net.train()(x)
    expected = sum(gate.saliency.abs().sum(dim=1).mean() for gate in net.gates)
    assert torch.allclose(net.sparsity(), expected) and all(gate.saliency is None for gate in net.gates)


def test_training_stages_lower_the_density_evenly_over_the_steps():
    assert FbsConfig().stages([0.3, 0.5, 0.7]) == (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
    assert FbsConfig(densities=(1.0, 0.5)).stages([0.3]) == (1.0, 0.5)
    assert [stage_density((1.0, 0.6, 0.2), s, 9) for s in range(9)] == [1.0] * 3 + [0.6] * 3 + [0.2] * 3
    drawn = [stage_density((1.0, 0.6, 0.2), s, 300, sampled=True, seed=3) for s in range(300)]
    assert drawn == [stage_density((1.0, 0.6, 0.2), s, 300, sampled=True, seed=3) for s in range(300)]  # resumable
    assert all(80 < drawn.count(d) < 120 for d in (1.0, 0.6, 0.2))  # uniform over the stages, all along
    assert drawn[:150].count(0.2) > 30 and drawn != [stage_density((1.0, 0.6, 0.2), s, 300, True, 4) for s in range(300)]


# ------------------------------------------------------------------ the fast path


@pytest.mark.parametrize("name", list(NETS))
def test_the_fast_path_equals_the_masked_path_for_random_gates(name, shared):
    net, _, _, size = _gated(name, shared)
    x = torch.randn(6, *size, generator=torch.Generator().manual_seed(1))
    for density in (1.0, 0.7, 0.4, 0.1):
        net.set_density(density)
        with torch.no_grad():
            masked = net.masked(x)
            fast = torch.cat([net(x[i:i + 1]) for i in range(len(x))])
        assert (fast - masked).abs().max() < 1e-4 * max(1.0, masked.abs().max().item()), (name, density)
        tracked = net(x[:1])  # with autograd on (the gathers then allocate: no reused workspace)
        assert (tracked.detach() - masked[:1]).abs().max() < 1e-4 * max(1.0, masked.abs().max().item())
        tracked.sum().backward()


def test_with_every_channel_active_the_fast_path_is_the_gated_network(shared):
    net, _, _, size = _gated("resnet20", shared)
    with torch.no_grad():
        for gate in net.gates:  # every saliency positive (s(x) >= 0), random, around 1
            gate.predictor.weight.abs_().mul_(0.03), gate.predictor.bias.uniform_(0.5, 1.5)
        x = torch.randn(3, *size)
        with recording(net) as records:
            masked = net.masked(x)
        assert all(bool(r[0].all()) for r in records)
        assert torch.allclose(torch.cat([net(x[i:i + 1]) for i in range(3)]), masked, rtol=1e-4, atol=1e-4)


def test_a_layer_without_an_active_channel_runs_on_the_fast_path():
    net, _, _, size = _gated("plain", None)
    with torch.no_grad():
        net.gates[0].predictor.bias.fill_(-100.0)  # every saliency 0: the first pair computes nothing
        x = torch.randn(2, *size)
        fast = torch.cat([net(x[i:i + 1]) for i in range(2)])
        assert torch.allclose(fast, net.masked(x), atol=1e-6)


def test_a_copy_runs_its_own_modules():
    net, _, _, size = _gated("plain", None)
    x = torch.randn(1, *size)
    with torch.no_grad():
        before = net(x)
        twin = copy.deepcopy(net)
        for p in twin.parameters():
            p.mul_(0.5)
        assert torch.equal(net(x), before) and not torch.allclose(twin(x), before)
        assert torch.allclose(twin(x), twin.masked(x), atol=1e-6)


# ------------------------------------------------------------------ MACs per image


@pytest.mark.parametrize("name", ["resnet20", "vgg16_bn", "plain"])
def test_macs_per_image_equal_torchs_count_of_the_fast_path(name, shared):
    net, graph, pairs, size = _gated(name, shared)
    cost = DynamicCost(CostModel(graph), pairs)
    x = torch.randn(4, *size, generator=torch.Generator().manual_seed(2))
    zero_winners = False
    for density in (1.0, 0.5, 0.2):
        net.set_density(density)
        with torch.no_grad(), recording(net) as records:
            net(x)
        active = active_channels(records)
        zero_winners |= any((a.sum(axis=1) < winners(density, a.shape[1])).any() for a in active)
        counted = [counted_macs(net, x[i:i + 1]) for i in range(len(x))]
        assert cost.images(active).tolist() == counted
        assert max(counted) <= cost.worst(density)
    assert zero_winners  # some winners had saliency 0 and were skipped: images cost differently


# ------------------------------------------------------------------ the operating point of a budget


def test_the_chosen_density_meets_the_budget_from_below_and_is_the_largest_that_does():
    net, graph, pairs, size = _gated("plain", None)
    cost = DynamicCost(CostModel(graph), pairs)
    x = torch.randn(20, *size, generator=torch.Generator().manual_seed(3))

    def measure(density):
        net.set_density(density)
        with torch.no_grad(), recording(net) as records:
            net(x)
        per = cost.images(active_channels(records))
        return Operating(density, per.mean(), per.max(), 0.0)

    candidates = cost.densities()
    for fraction in (0.35, 0.5, 0.8):
        budget = fraction * cost.cost.base_macs
        best, seen = choose_density(candidates, budget, measure)
        assert best.macs <= budget
        above = candidates.index(best.density) + 1
        assert above == len(candidates) or measure(candidates[above]).macs > budget
        assert best in seen and all(o.density in candidates for o in seen)


@pytest.fixture(scope="module")
def digits_run(tiny_dynamic_run):
    return tiny_dynamic_run("fbs", [0.35, 0.6], {"fast_path": "always", "sparsity": 1e-3}, steps=5)


def test_a_members_density_meets_its_target_on_validation_images(digits_run):
    pipeline, out = digits_run
    base = pipeline.cost.base_macs
    candidates = DynamicCost(pipeline.cost, pipeline.method.pairs).densities()
    for member, target in zip(pipeline.members(), (0.35, 0.6)):
        record = json.loads((member.root / "fbs.json").read_text())
        fig = record["figures"]
        assert fig["macs_val"] <= target * base and fig["macs_val"] <= fig["macs_val_worst"]
        measured = {o["density"]: o["macs"] for o in record["validation"]}
        above = candidates.index(fig["density"]) + 1
        assert measured[fig["density"]] == fig["macs_val"]
        assert candidates[above] not in measured or measured[candidates[above]] > target * base
        net, info = pipeline.method.load(member)
        assert net.density == fig["density"] and net.fast_path and info["macs"] <= info["macs_worst"]
        # the validation figures are the network's, measured again
        again, _ = pipeline.method.measure(net.to(pipeline.device), fig["density"], pipeline.data.val)
        assert again.macs == fig["macs_val"] and again.top1 == fig["top1_val"]
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert all({"macs_worst", "density"} <= set(rows[m.name]) for m in pipeline.members())


def test_each_member_keeps_batch_norm_statistics_estimated_at_its_density(digits_run):
    from legr.models import read_state_dict

    pipeline, _ = digits_run
    method = pipeline.method
    first, second = (read_state_dict(m.root / "norms.safetensors") for m in pipeline.members())
    assert first.keys() == second.keys() and any("running_var" in k for k in first)
    assert any(not torch.equal(first[k], second[k]) for k in first)  # two densities, two sets of statistics
    member = pipeline.members()[1]
    net, info = method.load(member)
    fresh = method.calibrate(method.prepare().cpu(), info["density"])
    held, expected = net.state_dict(), fresh.state_dict()
    assert all(torch.allclose(held[k].float(), expected[k].float()) for k in first)


def test_the_run_records_its_training_and_the_layers_it_left_dense(digits_run):
    _, out = digits_run
    record = json.loads((out / "fbs" / "fbs.json").read_text())
    assert [g["producer"] for g in record["gated"]] == ["features.0", "features.3", "features.7"]
    assert "features.10" in record["dense"] and record["densities"] == [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    assert len(record["history"]) == 2 and not (out / "fbs" / "train.pt").exists()
