"""The NetAdapt loop: records, schedule, budget, resume from a checkpoint, measurement requests."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from adaptation.netadapt.config import AdaptConfig, SettingsError
from adaptation.netadapt.graph import GroupPruner, NetworkAnalysis
from adaptation.netadapt.loop import (PHASES, AdaptState, BudgetError, Evaluated, FinishRecord,
                                      IterationRecord, Measured, NeedsEvaluation, NeedsMeasurement,
                                      NetAdapt, PendingFinish, PendingIteration, StartRecord,
                                      measure_with, run_with)
from adaptation.netadapt.lut import MemoryLatencyTable
from adaptation.netadapt.resources import (CALL_OVERHEAD_SIGNATURE, Estimate, LatencyTableModel, MacsModel)
from adaptation.netadapt.schedule import iteration_target, pace_target
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.netadapt.steps import NoProposalError, evaluate_proposal
from adaptation.netadapt.training import Cancelled, steps_for_epochs, train_steps
from devices.measure import TimingStats
from devices.measure.local import LocalMeasurer
from devices.measure.tracing import trace_layers

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SPEC = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 8)
MACS_CONFIG = AdaptConfig(metric="macs", budget=0.6, short_term_steps=3, long_term_epochs=0.1,
                          initial_reduction=0.1, decay=0.9, batch_size=64, seed=3)


def briefly_trained(spec: ArchitectureSpec, data, steps: int):
    """``spec``'s network after a few seeded SGD steps, in eval mode."""
    torch.manual_seed(0)
    model = spec.build()
    train_steps(model, data.train, steps, lr=0.05, batch_size=64, seed=0)
    return model.eval()


@pytest.fixture(scope="module")
def trained(digits8):
    """plain_cnn (width 0.5) briefly trained on 8-px digits; shared, never modified."""
    return briefly_trained(SPEC, digits8, 40)


@pytest.fixture(scope="module")
def snapshot(trained):
    return {k: v.clone() for k, v in trained.state_dict().items()}


def _run(engine: NetAdapt) -> list:
    return list(engine.run())


@pytest.fixture(scope="module")
def macs_run(trained, snapshot, digits8):
    """One uninterrupted MACs-driven run: (engine, records, weights of each iteration's model
    taken when its record was yielded)."""
    engine = NetAdapt(trained, SPEC.example_input(), digits8, MACS_CONFIG, MacsModel())
    records, weights_at_yield = [], []
    for record in engine.run():
        records.append(record)
        if isinstance(record, IterationRecord):
            weights_at_yield.append({k: v.clone() for k, v in record.model.state_dict().items()})
    return engine, records, weights_at_yield


def test_it_yields_start_then_iterations_then_finish(macs_run):
    _, records, _ = macs_run
    assert isinstance(records[0], StartRecord)
    assert isinstance(records[-1], FinishRecord)
    iterations = records[1:-1]
    assert len(iterations) >= 3
    assert all(isinstance(r, IterationRecord) for r in iterations)
    assert [r.iteration for r in iterations] == list(range(len(iterations)))
    assert records[-1].iterations == len(iterations)
    assert not any(isinstance(r, NeedsMeasurement) for r in records)  # MACs need no device


def test_it_lowers_the_resource_every_iteration_to_the_scheduled_target(macs_run):
    engine, records, _ = macs_run
    start, iterations = records[0], records[1:-1]
    r0 = start.resource.value
    assert start.budget == pytest.approx(0.6 * r0)
    previous = r0
    for record in iterations:
        expected_target = iteration_target(previous, record.iteration, r0, 0.1, 0.9, start.budget)
        assert record.target == pytest.approx(expected_target)
        assert record.resource.value < previous
        assert record.resource.value <= record.target
        assert record.resource.value == engine.analysis.macs(record.channels)
        previous = record.resource.value
    # Every iteration but the last stopped above the budget, or the loop would have ended.
    assert all(r.resource.value > start.budget for r in iterations[:-1])


def test_it_meets_the_budget_at_the_finish(macs_run):
    engine, records, _ = macs_run
    start, finish = records[0], records[-1]
    assert finish.budget_met is True
    assert finish.budget == start.budget
    assert finish.resource.value <= finish.budget
    assert finish.channels == records[-2].channels
    assert finish.ab_original is None and finish.ab_final is None  # nothing measured for MACs
    assert GroupPruner(finish.model, SPEC.example_input()).channels() == finish.channels
    assert 0.0 <= finish.validation_accuracy <= 1.0


