"""Security probes of access: pairing codes, trusted proxies, failed-attempt limits, API tokens,
secrets in logs, cancelling measurements. One case per attack, through the entry points an
attacker or a user has: the pages (with CSRF, as a browser posts), the REST API, the agent's
endpoints and websocket, a live uvicorn and the real agent program.
"""
from __future__ import annotations

import io
import json
import logging
import os
import sys

import pytest
import torch
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from adaptation.netadapt.spec import ArchitectureSpec
from devices.models import MeasurementRequest
from tests.conftest import PASSWORD
from tests.e2e_support import PRODUCTION, HttpClient, Process, live_app, wait_until
from tests.stored_files import torch_bytes
from tests.user_objects import run_checks_now

pytestmark = [pytest.mark.services]

API = "/api/v1"
NEW_PASSWORD = "another long passphrase 42"
SPEC = ArchitectureSpec("plain_cnn", num_classes=10, in_channels=1, width=0.25, resolution=8)  # fits digits
#: On the live servers: small limits, so a test spends them in a few requests.
LIVE_LIMITS = {"NETADAPT_PAIR_FAILURES_PER_ADDRESS": "3", "NETADAPT_LOGIN_FAILURES_PER_ACCOUNT": "3",
               "NETADAPT_LOGIN_FAILURES_PER_ADDRESS": "50", "NETADAPT_RATE_LIMIT_WINDOW_SECONDS": "3600"}
#: A live app shares committed rows with this process (PostgreSQL needs real transactions).
LIVE_DB = pytest.mark.django_db(transaction=True)


# --------------------------------------------------------------------------- helpers


def browser(user=None) -> Client:
    """A test client that checks CSRF as the real middleware does for a browser."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    return client


def csrf_post(client: Client, page: str, url: str | None = None, data: dict | None = None, **extra):
    """GET ``page`` (it sets the CSRF cookie), then POST its form with the token, as a browser does."""
    assert client.get(page, **extra).status_code in (200, 429)
    token = client.cookies["csrftoken"].value
    return client.post(url or page, {**(data or {}), "csrfmiddlewaretoken": token}, **extra)


def header(response, name: str) -> str | None:
    """A header of a live server's answer, whatever the case of its name."""
    return next((value for key, value in response.headers.items() if key.lower() == name.lower()), None)


def token_api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def api_token(username: str, password: str = PASSWORD, **extra):
    return APIClient().post(f"{API}/token", {"username": username, "password": password}, format="json", **extra)


def works(token: str) -> bool:
    """Whether the API accepts ``token`` (401 when it does not)."""
    status = token_api(token).get(f"{API}/jobs").status_code
    assert status in (200, 401), status
    return status == 200


def add_device(user, name: str = "phone") -> tuple[int, str]:
    """An agent device added on its page: (id, the pairing code the answer shows)."""
    response = csrf_post(browser(user), reverse("device_add"), data={
        "name": name, "runtime": "onnxruntime", "threads": "1", "description": ""})
    assert response.status_code == 200, response.content[:2000]
    return response.context["device"].pk, response.context["code"]


def new_code(user, device_id: int) -> str:
    response = csrf_post(browser(user), reverse("device_detail", args=[device_id]),
                         reverse("device_pair", args=[device_id]))
    assert response.status_code == 200
    return response.context["code"]


def pair(code: str, client: Client | None = None, **extra):
    return (client or Client()).post(f"{API}/agent/pair", json.dumps({"code": code, "facts": {"os": "TestOS"}}),
                                     content_type="application/json", **extra)


def files_status(token: str) -> int:
    """The agent files endpoint's answer to ``token``: 401 refused, 404 accepted (no such request)."""
    return Client().get(f"{API}/agent/requests/999999/files", HTTP_AUTHORIZATION=f"Token {token}").status_code


