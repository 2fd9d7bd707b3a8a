"""LayerSignature keys, arithmetic, and trace_layers on a hand-built network."""

import dataclasses

import pytest
import torch
from torch import nn

from devices.measure import SIGNATURE_VERSION, LayerSignature
from devices.measure.builders import signature_module
from devices.measure.tracing import trace_layers


def conv_sig(**changes) -> LayerSignature:
    base = LayerSignature(
        op="conv", in_channels=32, out_channels=64, kernel=(3, 3), stride=(1, 1), padding=(1, 1),
        dilation=(1, 1), groups=1, input_hw=(28, 28), batch=1, bias=False, fused="bn+relu",
    )
    return dataclasses.replace(base, **changes)


LINEAR = LayerSignature(
    op="linear", in_channels=16, out_channels=10, kernel=(1, 1), stride=(1, 1), padding=(0, 0),
    dilation=(1, 1), groups=1, input_hw=(1, 1), batch=2, bias=True, fused="",
)


def test_key_format_and_round_trip() -> None:
    sig = conv_sig()
    assert sig.key() == "v1|conv|i32|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|bn+relu"
    for s in (sig, LINEAR, conv_sig(fused="", bias=True), conv_sig(groups=32, out_channels=32, stride=(2, 1))):
        assert LayerSignature.from_key(s.key()) == s
        assert LayerSignature.from_dict(s.to_dict()) == s
    assert len({conv_sig(fused=f).key() for f in ("", "bn", "relu", "bn+relu")}) == 4


@pytest.mark.parametrize("key", [
    "",
    "garbage",
    "v1|conv|i32|o64",
    "v1|conv|i32|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0",
    "v1|conv|iX|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|bn",
    "v1|conv|i32|o64|k3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|bn",
    "v1|pool|i32|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|bn",
    "v1|conv|i32|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias2|bn",
    "v1|conv|i32|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|gelu",
    "v1|conv|i032|o64|k3x3|s1x1|p1x1|d1x1|g1|hw28x28|b1|bias0|bn",
    "v1|conv|i32|o64|k3x3|s1x1|p1x1|d1x1|g3|hw28x28|b1|bias0|bn",
    "v1|linear|i32|o64|k1x1|s1x1|p0x0|d1x1|g1|hw1x1|b1|bias0|bn",
])
def test_malformed_key_raises(key: str) -> None:
    with pytest.raises(ValueError):
        LayerSignature.from_key(key)


def test_version_mismatch_raises() -> None:
    key = conv_sig().key().replace("v1|", f"v{SIGNATURE_VERSION + 1}|", 1)
    with pytest.raises(ValueError, match="version"):
        LayerSignature.from_key(key)
    with pytest.raises(ValueError, match="version"):
        conv_sig(version=SIGNATURE_VERSION + 1)


def test_output_hw_macs_params() -> None:
    sig = conv_sig(stride=(2, 2), input_hw=(28, 27))
    assert sig.output_hw() == (14, 14)
    assert sig.macs() == 64 * 14 * 14 * 32 * 9
    assert sig.params() == 64 * 32 * 9 + 2 * 64
    depthwise = conv_sig(in_channels=32, out_channels=32, groups=32, bias=True, fused="relu")
    assert depthwise.macs() == 32 * 28 * 28 * 9
    assert depthwise.params() == 32 * 9 + 32
    assert LINEAR.output_hw() == (1, 1)
    assert (LINEAR.macs(), LINEAR.params()) == (16 * 10 * 2, 16 * 10 + 10)


class SmallNet(nn.Module):
    """conv-bn-relu, depthwise conv-bn-relu6, conv-bn (no act) + skip, inplace ReLU, shared conv, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.proj = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.skip = nn.Conv2d(8, 16, 1, stride=1)
        self.act = nn.ReLU(inplace=True)
        self.shared = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.act2 = nn.Hardswish()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        x = self.act(self.proj(x) + self.skip(x))  # the add breaks fusion: proj is "bn" only
        x = self.act2(self.shared(self.shared(x)))  # called twice, only the 2nd call fuses
        return self.fc(torch.flatten(self.pool(x), 1))


def expected_layers() -> list[tuple[str, LayerSignature]]:
    def conv(i, o, k, s, p, g, hw, bias, fused):
        return LayerSignature("conv", i, o, (k, k), (s, s), (p, p), (1, 1), g, (hw, hw), 2, bias, fused)

    return [
        ("stem.0", conv(3, 8, 3, 2, 1, 1, 32, False, "bn+relu")),
        ("dw.0", conv(8, 8, 3, 1, 1, 8, 16, False, "bn+relu6")),
        ("proj.0", conv(8, 16, 1, 1, 0, 1, 16, False, "bn")),
        ("skip", conv(8, 16, 1, 1, 0, 1, 16, True, "")),
        ("shared", conv(16, 16, 3, 2, 1, 1, 16, True, "")),
        ("shared", conv(16, 16, 3, 2, 1, 1, 8, True, "hardswish")),
        ("fc", LayerSignature("linear", 16, 10, (1, 1), (1, 1), (0, 0), (1, 1), 1, (1, 1), 2, True, "")),
    ]


def test_trace_layers_exact_signatures_hooks_and_mode() -> None:
    net = SmallNet().train()
    net.stem.eval()  # mixed modes must come back exactly
    traced = trace_layers(net, torch.randn(2, 3, 32, 32))
    assert [(t.name, t.signature) for t in traced] == expected_layers()
    assert all(not m._forward_hooks for m in net.modules())
    assert net.training and not net.stem.training and net.dw.training and net.stem[1].training is False


def test_trace_restores_state_on_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(6, 2)).train()
    with pytest.raises(ValueError, match="'2'"):  # Linear on a 4-D tensor, named in the error
        trace_layers(net, torch.randn(1, 3, 8, 8))
    assert all(not m._forward_hooks for m in net.modules())
    assert all(m.training for m in net.modules())


def test_macs_and_params_sums() -> None:
    net = SmallNet()
    traced = trace_layers(net, torch.randn(2, 3, 32, 32))
    hand_macs = 2 * (8 * 16 * 16 * 3 * 9 + 8 * 16 * 16 * 9 + 2 * 16 * 16 * 16 * 8
                     + 16 * 8 * 8 * 16 * 9 + 16 * 4 * 4 * 16 * 9 + 16 * 10)
    assert sum(t.signature.macs() for t in traced) == hand_macs
    once_per_module = {t.name: t.signature for t in traced}  # the shared conv owns its weights once
    assert sum(s.params() for s in once_per_module.values()) == sum(p.numel() for p in net.parameters())


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_same_padding_and_invalid_convs() -> None:
    same = nn.Sequential(nn.Conv2d(4, 4, 5, padding="same", dilation=2))
    (layer,) = trace_layers(same, torch.randn(1, 4, 12, 12))
    assert layer.signature.padding == (4, 4) and layer.signature.output_hw() == (12, 12)
    with pytest.raises(ValueError, match="'0'.*asymmetric"):
        trace_layers(nn.Sequential(nn.Conv2d(4, 4, (2, 3), padding="same")), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="'0'.*padding_mode"):
        trace_layers(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")), torch.randn(1, 4, 8, 8))


@pytest.mark.parametrize("sig", [sig for _, sig in expected_layers()])
def test_signature_module_traces_back_to_its_signature(sig: LayerSignature) -> None:
    shape = (sig.batch, sig.in_channels) if sig.op == "linear" else (sig.batch, sig.in_channels, *sig.input_hw)
    (layer,) = trace_layers(signature_module(sig), torch.randn(shape))
    assert layer.signature == sig
