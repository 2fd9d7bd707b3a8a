"""Models, datasets, devices and jobs made the way users make them, for tests.

Unit tests call the service functions the upload views and the API call (``adaptation.uploads``, ``adaptation.job_actions``,
the ``bootstrap`` command's functions); integration tests go through the views or the API
themselves (``api_upload_dataset`` and friends). Nothing here writes a row or a file by hand, so a
test sees exactly what an upload stores.

- ``png``, ``image_zip``: a small image-folder archive (``<class>/<n>.png``).
- ``upload_dataset(owner, archive, ...)``: ``uploads.store_dataset_upload``, as the upload page does,
  then the checking worker's ``uploads.finish_dataset_check`` (its bounded child included).
- ``upload_model(owner, spec, weights, ...)``: ``uploads.create_model_upload`` with the page's form,
  then ``uploads.finish_model_check`` with the pre-flight run in this process (``in_this_process``).
- ``run_checks_now(monkeypatch)``: every upload check the views and the API send runs at once,
  in this process, through the worker's service functions (the ``checks_in_process`` fixture).
- ``queue_job(owner, model, dataset, device, settings)``: ``job_actions.queue_job``, as ``create_job``
  (its message to the workers left unsent: tests run their jobs themselves).
- ``add_device(owner, **fields)``: the device form, saved as the "Add a device" page saves it.
- ``system_device()``, ``builtin_dataset(name)``: the shared rows ``manage.py bootstrap`` creates.
"""
from __future__ import annotations

import io
import zipfile
from contextlib import contextmanager
from typing import TYPE_CHECKING

from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

if TYPE_CHECKING:
    from adaptation.models import Dataset, Job, ModelUpload
    from adaptation.netadapt.spec import ArchitectureSpec
    from devices.models import Device


def png(shade: int, size: int = 8, mode: str = "L") -> bytes:
    """A flat ``size`` x ``size`` PNG: grey ``shade`` (mode L) or a colour derived from it (RGB)."""
    buffer = io.BytesIO()
    colour = shade if mode == "L" else (shade, 0, 255 - shade)
    Image.new(mode, (size, size), color=colour).save(buffer, "PNG")
    return buffer.getvalue()


