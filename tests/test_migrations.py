"""Migrations that move stored rows: run on a database holding rows written before them (SQLite in
embedded mode, PostgreSQL in production mode)."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

BEFORE_JOB_ID = [("devices", "0005_phone_kind_lut_backend"), ("adaptation", "0003_upload_checking")]
AFTER_JOB_ID = [("devices", "0006_measurement_job_id"), ("adaptation", "0003_upload_checking")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def latest():
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


def test_measurement_job_becomes_a_plain_job_id_and_keeps_its_rows():
    """Requests stored with the foreign key keep their job's number; after it, deleting a job still
    deletes its requests (adaptation does it), and a user's own measurement keeps none."""
    try:
        old = migrate(BEFORE_JOB_ID)
        User = old.get_model("auth", "User")
        owner = User.objects.create(username="migrating")
        device = old.get_model("devices", "Device").objects.create(owner=owner, name="cpu", kind="local")
        upload = old.get_model("adaptation", "ModelUpload").objects.create(owner=owner, name="net", source="builtin")
        dataset = old.get_model("adaptation", "Dataset").objects.create(owner=owner, name="data", kind="builtin",
                                                                          builtin_name="digits")
        Job = old.get_model("adaptation", "Job")
        jobs = [Job.objects.create(owner=owner, model=upload, dataset=dataset, device=device) for _ in range(2)]
        Request = old.get_model("devices", "MeasurementRequest")
        fields = {"owner": owner, "device": device, "key": "k", "runtime": "onnxruntime", "threads": 1}
        asked = [Request.objects.create(job=job, reason=f"job {job.pk}", **fields) for job in jobs]
        own = Request.objects.create(job=None, reason="mine", **fields)

        new = migrate(AFTER_JOB_ID)
        Request = new.get_model("devices", "MeasurementRequest")
        assert dict(Request.objects.values_list("pk", "job_id")) == {
            asked[0].pk: jobs[0].pk, asked[1].pk: jobs[1].pk, own.pk: None}
        assert Request.objects.filter(job_id=jobs[1].pk, key="k").get().pk == asked[1].pk
    finally:
        migrate(latest())

    from adaptation.models import Job as CurrentJob
    from devices.models import MeasurementRequest

    CurrentJob.objects.get(pk=jobs[0].pk).delete()
    assert set(MeasurementRequest.objects.values_list("pk", flat=True)) == {asked[1].pk, own.pk}


BEFORE_FILES = [("devices", "0006_measurement_job_id"), ("adaptation", "0003_upload_checking")]


def test_requests_stored_before_network_files_have_none_and_fail_clearly(settings, tmp_path):
    """Migration 0007 gives existing requests no files: an open one asking for whole networks
    fails with a message that says why (nothing rebuilds its networks); one for layers only runs."""
    settings.MEDIA_ROOT = tmp_path / "media"
    try:
        old = migrate(BEFORE_FILES)
        owner = old.get_model("auth", "User").objects.create(username="migrating")
        device = old.get_model("devices", "Device").objects.create(owner=owner, name="cpu", kind="local")
        Request = old.get_model("devices", "MeasurementRequest")
        fields = {"owner": owner, "device": device, "key": "k", "runtime": "onnxruntime", "threads": 1,
                  "example_shape": [1, 1, 8, 8]}
        networks = Request.objects.create(reason="whole", networks=[{"label": "original", "spec": {}}], **fields)
        layers = Request.objects.create(reason="layers", **fields)
    finally:
        migrate(latest())

    from devices.models import MeasurementRequest
    from devices.tasks import measure_request

    assert dict(MeasurementRequest.objects.values_list("pk", "network_files")) == {networks.pk: [], layers.pk: []}
    assert measure_request(networks.pk) == "failed"
    assert "stored by an earlier version of the server" in MeasurementRequest.objects.get(pk=networks.pk).error
    assert measure_request(layers.pk) == "done"
