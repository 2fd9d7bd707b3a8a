"""Device pages: the registry, a device's facts, table and accuracy, adding (with a pairing code),
editing, deleting, pairing and revoking agents and phones, exporting / importing look-up tables,
and the phone page a phone's browser measures on.

A phone pairs by a QR code of a one-time URL: the phone page with the code in the URL's fragment
(``devices.pairing.pairing_url``), which the browser never sends to the server. The phone page
itself needs no login (its code, then its device token, are the credentials).

A stranger's device is a 404 on every page and action (``devices.access``). The shared system
device ("This server's CPU") is readable by everyone; every change to it is refused with a 403
page that says why. Pairing codes are shown once, in the answer to the POST that made them, and
only their hashes are stored (``devices.pairing``).
"""
from __future__ import annotations

from django.contrib import messages
import segno
from django.contrib.auth.decorators import login_required
from django.db.models import Count, F, Max, ProtectedError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from devices import lut_io
from devices.access import devices_visible_to, get_device_for_user
from devices.forms import DeviceForm, LutImportForm, PhoneForm, lut_max_bytes
from devices.models import Device, MeasurementRequest
from devices.page_sections import render_sections
from devices.pairing import (PairingError, code_minutes, is_loopback, new_pairing, pairing_url,
                             public_base_url, revoke)
from devices.usage import used_by
from webapp.lib.formatting import human_size
from webapp.lib.isolation import isolate
from webapp.lib.uploads import upload_limit_error

#: The facts an agent (or ``device_facts``) reports, in the order the detail page shows them.
FACT_LABELS = {"os": "Operating system", "machine": "Machine", "board": "Board", "cpu_model": "CPU model",
               "cores": "CPU cores", "usable_cores": "Usable cores", "memory_bytes": "Memory", "python": "Python",
               "onnxruntime": "ONNX Runtime", "torch": "PyTorch", "numpy": "NumPy", "agent": "Agent version",
               "onnxruntime_web": "ONNX Runtime Web", "backend": "Backend", "user_agent": "Browser",
               "secure_context": "Secure context", "timer_resolution_ms": "Timer resolution (ms)"}
#: Most recent measurement requests the detail page shows.
RECENT_REQUESTS = 20


def _refuse_system(request: HttpRequest, device: Device, action: str) -> HttpResponse:
    return render(request, "devices/read_only.html", {"device": device, "action": action}, status=403)


def _changeable(request: HttpRequest, pk: int, action: str) -> tuple[Device, HttpResponse | None]:
    """The user's device ``pk`` (404 for a stranger's) and, for the system device, the 403 answer."""
    device = get_device_for_user(request.user, pk)
    return device, (_refuse_system(request, device, action) if device.is_system else None)


def _facts(facts: dict) -> list[tuple[str, str]]:
    """(label, value) rows of a device's reported facts: the known ones first, then the rest."""
    rows = []
    for key in [*FACT_LABELS, *sorted(set(facts) - set(FACT_LABELS))]:
        value = facts.get(key)
        if value is None or value == "":
            continue
        if key == "memory_bytes" and isinstance(value, int):
            value = human_size(value)
        rows.append((FACT_LABELS.get(key, key.replace("_", " ").capitalize()), str(value)))
    return rows


def _pairing_page(request: HttpRequest, device: Device) -> HttpResponse:
    """A new one-time code and the agent's command line (a phone: the QR code of its pairing URL);
    the page is never cached."""
    code, pairing = new_pairing(device)
    server = request.build_absolute_uri("/")
    if device.kind == "phone":
        base = public_base_url(server)
        url = pairing_url(base, code)
        response = render(request, "devices/phone_pairing.html", {
            "device": device, "url": url, "expires_at": pairing.expires_at, "minutes": f"{code_minutes():g}",
            "qr": segno.make(url, error="m").svg_data_uri(scale=6, border=4), "loopback": is_loopback(base)})
        response["Cache-Control"] = "no-store"
        return response
    response = render(request, "devices/pairing.html", {
        "device": device, "code": code, "expires_at": pairing.expires_at, "minutes": f"{code_minutes():g}",
        "command": f"python netadapt-agent.pyz --server {server} --pair {code}"})
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_GET
def device_list(request):
    devices = (devices_visible_to(request.user).annotate(lut_size=Count("latency_entries"))
               .order_by(F("owner_id").asc(nulls_first=True), "name", "pk"))  # the shared device first
    return render(request, "devices/list.html", {"devices": devices})


