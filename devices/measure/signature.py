"""Layer signatures: the hashable identity of one conv/linear layer's latency.

Two layers with equal signatures cost the same on a device, so a lookup
table keyed by :meth:`LayerSignature.key` lets NetAdapt estimate a pruned
network's latency without re-measuring it. The ops an inference runtime
fuses into the layer (BN, activation) are part of the signature because
they change what actually runs.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

SIGNATURE_VERSION = 1

ACTIVATIONS: tuple[str, ...] = ("relu", "relu6", "hardswish", "silu", "hardsigmoid", "sigmoid")
"""Activation names allowed in ``LayerSignature.fused``."""

_PAIR_FIELDS = ("kernel", "stride", "padding", "dilation", "input_hw")
_NO_FUSION = "none"  # how an empty ``fused`` is spelled inside a key


def _valid_fused(op: str) -> frozenset[str]:
    """Fusion strings allowed for ``op``: optional "bn" (conv only), then an optional activation."""
    allowed = {""} | set(ACTIVATIONS)
    if op == "conv":
        allowed |= {"bn"} | {f"bn+{act}" for act in ACTIVATIONS}
    return frozenset(allowed)


@dataclass(frozen=True, order=True)
class LayerSignature:
    """Everything that determines one conv/linear layer's latency on a device."""

    op: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    input_hw: tuple[int, int]
    batch: int
    bias: bool
    fused: str
    version: int = SIGNATURE_VERSION

    def __post_init__(self) -> None:
        """Normalise pairs to int tuples (JSON gives lists) and reject impossible layers."""
        for name in _PAIR_FIELDS:
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"LayerSignature.{name} must have 2 entries, got {value}")
            object.__setattr__(self, name, value)
        if self.version != SIGNATURE_VERSION:
            raise ValueError(
                f"LayerSignature version {self.version} is not supported "
                f"(this code reads version {SIGNATURE_VERSION})"
            )
        if self.op not in ("conv", "linear"):
            raise ValueError(f"LayerSignature.op must be 'conv' or 'linear', got {self.op!r}")
        positive = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "groups": self.groups, "batch": self.batch,
            "kernel": min(self.kernel), "stride": min(self.stride),
            "dilation": min(self.dilation), "input_hw": min(self.input_hw),
        }
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"LayerSignature.{name} must be >= 1, got {getattr(self, name)}")
        if min(self.padding) < 0:
            raise ValueError(f"LayerSignature.padding must be >= 0, got {self.padding}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"channels {self.in_channels}->{self.out_channels} not divisible by groups {self.groups}"
            )
        if self.op == "linear" and (
            self.kernel, self.stride, self.padding, self.dilation, self.groups, self.input_hw
        ) != ((1, 1), (1, 1), (0, 0), (1, 1), 1, (1, 1)):
            raise ValueError("linear signature needs kernel/stride/dilation/input_hw (1,1), padding (0,0), groups 1")
        if self.fused not in _valid_fused(self.op):
            raise ValueError(f"LayerSignature.fused {self.fused!r} is not valid for op {self.op!r}")
        if min(self.output_hw()) < 1:
            raise ValueError(f"signature gives an empty output {self.output_hw()}")

    def key(self) -> str:
        """Stable, human-readable, unique string form (the DB/JSON key)."""
        def pair(p: tuple[int, int]) -> str:
            return f"{p[0]}x{p[1]}"

        return "|".join((
            f"v{self.version}", self.op, f"i{self.in_channels}", f"o{self.out_channels}",
            f"k{pair(self.kernel)}", f"s{pair(self.stride)}", f"p{pair(self.padding)}",
            f"d{pair(self.dilation)}", f"g{self.groups}", f"hw{pair(self.input_hw)}",
            f"b{self.batch}", f"bias{int(self.bias)}", self.fused or _NO_FUSION,
        ))

    @classmethod
    def from_key(cls, key: str) -> "LayerSignature":
        """Exact inverse of :meth:`key`; ValueError on a malformed key or another version."""
        parts = key.split("|")
        version_match = re.fullmatch(r"v(\d+)", parts[0])
        if version_match is None:
            raise ValueError(f"malformed signature key {key!r}: must start with 'v<version>|'")
        if int(version_match.group(1)) != SIGNATURE_VERSION:
            raise ValueError(
                f"signature key {key!r} has version {version_match.group(1)}, "
                f"this code reads version {SIGNATURE_VERSION}"
            )
        if len(parts) != 13:
            raise ValueError(f"malformed signature key {key!r}: expected 13 '|'-separated fields, got {len(parts)}")

        def number(field: str, prefix: str) -> int:
            match = re.fullmatch(re.escape(prefix) + r"(\d+)", field)
            if match is None:
                raise ValueError(f"malformed signature key {key!r}: field {field!r} is not '{prefix}<int>'")
            return int(match.group(1))

        def pair(field: str, prefix: str) -> tuple[int, int]:
            match = re.fullmatch(re.escape(prefix) + r"(\d+)x(\d+)", field)
            if match is None:
                raise ValueError(f"malformed signature key {key!r}: field {field!r} is not '{prefix}<int>x<int>'")
            return int(match.group(1)), int(match.group(2))

        bias = number(parts[11], "bias")
        if bias not in (0, 1):
            raise ValueError(f"malformed signature key {key!r}: bias must be 0 or 1")
        fused = "" if parts[12] == _NO_FUSION else parts[12]
        signature = cls(
            op=parts[1], in_channels=number(parts[2], "i"), out_channels=number(parts[3], "o"),
            kernel=pair(parts[4], "k"), stride=pair(parts[5], "s"), padding=pair(parts[6], "p"),
            dilation=pair(parts[7], "d"), groups=number(parts[8], "g"), input_hw=pair(parts[9], "hw"),
            batch=number(parts[10], "b"), bias=bool(bias), fused=fused,
        )
        if signature.key() != key:  # e.g. leading zeros: keep keys canonical
            raise ValueError(f"signature key {key!r} is not canonical (expected {signature.key()!r})")
        return signature

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (pairs become lists)."""
        d = asdict(self)
        for name in _PAIR_FIELDS:
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerSignature":
        """Inverse of :meth:`to_dict`; ValueError on unknown keys."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"LayerSignature.from_dict: unknown keys {sorted(unknown)}")
        return cls(**dict(d))

    def output_hw(self) -> tuple[int, int]:
        """Spatial output size (standard conv arithmetic); (1, 1) for linear."""
        if self.op == "linear":
            return (1, 1)
        return tuple(  # type: ignore[return-value]
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip(
                self.input_hw, self.padding, self.dilation, self.kernel, self.stride
            )
        )

    def macs(self) -> int:
        """Multiply-accumulates of the conv/linear itself (fused ops excluded)."""
        if self.op == "linear":
            return self.in_channels * self.out_channels * self.batch
        out_h, out_w = self.output_hw()
        per_output = (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        return self.out_channels * out_h * out_w * per_output * self.batch

    def params(self) -> int:
        """Weights + own bias + BN affine weight and bias when BN is fused."""
        weights = self.out_channels * (self.in_channels // self.groups) * self.kernel[0] * self.kernel[1]
        bias = self.out_channels if self.bias else 0
        batch_norm = 2 * self.out_channels if self.fused.startswith("bn") else 0
        return weights + bias + batch_norm


@dataclass(frozen=True)
class TracedLayer:
    """One conv/linear call found in a model: its module name and signature."""

    name: str
    signature: LayerSignature