def test_each_iteration_model_has_the_recorded_macs_and_channels(macs_run):
    engine, records, _ = macs_run
    x = SPEC.example_input()
    start = records[0]
    assert start.macs == sum(t.signature.macs() for t in trace_layers(engine.original, x))
    for record in records[1:-1]:
        traced = [t.signature for t in trace_layers(record.model, x)]
        assert sum(s.macs() for s in traced) == record.macs
        assert sum(p.numel() for p in record.model.parameters()) == record.params
        assert GroupPruner(record.model, x).channels() == record.channels
        # One group shrank, by the proposal the record says was chosen.
        chosen = [p for p in record.proposals if p["group"] == record.chosen_group]
        assert len(chosen) == 1 and chosen[0]["holdout_accuracy"] == record.holdout_accuracy


def test_it_leaves_the_original_model_untouched(macs_run, trained, snapshot):
    assert all(torch.equal(snapshot[k], v) for k, v in trained.state_dict().items())


def test_iteration_records_keep_the_weights_they_were_yielded_with(macs_run):
    _, records, weights_at_yield = macs_run
    for record, weights in zip(records[1:-1], weights_at_yield):
        assert all(torch.equal(weights[k], v) for k, v in record.model.state_dict().items())


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(macs_run, trained, digits8, tmp_path):
    _, uninterrupted, _ = macs_run
    x = SPEC.example_input()
    first = NetAdapt(trained, x, digits8, MACS_CONFIG, MacsModel())
    done = 0
    generator = first.run()
    for record in generator:
        if isinstance(record, IterationRecord):
            done += 1
            if done == 2:
                break
    generator.close()
    assert first.state.iteration == 2
    path = tmp_path / "state.pt"
    first.state.save(path)
    del first

    loaded = AdaptState.load(path)
    assert loaded.iteration == 2 and loaded.config == MACS_CONFIG
    assert loaded.channels == uninterrupted[2].channels
    # The checkpoint carries the records of the iterations before the interruption.
    assert [r["channels"] for r in loaded.records] == [r.channels for r in uninterrupted[1:3]]
    resumed = _run(NetAdapt(trained, x, digits8, MACS_CONFIG, MacsModel(), state=loaded))

    assert isinstance(resumed[-1], FinishRecord)
    assert not any(isinstance(r, StartRecord) for r in resumed)
    assert [r.iteration for r in resumed[:-1]] == [r.iteration for r in uninterrupted[3:-1]]
    assert [r.channels for r in resumed[:-1]] == [r.channels for r in uninterrupted[3:-1]]
    expected, actual = uninterrupted[-1], resumed[-1]
    assert actual.channels == expected.channels
    assert actual.iterations == expected.iterations
    assert actual.holdout_accuracy == expected.holdout_accuracy
    assert actual.validation_accuracy == expected.validation_accuracy
    assert actual.resource == expected.resource
    want, got = expected.model.state_dict(), actual.model.state_dict()
    assert list(want) == list(got)
    assert all(torch.equal(want[k], got[k]) for k in want)
    # The resumed engine extends the loaded history: all iterations are recorded once.
    assert [r["iteration"] for r in loaded.records] == list(range(expected.iterations))


# ---------------------------------------------------------------- budget and failures


def test_it_refuses_a_budget_the_original_already_meets(trained, digits8):
    analysis = NetworkAnalysis(trained, SPEC.example_input())
    r0 = analysis.macs(analysis.original_config())
    for budget in (r0 + 1, r0):
        config = AdaptConfig(metric="macs", budget=budget, budget_relative=False)
        engine = NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel(),
                          analysis=analysis)
        with pytest.raises(BudgetError, match="already meets the budget"):
            next(engine.run())


# The paper's schedule (min_proposals 0): its nearest-count fallback is what these tests pin down.
UNREACHABLE = AdaptConfig(metric="macs", budget=0.01, initial_reduction=0.9, short_term_steps=1,
                          long_term_epochs=0, batch_size=64, min_proposals=0)


