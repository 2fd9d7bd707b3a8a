"""The embedded stack's Celery broker: kombu's filesystem transport, every file made whole.

kombu's filesystem channel has three races between processes (kombu issue #1551):

- ``_put`` creates the message file in the folder consumers list and only then writes it, so a
  worker polling at that moment claims an empty file and dies on its JSON ("Unrecoverable
  error: JSONDecodeError"); this crashed a worker of the test suite.
- ``_get`` claims a message by moving it to the system temporary folder. On another filesystem
  that move is a copy and a delete, which two consumers can both start, one reading the other's
  half-written copy.
- ``_queue_bind`` creates a new exchange table with ``open("wb")`` and only then locks it, so
  ``get_table`` can read it empty.

Here a message is written under a name consumers skip and renamed into place (a rename within
one folder is atomic), a consumer claims it by renaming it into the broker's own processed
folder (only one rename of a file succeeds), and a new exchange table is written aside and
hard-linked into place, so it appears whole or not at all. Everything else is kombu's.
The processed folder must be on the queue folder's filesystem (the settings keep both under
the data folder). Selected by ``CELERY_BROKER_TRANSPORT`` in the embedded settings; production
uses Redis.
"""
from __future__ import annotations

import os
import uuid
from queue import Empty
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads


def _partial_name() -> str:
    """A name no queue reads: kombu matches ``<anything>.<queue>.msg`` after the first dot."""
    return f".{uuid.uuid4().hex}.part"


class Channel(filesystem.Channel):
    """A filesystem channel whose messages and exchange tables appear only when complete."""

    def _put(self, queue: str, payload: dict, **kwargs) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        partial = os.path.join(self.data_folder_out, _partial_name())
        try:
            with open(partial, "wb") as out:
                out.write(str_to_bytes(dumps(payload)))
            os.replace(partial, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            _discard(partial)
            raise ChannelError(f"Cannot add a message to {self.data_folder_out!r}") from exc

    def _get(self, queue: str) -> dict:
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # another consumer claimed it first
            except OSError as exc:  # e.g. the processed folder is on another filesystem
                raise ChannelError(f"Cannot claim {name!r} into {self.processed_folder!r}: the "
                                   "processed folder must be on the queue's filesystem") from exc
            try:
                with open(claimed, "rb") as message:
                    payload = message.read()
            except OSError as exc:
                raise ChannelError(f"Cannot read the claimed message {claimed!r}") from exc
            finally:
                if not self.store_processed:
                    _discard(claimed)
            return loads(bytes_to_str(payload))
        raise Empty()

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        table = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        if not table.exists():
            entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
            partial = table.with_name(_partial_name())
            try:
                partial.write_bytes(str_to_bytes(dumps([entry])))
                os.link(partial, table)
                return
            except FileExistsError:
                pass  # created meanwhile by another process: kombu adds to it under its lock
            finally:
                _discard(str(partial))
        super()._queue_bind(exchange, routing_key, pattern, queue)


def _discard(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class Transport(filesystem.Transport):
    """kombu's filesystem transport with :class:`Channel`."""

    Channel = Channel
