"""Django settings of NetAdapt Studio, driven by environment variables.

Two modes, chosen by the environment alone:

- **Embedded** (nothing set): everything under ``NETADAPT_DATA_DIR`` -- SQLite in WAL mode,
  a ``filesystem://`` Celery broker (kombu's, its files made atomic in ``webapp.broker``),
  results in the database, an in-memory channel layer. The ``SECRET_KEY`` is generated on the first
  start and kept in ``<data>/secret_key`` (mode 0600) unless the environment sets one.
- **Production** (``DATABASE_URL`` and ``REDIS_URL``): PostgreSQL, Redis as Celery broker,
  result backend and channel layer. ``SECRET_KEY`` is required.

``DEBUG`` is off in both unless ``DEBUG=1``: its error pages show settings, paths and code.

The helpers below read one variable each and raise ImproperlyConfigured naming the variable when
its value cannot be used, so a typo stops the process at start-up instead of misbehaving later.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from webapp.lib.isolation import add_static_headers

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def env_str(name: str, default: str | None = None) -> str | None:
    """The variable's value; ``default`` when it is unset or empty."""
    value = os.environ.get(name, "")
    return value if value != "" else default


def env_bool(name: str, default: bool) -> bool:
    """A boolean spelled 1/0, true/false, yes/no or on/off (any case)."""
    value = env_str(name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name}={value!r} is not a boolean: use one of {_TRUE + _FALSE}")


