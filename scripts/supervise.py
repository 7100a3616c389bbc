"""Run every process of a Procfile and restart the one that exits, with backoff.

`make run` runs this (under `honcho run`, which loads .env) instead of
`honcho start`, which stops everything when one process exits: a worker
that dies must not take the ingest down with it.  A process that exits is
started again after 1 s, then 2, 4 ... up to 30 s while it keeps failing
(the delay starts over once it has run for a minute).  Ctrl-C or SIGTERM
stops them all (SIGTERM, then SIGKILL after 10 s).  Output is prefixed
with the process's name, as honcho does.

    python scripts/supervise.py [Procfile]
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
STEADY = 60.0  # seconds of running after which the delay starts over
STOP_GRACE = 10.0

_print_lock = threading.Lock()


def say(name: str, line: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{time.strftime('%H:%M:%S')} {name:<10} | {line.rstrip()}\n")
        sys.stdout.flush()


def read_procfile(path: Path) -> dict[str, str]:
    """name -> command, in order; a line that is neither blank, a comment nor `name: command` is an error."""
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_-]+):\s*(.+)", line.strip())
        if not match:
            raise SystemExit(f"{path}:{number}: not a `name: command` line: {line!r}")
        processes[match[1]] = match[2]
    if not processes:
        raise SystemExit(f"{path}: no processes")
    return processes


@dataclass
class Process:
    name: str
    command: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = FIRST_DELAY
    due: float = 0.0  # when to start it again (monotonic); 0: running
    restarts: int = field(default=0)

    def start(self) -> None:
        # The shell expands ${VAR:-default} as honcho does; exec leaves no shell between us and it.
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {self.command}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our signals reach its children (gunicorn's, celery's)
        )
        self.started, self.due = time.monotonic(), 0.0
        say(self.name, f"started with pid {self.proc.pid}")
        threading.Thread(target=self._copy_output, args=(self.proc,), daemon=True).start()

    def _copy_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            say(self.name, raw.decode(errors="replace"))

    def exited(self) -> int | None:
        return None if self.proc is None or self.due else self.proc.poll()

    def schedule_restart(self, code: int) -> None:
        now = time.monotonic()
        if now - self.started >= STEADY:
            self.delay = FIRST_DELAY
        say(self.name, f"exited with {code}; starting it again in {self.delay:g} s")
        self.due = now + self.delay
        self.delay = min(self.delay * 2, MAX_DELAY)
        self.restarts += 1

    def signal(self, signum: int) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(self, processes: dict[str, str]):
        self.processes = [Process(name, command) for name, command in processes.items()]
        self.stopping = threading.Event()

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stopping.set())
        for process in self.processes:
            process.start()
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            for process in self.processes:
                code = process.exited()
                if code is not None:
                    process.schedule_restart(code)
                elif process.due and now >= process.due:
                    process.start()
        self.stop()
        return 0

    def stop(self) -> None:
        say("supervise", "stopping every process")
        for process in self.processes:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for process in self.processes:
            if process.proc is None:
                continue
            try:
                process.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(process.name, "did not stop; killing it")
                process.signal(signal.SIGKILL)
                process.proc.wait(5)


def main(argv: list[str]) -> int:
    procfile = Path(argv[1] if len(argv) > 1 else "Procfile")
    if not procfile.is_file():
        raise SystemExit(f"{procfile}: no such Procfile")
    return Supervisor(read_procfile(procfile)).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
