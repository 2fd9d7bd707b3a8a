"""NetAdapt Studio's Django project: the wiring (settings, urls, asgi, celery, serve) and, in
``webapp.lib``, the web helpers both apps share.

Importing the package loads nothing: the checking worker's child processes import pure helpers
from ``webapp.lib`` without Django or Celery. Django processes load the Celery app in
``WebappConfig.ready`` so that ``@shared_task`` binds to it; workers load it with ``-A webapp``.
"""