def env_int(name: str, default: int, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer, optionally at least ``minimum`` and at most ``maximum``."""
    value = env_str(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={number} must be at least {minimum}")
    if maximum is not None and number > maximum:
        raise ImproperlyConfigured(f"{name}={number} must be at most {maximum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    """A comma-separated list (blank items dropped)."""
    value = env_str(name)
    if value is None:
        return list(default)
    return [item.strip() for item in value.split(",") if item.strip()]


BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("NETADAPT_DATA_DIR", str(BASE_DIR / "data"))).resolve()
DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")


def stored_secret_key(path: Path) -> str:
    """The key kept in ``path``, generated there first if the file does not exist.

    The new key is written to a private temporary file (mode 0600) that is then hard-linked to
    ``path``: the link either creates ``path`` complete or fails because it exists, so processes
    starting together (uvicorn, the workers) all end up reading the same key.
    """
    if not path.exists():
        # Only on a first start: the settings module loads as little of Django as it can.
        from django.core.management.utils import get_random_secret_key

        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        temporary = Path(name)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(get_random_secret_key() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process was first: use its key
        finally:
            temporary.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise ImproperlyConfigured(f"{path} is empty: delete it to generate a new SECRET_KEY")
    return key


DEBUG = env_bool("DEBUG", default=False)
SECRET_KEY = env_str("SECRET_KEY")
if SECRET_KEY is None:
    if DATABASE_URL:
        raise ImproperlyConfigured("SECRET_KEY must be set when DATABASE_URL is (production mode)")
    SECRET_KEY = stored_secret_key(DATA_DIR / "secret_key")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# HTTPS served by ``python -m webapp.serve`` itself (uvicorn), e.g. on a LAN where phones need a
# secure page (README, "Phones over HTTPS"): a PEM certificate and its key, both or neither.
TLS_CERT_FILE = env_str("NETADAPT_TLS_CERT", "") or ""
TLS_KEY_FILE = env_str("NETADAPT_TLS_KEY", "") or ""
if bool(TLS_CERT_FILE) != bool(TLS_KEY_FILE):
    raise ImproperlyConfigured("NETADAPT_TLS_CERT and NETADAPT_TLS_KEY go together: set both (HTTPS) or neither")
# Plain http unless told otherwise: the embedded mode serves http://127.0.0.1:8000/, where an
# HTTPS redirect or HSTS would lock the browser out of the site. A server that speaks only HTTPS
# (a certificate above) marks its cookies secure unless told otherwise.
SECURE_COOKIES = env_bool("SECURE_COOKIES", default=bool(TLS_CERT_FILE))
BEHIND_TLS_PROXY = env_bool("NETADAPT_BEHIND_TLS_PROXY", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = SECURE_COOKIES
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if SECURE_COOKIES and BEHIND_TLS_PROXY:
    # The production TLS profile: the site is HTTPS only. HSTS covers this host alone; whether it
    # also covers sibling subdomains, or goes on the browsers' preload list, is a decision about
    # the whole domain that only its operator can make (off unless set; Django's deploy check
    # suggests both, hence the two silenced warnings when they are off).
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = env_int("NETADAPT_HSTS_SECONDS", 365 * 24 * 3600, minimum=1)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("NETADAPT_HSTS_INCLUDE_SUBDOMAINS", default=False)
    SECURE_HSTS_PRELOAD = env_bool("NETADAPT_HSTS_PRELOAD", default=False)
    SILENCED_SYSTEM_CHECKS = ([] if SECURE_HSTS_INCLUDE_SUBDOMAINS else ["security.W005"]) + (
        [] if SECURE_HSTS_PRELOAD else ["security.W021"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_results",
    "channels",
    "devices",
    "adaptation",
    "webapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "webapp.api_errors.APIErrorMiddleware",  # a JSON 500 for plain views under /api/
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"
ASGI_APPLICATION = "webapp.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --------------------------------------------------------------------------- database

if DATABASE_URL:
    import dj_database_url

    # conn_max_age 0: persistent connections are not safe under ASGI (one per request thread).
    DATABASES = {"default": dj_database_url.parse(
        DATABASE_URL, conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0), conn_health_checks=True)}
else:
    # WAL lets the web process read while the worker writes; IMMEDIATE takes the write lock at
    # BEGIN so two writers queue (up to `timeout` s) instead of failing with "database is locked".
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": DATA_DIR / "db.sqlite3",
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --------------------------------------------------------------------------- cache
# Shared by every process (rate limits): the database cache table (``migrate`` creates it) in
# the embedded mode, Redis in the production mode.

if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                          "LOCATION": REDIS_URL, "KEY_PREFIX": "netadapt"}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache",
                          "LOCATION": "netadapt_cache"}}

# --------------------------------------------------------------------------- files

MEDIA_ROOT = DATA_DIR / "media"  # uploads (models/, datasets/), job outputs (jobs/<id>/), measurements/
MEDIA_URL = "media/"
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # Browser libraries come from npm (package.json; `npm ci`), served straight from node_modules.
    ("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist"),
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Compressed but not hashed: the manifest variant fails wherever collectstatic has not run
    # (tests included), and the pages are few.
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Scripts carry the embedder policy the cross-origin-isolated phone page's workers need.
WHITENOISE_ADD_HEADERS_FUNCTION = add_static_headers
UPLOAD_MAX_BYTES = env_int("NETADAPT_UPLOAD_MAX_BYTES", 200 * 1024 * 1024, minimum=1)
# What an uploaded dataset may decode to, counted from image headers before a pixel is decoded:
# width x height of one image (at most Pillow's own bomb threshold), and of all its images together.
DATASET_IMAGE_MAX_PIXELS = env_int("NETADAPT_DATASET_IMAGE_MAX_PIXELS", 25_000_000, minimum=1,
                                   maximum=89_478_485)
DATASET_MAX_PIXELS = env_int("NETADAPT_DATASET_MAX_PIXELS", 1_000_000_000, minimum=1, maximum=10**11)
# What checking one upload in its child process may use (adaptation.checking): private writable
# memory (RLIMIT_DATA) in MB, and wall-clock seconds.
CHECK_MEMORY_MB = env_int("NETADAPT_CHECK_MEMORY_MB", 512, minimum=128, maximum=1 << 20)
CHECK_SECONDS = env_int("NETADAPT_CHECK_SECONDS", 300, minimum=5, maximum=24 * 3600)
# A model's check imports torch (about 0.7 GB of private writable memory before any work), so it
# has its own, larger ceiling; its time limit is CHECK_SECONDS too.
CHECK_MODEL_MEMORY_MB = env_int("NETADAPT_CHECK_MODEL_MEMORY_MB", 2048, minimum=1024, maximum=1 << 20)
# Look-up-table imports (devices.lut_io): the largest file accepted (a full MobileNetV2 grid of ~14k
# entries is ~4 MB) and the most entries it may hold (a NetAdapt run needs hundreds).
LUT_IMPORT_MAX_BYTES = 32 * 1024 * 1024
LUT_IMPORT_MAX_ENTRIES = 50_000
# Model files that pickle a whole nn.Module run arbitrary code when loaded: refused unless the
# operator explicitly allows them (DESIGN.md section 6).
NETADAPT_ALLOW_PICKLED_MODELS = env_bool("NETADAPT_ALLOW_PICKLED_MODELS", False)
# The limit handler goes first: it stops an oversize upload before the others store a byte of it.
FILE_UPLOAD_HANDLERS = [
    "webapp.lib.uploads.UploadLimitHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

# --------------------------------------------------------------------------- accounts

# Failed attempts allowed per window (and the window before it) to log in with a password (the
# page and /api/v1/token together) per account and per client address, and to pair an agent per
# client address (webapp.lib.ratelimit). Counted in the default cache, shared by every process.
RATE_LIMIT_WINDOW_SECONDS = env_int("NETADAPT_RATE_LIMIT_WINDOW_SECONDS", 15 * 60, minimum=1)
LOGIN_FAILURES_PER_ACCOUNT = env_int("NETADAPT_LOGIN_FAILURES_PER_ACCOUNT", 10, minimum=1)
LOGIN_FAILURES_PER_ADDRESS = env_int("NETADAPT_LOGIN_FAILURES_PER_ADDRESS", 30, minimum=1)
PAIR_FAILURES_PER_ADDRESS = env_int("NETADAPT_PAIR_FAILURES_PER_ADDRESS", 20, minimum=1)
# Proxies whose X-Forwarded-For / X-Forwarded-Proto uvicorn believes (``python -m webapp.serve``
# passes them as --forwarded-allow-ips); none by default, so REMOTE_ADDR is the peer's address.
TRUSTED_PROXIES = env_list("NETADAPT_TRUSTED_PROXIES", [])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# The model backend with the failed-attempt limits (webapp.lib.ratelimit).
AUTHENTICATION_BACKENDS = ["webapp.lib.ratelimit.RateLimitedModelBackend"]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --------------------------------------------------------------------------- API

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON bodies with limits (nesting, numbers, size); a JSON 500 for what no view expected.
    "DEFAULT_PARSER_CLASSES": ["webapp.api_errors.SafeJSONParser", "rest_framework.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "EXCEPTION_HANDLER": "webapp.api_errors.handle_exception",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "NetAdapt Studio API",
    "DESCRIPTION": "Adapt trained CNNs to a device's measured latency with NetAdapt.",
    "VERSION": "0.1.0",
    # Fields named "kind" and "status" with different choices on several models: one enum name
    # each, instead of drf-spectacular's hashed names (and its warning).
    "ENUM_NAME_OVERRIDES": {
        # Models and datasets share their statuses (checking, ready, rejected): one enum.
        "UploadStatusEnum": "adaptation.models.CheckStatus",
        "DatasetKindEnum": "adaptation.models.Dataset.KIND_CHOICES",
        "JobKindEnum": "adaptation.models.Job.KIND_CHOICES",
        "JobStatusEnum": "adaptation.models.Job.Status",
        "DeviceKindEnum": "devices.models.Device.KIND_CHOICES",
        "DeviceStatusEnum": "devices.models.Device.Status",
        "MeasurementStatusEnum": "devices.models.MeasurementRequest.Status",
    },
}

# --------------------------------------------------------------------------- background work

BROKER_DIR = DATA_DIR / "broker"
if REDIS_URL:
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = REDIS_URL
else:
    CELERY_BROKER_URL = "filesystem://"
    # kombu's filesystem transport, with messages written and claimed atomically (see broker.py)
    CELERY_BROKER_TRANSPORT = "webapp.broker:Transport"
    CELERY_RESULT_BACKEND = "django-db"  # django_celery_results; chords work on it
CELERY_TASK_TIME_LIMIT = env_int("NETADAPT_TASK_TIME_LIMIT", 6 * 3600, minimum=60)
CELERY_TASK_SOFT_TIME_LIMIT = CELERY_TASK_TIME_LIMIT - 30
if REDIS_URL:
    # acks_late: an unacknowledged task is redelivered after the visibility timeout; keep it
    # above the time limit so a long job is not handed to a second worker while it runs.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
else:
    # The producer writes into data_folder_out and the worker reads data_folder_in: one folder.
    # Read messages are deleted (store_processed False); processed_folder is pinned all the same.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        "polling_interval": 0.1,
    }
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_TRACK_STARTED = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = TIME_ZONE
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Uploads are checked by their own worker (``-Q checking``), so they never wait behind jobs.
CHECKING_QUEUE = "checking"
CELERY_TASK_ROUTES = {"adaptation.tasks.check_model_upload": {"queue": CHECKING_QUEUE},
                      "adaptation.tasks.check_dataset_upload": {"queue": CHECKING_QUEUE}}

# --------------------------------------------------------------------------- live events

if REDIS_URL:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                  # redis-py's 5 s default socket timeout would end the 5 s BZPOPMIN
                                  # of every idle consumer with a TimeoutError (closing its websocket)
                                  "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]}}}
else:
    # In-memory: only the ASGI process's own consumers see it; the worker writes JobEvent rows
    # that the ASGI process relays (see DESIGN.md section 5).
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --------------------------------------------------------------------------- jobs
# A running job's lease: renewed every JOB_HEARTBEAT_SECONDS; another worker may take the job
# over once it is JOB_LEASE_SECONDS old. A sweep re-sends a queued job at most every
# JOB_REQUEUE_SECONDS; a job claimed JOB_MAX_ATTEMPTS times fails instead of looping.
JOB_LEASE_SECONDS = env_int("NETADAPT_JOB_LEASE_SECONDS", 60, minimum=15)
JOB_HEARTBEAT_SECONDS = env_int("NETADAPT_JOB_HEARTBEAT_SECONDS", 5, minimum=1)
if JOB_HEARTBEAT_SECONDS * 3 > JOB_LEASE_SECONDS:
    raise ImproperlyConfigured("NETADAPT_JOB_LEASE_SECONDS must be at least 3 heartbeats")
JOB_REQUEUE_SECONDS = env_int("NETADAPT_JOB_REQUEUE_SECONDS", 600, minimum=60)
JOB_MAX_ATTEMPTS = env_int("NETADAPT_JOB_MAX_ATTEMPTS", 5, minimum=1)
# A job waits this long for an agent device (offline phone...) to measure, then fails.
DEVICE_WAIT_SECONDS = env_int("NETADAPT_DEVICE_WAIT_SECONDS", 24 * 3600, minimum=60)
# The host lock (devices/measure/host_lock.py): a measurement of this host's CPU pauses the
# fine-tunes of every process on the host that shares this folder (same machine only). It waits at
# most HOST_LOCK_WAIT_SECONDS for running step chunks, and a disturbed measurement is retaken at
# most MEASURE_RETAKES times (devices/host.py).
HOST_LOCK_DIR = Path(env_str("NETADAPT_HOST_LOCK_DIR", str(DATA_DIR / "host-lock"))).resolve()
HOST_LOCK_WAIT_SECONDS = env_int("NETADAPT_HOST_LOCK_WAIT_SECONDS", 120, minimum=1)
MEASURE_RETAKES = env_int("NETADAPT_MEASURE_RETAKES", 2, minimum=0)
# Overrides of the timing protocol's fields (devices.measure.MeasureProtocol: warmup, rounds,
# runs_per_round...) for this server's CPU and agents; empty: the protocol's own defaults.
MEASURE_PROTOCOL: dict = {}
# An agent's websocket polls the database for its device's requests (and re-checks the token)
# every AGENT_POLL_SECONDS; 0: EVENT_POLL_SECONDS (below), else 1 s (devices/consumers.py).
AGENT_POLL_SECONDS = env_int("NETADAPT_AGENT_POLL_SECONDS", 0, minimum=0)
# How often a connected agent sends a heartbeat (told in its welcome; 15 s, the agent's own default).
AGENT_HEARTBEAT_SECONDS = env_int("NETADAPT_AGENT_HEARTBEAT_SECONDS", 15, minimum=1)
# Minutes a pairing code shown on "Add device" stays valid.
PAIRING_CODE_MINUTES = env_int("NETADAPT_PAIRING_CODE_MINUTES", 10, minimum=1)
# The address phones open this server at (e.g. http://192.168.1.20:8000), put in a phone's pairing
# QR code; empty: the address the owner's browser used (devices/pairing.py public_base_url).
PUBLIC_BASE_URL = env_str("NETADAPT_PUBLIC_URL", "") or ""
CELERY_BEAT_SCHEDULE = {"sweep-stale-jobs": {"task": "adaptation.tasks.sweep_stale_jobs",
                                             "schedule": 60.0}}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

# Job-page consumers poll the JobEvent table this often when the channel layer cannot carry
# events between processes (the in-memory layer); 0 turns polling off (Redis delivers them).
EVENT_POLL_SECONDS = 0.0 if REDIS_URL else 0.1

LOG_LEVEL = env_str("NETADAPT_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"NETADAPT_LOG_LEVEL={LOG_LEVEL!r} is not a logging level")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

# The folders exist before anything (SQLite, the filesystem broker, uploads) needs them.
_FOLDERS = [DATA_DIR, MEDIA_ROOT, STATIC_ROOT]  # WhiteNoise warns about a missing STATIC_ROOT
if not REDIS_URL:
    _FOLDERS += [BROKER_DIR / "queue", BROKER_DIR / "processed", BROKER_DIR / "control"]
for _folder in _FOLDERS:
    _folder.mkdir(parents=True, exist_ok=True)
