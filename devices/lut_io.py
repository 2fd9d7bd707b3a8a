"""Look-up tables as files: export a device's table as JSON, import such a file into another device.

A team with several phones of one model measures one of them and shares its table; the others
import it instead of measuring again. The file (format version 1)::

    {"format": "netadapt-lut", "version": 1,
     "device": {"name", "runtime", "threads", "facts"},          # where it was measured
     "entries": [{"runtime", "runtime_version", "threads", "signature", "signature_version",
                  "n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms"}, ...]}

``signature`` is ``LayerSignature.key()``. An entry timed by a phone's browser also has
``"backend"`` (``"wasm"``): part of its table's key, left out where it is empty; and
``"overhead_ms"``, the per-call probe of its input shape (devices.lut), where it was probed. An import is all-or-nothing: every entry is checked
before a row is written (``LutImportError`` names the first problem), then all rows are written
in one transaction. Entries already in the device's table are kept unless ``overwrite``. The
shared system device measures its own table: nothing is imported into it.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from devices.agent import safe_json
from devices.forms import MAX_THREADS, lut_max_bytes
from devices.lut import CHUNK_SIZE, STATS_FIELDS, UNIQUE_FIELDS
from devices.measure.signature import LayerSignature
from devices.models import Device, LatencyEntry
from webapp.lib.formatting import human_size

FORMAT = "netadapt-lut"
VERSION = 1
ENTRY_FIELDS = ("runtime", "runtime_version", "threads", "signature", "signature_version", *STATS_FIELDS)
#: Fields an entry may have besides ENTRY_FIELDS (the backend of a phone's runtime).
OPTIONAL_FIELDS = ("backend", "overhead_ms")
#: The largest per-call probe an entry may carry, ms (as a phone's results may: devices.phone_protocol).
MAX_OVERHEAD_MS = 60_000.0
_BACKEND_LENGTH = LatencyEntry._meta.get_field("backend").max_length
RUNTIMES = tuple(name for name, _ in Device.RUNTIME_CHOICES)
_VERSION_LENGTH = LatencyEntry._meta.get_field("runtime_version").max_length
SYSTEM_DEVICE_REFUSAL = ("The server's CPU is shared by everyone and measures its own table: "
                         "import into one of your devices instead.")


class LutImportError(ValueError):
    """The file cannot be imported; the message says why. Nothing was stored."""


@dataclass(frozen=True)
class LutFile:
    """A checked look-up-table file: ``entries`` are ready-to-store field dicts."""

    source: dict
    entries: list[dict]


@dataclass(frozen=True)
class ImportResult:
    """What an import did: entries added, replaced (``overwrite``) and kept (not ``overwrite``)."""

    added: int
    replaced: int
    kept: int

    @property
    def message(self) -> str:
        parts = [f"{self.added} new"]
        if self.replaced:
            parts.append(f"{self.replaced} replaced")
        if self.kept:
            parts.append(f"{self.kept} already in the table kept (tick “overwrite” to replace them)")
        return f"Imported the look-up table: {', '.join(parts)}."

    def to_dict(self) -> dict[str, int]:
        return {"added": self.added, "replaced": self.replaced, "kept": self.kept}


def max_entries() -> int:
    return int(settings.LUT_IMPORT_MAX_ENTRIES)


# --------------------------------------------------------------------------- export


def export_table(device: Device) -> dict[str, Any]:
    """The device's whole look-up table (every runtime, version and thread count) as a file dict."""
    rows = (device.latency_entries.order_by("runtime", "runtime_version", "threads", "signature_key")
            .values_list("runtime", "runtime_version", "threads", "signature_key", "signature_version",
                         *STATS_FIELDS, "backend", "overhead_ms"))
    return {"format": FORMAT, "version": VERSION,
            "device": {"name": device.name, "runtime": device.runtime, "threads": device.threads,
                       "facts": device.facts},
            "entries": [_exported(row) for row in rows.iterator(chunk_size=CHUNK_SIZE)]}


def _exported(row: tuple) -> dict:
    entry = dict(zip(ENTRY_FIELDS, row))
    backend, overhead = row[-2:]
    if backend:
        entry["backend"] = backend
    if overhead is not None:
        entry["overhead_ms"] = overhead
    return entry


