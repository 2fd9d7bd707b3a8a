"""Sections other apps add to a device's page, so that devices shows them without importing them.

An app registers a function in its ``AppConfig.ready()``; the device page calls each, in the
order they were registered, with the request and the device, and renders what it returns:
``(template name, context)``, or None to show nothing. ``adaptation`` adds the chart of its
jobs' estimated against measured latency this way.
"""
from __future__ import annotations

from typing import Callable

from django.http import HttpRequest
from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from devices.models import Device

Section = Callable[[HttpRequest, Device], "tuple[str, dict] | None"]

_sections: dict[str, Section] = {}


def register(name: str, section: Section) -> None:
    """Add (or, under the same name, replace) a section of the device page."""
    _sections[name] = section


def render_sections(request: HttpRequest, device: Device) -> list[SafeString]:
    """The HTML of every registered section that has something to show for this device."""
    rendered = []
    for section in _sections.values():
        answer = section(request, device)
        if answer is not None:
            template, context = answer
            rendered.append(render_to_string(template, {"device": device, **context}, request))
    return rendered
