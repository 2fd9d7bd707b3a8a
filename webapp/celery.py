"""The Celery application: every setting lives in settings.py under the CELERY_ prefix.

Run a worker with ``celery -A webapp worker``.
"""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