@login_required
@require_GET
def device_detail(request, pk: int):
    device = get_device_for_user(request.user, pk)
    tables = list(device.latency_entries.values("runtime", "runtime_version", "backend", "threads")
                  .annotate(entries=Count("pk"), latest=Max("measured_at"))
                  .order_by("runtime", "runtime_version", "backend", "threads"))
    for table in tables:
        table["current"] = (table["runtime"], table["threads"]) == (device.runtime, device.threads)
    return render(request, "devices/detail.html", {
        "device": device, "facts": _facts(device.facts if isinstance(device.facts, dict) else {}), "tables": tables,
        "lut_size": sum(t["entries"] for t in tables),
        "requests": MeasurementRequest.objects.filter(device=device, owner=request.user)
                                              .order_by("-created", "-pk")[:RECENT_REQUESTS],
        "used_by": used_by(device, request.user),
        "sections": render_sections(request, device),
        "import_form": LutImportForm(), "import_limit": human_size(lut_max_bytes())})


@login_required
@require_http_methods(["GET", "POST"])
def device_add(request):
    form = DeviceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = form.save(commit=False)
        device.owner, device.kind, device.status = request.user, "agent", Device.Status.OFFLINE
        device.save()
        messages.success(request, f"Added {device.name}. Pair its agent with the code below.")
        return _pairing_page(request, device)
    return render(request, "devices/form.html", {"form": form, "device": None})


@login_required
@require_http_methods(["GET", "POST"])
def phone_add(request):
    """A phone: named here, paired by the QR code of the next page, measured in its browser."""
    form = PhoneForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = form.save(commit=False)
        device.owner, device.kind, device.status = request.user, "phone", Device.Status.OFFLINE
        device.runtime, device.threads = "onnxruntime-web", 1
        device.save()
        messages.success(request, f"Added {device.name}. Scan the code below with the phone's camera.")
        return _pairing_page(request, device)
    return render(request, "devices/phone_form.html", {"form": form})


@require_GET
def phone_page(request):
    """The page a phone's browser pairs on and measures on while it stays open (no login);
    cross-origin isolated where the browser allows it (a secure context): threads and a fine clock."""
    response = isolate(render(request, "devices/phone.html", {}))
    response["Cache-Control"] = "no-store"
    response["Referrer-Policy"] = "no-referrer"
    return response


@login_required
@require_http_methods(["GET", "POST"])
def device_edit(request, pk: int):
    device, refused = _changeable(request, pk, "edited")
    if refused:
        return refused
    form = (PhoneForm if device.kind == "phone" else DeviceForm)(request.POST or None, instance=device)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Saved {device.name}.")
        return redirect("device_detail", pk=device.pk)
    return render(request, "devices/form.html", {"form": form, "device": device})


@login_required
@require_http_methods(["GET", "POST"])
def device_delete(request, pk: int):
    device, refused = _changeable(request, pk, "deleted")
    if refused:
        return refused
    used = used_by(device)
    if request.method == "POST" and not used:
        try:
            device.delete()
        except ProtectedError:  # a job started since the count
            used = used_by(device)
        else:
            messages.success(request, f"Deleted {device.name} and its look-up table.")
            return redirect("device_list")
    if request.method == "POST":
        messages.error(request, f"{device.name} is used by {used}: delete those first.")
        return redirect("device_detail", pk=device.pk)
    return render(request, "devices/delete.html", {"device": device, "used_by": used,
                                                   "lut_size": device.latency_entries.count()})


@login_required
@require_POST
def device_pair(request, pk: int):
    device, refused = _changeable(request, pk, "paired")
    if refused:
        return refused
    try:
        return _pairing_page(request, device)
    except PairingError as error:
        messages.error(request, str(error))
        return redirect("device_detail", pk=device.pk)


@login_required
@require_POST
def device_revoke(request, pk: int):
    device, refused = _changeable(request, pk, "unpaired")
    if refused:
        return refused
    if not device.is_remote:
        messages.error(request, "Only agent and phone devices have a token to revoke.")
    else:
        revoke(device)
        messages.success(request, f"Revoked {device.name}'s token: its agent is refused until it is "
                                  "paired again with a new code.")
    return redirect("device_detail", pk=device.pk)


@login_required
@require_GET
def device_lut_export(request, pk: int):
    device = get_device_for_user(request.user, pk)
    filename = f"{slugify(device.name) or 'device'}-{device.pk}-lut.json"
    return HttpResponse(lut_io.export_bytes(device), content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@login_required
@require_http_methods(["GET", "POST"])
def device_lut_import(request, pk: int):
    device, refused = _changeable(request, pk, "given an imported look-up table")
    if refused:
        return refused
    form = LutImportForm()
    if request.method == "POST":
        form = LutImportForm(request.POST, request.FILES, upload_error=upload_limit_error(request))
        result = lut_io.import_from_form(device, form)
        if result is not None:
            messages.success(request, result.message)
            return redirect("device_detail", pk=device.pk)
    return render(request, "devices/lut_import.html", {"device": device, "form": form,
                                                       "import_limit": human_size(lut_max_bytes())})
