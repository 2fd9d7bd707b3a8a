"""CNN architectures that NetAdapt can adapt, and the single factory that builds them.

``build_model`` is the one place every caller (CLI, web app, rebuilding a model for
export) constructs an architecture, so a network built anywhere has identical layers.
Torchvision models are always built with ``weights=None``: nothing is ever downloaded.

Small inputs (``resolution <= 64``, e.g. 28-px Fashion-MNIST) would be reduced to 1x1
feature maps by ImageNet-style stems, so for them ``build_model`` removes the stem's
downsampling (see ``build_model`` for the exact change made per architecture).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchvision import models as tv_models

ARCHITECTURES: tuple[str, ...] = (
    "mobilenet_v1",
    "plain_cnn",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet34",
    "resnet50",
    "shufflenet_v2_x1_0",
    "mnasnet1_0",
    "efficientnet_b0",
)

#: Architectures whose channel counts can be scaled by ``width``.
WIDTH_SCALABLE_ARCHITECTURES: tuple[str, ...] = ("mobilenet_v1", "plain_cnn", "mobilenet_v2")

#: Inputs at or below this many pixels get a stem without downsampling.
SMALL_INPUT_MAX_RESOLUTION = 64

#: Seed of the tensor returned by ``example_input`` (kept apart from the global RNG).
EXAMPLE_INPUT_SEED = 0


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width``, rounded to the nearest multiple of ``divisor``.

    Multiples of 8 keep layers friendly to vectorised kernels; the result is never
    below ``divisor`` so a very thin network still has usable layers.
    """
    return max(divisor, int(round(channels * width / divisor)) * divisor)


def _check_width(width: float) -> None:
    """Reject widths that cannot scale a network (zero, negative, NaN, infinite)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ValueError(f"width must be a positive number, got {width!r}")
    if not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive finite number, got {width!r}")


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, BN follows) + BatchNorm + ReLU, padded to keep size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(module: nn.Module) -> None:
    """Kaiming init for convs, unit BN, small-normal linear: a stable start for training."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.zeros_(layer.bias)


class DepthwiseSeparableBlock(nn.Sequential):
    """MobileNetV1 block: depthwise 3x3 conv-BN-ReLU, then pointwise 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            _conv_bn_relu(in_channels, in_channels, 3, stride, groups=in_channels),
            _conv_bn_relu(in_channels, out_channels, 1, 1),
        )


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al. 2017), the network NetAdapt was first evaluated on.

    Stem 3x3 conv-BN-ReLU (32 channels, stride 2), 13 depthwise-separable blocks
    following the paper's table, global average pooling, optional dropout, linear
    classifier. Channel counts are scaled by ``width`` and rounded to multiples of 8
    (minimum 8).

    ``small_input=True`` is meant for inputs of at most 64 px: the stem uses stride 1
    instead of 2. The total downsampling drops from 32x to 16x, so a 28-px input reaches
    the final blocks at 2x2 instead of 1x1 (the configuration measured for the benchmark:
    at width 0.5 about 0.3 ms in ONNX Runtime on one thread, ~89% on Fashion-MNIST).
    """

    #: (output channels, stride) of the 13 depthwise-separable blocks at width 1.0.
    BLOCK_TABLE: tuple[tuple[int, int], ...] = (
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    )
    STEM_CHANNELS = 32

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        width: float = 1.0,
        small_input: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_width(width)
        stem_channels = scale_channels(self.STEM_CHANNELS, width)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, stem_channels, 3, 1 if small_input else 2)]
        channels = stem_channels
        for block_channels, stride in self.BLOCK_TABLE:
            out_channels = scale_channels(block_channels, width)
            layers.append(DepthwiseSeparableBlock(channels, out_channels, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(channels, num_classes))
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape (batch, num_classes)."""
        pooled = self.pool(self.features(images))
        return self.classifier(torch.flatten(pooled, 1))


class PlainCNN(nn.Module):
    """A small plain (no branches) CNN: a quick baseline for small grayscale images.

    Seven 3x3 conv-BN-ReLU blocks with widths (32, 32, 64, 64, 128, 128, 256) scaled by
    ``width`` (multiples of 8), stride 2 at blocks 2, 4 and 6 (1-based), so a 28-px
    input ends at 4x4; then global average pooling and a linear classifier.
    """

    BASE_WIDTHS: tuple[int, ...] = (32, 32, 64, 64, 128, 128, 256)
    #: 1-based numbers of the blocks that downsample by 2.
    STRIDED_BLOCKS: tuple[int, ...] = (2, 4, 6)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0) -> None:
        super().__init__()
        _check_width(width)
        layers: list[nn.Module] = []
        channels = in_channels
        for number, base_width in enumerate(self.BASE_WIDTHS, start=1):
            out_channels = scale_channels(base_width, width)
            stride = 2 if number in self.STRIDED_BLOCKS else 1
            layers.append(_conv_bn_relu(channels, out_channels, 3, stride))
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return class logits of shape (batch, num_classes)."""
        return self.classifier(torch.flatten(self.pool(self.features(images)), 1))


def _replaced_conv(conv: nn.Conv2d, in_channels: int, stride: int | None) -> nn.Conv2d:
    """A copy of ``conv``'s configuration with new input channels and (optionally) stride.

    Output channels, kernel, padding, dilation and bias are kept, so the rest of the
    network is unaffected. Weights are freshly Kaiming-initialised (the model is
    untrained anyway, since no pretrained weights are loaded).
    """
    new_stride = conv.stride if stride is None else (stride, stride)
    replacement = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=new_stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )
    nn.init.kaiming_normal_(replacement.weight, mode="fan_out", nonlinearity="relu")
    if replacement.bias is not None:
        nn.init.zeros_(replacement.bias)
    return replacement


