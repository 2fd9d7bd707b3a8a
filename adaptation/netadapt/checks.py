"""Two checks the engine's entry points share: what an exception says, in one line, and whether
an ONNX file computes what the PyTorch network computes.

Pre-flight (``adaptation.preflight``), the ONNX import (``onnx_import``), the exports (``export``)
and the job runner's error reports all use these, so a message is summarised and a conversion
judged the same way everywhere.
"""
from __future__ import annotations

import numpy as np

#: Largest difference allowed between ONNX Runtime's and PyTorch's outputs, relative to the
#: largest output when that exceeds 1 (float32 kernels differ in summation order, not more).
ONNX_TOLERANCE = 1e-4
MAX_SUMMARY = 300  # characters of an exception's message shown to a user

# torch.load(weights_only=True) prefixes its one useful line with paragraphs of advice.
_UNPICKLER_MARK = "WeightsUnpickler error:"


def error_summary(error: BaseException) -> str:
    """The informative first line of an exception's message, at most ``MAX_SUMMARY`` characters;
    "" when the message is empty (callers name the exception's type instead)."""
    text = str(error)
    if _UNPICKLER_MARK in text:
        text = text.split(_UNPICKLER_MARK, 1)[1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= MAX_SUMMARY else line[:MAX_SUMMARY - 1] + "…"


def onnx_difference(reference: np.ndarray, output: np.ndarray,
                    tolerance: float = ONNX_TOLERANCE) -> tuple[float, float]:
    """(largest absolute difference, largest allowed) between ``reference`` (PyTorch's or ONNX
    Runtime's output) and ``output`` of the same shape: the allowance is ``tolerance`` times the
    largest reference value when that exceeds 1. A non-finite reference allows nothing."""
    if not output.size:
        return 0.0, 0.0
    error = float(np.max(np.abs(reference - output)))
    if not np.isfinite(reference).all():
        return error if np.isfinite(error) else float("inf"), -1.0
    scale = max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)
    return error, tolerance * scale


def onnx_matches(reference: np.ndarray, output: np.ndarray, tolerance: float = ONNX_TOLERANCE) -> bool:
    """Whether ``output`` reproduces ``reference`` within ``tolerance`` (see ``onnx_difference``)."""
    error, allowed = onnx_difference(reference, output, tolerance)
    return error <= allowed
