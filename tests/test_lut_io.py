"""Look-up-table files (devices.lut_io): export, import into another device (all or nothing, every
bad file named and nothing stored), overwrite or keep, the system device refused; the pages'
export / import and the REST endpoints /api/v1/devices/<id>/lut."""
from __future__ import annotations

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from devices import lut_io
from devices.lut import DatabaseLatencyTable
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, LatencyEntry
from tests.user_objects import add_device

pytestmark = pytest.mark.django_db

API = "/api/v1"
ROW_FIELDS = ("runtime", "runtime_version", "threads", "signature_key", "signature_version", "n", "min_ms",
              "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms", "backend", "overhead_ms")


def signature(out_channels: int, hw: int = 16) -> LayerSignature:
    return LayerSignature(op="conv", in_channels=8, out_channels=out_channels, kernel=(3, 3), stride=(1, 1),
                          padding=(1, 1), dilation=(1, 1), groups=1, input_hw=(hw, hw), batch=1, bias=False,
                          fused="bn+relu")


def stats(base: float) -> TimingStats:
    return TimingStats(n=200, min_ms=base, p10_ms=base * 1.01, median_ms=base * 1.05, p90_ms=base * 1.2,
                       mean_ms=base * 1.08, std_ms=base * 0.05)


def fill(device: Device, runtime="onnxruntime", version="1.17.0", threads=1, channels=(8, 16, 24), base=0.1,
         backend="", probe_ms: float | None = None):
    """Entries as a measurer stores them; ``probe_ms``: each with that per-call probe (a phone)."""
    DatabaseLatencyTable(device, runtime, version, threads, backend=backend).add(
        {signature(c): stats(base * c / 8) for c in channels},
        {signature(c): probe_ms for c in channels} if probe_ms is not None else None)


def rows(device: Device) -> set[tuple]:
    return set(LatencyEntry.objects.filter(device=device).values_list(*ROW_FIELDS))


def phone(user, name="Pixel 7", **fields) -> Device:
    """An agent device ``user`` added with the device form (``fields`` as its agent reported)."""
    return add_device(user, name=name, **fields)


def good_file(entries: int = 3) -> dict:
    """A valid file of ``entries`` onnxruntime entries (made by hand, as a teammate's tool might)."""
    return {"format": "netadapt-lut", "version": 1,
            "device": {"name": "lab phone", "runtime": "onnxruntime", "threads": 1, "facts": {}},
            "entries": [{"runtime": "onnxruntime", "runtime_version": "1.17.0", "threads": 1,
                         "signature": signature(8 * (i + 1)).key(), "signature_version": 1,
                         **stats(0.1 * (i + 1)).to_dict()} for i in range(entries)]}


def as_upload(content: dict | bytes, name="table.json") -> SimpleUploadedFile:
    data = content if isinstance(content, bytes) else json.dumps(content).encode()
    return SimpleUploadedFile(name, data, "application/json")


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def api_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


# --------------------------------------------------------------------------- export


def test_export_holds_every_table_of_the_device_and_its_description(owner):
    device = phone(owner, runtime="torch", threads=2, facts={"os": "Android 14", "cores": 8})
    fill(device)
    fill(device, runtime="torch", version="2.3.0", threads=2, channels=(8,))
    fill(phone(owner, "other"), channels=(32,))  # another device's entries stay out

    table = lut_io.export_table(device)
    assert (table["format"], table["version"]) == ("netadapt-lut", 1)
    assert table["device"] == {"name": "Pixel 7", "runtime": "torch", "threads": 2,
                               "facts": {"os": "Android 14", "cores": 8}}
    assert len(table["entries"]) == 4
    assert [(e["runtime"], e["threads"]) for e in table["entries"]] == [("onnxruntime", 1)] * 3 + [("torch", 2)]
    first = table["entries"][0]
    assert set(first) == set(lut_io.ENTRY_FIELDS)
    assert LayerSignature.from_key(first["signature"]) == signature(16)  # sorted by key: "o16" < "o24" < "o8"
    assert first["min_ms"] == pytest.approx(0.2) and first["n"] == 200
    assert json.loads(lut_io.export_bytes(device)) == table


def test_an_empty_table_exports_as_a_file_without_entries(owner):
    assert json.loads(lut_io.export_bytes(phone(owner)))["entries"] == []


# --------------------------------------------------------------------------- import