def _adapt_stem(parent: nn.Module, key: str, in_channels: int, small_input: bool) -> None:
    """Replace ``parent[key]`` (the first conv) when channels or stride must change."""
    conv = parent[int(key)] if isinstance(parent, nn.Sequential) else getattr(parent, key)
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"expected the stem convolution at {key!r}, found {type(conv).__name__}")
    if in_channels == conv.in_channels and not small_input:
        return
    replacement = _replaced_conv(conv, in_channels, 1 if small_input else None)
    if isinstance(parent, nn.Sequential):
        parent[int(key)] = replacement
    else:
        setattr(parent, key, replacement)


def _torchvision_stem(model: nn.Module, arch: str) -> tuple[nn.Module, str]:
    """Locate the first convolution of a torchvision model as (parent module, key)."""
    if arch.startswith("resnet"):
        return model, "conv1"
    if arch.startswith("shufflenet"):
        return model.conv1, "0"
    if arch.startswith("mnasnet"):
        return model.layers, "0"
    # mobilenet_v2, mobilenet_v3_*, efficientnet_b0: features[0] is Conv-BN-activation.
    return model.features[0], "0"


_TORCHVISION_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": tv_models.mobilenet_v2,
    "mobilenet_v3_small": tv_models.mobilenet_v3_small,
    "mobilenet_v3_large": tv_models.mobilenet_v3_large,
    "resnet18": tv_models.resnet18,
    "resnet34": tv_models.resnet34,
    "resnet50": tv_models.resnet50,
    "shufflenet_v2_x1_0": tv_models.shufflenet_v2_x1_0,
    "mnasnet1_0": tv_models.mnasnet1_0,
    "efficientnet_b0": tv_models.efficientnet_b0,
}


def _check_positive_int(name: str, value: int) -> None:
    """Raise ValueError unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    width: float = 1.0,
    resolution: int = 224,
) -> nn.Module:
    """Build an untrained ``arch`` for ``num_classes`` classes and the given input shape.

    ``width`` scales channels for mobilenet_v1, plain_cnn and mobilenet_v2 (torchvision
    ``width_mult``); other architectures accept only 1.0. When ``in_channels != 3`` the
    first conv of a torchvision model is replaced by one with the same out channels,
    kernel, stride, padding and bias.

    For ``resolution <= 64`` downsampling is removed from the stem so small images
    keep spatial detail:

    - mobilenet_v1: ``small_input=True`` (stem and first stride-2 block at stride 1).
    - plain_cnn: unchanged (it is designed for small inputs).
    - mobilenet_v2 / mobilenet_v3_* / efficientnet_b0 / mnasnet1_0: stem conv stride 1.
    - resnet18/34/50: ``conv1`` stride 1 and ``maxpool`` replaced by ``nn.Identity``.
    - shufflenet_v2_x1_0: ``conv1`` stride 1 and ``maxpool`` replaced by ``nn.Identity``.

    Weights come from the global torch RNG, so ``torch.manual_seed`` makes it
    deterministic. Raises ValueError for an unknown arch, an unsupported width or a
    num_classes / in_channels / resolution below 1.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; valid names: {', '.join(ARCHITECTURES)}")
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("resolution", resolution)
    _check_width(width)
    if arch not in WIDTH_SCALABLE_ARCHITECTURES and width != 1.0:
        raise ValueError(
            f"architecture {arch!r} does not support width={width}; "
            f"only {', '.join(WIDTH_SCALABLE_ARCHITECTURES)} accept a width other than 1.0"
        )
    small_input = resolution <= SMALL_INPUT_MAX_RESOLUTION

    if arch == "mobilenet_v1":
        return MobileNetV1(num_classes=num_classes, in_channels=in_channels, width=width, small_input=small_input)
    if arch == "plain_cnn":
        return PlainCNN(num_classes=num_classes, in_channels=in_channels, width=width)

    builder_kwargs: dict[str, object] = {"weights": None, "num_classes": num_classes}
    if arch == "mobilenet_v2":
        builder_kwargs["width_mult"] = width
    model = _TORCHVISION_BUILDERS[arch](**builder_kwargs)
    parent, key = _torchvision_stem(model, arch)
    _adapt_stem(parent, key, in_channels, small_input)
    if small_input and hasattr(model, "maxpool"):
        model.maxpool = nn.Identity()
    return model


def example_input(in_channels: int, resolution: int, batch: int = 1) -> torch.Tensor:
    """A reproducible random-normal input of shape (batch, in_channels, resolution, resolution).

    Used for tracing, export and latency measurement. Random rather than zeros so
    data-dependent paths behave realistically; drawn from a private generator so the
    global RNG (and thus model initialisation) is not disturbed.
    """
    _check_positive_int("in_channels", in_channels)
    _check_positive_int("resolution", resolution)
    _check_positive_int("batch", batch)
    generator = torch.Generator().manual_seed(EXAMPLE_INPUT_SEED)
    return torch.randn(batch, in_channels, resolution, resolution, generator=generator)
