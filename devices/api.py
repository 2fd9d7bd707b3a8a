"""REST API of devices: list, create, get, delete, and the look-up table's export and import
(under /api/v1/devices).

Users see their own devices and the shared system device (the server's CPU, ``owner`` None).
They create ``agent`` devices only: an agent program on their phone or computer measures for
them (pairing comes later); ``local`` is the server itself, which ``bootstrap`` creates once for
everyone. A stranger's device is a 404; the system device cannot be deleted, nor given an imported table
(403). Table files are ``devices.lut_io``'s format, checked the same way as on the pages.
"""
from __future__ import annotations

from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import Count, ProtectedError
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.parsers import BaseParser, FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from devices import lut_io
from devices.access import devices_visible_to, get_device_for_user
from devices.forms import MAX_THREADS, LutImportForm, lut_max_bytes
from devices.models import Device
from devices.usage import used_by
from webapp.lib.api import DETAIL, NOT_FOUND, VALIDATION_ERROR, FileEndpointMixin, detail, form_errors, invalid
from webapp.lib.uploads import upload_limit_error

SYSTEM_DEVICE_MESSAGE = "The server's own CPU is shared and cannot be deleted."


class DeviceSerializer(serializers.ModelSerializer):
    system = serializers.BooleanField(source="is_system", read_only=True,
                                      help_text="The shared server CPU: visible to all, read-only.")
    kind = serializers.ChoiceField(choices=Device.KIND_CHOICES, default="agent",
                                   help_text='Only "agent" can be created: "local" is the server itself.')
    threads = serializers.IntegerField(min_value=1, max_value=MAX_THREADS, default=1,
                                       help_text="Threads the runtime uses when measuring.")
    lut_entries = serializers.SerializerMethodField(
        help_text="Entries of the device's latency look-up table (every runtime and thread count).")
    paired = serializers.SerializerMethodField(help_text="An agent program holds a valid token for it.")

    class Meta:
        model = Device
        fields = ["id", "name", "kind", "runtime", "threads", "description", "system", "status",
                  "last_seen", "facts", "lut_entries", "paired", "created"]
        read_only_fields = ["status", "last_seen", "facts", "created"]
        extra_kwargs = {"description": {"required": False}}

    def get_lut_entries(self, device: Device) -> int:
        counted = getattr(device, "lut_size", None)  # annotated by the list
        return device.latency_entries.count() if counted is None else counted

    def get_paired(self, device: Device) -> bool:
        return bool(device.token_hash)

    def validate_kind(self, value: str) -> str:
        if value != "agent":
            raise serializers.ValidationError(
                f'Devices of kind "{value}" cannot be created: "local" is the server\'s own CPU, '
                'shared by everyone. Create an "agent" device for a phone or computer of yours.')
        return value


class DeviceList(generics.ListCreateAPIView):
    """Your devices and the shared system device; ``POST`` creates an agent device of yours."""

    serializer_class = DeviceSerializer
    queryset = Device.objects.none()  # for the schema; get_queryset filters by user

    def get_queryset(self):
        return (devices_visible_to(self.request.user).annotate(lut_size=Count("latency_entries"))
                .order_by("name", "pk"))

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user, status=Device.Status.OFFLINE)

    @extend_schema(responses={201: DeviceSerializer, 400: VALIDATION_ERROR})
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)


class DeviceDetail(generics.RetrieveDestroyAPIView):
    """One device (yours or the system device); ``DELETE`` removes one of yours."""

    serializer_class = DeviceSerializer
    queryset = Device.objects.none()

    def get_object(self):
        return get_device_for_user(self.request.user, self.kwargs["id"])

    @extend_schema(responses={200: DeviceSerializer, 404: NOT_FOUND})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(responses={
        204: OpenApiResponse(description="Deleted, with its latency look-up table."),
        403: OpenApiResponse(DETAIL, description="The system device cannot be deleted."),
        404: NOT_FOUND,
        409: OpenApiResponse(DETAIL, description="Jobs use the device: delete them first.")})
    def delete(self, request, *args, **kwargs):
        device = self.get_object()
        if device.is_system:
            return detail(SYSTEM_DEVICE_MESSAGE, status.HTTP_403_FORBIDDEN)
        try:
            device.delete()
        except ProtectedError:
            return detail(f"{device.name} is used by {used_by(device)}; delete those first.",
                          status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)