def test_a_target_no_group_can_meet_still_shrinks_by_the_least_loss_per_unit_saved(trained, digits8):
    config = dataclasses.replace(UNREACHABLE, max_iterations=2)
    records = _run(NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel()))
    start, iterations, finish = records[0], records[1:-1], records[-1]
    assert [r.iteration for r in iterations] == [0, 1] and not finish.budget_met
    previous_resource, previous_accuracy = start.resource.value, start.holdout_accuracy
    for record in iterations:
        assert previous_resource > record.resource.value > record.target  # lower, not on target
        assert set(record.skipped) == set(record.channels)  # no group met the target
        assert len(record.proposals) >= 2
        ratios = {p["group"]: (previous_accuracy - p["holdout_accuracy"]) / (previous_resource - p["resource"])
                  for p in record.proposals}
        assert ratios[record.chosen_group] == min(ratios.values())
        previous_resource, previous_accuracy = record.resource.value, record.holdout_accuracy


def test_min_proposals_gives_every_iteration_a_choice_and_meets_its_own_target(trained, digits8):
    """With a schedule no group can follow, min_proposals asks each iteration for the cut that
    several groups can make (no nearest-count fallback): every record meets its target."""
    config = dataclasses.replace(UNREACHABLE, max_iterations=2, min_proposals=3)
    records = _run(NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel()))
    start, iterations = records[0], records[1:-1]
    previous = start.resource.value
    for record in iterations:
        assert record.resource.value <= record.target < previous
        assert len(record.proposals) >= 3
        assert all(p["resource"] <= record.target for p in record.proposals)
        best = max(record.proposals, key=lambda p: (p["holdout_accuracy"], -p["resource"]))
        assert record.chosen_group == best["group"]  # selection by accuracy, as configured
        previous = record.resource.value


def test_keep_pace_asks_each_iteration_for_what_the_budget_still_needs_over_the_iterations_left(
        trained, digits8):
    """Where the fewest-proposals rule would cut less than the budget needs at an even pace over
    the iterations left, keep_pace asks for the pace, or the best one group can reach."""
    config = dataclasses.replace(UNREACHABLE, max_iterations=2, min_proposals=3)
    free = _run(NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel()))
    paced = _run(NetAdapt(trained, SPEC.example_input(), digits8,
                          dataclasses.replace(config, keep_pace=True), MacsModel()))
    start, first = paced[0], paced[1]
    pace = pace_target(start.resource.value, start.budget, config.max_iterations)
    best_one = min(p["resource"] for p in first.proposals)
    assert first.target == pytest.approx(max(pace, best_one))
    assert first.target < free[1].target  # a bigger cut than the choice of three alone
    assert first.resource.value <= first.target


def test_selection_by_holdout_loss_keeps_the_proposal_with_the_lowest_holdout_cross_entropy(
        trained, digits8):
    config = dataclasses.replace(UNREACHABLE, max_iterations=2, min_proposals=3,
                                 selection="holdout_loss")
    records = _run(NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel()))
    for record in records[1:-1]:
        assert all(p["holdout_loss"] > 0 for p in record.proposals)
        best = min(record.proposals, key=lambda p: (p["holdout_loss"], p["resource"]))
        assert record.chosen_group == best["group"]


def test_it_raises_no_proposal_error_once_no_group_can_shrink_any_further(trained, digits8):
    engine = NetAdapt(trained, SPEC.example_input(), digits8, UNREACHABLE, MacsModel())
    records = []
    with pytest.raises(NoProposalError, match=r"iteration \d+: no group can meet the target .* or shrink "
                                              r"any further") as info:
        for record in engine.run():
            records.append(record)
    assert isinstance(records[0], StartRecord) and len(records) > 2  # it shrank until it could not
    assert set(engine.state.channels.values()) == {8}  # every group at the minimum step
    # The message says why each group was left out.
    assert "features.0.0: already at the minimum of 8 channels" in str(info.value)


class NothingSaves(MacsModel):
    """A metric no cut changes (a whole-measured staircase, exactly): every network costs 1."""

    def estimate(self, signatures):
        return Estimate(1.0, 1.0)


def test_the_no_proposal_error_tells_groups_that_save_nothing_from_groups_at_their_minimum(trained, digits8):
    engine = NetAdapt(trained, SPEC.example_input(), digits8, UNREACHABLE, NothingSaves())
    with pytest.raises(NoProposalError, match=r"iteration 0: no group can meet the target .* and no "
                                              r"smaller count of any group is estimated below the "
                                              r"current network") as info:
        list(engine.run())
    assert "shrink any further" not in str(info.value)


