"""The database-backed latency look-up table (the engine's LatencyTable protocol).

One table is the entries of one (device, runtime, runtime version, backend, threads); every later
job on that device reuses them. ``backend`` tells apart the execution backends of one runtime (a
phone's browser: onnxruntime-web's ``wasm``; ``webgpu`` would be another table), so tables timed
with different backends or thread counts never mix; it is empty for the server and agents.

A phone also sends, with each entry, what an empty model of the layer's input shape costs per call
(its probe, ``overhead_ms``). ``drowning`` counts the entries whose probe is more than
``DROWN_SHARE`` of their time (the page's own flag, static/js/phone/batcher.mjs): such an entry is
mostly the runtime's per-call cost, and a network made mostly of them is better measured whole
(adaptation.job_runner chooses so for a phone's jobs).
"""
from __future__ import annotations

from typing import Iterable, Mapping

from django.utils import timezone

from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, LatencyEntry

STATS_FIELDS = ("n", "min_ms", "p10_ms", "median_ms", "p90_ms", "mean_ms", "std_ms")
TABLE_FIELDS = ("device", "runtime", "runtime_version", "backend", "threads")
UNIQUE_FIELDS = (*TABLE_FIELDS, "signature_key")
#: Keys per ``IN (...)`` query and rows per INSERT: well under SQLite's and PostgreSQL's limits.
CHUNK_SIZE = 500
#: An entry drowns in per-call overhead when its probe is more than this share of its minimum.
DROWN_SHARE = 0.5


class DatabaseLatencyTable:
    """Look-up table rows of one device, runtime (its version and backend) and thread count."""

    def __init__(self, device: Device, runtime: str, runtime_version: str, threads: int,
                 backend: str = "") -> None:
        self.device = device
        self.runtime = runtime
        self.runtime_version = runtime_version
        self.threads = threads
        self.backend = backend

    def __repr__(self) -> str:
        return (f"DatabaseLatencyTable(device={self.device.pk}, runtime={self.runtime!r}, "
                f"runtime_version={self.runtime_version!r}, backend={self.backend!r}, threads={self.threads})")

    def entries(self):
        """The table's rows as a queryset."""
        return LatencyEntry.objects.filter(device=self.device, runtime=self.runtime, backend=self.backend,
                                           runtime_version=self.runtime_version, threads=self.threads)

    def __len__(self) -> int:
        return self.entries().count()

    def lookup(self, signatures: Iterable[LayerSignature]) -> dict[LayerSignature, TimingStats]:
        """Stats of the signatures the table holds (missing ones left out), one query per chunk."""
        by_key = {}
        for signature in signatures:
            by_key.setdefault(signature.key(), signature)
        keys = list(by_key)
        found: dict[LayerSignature, TimingStats] = {}
        for start in range(0, len(keys), CHUNK_SIZE):
            rows = (self.entries().filter(signature_key__in=keys[start:start + CHUNK_SIZE])
                    .values_list("signature_key", *STATS_FIELDS))
            for key, *values in rows:
                found[by_key[key]] = TimingStats(**dict(zip(STATS_FIELDS, values)))
        return found

    def add(self, entries: dict[LayerSignature, TimingStats],
            overheads: Mapping[LayerSignature, float] | None = None) -> None:
        """Insert the entries (with their per-call probe, where ``overheads`` has one); a signature
        already in the table gets the new stats."""
        now = timezone.now()
        overheads = overheads or {}
        rows = [
            LatencyEntry(device=self.device, runtime=self.runtime, runtime_version=self.runtime_version,
                         backend=self.backend, threads=self.threads, signature_key=signature.key(),
                         signature_version=signature.version, measured_at=now,
                         overhead_ms=overheads.get(signature), **stats.to_dict())
            for signature, stats in entries.items()
        ]
        LatencyEntry.objects.bulk_create(
            rows, batch_size=CHUNK_SIZE, update_conflicts=True, unique_fields=UNIQUE_FIELDS,
            update_fields=("signature_version", *STATS_FIELDS, "overhead_ms", "measured_at"),
        )

    def drowning(self, signatures: Iterable[LayerSignature]) -> tuple[int, int]:
        """(entries that drown in per-call overhead, entries with a probe) among ``signatures``'
        distinct entries; (0, 0) when none was probed (the server's and agents' tables)."""
        keys = list({signature.key() for signature in signatures})
        drowning = probed = 0
        for start in range(0, len(keys), CHUNK_SIZE):
            rows = (self.entries().filter(signature_key__in=keys[start:start + CHUNK_SIZE], overhead_ms__isnull=False)
                    .values_list("min_ms", "overhead_ms"))
            for min_ms, overhead_ms in rows:
                probed += 1
                drowning += overhead_ms > DROWN_SHARE * min_ms
        return drowning, probed


#: The ``facts`` key under which a remote device's runtime version is stored, by device kind.
VERSION_FACT = {"agent": "onnxruntime", "phone": "onnxruntime_web"}


def remote_version(device: Device) -> str:
    """The runtime version a paired agent or phone reported at its last hello ("" before)."""
    facts = device.facts if isinstance(device.facts, dict) else {}
    return str(facts.get(VERSION_FACT.get(device.kind, "onnxruntime"), ""))


def remote_backend(device: Device) -> str:
    """The execution backend of a phone's runtime ("wasm"), as its last hello reported; "" for others."""
    facts = device.facts if isinstance(device.facts, dict) else {}
    return str(facts.get("backend", "")) if device.kind == "phone" else ""