def image_zip(classes=("cats", "dogs"), per_class: int = 4, size: int = 8, mode: str = "L",
              images: dict[str, list[bytes]] | None = None) -> bytes:
    """A zip of ``<class>/<n>.png``: flat images of a shade per class and image, or ``images``
    (class name: PNG files) when given."""
    if images is None:
        images = {name: [png(40 * c + 10 * i, size, mode) for i in range(per_class)]
                  for c, name in enumerate(classes)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, files in images.items():
            for i, data in enumerate(files):
                archive.writestr(f"{name}/{i}.png", data)
    return buffer.getvalue()


def digit_images(data, per_class: int = 8) -> dict[str, list[bytes]]:
    """``per_class`` training images of each class of ``data`` (a ``DatasetSplits`` of 1-channel
    images) as grey PNGs, for ``image_zip(images=...)``."""
    images = {}
    for label, name in enumerate(data.class_names):
        picked = (data.train.labels == label).nonzero().flatten()[:per_class].tolist()
        files = []
        for index in picked:
            pixels = data.train.images[index, 0]
            pixels = ((pixels - pixels.min()) / (pixels.max() - pixels.min() + 1e-8) * 255).byte().numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
            files.append(buffer.getvalue())
        images[str(name)] = files
    return images


def in_this_process(func, args, *, memory_bytes: int, seconds: float):
    """``run_limited``'s signature, without the child: the checks of unit tests that need a
    ready model cost no torch import per upload (the child itself is tested through the worker)."""
    from adaptation.checking.limits import LimitedRun

    return LimitedRun(func(*args), 0)


@contextmanager
def _unsent_checks():
    """A context in which the services' checking messages are not sent (the test runs them)."""
    import pytest

    from adaptation import enqueue

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(enqueue, "enqueue_check", lambda task_name, *args: None)
        yield


def run_checks_now(monkeypatch, *, runner=in_this_process) -> list[tuple[str, tuple]]:
    """Make every check the services send run at once in this process, as the checking worker's
    tasks would (``finish_model_check`` with ``runner``, ``finish_dataset_check``); returns the
    list of (task name, arguments) run."""
    from adaptation import enqueue, uploads

    ran: list[tuple[str, tuple]] = []

    def run_now(task_name: str, *args) -> None:
        ran.append((task_name, args))
        if task_name == "check_model_upload":
            uploads.finish_model_check(*args, runner=runner)
        else:
            uploads.finish_dataset_check(*args)

    monkeypatch.setattr(enqueue, "enqueue_check", run_now)
    return ran


def upload_dataset(owner, archive: bytes | None = None, *, name: str = "pets", resolution: int = 8,
                   grayscale: bool | None = None) -> Dataset:
    """An image-folder dataset uploaded by ``owner`` (``image_zip()`` unless ``archive``), stored
    by the service the upload page and the API call and checked by the worker's service function
    (in a bounded child). Needs a MEDIA_ROOT the test owns. The row may be ``rejected``."""
    from adaptation.uploads import finish_dataset_check, store_dataset_upload

    uploaded = SimpleUploadedFile(f"{name}.zip", image_zip() if archive is None else archive,
                                  content_type="application/zip")
    with _unsent_checks():
        dataset = store_dataset_upload(owner, name, uploaded, resolution=resolution, grayscale=grayscale)
    finish_dataset_check(dataset.pk, resolution, grayscale)
    dataset.refresh_from_db()
    return dataset


def upload_model(owner, spec: ArchitectureSpec, weights: bytes, *, name: str = "tiny") -> ModelUpload:
    """A built-in architecture's weights uploaded by ``owner`` through the upload page's form and
    ``uploads.create_model_upload`` (the pre-flight runs; a rejection fails the test)."""
    from adaptation.forms import ModelUploadForm
    from adaptation.uploads import create_model_upload, finish_model_check

    form = ModelUploadForm({"source": "builtin", "name": name, "arch": spec.arch, "width": spec.width,
                            "num_classes": spec.num_classes, "in_channels": spec.in_channels,
                            "resolution": spec.resolution},
                           {"file": SimpleUploadedFile(f"{name}.pt", weights)})
    assert form.is_valid(), form.errors
    with _unsent_checks():
        upload = create_model_upload(owner, form)
    finish_model_check(upload.pk, runner=in_this_process)
    upload.refresh_from_db()
    assert upload.status == "ready", f"the test model was rejected: {upload.error}"
    return upload


def queue_job(owner, model: ModelUpload, dataset: Dataset, device: Device, settings: dict, *,
              state: dict | None = None, **options) -> Job:
    """A queued job created by ``job_actions.queue_job``, as the job form and the API create one,
    except that its ``run_job`` message is not sent: the test runs the job itself
    (``tasks.run_job``, ``workers.drive``). ``state`` sets where the job's life has got to
    (``status``, ``heartbeat_at``...), as the runner would have; ``options``: ``kind``, ``parent``."""
    import pytest

    from adaptation import enqueue, job_actions
    from adaptation.models import Job

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(enqueue, "enqueue_job", lambda job: None)
        job = job_actions.queue_job(owner, model=model, dataset=dataset, device=device, settings=settings,
                                 **options)
    if state:
        Job.objects.filter(pk=job.pk).update(**state)
        job.refresh_from_db()
    return job


def add_device(owner, **fields) -> Device:
    """An agent device added by ``owner`` with the "Add a device" page's form, saved as that page
    saves it (kind ``agent``, offline). Fields the form does not have (``facts``, ``status``...)
    are then set as a paired agent would report them."""
    from devices.forms import DeviceForm

    form_fields = set(DeviceForm.base_fields)
    data = {"name": "phone", "runtime": "onnxruntime", "threads": 1, "description": "",
            **{key: value for key, value in fields.items() if key in form_fields}}
    form = DeviceForm(data)
    assert form.is_valid(), form.errors
    device = form.save(commit=False)
    device.owner, device.kind, device.status = owner, "agent", "offline"
    device.save()
    reported = {key: value for key, value in fields.items() if key not in form_fields}
    if reported:
        type(device).objects.filter(pk=device.pk).update(**reported)
        device.refresh_from_db()
    return device


def system_device() -> Device:
    """"This server's CPU", created (or refreshed) by ``manage.py bootstrap``'s function."""
    from adaptation.management.commands.bootstrap import Command
    from devices.models import SYSTEM_DEVICE_NAME, Device

    Command(stdout=io.StringIO()).ensure_system_device()
    return Device.objects.get(owner=None, name=SYSTEM_DEVICE_NAME)


def builtin_dataset(builtin_name: str = "digits") -> Dataset:
    """A built-in dataset as ``manage.py bootstrap`` creates it (its summary included)."""
    from adaptation.models import Dataset
    from adaptation.management.commands.bootstrap import Command

    label = dict(Dataset.BUILTIN_CHOICES)[builtin_name]
    Command(stdout=io.StringIO()).ensure_builtin_dataset(builtin_name, label)
    return Dataset.objects.get(owner=None, builtin_name=builtin_name)


def client_of(user):
    """A REST client that sends ``user``'s API token, as a script would."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client