@pytest.mark.parametrize("kwargs, word", [
    ({"budget": -1}, "budget"),
    ({"budget": 0}, "budget"),
    ({"budget": 1.5}, "budget"),
    ({"metric": "flops"}, "metric"),
    ({"selection": "random"}, "selection"),
    ({"decay": 0}, "decay"),
    ({"initial_reduction": 1.0}, "initial_reduction"),
])
def test_config_validation_names_the_bad_setting(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AdaptConfig(**kwargs)


def test_config_accepts_an_absolute_budget_above_one():
    assert AdaptConfig(budget=25.0, budget_relative=False).budget == 25.0
    assert AdaptConfig(metric="macs", budget=1e6, budget_relative=False).budget == 1e6


@pytest.mark.parametrize("kwargs", [
    {"short_term_steps": 10**30}, {"short_term_steps": 20_001}, {"short_term_steps": -1},
    {"short_term_steps": 100.0}, {"long_term_epochs": 1e9}, {"long_term_epochs": float("nan")},
    {"max_iterations": 10**9}, {"max_iterations": 0}, {"channel_step": 10**9}, {"channel_step": True},
    {"batch_size": 100_000}, {"short_term_lr": 0}, {"long_term_lr": float("inf")}, {"momentum": 1},
    {"weight_decay": -1e-4}, {"seed": -1}, {"seed": 2**40},
    {"budget": 1e9, "budget_relative": False},                       # ms
    {"metric": "params", "budget": 1e13, "budget_relative": False},  # parameters
])
def test_config_holds_every_setting_to_its_range(kwargs):
    with pytest.raises(SettingsError) as info:
        AdaptConfig(**kwargs)
    field = next(name for name in kwargs if name not in ("metric", "budget_relative"))
    assert list(info.value.problems) == [field]  # named structurally, for the form and the API
    assert info.value.problems[field].startswith(f"{field} must be ")


def test_config_accepts_the_ends_of_its_closed_ranges():
    config = AdaptConfig(short_term_steps=20_000, long_term_epochs=200, max_iterations=200, channel_step=256,
                         batch_size=4096, decay=1, seed=2**31 - 1, weight_decay=1)
    assert (config.short_term_steps, config.max_iterations, config.channel_step) == (20_000, 200, 256)
    assert AdaptConfig(short_term_steps=0, long_term_epochs=0).short_term_steps == 0  # 0 skips a fine-tune


def test_config_lists_every_problem_at_once():
    with pytest.raises(SettingsError) as info:
        AdaptConfig(max_iterations=0, channel_step=0, selection="random")
    assert set(info.value.problems) == {"max_iterations", "channel_step", "selection"}
    assert str(info.value).count("; ") == 2


def test_the_engine_passes_its_hook_to_every_fine_tune_and_a_cancel_stops_it(trained, digits8):
    totals: list[int] = []
    config = AdaptConfig(metric="macs", budget=0.6, short_term_steps=30, long_term_epochs=200,
                         initial_reduction=0.1, decay=0.9, batch_size=64, max_iterations=1)
    long_term = steps_for_epochs(digits8.train, 200, 64)

    def stop_in_the_long_term_fine_tune(done: int, total: int) -> None:
        totals.append(total)
        if total == long_term:
            raise Cancelled("stop")

    engine = NetAdapt(trained, SPEC.example_input(), digits8, config, MacsModel(),
                      hook=stop_in_the_long_term_fine_tune)
    records = []
    with pytest.raises(Cancelled) as info:
        for record in engine.run():
            records.append(record)
    assert [type(r) for r in records] == [StartRecord, IterationRecord]  # no finish
    proposals = len(records[1].proposals)
    assert totals[:2 * proposals] == [30, 30] * proposals  # each short-term fine-tune: 0, 25
    assert info.value.steps_done == 0 and info.value.steps_total == long_term > 30


def test_it_rejects_a_resource_model_of_another_metric(trained, digits8):
    with pytest.raises(ValueError, match="latency"):
        NetAdapt(trained, SPEC.example_input(), digits8, AdaptConfig(metric="latency"), MacsModel())


# ---------------------------------------------------------------- latency-driven runs

LATENCY_CONFIG = AdaptConfig(metric="latency", budget=0.9, initial_reduction=0.03, decay=0.9,
                             short_term_steps=2, long_term_epochs=0, batch_size=64,
                             max_iterations=1)
#: Width 2 makes every layer take microseconds, not fractions of one: at width 0.5 the whole
#: network took 0.015 ms and timing noise could make no group meet a 3% cut (a CI failure).
WIDE_SPEC = ArchitectureSpec("plain_cnn", 10, 1, 2.0, 8)


@pytest.fixture(scope="module")
def wide(digits8):
    """plain_cnn at width 2 on 8-px digits, briefly trained; shared, never modified."""
    return briefly_trained(WIDE_SPEC, digits8, 10)


def test_a_latency_run_asks_for_every_measurement_it_needs(wide, digits8, light_protocol):
    measurer = LocalMeasurer("onnxruntime", light_protocol)
    table = MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, LATENCY_CONFIG,
                      LatencyTableModel(table))
    generator = engine.run()

    first = next(generator)
    assert isinstance(first, NeedsMeasurement)
    assert first.networks == []
    assert first.signatures
    expected = {CALL_OVERHEAD_SIGNATURE, *engine.analysis.signatures(engine.analysis.original_config())}
    assert set(first.signatures) == expected
    table.add(measurer.measure_signatures(first.signatures))

    requests, answers, records = [first], {}, []
    item = generator.send(Measured())
    while True:
        if isinstance(item, NeedsMeasurement):
            requests.append(item)
            assert not set(item.signatures) & set(table.entries)  # only what is missing
            answers[len(requests) - 1] = answer = serve(item, measurer, table)
        else:
            records.append(item)
            answer = None
        try:
            item = generator.send(answer)
        except StopIteration:
            break

    network_requests = [[n.label for n in r.networks] for r in requests if r.networks]
    assert network_requests == [["original"], ["iteration 0"], ["original", "final"]]
    start, iteration, finish = records
    assert isinstance(start, StartRecord)
    assert start.measured is answers[1].networks[0]
    # One calibration point: the estimate of the original is scaled onto its measurement.
    assert start.resource.value == pytest.approx(start.measured.min_ms, rel=1e-9)
    assert isinstance(iteration, IterationRecord)
    assert isinstance(iteration.measured, TimingStats)
    assert iteration.measured is answers[len(requests) - 2].networks[0]
    assert iteration.measured.n == light_protocol.rounds * light_protocol.runs_per_round
    assert len(engine.resource.calibration.points) == 2
    assert isinstance(finish, FinishRecord)
    assert finish.ab_original is answers[len(requests) - 1].networks[0]
    assert finish.ab_final is answers[len(requests) - 1].networks[1]
    assert finish.measured_ratio == pytest.approx(finish.ab_final.min_ms / finish.ab_original.min_ms)


