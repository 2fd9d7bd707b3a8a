from django.apps import AppConfig


class DevicesConfig(AppConfig):
    """Device registry and latency look-up tables (the measurement code is devices.measure)."""

    name = "devices"
    verbose_name = "Devices"

    def ready(self) -> None:
        # Here, not at the top: devices.requests loads models, which needs the app registry ready.
        from django.db.models.signals import post_delete
        from devices.models import MeasurementRequest
        from devices.requests import request_deleted

        post_delete.connect(request_deleted, sender=MeasurementRequest, dispatch_uid="devices-request-files")
