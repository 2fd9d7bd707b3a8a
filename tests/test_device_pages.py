"""Device pages: the registry, a device's page, add (with a pairing code the agent can redeem), edit,
delete, new pairing code, revoke; 404 for strangers everywhere, the system device read-only."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from adaptation.models import Iteration, Job
from devices import page_sections
from devices.lut import DatabaseLatencyTable
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, LatencyEntry, MeasurementRequest, Pairing
from devices.pairing import PairingError, device_for_token, new_pairing, redeem
from tests.user_objects import add_device

pytestmark = pytest.mark.django_db

FACTS = {"os": "Android 14", "cpu_model": "Cortex-A76", "cores": 8, "memory_bytes": 8 * 1024 ** 3,
         "onnxruntime": "1.17.0", "python": "3.11.2", "soc": "Tensor G2"}


def phone(user, name="Pixel 7", **fields) -> Device:
    """An agent device ``user`` added on the "Add a device" page (``fields`` as its agent reported)."""
    return add_device(user, name=name, **fields)


def fill(device: Device, runtime="onnxruntime", version="1.17.0", threads=1, count=3) -> None:
    signatures = [LayerSignature(op="conv", in_channels=8, out_channels=8 * (i + 1), kernel=(1, 1),
                                 stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1, input_hw=(8, 8),
                                 batch=1, bias=False, fused="") for i in range(count)]
    DatabaseLatencyTable(device, runtime, version, threads).add(
        {s: TimingStats(n=10, min_ms=0.1, p10_ms=0.1, median_ms=0.1, p90_ms=0.1, mean_ms=0.1, std_ms=0.0)
         for s in signatures})


def measurement(user, device, reason="layers of job", **fields) -> MeasurementRequest:
    return MeasurementRequest.objects.create(owner=user, device=device, reason=reason, key="k",
                                             runtime="onnxruntime", threads=1, **fields)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def stranger_client(client, stranger):
    client.force_login(stranger)
    return client


def page(response) -> str:
    """The page's text with every run of whitespace (line breaks, no-break spaces) as one space."""
    return " ".join(response.content.decode().split())


# --------------------------------------------------------------------------- registry


def test_the_registry_lists_own_devices_and_the_system_device(owner_client, owner, stranger, system_device):
    mine = phone(owner, status="busy", last_seen=timezone.now() - timedelta(minutes=5))
    fill(mine, count=3)
    fill(mine, runtime="torch", version="2.3.0", count=2)
    phone(stranger, "Their phone")
    response = owner_client.get(reverse("device_list"))
    assert response.status_code == 200
    assert [d.name for d in response.context["devices"]] == ["This server's CPU", "Pixel 7"]
    assert [d.lut_size for d in response.context["devices"]] == [0, 5]
    text = page(response)
    assert "Their phone" not in text
    assert "shared, read-only" in text and "Busy" in text and "5 minutes ago" in text and "5 entries" in text
    assert "never" in text  # the system device was never seen
    assert f'href="{reverse("device_list")}"' in text  # the nav links the registry