def test_a_latency_run_driven_by_run_with(wide, digits8, light_protocol):
    measurer = LocalMeasurer("onnxruntime", light_protocol)
    table = MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, LATENCY_CONFIG,
                      LatencyTableModel(table))
    records = list(run_with(engine, measurer))
    assert [type(r) for r in records] == [StartRecord, IterationRecord, FinishRecord]
    start, iteration, finish = records
    assert isinstance(start.measured, TimingStats)
    assert isinstance(iteration.measured, TimingStats)
    assert isinstance(finish.ab_original, TimingStats) and isinstance(finish.ab_final, TimingStats)
    # The table now holds every layer of the original and of the chosen network.
    assert set(engine.analysis.signatures(iteration.channels)) <= set(table.entries)
    assert CALL_OVERHEAD_SIGNATURE in table.entries
    # The proposal was chosen on its estimate, which met the iteration's target.
    (chosen,) = [p for p in iteration.proposals if p["group"] == iteration.chosen_group]
    assert chosen["resource"] <= iteration.target < start.resource.value
    assert iteration.channels != engine.analysis.original_config()


def test_it_fails_loudly_when_the_caller_does_not_measure(wide, digits8, light_protocol):
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, LATENCY_CONFIG,
                      LatencyTableModel(MemoryLatencyTable()))
    generator = engine.run()
    assert isinstance(next(generator), NeedsMeasurement)
    with pytest.raises(RuntimeError, match="still missing"):
        generator.send(Measured())  # the table was not filled

    table = MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, LATENCY_CONFIG, LatencyTableModel(table))
    generator = engine.run()
    request = next(generator)
    table.add(LocalMeasurer("onnxruntime", light_protocol).measure_signatures(request.signatures))
    request = generator.send(Measured())
    assert [n.label for n in request.networks] == ["original"]
    with pytest.raises(RuntimeError, match="'original' was not measured"):
        generator.send(Measured())  # an answer without the network's timing

    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, LATENCY_CONFIG, LatencyTableModel(table))
    generator = engine.run()
    assert [n.label for n in next(generator).networks] == ["original"]
    with pytest.raises(RuntimeError, match="answered NoneType, not Measured"):
        next(generator)  # no answer at all


