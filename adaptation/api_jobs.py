"""REST API of adaptation jobs (under /api/v1/jobs): list, create, get with iterations, cancel,
download an iteration's network, report.

A job is created from the fields of the page's ``JobForm`` (same validation; a field left out
takes the form's default, the paper's settings) and handed to the runner. Every job is its
owner's: a stranger's is a 404 on every endpoint.
"""
from __future__ import annotations

from collections.abc import Collection

from django.http import FileResponse, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from adaptation.access import get_job_for_user
from adaptation.job_forms import JobForm
from adaptation.models import Iteration, Job, Proposal
from adaptation.downloads import (ITERATION_FORMATS, REPORT_FORMATS, ExportFailed, FileUnavailable,
                                  final_iteration_number, open_iteration_file, report_file)
from adaptation.job_actions import cancel_job, create_job
from webapp.lib.api import (DETAIL, NOT_FOUND, VALIDATION_ERROR, FileEndpointMixin, detail, form_errors,
                        form_serializer, invalid, request_fields)

JobCreateRequest = form_serializer(
    JobForm, "JobCreateRequest", initial_is_default=True,
    ids={"model": "Id of one of your models (status ready).",
         "dataset": "Id of a built-in dataset or one of yours (status ready).",
         "device": "Id of the system device or one of yours."})
#: What a field left out of a create request is: the form's initial value (the paper's defaults).
JOB_DEFAULTS = {name: field.initial for name, field in JobForm.base_fields.items() if field.initial is not None}
JOB_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The job's id.")


class ProposalSerializer(serializers.ModelSerializer):
    class Meta:
        model = Proposal
        fields = ["group", "channels", "resource", "holdout_accuracy", "chosen"]
        read_only_fields = fields


class IterationSerializer(serializers.ModelSerializer):
    chosen_group = serializers.SerializerMethodField(help_text="The group shrunk in this iteration.")
    channels = serializers.SerializerMethodField(help_text="Channels of every group after it.")
    wall_s = serializers.SerializerMethodField(
        help_text="Seconds from the iteration's start to its record, waits included (null for -1).")
    phases_s = serializers.SerializerMethodField(
        help_text="Where wall_s went, in seconds by phase; the phases add up to wall_s.")
    proposals = ProposalSerializer(many=True, read_only=True)

    class Meta:
        model = Iteration
        fields = ["number", "chosen_group", "channels", "resource", "resource_raw", "measured_ms", "macs",
                  "params", "holdout_accuracy", "validation_accuracy", "created", "wall_s", "phases_s",
                  "proposals"]
        read_only_fields = fields

    def get_chosen_group(self, iteration: Iteration) -> str:
        return (iteration.record or {}).get("chosen_group", "")

    @extend_schema_field({"type": "number", "nullable": True})
    def get_wall_s(self, iteration: Iteration) -> float | None:
        return (iteration.record or {}).get("wall_s")

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "number"}})
    def get_phases_s(self, iteration: Iteration) -> dict:
        return (iteration.record or {}).get("phases_s") or {}

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "integer"}})
    def get_channels(self, iteration: Iteration) -> dict:
        return (iteration.record or {}).get("channels", {})


class JobSerializer(serializers.ModelSerializer):
    final_iteration = serializers.SerializerMethodField(
        help_text="The iteration whose download is the long-term fine-tuned final model (null until "
                  "the job has finished).")

    class Meta:
        model = Job
        fields = ["id", "kind", "parent", "model", "dataset", "device", "settings", "status",
                  "waiting_for", "cancel_requested", "error", "result", "final_iteration", "created",
                  "started_at", "finished_at"]
        read_only_fields = fields

    def get_final_iteration(self, job: Job) -> int | None:
        return final_iteration_number(job)


class JobDetailSerializer(JobSerializer):
    iterations = IterationSerializer(many=True, read_only=True,
                                     help_text="Points of the trade-off curve; -1 is the original network.")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "iterations"]
        read_only_fields = fields


class CancelSerializer(serializers.Serializer):
    detail = serializers.CharField()
    job = JobSerializer()


class JobList(generics.ListCreateAPIView):
    """Your jobs, newest first; ``POST`` starts an adaptation (JSON or form fields)."""

    serializer_class = JobSerializer
    queryset = Job.objects.none()

    def get_queryset(self):
        return Job.objects.filter(owner=self.request.user).order_by("-created", "-pk")

    @extend_schema(request=JobCreateRequest, responses={201: JobSerializer, 400: VALIDATION_ERROR})
    def post(self, request, *args, **kwargs):
        form = JobForm({**JOB_DEFAULTS, **request_fields(request)}, user=request.user)
        if not form.is_valid():
            return invalid(form_errors(form))
        job = create_job(request.user, form)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)