def test_export_then_import_gives_another_device_the_same_entries(owner):
    source, target = phone(owner, "lab phone"), phone(owner, "my phone")
    fill(source)
    fill(source, runtime="torch", version="2.3.0", threads=4, channels=(8, 40))
    fill(source, runtime="onnxruntime-web", version="1.31.1", backend="wasm", channels=(8,), probe_ms=0.04)

    table = lut_io.read_table(lut_io.export_bytes(source))
    result = lut_io.import_table(target, table)

    assert result.to_dict() == {"added": 6, "replaced": 0, "kept": 0}
    assert rows(target) == rows(source) and len(rows(target)) == 6
    # A phone's entry keeps its probe (whether it drowns in per-call overhead) through the file.
    web = DatabaseLatencyTable(target, "onnxruntime-web", "1.31.1", 1, backend="wasm")
    assert web.entries().get().overhead_ms == 0.04 and web.drowning([signature(8)]) == (0, 1)
    assert table.source["name"] == "lab phone"
    # The imported table serves look-ups as if measured on the target.
    found = DatabaseLatencyTable(target, "torch", "2.3.0", 4).lookup([signature(40)])
    assert found[signature(40)] == stats(0.5)


def test_entries_already_there_are_kept_unless_overwrite(owner):
    target = phone(owner)
    fill(target, channels=(8,), base=9.0)  # the device's own measurement of signature(8)
    table = lut_io.read_table(json.dumps(good_file(2)).encode())  # signature(8) at 0.1 ms, signature(16)

    kept = lut_io.import_table(target, table)
    assert kept.to_dict() == {"added": 1, "replaced": 0, "kept": 1}
    assert "1 already in the table kept" in kept.message
    own = LatencyEntry.objects.get(device=target, signature_key=signature(8).key())
    assert own.min_ms == 9.0

    replaced = lut_io.import_table(target, table, overwrite=True)
    assert replaced.to_dict() == {"added": 0, "replaced": 2, "kept": 0}
    own.refresh_from_db()
    assert own.min_ms == pytest.approx(0.1) and LatencyEntry.objects.filter(device=target).count() == 2


def test_the_system_device_takes_no_imported_table(system_device):
    table = lut_io.read_table(json.dumps(good_file()).encode())
    with pytest.raises(lut_io.LutImportError, match="shared by everyone"):
        lut_io.import_table(system_device, table)
    assert not LatencyEntry.objects.exists()


def _mutate(path: str, value):
    """A file whose last entry (or the top level) has ``path`` set to ``value`` (deleted for ...)."""
    def make() -> dict:
        data = good_file()
        target = data["entries"][-1] if not path.startswith("/") else data
        key = path.lstrip("/")
        if value is ...:
            del target[key]
        else:
            target[key] = value
        return data
    return make


def _text(text: str):
    return lambda: text.encode()


def _literal(field: str, literal: str):
    """A file whose last entry's ``field`` is written as ``literal`` (JSON that json.dumps cannot make)."""
    return lambda: json.dumps(_mutate(field, "@@")()).replace('"@@"', literal).encode()


SIG = signature(8).key()
BAD_FILES = {
    "not JSON": (_text("{format: netadapt-lut"), "not valid JSON"),
    "not UTF-8": (lambda: b"\xff\xfe\x00{", "not UTF-8"),
    "not an object": (_text("[1, 2]"), 'needs "format": "netadapt-lut"'),
    "wrong format": (_mutate("/format", "netadapt-report"), 'needs "format": "netadapt-lut"'),
    "bad version": (_mutate("/version", 2), "format version 2 is not supported"),
    "no entries list": (_mutate("/entries", ...), 'no "entries" list'),
    "no entries": (_mutate("/entries", []), "holds no entries"),
    "device not an object": (_mutate("/device", "phone"), '"device" must be an object'),
    "entry not an object": (lambda: {**good_file(), "entries": [*good_file()["entries"], 7]},
                            "Entry 4 is not an object"),
    "missing field": (_mutate("median_ms", ...), "Entry 3 lacks median_ms"),
    "unknown field": (_mutate("flops", 12), "Entry 3 has unknown field(s) flops"),
    "unknown runtime": (_mutate("runtime", "tflite"), "unknown runtime 'tflite'"),
    "empty runtime version": (_mutate("runtime_version", " "), "runtime_version must be a version string"),
    "threads zero": (_mutate("threads", 0), "threads must be a whole number from 1 to 256"),
    "non-canonical signature": (_mutate("signature", SIG.replace("|i8|", "|i08|")), "is not canonical"),
    "unknown op": (_mutate("signature", SIG.replace("|conv|", "|pool|")), "op must be 'conv' or 'linear'"),
    "signature of another version": (_mutate("signature", SIG.replace("v1|", "v2|", 1)), "has version 2"),
    "malformed signature": (_mutate("signature", "conv 3x3"), "malformed signature key"),
    "impossible layer": (_mutate("signature", SIG.replace("|g1|", "|g3|")), "not divisible by groups 3"),
    "signature version mismatch": (_mutate("signature_version", 2), "signature_version 2 does not match"),
    "no runs": (_mutate("n", 0), "n (the number of timed runs) must be a whole number of at least 1"),
    "zero median": (_mutate("median_ms", 0), "median_ms must be a positive finite number"),
    "negative minimum": (_mutate("min_ms", -0.1), "min_ms must be a positive finite number"),
    "negative spread": (_mutate("std_ms", -1.0), "std_ms must be zero or a positive finite number"),
    "text statistic": (_mutate("p90_ms", "fast"), "p90_ms must be a positive finite number"),
    "NaN statistic": (_literal("mean_ms", "NaN"), "NaN is not a JSON number"),
    "Infinity statistic": (_literal("mean_ms", "-Infinity"), "-Infinity is not a JSON number"),
    "overflowing statistic": (_literal("p90_ms", "1e999"), "the number 1e999 is too large"),
    "contradicting statistics": (_mutate("p10_ms", 0.01), "contradict one another"),
    "negative probe": (_mutate("overhead_ms", -0.01), "overhead_ms must be a number of milliseconds from 0"),
    "text probe": (_mutate("overhead_ms", "small"), "overhead_ms must be a number of milliseconds from 0"),
    "repeated entry": (_mutate("signature", signature(8).key()), "Entry 3 repeats entry 1"),
}


