"""The embedded default's broker: kombu's filesystem transport, with the
writes and claims made atomic (archiva/broker.py).

kombu's own `_put` creates a task file under its final name before writing
it, and a worker polling the folder read it empty and exited
(JSONDecodeError) in bench/capacity.py.  These run kombu's real transport
code with our channel, on real folders, with real threads racing.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import kombu
import pytest
from kombu.transport import filesystem, virtual

from archiva import broker


@pytest.fixture(autouse=True)
def fresh_broker_state(monkeypatch):
    """kombu keeps the filesystem transport's bindings in one process-wide
    state, which would skip binding the next test's folders."""
    monkeypatch.setattr(filesystem.Transport, "global_state", virtual.BrokerState())


def options(root: Path) -> dict[str, str]:
    folders = {"data_folder_in": "queue", "data_folder_out": "queue", "processed_folder": "processed"}
    folders["control_folder"] = "control"
    for name in folders.values():
        (root / name).mkdir(exist_ok=True)
    return {key: str(root / name) for key, name in folders.items()} | {"store_processed": False}


def connection(root: Path, transport: type = broker.FilesystemTransport) -> kombu.Connection:
    return kombu.Connection("filesystem://", transport=transport, transport_options=options(root))


def test_a_task_file_is_visible_to_readers_only_once_it_is_complete(tmp_path, monkeypatch):
    seen: list[tuple[list[str], bytes]] = []
    replace = os.replace

    def watching(src: str, dst: str) -> None:
        # Just before the rename: what a polling worker could list, and what the file holds.
        seen.append(([n for n in os.listdir(tmp_path / "queue") if n.endswith(".msg")], Path(src).read_bytes()))
        replace(src, dst)

    monkeypatch.setattr(broker.os, "replace", watching)
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        queue.put({"n": 1})
        queue.close()
    assert len(seen) == 1
    listed, written = seen[0]
    assert listed == []  # under its final name only after the rename
    assert json.loads(written)["body"]
    assert [n for n in os.listdir(tmp_path / "queue") if n.endswith(".msg")]
    assert not [n for n in os.listdir(tmp_path / "queue") if n.endswith(".partial")]


def test_an_unreadable_task_file_is_set_aside_and_the_next_one_still_arrives(tmp_path):
    with connection(tmp_path) as conn:
        queue = conn.SimpleQueue("tasks")
        (tmp_path / "queue" / "0_broken.tasks.msg").write_bytes(b"")  # sorts first: what kombu's _put left mid-write
        queue.put({"n": 2})
        message = queue.get(timeout=5)
        assert message.payload == {"n": 2}
        message.ack()
        queue.close()
    assert (tmp_path / "processed" / "0_broken.tasks.msg").exists()


def race(root: Path, transport: type, count: int = 1500, consumers: int = 2) -> tuple[list[int], list[BaseException]]:
    """One producer and `consumers` consumers on one queue folder, each with its own connection."""
    got: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()
    with connection(root, transport) as setup:  # declare the queue and its binding once
        setup.SimpleQueue("race").close()

    def produce() -> None:
        try:
            with connection(root, transport) as conn:
                producer = conn.Producer()
                for n in range(count):
                    producer.publish({"n": n}, routing_key="race", exchange="", serializer="json")
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def consume() -> None:
        try:
            with connection(root, transport) as conn:
                channel = conn.default_channel
                while True:
                    try:
                        message = channel.basic_get("race", no_ack=True)
                    except Exception as exc:  # noqa: BLE001 - what kombu's own reader raises
                        errors.append(exc)
                        return
                    if message is None:
                        if done.is_set() and not any(n.endswith("race.msg") for n in os.listdir(root / "queue")):
                            return
                        continue
                    got.append(json.loads(message.body)["n"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=produce)] + [threading.Thread(target=consume) for _ in range(consumers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return got, errors


def test_consumers_racing_a_producer_get_every_task_exactly_once(tmp_path):
    got, errors = race(tmp_path, broker.FilesystemTransport)
    assert errors == []
    assert sorted(got) == list(range(1500))


def test_kombus_own_reader_fails_on_a_half_written_file(tmp_path):
    """The fault the fix is for, on kombu's unfixed transport, in the state
    its `_put` leaves between creating the file and writing it."""
    with connection(tmp_path, filesystem.Transport) as conn:
        queue = conn.SimpleQueue("tasks")
        (tmp_path / "queue" / "0_created-not-written.tasks.msg").write_bytes(b"")
        with pytest.raises(json.JSONDecodeError):
            queue.get(timeout=1)
        queue.close()