class JobDetail(generics.RetrieveAPIView):
    """One of your jobs with its iterations and their proposals."""

    serializer_class = JobDetailSerializer
    queryset = Job.objects.none()

    def get_object(self):
        job = get_job_for_user(self.request.user, self.kwargs["id"])
        return Job.objects.prefetch_related("iterations__proposals").get(pk=job.pk)

    @extend_schema(responses={200: JobDetailSerializer, 404: NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class JobCancel(APIView):
    """Cancel a job: a queued or waiting one stops now (200), a running one at its next step or
    within 25 steps of a fine-tune (202); a job that has ended already is a 409."""

    @extend_schema(request=None, parameters=[JOB_ID], responses={
        200: OpenApiResponse(CancelSerializer, description="Cancelled."),
        202: OpenApiResponse(CancelSerializer, description="Cancel requested: it stops at its next step (within 25 steps of a fine-tune)."),
        404: NOT_FOUND, 409: OpenApiResponse(DETAIL, description="The job has ended already.")})
    def post(self, request, id: int):
        job = get_job_for_user(request.user, id)
        outcome = cancel_job(job)
        if outcome.done == "inactive":
            return detail(outcome.message, status.HTTP_409_CONFLICT)
        job.refresh_from_db()
        code = status.HTTP_200_OK if outcome.done == "cancelled" else status.HTTP_202_ACCEPTED
        return Response({"detail": outcome.message, "job": JobSerializer(job).data}, status=code)


def _format(request, allowed: Collection[str], default: str) -> str | Response:
    """The ``?format=`` asked for (``default`` if none), or a 400 naming the allowed ones."""
    fmt = request.query_params.get("format", default)
    if fmt not in allowed:
        return invalid({"format": [f"Unknown format '{fmt}': use one of {', '.join(allowed)}."]})
    return fmt


class IterationDownload(FileEndpointMixin, APIView):
    """Iteration ``number``'s network as a file. PyTorch files are kept for every iteration; ONNX
    and TorchScript are exported from it on request (checked against PyTorch). The job's final
    iteration (``final_iteration``) gives the long-term fine-tuned final files."""

    @extend_schema(parameters=[
        JOB_ID, OpenApiParameter("number", int, OpenApiParameter.PATH, description="The iteration's number."),
        OpenApiParameter("format", str, enum=list(ITERATION_FORMATS), default="pytorch",
                         description="pytorch: state dict + architecture + channels (load it with "
                                     "adaptation.netadapt.export.load_pytorch); onnx; torchscript (traced).")],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, 400: VALIDATION_ERROR,
                   404: OpenApiResponse(DETAIL, description="Not yours, no such iteration, or no file."),
                   500: OpenApiResponse(DETAIL, description="The on-demand export failed.")})
    def get(self, request, id: int, number: str):
        job = get_job_for_user(request.user, id)
        fmt = _format(request, ITERATION_FORMATS, "pytorch")
        if isinstance(fmt, Response):
            return fmt
        try:
            handle, filename = open_iteration_file(job, int(number), fmt)
        except FileUnavailable as error:
            return detail(str(error), status.HTTP_404_NOT_FOUND)
        except ExportFailed as error:
            return detail(str(error), status.HTTP_500_INTERNAL_SERVER_ERROR)
        return FileResponse(handle, as_attachment=True, filename=filename,
                            content_type="application/octet-stream")


class JobReport(FileEndpointMixin, APIView):
    """The job's report: every iteration (and the original, -1) with its resource, accuracy,
    MACs and parameters; JSON adds the settings, the result, channels and proposals."""

    @extend_schema(parameters=[JOB_ID, OpenApiParameter("format", str, enum=list(REPORT_FORMATS), default="json")],
                   responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/csv"): OpenApiTypes.STR,
                              400: VALIDATION_ERROR, 404: NOT_FOUND})
    def get(self, request, id: int):
        job = get_job_for_user(request.user, id)
        fmt = _format(request, REPORT_FORMATS, "json")
        if isinstance(fmt, Response):
            return fmt
        text, content_type, filename = report_file(job, fmt)
        return HttpResponse(text, content_type=content_type,
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