def upload_model(api: APIClient) -> int:
    """A model uploaded through the API (202, checking) and checked in this process: its id, ready."""
    torch.manual_seed(0)
    data = {"name": "tiny", "arch": SPEC.arch, "width": str(SPEC.width), "num_classes": str(SPEC.num_classes),
            "in_channels": str(SPEC.in_channels), "resolution": str(SPEC.resolution),
            "file": SimpleUploadedFile("tiny.pt", torch_bytes(SPEC.build().state_dict()))}
    with pytest.MonkeyPatch.context() as patch:
        run_checks_now(patch)
        response = api.post(f"{API}/models", data, format="multipart")
    assert response.status_code == 202, response.content
    model_id = response.json()["id"]
    assert api.get(f"{API}/models/{model_id}").json()["status"] == "ready"
    return model_id


def user_api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def limited_live_app(monkeypatch, settings, tmp_path, django_db_blocker, no_rate_limits_counted):
    """A live uvicorn with ``LIVE_LIMITS``, this process set alike: both count in the one shared cache."""
    for name, value in LIVE_LIMITS.items():
        monkeypatch.setenv(name, value)
    settings.PAIR_FAILURES_PER_ADDRESS = int(LIVE_LIMITS["NETADAPT_PAIR_FAILURES_PER_ADDRESS"])
    settings.LOGIN_FAILURES_PER_ACCOUNT = int(LIVE_LIMITS["NETADAPT_LOGIN_FAILURES_PER_ACCOUNT"])
    settings.LOGIN_FAILURES_PER_ADDRESS = int(LIVE_LIMITS["NETADAPT_LOGIN_FAILURES_PER_ADDRESS"])
    settings.RATE_LIMIT_WINDOW_SECONDS = int(LIVE_LIMITS["NETADAPT_RATE_LIMIT_WINDOW_SECONDS"])
    with live_app(tmp_path, django_db_blocker) as app:
        yield app


# --------------------------------------------------------------------------- pairing codes


@pytest.mark.django_db
def test_an_older_pairing_code_cannot_pair_after_a_newer_one_was_redeemed(owner):
    device, first = add_device(owner)
    second = new_code(owner, device)
    paired = pair(second)
    assert paired.status_code == 200, paired.content
    token = paired.json()["token"]
    assert files_status(token) == 404  # the token is accepted

    replay = pair(first)
    assert replay.status_code == 400 and "already used" in replay.json()["detail"]
    assert files_status(token) == 404  # still the live token: nothing replaced it


# --------------------------------------------------------------------------- trusted proxies


def test_webapp_serve_trusts_no_proxy_unless_told(settings):
    from webapp.serve import uvicorn_command

    settings.TRUSTED_PROXIES = []
    command = uvicorn_command("127.0.0.1", 8000)
    assert "--no-proxy-headers" in command and "--forwarded-allow-ips" not in command
    settings.TRUSTED_PROXIES = ["10.0.0.5", "10.0.0.6"]
    command = uvicorn_command("127.0.0.1", 8000)
    assert command[command.index("--forwarded-allow-ips") + 1] == "10.0.0.5,10.0.0.6"


@pytest.mark.slow
@LIVE_DB
def test_a_forged_x_forwarded_for_does_not_reset_the_pairing_limit_shared_by_two_processes(limited_live_app):
    app = limited_live_app
    live = HttpClient(app.base_url)
    # Two failures counted by this process and one by the live server: the same address's limit (3).
    for _ in range(2):
        assert pair("AAAAA-BBBBB", REMOTE_ADDR="127.0.0.1").status_code == 400
    assert live.post_json(f"{API}/agent/pair", {"code": "AAAAA-BBBBB"}).status == 400
    refused = live.post_json(f"{API}/agent/pair", {"code": "AAAAA-BBBBB"})
    assert refused.status == 429 and int(header(refused, "Retry-After")) > 0, refused
    assert "Too many failed pairing attempts" in refused.json()["detail"]
    # A forged client address changes nothing: uvicorn trusts no proxy.
    for forged in ("203.0.113.7", "203.0.113.8, 198.51.100.1"):
        answer = live.request("POST", f"{API}/agent/pair", json.dumps({"code": "AAAAA-BBBBB"}).encode(),
                              {"Content-Type": "application/json", "X-Forwarded-For": forged,
                               "Forwarded": f"for={forged.split(',')[0]}"})
        assert answer.status == 429, answer
    # Another address is counted apart.
    assert pair("AAAAA-BBBBB", REMOTE_ADDR="192.0.2.44").status_code == 400


