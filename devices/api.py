"""REST API of devices: list, create, get, delete (under /api/v1/devices).

Users see their own devices and the shared system device (the server's CPU, ``owner`` None).
They create ``agent`` devices only: an agent program on their phone or computer measures for
them (pairing comes later); ``local`` is the server itself, which ``bootstrap`` creates once for
everyone. A stranger's device is a 404; the system device cannot be deleted (403).
"""
from __future__ import annotations

from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from devices.access import devices_visible_to, get_device_for_user
from devices.models import Device
from webapp.api import DETAIL, NOT_FOUND, VALIDATION_ERROR, detail

#: Most measuring threads a device may ask for (phones and desktops have far fewer cores).
MAX_THREADS = 256
SYSTEM_DEVICE_MESSAGE = "The server's own CPU is shared and cannot be deleted."


class DeviceSerializer(serializers.ModelSerializer):
    system = serializers.BooleanField(source="is_system", read_only=True,
                                      help_text="The shared server CPU: visible to all, read-only.")
    kind = serializers.ChoiceField(choices=Device.KIND_CHOICES, default="agent",
                                   help_text='Only "agent" can be created: "local" is the server itself.')
    threads = serializers.IntegerField(min_value=1, max_value=MAX_THREADS, default=1,
                                       help_text="Threads the runtime uses when measuring.")

    class Meta:
        model = Device
        fields = ["id", "name", "kind", "runtime", "threads", "description", "system", "status",
                  "last_seen", "facts", "created"]
        read_only_fields = ["status", "last_seen", "facts", "created"]
        extra_kwargs = {"description": {"required": False}}

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
        return devices_visible_to(self.request.user).order_by("name", "pk")

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user, status="offline")

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
            used = device.jobs.count()
            return detail(f"{device.name} is used by {used} job(s); delete those first.",
                          status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)
