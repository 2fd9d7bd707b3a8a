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

    KIND_CHOICES = [("local", "This server"), ("agent", "Agent program"), ("phone", "Phone (browser)")]
    #: Kinds that measure remotely, over the agent websocket (paired, with a token).
    REMOTE_KINDS = ("agent", "phone")
    RUNTIME_CHOICES = [("onnxruntime", "ONNX Runtime"), ("torch", "PyTorch eager"), ("torchscript", "TorchScript"),
                       ("onnxruntime-web", "ONNX Runtime Web (browser)")]
    class Status(models.TextChoices):
        ONLINE = "online", "Online"
        OFFLINE = "offline", "Offline"
        BUSY = "busy", "Busy"

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True,
                              related_name="devices")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default="agent")
    runtime = models.CharField(max_length=16, choices=RUNTIME_CHOICES, default="onnxruntime")
    threads = models.PositiveSmallIntegerField(default=1)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OFFLINE)
    last_seen = models.DateTimeField(null=True, blank=True)
    facts = models.JSONField(default=dict, blank=True)  # os, cpu, cores, memory, runtime versions
    # An agent authenticates with a token; only its SHA-256 is stored. Revoking empties it.
    token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    token_created = models.DateTimeField(null=True, blank=True)
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

    @property
    def is_remote(self) -> bool:
        """Measured by a paired program (agent or phone browser) rather than this server."""
        return self.kind in self.REMOTE_KINDS


class LatencyEntry(models.Model):
    """One row of a look-up table: a layer measured alone on a device (devices.lut reads them)."""

    device = models.ForeignKey(Device, models.CASCADE, related_name="latency_entries")
    runtime = models.CharField(max_length=16)
    runtime_version = models.CharField(max_length=32)
    # The runtime's execution backend where it has several (onnxruntime-web: "wasm"); "" otherwise.
    backend = models.CharField(max_length=16, blank=True, default="")
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
    # What one call of an empty model with the layer's input shape cost, timed beside the entry
    # (the per-call overhead the entry contains), where the measurer probes it (phones); else null.
    overhead_ms = models.FloatField(null=True, blank=True)
    measured_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "latency entries"
        constraints = [
            # Its index (leading columns: one table) also serves every look-up and count.
            models.UniqueConstraint(fields=["device", "runtime", "runtime_version", "backend", "threads",
                                            "signature_key"], name="unique_latency_entry_backend"),
        ]

    def __str__(self) -> str:
        return f"{self.signature_key} on {self.device_id}: {self.min_ms:.4f} ms"


class Pairing(models.Model):
    """A one-time code that lets an agent program become ``device`` (valid a few minutes).

    Only the code's SHA-256 is stored; the code itself is shown once on the "Add device" page.
    """

    device = models.ForeignKey(Device, models.CASCADE, related_name="pairings")
    code_hash = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"pairing of device {self.device_id}"


class MeasurementRequest(models.Model):
    """Layer signatures and whole networks to time on one device, queued per device.

    A local device's requests run in the Celery task ``devices.tasks.measure_request`` on the queue
    ``device.<id>`` (one at a time); an agent device pulls them over its websocket. When the last
    open request of a waiting job is done, the job is re-enqueued (``devices.requests``).
    ``signatures`` holds ``LayerSignature.to_dict()``s, ``networks`` the descriptions of the whole
    networks asked for (their ``label`` names them; devices reads nothing else of them), whose
    files (``network_files``: ONNX, or TorchScript for the torch runtimes) the asker wrote,
    ``results`` the ``TimingStats.to_dict()`` of each network, measured interleaved (plus its
    raw ``samples_ms``, at most 1000, for a measurement outside any job: its page's histogram).
    Its owner may cancel such a measurement while it is queued (``cancelled``: nobody claims it).
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    OPEN_STATUSES = (Status.QUEUED, Status.RUNNING)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="measurements")
    device = models.ForeignKey(Device, models.CASCADE, related_name="measurements")
    # The job that asked (None: a user's own measurement). A plain number, not a foreign key, so
    # that devices knows nothing of adaptation; adaptation deletes a job's requests with the job.
    job_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    reason = models.CharField(max_length=200)
    key = models.CharField(max_length=64)  # what is asked: sha256 of signatures + networks
    runtime = models.CharField(max_length=16)
    threads = models.PositiveSmallIntegerField()
    example_shape = models.JSONField(default=list)  # the networks' input shape (N, C, H, W)
    signatures = models.JSONField(default=list, blank=True)
    networks = models.JSONField(default=list, blank=True)
    # The file each network is timed from (devices.request_files): storage names under MEDIA_ROOT,
    # one per network. The names stay when the files go (the request ended): a request that has
    # networks and no names was stored before requests carried files, and cannot be measured.
    network_files = models.JSONField(default=list, blank=True)
    results = models.JSONField(default=list, blank=True)
    signatures_done = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    claimed_by = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    runtime_version = models.CharField(max_length=32, blank=True)  # of the runtime that measured
    # A local measurement's cost of taking the host (devices.host.HostNote): empty for agents.
    host_lock = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "pk"]
        indexes = [models.Index(fields=["device", "status", "created"], name="measurement_device_queue"),
                   models.Index(fields=["job_id", "key"], name="measurement_job_key")]

    def __str__(self) -> str:
        return f"measurement {self.pk} on device {self.device_id}: {self.reason}"

    @property
    def is_open(self) -> bool:
        return self.status in self.OPEN_STATUSES
