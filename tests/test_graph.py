"""NetworkAnalysis and GroupPruner: coupled-channel groups, predicted layer shapes, L2 pruning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from adaptation.netadapt.graph import (GroupPruner, NetworkAnalysis, UnsupportedNetwork,
                                       pruned_copy, rebuild_pruned)
from adaptation.netadapt.models import build_model, example_input
from devices.measure.tracing import trace_layers

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# (arch, num_classes, in_channels, width, resolution): every one small enough to trace in < 1 s.
ARCHS = {
    "mobilenet_v1": ("mobilenet_v1", 10, 1, 0.5, 28),
    "plain_cnn": ("plain_cnn", 10, 1, 0.5, 16),
    "mobilenet_v2": ("mobilenet_v2", 10, 3, 0.5, 32),
    "mobilenet_v3_small": ("mobilenet_v3_small", 10, 3, 1.0, 32),
    "resnet18": ("resnet18", 10, 3, 1.0, 32),
}


def _build(key: str, seed: int = 0):
    arch, classes, in_channels, width, resolution = ARCHS[key]
    torch.manual_seed(seed)
    model = build_model(arch, classes, in_channels, width, resolution).eval()
    return model, example_input(in_channels, resolution)


def _randomise_batchnorm(model: nn.Module, x: torch.Tensor, seed: int = 1) -> None:
    """Random BN affine parameters and running statistics of real activations (eval mode after),
    so every channel carries signal to the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration batch
        batch = torch.randn((8, *x.shape[1:]), generator=generator)
        model.train()
        model(batch)
        model.eval()


def _output_layer_name(model: nn.Module) -> str:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]


def _half(channels: int) -> int:
    return max(8, int(round(channels / 2 / 8)) * 8)


@pytest.fixture(scope="module")
def analyses():
    """Each architecture with its analysis (built once for the module)."""
    result = {}
    for key in ARCHS:
        model, x = _build(key)
        result[key] = (model, x, NetworkAnalysis(model, x))
    return result


# ---------------------------------------------------------------- groups


@pytest.mark.parametrize("key", list(ARCHS))
def test_it_never_groups_the_classifier_output_channels(analyses, key):
    model, _, analysis = analyses[key]
    output = _output_layer_name(model)
    assert analysis.groups, "every architecture has prunable groups"
    assert all(output not in g.out_layers and g.name != output for g in analysis.groups)
    # The classifier still follows the last group through its input channels.
    assert any(output in g.in_layers for g in analysis.groups)


@pytest.mark.parametrize("key", list(ARCHS))
def test_it_describes_the_original_network_exactly(analyses, key):
    model, x, analysis = analyses[key]
    modules = dict(model.named_modules())
    for group in analysis.groups:
        root = modules[group.name]
        assert group.channels == (root.out_channels if isinstance(root, nn.Conv2d) else root.out_features)
        assert group.name in group.out_layers
        for name in group.out_layers:
            layer = modules[name]
            assert (layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features) == group.channels
    traced = [t.signature for t in trace_layers(model, x)]
    assert analysis.signatures(analysis.original_config()) == traced


def test_it_groups_a_resnet_residual_stage_into_one_group(analyses):
    _, _, analysis = analyses["resnet18"]
    by_out = {name: g for g in analysis.groups for name in g.out_layers}
    stage2 = by_out["layer2.0.conv2"]
    # Both blocks' last convs and the shortcut's projection write the same (summed) channels.
    assert {"layer2.0.conv2", "layer2.1.conv2", "layer2.0.downsample.0"} <= set(stage2.out_layers)
    assert stage2.channels == 128
    stage1 = by_out["layer1.0.conv2"]
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= set(stage1.out_layers)
    assert len(stage1.out_layers) >= 3
    # Inner block convs are groups of their own.
    assert by_out["layer2.0.conv1"].out_layers == ("layer2.0.conv1",)


@pytest.mark.parametrize("key, depthwise, pointwise", [
    ("mobilenet_v1", "features.2.0.0", "features.1.1.0"),
    ("mobilenet_v1", "features.13.0.0", "features.12.1.0"),
    ("mobilenet_v2", "features.2.conv.1.0", "features.2.conv.0.0"),
])
def test_it_couples_a_depthwise_conv_with_the_pointwise_conv_feeding_it(analyses, key, depthwise,
                                                                        pointwise):
    model, _, analysis = analyses[key]
    modules = dict(model.named_modules())
    assert modules[depthwise].groups == modules[depthwise].in_channels > 1
    (group,) = [g for g in analysis.groups if depthwise in g.out_layers]
    assert pointwise in group.out_layers
    assert group.channels == modules[pointwise].out_channels == modules[depthwise].in_channels


