"""The database look-up table implements the engine's LatencyTable protocol."""
from __future__ import annotations

import pytest

from adaptation.netadapt.lut import MemoryLatencyTable, missing_signatures
from devices.lut import DatabaseLatencyTable
from devices.measure.signature import LayerSignature
from devices.measure.stats import TimingStats
from devices.models import Device, LatencyEntry
from tests.user_objects import add_device

pytestmark = [pytest.mark.django_db, pytest.mark.services]


def signature(in_channels: int, out_channels: int, hw: int = 28) -> LayerSignature:
    return LayerSignature(op="conv", in_channels=in_channels, out_channels=out_channels, kernel=(3, 3),
                          stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1, input_hw=(hw, hw),
                          batch=1, bias=False, fused="bn+relu")


def stats(base_ms: float) -> TimingStats:
    return TimingStats.from_samples([base_ms * (1 + k / 100) for k in range(20)])


def many_signatures(count: int) -> list[LayerSignature]:
    return [signature(1 + k // 40, 1 + k % 40) for k in range(count)]


@pytest.fixture
def table(system_device):
    return DatabaseLatencyTable(system_device, "onnxruntime", "1.31.1", 1)


def test_it_round_trips_entries(table):
    entries = {signature(8, 16): stats(0.011), signature(16, 16): stats(0.0237), signature(16, 32, 14): stats(1 / 3)}
    table.add(entries)
    assert len(table) == 3
    assert table.lookup(entries) == entries  # exact floats, same signatures


def test_it_leaves_missing_signatures_out(table):
    table.add({signature(8, 8): stats(0.01)})
    wanted = [signature(8, 8), signature(8, 16), signature(8, 8)]
    assert set(table.lookup(wanted)) == {signature(8, 8)}
    assert missing_signatures(table, wanted) == [signature(8, 16)]


def test_it_updates_an_entry_added_twice(table):
    table.add({signature(8, 16): stats(0.5)})
    table.add({signature(8, 16): stats(0.25), signature(16, 16): stats(0.75)})
    assert len(table) == 2
    assert table.lookup([signature(8, 16)]) == {signature(8, 16): stats(0.25)}


def test_it_keeps_tables_apart(owner, system_device, table):
    table.add({signature(8, 16): stats(0.5)})
    phone = add_device(owner, name="phone")
    others = [DatabaseLatencyTable(system_device, "onnxruntime", "1.31.1", 2),
              DatabaseLatencyTable(system_device, "onnxruntime", "1.30.0", 1),
              DatabaseLatencyTable(system_device, "torch", "1.31.1", 1),
              DatabaseLatencyTable(phone, "onnxruntime", "1.31.1", 1)]
    for other in others:
        assert other.lookup([signature(8, 16)]) == {}
        other.add({signature(8, 16): stats(0.1)})
    assert table.lookup([signature(8, 16)]) == {signature(8, 16): stats(0.5)}
    assert LatencyEntry.objects.count() == 5


def test_it_agrees_with_the_memory_table(table):
    entries = {sig: stats(0.01 * (k + 1)) for k, sig in enumerate(many_signatures(50))}
    memory = MemoryLatencyTable()
    memory.add(entries)
    table.add(entries)
    query = many_signatures(60)
    assert table.lookup(query) == memory.lookup(query)


def test_it_looks_up_many_signatures_in_few_queries(table, django_assert_max_num_queries):
    signatures = many_signatures(1200)
    assert len(set(signatures)) == 1200
    with django_assert_max_num_queries(1200 // 50):  # batched INSERTs (SQLite: ~70 rows each)
        table.add({sig: stats(0.01) for sig in signatures})
    with django_assert_max_num_queries(3):  # one SELECT per 500 keys
        found = table.lookup(signatures)
    assert len(found) == 1200
    assert found[signatures[-1]] == stats(0.01)


@pytest.mark.services
def test_it_round_trips_on_postgresql(owner):
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("set DATABASE_URL=postgres://... to run against PostgreSQL")
    device = add_device(owner, name="Pixel 7", facts={"cores": 8})
    table = DatabaseLatencyTable(device, "onnxruntime", "1.31.1", 1)
    entries = {sig: stats(0.02) for sig in many_signatures(700)}
    table.add(entries)
    table.add({signature(1, 1): stats(0.5)})
    assert len(table) == 700
    assert table.lookup(entries)[signature(1, 1)] == stats(0.5)
    assert Device.objects.get(pk=device.pk).facts == {"cores": 8}