@pytest.mark.parametrize("name", ["device_list", "device_add"])
def test_the_pages_need_a_login(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response.url.startswith(reverse("login"))


# --------------------------------------------------------------------------- detail


def test_the_device_page_shows_facts_table_coverage_and_requests(owner_client, owner, stranger, make_job):
    device = phone(owner, runtime="onnxruntime", threads=1, facts=FACTS, token_hash="ab" * 32,
                   token_created=timezone.now())
    fill(device, count=3)
    fill(device, runtime="onnxruntime", version="1.16.0", threads=2, count=1)
    job = make_job(owner)
    Job.objects.filter(pk=job.pk).update(device=device)
    measurement(owner, device, "layers of job 1", job_id=job.pk, status="done",
                signatures=[{}, {}], signatures_done=2)
    measurement(owner, device, "whole networks", status="failed", error="agent went away")
    measurement(stranger, device, "someone else's request")

    response = owner_client.get(reverse("device_detail", args=[device.pk]))
    assert response.status_code == 200
    assert response.context["lut_size"] == 4
    assert [(t["runtime_version"], t["threads"], t["entries"], t["current"])
            for t in response.context["tables"]] == [("1.16.0", 2, 1, False), ("1.17.0", 1, 3, True)]
    assert dict(response.context["facts"]) == {
        "Operating system": "Android 14", "CPU model": "Cortex-A76", "CPU cores": "8", "Memory": "8 GB",
        "Python": "3.11.2", "ONNX Runtime": "1.17.0", "Soc": "Tensor G2"}
    assert [m.reason for m in response.context["requests"]] == ["whole networks", "layers of job 1"]
    text = page(response)
    for expected in ("Cortex-A76", "Tensor G2", "4 entries", "agent went away", "Failed", "2 / 2",
                     f'href="{reverse("job_detail", args=[job.pk])}"', "paired",
                     "Edit", "New pairing code", "Revoke token", "Delete…", "Export table", "Import table"):
        assert expected in text, expected
    assert "someone else&#x27;s request" not in text


def test_the_chart_plots_estimated_against_measured_latency(owner_client, owner, stranger, make_job):
    device = phone(owner)
    latency_job, macs_job = make_job(owner), make_job(owner, settings={"metric": "macs"})
    other_device_job, strangers_job = make_job(owner), make_job(stranger)
    Job.objects.filter(pk__in=[latency_job.pk, macs_job.pk, strangers_job.pk]).update(device=device)

    def point(job, number, **fields):
        Iteration.objects.create(job=job, number=number, macs=1, params=1, holdout_accuracy=0.9, **fields)

    point(latency_job, -1, resource=2.0, resource_raw=3.0, measured_ms=2.5)
    point(latency_job, 0, resource=1.6, resource_raw=2.2, measured_ms=1.5)
    point(latency_job, 1, resource=1.2, resource_raw=1.8)  # not measured: no point
    point(macs_job, 0, resource=50_000, measured_ms=1.0)  # MACs, not ms
    point(other_device_job, 0, resource=1.0, measured_ms=1.0)
    point(strangers_job, 0, resource=1.0, measured_ms=1.0)

    response = owner_client.get(reverse("device_detail", args=[device.pk]))
    script = response.content.decode().split('<script id="device-data" type="application/json">')[1]
    data = json.loads(script.split("</script>")[0])  # what device.js reads
    assert sorted((p["job"], p["number"], p["measured"], p["estimate"], p["raw"]) for p in data["points"]) == [
        (latency_job.pk, -1, 2.5, 2.0, 3.0), (latency_job.pk, 0, 1.5, 1.6, 2.2)]
    # mean |estimate - measured| / measured: (0.5/2.5 + 0.1/1.5) / 2 and (0.5/2.5 + 0.7/1.5) / 2
    assert response.context["calibrated_error"] == pytest.approx(100 * (0.2 + 0.1 / 1.5) / 2)
    assert response.context["raw_error"] == pytest.approx(100 * (0.2 + 0.7 / 1.5) / 2)
    text = page(response)
    assert "vendor/chart.js/chart.umd.js" in text and "js/device.js" in text and 'id="latency-chart"' in text


def test_a_device_without_measurements_has_no_chart(owner_client, owner):
    response = owner_client.get(reverse("device_detail", args=[phone(owner).pk]))
    assert response.context["chart"] == {"points": []}
    assert "latency-chart" not in page(response) and "No measured networks yet" in page(response)


def test_other_apps_add_sections_to_the_device_page_through_its_registry(owner_client, owner, monkeypatch,
                                                                        settings, tmp_path):
    """devices draws what other apps register (adaptation: its latency chart), in their order; a
    section with nothing to show for this device adds nothing."""
    (tmp_path / "section.html").write_text("<p>{{ device.name }} {{ action }}</p>")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [*settings.TEMPLATES[0]["DIRS"], tmp_path]}]
    seen = []

    def nothing(request, device):
        seen.append(device.pk)
        return None

    def facts_again(request, device):
        return "section.html", {"action": f"shown for {request.user.username}"}

    monkeypatch.setattr(page_sections, "_sections", dict(page_sections._sections))
    page_sections.register("test.nothing", nothing)
    page_sections.register("test.facts", facts_again)
    device = phone(owner)
    text = page(owner_client.get(reverse("device_detail", args=[device.pk])))
    assert seen == [device.pk]
    chart, extra = text.index("Estimated against measured latency"), text.index(f"Pixel 7 shown for {owner.username}")
    assert chart < extra < text.index("Your recent measurement requests")


