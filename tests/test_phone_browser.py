"""A phone played by headless Chromium at 390x844: it pairs from the decoded QR code and measures
in its own browser (onnxruntime-web, WebAssembly), against the real server (uvicorn, the shared
database: a file SQLite database embedded, PostgreSQL + Redis in production mode).

The owner adds a phone on the pages in a desktop-sized tab; the QR code is read from a screenshot
of the pairing page's image (zxing-cpp), and a phone-sized tab without a session opens the URL it
encodes. That tab pairs, comes online, times a measurement request opened as a job opens one (its
layers and the network), and the table gets the browser's entries; a tab closed in the middle of
a request loses at most the batch it was timing (reopened, it finishes the request, and nothing
stored before is timed again); then a job through the API
runs to the end on the phone's measurements. Revoking on the owner's page disconnects the phone,
which then says so. The phone page is saved as docs/phone-page.png.

Run on two kinds of origin: 127.0.0.1, a secure context (as https would be), and a made-up host
name mapped to 127.0.0.1 by Chromium's host-resolver rules, an http page that is not a secure
context (as a phone on a LAN address gets: no Wake Lock, a coarse clock, no cross-origin
isolation and so one WebAssembly thread); the QR code then uses
the public address setting (``NETADAPT_PUBLIC_URL``). Jobs run on both: the first on the phone's
measurements to the end (its latency estimate left automatic: chosen from the phone's probes), the
second on its table (no layer measured again).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from tests.e2e_support import JOB_DEADLINE_S, PRODUCTION, HttpClient, wait_until
from tests.test_e2e import PASSWORD, create_user

pytestmark = [pytest.mark.slow, pytest.mark.services]
if PRODUCTION:  # committed rows in pytest-django's PostgreSQL test database, read by the servers
    pytestmark.append(pytest.mark.django_db(transaction=True))

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
SCREENSHOT = REPO / "docs" / "phone-page.png"
TIMEOUT_MS = 60_000
DEADLINE_S = int(os.environ.get("NETADAPT_PHONE_DEADLINE_S", 300))  # WebAssembly start and a small CNN's layers on a loaded two-core machine
WEB_VERSION = "1.31.1"
#: A made-up host name (RFC 6761 reserves .test) for the origin that is not a secure context.
PLAIN_HOST = "phone.test"
# One iteration; channels in steps of 16, so the first iteration's candidates need half as many new
# table entries as in steps of 8 (160 of them took a plain-http page 49 s of its 88).
JOB = {"metric": "latency", "budget_mode": "percent", "budget": 90, "initial_reduction": 0.05,
       "decay": 0.9, "short_term_steps": 3, "long_term_epochs": 0, "holdout_size": 0.15,
       "max_iterations": 1, "channel_step": 16}


def decode_qr(png: bytes) -> list[str]:
    import zxingcpp
    from PIL import Image

    return [barcode.text for barcode in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]


@pytest.mark.parametrize("origin", ["secure", "plain-http"])
def test_a_phone_pairs_from_the_qr_code_and_measures_in_its_browser(live_app, digits_cnn_state_dict, monkeypatch,
                                                                    origin):
    # Playwright's sync API keeps an event loop in this thread, in a context of its own; the ORM
    # reads here are plain sync calls between its calls (nothing runs concurrently), on the
    # connection to the servers' database (embedded mode: a file SQLite database), handed over.
    from django.db import connections

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    servers_database = connections["default"]
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed")
    pytest.importorskip("zxingcpp")
    from playwright.sync_api import expect, sync_playwright

    from adaptation.models import Job, JobEvent
    from adaptation.netadapt.architectures import describe_network
    from adaptation.netadapt.spec import ArchitectureSpec
    from adaptation.network_files import network_files
    from devices.measure.signature import LayerSignature
    from devices.measure.tracing import trace_layers
    from devices.models import Device, LatencyEntry, MeasurementRequest
    from devices.requests import open_request

    import torch

    app = live_app
    secure = origin == "secure"
    phone_base = app.base_url
    args = list(CHROMIUM_ARGS)
    if not secure:
        phone_base = f"http://{PLAIN_HOST}:{app.port}"
        args.append(f"--host-resolver-rules=MAP {PLAIN_HOST} 127.0.0.1")
        app.web.stop()
        app.processes.remove(app.web)
        app.env = {**app.env, "ALLOWED_HOSTS": f"127.0.0.1,localhost,{PLAIN_HOST}", "NETADAPT_PUBLIC_URL": phone_base}
        app.start_web()
    create_user("phone-owner")
    problems: list[str] = []
    frames: list[str] = []  # the phone's websocket, for failure messages

    with sync_playwright() as playwright:
        connections["default"] = servers_database
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        try:
            desk = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            desk.set_default_timeout(TIMEOUT_MS)
            desk.goto(app.url("/accounts/login/"))
            desk.fill("#id_username", "phone-owner")
            desk.fill("#id_password", PASSWORD)
            desk.click("main button[type=submit]")
            expect(desk.locator("header .user-menu summary")).to_have_text("phone-owner")

            # "Add a phone": the next page shows the QR code of the one-time URL.
            desk.goto(app.url("/devices/"))
            desk.click("text=Add a phone")
            desk.fill("#id_name", "test phone")
            desk.click("main button[type=submit]")
            shown = desk.locator("#pairing-url").inner_text().strip()
            assert decode_qr(desk.locator("#pairing-qr").screenshot()) == [shown]
            assert shown.startswith(f"{phone_base}/devices/phone/#pair=")
            device = Device.objects.get(name="test phone")
            assert (device.kind, device.status) == ("phone", "offline")

            # The phone: no session, phone-sized; it opens what the camera read.
            phone_context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                                has_touch=True, device_scale_factor=2)
            phone = phone_context.new_page()
            phone.set_default_timeout(TIMEOUT_MS)
            phone.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            phone.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            phone.on("websocket", lambda socket: (
                socket.on("framereceived", lambda frame: frames.append(f"<- {str(frame)[:300]}")),
                socket.on("framesent", lambda frame: frames.append(f"-> {str(frame)[:300]}")),
                socket.on("close", lambda _: frames.append("closed"))))
            phone.goto(decode_qr(desk.locator("#pairing-qr").screenshot())[0])
            try:
                expect(phone.locator("#phone-state")).to_have_attribute("data-state", "paired", timeout=DEADLINE_S * 1000)
            except AssertionError as error:
                pytest.fail(f"{error}\n{problems}\n{frames[-20:]}\n{app.logs_text()}")
            assert "#" not in phone.url  # the code left the address bar and the history
            assert phone.evaluate("JSON.parse(localStorage.getItem('netadapt-phone')).device") == device.pk
            device.refresh_from_db()
            assert device.status == "online" and device.token_hash
            assert device.facts["onnxruntime_web"] == WEB_VERSION and device.facts["backend"] == "wasm"
            assert device.facts["timer_resolution_ms"] > 0
            assert device.facts["secure_context"] is secure  # 127.0.0.1 is a secure origin, phone.test not
            # The page's isolation headers count in a secure context only: there WebAssembly gets
            # a thread per core, and the device's jobs ask for that many (the table's key).
            assert device.facts["cross_origin_isolated"] is secure
            threads = phone.evaluate("navigator.hardwareConcurrency") if secure else 1
            assert device.facts["threads"] == device.threads == threads
            if secure:
                assert "cross-origin isolated page" in phone.locator("#phone-context").inner_text()
            else:
                assert "no screen lock" in phone.locator("#phone-context").inner_text()
                expect(phone.locator("#phone-screen-rule")).to_contain_text("Keep the screen on")
            expect(phone.locator("#phone-device")).to_have_text("test phone")

            # A request as a job opens one: a small CNN's layers and the network itself.
            spec = ArchitectureSpec("plain_cnn", 10, 1, 0.5, 16)
            torch.manual_seed(0)
            layers = [layer.signature.to_dict() for layer in trace_layers(spec.build().eval(), spec.example_input())]
            networks = [describe_network(spec, {}, "original")]
            request = open_request(owner=device.owner, device=device, reason="a small CNN", runtime="onnxruntime-web",
                                   threads=threads, example_shape=[1, 1, 16, 16], signatures=layers, networks=networks,
                                   network_files=network_files(networks, [1, 1, 16, 16], "onnxruntime-web"))
            wait_until(lambda: MeasurementRequest.objects.get(pk=request.pk).status in ("done", "failed"),
                       "the phone to measure the request", app, DEADLINE_S)
            request.refresh_from_db()
            assert request.status == "done", f"{request.error}\n{problems}"
            assert request.runtime_version == WEB_VERSION and request.claimed_by == f"agent:{device.pk}"
            stats = request.results[0]
            assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
            keys = set(LatencyEntry.objects.filter(device=device).values_list("runtime", "runtime_version",
                                                                               "backend", "threads"))
            assert keys == {("onnxruntime-web", WEB_VERSION, "wasm", threads)}
            assert LatencyEntry.objects.filter(device=device).count() == len({str(s) for s in layers})
            # Each entry was timed next to its input shape's probe, which is kept with it.
            probes = LatencyEntry.objects.filter(device=device).values_list("overhead_ms", flat=True)
            assert all(probe is not None and probe > 0 for probe in probes), list(probes)
            expect(phone.locator("#phone-state")).to_have_attribute("data-state", "idle")
            expect(phone.locator("#phone-served-count")).to_have_text("1")
            if secure:
                phone.screenshot(path=str(SCREENSHOT))

            # Closing the tab mid-request loses at most the batch being timed: a 20-layer request
            # (batches of 16 and 4), the tab closed once the first batch is stored; reopened, the
            # page takes its request back and times only what is missing.
            big = ArchitectureSpec("mobilenet_v1", 10, 3, 0.25, 16)
            torch.manual_seed(0)
            big_layers = [layer.signature.to_dict() for layer in trace_layers(big.build().eval(), big.example_input())]
            big_networks = [describe_network(big, {}, "mobilenet")]
            second = open_request(owner=device.owner, device=device, reason="a MobileNet", runtime="onnxruntime-web",
                                  threads=threads, example_shape=[1, 3, 16, 16], signatures=big_layers, networks=big_networks,
                                  network_files=network_files(big_networks, [1, 3, 16, 16], "onnxruntime-web"))
            wait_until(lambda: MeasurementRequest.objects.get(pk=second.pk).signatures_done >= 16,
                       "the phone to store its first batch", app, DEADLINE_S)
            phone.close()
            wait_until(lambda: Device.objects.get(pk=device.pk).status == "offline", "the phone to go offline", app, 60)
            second.refresh_from_db()
            assert (second.status, second.claimed_by) == ("running", f"agent:{device.pk}")
            kept = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
            phone = phone_context.new_page()  # the same browser: its storage keeps the token
            phone.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            phone.goto(phone_base + "/devices/phone/")
            wait_until(lambda: MeasurementRequest.objects.get(pk=second.pk).status in ("done", "failed"),
                       "the reopened phone to finish the request", app, DEADLINE_S)
            second.refresh_from_db()
            assert second.status == "done", f"{second.error}\n{problems}"
            after = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
            assert {key: after[key] for key in kept} == kept  # nothing stored before the close was timed again
            assert second.signatures_done == len(second.signatures) and len(after) > len(kept)

            # A job through the API, measured on the phone to the end; then a second job, which
            # reuses the phone's table: it asks for no layer the first one measured. The job's
            # path does not depend on the origin (above, both origins serve requests the same way),
            # so it runs in the secure one only: single-threaded, the plain-http page took a minute
            # more for it, in each of CI's two suites.
            if secure and os.environ.get("NETADAPT_PHONE_JOB", "1") == "1":
                spec_, weights = digits_cnn_state_dict
                api = HttpClient(app.base_url)
                api.token = api.post_json("/api/v1/token", {"username": "phone-owner",
                                                            "password": PASSWORD}).json()["token"]
                model = api.upload_checked("models", {
                    "name": "digits cnn", "arch": spec_.arch, "width": spec_.width,
                    "num_classes": spec_.num_classes, "in_channels": spec_.in_channels,
                    "resolution": spec_.resolution}, {"file": ("digits.pt", weights)}, app)
                assert model["status"] == "ready", model
                dataset = next(d for d in api.get("/api/v1/datasets").json() if d["builtin_name"] == "digits")
                app.start_worker()
                answer = api.post_json("/api/v1/jobs", {"model": model["id"], "dataset": dataset["id"],
                                                        "device": device.pk, **JOB})
                assert answer.status == 201, answer.body
                job_id = answer.json()["id"]
                wait_until(lambda: Job.objects.get(pk=job_id).status in ("finished", "failed", "cancelled"),
                           f"job {job_id} to end", app, JOB_DEADLINE_S + DEADLINE_S)
                job = Job.objects.get(pk=job_id)
                assert job.status == "finished", f"{job.error}\n{problems}\n{app.logs_text()}"
                # Left automatic, the phone's job chose its estimate from the probes, and said so.
                assert job.settings["latency_model"] in ("table", "whole")
                assert JobEvent.objects.filter(job=job, type="job.log",
                                               payload__message__startswith="Latency estimate:").exists()
                measured = MeasurementRequest.objects.filter(job_id=job.pk)
                assert measured.exists() and all(r.status == "done" and r.claimed_by == f"agent:{device.pk}"
                                                 for r in measured)
                assert sum(len(r.signatures) for r in measured) > 0  # the first job filled the table

                table = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
                again = api.post_json("/api/v1/jobs", {"model": model["id"], "dataset": dataset["id"],
                                                       "device": device.pk, **JOB, "latency_model": "table"})
                assert again.status == 201, again.body
                wait_until(lambda: Job.objects.get(pk=again.json()["id"]).status in ("finished", "failed", "cancelled"),
                           "the second job to end", app, JOB_DEADLINE_S + DEADLINE_S)
                second_job = Job.objects.get(pk=again.json()["id"])
                assert second_job.status == "finished", f"{second_job.error}\n{problems}\n{app.logs_text()}"
                asked = {LayerSignature.from_dict(signature).key()
                         for r in MeasurementRequest.objects.filter(job_id=second_job.pk) for signature in r.signatures}
                assert not asked & set(table), "the second job measured layers the phone's table had"
                after = dict(LatencyEntry.objects.filter(device=device).values_list("signature_key", "measured_at"))
                assert {key: after[key] for key in table} == table  # no entry was timed again

            # Revoking on the owner's page disconnects the phone, which says so and forgets its token.
            desk.goto(app.url(f"/devices/{device.pk}/"))
            desk.click("button:has-text('Revoke token')")
            expect(phone.locator("#phone-state")).to_have_attribute("data-state", "revoked")
            assert phone.evaluate("localStorage.getItem('netadapt-phone')") is None
            assert not [p for p in problems if "page error" in p], problems
        finally:
            browser.close()