# ---------------------------------------------------------------- delegated and parked steps


def test_delegated_evaluation_asks_for_every_proposal_and_matches_the_local_run(macs_run, trained, digits8):
    _, uninterrupted, _ = macs_run
    engine = NetAdapt(trained, SPEC.example_input(), digits8, MACS_CONFIG, MacsModel(),
                      delegate_evaluation=True)
    records, asked = [], []
    generator, answer = engine.run(), None
    while True:
        try:
            item = generator.send(answer)
        except StopIteration:
            break
        answer = None
        if isinstance(item, NeedsEvaluation):
            asked.append(item)
            # The caller (a Celery chord in the web app) evaluates each proposal on its own.
            answer = Evaluated.of([evaluate_proposal(item.model, SPEC.example_input(), proposal,
                                                     digits8, MACS_CONFIG, item.iteration,
                                                     loss_fn=engine.loss_fn)
                                   for proposal in item.proposals])
            continue
        records.append(item)
    iterations = [r for r in records if isinstance(r, IterationRecord)]
    assert [a.iteration for a in asked] == [r.iteration for r in iterations]
    assert [r.channels for r in iterations] == [r.channels for r in uninterrupted[1:-1]]
    untimed = lambda records: [[{k: v for k, v in p.items() if not k.endswith("_s")}
                                for p in r.proposals] for r in records]
    assert untimed(iterations) == untimed(uninterrupted[1:-1])  # same accuracies, same choices


def test_unanswered_evaluation_is_an_error(trained, digits8):
    engine = NetAdapt(trained, SPEC.example_input(), digits8, MACS_CONFIG, MacsModel(),
                      delegate_evaluation=True)
    generator = engine.run()
    assert isinstance(next(generator), StartRecord)
    request = next(generator)
    assert isinstance(request, NeedsEvaluation)
    with pytest.raises(RuntimeError, match="did not evaluate every proposal"):
        generator.send(Evaluated([], lambda k: request.model))


def serve(request: NeedsMeasurement, measurer, table) -> Measured:
    """Answer a measurement request as a synchronous caller does: layers into ``table``, the
    networks' timings as the answer."""
    return measure_with(measurer, table, request)


def _drive_until(engine: NetAdapt, measurer, table, reason_prefix: str) -> tuple[list, NeedsMeasurement]:
    """Drive ``engine``, answering its requests, until it asks for a network measurement whose
    reason starts with ``reason_prefix``; the records so far and that request (unanswered)."""
    records, generator, answer = [], engine.run(), None
    while True:
        try:
            item = generator.send(answer)
        except StopIteration:
            raise AssertionError(f"the run never asked to measure '{reason_prefix}'") from None
        answer = None
        if isinstance(item, NeedsMeasurement):
            if item.networks and item.reason.startswith(reason_prefix):
                return records, item
            answer = serve(item, measurer, table)
            continue
        records.append(item)


def _park_at(engine: NetAdapt, measurer, table, reason_prefix: str, tmp_path) -> tuple[list, AdaptState]:
    """Drive ``engine`` until it asks for a network measurement whose reason starts with
    ``reason_prefix``; return the records so far and the checkpoint a runner would save there."""
    records, _ = _drive_until(engine, measurer, table, reason_prefix)
    engine.state.save(tmp_path / "parked.pt")
    return records, AdaptState.load(tmp_path / "parked.pt")


PARKED_CONFIG = AdaptConfig(metric="latency", budget=0.9, initial_reduction=0.03, decay=0.9,
                            short_term_steps=2, long_term_epochs=0.05, batch_size=64, max_iterations=1)


