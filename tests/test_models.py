"""Tests for adaptation.netadapt.models: every architecture builds and runs, MobileNetV1 structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adaptation.netadapt.models import (
    ARCHITECTURES,
    MobileNetV1,
    PlainCNN,
    build_model,
    example_input,
    scale_channels,
)


def _logits(model: nn.Module, in_channels: int, resolution: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(example_input(in_channels, resolution, batch=2))


#: At 64 px these would run with an unstrided stem (256-px-like cost); 96 px keeps them fast.
HEAVY_ARCHITECTURES = frozenset({"resnet34", "resnet50"})


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(
    ("num_classes", "in_channels", "resolution"),
    [(10, 1, 28), (5, 3, 64)],
    ids=["gray28", "rgb"],
)
def test_every_architecture_builds_and_produces_logits(
    arch: str, num_classes: int, in_channels: int, resolution: int
) -> None:
    if in_channels == 3 and arch in HEAVY_ARCHITECTURES:
        resolution = 96
    torch.manual_seed(0)
    model = build_model(arch, num_classes, in_channels=in_channels, resolution=resolution)
    logits = _logits(model, in_channels, resolution)
    assert logits.shape == (2, num_classes)
    assert not torch.isnan(logits).any()


def test_heavy_architecture_at_imagenet_like_resolution_keeps_strided_stem() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 5, in_channels=3, resolution=96)
    assert model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert _logits(model, 3, 96).shape == (2, 5)


def test_small_resolution_removes_stem_downsampling() -> None:
    resnet = build_model("resnet18", 10, in_channels=1, resolution=28)
    assert resnet.conv1.stride == (1, 1)
    assert resnet.conv1.in_channels == 1
    assert resnet.conv1.out_channels == 64 and resnet.conv1.kernel_size == (7, 7)
    assert isinstance(resnet.maxpool, nn.Identity)
    mobilenet_v2 = build_model("mobilenet_v2", 10, in_channels=1, resolution=28)
    assert mobilenet_v2.features[0][0].stride == (1, 1)


def test_in_channels_replaces_first_conv_only_when_needed() -> None:
    model = build_model("efficientnet_b0", 10, in_channels=1, resolution=224)
    stem = model.features[0][0]
    assert stem.in_channels == 1 and stem.out_channels == 32
    assert stem.stride == (2, 2) and stem.padding == (1, 1) and stem.bias is None


def _convs(model: nn.Module) -> list[nn.Conv2d]:
    return [module for module in model.modules() if isinstance(module, nn.Conv2d)]


def test_mobilenet_v1_layer_counts() -> None:
    model = MobileNetV1(num_classes=10)
    convs = _convs(model)
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    depthwise = [
        conv for conv in convs if conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    ]
    assert len(convs) == 27
    assert len(linears) == 1
    assert len(depthwise) == 13


def test_mobilenet_v1_width_halves_pointwise_channels() -> None:
    full = [conv.out_channels for conv in _convs(MobileNetV1(width=1.0)) if conv.kernel_size == (1, 1)]
    half = [conv.out_channels for conv in _convs(MobileNetV1(width=0.5)) if conv.kernel_size == (1, 1)]
    assert len(full) == len(half) == 13
    assert half == [channels // 2 for channels in full]
    assert all(channels % 8 == 0 for channels in half)
    assert full[-1] == 1024 and half[-1] == 512


def test_scale_channels_rounds_to_multiples_of_eight_with_minimum() -> None:
    assert scale_channels(32, 0.75) == 24
    assert scale_channels(32, 0.1) == 8
    assert scale_channels(100, 1.0) == 96


def test_mobilenet_v1_small_input_keeps_spatial_size() -> None:
    images = example_input(1, 28, batch=1)
    with torch.no_grad():
        small = MobileNetV1(in_channels=1, small_input=True).eval().features(images)
        regular = MobileNetV1(in_channels=1, small_input=False).eval().features(images)
    assert small.shape[-1] == 2  # stride-1 stem: 28 px -> 2x2 after the 16x of the blocks
    assert regular.shape[-1] == 1
    assert small.shape[-1] > regular.shape[-1]


def test_plain_cnn_structure() -> None:
    model = PlainCNN(width=0.5)
    convs = _convs(model)
    assert [conv.out_channels for conv in convs] == [16, 16, 32, 32, 64, 64, 128]
    assert [conv.stride[0] for conv in convs] == [1, 2, 1, 2, 1, 2, 1]
    assert _logits(model, 1, 28).shape == (2, 10)


def test_unknown_architecture_lists_the_name() -> None:
    with pytest.raises(ValueError, match="vgg16") as error:
        build_model("vgg16", 10)
    assert "mobilenet_v1" in str(error.value)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenet_v3_small"])
def test_unsupported_width_raises_with_arch_name(arch: str) -> None:
    with pytest.raises(ValueError, match=arch):
        build_model(arch, 10, width=0.5)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "plain_cnn", "mobilenet_v2"])
def test_width_is_supported(arch: str) -> None:
    narrow = build_model(arch, 10, in_channels=1, width=0.5, resolution=28)
    wide = build_model(arch, 10, in_channels=1, width=1.0, resolution=28)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in wide.parameters())


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 0}, {"num_classes": 10, "in_channels": 0}, {"num_classes": 10, "resolution": 0},
     {"num_classes": 10, "width": 0.0}, {"num_classes": 10, "width": -1.0}],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        build_model("plain_cnn", **kwargs)


@pytest.mark.parametrize("arch", ["mobilenet_v1", "resnet18", "mobilenet_v3_small"])
def test_build_model_is_deterministic_under_seed(arch: str) -> None:
    torch.manual_seed(123)
    first = build_model(arch, 10, in_channels=1, resolution=28).state_dict()
    torch.manual_seed(123)
    second = build_model(arch, 10, in_channels=1, resolution=28).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_example_input_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    first = example_input(3, 16, batch=4)
    assert torch.rand(1).item() == expected_next.item()
    assert first.shape == (4, 3, 16, 16)
    assert torch.equal(first, example_input(3, 16, batch=4))
    assert first.std() > 0.5