def export_bytes(device: Device) -> bytes:
    """``export_table`` as compact UTF-8 JSON, one entry a line (small, yet readable in a diff)."""
    table = export_table(device)
    entries = ",\n".join(json.dumps(entry, separators=(",", ":")) for entry in table.pop("entries"))
    head = json.dumps(table, separators=(",", ":"))[:-1]
    return f'{head},"entries":[\n{entries}\n]}}\n'.encode()


# --------------------------------------------------------------------------- reading a file


def read_table(data: bytes) -> LutFile:
    """Parse and check a look-up-table file; ``LutImportError`` names the first problem."""
    if len(data) > lut_max_bytes():
        raise LutImportError(f"The file is larger than the {human_size(lut_max_bytes())} limit for "
                             "look-up tables.")
    try:
        table = safe_json.loads(data)
    except safe_json.JSONInputError as error:
        raise LutImportError(f"The file is not a JSON look-up table: {error}.") from None
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise LutImportError(f'This is not a look-up-table file: it needs "format": "{FORMAT}".')
    version = table.get("version")
    if version != VERSION or isinstance(version, bool):
        raise LutImportError(f"Look-up-table format version {version!r} is not supported: this server "
                             f"reads version {VERSION}.")
    source = table.get("device", {})
    if not isinstance(source, dict):
        raise LutImportError('"device" must be an object (name, runtime, threads, facts).')
    entries = table.get("entries")
    if not isinstance(entries, list):
        raise LutImportError('The file has no "entries" list.')
    if not entries:
        raise LutImportError("The file holds no entries: there is nothing to import.")
    if len(entries) > max_entries():
        raise LutImportError(f"The file holds {len(entries)} entries; at most {max_entries()} can be "
                             "imported at once.")
    checked: list[dict] = []
    seen: dict[tuple, int] = {}
    for index, raw in enumerate(entries, start=1):
        entry = _check_entry(index, raw)
        key = tuple(entry[field] for field in UNIQUE_FIELDS[1:])
        if key in seen:
            raise LutImportError(f"Entry {index} repeats entry {seen[key]} (same runtime, version, threads "
                                 "and signature).")
        seen[key] = index
        checked.append(entry)
    return LutFile(source=source, entries=checked)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(index: int, raw: Any) -> dict:
    """One entry as LatencyEntry fields, or LutImportError naming the entry and the field."""
    where = f"Entry {index}"
    if not isinstance(raw, dict):
        raise LutImportError(f"{where} is not an object.")
    missing = [field for field in ENTRY_FIELDS if field not in raw]
    unknown = sorted(set(raw) - set(ENTRY_FIELDS) - set(OPTIONAL_FIELDS))
    if missing or unknown:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown field(s) {', '.join(unknown)}"] if unknown else [])
        raise LutImportError(f"{where} {' and '.join(problems)}.")
    if raw["runtime"] not in RUNTIMES:
        raise LutImportError(f"{where}: unknown runtime {raw['runtime']!r} (use one of {', '.join(RUNTIMES)}).")
    version = raw["runtime_version"]
    if not isinstance(version, str) or not version.strip() or len(version) > _VERSION_LENGTH:
        raise LutImportError(f"{where}: runtime_version must be a version string of 1 to {_VERSION_LENGTH} "
                             "characters.")
    if not _integer(raw["threads"]) or not 1 <= raw["threads"] <= MAX_THREADS:
        raise LutImportError(f"{where}: threads must be a whole number from 1 to {MAX_THREADS}, "
                             f"got {raw['threads']!r}.")
    backend = raw.get("backend", "")
    if not isinstance(backend, str) or len(backend) > _BACKEND_LENGTH or not (backend == "" or backend.isalnum()):
        raise LutImportError(f"{where}: backend must be a runtime backend name of at most {_BACKEND_LENGTH} "
                             f"letters and digits, got {backend!r}.")
    key = raw["signature"]
    if not isinstance(key, str):
        raise LutImportError(f"{where}: signature must be a layer signature key string.")
    try:
        signature = LayerSignature.from_key(key)
    except ValueError as error:
        raise LutImportError(f"{where}: {error}.") from None
    if raw["signature_version"] != signature.version or not _integer(raw["signature_version"]):
        raise LutImportError(f"{where}: signature_version {raw['signature_version']!r} does not match its "
                             f"signature (version {signature.version}).")
    if not _integer(raw["n"]) or raw["n"] < 1:
        raise LutImportError(f"{where}: n (the number of timed runs) must be a whole number of at least 1, "
                             f"got {raw['n']!r}.")
    for field in STATS_FIELDS[1:]:
        value = raw[field]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not number or value < 0 or (value == 0 and field != "std_ms"):
            need = "zero or a positive" if field == "std_ms" else "a positive"
            raise LutImportError(f"{where}: {field} must be {need} finite number of milliseconds, "
                                 f"got {value!r}.")
    if not raw["min_ms"] <= raw["p10_ms"] <= raw["median_ms"] <= raw["p90_ms"] or raw["mean_ms"] < raw["min_ms"]:
        raise LutImportError(f"{where}: the statistics contradict one another (they need "
                             "min ≤ p10 ≤ median ≤ p90 and min ≤ mean).")
    overhead = raw.get("overhead_ms")
    if overhead is not None and (isinstance(overhead, bool) or not isinstance(overhead, (int, float))
                                 or not math.isfinite(overhead) or not 0 <= overhead <= MAX_OVERHEAD_MS):
        raise LutImportError(f"{where}: overhead_ms must be a number of milliseconds from 0 to "
                             f"{MAX_OVERHEAD_MS:g}, got {overhead!r}.")
    return {"overhead_ms": None if overhead is None else float(overhead), "runtime": raw["runtime"], "runtime_version": version.strip(), "threads": raw["threads"],
            "backend": backend,
            "signature_key": key, "signature_version": signature.version,
            **{field: float(raw[field]) for field in STATS_FIELDS[1:]}, "n": raw["n"]}


