"""Uploaded models, datasets, adaptation jobs and what a job records as it runs.

A job's rows are written by the worker and read by the pages: ``Iteration`` (one point of the
trade-off curve, ``number`` -1 for the original), its ``Proposal`` rows, and ``JobEvent`` rows
(the numbered event stream that live pages replay, then follow).
"""
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone

from adaptation.job_files import job_folder_name
from devices.models import Device, MeasurementRequest


class CheckStatus(models.TextChoices):
    """Where an upload stands with the checking worker (models and datasets share it)."""

    CHECKING = "checking", "Checking"
    READY = "ready", "Ready"
    REJECTED = "rejected", "Rejected"


def model_upload_path(instance: "ModelUpload", filename: str) -> str:
    return f"models/{instance.owner_id}/{filename}"


def dataset_archive_path(instance: "Dataset", filename: str) -> str:
    return f"datasets/{instance.owner_id}/{filename}"


def iteration_model_path(instance: "Iteration", filename: str) -> str:
    """In the job's folder, next to the files the runner writes (``adaptation.job_files``)."""
    return f"{job_folder_name(instance.job_id)}/{filename}"


class ModelUpload(models.Model):
    """A trained network: a built-in architecture plus weights, or an ONNX file."""

    SOURCE_CHOICES = [("builtin", "Built-in architecture"), ("onnx", "ONNX file")]
    Status = CheckStatus

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="model_uploads")
    name = models.CharField(max_length=100)
    source = models.CharField(max_length=16, choices=SOURCE_CHOICES)
    arch = models.CharField(max_length=64, blank=True)  # built-in architecture name; "" for ONNX
    # Unknown for an ONNX file until the pre-flight has read it.
    num_classes = models.PositiveIntegerField(null=True, blank=True)
    in_channels = models.PositiveSmallIntegerField(null=True, blank=True)
    width = models.FloatField(default=1.0)  # width multiplier of the built-in architecture
    resolution = models.PositiveIntegerField(null=True, blank=True)
    file = models.FileField(upload_to=model_upload_path, max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CHECKING)
    preflight = models.JSONField(default=dict, blank=True)  # groups, macs, params, latency per device
    error = models.TextField(blank=True)  # why it was rejected
    # The checking worker's child's peak resident memory (its VmHWM), once checked.
    check_peak_bytes = models.BigIntegerField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created", "-pk"]

    def __str__(self) -> str:
        return self.name


class Dataset(models.Model):
    """Images to fine-tune and score on. ``owner`` None: a built-in dataset, shared and read-only."""

    KIND_CHOICES = [("builtin", "Built-in"), ("folder", "Image folder archive")]
    BUILTIN_CHOICES = [("fashion_mnist", "Fashion-MNIST"), ("digits", "scikit-learn digits")]
    # An upload is stored "checking" and the checking worker moves it to ready or rejected.
    Status = CheckStatus

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True,
                              related_name="datasets")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=KIND_CHOICES)
    builtin_name = models.CharField(max_length=32, choices=BUILTIN_CHOICES, blank=True)
    archive = models.FileField(upload_to=dataset_archive_path, max_length=255, blank=True)
    summary = models.JSONField(default=dict, blank=True)  # split sizes, class counts, channels, resolution
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    error = models.TextField(blank=True)
    check_peak_bytes = models.BigIntegerField(null=True, blank=True)  # as ModelUpload's
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(kind="builtin") & ~Q(builtin_name="")) | (Q(kind="folder") & Q(builtin_name="")),
                name="dataset_builtin_name_matches_kind"),
            models.UniqueConstraint(fields=["builtin_name"], condition=Q(owner__isnull=True),
                                    name="unique_builtin_dataset"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_builtin(self) -> bool:
        return self.owner_id is None


class Job(models.Model):
    """One run of the engine: an adaptation, a baseline for its chart, or a long fine-tune."""

    KIND_CHOICES = [("adapt", "Adaptation"), ("baseline", "Baseline"), ("finetune", "Fine-tune")]
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING, Status.WAITING)

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default="adapt")
    parent = models.ForeignKey("self", models.CASCADE, null=True, blank=True, related_name="children")
    model = models.ForeignKey(ModelUpload, models.CASCADE, related_name="jobs")
    # Shared rows (built-in datasets, the system device) must never take users' jobs with them.
    dataset = models.ForeignKey(Dataset, models.PROTECT, related_name="jobs")
    device = models.ForeignKey(Device, models.PROTECT, related_name="jobs")
    settings = models.JSONField(default=dict, blank=True)  # the engine's AdaptConfig.to_dict()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    cancel_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)  # the running worker's lease
    claimed_by = models.CharField(max_length=255, blank=True)  # worker host and pid
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # While ``waiting``: for what ("measurement": its device's requests; "evaluation": its
    # proposals, fine-tuned by other tasks) and a sentence for the job page.
    waiting_kind = models.CharField(max_length=16, blank=True)
    waiting_for = models.CharField(max_length=300, blank=True)
    result = models.JSONField(default=dict, blank=True)  # the engine's FinishRecord.to_dict()
    created = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-pk"]
        indexes = [
            models.Index(fields=["owner", "-created"], name="job_owner_recent"),
            models.Index(fields=["status", "heartbeat_at"], name="job_status_heartbeat"),  # the sweep
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk}"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE_STATUSES


