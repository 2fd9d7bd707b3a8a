"""Real processes for the end-to-end tests: uvicorn and one Celery worker on a shared database.

``live_app(tmp_path, django_db_blocker)`` (a context manager, wrapped by the ``live_app``
fixture of conftest.py) gives a :class:`LiveApp`: uvicorn serving ``webapp.asgi:application``
on a free port of 127.0.0.1 with the checking worker of uploads (``webapp.serve``'s, queue
``checking``), and, once the test calls ``start_worker()``, a Celery worker for jobs. The
test starts the jobs' worker itself, so it can connect its clients while the job is still queued and
see every event arrive live.

The database is shared the way tests/test_worker.py shares it (that file keeps its own copy):

- Embedded mode: a fresh ``NETADAPT_DATA_DIR`` under tmp_path, a copy of the folder one
  ``manage.py migrate`` filled once per session (its SQLite database, broker and media
  folders), which the servers use; for the test's duration this process's ORM gets a second
  connection object pointed at that file.
- Production mode (``DATABASE_URL`` and ``REDIS_URL`` set): pytest-django's PostgreSQL test
  database (the test module marks itself ``django_db(transaction=True)``), whose name goes to
  the servers in ``DATABASE_URL``; Redis is shared as broker and channel layer, its Celery queues
  (jobs and checking) purged first.

DEBUG is off in both modes, so the static files are collected for WhiteNoise first (one
``manage.py collectstatic`` per session, copied into each test's data folder).

``manage.py bootstrap`` runs (in this process, against the shared database) before the web
server starts: the system device and the built-in digits dataset exist.
"""
from __future__ import annotations