# --------------------------------------------------------------------------- importing


def import_table(device: Device, table: LutFile, *, overwrite: bool = False) -> ImportResult:
    """Store the file's entries in ``device``'s table, all in one transaction.

    An entry whose (runtime, version, threads, signature) the device has already replaces it only
    with ``overwrite``; otherwise the device's own measurement is kept.
    """
    if device.is_system:
        raise LutImportError(SYSTEM_DEVICE_REFUSAL)
    now = timezone.now()
    tables = {(e["runtime"], e["runtime_version"], e["backend"], e["threads"]) for e in table.entries}
    with transaction.atomic():
        existing: set[tuple] = set()
        for runtime, version, backend, threads in tables:
            keys = LatencyEntry.objects.filter(device=device, runtime=runtime, runtime_version=version,
                                               backend=backend, threads=threads).values_list("signature_key",
                                                                                             flat=True)
            existing.update((runtime, version, backend, threads, key)
                            for key in keys.iterator(chunk_size=CHUNK_SIZE))
        rows, already = [], 0
        for entry in table.entries:
            present = (entry["runtime"], entry["runtime_version"], entry["backend"], entry["threads"],
                       entry["signature_key"]) in existing
            already += present
            if overwrite or not present:
                rows.append(LatencyEntry(device=device, measured_at=now, **entry))
        if overwrite:
            LatencyEntry.objects.bulk_create(
                rows, batch_size=CHUNK_SIZE, update_conflicts=True, unique_fields=UNIQUE_FIELDS,
                update_fields=("signature_version", *STATS_FIELDS, "overhead_ms", "measured_at"))
        else:  # a row measured meanwhile wins, as an existing one would
            LatencyEntry.objects.bulk_create(rows, batch_size=CHUNK_SIZE, ignore_conflicts=True)
    new = len(table.entries) - already
    return ImportResult(added=new, replaced=already if overwrite else 0, kept=0 if overwrite else already)


def import_from_form(device: Device, form) -> ImportResult | None:
    """Validate a ``LutImportForm``, then read and import its file; None with the problem added to
    the form's ``file`` errors (the pages and the API share this)."""
    if not form.is_valid():
        return None
    try:
        table = read_table(form.cleaned_data["file"].read())
        return import_table(device, table, overwrite=form.cleaned_data["overwrite"])
    except LutImportError as error:
        form.add_error("file", str(error))
        return None
