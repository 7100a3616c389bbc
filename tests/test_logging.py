"""The log handler: lines written in blocks to a file, warnings at once, nothing lost at exit."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import logging, sys, time
sys.path.insert(0, {root!r})
from infra.logs import BufferedStreamHandler
handler = BufferedStreamHandler(interval=0.3)
logging.basicConfig(level=logging.INFO, handlers=[handler], format="%(levelname)s %(message)s")
log = logging.getLogger("t")
for n in range(1000):
    log.info("line %d", n)
log.warning("at once")
time.sleep(2)
log.info("late")
time.sleep(2)
log.info("last")
"""


def wait_for(path: Path, text: str, seconds: float) -> float:
    started = time.monotonic()
    while text not in path.read_text():
        assert time.monotonic() - started < seconds, f"{text!r} not written within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_lines_are_written_in_blocks_warnings_at_once_and_all_at_exit(tmp_path):
    out = tmp_path / "stderr.log"
    with out.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", SCRIPT.format(root=str(ROOT))], stderr=stderr)
    try:
        wait_for(out, "WARNING at once", 1.5)  # a warning does not wait for the interval
        wait_for(out, "INFO late", 4.0)  # logged 2 s on, alone: written by the flusher, not at exit
        assert process.poll() is None and "INFO last" not in out.read_text()
        assert process.wait(10) == 0
    finally:
        process.kill()
    lines = out.read_text().splitlines()
    assert lines[:1000] == [f"INFO line {n}" for n in range(1000)]
    assert lines[1000:] == ["WARNING at once", "INFO late", "INFO last"]  # the last one flushed at exit


def test_accepted_lines_are_written_in_a_burst_each_with_its_time_of_acceptance(caplog):
    """The ingest notes each accepted message and writes the lines every
    ACCEPTED_LOG_DELAY seconds; a graceful stop writes what is noted."""
    import asyncio
    import logging

    from ingest import smtp

    accepted = smtp.AcceptedLog()
    times: list[float] = []

    async def accept_three() -> list[str]:
        for n in range(3):
            times.append(time.time())
            accepted.add(f"Q{n}", 100 + n, "a" * 64, [7, 9], 2)
            await asyncio.sleep(0.05)
        before = [r.getMessage() for r in caplog.records if r.name == "ingest.smtp"]
        await asyncio.sleep(smtp.ACCEPTED_LOG_DELAY)
        accepted.add("Q3", 5, "b" * 64, [7], 1)  # its burst is not due when the loop stops
        return before

    with caplog.at_level(logging.INFO, logger="ingest.smtp"):
        written_before = asyncio.run(accept_three())
        accepted.flush()  # a graceful stop
    records = [r for r in caplog.records if r.name == "ingest.smtp"]
    assert written_before == []
    assert [r.getMessage() for r in records] == [
        *(f"accepted Q{n} size={100 + n} sha256={'a' * 64} tenants=7,9 rcpts=2" for n in range(3)),
        f"accepted Q3 size=5 sha256={'b' * 64} tenants=7 rcpts=1",
    ]
    # Each line keeps its own time (50 ms apart here), not the burst's.
    assert all(abs(r.created - t) < 0.005 for r, t in zip(records, times, strict=False))
    assert records[2].created - records[0].created >= 0.09
    assert records[1].msecs == int((records[1].created % 1) * 1000)
    # relativeCreated moves with created: the distance between two lines is the same on both clocks.
    assert abs((records[2].relativeCreated - records[0].relativeCreated) / 1000 - (times[2] - times[0])) < 0.005
