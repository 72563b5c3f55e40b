"""Two storage processes on one data directory, as two replicas on a ReadWriteMany volume."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from darkroom.core.ids import new_task_id
from darkroom.core.imagefiles import TEMP_PREFIX
from harness.environment import serve_command
from harness.launch import Launched
from support.processes import START_TIMEOUT, STOP_TIMEOUT, Services, free_port

pytestmark = pytest.mark.e2e

ROUNDS = 30


class Replica:
    def __init__(self, services: Services, name: str) -> None:
        self.port = free_port()
        log = services.log_dir / f"{name}.log"
        self.process = Launched(name, serve_command("storage", self.port), services.env, log)
        self.process.wait_for_url(self.url("/readyz"), START_TIMEOUT)
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {services.env['DARKROOM_INTERNAL_TOKEN']}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def send(self, task_id: str, body: bytes | Iterator[bytes]) -> None:
        params = {"id": task_id, "state": "working"}
        response = self.session.post(self.url("/sendImage"), params=params, data=body, timeout=30)
        assert response.status_code == 201, response.text

    def get(self, task_id: str) -> bytes:
        params = {"id": task_id, "state": "working"}
        response = self.session.get(self.url("/getImage"), params=params, timeout=30)
        assert response.status_code == 200, response.text
        return response.content


class Replicas:
    """A registry and storage processes on one data directory."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.running: list[Replica] = []

    def start(self, name: str) -> Replica:
        replica = Replica(self.services, name)
        self.running.append(replica)
        return replica

    def stop(self, replica: Replica) -> None:
        self.running.remove(replica)
        replica.process.stop(STOP_TIMEOUT)


@pytest.fixture
def replicas(tmp_path) -> Iterator[Replicas]:
    services = Services(tmp_path / "data", tmp_path)
    started = Replicas(services)
    try:
        services.start("registry")
        yield started
    finally:
        for replica in list(started.running):
            started.stop(replica)
        services.stop_all()


def _image(marker: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes([marker]) * 300_000


def test_two_storage_processes_share_one_directory(replicas: Replicas) -> None:
    first, second = replicas.start("storage-1"), replicas.start("storage-2")
    shared = new_task_id()
    first.send(shared, _image(1))
    versions = {_image(1), _image(2)}

    def write_and_read(me: Replica, other: Replica, marker: int) -> None:
        for _ in range(ROUNDS):
            me.send(shared, _image(marker))
            assert other.get(shared) in versions  # the whole of one write, never a mix
            own = new_task_id()
            me.send(own, _image(marker))
            assert other.get(own) == _image(marker)  # written by one, read by the other

    start = threading.Barrier(2, timeout=10)

    def released(me: Replica, other: Replica, marker: int) -> None:
        start.wait()
        write_and_read(me, other, marker)

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(released, first, second, 1), pool.submit(released, second, first, 2)]
        for run in runs:
            run.result(timeout=120)


def test_a_starting_replica_removes_dead_uploads_only(replicas: Replicas, hold_locked) -> None:
    """Another replica's upload in progress (its temporary file locked) survives the start."""
    first = replicas.start("storage-1")
    working = replicas.services.data_dir / "working"
    live, dead = working / f"{TEMP_PREFIX}live", working / f"{TEMP_PREFIX}dead"
    end_writer = hold_locked(live)
    dead.write_bytes(b"a killed upload's first bytes")
    second = replicas.start("storage-2")
    assert live.exists()
    assert not dead.exists()
    end_writer()
    replicas.stop(second)
    replicas.start("storage-3")
    assert not live.exists()
    task_id = new_task_id()
    first.send(task_id, _image(3))
    assert replicas.running[-1].get(task_id) == _image(3)