# --------------------------------------------------------------------------- password attempts


@pytest.mark.slow
@LIVE_DB
def test_password_guessing_on_one_account_is_limited_across_processes_and_entry_points(limited_live_app):
    app = limited_live_app
    for name in ("carol", "dave"):  # signed up on the live server: it hashes as it checks
        signup = HttpClient(app.base_url)
        assert signup.get("/accounts/signup/").status == 200
        assert signup.post_form("/accounts/signup/", {"username": name, "password1": PASSWORD, "password2": PASSWORD,
                                                      "csrfmiddlewaretoken": signup.cookie("csrftoken")}).status == 200
        assert signup.cookie("sessionid")
    live = HttpClient(app.base_url)
    # This process: one wrong password on the log-in page, one on the token endpoint.
    wrong = csrf_post(browser(), reverse("login"), data={"username": "carol", "password": "guess 1"})
    assert wrong.status_code == 200 and wrong.context["form"].errors
    assert api_token("carol", "guess 2").status_code == 400
    # The live server: the third wrong guess is answered, the fourth refused, even the right password.
    assert live.post_json(f"{API}/token", {"username": "carol", "password": "guess 3"}).status == 400
    refused = live.post_json(f"{API}/token", {"username": "Carol ", "password": "guess 4"})
    assert refused.status == 429 and int(header(refused, "Retry-After")) > 0, refused
    assert "Too many failed log-in attempts for this account" in refused.json()["detail"]
    assert live.post_json(f"{API}/token", {"username": "carol", "password": PASSWORD}).status == 429
    page = live.get("/accounts/login/")
    form = live.post_form("/accounts/login/", {"username": "carol", "password": PASSWORD,
                                               "csrfmiddlewaretoken": live.cookie("csrftoken")})
    assert page.status == 200 and form.status == 429 and not live.cookie("sessionid")
    assert b"Too many failed log-in attempts" in form.body
    # Another account from the same address is not locked.
    assert live.post_json(f"{API}/token", {"username": "dave", "password": PASSWORD}).status == 200


@pytest.mark.django_db
def test_password_guessing_from_one_address_over_many_accounts_is_limited(settings, no_rate_limits_counted):
    settings.LOGIN_FAILURES_PER_ADDRESS = 3
    for name in ("erin", "frank", "grace"):
        get_user_model().objects.create_user(name, password=PASSWORD)
    for name in ("erin", "frank", "grace"):
        assert api_token(name, "wrong", REMOTE_ADDR="198.51.100.9").status_code == 400
    refused = api_token("erin", PASSWORD, REMOTE_ADDR="198.51.100.9")
    assert refused.status_code == 429 and "from this address" in refused.json()["detail"]
    page = csrf_post(browser(), reverse("login"), data={"username": "frank", "password": PASSWORD},
                     REMOTE_ADDR="198.51.100.9")
    assert page.status_code == 429 and "_auth_user_id" not in page.client.session
    assert "Too many failed log-in attempts from this address" in page.content.decode()
    # Another address logs in; successes are given back, so they never lock anyone out.
    for _ in range(5):
        assert api_token("erin", PASSWORD, REMOTE_ADDR="198.51.100.10").status_code == 200


# --------------------------------------------------------------------------- API tokens


@pytest.mark.django_db
def test_a_leaked_token_stops_working_once_its_user_rotates_it_on_the_page(owner, no_rate_limits_counted):
    leaked = api_token("alice").json()["token"]
    assert works(leaked)
    client = browser(owner)
    page = client.get(reverse("api_token"))
    assert page.status_code == 200 and "You have an API token" in page.content.decode()
    answer = csrf_post(client, reverse("api_token"))
    assert answer.status_code == 200 and answer["Cache-Control"] == "no-store"
    new = answer.context["new_key"]
    assert new and new != leaked and new in answer.content.decode()
    assert not works(leaked) and works(new)
    assert api_token("alice").json()["token"] == new


