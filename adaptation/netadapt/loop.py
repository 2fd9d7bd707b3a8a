"""The NetAdapt loop as a generator: one record per iteration, measurement asked of the caller.

``NetAdapt(...).run()`` is a conversation: it yields requests and records, and the caller answers
each request by sending the answer into the generator (``generator.send(answer)``; ``serve`` does
it for a caller that answers at once). Records need no answer (``next``).
- ``NeedsMeasurement`` when look-up-table entries or whole networks must be measured; the caller
  measures them (locally, or through a device queue), puts the layers' entries into the look-up
  table the resource model reads, and answers ``Measured`` (one ``TimingStats`` per network
  asked for). The loop never blocks on a device.
- ``NeedsEvaluation`` (only with ``delegate_evaluation=True``) with an iteration's proposals; the
  caller fine-tunes and scores them (e.g. as parallel tasks) and answers ``Evaluated``.

A caller that cannot answer a request at once (a device is busy or offline, proposals run on
other workers) saves ``engine.state`` and stops; a new engine built from that state asks again
for exactly what is missing. The state holds, besides the last finished iteration, the step in
progress when that step is expensive to redo: the fine-tuned proposals of an iteration waiting
for its network's measurement, and the long-term fine-tuned model waiting for the A/B check.
- ``StartRecord`` once, with the original network's numbers and any warning.
- ``IterationRecord`` after every iteration; ``engine.state`` is then a complete checkpoint.
- ``FinishRecord`` after the long-term fine-tune and the A/B confirmation of the budget.

A relative latency budget is checked side by side too: when the estimate says it is met, the
original and the current network are measured in one session before the run stops
(``_budget_moved``), since the budget itself came from one measurement of the original.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterator, Union

import torch
import torch.nn as nn

from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats

from .config import AdaptConfig
from .data import DatasetSplits
from .graph import ChannelConfig, NetworkAnalysis, rebuild_pruned
from .lut import AffineCalibration
from .resources import Estimate, ResourceModel, TableGuidedWholeModel, WholeNetworkLatencyModel
from .schedule import iteration_target, pace_target, unreachable_warning
from .table_check import parted, parted_message, predictions
from .steps import (IterationPlan, NoProposalError, Proposal, ProposalResult, evaluate_proposal,
                    plan_configs, plan_iteration, plan_signatures, select_proposal)
from .training import DeviceLike, TrainingHook, accuracy, resolve_device, steps_for_epochs, train_steps
from .bn_recalibration import recalibrate_for_scoring
from .distillation import fine_tune_loss
from .steps import require_loss
from .training import TrainingLoss


#: Where an iteration's wall time goes (``IterationRecord.phases_s``), in display order; the
#: values add up to ``IterationRecord.wall_s``. ``finetune_s`` and ``evaluate_s`` count only
#: fine-tunes run by the engine itself: proposals delegated to other workers run while the job
#: waits for them (``wait_proposals_s``; their own times stay in ``proposals``).
#: ``wait_measure_s``: parked behind measurement requests on the device's queue; ``overhead_s``:
#: the rest (loading inputs on resume, checkpoints, selection, work redone after a park).
PHASES = ("measure_table_s", "plan_s", "finetune_s", "evaluate_s", "measure_network_s",
          "wait_measure_s", "wait_proposals_s", "overhead_s")
#: The phase of the time a caller spent parked, by ``NetAdapt.note_parked``'s ``kind``.
WAIT_PHASES = {"measurement": "wait_measure_s", "evaluation": "wait_proposals_s"}


class BudgetError(ValueError):
    """The budget cannot be used: already met by the original, or not positive."""


@dataclass(frozen=True)
class NetworkRequest:
    """A whole network to measure. ``channels`` is its channel configuration (latency depends on
    the architecture only, so a measurer may rebuild it)."""

    label: str
    model: nn.Module
    channels: ChannelConfig


@dataclass(frozen=True)
class NeedsMeasurement:
    """Measurements the loop waits for; answer with ``Measured``. Networks listed together are
    measured interleaved."""

    reason: str
    example_input: torch.Tensor
    signatures: list[LayerSignature] = field(default_factory=list)
    networks: list[NetworkRequest] = field(default_factory=list)


@dataclass(frozen=True)
class Measured:
    """The answer to ``NeedsMeasurement``: one timing per network asked for, in the same order.
    The layers' entries are not in it: they go into the look-up table the resource model reads
    (the caller's own, or a device's table filled by the device)."""

    networks: list[TimingStats] = field(default_factory=list)


@dataclass(frozen=True)
class NeedsEvaluation:
    """An iteration's proposals, to fine-tune and score from ``model`` (the current network);
    answer with ``Evaluated``."""

    iteration: int
    model: nn.Module
    proposals: list[Proposal]


@dataclass(frozen=True)
class Evaluated:
    """The answer to ``NeedsEvaluation``: ``results[k]`` is proposal k after its short-term
    fine-tune (``steps.evaluate_proposal``), and ``load(k)`` builds its fine-tuned network (only
    the chosen proposal's is asked for, so a caller that keeps the networks elsewhere, in files
    of other workers, builds just that one)."""

    results: list[ProposalResult]
    load: Callable[[int], nn.Module]

    @classmethod
    def of(cls, evaluated: list[tuple[ProposalResult, nn.Module]]) -> "Evaluated":
        """The answer of a caller that holds every fine-tuned network in memory."""
        return cls([result for result, _ in evaluated], lambda k: evaluated[k][1])


#: What ``NetAdapt.run`` yields, what it expects back for each request.
Request = Union[NeedsMeasurement, NeedsEvaluation]
Answer = Union[Measured, Evaluated]


@dataclass
class StartRecord:
    resource: Estimate
    measured: TimingStats | None
    budget: float
    holdout_accuracy: float
    validation_accuracy: float
    macs: int
    params: int
    warnings: list[str]


@dataclass
class IterationRecord:
    iteration: int
    target: float
    chosen_group: str
    channels: ChannelConfig
    resource: Estimate           # estimate of the chosen network after recalibration
    measured: TimingStats | None  # whole-network measurement of the chosen network
    macs: int
    params: int
    holdout_accuracy: float
    proposals: list[dict]
    skipped: dict[str, str]
    phases_s: dict[str, float]
    calibration: tuple[float, float]
    model: nn.Module = field(repr=False)
    wall_s: float = 0.0  # from the iteration's start to this record, parks and resumes included
    #: How the proposals' latency was known: "table" (calibrated look-up table), "whole"
    #: (candidates measured whole), None for an exact metric.
    latency_estimate: str | None = None
    notes: list[str] = field(default_factory=list)  # what the caller should tell (a job's log)

    def to_dict(self) -> dict:
        return {"iteration": self.iteration, "target": self.target, "chosen_group": self.chosen_group,
                "channels": dict(self.channels), "resource": self.resource.value,
                "resource_raw": self.resource.raw,
                "measured": self.measured.to_dict() if self.measured else None,
                "macs": self.macs, "params": self.params, "holdout_accuracy": self.holdout_accuracy,
                "proposals": self.proposals, "skipped": self.skipped, "phases_s": self.phases_s,
                "wall_s": self.wall_s, "calibration": list(self.calibration),
                "latency_estimate": self.latency_estimate, "notes": list(self.notes)}


@dataclass
class FinishRecord:
    channels: ChannelConfig
    resource: Estimate
    budget: float
    budget_met: bool
    iterations: int
    holdout_accuracy: float
    validation_accuracy: float
    ab_original: TimingStats | None
    ab_final: TimingStats | None
    long_term_s: float
    model: nn.Module = field(repr=False)
    #: The side-by-side ratio that ended the iterations at a relative latency budget (None: they
    #: ended otherwise). The A/B ratio measures the same channels again, after the long-term
    #: fine-tune: near the budget the two can fall on either side of it.
    checked_ratio: float | None = None

    @property
    def measured_ratio(self) -> float | None:
        """Final over original latency, both measured in the same interleaved rounds."""
        if self.ab_original is None or self.ab_final is None:
            return None
        return self.ab_final.min_ms / self.ab_original.min_ms

    def to_dict(self) -> dict:
        return {"channels": dict(self.channels), "resource": self.resource.value,
                "resource_raw": self.resource.raw, "budget": self.budget,
                "budget_met": self.budget_met, "iterations": self.iterations,
                "holdout_accuracy": self.holdout_accuracy,
                "validation_accuracy": self.validation_accuracy,
                "ab_original": self.ab_original.to_dict() if self.ab_original else None,
                "ab_final": self.ab_final.to_dict() if self.ab_final else None,
                "measured_ratio": self.measured_ratio, "checked_ratio": self.checked_ratio,
                "long_term_s": self.long_term_s}


@dataclass
class PendingIteration:
    """An iteration whose proposals are fine-tuned and chosen, waiting for the chosen network's
    measurement before its record (redoing the fine-tunes would be expensive)."""

    iteration: int
    target: float
    results: list[ProposalResult]
    skipped: dict[str, str]
    chosen: int
    model_state: dict  # the chosen proposal's fine-tuned weights
    phases_s: dict[str, float]  # the iteration's phases so far (checkpoints older than clocks)
    notes: list[str] = field(default_factory=list)  # for the record (how it was planned)

    def to_dict(self) -> dict:
        return {"phase": "iteration", "iteration": self.iteration, "target": self.target,
                "results": [r.to_state() for r in self.results], "skipped": dict(self.skipped),
                "chosen": self.chosen, "model_state": self.model_state,
                "phases_s": dict(self.phases_s), **({"notes": list(self.notes)} if self.notes else {})}


@dataclass
class PendingFinish:
    """The long-term fine-tune done, waiting for the A/B measurement of the budget."""

    model_state: dict
    long_term_s: float

    def to_dict(self) -> dict:
        return {"phase": "finish", "model_state": self.model_state, "long_term_s": self.long_term_s}


Pending = Union[PendingIteration, PendingFinish]


def pending_from_dict(data: dict | None) -> Pending | None:
    """The step in progress of a checkpoint (``to_dict``'s format, which is also the one written
    before ``pending`` was typed: a dict switched on its ``"phase"``)."""
    if not data:
        return None
    if data["phase"] == "iteration":
        return PendingIteration(
            iteration=data["iteration"], target=data["target"],
            results=[ProposalResult.from_state(r) for r in data["results"]],
            skipped=dict(data["skipped"]), chosen=data["chosen"], model_state=data["model_state"],
            phases_s=dict(data.get("phases_s") or {}), notes=list(data.get("notes") or []))
    if data["phase"] == "finish":
        return PendingFinish(model_state=data["model_state"], long_term_s=data["long_term_s"])
    raise ValueError(f"unknown step in progress '{data['phase']}' in the checkpoint")


@dataclass
class AdaptState:
    """Everything needed to resume after the last finished iteration."""

    config: AdaptConfig
    iteration: int
    channels: ChannelConfig
    model_state: dict
    budget: float
    initial_resource: float
    holdout_accuracy: float
    calibration: AffineCalibration
    records: list[dict]
    start: dict
    #: The step in progress, when redoing it would be expensive (see the module docstring).
    pending: Pending | None = None
    #: The clock of the iteration in progress, kept across parks and resumes (wall times, so
    #: another process can go on): {"iteration", "started_at" (epoch s), "phases_s" (so far),
    #: "parked": None or {"kind", "at"}}; see ``NetAdapt.note_parked``.
    clock: dict | None = None
    #: The first iteration whose candidates were measured whole because the table had parted
    #: from the measurements (``table_check``); None while the table is trusted.
    whole_since: int | None = None
    #: What the next iteration's record should note (a budget moved by ``_budget_moved``).
    notes: list[str] = field(default_factory=list)
    #: The current network over the original, measured side by side when the iterations ended
    #: at a relative latency budget (``_budget_moved``); None otherwise.
    checked_ratio: float | None = None

    def to_dict(self) -> dict:
        return {"config": self.config.to_dict(), "iteration": self.iteration,
                "channels": dict(self.channels), "model_state": self.model_state,
                "budget": self.budget, "initial_resource": self.initial_resource,
                "holdout_accuracy": self.holdout_accuracy,
                "calibration": self.calibration.to_dict(), "records": self.records,
                "start": self.start,
                "pending": self.pending.to_dict() if self.pending is not None else None,
                "clock": self.clock,
                # only once it happened: a checkpoint keeps the format it was read in otherwise
                **({"whole_since": self.whole_since} if self.whole_since is not None else {}),
                **({"notes": list(self.notes)} if self.notes else {}),
                **({"checked_ratio": self.checked_ratio} if self.checked_ratio is not None else {})}

    @classmethod
    def from_dict(cls, data: dict) -> "AdaptState":
        return cls(config=AdaptConfig.from_dict(data["config"]), iteration=data["iteration"],
                   channels=dict(data["channels"]), model_state=data["model_state"],
                   budget=data["budget"], initial_resource=data["initial_resource"],
                   holdout_accuracy=data["holdout_accuracy"],
                   calibration=AffineCalibration.from_dict(data["calibration"]),
                   records=list(data["records"]), start=dict(data["start"]),
                   pending=pending_from_dict(data.get("pending")), clock=data.get("clock"),
                   whole_since=data.get("whole_since"), notes=list(data.get("notes") or []),
                   checked_ratio=data.get("checked_ratio"))

    def save(self, path) -> None:
        torch.save(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "AdaptState":
        return cls.from_dict(torch.load(path, weights_only=True))


def long_term_finetune(model: nn.Module, data: DatasetSplits, config: AdaptConfig,
                       hook: TrainingHook | None = None, device: DeviceLike = "cpu",
                       loss_fn: TrainingLoss | None = None) -> float:
    """Fine-tune for ``config.long_term_epochs`` epochs (cosine learning rate; ``hook``: see
    ``training.TrainingHook``; ``loss_fn``: the run's ``distillation.fine_tune_loss``, needed
    when ``config`` distils) on ``device``, then re-estimate the batch-norm statistics (when
    ``config`` asks); returns seconds."""
    start = time.perf_counter()
    require_loss(config, loss_fn)
    steps = steps_for_epochs(data.train, config.long_term_epochs, config.batch_size)
    train_steps(model, data.train, steps, lr=config.long_term_lr, batch_size=config.batch_size,
                momentum=config.momentum, weight_decay=config.weight_decay,
                seed=config.seed + 7919, cosine=True, hook=hook, device=device, loss_fn=loss_fn)
    recalibrate_for_scoring(model, data.train, batches=config.bn_recalibration_batches,
                            batch_size=config.batch_size, seed=config.seed, device=device)
    return time.perf_counter() - start


class NetAdapt:
    """One adaptation of ``model`` (the original, trained network) under ``config``.

    ``hook`` is passed to every fine-tune the engine runs itself (the proposals' short-term ones
    unless delegated, and the long-term one): see ``training.TrainingHook``.
    ``train_device`` ("auto", "cpu", "cuda": ``training.resolve_device``) is where those fine-tunes
    and the accuracy evaluations run; it is a runtime choice, not part of ``config``, so a run
    started on one machine resumes on another. Latency is always measured on the target device.
    ``whole_when_misled``: once the calibrated look-up table's predictions of the chosen networks
    part from their whole measurements (``table_check.parted``), measure every candidate whole
    from the next iteration on (else only say so in the record's notes).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, data: DatasetSplits,
                 config: AdaptConfig, resource: ResourceModel, state: AdaptState | None = None,
                 analysis: NetworkAnalysis | None = None, delegate_evaluation: bool = False,
                 hook: TrainingHook | None = None, train_device: DeviceLike = "cpu",
                 whole_when_misled: bool = True) -> None:
        self.train_device = resolve_device(train_device)
        if resource.metric != config.metric:
            raise ValueError(f"config asks for metric '{config.metric}' but the resource model "
                             f"measures '{resource.metric}'")
        self.original = model.eval()
        self.example_input = example_input
        self.data = data
        self.config = config
        self.resource = resource
        self.analysis = analysis or NetworkAnalysis(model, example_input)
        self.state = state
        self.delegate_evaluation = delegate_evaluation
        self.hook = hook
        self.loss_fn = fine_tune_loss(config, model)  # one teacher for every fine-tune of the run
        self.whole_when_misled = whole_when_misled
        if state is not None and resource.calibration is not None:
            resource.calibration = state.calibration
        if state is not None and state.whole_since is not None:
            self._measure_whole()

    def _measure_whole(self) -> None:
        """From now on, estimate candidates by measuring them whole: the ones the plan proposes,
        guided by the table (``TableGuidedWholeModel``), or every one where there is no table."""
        if not self.resource.measures_networks:
            self.resource = (TableGuidedWholeModel(self.resource) if self.resource.table is not None
                             else WholeNetworkLatencyModel(getattr(self.resource, "estimator", "min")))

    @property
    def _guided(self) -> bool:
        return isinstance(self.resource, TableGuidedWholeModel)

    @property
    def _latency(self) -> bool:
        return self.resource.metric == "latency"

    @property
    def _calibrated(self) -> bool:
        return self.resource.calibration is not None

    def current_model(self) -> nn.Module:
        """The network of the last finished iteration, rebuilt from the checkpoint."""
        assert self.state is not None
        return self.rebuild(self.state.channels, self.state.model_state)

    def rebuild(self, channels: ChannelConfig, model_state: dict) -> nn.Module:
        """A network of the original architecture shrunk to ``channels``, with these weights."""
        model = rebuild_pruned(copy.deepcopy(self.original), self.example_input, channels)
        model.load_state_dict(model_state)
        return model.eval()

    # ------------------------------------------------------------------ the iteration's clock

    def _clock(self, iteration: int) -> dict:
        """The clock of ``iteration``, started now unless it runs already (a resumed iteration)."""
        clock = self.state.clock
        if clock is None or clock["iteration"] != iteration:
            clock = self.state.clock = {"iteration": iteration, "started_at": time.time(),
                                        "phases_s": {}, "parked": None}
        return clock

    def _add_phase(self, name: str, seconds: float) -> None:
        if self.state.clock is None:  # a step pending in a checkpoint written before clocks
            return
        phases = self.state.clock["phases_s"]
        phases[name] = phases.get(name, 0.0) + max(0.0, seconds)

    def note_parked(self, kind: str, at: float | None = None) -> None:
        """The caller stops here to wait for ``kind`` of work ("measurement" or "evaluation")
        and saves ``state``; the time until ``note_resumed`` counts as that wait."""
        if self.state is not None and self.state.clock is not None:
            self.state.clock["parked"] = {"kind": kind, "at": time.time() if at is None else at}

    def note_resumed(self, at: float) -> None:
        """A new run, begun at ``at`` (epoch s), goes on from a parked state: book the wait."""
        clock = self.state.clock if self.state is not None else None
        if clock is None or not clock.get("parked"):
            return
        parked = clock["parked"]
        self._add_phase(WAIT_PHASES.get(parked["kind"], "wait_measure_s"), at - parked["at"])
        clock["parked"] = None

    def _close_clock(self, iteration: int, legacy: dict) -> tuple[dict[str, float], float]:
        """(every phase of ``PHASES``, wall seconds) of the iteration that ends now; ``legacy``:
        the phases of a checkpoint written before clocks existed."""
        clock = self.state.clock
        if clock is None or clock["iteration"] != iteration:
            clock = {"started_at": time.time() - sum(legacy.values()), "phases_s": dict(legacy)}
        phases = {name: float(clock["phases_s"].get(name, 0.0)) for name in PHASES}
        named = sum(phases.values())
        wall = max(time.time() - clock["started_at"], named)
        phases["overhead_s"] = wall - named
        self.state.clock = None
        return phases, wall

    # ------------------------------------------------------------------ requests

    def _fill_table(self, signatures: list[LayerSignature], reason: str) -> Conversation:
        missing = self.resource.missing(signatures)
        while missing:
            _expect((yield NeedsMeasurement(reason, self.example_input, signatures=missing)),
                    Measured, reason)
            still = self.resource.missing(missing)
            if len(still) == len(missing):
                raise RuntimeError(f"{len(still)} look-up-table entries are still missing after "
                                   "the caller was asked to measure them")
            missing = still

    def _measure(self, reason: str, *models: tuple[str, nn.Module, ChannelConfig]) -> Conversation:
        request = NeedsMeasurement(reason, self.example_input,
                                   networks=[NetworkRequest(label, m, dict(c)) for label, m, c in models])
        answer = _expect((yield request), Measured, reason)
        if len(answer.networks) != len(request.networks):
            missing = request.networks[len(answer.networks):] or request.networks
            raise RuntimeError(f"network '{missing[0].label}' was not measured")
        return list(answer.networks)

    def _start(self) -> Conversation:
        config = self.config
        channels = self.analysis.original_config()
        signatures = self.analysis.signatures(channels)
        yield from self._fill_table(signatures, "look-up table of the original network")
        calibration = self.resource.calibration if self._calibrated else AffineCalibration()
        measured = None
        if self._latency:
            (measured,) = yield from self._measure("original network", ("original", self.original, channels))
            if self._calibrated:
                calibration.add(self.resource.estimate(signatures).raw, measured.min_ms)
            else:
                self.resource.record(signatures, measured)
        resource = self.resource.estimate(signatures)
        budget = config.budget * resource.value if config.budget_relative else config.budget
        if budget >= resource.value:
            raise BudgetError(f"the original network already meets the budget ({resource.value:.4g} "
                              f"<= {budget:.4g} {self.resource.unit}); nothing to adapt")
        warnings = []
        warning = unreachable_warning(budget, resource.value, config.initial_reduction,
                                      config.decay, config.max_iterations)
        if warning:
            warnings.append(warning)
        holdout = accuracy(self.original, self.data.holdout, device=self.train_device)
        start = StartRecord(
            resource=resource, measured=measured, budget=budget, holdout_accuracy=holdout,
            validation_accuracy=accuracy(self.original, self.data.validation, device=self.train_device),
            macs=sum(s.macs() for s in signatures), params=sum(s.params() for s in signatures),
            warnings=warnings)
        self.state = AdaptState(
            config=config, iteration=0, channels=channels,
            model_state=copy.deepcopy(self.original.state_dict()), budget=budget,
            initial_resource=resource.value, holdout_accuracy=holdout, calibration=calibration,
            records=[], start={"resource": resource.value, "resource_raw": resource.raw,
                               "measured": measured.to_dict() if measured else None,
                               "holdout_accuracy": holdout,
                               "validation_accuracy": start.validation_accuracy,
                               "macs": start.macs, "params": start.params,
                               "budget": budget, "warnings": warnings})
        yield start

    def run(self) -> Conversation:
        """Run (or resume) the adaptation; see the module docstring for what it yields and what
        it expects back."""
        if self.state is None:
            yield from self._start()
        state, config = self.state, self.config
        model = self.current_model()
        if isinstance(state.pending, PendingIteration):
            record = yield from self._conclude_iteration(self._pending_model())
            model = record.model
        if isinstance(state.pending, PendingFinish):
            yield from self._finish(model)
            return
        while True:
            signatures = self.analysis.signatures(state.channels)
            if self.resource.measures_networks and not self.resource.has(signatures):
                (stats,) = yield from self._measure("current network", ("current", model, state.channels))
                self.resource.record(signatures, stats)  # after a resume
            current = self.resource.estimate(signatures)
            if state.iteration >= config.max_iterations:
                break
            if current.value <= state.budget and (state.checked_ratio is not None
                                                  or not (yield from self._budget_moved(model, current))):
                break  # met, and checked side by side (once: a finished run resumed stays finished)
            record = yield from self._iteration(model, current)
            model = record.model
        yield from self._finish(model)

    def _iteration(self, model: nn.Module, current: Estimate) -> Conversation:
        state, config = self.state, self.config
        i = state.iteration
        self._clock(i)
        tick = time.perf_counter()
        wanted = plan_signatures(self.analysis, state.channels, config.channel_step, config.floor_rule())
        yield from self._fill_table(wanted, f"iteration {i} candidates")
        if self.resource.measures_networks and not self._guided:
            yield from self._measure_candidates(i)
        self._add_phase("measure_table_s", time.perf_counter() - tick)
        tick = time.perf_counter()
        target = iteration_target(current.value, i, state.initial_resource, config.initial_reduction,
                                  config.decay, state.budget)
        measured_before = state.clock["phases_s"].get("measure_network_s", 0.0)
        pace = (pace_target(current.value, state.budget, config.max_iterations - i)
                if config.keep_pace else None)
        plan, notes = yield from self._plan(i, target, pace)
        notes, state.notes = [*state.notes, *notes], []
        tick += state.clock["phases_s"].get("measure_network_s", 0.0) - measured_before  # not planning
        target = plan.target  # min_proposals may ask for a smaller cut than the schedule
        proposals, selection = plan.proposals, config.selection
        if not proposals:
            # No group alone can meet the target (many small groups, per-call overhead): rather
            # than stop, each group offers its nearest count and, since their savings differ, the
            # least accuracy lost per unit saved is kept. The record shows it (resource > target).
            proposals, selection = plan.nearest, "loss_per_resource"
        if not proposals:
            # Every group at its minimum or floor; or (measured whole on a staircase) groups that
            # could shrink, none of whose smaller counts is estimated below the current network.
            raise NoProposalError(
                f"iteration {i}: no group can meet the target {target:.4g} {self.resource.unit} "
                f"(current {current.value:.4g}) "
                + ("or shrink any further; " if not plan.shrinkable else
                   "and no smaller count of any group is estimated below the current network; ")
                + "; ".join(f"{g}: {why}" for g, why in plan.skipped.items()))
        self._add_phase("plan_s", time.perf_counter() - tick)
        if self.delegate_evaluation:
            request = NeedsEvaluation(iteration=i, model=model, proposals=proposals)
            evaluated = _expect((yield request), Evaluated, f"iteration {i}'s proposals")
            if len(evaluated.results) != len(proposals):
                raise RuntimeError(f"iteration {i}: the caller did not evaluate every proposal")
        else:
            evaluated = Evaluated.of([
                evaluate_proposal(model, self.example_input, proposal, self.data, config, i,
                                  hook=self.hook, device=self.train_device, loss_fn=self.loss_fn)
                for proposal in proposals])
        results = list(evaluated.results)
        if not self.delegate_evaluation:  # delegated ones ran elsewhere, while the caller waited
            self._add_phase("finetune_s", sum(r.finetune_s for r in results))
            self._add_phase("evaluate_s", sum(r.evaluate_s for r in results))
        best = select_proposal(results, selection, state.holdout_accuracy, current.value)
        chosen_model = evaluated.load(best)
        state.pending = PendingIteration(
            iteration=i, target=target, results=results, skipped=dict(plan.skipped), chosen=best,
            model_state=copy.deepcopy(chosen_model.state_dict()),
            phases_s=dict(state.clock["phases_s"]), notes=notes)
        return (yield from self._conclude_iteration(chosen_model))

    def _pending_model(self) -> nn.Module:
        pending = self.state.pending
        return self.rebuild(pending.results[pending.chosen].proposal.config, pending.model_state)

    def _conclude_iteration(self, model: nn.Module) -> Conversation:
        """Measure the chosen network (when asked to) and record the iteration of ``state.pending``."""
        state, config, pending = self.state, self.config, self.state.pending
        i = pending.iteration
        results = pending.results
        chosen = results[pending.chosen]
        measured = None
        signatures = self.analysis.signatures(chosen.proposal.config)
        if self.resource.measures_networks:
            if not self.resource.has(signatures):  # measured before a resume, not since
                tick = time.perf_counter()
                (stats,) = yield from self._measure(f"iteration {i} network",
                                                    (f"iteration {i}", model, chosen.proposal.config))
                self.resource.record(signatures, stats)
                self._add_phase("measure_network_s", time.perf_counter() - tick)
            measured = self.resource.measured(signatures)
        elif self._calibrated and config.measure_iterations:
            tick = time.perf_counter()
            (measured,) = yield from self._measure(f"iteration {i} network",
                                                   (f"iteration {i}", model, chosen.proposal.config))
            self.resource.calibration.add(chosen.proposal.estimate.raw, measured.min_ms)
            self._add_phase("measure_network_s", time.perf_counter() - tick)
        phases, wall = self._close_clock(i, dict(pending.phases_s))
        resource = self.resource.estimate(signatures)
        estimate = ("whole" if self.resource.measures_networks else "table" if self._calibrated
                    else None)
        record = IterationRecord(
            iteration=i, target=pending.target, chosen_group=chosen.proposal.group,
            channels=dict(chosen.proposal.config), resource=resource, measured=measured,
            macs=chosen.proposal.macs, params=chosen.proposal.params,
            holdout_accuracy=chosen.holdout_accuracy, proposals=[r.to_dict() for r in results],
            skipped=dict(pending.skipped), phases_s=phases,
            calibration=self.resource.calibration.coefficients() if self._calibrated else (1.0, 0.0),
            model=model, wall_s=wall, latency_estimate=estimate, notes=list(pending.notes))
        misled = estimate == "table" and measured is not None and self._check_table(record)
        state.iteration = i + 1
        state.checked_ratio = None  # another network now
        state.channels = dict(chosen.proposal.config)
        state.model_state = copy.deepcopy(model.state_dict())
        state.holdout_accuracy = chosen.holdout_accuracy
        state.records.append(record.to_dict())
        state.pending = None
        if misled and self.whole_when_misled:
            state.whole_since = i + 1
            self._measure_whole()
            self.resource.record(signatures, measured)  # the next iteration starts from it
        yield record
        return record

    def _check_table(self, record: IterationRecord) -> bool:
        """Whether the table's predictions have just parted from the measurements with this
        record's (then a note on the record says so and what happens next)."""
        found = predictions([*self.state.records, record.to_dict()])
        run = parted(found)
        if run is None or parted(found[:-1]) is not None:  # said once, when it starts
            return False
        record.notes.append(parted_message(run, self.whole_when_misled))
        return True

    #: Plans a table-guided iteration makes again at most before it settles on its proposals.
    GUIDED_ROUNDS = 4

    def _plan(self, i: int, target: float, pace: float | None = None) -> Conversation:
        """The iteration's plan and what to note about it; when guided by the table, planned again
        until every proposal's network has been measured whole (each round measures the ones
        that have not). When no measured cut saves anything at all (a device whose noise hides
        single-group savings), the table alone plans the iteration, asked for the same saving,
        and a note says so, rather than the run stopping."""
        config, channels = self.config, self.state.channels

        def plan_now(resource: ResourceModel | None = None, wanted: float = target,
                     paced: float | None = pace) -> IterationPlan:
            return plan_iteration(self.analysis, channels, resource or self.resource, i, wanted,
                                  config.channel_step, config.floor_rule(), config.min_proposals,
                                  paced)

        if not self._guided:
            return plan_now(), []
        self.resource.set_current(self.analysis.signatures(channels))
        plan = plan_now()
        for round_ in range(self.GUIDED_ROUNDS + 1):
            fresh = {f"candidate {p.group} {p.channels}": p.config for p in plan.proposals or plan.nearest}
            tick = time.perf_counter()
            if not (yield from self._measure_whole_configs(f"iteration {i} proposals, whole", fresh)):
                break
            self._add_phase("measure_network_s", time.perf_counter() - tick)
            if round_ < self.GUIDED_ROUNDS:
                plan = plan_now()
            else:  # the last round settles: this plan's proposals stand on their measurements
                plan = dataclasses.replace(plan, proposals=self._measured(plan.proposals),
                                           nearest=self._measured(plan.nearest))
        if plan.proposals or plan.nearest:
            return plan, []
        # The same saving asked of the table, in its own terms (it misjudges the current network).
        now = self.analysis.signatures(channels)
        offset = self.resource.estimate(now).value - self.resource.table_model.estimate(now).value
        plan = plan_now(self.resource.table_model, target - offset,
                        None if pace is None else pace - offset)

        def shifted(proposals: list[Proposal]) -> list[Proposal]:
            return [dataclasses.replace(p, estimate=Estimate(p.estimate.value + offset, p.estimate.raw))
                    for p in proposals]

        plan = dataclasses.replace(plan, target=plan.target + offset, proposals=shifted(plan.proposals),
                                   nearest=shifted(plan.nearest))
        return plan, [
            f"iteration {i}: measured whole, no network of the plan came out faster than the current "
            f"one ({self.resource.estimate(now).value:.4g} ms), so "
            "the look-up table alone chose this iteration's proposals; the chosen network is still "
            "measured whole"]

    def _budget_moved(self, model: nn.Module, current: Estimate) -> Conversation:
        """Whether a relative latency budget, met by ``current`` (the current network's estimate),
        turns out not met when the original and the current network are measured in one
        interleaved session; then the budget moves to what that measured ratio asks, in the run's
        terms, and the run goes on.

        The budget was set from one measurement of the original at the start: a session slowed
        by load there sets it too high, and the run would stop early, short of the fraction the
        user asked for. Measured side by side, both networks see the same conditions."""
        state, config = self.state, self.config
        if not (self._latency and config.budget_relative):
            return False
        original, now = yield from self._measure(
            "side-by-side check of the budget", ("original", self.original, self.analysis.original_config()),
            ("current", model, state.channels))
        ratio = now.min_ms / original.min_ms
        if ratio <= config.budget:
            state.checked_ratio = ratio
            return False
        budget = current.value * config.budget / ratio
        state.notes.append(
            f"after iteration {state.iteration - 1}: the budget was met by the estimate "
            f"({current.value:.4g} <= {state.budget:.4g} ms), but measured in one session with the "
            f"original the network is {ratio:.1%} of it, not {config.budget:.0%}: the budget moves to "
            f"{budget:.4g} ms and the run goes on")
        state.budget = budget
        return True

    def _measured(self, proposals: list[Proposal]) -> list[Proposal]:
        """``proposals`` with the estimates the resource gives now (their whole measurements)."""
        return [dataclasses.replace(p, estimate=self.resource.estimate(self.analysis.signatures(p.config)))
                for p in proposals]

    def _measure_candidates(self, iteration: int) -> Conversation:
        """Measure whole every candidate network of the plan that has not been measured yet."""
        configs = plan_configs(self.analysis, self.state.channels, self.config.channel_step,
                               self.config.floor_rule())
        yield from self._measure_whole_configs(f"iteration {iteration} candidates, whole",
                                               {f"candidate {n}": c for n, c in enumerate(configs)})

    def _measure_whole_configs(self, reason: str, configs: dict[str, ChannelConfig]) -> Conversation:
        """Measure whole, in one request, the networks of ``configs`` (label -> channels) not
        measured yet, and keep their measurements in the resource model; how many it measured."""
        configs = {label: c for label, c in configs.items()
                   if not self.resource.has(self.analysis.signatures(c))}
        if not configs:
            return 0
        models = [(label, rebuild_pruned(copy.deepcopy(self.original), self.example_input, c), c)
                  for label, c in configs.items()]
        results = yield from self._measure(reason, *models)
        for config, result in zip(configs.values(), results):
            self.resource.record(self.analysis.signatures(config), result)
        return len(configs)

    def _finish(self, model: nn.Module) -> Conversation:
        state, config = self.state, self.config
        if isinstance(state.pending, PendingFinish):  # fine-tuned before a resume
            model = self.rebuild(state.channels, state.pending.model_state)
            long_term_s = state.pending.long_term_s
        else:
            model = copy.deepcopy(model)  # the last iteration's record keeps the weights it reported
            long_term_s = (long_term_finetune(model, self.data, config, self.hook, self.train_device,
                                              self.loss_fn)
                           if config.long_term_epochs else 0.0)
            state.pending = PendingFinish(model_state=copy.deepcopy(model.state_dict()),
                                          long_term_s=long_term_s)
        ab_original = ab_final = None
        if self._latency:
            ab_original, ab_final = yield from self._measure(
                "A/B confirmation of the budget",
                ("original", self.original, self.analysis.original_config()),
                ("final", model, state.channels))
        signatures = self.analysis.signatures(state.channels)
        if self.resource.measures_networks and not self.resource.has(signatures):
            self.resource.record(signatures, ab_final)  # measured before a resume, not since
        resource = self.resource.estimate(signatures)
        if ab_final is not None and config.budget_relative:  # side by side, the fraction asked
            met = ab_final.min_ms / ab_original.min_ms <= config.budget
        else:
            met = resource.value <= state.budget
        yield FinishRecord(
            channels=dict(state.channels), resource=resource, budget=state.budget,
            budget_met=met, iterations=state.iteration,
            holdout_accuracy=accuracy(model, self.data.holdout, device=self.train_device),
            validation_accuracy=accuracy(model, self.data.validation, device=self.train_device),
            ab_original=ab_original, ab_final=ab_final, long_term_s=long_term_s, model=model,
            checked_ratio=state.checked_ratio)


