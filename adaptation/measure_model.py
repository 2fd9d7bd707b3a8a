"""Measuring one network on a device outside any job: "Measure on…" on the model and job pages,
``POST /api/v1/devices/<id>/measure``, and what the measurement page shows.

A measurement is a ``MeasurementRequest`` with no job: one network (an uploaded model's, or the
network of one iteration of a job) timed whole, plus the layers of that network that the device's
look-up table lacks (so the page can break the network down layer by layer). A local device's
worker keeps the raw per-run times of such a request (``results[0]["samples_ms"]``) for the
histogram (agents send them too).

Who may ask: a user measures their own models and jobs (a stranger's is a 404) on the devices
they see (``devices_visible_to``). Every refusal is a ``MeasureError`` whose message is meant for
the user, and nothing is stored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch
from django.db import transaction
from django.utils import timezone

from adaptation.access import get_job_for_user, get_model_for_user
from adaptation.models import Iteration, Job, ModelUpload
from adaptation.netadapt.lut import entry_ms
from adaptation.netadapt.resources import CALL_OVERHEAD_SIGNATURE, LatencyTableModel
from adaptation.netadapt.architectures import build_network, describe_network
from adaptation.netadapt.spec import ArchitectureSpec
from adaptation.network_files import NetworkExportError, network_files
from adaptation.downloads import final_iteration_number, job_file
from devices.access import devices_visible_to
from devices.measure.signature import LayerSignature
from devices.measure.tracing import trace_layers
from devices.models import Device, MeasurementRequest
from devices.requests import device_table, open_request, remove_request_files, request_table

#: The table estimator the page sums, the engine's default (DESIGN §4: the steadiest between sessions).
ESTIMATOR = "min"
#: Bars of the histogram up to the 99th percentile; slower runs share one last bar.
HISTOGRAM_BINS = 30


class MeasureError(ValueError):
    """A measurement that cannot be started; ``field`` is the input it is about (None: the whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Target:
    """One network to measure: what it is called, and the description that rebuilds it."""

    label: str        # "model 'digits'", "job #3 iteration 2"
    description: dict  # adaptation.netadapt.architectures.describe_network
    example_shape: list[int]

    @property
    def reason(self) -> str:
        return f"measure {self.label}"


# --------------------------------------------------------------------------- what to measure


def _upload_description(upload: ModelUpload, channels: dict, label: str) -> dict:
    """``describe_network`` of the upload's architecture (weights do not change latency)."""
    if upload.source == "onnx":
        spec = dict((upload.preflight or {}).get("spec") or {})
        try:
            spec["path"] = upload.file.path
        except (NotImplementedError, AttributeError, ValueError):
            pass
        return {"label": label, "spec": spec, "channels": dict(channels)}
    spec = ArchitectureSpec(upload.arch, upload.num_classes, upload.in_channels, float(upload.width),
                            upload.resolution)
    return describe_network(spec, channels, label)


def _target(upload: ModelUpload, channels: dict, label: str) -> Target:
    if upload.status != ModelUpload.Status.READY:
        raise MeasureError(f"Model '{upload.name}' is {upload.get_status_display().lower()}: only a model "
                           "that passed the pre-flight check can be measured.", "model")
    if not upload.in_channels or not upload.resolution:
        raise MeasureError(f"Model '{upload.name}' does not say its input size.", "model")
    description = _upload_description(upload, channels, label)
    shape = [1, int(upload.in_channels), int(upload.resolution), int(upload.resolution)]
    traced_layers(description, shape, upload)  # an ONNX network that cannot be rebuilt fails here
    return Target(label, description, shape)


def model_target(user, model_id) -> Target:
    """The original network of one of the user's models (Http404 for another user's)."""
    upload = get_model_for_user(user, _id(model_id, "model"))
    if upload.status != ModelUpload.Status.READY:  # still being checked, or rejected (its file is gone)
        state = "is still being checked" if upload.status == ModelUpload.Status.CHECKING else "was rejected by its pre-flight check"
        raise MeasureError(f"Model '{upload.name}' {state}: only a checked model can be measured.", "model")
    return _target(upload, {}, f"model '{upload.name}'")


def job_target(user, job_id, iteration=None) -> Target:
    """The network of one iteration of one of the user's jobs; ``iteration`` None or "final": the
    job's final network (the network of its last iteration). Http404 for another user's job."""
    job: Job = get_job_for_user(user, _id(job_id, "job"))
    final = final_iteration_number(job)
    if iteration in (None, "", "final"):
        if final is None:
            raise MeasureError(f"Job #{job.pk} has no final network: it has not finished.", "iteration")
        number = final
    else:
        number = _id(iteration, "iteration", allow_negative=True)
    if number < 0:
        raise MeasureError(f"Iteration {number} of job #{job.pk} is the original network: measure model "
                           f"'{job.model.name}' from its page instead.", "iteration")
    row = Iteration.objects.filter(job=job, number=number).first()
    if row is None:
        raise MeasureError(f"Job #{job.pk} has no iteration {number}.", "iteration")
    kept = job_file(job, number, iteration=row).is_file() or (
        number == final and job_file(job, None, "pytorch").is_file())
    if not kept:
        raise MeasureError(f"The network file of iteration {number} of job #{job.pk} is not kept, so it "
                           "cannot be measured: choose an iteration that has a download.", "iteration")
    channels = (row.record or {}).get("channels")
    if not isinstance(channels, dict):
        raise MeasureError(f"Iteration {number} of job #{job.pk} does not record its channels.", "iteration")
    label = f"job #{job.pk} iteration {number}" + (" (final)" if number == final else "")
    return _target(job.model, channels, label)


def measurable_iterations(job: Job) -> list[dict]:
    """``{"value", "label"}`` of the job's points that can be measured (those with a file), the
    final network first."""
    final = final_iteration_number(job)
    final_kept = final is not None and job_file(job, None, "pytorch").is_file()
    options = []
    for row in job.iterations.filter(number__gte=0).order_by("-number"):
        if row.number == final and (final_kept or job_file(job, final, iteration=row).is_file()):
            options.insert(0, {"value": "final", "label": f"final network (iteration {final})"})
        elif job_file(job, row.number, iteration=row).is_file():
            options.append({"value": str(row.number), "label": f"iteration {row.number}"})
    return options


def _id(value, field: str, allow_negative: bool = False) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise MeasureError(f"'{value}' is not a valid {field} number.", field) from None
    if number < 0 and not allow_negative:
        raise MeasureError(f"'{value}' is not a valid {field} number.", field)
    return number


def visible_device(user, device_id) -> Device:
    """A device the user may measure on (theirs or the shared one), else a MeasureError."""
    try:
        pk = int(str(device_id).strip())
    except (TypeError, ValueError):
        pk = None
    device = devices_visible_to(user).filter(pk=pk).first() if pk is not None else None
    if device is None:
        raise MeasureError("Choose one of your devices or the server's CPU: that device is not one you "
                           "can measure on.", "device")
    return device


# --------------------------------------------------------------------------- starting it


def missing_signatures(device: Device, signatures: list[LayerSignature]) -> list[LayerSignature]:
    """The distinct signatures (and the per-call overhead entry the estimate needs) that the
    device's table lacks, in first-seen order."""
    try:
        table = device_table(device)
    except ValueError as error:  # an agent device set to a runtime the agent does not have
        message = str(error)
        raise MeasureError(message[:1].upper() + message[1:] + ".", "device") from None
    wanted = list(dict.fromkeys([CALL_OVERHEAD_SIGNATURE, *signatures]))
    held = table.lookup(wanted)
    return [signature for signature in wanted if signature not in held]


def start_measurement(user, device: Device, target: Target) -> MeasurementRequest:
    """Open the request (dispatched to the device when the transaction commits)."""
    layers = traced_layers(target.description, target.example_shape)
    missing = missing_signatures(device, [signature for _, signature in layers])
    try:
        with transaction.atomic():
            return open_request(owner=user, device=device, reason=target.reason,
                                runtime=device.runtime, threads=device.threads,
                                example_shape=target.example_shape,
                                signatures=[signature.to_dict() for signature in missing],
                                networks=[target.description],
                                network_files=network_files([target.description], target.example_shape,
                                                            device.runtime))
    except NetworkExportError as error:
        message = str(error)
        raise MeasureError(message[:1].upper() + message[1:] + ".") from None


def cancel_measurement(measurement: MeasurementRequest) -> None:
    """Cancel one of the user's own measurements while it is queued: no measurer claims it then
    (``claim_request`` and the agents' consumer take ``queued`` ones only). A MeasureError says
    why not: a job's request (cancel the job: it would otherwise wait for it for ever) or one
    that has started or ended."""
    if measurement.job_id is not None:
        raise MeasureError(f"This measurement belongs to job #{measurement.job_id}, which waits for it: cancel "
                           "the job instead (its page, or POST /api/v1/jobs/<id>/cancel).")
    cancelled = MeasurementRequest.objects.filter(
        pk=measurement.pk, status=MeasurementRequest.Status.QUEUED, job_id__isnull=True,
    ).update(status=MeasurementRequest.Status.CANCELLED, error="Cancelled by its owner before it started.",
             finished_at=timezone.now())
    if cancelled:
        remove_request_files(measurement)
    if not cancelled:
        measurement.refresh_from_db(fields=["status"])
        raise MeasureError(f"This measurement is {measurement.get_status_display().lower()} already: only a "
                           "queued one can be cancelled.")
    measurement.refresh_from_db()


# --------------------------------------------------------------------------- the network's layers


def _frozen(description: dict) -> str:
    return json.dumps(description, sort_keys=True, separators=(",", ":"))


@lru_cache(maxsize=16)
def _trace(description: str, shape: tuple[int, ...]) -> tuple[tuple[str, LayerSignature], ...]:
    """(module name, signature) of every conv/linear call of the described network, in call order
    (kept per process: the measurement page asks again for the same network)."""
    with torch.no_grad():
        traced = trace_layers(build_network(json.loads(description)), torch.zeros(shape))
    return tuple((layer.name, layer.signature) for layer in traced)


def traced_layers(description: dict, shape: list[int], upload: ModelUpload | None = None
                  ) -> list[tuple[str, LayerSignature]]:
    """The layers of a network description, or a MeasureError saying why it cannot be rebuilt."""
    try:
        return list(_trace(_frozen(description), tuple(shape)))
    except Exception as error:
        cause = f"{type(error).__name__}: {error}"
        if upload is not None and upload.source == "onnx":
            raise MeasureError(f"Model '{upload.name}' is an ONNX upload whose network cannot be rebuilt "
                               f"from its stored file ({cause}), so it cannot be measured.", "model") from None
        raise MeasureError(f"The network cannot be rebuilt ({cause}), so it cannot be measured.") from None


def network_layers(request: MeasurementRequest, index: int = 0) -> list[tuple[str, LayerSignature]]:
    """The traced layers of the request's network ``index``."""
    return traced_layers(request.networks[index], request.example_shape)


# --------------------------------------------------------------------------- what the page shows


def signature_summary(signature: LayerSignature) -> str:
    """``conv 3×3 /2 dw, 16→16, 8×8, bn+relu``; ``linear 64→10``."""
    if signature.op == "linear":
        text = f"linear {signature.in_channels}→{signature.out_channels}"
    else:
        kernel, stride, size = signature.kernel, signature.stride, signature.input_hw
        text = f"conv {kernel[0]}×{kernel[1]}"
        if stride != (1, 1):
            text += f" /{stride[0]}" if stride[0] == stride[1] else f" /{stride[0]}×{stride[1]}"
        if signature.groups > 1:
            text += " dw" if signature.groups == signature.in_channels else f" g{signature.groups}"
        text += f", {signature.in_channels}→{signature.out_channels}, {size[0]}×{size[1]}"
    return text + (f", {signature.fused}" if signature.fused else "")


@dataclass
class Breakdown:
    """The look-up table's view of one network: per layer, and summed the engine's way."""

    rows: list[dict]           # name, summary, key, min_ms, median_ms, cost_ms, percent; by cost
    overhead_ms: float | None  # the per-call overhead counted once in the sum
    raw_ms: float | None       # LatencyTableModel's raw sum; None when entries are missing
    missing: int               # layers whose signature the table lacks

    @property
    def overhead_percent(self) -> float | None:
        if self.overhead_ms is None or not self.raw_ms:
            return None
        return 100 * self.overhead_ms / self.raw_ms


def layer_breakdown(request: MeasurementRequest, index: int = 0) -> Breakdown:
    """Every traced layer of the request's network with its table entry and share of the raw sum.

    The sum is ``LatencyTableModel.raw_ms``: the per-call overhead once, plus each layer's entry
    minus that overhead (never below 0), the entries read with ``ESTIMATOR``.
    """
    layers = network_layers(request, index)
    table = request_table(request, request.runtime_version)
    entries = table.lookup([CALL_OVERHEAD_SIGNATURE, *(signature for _, signature in layers)])
    overhead = entries.get(CALL_OVERHEAD_SIGNATURE)
    overhead_ms = entry_ms(overhead, ESTIMATOR) if overhead is not None else None
    missing = sum(1 for _, signature in layers if signature not in entries)
    raw = None
    if overhead is not None and not missing:
        raw = LatencyTableModel(table, estimator=ESTIMATOR).raw_ms([signature for _, signature in layers])
    rows = []
    for name, signature in layers:
        stats = entries.get(signature)
        cost = None
        if stats is not None and overhead_ms is not None:
            cost = max(entry_ms(stats, ESTIMATOR) - overhead_ms, 0.0)
        rows.append({"name": name, "summary": signature_summary(signature), "key": signature.key(),
                     "min_ms": stats.min_ms if stats else None,
                     "median_ms": stats.median_ms if stats else None, "cost_ms": cost,
                     "percent": 100 * cost / raw if cost is not None and raw else None})
    rows.sort(key=lambda row: -1.0 if row["cost_ms"] is None else row["cost_ms"], reverse=True)
    return Breakdown(rows, overhead_ms, raw, missing)


def histogram(samples_ms: list[float], bins: int = HISTOGRAM_BINS) -> dict:
    """Bars of equal width from the fastest run to the 99th percentile, and one last bar for the
    slower runs (a long tail would squeeze every other bar into one). Counts add up to the samples.

    ``{"edges": [bins + 1 floats], "counts": [bins ints], "tail": int, "tail_from": float}``.
    """
    values = sorted(float(v) for v in samples_ms)
    if not values:
        return {"edges": [], "counts": [], "tail": 0, "tail_from": None}
    low = values[0]
    high = values[min(len(values) - 1, int(0.99 * (len(values) - 1) + 0.5))]
    if high <= low:
        high = values[-1]
    if high <= low:  # every sample equal
        return {"edges": [low, low], "counts": [len(values)], "tail": 0, "tail_from": None}
    width = (high - low) / bins
    counts = [0] * bins
    tail = 0
    for value in values:
        if value > high:
            tail += 1
        else:
            counts[min(int((value - low) / width), bins - 1)] += 1
    return {"edges": [round(low + i * width, 6) for i in range(bins)] + [high], "counts": counts,
            "tail": tail, "tail_from": high if tail else None}


def calibration_points(user, device: Device) -> int:
    """Whole-network measurements of the user's latency jobs on the device, which a job would fit
    its calibration on (this page shows the raw sum, uncalibrated)."""
    rows = Iteration.objects.filter(job__owner=user, job__device=device, measured_ms__isnull=False,
                                    resource_raw__isnull=False).values_list("job__settings", flat=True)
    return sum(1 for settings in rows if (settings or {}).get("metric", "latency") == "latency")
