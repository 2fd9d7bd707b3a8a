"""The embedded broker (webapp.broker): messages cross processes whole, each to one consumer.

kombu's own filesystem transport fails this test: a consumer claims a message file before its
producer has written it and dies on the empty JSON (kombu issue #1551).
"""
from __future__ import annotations

import json
import multiprocessing
import queue
from pathlib import Path

from kombu import Connection

TRANSPORT = "webapp.broker:Transport"
MESSAGES = 600
BLOB = "0123456789abcdef" * 8192  # 128 KiB: a write long enough to be caught half done


def _connection(folder: Path) -> Connection:
    options = {"data_folder_in": str(folder / "queue"), "data_folder_out": str(folder / "queue"),
               "processed_folder": str(folder / "processed"),
               "control_folder": str(folder / "control"), "store_processed": False}
    return Connection("filesystem://", transport=TRANSPORT, transport_options=options)


def _produce(folder: Path, ready: list, done) -> None:
    for consumer in ready:  # both consumers are polling before the first message
        consumer.wait(timeout=120)
    with _connection(folder) as conn:
        outbox = conn.SimpleQueue("stress")
        for number in range(MESSAGES):
            outbox.put({"number": number, "blob": BLOB})
        outbox.close()
    done.set()


def _consume(folder: Path, ready, done, report: Path) -> None:
    """Take messages until the producer is done and the queue is empty; write their numbers."""
    numbers = []
    with _connection(folder) as conn:
        inbox = conn.SimpleQueue("stress")
        ready.set()
        while True:
            finished = done.is_set()  # read before trying, so no message put after it is missed
            try:
                message = inbox.get(block=False)
            except queue.Empty:
                if finished:
                    break
                continue
            assert message.payload["blob"] == BLOB, message.payload.get("number")
            numbers.append(message.payload["number"])
            message.ack()
        inbox.close()
    report.write_text(json.dumps(numbers))


def test_two_consumers_get_every_message_of_a_producer_once_and_whole(tmp_path):
    for name in ("queue", "processed", "control"):
        (tmp_path / name).mkdir()
    spawn = multiprocessing.get_context("spawn")
    ready, done = [spawn.Event(), spawn.Event()], spawn.Event()
    reports = [tmp_path / f"consumer-{n}.json" for n in range(2)]
    consumers = [spawn.Process(target=_consume, args=(tmp_path, ready[n], done, reports[n]))
                 for n in range(2)]
    producer = spawn.Process(target=_produce, args=(tmp_path, ready, done))
    for process in (*consumers, producer):
        process.start()
    try:
        for process in (producer, *consumers):
            process.join(timeout=240)
    finally:
        for process in (*consumers, producer):
            process.kill()
    assert producer.exitcode == 0
    assert [process.exitcode for process in consumers] == [0, 0]
    batches = [json.loads(report.read_text()) for report in reports]
    numbers = sorted(number for batch in batches for number in batch)
    assert numbers == list(range(MESSAGES))  # every message, none twice
    assert all(batch for batch in batches), "both consumers took messages"
    assert sorted(path.name for path in (tmp_path / "queue").iterdir()) == []
