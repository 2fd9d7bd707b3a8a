"""Shared fixtures of the NetAdapt engine tests: tiny datasets, a light timing protocol."""
from __future__ import annotations

import pytest
import torch

from adaptation.netadapt.data import load_dataset
from devices.measure import MeasureProtocol


@pytest.fixture(scope="session")
def digits16():
    """scikit-learn digits upsampled to 16 px (1797 images, in memory)."""
    return load_dataset("digits", resolution=16, seed=0)


@pytest.fixture(scope="session")
def digits8():
    """scikit-learn digits at their native 8 px: the cheapest data for full NetAdapt runs."""
    return load_dataset("digits", resolution=8, seed=0)


@pytest.fixture(scope="session")
def light_protocol() -> MeasureProtocol:
    """A timing protocol short enough for tests (the numbers are never asserted)."""
    return MeasureProtocol(threads=1, warmup=2, rounds=2, runs_per_round=5)


@pytest.fixture(scope="module")
def single_torch_thread():
    """Run a module's torch work on one thread (restored afterwards).

    On a small shared machine, intra-op threads that contend with other processes make every
    tiny op wait on its siblings: one thread is both faster and steadier for these tiny nets.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- web application
# These fixtures need Django settings (pytest -p pytest_django --ds=webapp.settings); the engine
# tests above do not, and nothing here is imported before a web test asks for it.


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hashing():
    """MD5 passwords in tests: Django's PBKDF2 costs ~0.3 s a password on this machine.

    The engine's tests also run where Django is not installed (a GPU machine's own Python)."""
    try:
        from django.conf import settings
    except ImportError:
        yield
        return
    if not settings.configured:
        yield
        return
    from django.test import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(scope="session", autouse=True)
def _forget_earlier_rate_limits():
    """In production mode the failed-attempt counters (webapp.lib.ratelimit) live in Redis, which
    outlives a test run: start from none (the embedded mode's are in the fresh test database)."""
    try:
        from django.conf import settings
    except ImportError:  # the engine's tests on a machine without Django
        yield
        return
    if settings.configured and settings.REDIS_URL:
        from webapp.lib.ratelimit import clear

        clear()
    yield


@pytest.fixture(autouse=True)
def _own_host_lock(tmp_path_factory):
    """Each test its own host-lock folder (devices.host): measurements of tests running side by
    side must not pause each other's fine-tunes."""
    from django.conf import settings

    if not settings.configured:
        yield
        return
    from django.test import override_settings

    with override_settings(HOST_LOCK_DIR=tmp_path_factory.mktemp("host-lock")):
        yield


@pytest.fixture
def no_rate_limits_counted(db):
    """Counters cleared before and after a test that spends the failed-attempt limits, so no
    other test (or its own live servers, sharing the cache) inherits them."""
    from webapp.lib.ratelimit import clear

    clear()
    yield
    clear()


PASSWORD = "correct horse battery staple"


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def stranger(django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def api(owner):
    """The owner's REST client, authenticated with their API token as a script would be."""
    from tests.user_objects import client_of

    return client_of(owner)


@pytest.fixture
def enqueued(monkeypatch):
    """Ids of the jobs the views and the API hand to the runner (``adaptation.enqueue.enqueue_job``);
    nothing is sent."""
    calls = []
    monkeypatch.setattr("adaptation.enqueue.enqueue_job", lambda job: calls.append(job.pk))
    return calls


@pytest.fixture
def checks_in_process(monkeypatch):
    """The checking worker played in this process: each upload's check runs as soon as the views
    or the API send it (the model pre-flight without its child; tests/user_objects.py). The
    answer still says "checking"; the next request sees the verdict. The list: what ran."""
    from tests.user_objects import run_checks_now

    return run_checks_now(monkeypatch)


@pytest.fixture
def system_device(db):
    """"This server's CPU", as ``manage.py bootstrap`` creates it."""
    from tests.user_objects import system_device as bootstrapped_system_device

    return bootstrapped_system_device()


@pytest.fixture
def digits_dataset(db):
    """The built-in scikit-learn digits, as ``manage.py bootstrap`` creates it."""
    from tests.user_objects import builtin_dataset

    return builtin_dataset("digits")


@pytest.fixture(scope="session")
def digits_net_weights():
    """(spec, state-dict file bytes) of an untrained plain_cnn for 8-px digits (``make_job``'s)."""
    import io

    from adaptation.netadapt.spec import ArchitectureSpec

    spec = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=1.0, resolution=8)
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(spec.build().state_dict(), buffer)
    return spec, buffer.getvalue()


@pytest.fixture
def make_job(system_device, digits_dataset, media, digits_net_weights):
    """``make_job(user, **fields)``: a job of a model the user uploaded, on digits and the system
    device, created by the services (tests/user_objects.py). ``settings``, ``dataset``, ``device``,
    ``kind`` and ``parent`` choose the job; other fields are the state its life has got to."""
    from tests.user_objects import queue_job, upload_model

    spec, weights = digits_net_weights

    def make(user, **fields):
        model = upload_model(user, spec, weights, name=f"{user.username}'s net")
        chosen = {"dataset": digits_dataset, "device": system_device, "settings": {}}
        chosen.update({key: fields.pop(key) for key in list(chosen) if key in fields})
        options = {key: fields.pop(key) for key in ("kind", "parent") if key in fields}
        return queue_job(user, model, state=fields, **chosen, **options)

    return make


# --------------------------------------------------------------------------- job pipeline


def _trained_digits_cnn(digits16, width: float):
    """plain_cnn of the given width on 16-px digits, trained 100 steps on one thread (seeded)."""
    from adaptation.netadapt.spec import ArchitectureSpec
    from adaptation.netadapt.training import train_steps

    spec = ArchitectureSpec("plain_cnn", 10, 1, width, 16)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = spec.build()
        train_steps(model, digits16.train, 100, lr=0.05, batch_size=64, seed=0)
    finally:
        torch.set_num_threads(previous)
    return spec, model.eval()


def _exported_digits_cnn(digits16, tmp_path_factory, width: float):
    from adaptation.netadapt.export import export_pytorch

    spec, model = _trained_digits_cnn(digits16, width)
    path = tmp_path_factory.mktemp("digits_cnn") / "digits_cnn.pt"
    export_pytorch(model, spec, {}, path)
    return spec, path.read_bytes()


@pytest.fixture(scope="session")
def tiny_cnn(digits16, tmp_path_factory):
    """(spec, weights file bytes): plain_cnn width 0.5 on 16-px digits, trained 100 steps and saved
    with export_pytorch, the format a job loads. Copy the bytes into a test's MEDIA_ROOT."""
    return _exported_digits_cnn(digits16, tmp_path_factory, 0.5)


@pytest.fixture(scope="session")
def wide_cnn(digits16, tmp_path_factory):
    """``tiny_cnn`` at width 2: slow enough (tenths of a ms) for per-layer latency tables; at
    width 0.5 (0.035 ms) table noise can leave no group able to meet a 6% cut."""
    return _exported_digits_cnn(digits16, tmp_path_factory, 2.0)


@pytest.fixture
def sent_run_job(monkeypatch):
    """Job ids sent to ``run_job`` (``run_job.delay``, or by name from ``adaptation.enqueue``:
    both go through the task's ``apply_async``); nothing reaches a broker; ``run_job(id)`` still runs."""
    from adaptation.tasks import run_job

    sent: list[int] = []
    monkeypatch.setattr(type(run_job._get_current_object()), "apply_async",
                        lambda task, args=(), kwargs=None, **options: sent.append(args[0]))
    return sent


@pytest.fixture
def workers(monkeypatch, sent_run_job):
    """Workers played in this process: ``workers.drive(job)`` (tests/in_process.py)."""
    from tests.in_process import InProcessWorkers

    return InProcessWorkers(monkeypatch, sent_run_job)


@pytest.fixture
def mismatching_conversion(monkeypatch):
    """A converter bug, simulated: every network onnx2torch converts has its classifier off by 0.5."""
    import onnx2torch
    import torch.nn as nn

    real = onnx2torch.convert

    def off_by_half(model):
        module = real(model)
        linear = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            linear.bias += 0.5
        return module

    monkeypatch.setattr(onnx2torch, "convert", off_by_half)


# --------------------------------------------------------------------------- end-to-end


@pytest.fixture(scope="session")
def digits_cnn_state_dict(digits16):
    """(spec, file bytes): plain_cnn width 1.0 on 16-px digits, trained 100 steps, saved the way
    a user would upload it: ``torch.save(model.state_dict(), ...)``."""
    import io

    spec, model = _trained_digits_cnn(digits16, 1.0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return spec, buffer.getvalue()


@pytest.fixture
def live_app(tmp_path, django_db_blocker):
    """uvicorn on a free port of 127.0.0.1 over a bootstrapped database shared with this process;
    ``live_app.start_worker()`` adds a Celery worker (tests/e2e_support.py). In production mode
    the test module must mark itself ``django_db(transaction=True)``."""
    from tests.e2e_support import live_app as start_live_app

    with start_live_app(tmp_path, django_db_blocker) as app:
        yield app


@pytest.fixture
def media(settings, tmp_path):
    """A fresh MEDIA_ROOT (and upload temp folder beside it) so a test can list what was stored."""
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.FILE_UPLOAD_TEMP_DIR = tmp_path / "upload-tmp"
    settings.FILE_UPLOAD_TEMP_DIR.mkdir()
    return settings.MEDIA_ROOT