def test_every_mobilenet_v1_depthwise_conv_shares_its_producers_group(analyses):
    model, _, analysis = analyses["mobilenet_v1"]
    modules = dict(model.named_modules())
    depthwise = [n for n, m in modules.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13
    for name in depthwise:
        (group,) = [g for g in analysis.groups if name in g.out_layers]
        assert len(group.out_layers) == 2  # the depthwise conv and its producer
        assert group.channels == modules[name].in_channels


# ---------------------------------------------------------------- predicted shapes


@pytest.mark.parametrize("key", list(ARCHS))
def test_it_predicts_signatures_macs_and_params_of_a_pruned_network(analyses, key):
    model, x, analysis = analyses[key]
    config = {g.name: _half(g.channels) for g in analysis.groups}
    assert config != analysis.original_config()
    pruned = pruned_copy(model, x, config)
    traced = [t.signature for t in trace_layers(pruned, x)]
    assert analysis.signatures(config) == traced
    assert analysis.macs(config) == sum(s.macs() for s in traced)
    assert analysis.params(config) == sum(p.numel() for p in pruned.parameters())
    assert analysis.macs(config) < analysis.macs(analysis.original_config())
    assert GroupPruner(pruned, x).channels() == config


def test_it_keeps_unnamed_groups_at_their_original_width(analyses):
    model, x, analysis = analyses["plain_cnn"]
    group = analysis.groups[2]
    pruned = pruned_copy(model, x, {group.name: 8})
    assert analysis.signatures({group.name: 8}) == [t.signature for t in trace_layers(pruned, x)]


def test_it_predicts_a_linear_layer_fed_by_a_flattened_feature_map():
    class FlattenNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 16, 3, padding=1)
            self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 10)

        def forward(self, x):
            return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))

    torch.manual_seed(0)
    model, x = FlattenNet().eval(), torch.randn(1, 1, 8, 8)
    analysis = NetworkAnalysis(model, x)
    pruned = pruned_copy(model, x, {"c2": 8})
    assert pruned.fc.in_features == 8 * 16
    assert analysis.signatures(analysis.original_config()) == [
        t.signature for t in trace_layers(model, x)]
    assert analysis.signatures({"c2": 8}) == [t.signature for t in trace_layers(pruned, x)]


# ---------------------------------------------------------------- L2 selection


def _hand_l2(model: nn.Module, group) -> torch.Tensor:
    """Σ over the group's conv/linear weight slices of squared L2 norms, per channel."""
    modules = dict(model.named_modules())
    score = torch.zeros(group.channels)
    for name in group.out_layers:  # the producing filters: rows of the weight
        score += modules[name].weight.detach().pow(2).flatten(1).sum(1)
    for name in group.in_layers:  # the consumers: input columns of the weight
        score += modules[name].weight.detach().pow(2).transpose(0, 1).flatten(1).sum(1)
    return score