def test_the_bad_cases_really_differ_from_a_good_file():
    """Guards the text replacements above: each must change the file."""
    good = json.dumps(good_file()).encode()
    for name, (make, _) in BAD_FILES.items():
        made = make()
        assert (made if isinstance(made, bytes) else json.dumps(made).encode()) != good, name


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_named_and_nothing_is_stored(owner_client, owner, case):
    make, message = BAD_FILES[case]
    target = phone(owner)
    fill(target, channels=(8,), base=9.0)
    before = rows(target)

    response = owner_client.post(reverse("device_lut_import", args=[target.pk]),
                                 {"file": as_upload(make()), "overwrite": "on"})

    assert response.status_code == 200
    errors = response.context["form"].errors["file"]
    assert len(errors) == 1 and message in errors[0], errors
    assert message in response.content.decode().replace("&#x27;", "'").replace("&quot;", '"')
    assert rows(target) == before


def test_too_many_entries_are_refused(owner, settings):
    settings.LUT_IMPORT_MAX_ENTRIES = 2
    with pytest.raises(lut_io.LutImportError, match="holds 3 entries; at most 2 can be imported"):
        lut_io.read_table(json.dumps(good_file(3)).encode())


def test_an_oversize_file_is_refused_before_it_is_read(owner_client, owner, settings):
    settings.LUT_IMPORT_MAX_BYTES = 1000
    target = phone(owner)
    data = json.dumps(good_file(5)).encode()
    assert len(data) > 1000
    response = owner_client.post(reverse("device_lut_import", args=[target.pk]), {"file": as_upload(data)})
    assert "look-up tables up to 1000 bytes can be imported" in response.context["form"].errors["file"][0]
    with pytest.raises(lut_io.LutImportError, match="larger than the 1000 bytes limit"):
        lut_io.read_table(data)
    assert not LatencyEntry.objects.exists()


# --------------------------------------------------------------------------- pages