def test_a_run_parked_for_its_iteration_measurement_resumes_without_fine_tuning_again(
        wide, digits8, light_protocol, tmp_path):
    measurer, table = LocalMeasurer("onnxruntime", light_protocol), MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG, LatencyTableModel(table))
    _, state = _park_at(engine, measurer, table, "iteration 0 network", tmp_path)
    assert isinstance(state.pending, PendingIteration) and state.iteration == 0

    resumed = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG,
                       LatencyTableModel(table), state=state)
    generator = resumed.run()
    first = next(generator)
    # The fine-tuned proposals were kept: the resumed run asks for the measurement straight away.
    assert isinstance(first, NeedsMeasurement) and first.reason == "iteration 0 network"
    chosen = state.pending.results[state.pending.chosen]
    assert first.networks[0].channels == chosen.proposal.config
    parked_weights = state.pending.model_state
    assert all(torch.equal(parked_weights[k], v) for k, v in first.networks[0].model.state_dict().items())
    record = generator.send(serve(first, measurer, table))
    assert isinstance(record, IterationRecord)
    assert record.channels == chosen.proposal.config
    assert record.holdout_accuracy == chosen.holdout_accuracy
    assert resumed.state.pending is None and resumed.state.iteration == 1


def test_a_run_parked_for_its_ab_check_keeps_its_long_term_fine_tune(wide, digits8, light_protocol, tmp_path):
    measurer, table = LocalMeasurer("onnxruntime", light_protocol), MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG, LatencyTableModel(table))
    _, state = _park_at(engine, measurer, table, "A/B confirmation", tmp_path)
    assert isinstance(state.pending, PendingFinish)

    resumed = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG,
                       LatencyTableModel(table), state=state)
    generator = resumed.run()
    request = next(generator)
    assert isinstance(request, NeedsMeasurement) and request.reason.startswith("A/B")
    final = request.networks[1].model
    assert all(torch.equal(state.pending.model_state[k], v) for k, v in final.state_dict().items())
    finish = generator.send(serve(request, measurer, table))
    assert isinstance(finish, FinishRecord)
    assert finish.long_term_s == state.pending.long_term_s > 0


# ---------------------------------------------------------------- where an iteration's time goes


def assert_phases_add_up(record: dict) -> None:
    """Every phase is there, none is negative, and together they are the iteration's wall time."""
    phases = record["phases_s"]
    assert tuple(phases) == PHASES
    assert all(seconds >= 0 for seconds in phases.values()), phases
    assert sum(phases.values()) == pytest.approx(record["wall_s"], rel=1e-9, abs=1e-9)


def test_every_iteration_accounts_for_its_wall_time_by_phase(macs_run):
    engine, records, _ = macs_run
    iterations = [r for r in records if isinstance(r, IterationRecord)]
    for record in iterations:
        stored = record.to_dict()
        assert_phases_add_up(stored)
        # The engine fine-tuned and scored its proposals itself, and never waited.
        assert stored["phases_s"]["finetune_s"] == pytest.approx(
            sum(p["finetune_s"] for p in stored["proposals"]))
        assert stored["phases_s"]["finetune_s"] > 0 and stored["phases_s"]["evaluate_s"] > 0
        assert stored["phases_s"]["wait_measure_s"] == stored["phases_s"]["wait_proposals_s"] == 0
    assert engine.state.clock is None  # no iteration in progress


def test_a_wait_between_park_and_resume_counts_for_the_iteration_in_progress(
        wide, digits8, light_protocol, tmp_path):
    measurer, table = LocalMeasurer("onnxruntime", light_protocol), MemoryLatencyTable()
    engine = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG, LatencyTableModel(table))
    _drive_until(engine, measurer, table, "iteration 0 network")
    finetuned = engine.state.clock["phases_s"]["finetune_s"]
    engine.note_parked("measurement", at=1000.0)  # what a runner does before saving and stopping
    engine.state.save(tmp_path / "parked.pt")

    resumed = NetAdapt(wide, WIDE_SPEC.example_input(), digits8, PARKED_CONFIG, LatencyTableModel(table),
                       state=AdaptState.load(tmp_path / "parked.pt"))
    resumed.note_resumed(at=1012.5)
    resumed.note_resumed(at=2000.0)  # nothing parked any more: books nothing
    generator = resumed.run()
    request = next(generator)
    record = generator.send(serve(request, measurer, table)).to_dict()
    assert_phases_add_up(record)
    assert record["phases_s"]["wait_measure_s"] == pytest.approx(12.5)
    assert record["phases_s"]["finetune_s"] == finetuned > 0  # booked before the park, kept
    assert record["wall_s"] >= 12.5 + finetuned