class Iteration(models.Model):
    """One point of a job's trade-off curve (``number`` -1 is the original network)."""

    job = models.ForeignKey(Job, models.CASCADE, related_name="iterations")
    number = models.IntegerField()
    record = models.JSONField(default=dict, blank=True)  # the engine's IterationRecord.to_dict()
    resource = models.FloatField()  # calibrated estimate of the job's metric (ms, MACs or params)
    resource_raw = models.FloatField(null=True, blank=True)  # raw look-up-table sum
    measured_ms = models.FloatField(null=True, blank=True)  # whole-network measurement
    macs = models.BigIntegerField()
    params = models.BigIntegerField()
    holdout_accuracy = models.FloatField()
    validation_accuracy = models.FloatField(null=True, blank=True)  # after long-term fine-tune
    model_file = models.FileField(upload_to=iteration_model_path, max_length=255, null=True, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "number"]
        constraints = [
            # A redelivered task cannot record an iteration twice.
            models.UniqueConstraint(fields=["job", "number"], name="unique_job_iteration"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} iteration {self.number}"


class Proposal(models.Model):
    """One group shrunk, fine-tuned and scored during an iteration."""

    iteration = models.ForeignKey(Iteration, models.CASCADE, related_name="proposals")
    group = models.CharField(max_length=255)
    channels = models.PositiveIntegerField()
    resource = models.FloatField()
    holdout_accuracy = models.FloatField(null=True, blank=True)  # None until scored
    chosen = models.BooleanField(default=False)
    record = models.JSONField(default=dict, blank=True)  # the engine's ProposalResult.to_dict()

    class Meta:
        ordering = ["iteration", "group"]
        constraints = [
            models.UniqueConstraint(fields=["iteration", "group"], name="unique_iteration_proposal"),
        ]

    def __str__(self) -> str:
        return f"{self.group} -> {self.channels}"


class JobEvent(models.Model):
    """The job's numbered event stream; the database is the source of truth, sockets notify."""

    job = models.ForeignKey(Job, models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=64)  # prefixed, e.g. "job.iteration"
    payload = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "seq"]
        constraints = [
            # Its index on (job, seq) also serves "events after seq N".
            models.UniqueConstraint(fields=["job", "seq"], name="unique_job_event_seq"),
        ]

    def __str__(self) -> str:
        return f"job {self.job_id} #{self.seq} {self.type}"


@receiver(post_delete, sender=Job, dispatch_uid="adaptation.delete_job_measurements")
def delete_job_measurements(sender, instance: Job, **kwargs) -> None:
    """A job's measurement requests go with it (devices keeps only the job's number, no key)."""
    MeasurementRequest.objects.filter(job_id=instance.pk).delete()
