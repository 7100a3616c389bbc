"""An exclusive lock across processes on one machine: flock(2) on a file."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(Exception):
    """The lock stayed held by another process for the whole wait."""


@contextmanager
def file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing), waited for at most
    `timeout` seconds (LockTimeout).  The kernel releases it if the holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{path} stayed locked for {timeout:.0f}s") from error
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