#: What ``NetAdapt.run`` and its steps are: they yield requests and records, receive answers.
Conversation = Generator[Any, Union[Answer, None], Any]


def _expect(answer: object, kind: type, what: str):
    """``answer`` if it is a ``kind``; a caller that sent nothing (or something else) is a bug."""
    if not isinstance(answer, kind):
        raise RuntimeError(f"{what}: the caller answered {type(answer).__name__}, not {kind.__name__} "
                           "(send the answer into the generator)")
    return answer


def serve(conversation: Conversation, answer: Callable[[Request], Answer]) -> Iterator:
    """The records of ``conversation``, each request answered at once by ``answer(request)``
    (which may raise to stop: a caller that must wait saves ``engine.state`` first)."""
    reply = None
    while True:
        try:
            item = conversation.send(reply)
        except StopIteration:
            return
        if isinstance(item, (NeedsMeasurement, NeedsEvaluation)):
            reply = answer(item)
        else:
            reply = None
            yield item


def measure_with(measurer, table, request: NeedsMeasurement) -> Measured:
    """Answer ``request`` with a synchronous measurer (``measure_signatures`` /
    ``measure_models``): the layers into ``table``, the networks' timings as the answer."""
    if request.signatures:
        table.add(measurer.measure_signatures(request.signatures))
    if not request.networks:
        return Measured()
    return Measured(list(measurer.measure_models([n.model for n in request.networks],
                                                 request.example_input)))


def run_with(engine: NetAdapt, measurer, table=None) -> Iterator:
    """Drive ``engine`` with a synchronous measurer (``measure_signatures`` / ``measure_models``),
    yielding every record except the measurement requests it serves itself."""
    target = table if table is not None else engine.resource.table
    return serve(engine.run(), lambda request: measure_with(measurer, target, request))