def test_the_system_device_page_is_read_only(stranger_client, system_device):
    response = stranger_client.get(reverse("device_detail", args=[system_device.pk]))
    assert response.status_code == 200
    text = page(response)
    assert "shared, read-only" in text and "Export table" in text
    for action in ("device_edit", "device_delete", "device_pair", "device_revoke", "device_lut_import"):
        assert reverse(action, args=[system_device.pk]) not in text


# --------------------------------------------------------------------------- add and pair


def test_adding_a_device_shows_a_code_the_agent_can_redeem(owner_client, owner):
    response = owner_client.get(reverse("device_add"))
    assert response.status_code == 200 and '<option value="onnxruntime"' in page(response)

    response = owner_client.post(reverse("device_add"), {"name": "Pixel 7", "runtime": "torch", "threads": "4",
                                                         "description": "the lab's phone"})
    assert response.status_code == 200 and response["Cache-Control"] == "no-store"
    device = Device.objects.get(owner=owner)
    assert (device.name, device.kind, device.runtime, device.threads, device.description, device.status) == (
        "Pixel 7", "agent", "torch", 4, "the lab's phone", "offline")
    code = response.context["code"]
    pairing = Pairing.objects.get(device=device)
    assert response.context["expires_at"] == pairing.expires_at > timezone.now()
    text = page(response)
    assert f"python netadapt-agent.pyz --server http://testserver/ --pair {code}" in text
    assert pairing.expires_at.strftime("%Y-%m-%d %H:%M") in text and "Valid 10 minutes" in text
    try:
        assert f'href="{reverse("agent_download")}"' in text
    except NoReverseMatch:
        assert "not served by this server yet" in text

    paired, token = redeem(code, {"os": "Android 14"})
    assert paired == device and device_for_token(token) == device


def test_a_device_needs_valid_settings(owner_client, owner):
    response = owner_client.post(reverse("device_add"), {"name": " ", "runtime": "tflite", "threads": "0"})
    assert response.status_code == 200
    assert set(response.context["form"].errors) == {"name", "runtime", "threads"}
    assert not Device.objects.exists() and not Pairing.objects.exists()


def test_a_new_pairing_code_replaces_nothing_until_redeemed(owner_client, owner):
    device = phone(owner)
    old_code, _ = new_pairing(device)
    _, old_token = redeem(old_code)
    response = owner_client.post(reverse("device_pair", args=[device.pk]))
    assert response.status_code == 200
    assert device_for_token(old_token) == device  # the old token works until the new code is used
    _, token = redeem(response.context["code"])
    assert device_for_token(token) == device and device_for_token(old_token) is None
    assert owner_client.get(reverse("device_pair", args=[device.pk])).status_code == 405


def test_a_local_device_is_not_paired(owner_client, owner):
    device = Device.objects.create(owner=owner, name="workstation", kind="local")
    response = owner_client.post(reverse("device_pair", args=[device.pk]), follow=True)
    assert "only agent and phone devices are paired" in page(response)
    assert not Pairing.objects.exists()


def test_revoking_refuses_the_agent(owner_client, owner):
    device = phone(owner, status="online")
    code, _ = new_pairing(device)
    _, token = redeem(code)
    unused_code, _ = new_pairing(device)
    response = owner_client.post(reverse("device_revoke", args=[device.pk]), follow=True)
    assert response.redirect_chain == [(reverse("device_detail", args=[device.pk]), 302)]
    assert "its agent is refused until it is paired again" in page(response)
    assert device_for_token(token) is None
    device.refresh_from_db()
    assert (device.token_hash, device.status) == ("", "offline")
    with pytest.raises(PairingError, match="already used"):
        redeem(unused_code)  # revoking also voids the codes not yet used


