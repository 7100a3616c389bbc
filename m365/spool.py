"""Where a downloaded item waits for the archive: memory while small, a file when large.

Graph streams an item's MIME into a `Spool`; past `threshold` bytes it moves
to a file in the spool folder, so an import's memory stays bounded by the
number of downloads at once times the threshold, whatever the sizes of the
messages.  The SHA-256 is computed on the way in (the archive then need not
read a spooled file twice).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

# The same threshold as SMTP's: a message over 256 KB gets a file of its own there too.
THRESHOLD = 256 * 1024


def spool_dir() -> Path:
    """Where the import and the folder sync spool large downloads (orphans are removed by the importer)."""
    return Path(settings.ARCHIVA_SPOOL_DIR) / "m365"


class Spool(io.RawIOBase):
    """A write-only sink: `content()` is the bytes, or the Path of the file they went to."""

    def __init__(self, directory: Path, threshold: int = THRESHOLD) -> None:
        super().__init__()
        self.directory = directory
        self.threshold = threshold
        self.size = 0
        self._hash = hashlib.sha256()
        self._memory = io.BytesIO()
        self._file: BinaryIO | None = None
        self._path: Path | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]  # RawIOBase takes a Buffer; bytes-likes are what Graph gives
        chunk = bytes(data)
        self._hash.update(chunk)
        self.size += len(chunk)
        if self._file is None and self.size > self.threshold:
            self._roll_over()
        (self._file or self._memory).write(chunk)
        return len(chunk)

    def _roll_over(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="m365-", suffix=".eml", dir=self.directory)
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._file.write(self._memory.getvalue())
        self._memory = io.BytesIO()

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def content(self) -> bytes | Path:
        """The bytes, or the file they were written to (flushed and closed: the archive takes it over)."""
        if self._file is None:
            return self._memory.getvalue()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        assert self._path is not None
        return self._path

    def discard(self) -> None:
        """Drop what was written (a failed or skipped download)."""
        if self._file is not None:
            self._file.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        self._memory = io.BytesIO()
