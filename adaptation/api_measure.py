"""REST API of measurements: ``POST /api/v1/devices/<id>/measure`` starts one (a model, or a
point of a job), ``GET /api/v1/measurements/<id>`` follows it to its results,
``POST /api/v1/measurements/<id>/cancel`` cancels it while it is queued.

The same service as the pages' "Measure on…" form (``adaptation.measure_model``): a stranger's model,
job, device or measurement is a 404; a point that cannot be measured is a 400 naming the field,
and nothing is stored.
"""
from __future__ import annotations

from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adaptation import measure_model
from devices.access import get_device_for_user
from adaptation.measure_model import MeasureError
from devices.models import MeasurementRequest
from webapp.lib.api import DETAIL, NOT_FOUND, VALIDATION_ERROR, detail, invalid, request_fields


class MeasureStartRequest(serializers.Serializer):
    model = serializers.IntegerField(required=False, help_text="Id of one of your models (status ready).")
    job = serializers.IntegerField(required=False, help_text="Id of one of your jobs (instead of a model).")
    iteration = serializers.IntegerField(
        required=False, help_text="With job: the iteration whose network to measure (it must have a "
                                  "download); left out, the job's final network.")


class MeasurementSerializer(serializers.ModelSerializer):
    job = serializers.IntegerField(source="job_id", read_only=True, allow_null=True,
                                   help_text="The job that asked for it; null for one you started.")
    signatures = serializers.SerializerMethodField(
        help_text="Layers the device's look-up table lacked, measured into it with the network.")
    networks = serializers.SerializerMethodField(help_text="The label of each network measured whole.")
    results = serializers.JSONField(
        read_only=True, help_text="Per network, once done: n, min_ms, p10_ms, median_ms, p90_ms, mean_ms, "
                                  "std_ms and, measured on the server's CPU, samples_ms (at most 1000 per-run "
                                  "times).")
    page = serializers.SerializerMethodField(help_text="The measurement's web page.")

    class Meta:
        model = MeasurementRequest
        fields = ["id", "device", "job", "reason", "status", "error", "runtime", "runtime_version", "threads",
                  "example_shape", "signatures", "signatures_done", "networks", "results", "page", "created",
                  "started_at", "finished_at"]
        read_only_fields = fields

    def get_signatures(self, measurement: MeasurementRequest) -> int:
        return len(measurement.signatures)

    def get_networks(self, measurement: MeasurementRequest) -> list[str]:
        return [description.get("label", "") for description in measurement.networks]

    def get_page(self, measurement: MeasurementRequest) -> str:
        return reverse("measurement_detail", args=[measurement.pk])


DEVICE_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The device's id.")
MEASUREMENT_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The measurement's id.")


class MeasureStart(APIView):
    """Measure a network on the device: ``{"model": id}`` (the uploaded network) or ``{"job": id,
    "iteration": n}`` (a point of the job's curve; without ``iteration``, its final network).
    Answers 202 with the measurement, queued; follow it at ``/api/v1/measurements/<id>``."""

    @extend_schema(parameters=[DEVICE_ID], request=MeasureStartRequest, responses={
        202: MeasurementSerializer, 400: VALIDATION_ERROR, 404: NOT_FOUND})
    def post(self, request, id: int):
        device = get_device_for_user(request.user, id)
        data = request_fields(request)
        given = {name for name in ("model", "job") if data.get(name) not in (None, "")}
        try:
            if given == {"model", "job"}:
                raise MeasureError("Give a model or a job, not both.")
            if "job" in given:
                target = measure_model.job_target(request.user, data["job"], data.get("iteration"))
            elif "model" in given:
                if data.get("iteration") not in (None, ""):
                    raise MeasureError("An iteration goes with a job, not with a model.", "iteration")
                target = measure_model.model_target(request.user, data["model"])
            else:
                raise MeasureError('Give the model to measure ({"model": id}) or a job\'s point '
                                   '({"job": id, "iteration": n}).')
            measurement = measure_model.start_measurement(request.user, device, target)
        except MeasureError as error:
            return invalid({error.field or "non_field_errors": [str(error)]})
        return Response(MeasurementSerializer(measurement).data, status=status.HTTP_202_ACCEPTED)


class MeasurementDetail(APIView):
    """One of your measurements: its status (queued, running, done, failed with ``error``) and, once
    done, its results."""

    @extend_schema(parameters=[MEASUREMENT_ID], responses={200: MeasurementSerializer, 404: NOT_FOUND})
    def get(self, request, id: int):
        measurement = get_object_or_404(MeasurementRequest, pk=id, owner=request.user)
        return Response(MeasurementSerializer(measurement).data)


class MeasurementCancel(APIView):
    """Cancel one of your measurements while it is queued: 200 with it (status ``cancelled``; no
    device will run it). 409 when it has started or ended, or belongs to a job (cancel the job:
    ``POST /api/v1/jobs/<id>/cancel``)."""

    @extend_schema(request=None, parameters=[MEASUREMENT_ID], responses={
        200: MeasurementSerializer, 404: NOT_FOUND,
        409: OpenApiResponse(DETAIL, description="Not queued any more, or a job's measurement.")})
    def post(self, request, id: int):
        measurement = get_object_or_404(MeasurementRequest, pk=id, owner=request.user)
        try:
            measure_model.cancel_measurement(measurement)
        except MeasureError as error:
            return detail(str(error), status.HTTP_409_CONFLICT)
        return Response(MeasurementSerializer(measurement).data)
