"""Checkpoints written before ``AdaptState.pending`` was typed still resume.

``tests/fixtures/legacy_checkpoint_{iteration,finish}.pt`` were written by the engine as it was
before the change (``pending`` a dict switched on ``"phase"``): a latency run of plain_cnn (width
0.25) on 8-px digits, parked for the chosen network's measurement of iteration 0 and for the A/B
check. Each file holds {"original": the original's weights, "table": the look-up table so far,
"state": ``AdaptState.to_dict()``}; the state was parked (``note_parked``) at epoch second 1000.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.loop import (AdaptState, FinishRecord, IterationRecord, Measured, NeedsMeasurement,
                                      NetAdapt, PendingFinish, PendingIteration, measure_with, serve)
from adaptation.netadapt.lut import MemoryLatencyTable
from adaptation.netadapt.resources import LatencyTableModel
from adaptation.netadapt.spec import ArchitectureSpec
from devices.measure.local import LocalMeasurer

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FIXTURES = Path(__file__).parent / "fixtures"
SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.25, 8)


def legacy(name: str, digits8) -> tuple[dict, NetAdapt, MemoryLatencyTable]:
    saved = torch.load(FIXTURES / f"legacy_checkpoint_{name}.pt", weights_only=True)
    original = SPEC.build()
    original.load_state_dict(saved["original"])
    table = MemoryLatencyTable.from_dict(saved["table"])
    state = AdaptState.from_dict(saved["state"])
    engine = NetAdapt(original.eval(), SPEC.example_input(), digits8, state.config,
                      LatencyTableModel(table), state=state)
    return saved["state"], engine, table


def test_a_legacy_checkpoint_parked_for_its_iteration_measurement_resumes(digits8, light_protocol):
    raw, engine, table = legacy("iteration", digits8)
    pending = raw["pending"]
    chosen = pending["results"][pending["chosen"]]
    assert isinstance(engine.state.config, AdaptConfig)
    assert isinstance(engine.state.pending, PendingIteration)
    written = engine.state.to_dict()["pending"]  # what a park now writes: the same format
    assert {k: v for k, v in written.items() if k != "model_state"} == {
        k: v for k, v in pending.items() if k != "model_state"}
    engine.note_resumed(at=1010.0)
    generator = engine.run()
    request = next(generator)
    # The fine-tuned proposals were kept: the measurement of the chosen network comes first.
    assert isinstance(request, NeedsMeasurement) and request.reason == "iteration 0 network"
    assert request.networks[0].channels == chosen["config"]
    weights = request.networks[0].model.state_dict()
    assert all(torch.equal(pending["model_state"][k], v) for k, v in weights.items())
    measurer = LocalMeasurer("onnxruntime", light_protocol)
    record = generator.send(measure_with(measurer, table, request))
    assert isinstance(record, IterationRecord)
    assert record.channels == chosen["config"]
    assert record.holdout_accuracy == chosen["holdout_accuracy"]
    assert record.phases_s["wait_measure_s"] == pytest.approx(10.0)
    assert record.phases_s["finetune_s"] == pytest.approx(pending["phases_s"]["finetune_s"])
    assert engine.state.pending is None and engine.state.iteration == 1
    # The run goes on to its finish, and its checkpoints keep the format they were read in.
    assert AdaptState.from_dict(engine.state.to_dict()).to_dict().keys() == raw.keys()
    records = list(serve(generator, lambda item: measure_with(measurer, table, item)))
    assert isinstance(records[-1], FinishRecord) and records[-1].iterations == 1


def test_a_legacy_checkpoint_parked_for_its_ab_check_keeps_its_long_term_fine_tune(
        digits8, light_protocol):
    raw, engine, table = legacy("finish", digits8)
    pending = raw["pending"]
    assert isinstance(engine.state.pending, PendingFinish)
    assert engine.state.to_dict()["pending"] == pending  # written back as it was read
    generator = engine.run()
    request = next(generator)
    assert isinstance(request, NeedsMeasurement) and request.reason.startswith("A/B")
    final = request.networks[1].model
    assert all(torch.equal(pending["model_state"][k], v) for k, v in final.state_dict().items())
    finish = generator.send(measure_with(LocalMeasurer("onnxruntime", light_protocol), table, request))
    assert isinstance(finish, FinishRecord)
    assert finish.long_term_s == pending["long_term_s"] > 0
    assert finish.channels == raw["channels"]
