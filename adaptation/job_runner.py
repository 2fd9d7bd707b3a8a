"""Runs one adaptation job: loads its inputs, drives the NetAdapt engine, stores what it yields.

Framework glue without Celery: ``adaptation.tasks.run_job`` claims the job (see ``leases``) and
calls ``JobRunner(job).run()``; tests call both directly.

What a run writes, step by step:
- every engine record: the lease is renewed (a lost lease stops the run quietly) and
  ``cancel_requested`` is read (a cancel stops it with status ``cancelled``); inside a fine-tune
  the engine's training hook does the same every ``training.HOOK_EVERY`` steps, so a cancel
  stops even a long fine-tune within a few dozen steps (the log says after how many);
- the start record: the checkpoint, then in one transaction the ``Iteration`` row number -1
  (the original network) and ``job.start``;
- each iteration: its network file and the checkpoint, then in one transaction the ``Iteration``
  row, its ``Proposal`` rows and ``job.iteration``;
- a park (waiting for measurements or proposals): the engine's clock notes when, in the
  checkpoint, and the next run books the wait in the iteration's phases (``loop.PHASES``);
- the finish: the final exports, then in one transaction ``Job.result``, the validation accuracy
  of the last iteration's row, status ``finished``, ``job.finish`` and ``job.status``.

The checkpoint is written before the rows: it is the source of truth, the rows are derived from it.
A resumed run first stores any row the checkpoint holds and the database lacks (the worker died
between the two), and a row that already exists is skipped, so every iteration is recorded
exactly once however the previous attempt ended.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import torch.nn as nn
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from adaptation.events import publish
from adaptation.job_files import JobFiles, media_path
from adaptation.job_inputs import (USER_ERRORS, JobError, JobOptions, describe_error, load_job_data,
                                   load_job_model, parse_settings)
from adaptation.leases import LeaseKeeper, max_attempts, renew_lease
from adaptation.models import Iteration, Job, Proposal
from adaptation.netadapt.architectures import Architecture, describe_network
from adaptation.netadapt.config import AdaptConfig
from adaptation.netadapt.data import DatasetSplits
from adaptation.netadapt.graph import NetworkAnalysis
from adaptation.netadapt.loop import (AdaptState, Answer, Evaluated, FinishRecord, IterationRecord,
                                      Measured, NeedsEvaluation, NeedsMeasurement, NetAdapt, Request,
                                      StartRecord, serve)
from adaptation.netadapt.lut import missing_signatures
from adaptation.netadapt.resources import (LatencyTableModel, ResourceModel,
                                           WholeNetworkLatencyModel, exact_model)
from adaptation.netadapt.steps import ProposalResult
from adaptation.netadapt.training import Cancelled
from adaptation.network_files import NetworkExportError, network_files
from adaptation.proposals import (discard_evaluations, dispatch_count, dispatch_evaluations,
                                  fruitless_sends, load_evaluations)
from adaptation.receivers import resume_waiting_job
from devices.host import HostTurns
from devices.lut import DROWN_SHARE, DatabaseLatencyTable
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, MeasurementRequest
from devices.requests import (describe_presence, device_table, drop_queued_requests, open_request, request_key,
                              stored_without_files)

logger = logging.getLogger(__name__)

#: "auto": a network is measured whole when more than this share of its probed entries drown in
#: per-call overhead (devices.lut.DROWN_SHARE); a browser's table still tracks whole networks with
#: a quarter of them drowning (bench/README.md, browser_fidelity: 26-28%, 1.7% calibrated error).
WHOLE_WHEN_DROWNING = 0.5


class LeaseLost(Exception):
    """Another worker holds the job now, or its row is gone: stop without writing anything."""


class JobCancelled(Cancelled):
    """The user asked to cancel the job (raised between steps, or inside a fine-tune by its hook)."""


class Parked(Exception):
    """The job waits for work done elsewhere (``kind``: "measurement" or "evaluation"); the
    message says what, for the job page. Its checkpoint is saved; it is re-enqueued when done."""

    def __init__(self, kind: str, message: str, then: Callable[[], None] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.then = then  # what to start once the job is marked waiting (it may end at once)


def _measured_ms(record: dict) -> float | None:
    return (record.get("measured") or {}).get("min_ms")


def iteration_payload(record: dict) -> dict:
    """``adaptation.events.IterationPayload`` of an ``IterationRecord.to_dict()``."""
    return {"number": record["iteration"], "chosen_group": record["chosen_group"],
            "channels": record["channels"], "resource": record["resource"],
            "resource_raw": record["resource_raw"], "measured_ms": _measured_ms(record),
            "macs": record["macs"], "params": record["params"],
            "holdout_accuracy": record["holdout_accuracy"], "proposals": record["proposals"],
            "phases_s": record.get("phases_s") or {}, "wall_s": record.get("wall_s")}


def waiting_message(device, reason: str, signatures: int, networks: int) -> str:
    """What the job page says while a job waits for its device."""
    what = ", ".join(part for part in (f"{signatures} layer(s)" if signatures else "",
                                       f"{networks} network(s)" if networks else "") if part)
    where = device.name
    if device.kind == "agent" and device.status == Device.Status.OFFLINE:
        where += f" ({describe_presence(device)})"
    return f"waiting for {where} to measure {what}: {reason}"


class JobRunner:
    """Runs a claimed job (status ``running``, ``claimed_by`` this worker) until it ends or parks.

    The worker never waits for a device or for other workers. When the engine asks for
    measurements, the runner looks for a finished ``MeasurementRequest`` of the job with exactly
    that content (networks are described by architecture and channels: latency does not depend on
    weights); when there is none it opens one on the device's queue, saves the checkpoint, and
    parks the job (status ``waiting``); the request's completion re-enqueues it. The proposals
    of an iteration are fine-tuned by parallel tasks (``adaptation.proposals``) the same way.
    The device's look-up table is reused by every later job on the device.

    ``run`` never raises for a failure of the job: it records it (status ``failed``, a one-line
    ``error``, ``job.log`` and ``job.status`` events) and returns, so the worker lives on.
    ``time_limit_error`` is the exception the task's soft time limit raises, if any.
    """

    def __init__(self, job: Job, *, time_limit_error: type[BaseException] | None = None) -> None:
        if job.status != Job.Status.RUNNING or not job.claimed_by:
            raise ValueError(f"job {job.pk} must be claimed before it runs (see leases.claim_job)")
        self.job = job
        self.worker = job.claimed_by
        self.files = JobFiles(job.pk)
        self.time_limit_error = time_limit_error
        self.keeper: LeaseKeeper | None = None
        self.table: DatabaseLatencyTable | None = None
        self.engine: NetAdapt | None = None
        self.spec: Architecture | None = None
        self.evaluated_by: list[str | None] = []  # the worker of each proposal of the iteration
        self.paused: list[dict | None] = []  # how each proposal's fine-tune paused for measurements
        self.turns = HostTurns()  # this worker's part in the host lock, through the training hook
        self._pauses_at_start, self._paused_s_at_start = 0, 0.0

    # ------------------------------------------------------------------ the run and its endings

    def run(self) -> str:
        """Run the job; returns its final status, or "lost" when another worker holds it now."""
        try:
            with LeaseKeeper(self.job.pk, self.worker) as keeper, self.turns:
                self.keeper = keeper
                return self._run_guarded()
        except Exception:  # only the bookkeeping of a failure can land here (database down...)
            logger.exception("job %s: could not record how the run ended", self.job.pk)
            return "unknown"

    def _run_guarded(self) -> str:
        try:
            self._run()
            return Job.Status.FINISHED
        except LeaseLost:
            logger.info("job %s: %s no longer holds the job; stopping", self.job.pk, self.worker)
            return "lost"
        except Parked as parked:
            return self._park(parked)
        except JobCancelled as stop:
            return self._end(Job.Status.CANCELLED, note=f"Cancelled {stop.where()}." if stop.where() else "")
        except Exception as error:
            if self.time_limit_error and isinstance(error, self.time_limit_error):
                limit = settings.CELERY_TASK_TIME_LIMIT
                return self._end(Job.Status.FAILED, f"the job ran past its time limit ({limit} s)")
            if not isinstance(error, USER_ERRORS):
                logger.exception("job %s failed", self.job.pk)
            return self._end(Job.Status.FAILED, describe_error(error))

    def _end(self, status: Job.Status, error: str = "", note: str = "") -> str:
        """Record a cancel or failure, if this worker still holds the job (``note``: a line
        for the job's log)."""
        with transaction.atomic():
            ended = Job.objects.filter(pk=self.job.pk, claimed_by=self.worker, status=Job.Status.RUNNING).update(
                status=status, error=error, finished_at=timezone.now())
            if not ended:
                return "lost"
            drop_queued_requests(self.job.pk, f"the job was {status}")
            if note:
                publish(self.job.pk, "job.log", {"level": "info", "message": note})
            if error:
                publish(self.job.pk, "job.log", {"level": "error", "message": error})
            publish(self.job.pk, "job.status", {"status": status, "error": error})
        return status

    def _park(self, parked: Parked) -> str:
        """Save the checkpoint and mark the job ``waiting``, if this worker still holds it."""
        if self.engine is not None and self.engine.state is not None:
            self.engine.note_parked(parked.kind)  # the wait counts in the iteration's phases
            self.files.save_checkpoint(self.engine.state)
        with transaction.atomic():
            done = Job.objects.filter(pk=self.job.pk, claimed_by=self.worker, status=Job.Status.RUNNING).update(
                status=Job.Status.WAITING, waiting_kind=parked.kind, waiting_for=str(parked)[:300],
                claimed_by="", heartbeat_at=timezone.now())
            if not done:
                return "lost"
            publish(self.job.pk, "job.status", {"status": Job.Status.WAITING, "error": "",
                                                "waiting_for": str(parked)})
        if parked.then is not None:
            parked.then()
        if parked.kind == "measurement":
            resume_waiting_job(self.job.pk)  # its requests may have ended while it parked
        return Job.Status.WAITING

    def _prepare(self) -> tuple[AdaptConfig, JobOptions, Architecture, nn.Module, DatasetSplits]:
        """The start of every run: say so, give up after too many crashes, load the inputs."""
        job = self.job
        publish(job.pk, "job.status", {"status": Job.Status.RUNNING, "error": ""})
        if job.attempts > max_attempts():
            raise JobError(f"the job stopped unexpectedly {job.attempts - 1} times (worker killed or "
                           "out of memory?); not trying again")
        self._check_cancel()
        config, options = parse_settings(job.settings)
        self.spec, original = load_job_model(job)
        return config, options, self.spec, original, load_job_data(job, self.spec, config, options)

    def _run(self) -> None:
        resumed_at = time.time()
        config, options, spec, original, data = self._prepare()
        analysis = NetworkAnalysis(original, spec.example_input())
        state = self._load_checkpoint(config)
        resource = self._resource_model(config, options, analysis, started=state is not None)
        engine = NetAdapt(original, spec.example_input(), data, config, resource, state=state,
                          analysis=analysis, delegate_evaluation=True, hook=self._between_steps)
        self.engine = engine
        engine.note_resumed(resumed_at)
        for record in serve(engine.run(), self._answer):
            self._hold_lease()
            if isinstance(record, StartRecord):
                self.files.save_checkpoint(engine.state)
                self._record_start(engine.state.start)
            elif isinstance(record, IterationRecord):
                name = self.files.save_iteration(record.iteration, record.model, spec, record.channels)
                self.files.save_checkpoint(engine.state)
                stored = record.to_dict()
                for proposal, worker, paused in zip(stored["proposals"], self.evaluated_by, self.paused):
                    proposal["worker"] = worker
                    if paused and paused.get("count"):
                        proposal["paused"] = paused
                self._record_iteration(stored, name)
                discard_evaluations(self.job.pk, record.iteration)
            elif isinstance(record, FinishRecord):
                self._finish(record, spec)
                return
            self._check_cancel()
        raise RuntimeError("the engine stopped without a finish record")

    # ------------------------------------------------------------------ inputs

    def _resource_model(self, config: AdaptConfig, options: JobOptions, analysis: NetworkAnalysis,
                        started: bool) -> ResourceModel:
        if config.metric != "latency":
            return exact_model(config.metric)
        try:
            self.table = device_table(self.job.device)
        except ValueError as error:
            raise JobError(str(error)) from None
        chosen = options.latency_model
        if chosen == "auto":
            if started:  # a checkpoint before a choice: only a job of an older version
                raise JobError("the job's latency estimate was never chosen; start a new job")
            chosen = self._choose_latency_model(analysis.signatures(analysis.original_config()))
        if chosen == "whole":
            return WholeNetworkLatencyModel()
        return LatencyTableModel(self.table)

    def _choose_latency_model(self, signatures: list[LayerSignature]) -> str:
        """"auto": once the device's table holds the original network's entries, "whole" when more
        than ``WHOLE_WHEN_DROWNING`` of its probed entries drown in per-call overhead, else
        "table"; stored in the job's settings (its resumptions and child jobs keep it) and told in
        its log. Until the entries are in, "table" undecided: the engine asks for them first, and
        the run that follows their measurement (from the start: no checkpoint yet) chooses."""
        if missing_signatures(self.table, signatures):
            return "table"
        drowning, probed = self.table.drowning(signatures)
        chosen = "whole" if probed and drowning > WHOLE_WHEN_DROWNING * probed else "table"
        settings_now = {**self.job.settings, "latency_model": chosen}
        Job.objects.filter(pk=self.job.pk).update(settings=settings_now)
        self.job.settings = settings_now
        how = ("every candidate network is measured whole on the device" if chosen == "whole"
               else "candidates are estimated from the calibrated look-up table")
        probe = (f"{drowning} of the original network's {probed} probed layer entries drown in the "
                 f"runtime's per-call overhead (more than {DROWN_SHARE:.0%} of the entry)" if probed
                 else "no layer entry carries a per-call probe")
        publish(self.job.pk, "job.log", {"level": "info", "message": f"Latency estimate: {probe}; {how}."})
        return chosen

    def _load_checkpoint(self, config: AdaptConfig) -> AdaptState | None:
        """The state to resume from, after storing the rows an earlier attempt did not."""
        state = self.files.load_checkpoint()
        if state is None:
            return None
        if state.config != config:
            raise JobError("the job's settings differ from those of its checkpoint; "
                           "start a new job instead")
        stored = set(Iteration.objects.filter(job_id=self.job.pk).values_list("number", flat=True))
        if -1 not in stored:
            self._record_start(state.start)
        for record in state.records:
            if record["iteration"] not in stored:
                name = self.files.iteration_name(record["iteration"])
                self._record_iteration(record, name if media_path(name).exists() else None)
        if self.job.attempts > 1:  # a crash, not the end of a wait
            publish(self.job.pk, "job.log", {
                "level": "info",
                "message": f"resuming after iteration {state.iteration - 1} (attempt {self.job.attempts})"
                if state.iteration else f"resuming after the original's measurement (attempt {self.job.attempts})"})
        return state

    # ------------------------------------------------------------------ between steps

    def _hold_lease(self) -> None:
        if (self.keeper is not None and self.keeper.lost.is_set()) or not renew_lease(self.job.pk, self.worker):
            raise LeaseLost()

    def _between_steps(self, done: int, total: int) -> None:
        """The training hook of the fine-tunes this worker runs (``training.TrainingHook``): a
        lost lease or a cancel stops them within ``HOOK_EVERY`` steps; a measurement of this host
        pauses them (``devices.host``); the log tells each start and each fine-tune that paused."""
        if done >= total:  # the fine-tune is done: let go of the host
            self.turns(done, total)
            if self.turns.pauses > self._pauses_at_start:
                n, seconds = self.turns.pauses - self._pauses_at_start, self.turns.paused_s - self._paused_s_at_start
                publish(self.job.pk, "job.log", {"level": "info", "message":
                        f"The fine-tune paused {'once' if n == 1 else f'{n} times'} ({seconds:.1f} s) "
                        "for measurements on this host."})
            return
        if self.keeper is not None and self.keeper.lost.is_set():
            self.turns.close()
            raise LeaseLost()
        try:
            self._check_cancel()
        except JobCancelled:
            self.turns.close()
            raise
        if done == 0:
            self._pauses_at_start, self._paused_s_at_start = self.turns.pauses, self.turns.paused_s
            publish(self.job.pk, "job.log", {"level": "info", "message": f"Fine-tuning: {total:,} steps."})
        self.turns(done, total)  # may wait for a measurement of this host

    def _check_cancel(self) -> None:
        if Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists():
            raise JobCancelled()

    # ------------------------------------------------------------------ the engine's requests

    def _answer(self, request: Request) -> Answer:
        """The engine's answer, or ``Parked`` when it is not there yet (see the class docstring)."""
        self._hold_lease()
        if isinstance(request, NeedsMeasurement):
            return self._measure(request)  # which looks at cancel_requested first
        self._check_cancel()
        return self._evaluate(request)

    def _measure(self, request: NeedsMeasurement) -> Measured:
        """Answer the engine from the job's finished request for exactly this, or park the job
        behind a new (or still open) request on the device's queue; see the class docstring."""
        self._check_cancel()
        device = self.job.device
        signatures = [s.to_dict() for s in dict.fromkeys(request.signatures)]
        networks = [describe_network(self.spec, n.channels, n.label) for n in request.networks]
        shape = list(request.example_input.shape)
        asked = MeasurementRequest.objects.filter(job_id=self.job.pk, key=request_key(signatures, networks, shape))
        done = asked.filter(status=MeasurementRequest.Status.DONE).order_by("-pk").first()
        if done is not None and networks and not signatures:
            return Measured([TimingStats(**result) for result in done.results])
        failed = asked.filter(status=MeasurementRequest.Status.FAILED).order_by("-pk").first()
        # A request stored before requests carried their files failed for that alone: ask again.
        if failed is not None and not stored_without_files(failed):
            raise JobError(failed.error or f"measuring on {device.name} failed")
        try:
            with transaction.atomic():
                measurement = open_request(
                    owner=self.job.owner, device=device, job_id=self.job.pk, reason=request.reason,
                    runtime=device.runtime, threads=device.threads, example_shape=shape,
                    signatures=signatures, networks=networks,
                    network_files=network_files(networks, shape, device.runtime))
        except NetworkExportError as error:
            raise JobError(f"measuring on {device.name}: {error}") from None
        counts = {"reason": request.reason, "signatures": len(signatures), "networks": len(networks),
                  "request": measurement.pk, "device": device.name}
        publish(self.job.pk, "job.measure", {**counts, "done": False, "table_size": len(self.table)})
        raise Parked("measurement", waiting_message(device, request.reason, len(signatures), len(networks)))

    def _evaluate(self, request: NeedsEvaluation) -> Evaluated:
        """Take the proposals' results from the files their tasks wrote, or park the job behind
        a chord of tasks that fine-tune the missing ones (``adaptation.proposals``)."""
        plan = [p.to_state() for p in request.proposals]
        stored = load_evaluations(self.job.pk, request.iteration, plan)
        errors = [entry["error"] for entry in stored if entry and "error" in entry]
        if errors:
            raise JobError(errors[0])
        missing = [k for k, entry in enumerate(stored) if entry is None]
        if not missing:
            self.evaluated_by = [entry.get("worker") for entry in stored]
            self.paused = [entry.get("paused") for entry in stored]
            results = [ProposalResult.from_state(entry["result"]) for entry in stored]
            return Evaluated(results, lambda k: self.engine.rebuild(results[k].proposal.config,
                                                                    stored[k]["model_state"]))
        sent = fruitless_sends(self.job.pk, request.iteration, done=len(plan) - len(missing))
        if sent >= max_attempts():
            raise JobError(f"the proposals of iteration {request.iteration} were lost {sent} times "
                           "(worker killed or out of memory?); not trying again")
        if dispatch_count(self.job.pk, request.iteration):
            publish(self.job.pk, "job.log", {
                "level": "warning", "message": f"{len(missing)} proposal(s) of iteration {request.iteration} "
                                              "sent again: their tasks were lost (worker killed?)"})
        raise Parked("evaluation", f"{len(missing)} proposal(s) of iteration {request.iteration} "
                                   "are being fine-tuned",
                     then=lambda: dispatch_evaluations(self.job.pk, request.iteration, plan, missing))

    # ------------------------------------------------------------------ records

    def _insert_iteration(self, number: int, record: dict, **fields) -> Iteration | None:
        """The new row, or None when it exists already (a redelivered or resumed step)."""
        try:
            with transaction.atomic():
                return Iteration.objects.create(
                    job_id=self.job.pk, number=number, record=record, resource=record["resource"],
                    resource_raw=record["resource_raw"], measured_ms=_measured_ms(record),
                    macs=record["macs"], params=record["params"],
                    holdout_accuracy=record["holdout_accuracy"], **fields)
        except IntegrityError:
            logger.info("job %s: iteration %s is stored already; skipping it", self.job.pk, number)
            return None

    def _record_start(self, start: dict) -> None:
        """Row -1 (the original network) and ``job.start``, from ``AdaptState.start``."""
        with transaction.atomic():
            self._hold_lease()
            if self._insert_iteration(-1, start, validation_accuracy=start["validation_accuracy"]) is None:
                return
            publish(self.job.pk, "job.start", start)
            for warning in start.get("warnings", []):
                publish(self.job.pk, "job.log", {"level": "warning", "message": warning})

    def _record_iteration(self, record: dict, model_name: str | None) -> None:
        """The iteration's row, its proposals and ``job.iteration``, from ``IterationRecord.to_dict()``."""
        with transaction.atomic():
            self._hold_lease()
            iteration = self._insert_iteration(record["iteration"], record, model_file=model_name)
            if iteration is None:
                return
            Proposal.objects.bulk_create([
                Proposal(iteration=iteration, group=p["group"], channels=p["channels"],
                         resource=p["resource"], holdout_accuracy=p.get("holdout_accuracy"),
                         chosen=p["group"] == record["chosen_group"], record=p)
                for p in record["proposals"]])
            publish(self.job.pk, "job.iteration", iteration_payload(record))
            for note in record.get("notes") or ():  # the engine's (a table that misleads)
                publish(self.job.pk, "job.log", {"level": "warning",
                                                 "message": f"Iteration {record['iteration']}: {note}"})

    def _finish(self, finish: FinishRecord, spec: Architecture) -> None:
        self.files.save_final(finish.model, spec, finish.channels)
        result = finish.to_dict()
        with transaction.atomic():
            self._hold_lease()
            if finish.iterations:
                Iteration.objects.filter(job_id=self.job.pk, number=finish.iterations - 1).update(
                    validation_accuracy=finish.validation_accuracy)
            Job.objects.filter(pk=self.job.pk).update(status=Job.Status.FINISHED, result=result, error="",
                                                      finished_at=timezone.now())
            publish(self.job.pk, "job.finish", result)
            publish(self.job.pk, "job.status", {"status": Job.Status.FINISHED, "error": ""})
