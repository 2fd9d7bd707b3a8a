"""Adding a phone and pairing it by its QR code's URL, through the pages (devices.views).

- "Add a phone" makes a ``phone`` device (the browser's runtime, one thread) and answers with a
  QR code of a one-time URL: the phone page with the code in the fragment, never in the path or
  query; the page warns when the address is loopback; the code works once, within its minutes.
- The QR code encodes exactly the URL shown (decoded from the served SVG, rasterised).
- The phone page needs no login and is not cached; the owner sees the phone's state, can show a
  new code and revoke; a stranger gets 404s. The browser run is tests/test_phone_browser.py.
"""
from __future__ import annotations

import base64
import re
from datetime import timedelta
from urllib.parse import unquote, urlsplit

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from devices.models import Device, Pairing
from devices.pairing import PHONE_PATH

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


def text(response) -> str:
    return " ".join(response.content.decode().split())


def add_phone(client, name="Pixel 8"):
    response = client.post(reverse("phone_add"), {"name": name, "description": "lab"})
    assert response.status_code == 200
    html = response.content.decode()
    url = re.search(r'id="pairing-url">([^<]+)<', html).group(1)
    qr = re.search(r'id="pairing-qr" src="([^"]+)"', html).group(1)
    return Device.objects.get(name=name), url, qr, response


def pair(url: str, facts=None):
    return Client().post("/api/v1/agent/pair", {"code": url.split("#pair=", 1)[1], "facts": facts or {}},
                         content_type="application/json")


def test_adding_a_phone_shows_a_qr_code_of_a_one_time_url_with_the_code_in_the_fragment(owner_client, owner):
    device, url, qr, response = add_phone(owner_client)
    assert (device.owner, device.kind, device.runtime, device.threads, device.status) == (
        owner, "phone", "onnxruntime-web", 1, "offline")
    assert response["Cache-Control"] == "no-store"
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path, parts.query) == ("http", "testserver", PHONE_PATH, "")
    assert re.fullmatch(r"pair=[A-Z2-9]{5}-[A-Z2-9]{5}", parts.fragment)
    assert reverse("phone_page") == PHONE_PATH
    assert "Valid 10 minutes" in text(response)
    assert qr.startswith("data:image/svg+xml")
    # Only the hash of the code is stored.
    code = parts.fragment.split("=", 1)[1]
    assert not Pairing.objects.filter(code_hash__contains=code.replace("-", "")).exists()
    assert Pairing.objects.filter(device=device, used_at=None).count() == 1


def test_the_qr_code_encodes_the_url_shown(owner_client):
    zxingcpp = pytest.importorskip("zxingcpp")
    from io import BytesIO

    import numpy as np
    from PIL import Image

    _, url, qr, _ = add_phone(owner_client)
    svg = unquote(qr.split(",", 1)[1]) if ";base64," not in qr else base64.b64decode(qr.split(",", 1)[1]).decode()
    # Draw the served SVG's dark modules as pixels and decode that picture as a camera would.
    modules = _svg_modules(svg)
    size = max(max(x for x, _ in modules), max(y for _, y in modules)) + 5
    picture = np.full((size * 6, size * 6), 255, np.uint8)
    for x, y in modules:
        picture[y * 6:(y + 1) * 6, x * 6:(x + 1) * 6] = 0
    buffer = BytesIO()
    Image.fromarray(picture).save(buffer, "PNG")
    found = zxingcpp.read_barcodes(Image.open(BytesIO(buffer.getvalue())))
    assert [barcode.text for barcode in found] == [url]


def _svg_modules(svg: str) -> set[tuple[int, int]]:
    """The dark modules of segno's SVG path (``M x y h n`` moves and horizontal runs, scaled)."""
    path = re.search(r""" d=['"]([^'"]+)['"]""", svg).group(1)
    modules, x, y = set(), 0.0, 0.0
    for command, numbers in re.findall(r"([MmHhVv])([-\d.\s]+)", path):
        values = [float(v) for v in numbers.split()]
        if command == "M":
            x, y = values[0], values[1]
        elif command == "m":
            x, y = x + values[0], y + values[1]
        elif command in "hH":
            end = values[0] if command == "H" else x + values[0]
            for column in range(int(round(min(x, end))), int(round(max(x, end)))):
                modules.add((column, int(y - 0.5)))
            x = end
        elif command in "vV":
            y = values[0] if command == "V" else y + values[0]
    assert modules
    return modules


