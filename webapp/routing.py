"""Websocket URL patterns, routed by webapp.asgi.

``ws/jobs/<id>/``: a job page's live events (history first, then live). ``ws/agent/``: the agent
program of a device (devices.consumers), authenticated by its device token.
"""
from django.urls import path

from adaptation.consumers import JobConsumer
from devices.consumers import AgentConsumer

websocket_urlpatterns: list = [
    path("ws/jobs/<int:job_id>/", JobConsumer.as_asgi()),
    path("ws/agent/", AgentConsumer.as_asgi()),
]
