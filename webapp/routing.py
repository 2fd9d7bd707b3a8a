"""Websocket URL patterns, routed by webapp.asgi.

Empty for now: the job progress consumer (``ws/jobs/<id>/``) and the device agent consumer come
with the jobs.
"""
websocket_urlpatterns: list = []