@pytest.mark.django_db
def test_a_leaked_token_stops_working_once_its_user_rotates_it_through_the_api(owner, no_rate_limits_counted):
    leaked = api_token("alice").json()["token"]
    answer = token_api(leaked).post(f"{API}/token/rotate")
    assert answer.status_code == 200
    new = answer.json()["token"]
    assert new != leaked and not works(leaked) and works(new)
    assert token_api(leaked).post(f"{API}/token/rotate").status_code == 401


@pytest.mark.django_db
def test_a_leaked_token_stops_working_once_its_user_changes_the_password(owner, no_rate_limits_counted):
    leaked = api_token("alice").json()["token"]
    changed = csrf_post(browser(owner), reverse("password_change"), data={
        "old_password": PASSWORD, "new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD})
    assert changed.status_code == 302
    assert not works(leaked)
    fresh = api_token("alice", NEW_PASSWORD).json()["token"]
    assert fresh != leaked and works(fresh)


@pytest.mark.django_db
def test_a_log_in_that_upgrades_the_password_hash_keeps_the_token(owner, settings, no_rate_limits_counted):
    token = api_token("alice").json()["token"]
    # A stronger hasher first: the next log-in re-hashes the password (a save, not a change).
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher",
                                 "django.contrib.auth.hashers.MD5PasswordHasher"]
    old_hash = get_user_model().objects.get(pk=owner.pk).password
    assert csrf_post(browser(), reverse("login"), data={"username": "alice", "password": PASSWORD}).status_code == 302
    assert get_user_model().objects.get(pk=owner.pk).password != old_hash
    assert works(token)


@pytest.mark.django_db
def test_a_stranger_cannot_rotate_someone_elses_token(owner, stranger, no_rate_limits_counted):
    mine = api_token("alice").json()["token"]
    theirs = api_token("bob").json()["token"]
    # The stranger's own rotation, by page and API, touches only their token.
    assert csrf_post(browser(stranger), reverse("api_token")).status_code == 200
    assert works(mine)
    assert token_api(api_token("bob").json()["token"]).post(f"{API}/token/rotate").status_code == 200
    assert works(mine) and not works(theirs)
    # A cross-site form post with the owner's session but no CSRF token is refused.
    forged = browser(owner).post(reverse("api_token"))
    assert forged.status_code == 403 and works(mine)
    # Without credentials, nothing.
    assert APIClient().post(f"{API}/token/rotate").status_code == 401
    assert Client().post(reverse("api_token")).status_code == 302 and works(mine)


# --------------------------------------------------------------------------- secrets in logs


def test_the_agents_log_filter_redacts_tokens_codes_and_authorization_headers(caplog):
    from devices.agent.client import protect_logs

    caplog.set_level(logging.DEBUG)
    protect_logs("ABCDE-FGHJK", "s3cr3t-token-value")
    logging.getLogger("websockets.client").debug("> %s: %s", "Authorization", "Token another-token-xyz")
    logging.getLogger("netadapt.agent").info("pairing with %s gave %s", "ABCDE-FGHJK", "s3cr3t-token-value")
    text = caplog.text
    assert "another-token-xyz" not in text and "ABCDE-FGHJK" not in text and "s3cr3t-token-value" not in text
    assert "Authorization: [redacted]" in text and "pairing with [redacted] gave [redacted]" in text


@pytest.mark.slow
@LIVE_DB
def test_the_verbose_agent_log_never_shows_its_token_or_code(live_app, tmp_path):
    app = live_app
    owner = get_user_model().objects.create_user("alice")  # in the live servers' database
    device, code = add_device(owner, "logged board")
    state = tmp_path / "agent-state.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env["PYTHONUNBUFFERED"] = "1"
    agent = Process("agent", [sys.executable, "-m", "devices.agent", "--server", app.base_url, "--state",
                              str(state), "--max-backoff", "2", "-v", "--pair", code], env, app.logs)
    try:
        from devices.models import Device

        wait_until(lambda: Device.objects.get(pk=device).status == "online", "the agent to come online", app, 120)
        # It has said hello over the websocket and logged it at debug level: the handshake included.
        wait_until(lambda: "< HTTP/1.1 101" in agent.log.read_text(errors="replace"), "the handshake in the log",
                   app, 60)
    finally:
        agent.stop(grace=10)
    log = agent.log.read_text(errors="replace")
    token = json.loads(state.read_text())["token"]
    assert token and token not in log
    assert code not in log and code.replace("-", "") not in log
    assert "> GET /ws/agent/" in log and "Authorization: [redacted]" in log  # -v logged the handshake


# --------------------------------------------------------------------------- cancelling measurements


def _queued_measurement(api: APIClient, device: int) -> dict:
    model = upload_model(api)
    answer = api.post(f"{API}/devices/{device}/measure", {"model": model}, format="json")
    assert answer.status_code == 202, answer.content
    assert answer.json()["status"] == "queued"
    return answer.json()


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.django_db(transaction=True)
def test_a_cancelled_measurement_is_never_handed_to_the_agent(owner, media):
    from webapp.asgi import application

    api = user_api(owner)
    device, code = add_device(owner, "cancel board")
    token = pair(code).json()["token"]
    first = _queued_measurement(api, device)
    # The page: its cancel button, posted with CSRF as a browser does.
    client = browser(owner)
    page = client.get(reverse("measurement_detail", args=[first["id"]]))
    assert 'id="measurement-cancel"' in page.content.decode()
    answer = csrf_post(client, reverse("measurement_detail", args=[first["id"]]),
                       reverse("measurement_cancel", args=[first["id"]]))
    assert answer.status_code == 302
    shown = client.get(reverse("measurement_detail", args=[first["id"]])).content.decode()
    assert "Cancelled" in shown and 'id="measurement-cancel"' not in shown
    assert MeasurementRequest.objects.get(pk=first["id"]).status == "cancelled"
    again = csrf_post(client, reverse("measurement_detail", args=[first["id"]]),
                      reverse("measurement_cancel", args=[first["id"]]))
    assert again.status_code == 302 and MeasurementRequest.objects.get(pk=first["id"]).status == "cancelled"
    second = api.post(f"{API}/devices/{device}/measure", {"model": _model_id(api)}, format="json").json()

    async def offered() -> dict:
        socket = WebsocketCommunicator(application, "/ws/agent/", headers=[
            (b"origin", b"http://localhost"), (b"host", b"localhost"), (b"authorization", f"Token {token}".encode())])
        connected, _ = await socket.connect(timeout=10)
        assert connected
        await socket.send_json_to({"type": "hello", "protocol": 1, "agent": "test", "runtime": "onnxruntime",
                                   "runtime_version": "1.0", "facts": {}})
        assert (await socket.receive_json_from(timeout=10))["type"] == "welcome"
        message = await socket.receive_json_from(timeout=30)
        await socket.disconnect()
        return message

    # The older request would come first (oldest first): the agent is handed the newer one.
    message = async_to_sync(offered)()
    assert message["type"] == "request" and message["request"] == second["id"], message
    assert MeasurementRequest.objects.get(pk=first["id"]).status == "cancelled"


def _model_id(api: APIClient) -> int:
    return api.get(f"{API}/models").json()[0]["id"]


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.django_db(transaction=True)  # the request reaches the device's queue when it commits
def test_a_cancelled_measurement_is_never_run_by_the_device_worker(owner, stranger, media, workers):
    from devices.tasks import measure_request

    call_command("bootstrap", stdout=io.StringIO())  # the shared CPU, as `make run` creates it
    system = next(d for d in user_api(owner).get(f"{API}/devices").json() if d["kind"] == "local")
    api = user_api(owner)
    measurement = _queued_measurement(api, system["id"])
    assert workers.requests == [measurement["id"]]  # dispatched to the device's queue
    (name,) = MeasurementRequest.objects.get(pk=measurement["id"]).network_files
    assert (media / name).is_file()  # the network's file, exported when it was asked for
    # A stranger neither sees nor cancels it.
    assert user_api(stranger).post(f"{API}/measurements/{measurement['id']}/cancel").status_code == 404
    assert browser(stranger).get(reverse("measurement_detail", args=[measurement["id"]])).status_code == 404
    assert csrf_post(browser(stranger), reverse("device_list"),
                     reverse("measurement_cancel", args=[measurement["id"]])).status_code == 404
    assert MeasurementRequest.objects.get(pk=measurement["id"]).status == "queued"

    answer = api.post(f"{API}/measurements/{measurement['id']}/cancel")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled", answer.content
    assert api.post(f"{API}/measurements/{measurement['id']}/cancel").status_code == 409
    assert not (media / name).parent.exists()  # a cancelled request's files go
    # The worker's message arrives after: it claims nothing and measures nothing.
    assert measure_request(workers.requests.pop()) is None
    row = MeasurementRequest.objects.get(pk=measurement["id"])
    assert (row.status, row.results, row.started_at, row.attempts) == ("cancelled", [], None, 0)


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.django_db(transaction=True)
def test_cancelling_a_jobs_measurement_is_refused_with_the_way_to_cancel_the_job(owner, media, workers):
    from adaptation import tasks

    call_command("bootstrap", stdout=io.StringIO())
    api = user_api(owner)
    device, code = add_device(owner, "job board")
    assert pair(code).status_code == 200
    dataset = next(d for d in api.get(f"{API}/datasets").json() if d["builtin_name"] == "digits")
    answer = api.post(f"{API}/jobs", {
        "model": upload_model(api), "dataset": dataset["id"], "device": device, "metric": "latency",
        "budget_mode": "percent", "budget": 90, "initial_reduction": 0.05, "decay": 0.9, "short_term_steps": 1,
        "long_term_epochs": 0, "holdout_size": 0.15, "max_iterations": 1}, format="json")
    assert answer.status_code == 201, answer.content
    job = answer.json()["id"]
    tasks.run_job(job)  # it opens its measurements on the agent device and waits for them
    measurement = MeasurementRequest.objects.filter(job_id=job, status="queued").first()
    assert measurement is not None

    refused = api.post(f"{API}/measurements/{measurement.pk}/cancel")
    assert refused.status_code == 409 and "cancel the job instead" in refused.json()["detail"]
    page = browser(owner).get(reverse("measurement_detail", args=[measurement.pk])).content.decode()
    assert 'id="measurement-cancel"' not in page and reverse("job_detail", args=[job]) in page
    assert MeasurementRequest.objects.get(pk=measurement.pk).status == "queued"


@pytest.mark.django_db
def test_waiting_for_a_window_boundary_does_not_reset_the_count(no_rate_limits_counted):
    from webapp.lib.ratelimit import Limit, attempt, succeeded

    limit = Limit("probe-address", 3, 600)  # explicit clock readings: no waiting
    counts = [(limit, "192.0.2.1")]
    boundary = 1_000 * 600.0
    assert attempt(counts, boundary - 2) is None and attempt(counts, boundary - 1) is None
    assert attempt(counts, boundary + 1) is None  # the next window: the two before still count
    refused = attempt(counts, boundary + 2)
    assert refused is not None and refused.retry_after == 598  # when the older window drops out
    assert attempt(counts, boundary + 4) is not None
    assert attempt(counts, boundary + 600) is None  # only the one attempt of +1 is a window old
    succeeded(counts, boundary + 600)  # it succeeded: given back
    assert attempt(counts, boundary + 601) is None and attempt(counts, boundary + 602) is None
    assert attempt(counts, boundary + 603) is not None
    assert attempt([(limit, "192.0.2.2")], boundary + 2) is None  # another address


def test_the_api_schema_documents_rotation_cancelling_and_the_rate_limit():
    schema = json.loads(APIClient().get(f"{API}/schema?format=json").content)
    assert "429" in schema["paths"]["/api/v1/token"]["post"]["responses"]
    assert set(schema["paths"]["/api/v1/token/rotate"]) == {"post"}
    assert set(schema["paths"]["/api/v1/measurements/{id}/cancel"]["post"]["responses"]) >= {"200", "404", "409"}