class LutJSONParser(BaseParser):
    """A JSON body kept as bytes (at most the import limit + 1), so ``devices.lut_io`` reads it and
    names its problems the way the pages do."""

    media_type = "application/json"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        return stream.read(lut_max_bytes() + 1) if stream is not None else b""


LUT_ID = OpenApiParameter("id", int, OpenApiParameter.PATH, description="The device's id.")
LUT_FILE = {"type": "object", "description": "A look-up-table file (docs/api.md): format, version, device, "
                                             "entries.",
            "properties": {"format": {"type": "string", "enum": [lut_io.FORMAT]},
                           "version": {"type": "integer", "enum": [lut_io.VERSION]},
                           "device": {"type": "object"},
                           "entries": {"type": "array", "items": {"type": "object"}}},
            "required": ["format", "version", "entries"]}
LUT_IMPORT_REQUEST = {"type": "object", "properties": {
    "file": {"type": "string", "format": "binary", "description": "The look-up-table JSON file."},
    "overwrite": {"type": "boolean", "default": False,
                  "description": "Replace entries the device has already (else they are kept)."}},
    "required": ["file"]}
LUT_IMPORT_RESULT = {"type": "object", "properties": {
    "added": {"type": "integer"}, "replaced": {"type": "integer"}, "kept": {"type": "integer"},
    "detail": {"type": "string"}}}


class DeviceLut(FileEndpointMixin, APIView):
    """``GET``: the device's look-up table as a JSON file. ``POST``: import such a file into one of
    your devices (multipart ``file`` + ``overwrite``, or the file itself as a JSON body with
    ``?overwrite=true``). All or nothing: one bad entry and nothing is stored."""

    parser_classes = [MultiPartParser, FormParser, LutJSONParser]

    @extend_schema(parameters=[LUT_ID], responses={(200, "application/json"): LUT_FILE, 404: NOT_FOUND})
    def get(self, request, id: int):
        device = get_device_for_user(request.user, id)
        return HttpResponse(lut_io.export_bytes(device), content_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="device-{device.pk}-lut.json"'})

    @extend_schema(
        parameters=[LUT_ID, OpenApiParameter("overwrite", bool, default=False,
                                             description="With a JSON body: replace entries the device has.")],
        request={"multipart/form-data": LUT_IMPORT_REQUEST, "application/json": LUT_FILE},
        responses={200: OpenApiResponse(LUT_IMPORT_RESULT, description="Imported: entries added, replaced, kept."),
                   400: VALIDATION_ERROR,
                   403: OpenApiResponse(DETAIL, description="The system device measures its own table."),
                   404: NOT_FOUND})
    def post(self, request, id: int):
        device = get_device_for_user(request.user, id)
        if device.is_system:
            return detail(lut_io.SYSTEM_DEVICE_REFUSAL, status.HTTP_403_FORBIDDEN)
        body = request.data
        if isinstance(body, bytes):
            overwrite = request.query_params.get("overwrite", "")
            form = LutImportForm({"overwrite": overwrite.lower() in ("1", "true", "yes", "on")},
                                 {"file": SimpleUploadedFile("body.json", body, "application/json")})
        else:
            form = LutImportForm(body, request.FILES, upload_error=upload_limit_error(request._request))
        result = lut_io.import_from_form(device, form)
        if result is None:
            return invalid(form_errors(form))
        return Response({**result.to_dict(), "detail": result.message})