import atexit
import http.cookiejar
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
PRODUCTION = bool(os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL"))
START_DEADLINE_S = 180   # uvicorn imports Django and the app on a loaded two-core machine
JOB_DEADLINE_S = 300     # a worker start (torch import) plus a tiny job, on the same machine
CHECK_DEADLINE_S = 240   # the checking worker's start plus a check (its child imports torch)
POLL_S = 0.1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Process:
    """A child in its own process group (so stopping it stops its children too), logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict, logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        self.terminated_at: float | None = None
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM to the leader, once (a worker's warm shutdown stops its pool itself)."""
        if self.terminated_at is None and self.alive():
            self.terminated_at = time.monotonic()
            self.process.terminate()

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the leader unless sent already, then SIGKILL to whatever is left in the
        group after it exits or after ``grace`` seconds."""
        self.terminate()
        started = self.terminated_at or time.monotonic()
        if self.alive():
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        stopped_in = time.monotonic() - started
        try:  # a pool child or anything else the leader left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait(timeout=60)
        with open(self.log, "a") as out:
            out.write(f"\n[e2e] {self.name} stopped {stopped_in:.1f} s after SIGTERM "
                      f"(code {self.process.returncode})\n")


@dataclass
class LiveApp:
    port: int
    env: dict
    media: Path
    logs: Path
    system_device: int  # the id of "This server's CPU", whose queue the worker serves
    web: Process | None = None
    worker: Process | None = None
    checker: Process | None = None
    processes: list[Process] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start_worker(self) -> Process:
        """One worker process for everything: jobs, proposals, and the measurements of this
        server's CPU (its device queue), taken in turn."""
        assert self.worker is None, "one worker per test"
        self.worker = self._start("worker", worker_command(f"e2e-{uuid.uuid4().hex[:8]}", self.system_device))
        return self.worker

    def start_checker(self) -> Process:
        """The checking worker, as ``make run`` starts it (the ``checking`` queue only)."""
        from webapp.serve import checking_worker_command

        self.checker = self._start("checker", checking_worker_command(
            f"checking-{uuid.uuid4().hex[:8]}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat"))
        return self.checker

    def start_web(self) -> Process:
        from webapp.serve import uvicorn_command  # what `make run` starts, trusted proxies included

        self.web = self._start("web", uvicorn_command(
            "127.0.0.1", self.port, "--log-level", "info",
            # A connection's task still running at shutdown is cancelled (and logged) after 10 s.
            "--timeout-graceful-shutdown", "10"))
        wait_until(lambda: _answers(self.url("/accounts/login/")), "the web server to answer", self,
                   START_DEADLINE_S)
        return self.web

    def _start(self, name: str, argv: list[str]) -> Process:
        process = Process(name, argv, self.env, self.logs)
        self.processes.append(process)
        return process

    def check_running(self, what: str = "") -> None:
        """Fail with the logs when a server process has exited."""
        for process in self.processes:
            assert process.alive(), \
                f"the {process.name} process exited (code {process.process.returncode}){what}:\n{self.logs_text()}"

    def logs_text(self) -> str:
        return "\n".join(f"----- {p.name} log (end) -----\n{p.tail()}" for p in self.processes)

    def kill(self) -> None:
        """Every process group killed at once, for the teardown of a test that is over: nothing
        it checked depends on how the servers exit, and a worker's warm shutdown cost 5-6 s a
        test (tests that check a graceful exit call ``stop``)."""
        for process in self.processes:
            process.stop(grace=0)

    def stop(self, grace: float = 30.0) -> None:
        """Every process told to stop at once, then each waited for (an idle worker's warm
        shutdown alone takes seconds on the filesystem broker): the slowest sets the pace."""
        for process in self.processes:
            process.terminate()
        deadline = time.monotonic() + grace
        for process in reversed(self.processes):  # the workers first, then the web server
            process.stop(grace=max(0.0, deadline - time.monotonic()))


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_until(condition, what: str, app: LiveApp | None = None, deadline_s: float = JOB_DEADLINE_S):
    """Poll ``condition()`` until it is truthy; fail at the deadline, or at once if a server dies."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result:
            return result
        if app is not None:
            app.check_running(f" while waiting for {what}")
        assert time.monotonic() < deadline, \
            f"timed out waiting for {what}" + (f":\n{app.logs_text()}" if app else "")
        time.sleep(POLL_S)


def worker_command(name: str, device_id: int) -> list[str]:
    """``celery worker`` (one process) on the jobs' queue and the queue of local device ``device_id``."""
    from devices.requests import device_queue

    queues = f"celery,{device_queue(device_id)}"
    return [sys.executable, "-m", "celery", "-A", "webapp", "worker", "-c", "1", "--pool", "prefork",
            "-Q", queues, "-n", f"{name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "info"]


#: What one ``manage.py`` command made, once per test session: its data folder, by command.
_MADE_ONCE: dict[str, Path] = {}


def _made_once(command: str, *arguments: str) -> Path:
    """The data folder ``manage.py <command>`` filled, run once per session in a fresh one."""
    if command not in _MADE_ONCE:
        data_dir = Path(tempfile.mkdtemp(prefix=f"netadapt-{command}-"))
        atexit.register(shutil.rmtree, data_dir, True)
        env = {**os.environ, "NETADAPT_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "webapp.settings"}
        subprocess.run([sys.executable, "manage.py", command, *arguments, "--verbosity", "0"], cwd=REPO,
                       env=env, check=True, timeout=600)
        _MADE_ONCE[command] = data_dir
    return _MADE_ONCE[command]


def migrated_data_dir() -> Path:
    """A data folder that ``manage.py migrate`` filled (its SQLite database, the broker, media and
    static folders the settings make): each live test starts from a copy, the same schema without
    its seconds of migrating per test. migrate's last connection has closed, so a WAL database is
    checkpointed into its main file."""
    return _made_once("migrate")


def collected_static() -> Path:
    """What ``manage.py collectstatic`` gathers (as ``make run`` does)."""
    return _made_once("collectstatic", "--noinput") / "static"


@contextmanager
def live_database(tmp_path: Path, django_db_blocker):
    """(server environment, media folder), with this process's ORM on the servers' database."""
    from django.db import connections

    data_dir = tmp_path / "data"
    # The shortest lease settings allow: work of a killed worker is taken over within 15 s.
    env = {**os.environ, "NETADAPT_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "webapp.settings",
           "PYTHONUNBUFFERED": "1", "NETADAPT_JOB_LEASE_SECONDS": "15"}
    if PRODUCTION:
        from webapp.celery import app as celery_app

        url = urlsplit(os.environ["DATABASE_URL"])
        name = connections["default"].settings_dict["NAME"]
        env["DATABASE_URL"] = urlunsplit(url._replace(path=f"/{name}"))
        celery_app.control.purge()
        from django.conf import settings

        with celery_app.connection_for_write() as connection:  # checks left by an interrupted run
            connection.default_channel.queue_purge(settings.CHECKING_QUEUE)
        yield env, data_dir / "media"
        return
    # The whole folder migrate left (database, broker and media folders), as a first start makes it.
    shutil.copytree(migrated_data_dir(), data_dir)
    with django_db_blocker.unblock():
        session_connection = connections["default"]
        file_connection = session_connection.__class__(
            {**session_connection.settings_dict, "NAME": str(data_dir / "db.sqlite3")}, "default")
        connections["default"] = file_connection
        try:
            yield env, data_dir / "media"
        finally:
            file_connection.close()
            connections["default"] = session_connection


@contextmanager
def live_app(tmp_path: Path, django_db_blocker):
    from django.core.management import call_command

    from django.test import override_settings

    # This process opens requests on the servers' database as a job would: their networks' files
    # go where the servers read them.
    with live_database(tmp_path, django_db_blocker) as (env, media), override_settings(MEDIA_ROOT=media):
        call_command("bootstrap", stdout=io.StringIO())
        # DEBUG is off (in both modes): WhiteNoise serves only what is in STATIC_ROOT, as after
        # `make run`'s collectstatic.
        shutil.copytree(collected_static(), Path(env["NETADAPT_DATA_DIR"]) / "static", dirs_exist_ok=True)
        logs = tmp_path / "logs"
        logs.mkdir()
        from devices.models import Device

        app = LiveApp(port=free_port(), env=env, media=media, logs=logs,
                      system_device=Device.objects.get(owner=None, kind="local").pk)
        try:
            app.start_checker()  # starts while the web server does; uploads need it
            app.start_web()
            yield app
        finally:
            app.kill()


# --------------------------------------------------------------------------- an HTTP client


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


class HttpClient:
    """urllib with a cookie jar (sessions, CSRF) and, optionally, an API token."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.token: str | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> Response:
        headers = dict(headers or {})
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=120) as response:
                return Response(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, dict(error.headers), error.read())

    def get(self, path: str, **params) -> Response:
        return self.request("GET", path + (f"?{urlencode(params)}" if params else ""))

    def post_json(self, path: str, data: dict) -> Response:
        return self.request("POST", path, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def post_form(self, path: str, fields: dict) -> Response:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded"})

    def post_multipart(self, path: str, fields: dict, files: dict[str, tuple[str, bytes]]) -> Response:
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, (filename, content) in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                         f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        return self.request("POST", path, b"".join(parts),
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def checked(self, kind: str, object_id: int, app: LiveApp | None = None,
                deadline_s: float = CHECK_DEADLINE_S) -> dict:
        """``GET /api/v1/<kind>/<id>`` once the checking worker has given its verdict (status no
        longer ``checking``): polled until then, failing at the deadline or if a server dies."""
        def verdict():
            answer = self.get(f"/api/v1/{kind}/{object_id}")
            assert answer.status == 200, answer.body[:500]
            return answer.json() if answer.json()["status"] != "checking" else None

        return wait_until(verdict, f"the check of {kind} #{object_id}", app, deadline_s)

    def upload_checked(self, kind: str, fields: dict, files: dict, app: LiveApp | None = None) -> dict:
        """Upload through ``POST /api/v1/<kind>`` (answered 202, ``checking``), then the verdict."""
        answer = self.post_multipart(f"/api/v1/{kind}", fields, files)
        assert answer.status == 202, answer.body[:500]
        assert answer.json()["status"] == "checking", answer.json()
        return self.checked(kind, answer.json()["id"], app)

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)

    def log_in(self, username: str, password: str) -> None:
        """The login page's form, with its CSRF token: leaves a session cookie in the jar."""
        page = self.get("/accounts/login/")
        assert page.status == 200, page
        token = self.cookie("csrftoken")
        assert token, "the login page set no CSRF cookie"
        answer = self.post_form("/accounts/login/", {"username": username, "password": password,
                                                     "csrfmiddlewaretoken": token})
        assert answer.status == 200, answer.status
        assert self.cookie("sessionid"), "logging in set no session cookie"