# --------------------------------------------------------------------------- edit and delete


def test_the_owner_edits_a_device(owner_client, owner):
    device = phone(owner)
    assert owner_client.get(reverse("device_edit", args=[device.pk])).status_code == 200
    response = owner_client.post(reverse("device_edit", args=[device.pk]),
                                 {"name": "Pixel 8", "runtime": "torchscript", "threads": "2", "description": "x"})
    assert response.status_code == 302 and response.url == reverse("device_detail", args=[device.pk])
    device.refresh_from_db()
    assert (device.name, device.runtime, device.threads, device.description, device.kind) == (
        "Pixel 8", "torchscript", 2, "x", "agent")


def test_the_owner_deletes_a_device_with_its_table(owner_client, owner):
    device = phone(owner)
    fill(device)
    response = owner_client.get(reverse("device_delete", args=[device.pk]))
    assert response.status_code == 200 and "3 entries" in page(response)
    response = owner_client.post(reverse("device_delete", args=[device.pk]))
    assert response.status_code == 302 and response.url == reverse("device_list")
    assert not Device.objects.filter(pk=device.pk).exists() and not LatencyEntry.objects.exists()


def test_a_device_that_jobs_use_is_kept_with_a_message(owner_client, owner, make_job):
    device = phone(owner)
    Job.objects.filter(pk=make_job(owner).pk).update(device=device)
    confirm = owner_client.get(reverse("device_delete", args=[device.pk]))
    assert "is used by 1 job: delete those first" in page(confirm) and "<button" not in page(confirm).split(
        "<main>")[1]
    response = owner_client.post(reverse("device_delete", args=[device.pk]), follow=True)
    assert response.status_code == 200 and "is used by 1 job: delete those first" in page(response)
    assert Device.objects.filter(pk=device.pk).exists()
    # The device's page says what uses it (adaptation counts its jobs: devices.usage).
    assert "<th>Used by</th><td>1 job</td>" in page(owner_client.get(reverse("device_detail", args=[device.pk])))


# --------------------------------------------------------------------------- ownership


GET_PAGES = ["device_detail", "device_edit", "device_delete", "device_lut_export", "device_lut_import"]
POSTS = {"device_edit": {"name": "mine now", "runtime": "onnxruntime", "threads": "1"}, "device_delete": {},
         "device_pair": {}, "device_revoke": {}, "device_lut_import": {}}


def _unchanged(device: Device) -> None:
    fresh = Device.objects.get(pk=device.pk)
    assert (fresh.name, fresh.token_hash, fresh.status) == (device.name, device.token_hash, device.status)
    assert not Pairing.objects.filter(device=device, used_at__isnull=True).exists()


@pytest.mark.parametrize("name", GET_PAGES)
def test_strangers_get_404_on_every_page(stranger_client, owner, name):
    device = phone(owner)
    assert stranger_client.get(reverse(name, args=[device.pk])).status_code == 404


@pytest.mark.parametrize("name", list(POSTS))
def test_strangers_get_404_on_every_action_and_change_nothing(stranger_client, owner, name):
    device = phone(owner, token_hash="ab" * 32, status="online")
    assert stranger_client.post(reverse(name, args=[device.pk]), POSTS[name]).status_code == 404
    _unchanged(device)


@pytest.mark.parametrize("name", list(POSTS))
def test_the_system_device_refuses_every_change(owner_client, system_device, name):
    response = owner_client.post(reverse(name, args=[system_device.pk]), POSTS[name])
    assert response.status_code == 403
    assert "is shared by everyone and read-only" in page(response).replace("&#x27;", "'")
    _unchanged(system_device)


@pytest.mark.parametrize("name", ["device_edit", "device_delete", "device_lut_import"])
def test_the_system_device_has_no_change_pages(owner_client, system_device, name):
    assert owner_client.get(reverse(name, args=[system_device.pk])).status_code == 403


def test_an_unknown_device_is_404(owner_client):
    assert owner_client.get(reverse("device_detail", args=[9999])).status_code == 404
