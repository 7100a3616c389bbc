"""Kombu's Redis and filesystem transports, each with a fix (settings:
CELERY_BROKER_TRANSPORT).

Redis: the fix that keeps a worker up when Redis
restarts while it has tasks in flight (settings: CELERY_BROKER_TRANSPORT).

The fault, in kombu 5.7.0 (and kombu's main branch as of this writing): when
Redis goes away, Celery's consumer first calls `Connection.collect()`,
which closes the default channel; `Channel.close()` starts by reading the
reply of the BRPOP it is waiting on (`_brpop_read`), which raises the
connection error *before* the channel is marked closed.  `collect()`
ignores that error and detaches the transport from its connection
(`transport.client = None`).  The consumer then calls `connection.close()`,
which closes the same channel again: this time it gets past the BRPOP,
drops its connection pool, and restores the unacknowledged messages through
a new pool, whose parameters come from `transport.client.hostname`:
`AttributeError: 'NoneType' object has no attribute 'hostname'` in
`restore_unacked_once`.  That is not a connection error, so nothing
ignores it and the worker exits ("Unrecoverable error").  With no task in
flight there is nothing to restore and the worker survives, which is why
the fault shows under load only.

The fix (to propose upstream, kombu/transport/redis.py): `Channel.close()`
treats a connection error from that last BRPOP read like `Empty` (the reply
is lost with the connection either way) and goes on closing, so the first
close completes while the transport still has its client; and a channel
whose transport was detached raises a connection error, which every close
path ignores, instead of an AttributeError.

Unacknowledged tasks are not lost either way: they are in Redis's unacked
index until the visibility timeout, and the database is the record of what
is unfinished (the sweeps publish it again; see archiva/celery.py).

Filesystem (the embedded default's broker): kombu's `Channel._put` opens
the task's file under its final `*.msg` name and only then writes it, and
`_get` moves and reads any `*.msg` file it lists (the writer's lock is
advisory; the reader never takes it).  A worker polling every 0.1 s under
load reads a file its producer has created but not yet written:
`JSONDecodeError: Expecting value: line 1 column 1` inside the consumer,
and the worker exits (seen in bench/capacity.py at 10,000 messages).  The
fix (also to propose upstream, kombu/transport/filesystem.py): write the
file under a name no reader matches and rename it into place (atomic on one
filesystem), and claim a file by renaming it into the processed folder,
which our settings keep beside the queue (kombu moves it to the system's
temporary folder, a copy when that is another filesystem, which two workers
can both make).  A file that still cannot be decoded is set aside in the
processed folder with an error logged, instead of stopping the worker: the
database is the record of what is unfinished, and the sweeps publish it again.
"""

from __future__ import annotations

import logging
import os
import uuid
from queue import Empty
from time import monotonic
from typing import Any

import redis as redis_py
from kombu.exceptions import ChannelError
from kombu.transport import filesystem, redis
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)


class Channel(redis.Channel):
    def close(self) -> None:
        if self._in_poll:
            try:
                self._brpop_read()  # type: ignore[no-untyped-call]  # clears _in_poll, whatever it raises
            except redis.Empty:
                pass
            except self.connection_errors:
                pass  # Redis went away: the BRPOP's reply is gone; close all the same
        super().close()  # type: ignore[no-untyped-call]

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection.client is None:
            raise redis_py.exceptions.ConnectionError("the connection to Redis is closed")
        params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
        return params


class Transport(redis.Transport):
    Channel = Channel


class FilesystemChannel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # matched by no reader
        try:
            with open(partial, "wb") as f:
                f.write(dumps(payload).encode())  # type: ignore[no-untyped-call]
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        processed = str(self.processed_folder)
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.startswith(".") or name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(processed, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)  # one consumer wins
            except OSError:
                continue  # another worker took it
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                message = loads(payload.decode())  # type: ignore[no-untyped-call]
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                log.error("broker: task file %s cannot be read (%s); left in %s", name, exc, processed)
                continue
            if not self.store_processed:
                os.unlink(claimed)
            return message
        raise Empty()


class FilesystemTransport(filesystem.Transport):
    Channel = FilesystemChannel
