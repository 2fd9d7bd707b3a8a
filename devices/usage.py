"""What other apps keep on a device, counted without devices importing them.

An app whose rows point at a device (adaptation's jobs, with ``on_delete=PROTECT``) registers a
counter in its ``AppConfig.ready()``; the device pages and the API ask ``uses(device)`` what a
device is used by (its page shows it; deleting a used device is refused with the count). Like
``devices.page_sections``, this keeps the dependency one way: adaptation -> devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from devices.models import Device

#: ``counter(device, owner)``: how many of the app's rows use the device (``owner``: only theirs).
Counter = Callable[[Device, Any], int]


@dataclass(frozen=True)
class Use:
    noun: str      # "job"
    plural: str    # "jobs"
    count: int

    def __str__(self) -> str:
        return f"{self.count} {self.noun if self.count == 1 else self.plural}"


_counters: dict[str, tuple[str, str, Counter]] = {}


def register(name: str, noun: str, plural: str, counter: Counter) -> None:
    """Add (or, under the same name, replace) a kind of row that uses devices."""
    _counters[name] = (noun, plural, counter)


def uses(device: Device, owner=None) -> list[Use]:
    """What uses ``device`` (of ``owner``'s rows only, when given), each kind with its count."""
    return [Use(noun, plural, counter(device, owner)) for noun, plural, counter in _counters.values()]


def used_by(device: Device, owner=None) -> str:
    """"3 jobs", "1 job, 2 reports"; "" when nothing uses the device."""
    return ", ".join(str(use) for use in uses(device, owner) if use.count)
