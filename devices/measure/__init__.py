"""Latency measurement on the local CPU: layer signatures, runtimes, timing protocol.

Typical use::

    layers = trace_layers(model, example_input)
    measurer = LocalMeasurer("onnxruntime", MeasureProtocol(threads=1))
    table = measurer.measure_signatures([layer.signature for layer in layers])
"""

from devices.measure.builders import (
    model_to_onnx,
    signature_input_shape,
    signature_module,
    signature_onnx,
)
from devices.measure.local import LocalMeasurer, device_facts
from devices.measure.protocol import MeasureProtocol, time_interleaved, time_with_retries
from devices.measure.runtimes import RUNTIMES, Runtime, get_runtime
from devices.measure.signature import (
    SIGNATURE_VERSION,
    LayerSignature,
    TracedLayer,
    trace_layers,
)
from devices.measure.stats import TimingStats

__all__ = [
    "LayerSignature",
    "LocalMeasurer",
    "MeasureProtocol",
    "RUNTIMES",
    "Runtime",
    "SIGNATURE_VERSION",
    "TimingStats",
    "TracedLayer",
    "device_facts",
    "get_runtime",
    "model_to_onnx",
    "signature_input_shape",
    "signature_module",
    "signature_onnx",
    "time_interleaved",
    "time_with_retries",
    "trace_layers",
]
