"""Devices that models are adapted for, and their latency look-up tables.

The choices are spelled out here rather than read from devices.measure so that loading the models
does not import torch and onnxruntime (tests check the two lists agree).
"""
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

SYSTEM_DEVICE_NAME = "This server's CPU"


class Device(models.Model):
    """A CPU or phone we measure latency on. ``owner`` is None for the shared system device:
    every user may measure on it, nobody edits it."""

    KIND_CHOICES = [("local", "This server"), ("agent", "Agent program")]
    RUNTIME_CHOICES = [("onnxruntime", "ONNX Runtime"), ("torch", "PyTorch eager"), ("torchscript", "TorchScript")]
    STATUS_CHOICES = [("online", "Online"), ("offline", "Offline"), ("busy", "Busy")]

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True,
                              related_name="devices")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default="agent")
    runtime = models.CharField(max_length=16, choices=RUNTIME_CHOICES, default="onnxruntime")
    threads = models.PositiveSmallIntegerField(default=1)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES, default="offline")
    last_seen = models.DateTimeField(null=True, blank=True)
    facts = models.JSONField(default=dict, blank=True)  # os, cpu, cores, memory, runtime versions
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(condition=Q(threads__gte=1), name="device_threads_at_least_one"),
            # Lets `bootstrap` run concurrently without creating two system devices.
            models.UniqueConstraint(fields=["name"], condition=Q(owner__isnull=True),
                                    name="unique_system_device_name"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_system(self) -> bool:
        return self.owner_id is None


class LatencyEntry(models.Model):
    """One row of a look-up table: a layer measured alone on a device (devices.lut reads them)."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="latency_entries")
    runtime = models.CharField(max_length=16)
    runtime_version = models.CharField(max_length=32)
    threads = models.PositiveSmallIntegerField()
    signature_key = models.CharField(max_length=255)  # LayerSignature.key()
    signature_version = models.PositiveSmallIntegerField()
    n = models.PositiveIntegerField()
    min_ms = models.FloatField()
    p10_ms = models.FloatField()
    median_ms = models.FloatField()
    p90_ms = models.FloatField()
    mean_ms = models.FloatField()
    std_ms = models.FloatField()
    measured_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "latency entries"
        constraints = [
            # Its index (leading columns: one table) also serves every look-up and count.
            models.UniqueConstraint(fields=["device", "runtime", "runtime_version", "threads", "signature_key"],
                                    name="unique_latency_entry"),
        ]

    def __str__(self) -> str:
        return f"{self.signature_key} on {self.device_id}: {self.min_ms:.4f} ms"
