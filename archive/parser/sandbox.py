"""Run risky extractors (PDF, Office, RTF, TNEF) in a child process with limits.

A hostile attachment may make a parser spin, allocate without end or crash;
the worker must survive all three.  The child runs `python -m archive.parser.sandbox`
(a subprocess, not multiprocessing: Celery's prefork workers are daemonic and
may not fork multiprocessing children) under RLIMIT_AS and RLIMIT_CPU, and the
parent kills it when a job passes its wall-clock timeout.  One child serves
many jobs so that a message with a PDF costs no interpreter start.

Frames on the pipes are an 8-byte big-endian length and a payload.  Requests
are a JSON header and the raw data; replies are JSON with bytes as
{"$b64": "..."}, so the parent never unpickles what a parser produced.
"""

from __future__ import annotations

import atexit
import base64
import importlib
import json
import logging
import os
import selectors
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from archive.parser.limits import DEFAULT_LIMITS, Skip

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">Q")
STARTUP_TIMEOUT = 60.0  # a cold interpreter importing pypdf on a loaded machine
_ROOT = Path(__file__).resolve().parents[2]


class SandboxError(Exception):
    """The job produced no result; the message says why (a Skip reason)."""


def _encode(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {key: _encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(item) for item in value]
    return value


def _decode_hook(obj: dict[str, Any]) -> Any:
    if set(obj) == {"$b64"}:
        return base64.b64decode(obj["$b64"])
    return obj


class Sandbox:
    """One extraction child, started on first use and replaced after trouble."""

    def __init__(self, memory_bytes: int = DEFAULT_LIMITS.memory_bytes, jobs_per_child: int = 200) -> None:
        self.memory_bytes = memory_bytes
        self.jobs_per_child = jobs_per_child
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs = 0
        self._lock = threading.Lock()

    def configure(self, memory_bytes: int, jobs_per_child: int) -> None:
        with self._lock:
            if memory_bytes != self.memory_bytes:
                self.close()  # the memory limit is set when a child starts
            self.memory_bytes, self.jobs_per_child = memory_bytes, jobs_per_child

    def run(self, func: str, data: bytes, options: dict[str, Any], timeout: float) -> Any:
        """Call `module:function(data, options)` in the child; SandboxError when it gave no result."""
        with self._lock:
            for attempt in (1, 2):
                proc = self._child()
                try:
                    self._send(proc, {"func": func, "options": options, "timeout": timeout}, data)
                except (BrokenPipeError, OSError):
                    self.close()  # a child that died between jobs: start a fresh one once
                    if attempt == 2:
                        raise SandboxError("crashed") from None
                    continue
                return self._receive(proc, timeout)
        raise SandboxError("crashed")  # pragma: no cover - the loop returns or raises

    def _child(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and (self._proc.poll() is not None or self._jobs >= self.jobs_per_child):
            self.close()
        if self._proc is None:
            self._proc = subprocess.Popen(
                [sys.executable, "-B", "-m", "archive.parser.sandbox", str(self.memory_bytes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=_ROOT,
                close_fds=True,
            )
            self._jobs = 0
            self._await_ready(self._proc)
        self._jobs += 1
        return self._proc

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> None:
        """The child imports the extractors before its first job, so that no job's timeout pays for it."""
        try:
            self._receive(proc, STARTUP_TIMEOUT)
        except SandboxError as exc:
            raise SandboxError(f"crashed: the extraction child did not start ({exc})") from None

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], head: dict[str, Any], data: bytes) -> None:
        assert proc.stdin is not None
        header = json.dumps(head).encode()
        proc.stdin.write(_LENGTH.pack(len(header)) + header + _LENGTH.pack(len(data)))
        proc.stdin.write(data)
        proc.stdin.flush()

    def _receive(self, proc: subprocess.Popen[bytes], timeout: float) -> Any:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            head = _read_exact(proc.stdout, _LENGTH.size, deadline)
            payload = _read_exact(proc.stdout, _LENGTH.unpack(head)[0], deadline)
        except TimeoutError:
            self.close()
            raise SandboxError("timed out") from None
        except EOFError:
            code = proc.wait()
            self.close()
            if code in (-9, -24):  # SIGKILL from the kernel's OOM killer, SIGXCPU from RLIMIT_CPU
                raise SandboxError("timed out" if code == -24 else "too large: out of memory") from None
            raise SandboxError(f"crashed (exit status {code})") from None
        reply = json.loads(payload, object_hook=_decode_hook)
        if "error" in reply:
            if reply.get("fatal"):
                self.close()
            raise SandboxError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:  # always pipes here
                    stream.close()
            except OSError:
                pass


def _read_exact(stream: IO[bytes], size: int, deadline: float) -> bytes:
    fd = stream.fileno()
    chunks: list[bytes] = []
    remaining = size
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while remaining:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise TimeoutError
            chunk = os.read(fd, min(remaining, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            remaining -= len(chunk)
    return b"".join(chunks)


_shared: tuple[int, Sandbox] | None = None
_shared_lock = threading.Lock()


def shared_sandbox(memory_bytes: int, jobs_per_child: int) -> Sandbox:
    """The process's sandbox; a forked worker gets its own rather than its parent's child."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), Sandbox(memory_bytes, jobs_per_child))
        sandbox = _shared[1]
    sandbox.configure(memory_bytes, jobs_per_child)
    return sandbox


@atexit.register
def _close_shared() -> None:
    if _shared is not None and _shared[0] == os.getpid():
        _shared[1].close()


# --- the child ------------------------------------------------------------------


def _child_main(memory_bytes: int) -> None:
    import resource
    import signal
    import warnings

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write to a file fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # extractors never write files
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    stdin = sys.stdin.buffer
    # Keep the protocol pipe to ourselves: a library that prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    for module in _PRELOAD:
        importlib.import_module(module)
    ready = json.dumps({"result": "ready"}).encode()
    out.write(_LENGTH.pack(len(ready)) + ready)
    out.flush()
    while True:
        head = stdin.read(_LENGTH.size)
        if len(head) < _LENGTH.size:
            return
        request = json.loads(stdin.read(_LENGTH.unpack(head)[0]))
        data = stdin.read(_LENGTH.unpack(stdin.read(_LENGTH.size))[0])
        _limit_cpu(resource, request["timeout"])
        reply = _run_job(request, data)
        payload = json.dumps(_encode(reply)).encode()
        out.write(_LENGTH.pack(len(payload)) + payload)
        out.flush()
        if reply.get("fatal"):
            return


_PRELOAD = (
    "archive.parser.formats",
    "archive.parser.tnef",
    "pypdf",
    "striprtf.striprtf",
    "tnefparse.tnef",
    "compressed_rtf",
)


def _limit_cpu(resource: Any, timeout: float) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + timeout) + 2
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _run_job(request: dict[str, Any], data: bytes) -> dict[str, Any]:
    module, _, name = request["func"].partition(":")
    try:
        func = getattr(importlib.import_module(module), name)
        return {"result": func(data, request["options"])}
    except Skip as exc:
        return {"error": str(exc)}
    except MemoryError:
        return {"error": "too large: out of memory", "fatal": True}
    except RecursionError:
        return {"error": "corrupt: nested too deeply", "fatal": True}
    except Exception as exc:  # noqa: BLE001 - any parser failure on hostile input is "corrupt"
        return {"error": f"corrupt: {type(exc).__name__}: {str(exc)[:200]}"}


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
