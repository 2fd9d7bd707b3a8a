"""REST API of models and datasets (under /api/v1/models and /api/v1/datasets); jobs are in
``adaptation.api_jobs``.

Uploads are multipart and validated exactly as the pages validate them: the same forms
(and ``adaptation.uploads`` stores them). Invalid form input is a 400 naming the field, and nothing is stored. A
valid upload answers 202 at once with the stored row, status ``checking``: the checking worker
then runs the model pre-flight or the archive checks and moves ``status`` to ``ready`` or
``rejected`` (``error`` says why); poll the object's URL. Users see their own models, and their own datasets plus the
built-in ones; a stranger's object is a 404.
"""
from __future__ import annotations

from typing import Callable

from django import forms
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from adaptation.access import datasets_visible_to, get_dataset_for_user, get_model_for_user
from adaptation.forms import DatasetUploadForm, ModelUploadForm
from adaptation.models import Dataset, ModelUpload
from adaptation.uploads import create_dataset_upload, create_model_upload
from webapp.lib.api import NOT_FOUND, VALIDATION_ERROR, form_errors, form_serializer, invalid, request_fields
from webapp.lib.uploads import upload_limit_error

ModelUploadRequest = form_serializer(ModelUploadForm, "ModelUploadRequest")
DatasetUploadRequest = form_serializer(DatasetUploadForm, "DatasetUploadRequest")


class ModelUploadSerializer(serializers.ModelSerializer):
    preflight = serializers.JSONField(
        read_only=True, help_text="The pre-flight report: spec, macs, params, layers, onnx_bytes, groups "
                                  "(prunable channel groups), notes.")

    class Meta:
        model = ModelUpload
        fields = ["id", "name", "source", "arch", "width", "num_classes", "in_channels", "resolution",
                  "status", "error", "preflight", "created"]
        read_only_fields = fields


class DatasetSerializer(serializers.ModelSerializer):
    builtin = serializers.BooleanField(source="is_builtin", read_only=True,
                                       help_text="Shared by all users and read-only.")
    summary = serializers.JSONField(
        read_only=True, help_text="sizes (per split), num_classes, in_channels, resolution, class_names, "
                                  "class_counts (per split); may be empty for built-ins.")

    class Meta:
        model = Dataset
        fields = ["id", "name", "kind", "builtin_name", "builtin", "status", "error", "summary", "created"]
        read_only_fields = fields


def _create_upload(request, form_class: type[forms.BaseForm], create: Callable,
                   serializer_class: type[serializers.Serializer]) -> Response:
    """Validate the request with the page's upload form, then ``create(user, form)``: 202 with the
    new object (``checking``), or 400 naming the field (the size-limit message replaces "required")."""
    data = request_fields(request)  # parses the body first: the limit handler has run after this
    form = form_class(data, request.FILES, upload_error=upload_limit_error(request._request))
    if not form.is_valid():
        return invalid(form_errors(form))
    return Response(serializer_class(create(request.user, form)).data, status=status.HTTP_202_ACCEPTED)


class ModelList(generics.ListCreateAPIView):
    """Your models; ``POST`` (multipart) uploads a built-in architecture's weights or an ONNX file.

    ``source`` is ``builtin`` (``arch``, ``width``, ``num_classes``, ``in_channels`` and
    ``resolution`` required) or ``onnx`` (those are read from the file); left out, it is ``onnx``
    for a file named ``*.onnx``. The answer is 202 with the upload, status ``checking``; the
    pre-flight check then runs in the checking worker and moves it to ``ready`` (with its report)
    or ``rejected`` (``error`` says why; the file is deleted). Poll ``GET /api/v1/models/{id}``.
    """

    serializer_class = ModelUploadSerializer
    queryset = ModelUpload.objects.none()
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return ModelUpload.objects.filter(owner=self.request.user).order_by("-created", "-pk")

    @extend_schema(request={"multipart/form-data": ModelUploadRequest},
                   responses={202: ModelUploadSerializer, 400: VALIDATION_ERROR})
    def post(self, request, *args, **kwargs):
        return _create_upload(request, ModelUploadForm, create_model_upload, ModelUploadSerializer)


class ModelDetail(generics.RetrieveAPIView):
    """One of your models, with its pre-flight report."""

    serializer_class = ModelUploadSerializer
    queryset = ModelUpload.objects.none()

    def get_object(self):
        return get_model_for_user(self.request.user, self.kwargs["id"])

    @extend_schema(responses={200: ModelUploadSerializer, 404: NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


class DatasetList(generics.ListCreateAPIView):
    """Built-in datasets and yours; ``POST`` (multipart) uploads a zip of an image folder
    (``<class>/<image>``): 202 with the dataset, status ``checking``; the checking worker extracts
    and checks it and moves it to ``ready`` (with its summary) or ``rejected`` (``error`` says why,
    no files kept). Poll ``GET /api/v1/datasets/{id}``."""

    serializer_class = DatasetSerializer
    queryset = Dataset.objects.none()
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return datasets_visible_to(self.request.user).order_by("name", "pk")

    @extend_schema(request={"multipart/form-data": DatasetUploadRequest},
                   responses={202: DatasetSerializer, 400: VALIDATION_ERROR})
    def post(self, request, *args, **kwargs):
        return _create_upload(request, DatasetUploadForm, create_dataset_upload, DatasetSerializer)


class DatasetDetail(generics.RetrieveAPIView):
    """One dataset: yours or a built-in one."""

    serializer_class = DatasetSerializer
    queryset = Dataset.objects.none()

    def get_object(self):
        return get_dataset_for_user(self.request.user, self.kwargs["id"])

    @extend_schema(responses={200: DatasetSerializer, 404: NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)
