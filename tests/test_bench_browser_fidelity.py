"""The pure helpers of bench/browser_fidelity.py: the request zip it hands the phone page, the
probe-corrected sum, the overhead figures and the leave-one-out rows (the benchmark itself runs
Chromium for minutes and is not run here)."""
from __future__ import annotations

import io
import zipfile

import numpy as np
import onnxruntime
import pytest

from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE
from bench.browser_fidelity import loo_rows, overhead_figures, per_minute, probe_corrected_ms, request_zip
from devices.agent.client import read_manifest
from devices.measure.builders import signature_input_shape
from devices.measure.signature import LayerSignature

CONV = LayerSignature("conv", 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1, (8, 8), 1, False, "bn+relu")
DEPTHWISE = LayerSignature("conv", 16, 16, (3, 3), (2, 2), (1, 1), (1, 1), 16, (8, 8), 1, False, "bn+relu")


def test_the_request_zip_is_what_an_agent_reads_and_its_layers_run():
    data = request_zip([CALL_OVERHEAD_SIGNATURE, CONV, DEPTHWISE], [b"net0", b"net1"], [1, 3, 32, 32], request=7)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        layers, networks = read_manifest(archive, 7)
        assert [(m.index, m.input_shape) for m in layers] == [
            (i, signature_input_shape(s)) for i, s in enumerate([CALL_OVERHEAD_SIGNATURE, CONV, DEPTHWISE])]
        assert [(n.index, n.input_shape, archive.read(n.file)) for n in networks] == [
            (0, (1, 3, 32, 32), b"net0"), (1, (1, 3, 32, 32), b"net1")]
        session = onnxruntime.InferenceSession(archive.read(layers[2].file), providers=["CPUExecutionProvider"])
        [out] = session.run(None, {"input": np.zeros((1, 16, 8, 8), np.float32)})
        assert out.shape == (1, 16, 4, 4)


def test_the_probe_corrected_sum_removes_each_shapes_own_probe():
    minimum = {CALL_OVERHEAD_SIGNATURE: 0.01, CONV: 0.05, DEPTHWISE: 0.02}
    probe = {CALL_OVERHEAD_SIGNATURE: 0.01, CONV: 0.015, DEPTHWISE: 0.03}
    # 0.01 once, 0.05 - 0.015, and the depthwise below its probe counts nothing
    assert probe_corrected_ms([CONV, DEPTHWISE], minimum, probe) == pytest.approx(0.01 + 0.035)


def _entry(min_ms: float, overhead_ms: float) -> dict:
    share = overhead_ms / min_ms
    return {"stats": {"min_ms": min_ms}, "overhead_ms": overhead_ms, "overhead_share": share, "drowns": share > 0.5}


def test_overhead_figures_count_drowned_and_sub_tick_entries():
    entries = [_entry(0.02, 0.015), _entry(0.05, 0.01), _entry(0.2, 0.01), _entry(0.04, 0.03)]
    figures = overhead_figures(entries, resolution_ms=0.1)
    assert figures["drown_share"] == figures["worker_drowns_share"] == 0.5
    assert figures["under_one_tick_share"] == 0.75
    assert figures["probe_min_ms_range"] == [0.01, 0.03]
    assert figures["overhead_share_quartiles"][1] == pytest.approx(np.median([0.75, 0.2, 0.05, 0.75]))


def test_leave_one_out_rows_are_exact_on_an_affine_relation_and_skip_the_pairs():
    raw = np.array([1.0, 99.0, 2.0, 99.0, 3.0, 99.0, 5.0, 99.0])  # odd entries: one-step pairs, left out
    measured = 0.5 * raw + 0.1
    rows = loo_rows(raw, measured)
    assert [r["raw_ms"] for r in rows] == [1.0, 2.0, 3.0, 5.0]
    assert all(abs(r["error"]) < 1e-9 for r in rows)
    off = measured.copy()
    off[4] *= 1.2  # the third pruning measured 20% slower than the line through the others
    assert loo_rows(raw, off)[2]["error"] == pytest.approx(1 / 1.2 - 1)


def test_per_minute():
    assert per_minute(300, 60.0) == 300
    assert per_minute(10, 0.0) == float("inf")
