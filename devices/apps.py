from django.apps import AppConfig


class DevicesConfig(AppConfig):
    """Device registry and latency look-up tables (the measurement code is devices.measure)."""

    name = "devices"
    verbose_name = "Devices"
