"""The one module that publishes job events.

The database is the source of truth: every event is a ``JobEvent`` row with a per-job sequence
number. After the row commits, it is sent to the channel-layer group ``job.<id>``; consumers
forward it to browsers. With the in-memory layer of the embedded mode the worker process cannot
reach the web process's layer, so consumers there also poll the table (``EVENT_POLL_SECONDS``).

Event types (``JobEvent.type``) and their payloads:
- ``job.status``: StatusPayload — the job's status changed.
- ``job.start``: the engine's start record (original resource, budget, accuracies, warnings).
- ``job.measure``: MeasurePayload — look-up-table or whole-network measurement progress.
- ``job.iteration``: IterationPayload — one finished NetAdapt iteration (a point on the chart).
- ``job.finish``: the engine's finish record (after the long-term fine-tune and A/B check).
- ``job.log``: LogPayload — a line for the job's log.
- ``job.child``: ChildPayload — a child job (baseline, fine-tune of a point) finished: its points
  for this job's chart.
"""
from __future__ import annotations

from typing import Any, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import IntegrityError, transaction
from django.db.models import Max

from adaptation.models import JobEvent

EVENT_TYPES = ("job.status", "job.start", "job.measure", "job.iteration", "job.finish", "job.log",
               "job.child")


class StatusPayload(TypedDict, total=False):
    status: str          # always there
    error: str           # always there
    waiting_for: str     # with "waiting": what for, in a sentence


class MeasurePayload(TypedDict, total=False):
    reason: str
    signatures: int      # layer entries to measure
    networks: int        # whole networks to measure
    request: int         # the MeasurementRequest's id
    device: str          # the device's name
    done: bool
    table_size: int      # entries in the device's table afterwards


class IterationPayload(TypedDict):
    number: int
    chosen_group: str
    channels: dict[str, int]
    resource: float
    resource_raw: float
    measured_ms: float | None
    macs: int
    params: int
    holdout_accuracy: float
    proposals: list[dict[str, Any]]
    phases_s: dict[str, float]  # where the iteration's time went (netadapt.loop.PHASES)
    wall_s: float | None        # its wall time; the phases add up to it


class ChildPayload(TypedDict):
    kind: str            # "baseline" | "finetune"
    job: int             # the child job's id
    points: list[dict]   # label, resource, measured_ms, holdout_accuracy, validation_accuracy...


class LogPayload(TypedDict):
    level: str           # "info" | "warning" | "error"
    message: str


class EventMessage(TypedDict):
    """What goes over the channel layer and the websocket for one event."""

    type: str            # channel-layer handler name: always "job.event"
    job: int
    seq: int
    event_type: str
    payload: dict[str, Any]
    created: str


def group_name(job_id: int) -> str:
    return f"job.{job_id}"


def message_of(event) -> EventMessage:
    return {"type": "job.event", "job": event.job_id, "seq": event.seq, "event_type": event.type,
            "payload": event.payload, "created": event.created.isoformat()}


def publish(job_id: int, event_type: str, payload: dict[str, Any]):
    """Store the event with the job's next sequence number, then send it once committed."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type '{event_type}'")
    for _ in range(5):  # two writers racing for a sequence number: the loser retries
        try:
            with transaction.atomic():
                last = JobEvent.objects.filter(job_id=job_id).aggregate(m=Max("seq"))["m"] or 0
                event = JobEvent.objects.create(job_id=job_id, seq=last + 1, type=event_type,
                                                payload=payload)
                transaction.on_commit(lambda: _send(event))
            return event
        except IntegrityError:
            continue
    raise RuntimeError(f"could not allocate an event sequence number for job {job_id}")


def _send(event) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group_name(event.job_id), message_of(event))
