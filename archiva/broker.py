"""Kombu's Redis transport, with the fix that keeps a worker up when Redis
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
"""

from __future__ import annotations

from typing import Any

import redis as redis_py
from kombu.transport import redis


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
