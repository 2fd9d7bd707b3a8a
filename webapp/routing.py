"""Websocket URL patterns, routed by webapp.asgi.

``ws/jobs/<id>/``: a job page's live events (history first, then live). The device agent
consumer comes with the agents.
"""
from django.urls import path

from adaptation.consumers import JobConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
]
