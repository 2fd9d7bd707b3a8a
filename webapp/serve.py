"""``python -m webapp.serve``: run the whole application on this machine (what ``make run`` does).

Migrates, creates the shared CPU device and the built-in datasets, then starts as child processes
uvicorn, one Celery worker for jobs and proposals (with its embedded beat for the stale-job
sweep), the checking worker of uploads (its queue ``checking``: every upload's check runs there,
in a child process under the memory and time ceilings of ``adaptation.checking``, one at a time)
and the measuring worker of this server's CPU (its queue ``device.<id>``, one measurement at a
time), prints the URL, and on Ctrl+C (or SIGTERM) stops them all and waits for them.

uvicorn is told which proxies to believe (``uvicorn_command``): ``NETADAPT_TRUSTED_PROXIES``, none
by default. Left to itself it would believe ``X-Forwarded-For`` from 127.0.0.1, so anyone who
reaches it over loopback could choose the client address the rate limits count. With
``NETADAPT_TLS_CERT`` and ``NETADAPT_TLS_KEY`` it serves HTTPS only (phones on a LAN get a secure
page); a certificate that cannot be loaded stops it before anything starts.
"""
from __future__ import annotations

import argparse
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import django
from django.conf import settings
from django.core.management import call_command

ROOT = Path(__file__).resolve().parent.parent


def _stop(processes: list[subprocess.Popen], grace: float = 20.0) -> int:
    """Ask every child to stop, wait ``grace`` seconds, then kill what is left."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return max((abs(p.returncode or 0) for p in processes), default=0)


def uvicorn_command(host: str, port: int, *extra: str) -> list[str]:
    """The web server's command line, with the trusted proxies spelled out: ``--forwarded-allow-ips``
    from ``TRUSTED_PROXIES``, or ``--no-proxy-headers`` when there are none (uvicorn's default,
    and its ``FORWARDED_ALLOW_IPS`` variable, would trust 127.0.0.1)."""
    proxies = [address for address in settings.TRUSTED_PROXIES if address]
    trust = (["--proxy-headers", "--forwarded-allow-ips", ",".join(proxies)] if proxies
             else ["--no-proxy-headers"])
    tls = (["--ssl-certfile", settings.TLS_CERT_FILE, "--ssl-keyfile", settings.TLS_KEY_FILE]
           if settings.TLS_CERT_FILE else [])
    return [sys.executable, "-m", "uvicorn", "webapp.asgi:application", "--host", host, "--port", str(port),
            *trust, *tls, *extra]


def check_tls_files() -> str | None:
    """Why the configured certificate and key cannot serve HTTPS (None when they can, or when
    none is configured): said in one line before any process starts."""
    if not settings.TLS_CERT_FILE:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(settings.TLS_CERT_FILE, settings.TLS_KEY_FILE)
    except (OSError, ssl.SSLError) as error:
        return (f"NETADAPT_TLS_CERT / NETADAPT_TLS_KEY ({settings.TLS_CERT_FILE}, {settings.TLS_KEY_FILE}) "
                f"cannot serve HTTPS: {error}")
    return None


def checking_worker_command(name: str = "checking@%h", *extra: str) -> list[str]:
    """The checking worker's command line: the ``checking`` queue only, one check at a time (each
    runs in its own bounded child process, so the worker itself stays small)."""
    return [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--loglevel", "INFO",
            "-Q", settings.CHECKING_QUEUE, "-n", name, "--concurrency", "1", *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("NETADAPT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("NETADAPT_PORT", "8000")))
    parser.add_argument("--concurrency", type=int, default=1, help="Celery worker processes")
    args = parser.parse_args(argv)
    django.setup()
    problem = check_tls_files()
    if problem:
        print(problem, file=sys.stderr)
        return 2  # one process for the set-up commands: each import of the app loads torch
    call_command("migrate", verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    call_command("bootstrap")
    # The app registry is ready only after django.setup() above.
    from devices.models import Device
    from devices.requests import device_queue

    system_device = Device.objects.get(owner=None, kind="local")
    celery = [sys.executable, "-m", "celery", "-A", "webapp", "worker", "--loglevel", "INFO"]
    # start_new_session: Ctrl+C reaches only this launcher, which stops the children.
    worker = subprocess.Popen(
        [*celery, "--beat", "--schedule", settings.CELERY_BEAT_SCHEDULE_FILENAME, "-Q", "celery",
         "-n", "jobs@%h", "--concurrency", str(args.concurrency)], cwd=ROOT, start_new_session=True)
    measurer = subprocess.Popen(
        [*celery, "-Q", device_queue(system_device), "-n", f"{device_queue(system_device)}@%h",
         "--concurrency", "1"], cwd=ROOT, start_new_session=True)
    checker = subprocess.Popen(checking_worker_command(), cwd=ROOT, start_new_session=True)
    web = subprocess.Popen(uvicorn_command(args.host, args.port, "--log-level", "info"), cwd=ROOT,
                           start_new_session=True)
    children = [web, worker, checker, measurer]
    scheme = "https" if settings.TLS_CERT_FILE else "http"
    print(f"\nNetAdapt Studio is running at {scheme}://{args.host}:{args.port}/ "
          "(Ctrl+C stops the web server and the workers)\n", flush=True)
    stop_requested = False

    def request_stop(signum, frame) -> None:  # noqa: ARG001
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop_requested and all(p.poll() is None for p in children):
        time.sleep(0.2)  # waiting for a signal or a child's exit; nothing to synchronise with
    crashed = [p for p in children if p.poll() is not None]
    code = _stop(children)
    if crashed and not stop_requested:
        print("a child process exited on its own; stopped the others", file=sys.stderr)
        return code or 1
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    raise SystemExit(main())
