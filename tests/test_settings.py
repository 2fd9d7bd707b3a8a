"""Settings: environment helpers fail loudly; embedded and production stacks resolve from env."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, connections

from webapp.settings import env_bool, env_int, env_list, env_str

REPO = Path(__file__).resolve().parents[1]
SERVICE_VARIABLES = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE")

_PRINT_SETTINGS = """
import json
import webapp.settings as s
print(json.dumps({
    "engine": s.DATABASES["default"]["ENGINE"],
    "database": str(s.DATABASES["default"]["NAME"]),
    "host": s.DATABASES["default"].get("HOST", ""),
    "broker": s.CELERY_BROKER_URL,
    "transport": getattr(s, "CELERY_BROKER_TRANSPORT", None),
    "backend": s.CELERY_RESULT_BACKEND,
    "transport_options": s.CELERY_BROKER_TRANSPORT_OPTIONS,
    "channel_layer": s.CHANNEL_LAYERS["default"]["BACKEND"],
    "debug": s.DEBUG,
}))
"""


def load_settings(tmp_path, **env):
    """Import webapp.settings in a fresh interpreter with exactly these service variables."""
    clean = {k: v for k, v in os.environ.items() if k not in SERVICE_VARIABLES}
    clean.update({"PYTHONPATH": str(REPO), "NETADAPT_DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run([sys.executable, "-c", _PRINT_SETTINGS], cwd=REPO, env=clean,
                          capture_output=True, text=True, timeout=60)


def resolved(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_reads_booleans(monkeypatch):
    for value, expected in [("1", True), ("TRUE", True), ("yes", True), ("off", False), ("0", False)]:
        monkeypatch.setenv("NETADAPT_TEST_FLAG", value)
        assert env_bool("NETADAPT_TEST_FLAG", not expected) is expected


def test_it_uses_the_default_for_unset_or_empty_variables(monkeypatch):
    monkeypatch.delenv("NETADAPT_TEST_VALUE", raising=False)
    assert env_bool("NETADAPT_TEST_VALUE", True) is True
    assert env_int("NETADAPT_TEST_VALUE", 7) == 7
    monkeypatch.setenv("NETADAPT_TEST_VALUE", "")
    assert env_str("NETADAPT_TEST_VALUE", "fallback") == "fallback"
    assert env_list("NETADAPT_TEST_VALUE", ["a"]) == ["a"]


def test_it_rejects_a_bad_boolean_naming_the_variable(monkeypatch):
    monkeypatch.setenv("NETADAPT_TEST_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="NETADAPT_TEST_FLAG='maybe'"):
        env_bool("NETADAPT_TEST_FLAG", False)


def test_it_rejects_a_bad_integer_naming_the_variable(monkeypatch):
    monkeypatch.setenv("NETADAPT_TEST_INT", "12s")
    with pytest.raises(ImproperlyConfigured, match="NETADAPT_TEST_INT='12s' is not an integer"):
        env_int("NETADAPT_TEST_INT", 1)
    monkeypatch.setenv("NETADAPT_TEST_INT", "0")
    with pytest.raises(ImproperlyConfigured, match="NETADAPT_TEST_INT=0 must be at least 1"):
        env_int("NETADAPT_TEST_INT", 1, minimum=1)


def test_it_splits_lists(monkeypatch):
    monkeypatch.setenv("ALLOWED_HOSTS_TEST", " a.example, b.example,,")
    assert env_list("ALLOWED_HOSTS_TEST", []) == ["a.example", "b.example"]


@pytest.mark.django_db
def test_it_turns_on_wal_for_sqlite(tmp_path):
    if connection.vendor != "sqlite":
        pytest.skip("the embedded (SQLite) settings are not in use")
    default = connections["default"]
    settings_dict = copy.deepcopy(default.settings_dict)
    settings_dict["NAME"] = str(tmp_path / "wal.sqlite3")  # the test database lives in memory
    probe = type(default)(settings_dict, alias="wal_probe")
    try:
        with probe.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode")
            assert cursor.fetchone()[0] == "wal"
            cursor.execute("PRAGMA synchronous")
            assert cursor.fetchone()[0] == 1  # NORMAL
        assert probe.transaction_mode == "IMMEDIATE"
    finally:
        probe.close()


def test_it_configures_celery_for_long_jobs():
    from webapp.celery import app as celery_app

    conf = celery_app.conf
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is True
    assert conf.task_time_limit == settings.CELERY_TASK_TIME_LIMIT
    assert conf.task_soft_time_limit < conf.task_time_limit


def test_it_defaults_to_the_embedded_stack(tmp_path):
    stack = resolved(load_settings(tmp_path))
    data = tmp_path / "data"
    assert stack["engine"] == "django.db.backends.sqlite3"
    assert stack["database"] == str(data / "db.sqlite3")
    assert stack["broker"] == "filesystem://"
    assert stack["transport"] == "webapp.broker:Transport"  # kombu's, made atomic (test_broker)
    assert stack["backend"] == "django-db"
    assert stack["channel_layer"] == "channels.layers.InMemoryChannelLayer"
    assert stack["debug"] is False
    options = stack["transport_options"]
    assert options["polling_interval"] == 0.1
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        assert Path(options[key]).is_dir() and Path(options[key]).is_relative_to(data), key


def test_it_picks_postgresql_and_redis_from_the_environment(tmp_path):
    stack = resolved(load_settings(
        tmp_path, DATABASE_URL="postgres://studio:secret@db.example:5432/netadapt",
        REDIS_URL="redis://cache.example:6379/0", SECRET_KEY="not-a-real-key"))
    assert stack["engine"] == "django.db.backends.postgresql"
    assert (stack["database"], stack["host"]) == ("netadapt", "db.example")
    assert stack["broker"] == stack["backend"] == "redis://cache.example:6379/0"
    assert stack["transport"] is None
    assert stack["channel_layer"] == "channels_redis.core.RedisChannelLayer"
    assert stack["debug"] is False
    assert stack["transport_options"]["visibility_timeout"] > settings.CELERY_TASK_TIME_LIMIT
    assert not (tmp_path / "data" / "broker").exists()


def test_it_requires_a_secret_key_in_production_mode(tmp_path):
    result = load_settings(tmp_path, DATABASE_URL="postgres://studio:secret@db.example:5432/netadapt",
                           REDIS_URL="redis://cache.example:6379/0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr
    assert not (tmp_path / "data" / "secret_key").exists()


def test_debug_is_on_only_when_asked_for(tmp_path):
    assert resolved(load_settings(tmp_path, DEBUG="1"))["debug"] is True
    assert resolved(load_settings(tmp_path, DEBUG="0"))["debug"] is False


def test_it_stops_on_a_bad_debug_value(tmp_path):
    result = load_settings(tmp_path, DEBUG="sometimes")
    assert result.returncode != 0
    assert "DEBUG='sometimes' is not a boolean" in result.stderr


def test_it_routes_websockets_through_authentication_and_an_origin_check():
    from channels.routing import ProtocolTypeRouter

    from webapp.asgi import application
    from webapp.lib.origins import SameOriginValidator

    assert isinstance(application, ProtocolTypeRouter)
    assert set(application.application_mapping) == {"http", "websocket"}
    assert isinstance(application.application_mapping["websocket"], SameOriginValidator)


@pytest.mark.services
def test_it_reaches_redis_as_broker_and_channel_layer():
    if not settings.REDIS_URL:
        pytest.skip("set REDIS_URL=redis://... to run against Redis")
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from webapp.celery import app as celery_app

    with celery_app.connection_for_write() as broker:
        broker.ensure_connection(max_retries=1)
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()
    async_to_sync(layer.send)(channel, {"type": "job.iteration", "seq": 1})
    assert async_to_sync(layer.receive)(channel) == {"type": "job.iteration", "seq": 1}


def test_the_code_reads_each_setting_plainly_where_settings_py_defines_it():
    """``getattr(settings, "X", default)`` repeats a default settings.py already sets (or hides a
    setting it never defines): every setting the apps read is read as ``settings.X``, and exists."""
    import ast

    repo = Path(__file__).resolve().parents[1]
    fallbacks, undefined = [], set()
    for path in sorted(p for package in ("adaptation", "devices", "webapp") for p in (repo / package).rglob("*.py")):
        if "migrations" in path.parts or "node_modules" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" and node.args
                    and getattr(node.args[0], "id", "") == "settings"):
                fallbacks.append(f"{path.relative_to(repo)}:{node.lineno}")
            if (isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "settings"
                    and node.attr.isupper() and not hasattr(settings, node.attr)):
                undefined.add(node.attr)
    assert fallbacks == [] and undefined == set()