def test_the_export_page_downloads_the_table(owner_client, owner):
    device = phone(owner)
    fill(device)
    response = owner_client.get(reverse("device_lut_export", args=[device.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == f'attachment; filename="pixel-7-{device.pk}-lut.json"'
    assert json.loads(response.content) == lut_io.export_table(device)


def test_everyone_may_export_the_system_device_table(client, stranger, system_device):
    fill(system_device, channels=(8,))
    client.force_login(stranger)
    response = client.get(reverse("device_lut_export", args=[system_device.pk]))
    assert response.status_code == 200 and len(json.loads(response.content)["entries"]) == 1


def test_the_import_page_imports_and_says_what_it_did(owner_client, owner):
    source, target = phone(owner, "lab phone"), phone(owner, "my phone")
    fill(source)
    fill(target, channels=(8,), base=9.0)
    page = owner_client.get(reverse("device_lut_import", args=[target.pk]))
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.content.decode()

    response = owner_client.post(reverse("device_lut_import", args=[target.pk]),
                                 {"file": as_upload(lut_io.export_bytes(source))}, follow=True)
    assert response.redirect_chain == [(reverse("device_detail", args=[target.pk]), 302)]
    assert "2 new, 1 already in the table kept" in response.content.decode()
    assert LatencyEntry.objects.get(device=target, signature_key=signature(8).key()).min_ms == 9.0
    assert LatencyEntry.objects.filter(device=target).count() == 3


def test_strangers_and_the_system_device_get_no_import(client, owner, stranger, system_device):
    device = phone(owner)
    client.force_login(stranger)
    upload = {"file": as_upload(good_file())}
    assert client.post(reverse("device_lut_import", args=[device.pk]), upload).status_code == 404
    assert client.get(reverse("device_lut_export", args=[device.pk])).status_code == 404
    response = client.post(reverse("device_lut_import", args=[system_device.pk]), {"file": as_upload(good_file())})
    assert response.status_code == 403 and "read-only" in response.content.decode()
    assert not LatencyEntry.objects.exists()


# --------------------------------------------------------------------------- REST API


def test_the_api_exports_the_table(owner):
    device = phone(owner)
    fill(device)
    response = api_client(owner).get(f"{API}/devices/{device.pk}/lut")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="device-{device.pk}-lut.json"'
    assert json.loads(response.content) == lut_io.export_table(device)


def test_the_api_imports_a_multipart_file(owner):
    source, target = phone(owner, "lab phone"), phone(owner, "my phone")
    fill(source)
    response = api_client(owner).post(f"{API}/devices/{target.pk}/lut",
                                      {"file": as_upload(lut_io.export_bytes(source)), "overwrite": "true"})
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["added"], body["replaced"], body["kept"]) == (3, 0, 0) and "3 new" in body["detail"]
    assert rows(target) == rows(source)


def test_the_api_imports_a_json_body_and_overwrites_when_asked(owner):
    target = phone(owner)
    fill(target, channels=(8,), base=9.0)
    client = api_client(owner)
    body = json.dumps(good_file(2))
    response = client.post(f"{API}/devices/{target.pk}/lut", body, content_type="application/json")
    assert response.status_code == 200 and response.json()["kept"] == 1 and response.json()["added"] == 1
    response = client.post(f"{API}/devices/{target.pk}/lut?overwrite=true", body, content_type="application/json")
    assert response.json()["replaced"] == 2
    assert LatencyEntry.objects.get(device=target, signature_key=signature(8).key()).min_ms == pytest.approx(0.1)


def test_the_api_names_a_bad_file_and_stores_nothing(owner):
    target = phone(owner)
    body = json.dumps(good_file()).replace("|conv|", "|pool|", 1)
    response = api_client(owner).post(f"{API}/devices/{target.pk}/lut", body, content_type="application/json")
    assert response.status_code == 400
    assert "Entry 1: LayerSignature.op must be 'conv' or 'linear'" in response.json()["file"][0]
    response = api_client(owner).post(f"{API}/devices/{target.pk}/lut", {"overwrite": "true"})
    assert response.status_code == 400 and response.json()["file"] == ["This field is required."]
    assert not LatencyEntry.objects.exists()


def test_the_api_refuses_strangers_and_the_system_device(owner, stranger, system_device):
    device = phone(owner)
    fill(device, channels=(8,))
    client = api_client(stranger)
    assert client.get(f"{API}/devices/{device.pk}/lut").status_code == 404
    body = json.dumps(good_file())
    assert client.post(f"{API}/devices/{device.pk}/lut", body, content_type="application/json").status_code == 404
    response = client.post(f"{API}/devices/{system_device.pk}/lut", body, content_type="application/json")
    assert response.status_code == 403 and "shared by everyone" in response.json()["detail"]
    assert LatencyEntry.objects.count() == 1


def test_the_device_api_says_table_size_and_pairing(owner, system_device):
    device = phone(owner, token_hash="ab" * 32)
    fill(device)
    client = api_client(owner)
    listed = {d["id"]: d for d in client.get(f"{API}/devices").json()}
    assert (listed[device.pk]["lut_entries"], listed[device.pk]["paired"]) == (3, True)
    assert (listed[system_device.pk]["lut_entries"], listed[system_device.pk]["paired"]) == (0, False)
    assert client.get(f"{API}/devices/{device.pk}").json()["lut_entries"] == 3


def test_the_schema_documents_the_table_endpoints():
    schema = json.loads(APIClient().get(f"{API}/schema?format=json").content)
    lut = schema["paths"]["/api/v1/devices/{id}/lut"]
    assert set(lut) == {"get", "post"}
    assert set(lut["post"]["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert set(lut["post"]["responses"]) == {"200", "400", "403", "404"}
    assert {"lut_entries", "paired"} <= set(schema["components"]["schemas"]["Device"]["properties"])