@pytest.mark.parametrize("index", [0, 3, 6])  # first group, a middle one, the one feeding the classifier
def test_it_keeps_the_channels_with_the_largest_group_l2_norm(analyses, index):
    model, x, analysis = analyses["plain_cnn"]
    group = analysis.groups[index]
    pruner = GroupPruner(copy.deepcopy(model), x)
    score = _hand_l2(model, group)
    assert torch.allclose(pruner.importance(group.name), score, rtol=1e-5)
    for keep in (8, group.channels // 2 + 3, group.channels - 1):
        expected = sorted(torch.topk(score, keep).indices.tolist())
        assert pruner.channels_to_keep(group.name, keep) == expected


@pytest.mark.parametrize("key", ["resnet18", "mobilenet_v3_small"])
def test_it_scores_groups_of_branching_networks_by_their_summed_l2_norm(analyses, key):
    model, x, analysis = analyses[key]
    pruner = GroupPruner(copy.deepcopy(model), x)
    for group in analysis.groups:
        modules = dict(model.named_modules())
        if any(modules[n].groups > 1 for n in group.out_layers if isinstance(modules[n], nn.Conv2d)):
            continue  # depthwise groups: see the test below
        assert torch.allclose(pruner.importance(group.name), _hand_l2(model, group), rtol=1e-5), group.name


@pytest.mark.parametrize("key, group_name", [("mobilenet_v1", "features.5.0.0"),
                                             ("mobilenet_v2", "features.8.conv.1.0")])
def test_it_counts_the_depthwise_filters_in_a_groups_l2_norm(analyses, key, group_name):
    model, x, analysis = analyses[key]
    (group,) = [g for g in analysis.groups if g.name == group_name]
    modules = dict(model.named_modules())
    assert any(modules[n].groups == group.channels for n in group.out_layers)  # has a depthwise conv
    pruner = GroupPruner(copy.deepcopy(model), x)
    assert torch.allclose(pruner.importance(group_name), _hand_l2(model, group), rtol=1e-5)


def test_it_slices_the_kept_filters_and_consumer_columns(analyses):
    model, x, analysis = analyses["plain_cnn"]
    group = analysis.groups[3]
    keep = GroupPruner(copy.deepcopy(model), x).channels_to_keep(group.name, 8)
    pruned = pruned_copy(model, x, {group.name: 8})
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    (producer,), (consumer,) = group.out_layers, group.in_layers
    assert torch.equal(after[producer].weight, before[producer].weight[keep])
    assert torch.equal(after[consumer].weight, before[consumer].weight[:, keep])


def test_it_rejects_keeping_more_channels_than_a_group_has(analyses):
    model, x, analysis = analyses["plain_cnn"]
    group = analysis.groups[0]
    pruner = GroupPruner(copy.deepcopy(model), x)
    with pytest.raises(ValueError, match=group.name):
        pruner.channels_to_keep(group.name, group.channels + 1)
    with pytest.raises(ValueError, match="no prunable group"):
        pruner.channels_to_keep("classifier", 4)


def _bn_after(name: str, modules: dict) -> nn.BatchNorm2d:
    """The BatchNorm2d applied to a conv's output, by the naming of these architectures."""
    head, _, last = name.rpartition(".")
    if last.isdigit():
        bn_name = f"{head}.{int(last) + 1}"
    else:  # torchvision ResNet: conv1 -> bn1, layerX.Y.conv2 -> layerX.Y.bn2
        bn_name = f"{head}.{last.replace('conv', 'bn')}" if head else last.replace("conv", "bn")
    bn = modules[bn_name]
    assert isinstance(bn, nn.BatchNorm2d), bn_name
    return bn


@pytest.mark.parametrize("key, group_name, keep", [
    ("plain_cnn", "features.3.0", 16),
    ("plain_cnn", "features.6.0", 40),
    ("resnet18", "layer2.0.downsample.0", 64),   # a residual stage
    ("resnet18", "conv1", 24),                   # the stem and layer1's residual stage
    ("mobilenet_v1", "features.4.0.0", 32),      # depthwise conv + the pointwise conv feeding it
    ("mobilenet_v2", "features.6.conv.2", 8),   # a linear-bottleneck residual stage
])
def test_a_pruned_network_equals_the_original_with_the_removed_channels_zeroed(key, group_name, keep):
    model, x = _build(key)
    _randomise_batchnorm(model, x)
    analysis = NetworkAnalysis(model, x)
    (group,) = [g for g in analysis.groups if g.name == group_name]
    kept = GroupPruner(copy.deepcopy(model), x).channels_to_keep(group_name, keep)
    removed = [c for c in range(group.channels) if c not in kept]
    assert len(removed) == group.channels - keep > 0

    pruned = pruned_copy(model, x, {group_name: keep}).eval()
    zeroed = copy.deepcopy(model).eval()
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for name in group.out_layers:
            conv = modules[name]
            conv.weight[removed] = 0
            if conv.bias is not None:
                conv.bias[removed] = 0
            bn = _bn_after(name, modules)
            bn.weight[removed] = 0
            bn.bias[removed] = 0
        batch = torch.cat([x, torch.randn(x.shape, generator=torch.Generator().manual_seed(3))])
        reference, expected, actual = model(batch), zeroed(batch), pruned(batch)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-5, rtol=0), (actual - expected).abs().max()
    # The check is discriminating: pruning does change this network's outputs.
    assert not torch.allclose(reference, expected, atol=1e-4)


def test_rebuild_pruned_keeps_the_first_channels_and_matches_the_configuration(analyses):
    model, x, analysis = analyses["mobilenet_v1"]
    config = {g.name: _half(g.channels) for g in analysis.groups}
    rebuilt = rebuild_pruned(copy.deepcopy(model), x, config)
    assert [t.signature for t in trace_layers(rebuilt, x)] == analysis.signatures(config)
    assert torch.equal(rebuilt.features[0][0].weight,
                       model.features[0][0].weight[:config["features.1.0.0"]])
    with pytest.raises(ValueError, match="unknown groups"):
        rebuild_pruned(copy.deepcopy(model), x, {"nope": 8})


# ---------------------------------------------------------------- unsupported networks


def test_it_rejects_a_grouped_convolution_naming_the_layer():
    class Grouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 16, 3)
            self.mixer = nn.Conv2d(16, 16, 3, groups=2)
            self.head = nn.Linear(16, 10)

        def forward(self, x):
            return self.head(self.mixer(self.stem(x)).mean((2, 3)))

    with pytest.raises(UnsupportedNetwork, match=r"'mixer'.*groups=2"):
        NetworkAnalysis(Grouped(), torch.randn(1, 1, 8, 8))


def test_it_rejects_a_module_holding_a_raw_parameter_naming_the_layer():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.gain

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.scale = Scale()
            self.head = nn.Linear(8, 10)

        def forward(self, x):
            return self.head(self.scale(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedNetwork, match=r"'scale' \(Scale\)"):
        NetworkAnalysis(Net(), torch.randn(1, 1, 8, 8))


def test_a_depthwise_convolution_is_supported():
    model, x = _build("mobilenet_v1")
    assert NetworkAnalysis(model, x).groups  # no UnsupportedNetwork