def test_a_loopback_address_gets_a_warning_and_the_public_address_setting_is_used(owner_client, settings):
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000/"
    _, url, _, response = add_phone(owner_client)
    assert url.startswith("http://127.0.0.1:8000/devices/phone/#pair=")
    assert "a phone cannot reach it" in text(response) and "NETADAPT_PUBLIC_URL" in text(response)
    settings.PUBLIC_BASE_URL = "http://192.168.1.20:8000"
    _, url, _, response = add_phone(owner_client, "Second phone")
    assert url.startswith("http://192.168.1.20:8000/devices/phone/#pair=")
    assert "a phone cannot reach it" not in text(response)


def test_the_code_of_the_url_pairs_once(owner_client):
    device, url, _, _ = add_phone(owner_client)
    first = pair(url, {"user_agent": "Mozilla/5.0", "onnxruntime_web": "1.31.1"})
    assert first.status_code == 200
    assert first.json()["device"] == device.pk and first.json()["runtime"] == "onnxruntime-web"
    device.refresh_from_db()
    assert device.token_hash and device.facts["user_agent"] == "Mozilla/5.0"
    again = pair(url)
    assert again.status_code == 400 and "already used" in again.json()["detail"]


def test_an_expired_code_is_refused(owner_client):
    device, url, _, _ = add_phone(owner_client)
    Pairing.objects.filter(device=device).update(expires_at=timezone.now() - timedelta(seconds=1))
    answer = pair(url)
    assert answer.status_code == 400 and "expired" in answer.json()["detail"]
    assert not Device.objects.get(pk=device.pk).token_hash


def test_the_phone_page_needs_no_login_and_is_not_cached(client):
    response = client.get(reverse("phone_page"))
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store" and response["Referrer-Policy"] == "no-referrer"
    # Cross-origin isolated where the browser allows it: WebAssembly threads and a 5 us clock.
    assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert response["Cross-Origin-Embedder-Policy"] == "require-corp"
    html = response.content.decode()
    assert "js/phone/page.mjs" in html and 'id="phone-state"' in html
    assert "Keep the screen on." in html and "in front" in html


def test_the_owner_shows_a_new_qr_code_and_revokes_the_phone(owner_client):
    device, url, _, _ = add_phone(owner_client)
    assert pair(url).status_code == 200
    detail = text(owner_client.get(reverse("device_detail", args=[device.pk])))
    assert "Phone (browser)" in detail and "Show a pairing QR code" in detail and "Revoke token" in detail
    again = owner_client.post(reverse("device_pair", args=[device.pk]))
    assert again.status_code == 200 and 'id="pairing-qr"' in again.content.decode()
    owner_client.post(reverse("device_revoke", args=[device.pk]))
    device.refresh_from_db()
    assert device.token_hash == "" and device.status == "offline"
    # The code shown before the revoke is spent too.
    new_url = re.search(r'id="pairing-url">([^<]+)<', again.content.decode()).group(1)
    assert pair(new_url).status_code == 400


def test_editing_a_phone_keeps_its_runtime_and_agents_cannot_pick_the_browsers(owner_client):
    device, _, _, _ = add_phone(owner_client)
    response = owner_client.post(reverse("device_edit", args=[device.pk]),
                                 {"name": "Renamed", "description": "", "runtime": "torch", "threads": 8})
    assert response.status_code == 302
    device.refresh_from_db()
    assert (device.name, device.runtime, device.threads) == ("Renamed", "onnxruntime-web", 1)
    form = owner_client.get(reverse("device_add")).content.decode()
    assert "onnxruntime-web" not in form
    refused = owner_client.post(reverse("device_add"), {"name": "x", "runtime": "onnxruntime-web", "threads": 1})
    assert refused.status_code == 200 and not Device.objects.filter(name="x").exists()


def test_a_strangers_phone_is_a_404(owner_client, stranger):
    device, _, _, _ = add_phone(owner_client)
    other = Client()
    other.force_login(stranger)
    for name in ("device_detail", "device_edit"):
        assert other.get(reverse(name, args=[device.pk])).status_code == 404
    for name in ("device_pair", "device_revoke"):
        assert other.post(reverse(name, args=[device.pk])).status_code == 404
    assert Pairing.objects.filter(device=device).count() == 1
