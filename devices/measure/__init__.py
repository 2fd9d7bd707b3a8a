"""The measurement core: layer signatures, timing statistics, the timing protocol.

This package's ``__init__`` and the modules it names import no torch (numpy only; onnxruntime
where sessions are made), so the engine, the server and the agent program share them; the agent's
download carries exactly these files. Measuring on the local CPU needs torch: import those
modules by name where they are used --

- ``devices.measure.tracing`` (``trace_layers``: a model's layer signatures),
- ``devices.measure.builders`` (one-layer networks and ONNX exports),
- ``devices.measure.runtimes`` (ONNX Runtime and PyTorch runners),
- ``devices.measure.local`` (``LocalMeasurer``, ``device_facts``).

Typical use::

    layers = trace_layers(model, example_input)
    measurer = LocalMeasurer("onnxruntime", MeasureProtocol(threads=1))
    table = measurer.measure_signatures([layer.signature for layer in layers])
"""

from devices.measure.protocol import MeasureProtocol, time_interleaved, time_with_retries
from devices.measure.signature import SIGNATURE_VERSION, LayerSignature, TracedLayer
from devices.measure.stats import TimedSamples, TimingStats

__all__ = [
    "LayerSignature",
    "MeasureProtocol",
    "SIGNATURE_VERSION",
    "TimedSamples",
    "TimingStats",
    "TracedLayer",
    "time_interleaved",
    "time_with_retries",
]
