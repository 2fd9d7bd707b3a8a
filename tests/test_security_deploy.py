"""Django's deploy check is clean in the production TLS profile, and the embedded plain-http
default sets neither HSTS nor the HTTPS redirect."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client, override_settings
from django.urls import reverse

REPO = Path(__file__).resolve().parents[1]
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE",
                     "SECURE_COOKIES", "NETADAPT_BEHIND_TLS_PROXY")
TLS_PROFILE = {"DATABASE_URL": "postgres://studio:secret@db.example:5432/netadapt",
               "REDIS_URL": "redis://cache.example:6379/0", "SECURE_COOKIES": "1",
               "NETADAPT_BEHIND_TLS_PROXY": "1", "ALLOWED_HOSTS": "studio.example"}


def run(tmp_path, *command: str, **env: str) -> subprocess.CompletedProcess:
    """A command of this project in a fresh interpreter with exactly these service variables."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    clean.update({"PYTHONPATH": str(REPO), "NETADAPT_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run([sys.executable, *command], cwd=REPO, env=clean, capture_output=True,
                          text=True, timeout=300)


def test_the_deploy_check_is_clean_in_the_production_tls_profile(tmp_path):
    result = run(tmp_path, "manage.py", "check", "--deploy", "--fail-level", "WARNING",
                 SECRET_KEY=secrets.token_urlsafe(60), **TLS_PROFILE)
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout + result.stderr
    assert "WARNING" not in result.stderr


_PRINT = ("import webapp.settings as s; print(getattr(s, 'SECURE_SSL_REDIRECT', False), "
          "getattr(s, 'SECURE_HSTS_SECONDS', 0), s.SESSION_COOKIE_SECURE)")


def test_the_embedded_default_sets_no_hsts_and_no_redirect(tmp_path):
    result = run(tmp_path, "-c", _PRINT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "0", "False"]


def test_secure_cookies_alone_do_not_redirect(tmp_path):
    """Secure cookies without a TLS proxy in front (uvicorn with its own certificate...)."""
    result = run(tmp_path, "-c", _PRINT, SECURE_COOKIES="1")
    assert result.stdout.split() == ["False", "0", "True"], result.stderr


@pytest.mark.django_db
def test_an_embedded_page_answers_plain_http_without_hsts():
    response = Client().get(reverse("login"))
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.django_db
@override_settings(SECURE_SSL_REDIRECT=True, SECURE_HSTS_SECONDS=31536000,
                   SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"))
def test_in_the_tls_profile_http_redirects_and_https_carries_hsts():
    client = Client()  # its middleware reads the overridden settings
    plain = client.get(reverse("login"))
    assert plain.status_code == 301 and plain.headers["Location"].startswith("https://")
    secure = client.get(reverse("login"), HTTP_X_FORWARDED_PROTO="https")
    assert secure.status_code == 200
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("NETADAPT_DATASET_IMAGE_MAX_PIXELS", "100000000", "must be at most 89478485"),
    ("NETADAPT_DATASET_MAX_PIXELS", "0", "must be at least 1"),
    ("NETADAPT_CHECK_MEMORY_MB", "64", "must be at least 128"),
])
def test_upload_limits_out_of_range_stop_the_start(tmp_path, variable, value, problem):
    result = run(tmp_path, "-c", "import webapp.settings", **{variable: value})
    assert result.returncode != 0 and f"{variable}={value} {problem}" in result.stderr
