"""Jobs survive processes being killed at random: nothing lost, nothing wrong, nothing left over.

``test_jobs_survive_killed_processes`` is a short run of ``support.chaos`` against
``darkroom up`` (``bench/chaos.py`` runs it longer); the seed is printed and
``DARKROOM_CHAOS_SEED=N`` replays a run's choices. The other tests pin down, quickly, the bugs
the chaos found.
"""

from __future__ import annotations

import os
import random
import threading

import pytest

from darkroom.contract.folders import result_version
from darkroom.core.discovery import ServiceClient, ServiceLocator
from darkroom.core.imagefiles import Folder
from darkroom.core.transport import Transport
from darkroom.database.service import open_store
from darkroom.database.store import State
from darkroom.storage.client import StorageClient
from darkroom.worker.loop import TaskLoop
from darkroom.worker.operations import ImageRejected, ProcessingSettings, process_image
from harness.chaos import ChaosSettings, run_chaos, run_replicated_chaos
from support.images import decode, png_bytes, same_pixels, swapped
from support.inprocess import StaticRegistry, master_side
from support.processes import free_port


@pytest.mark.chaos
def test_jobs_survive_killed_processes(tmp_path, capsys):
    seed = int(os.environ.get("DARKROOM_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    settings = ChaosSettings(jobs=200, corrupt=5, seconds=110, seed=seed)
    report = run_chaos(settings, tmp_path)
    with capsys.disabled():
        print("\n" + report.summary())
    assert not report.problems(), report.summary()
    assert report.submitted == settings.jobs
    assert report.finished == settings.jobs - settings.corrupt
    assert report.failed == settings.corrupt
    assert sum(report.kills.values()) >= 10, "the chaos must actually kill things"
    assert {"database", "storage", "master", "registry", "worker", "loop"} <= set(report.kills)


# -- regressions --------------------------------------------------------------------------


def _swap(source, destination, pipeline: str, **_: object) -> str:
    return process_image(source, destination, pipeline, ProcessingSettings())


def test_storage_outage_spends_no_attempts(config):
    """A storage restart used to fail good jobs: each loop spent every attempt in a second."""
    system = master_side(config, open_store(config))
    tasks, storage, master = system.tasks, system.storage, system.master
    nobody = ServiceLocator(StaticRegistry({"storageAddress": f"127.0.0.1:{free_port()}"}), 60)
    storage_down = StorageClient(ServiceClient(nobody, "storageAddress", Transport(), 2))
    no_waiting = threading.Event()
    no_waiting.set()
    image = png_bytes((5, 4))
    task = tasks.create("swap")
    storage.send(Folder.WORKING, task.id, image)
    tasks.enqueue(task.id)

    loop = TaskLoop(master, storage_down, _swap, ImageRejected, 0, 5, 5, no_waiting)
    for _ in range(config.max_attempts + 2):
        claim = master.claim(0, 5)
        assert claim is not None and claim.task_id == task.id
        loop.handle(claim)
    waiting = tasks.get(task.id)
    assert waiting.state == State.QUEUED and waiting.attempts == 0

    TaskLoop(master, storage, _swap, ImageRejected, 0, 5, 5, no_waiting).handle(master.claim(0, 5))
    assert tasks.get(task.id).state == State.FINISHED
    version = result_version(tasks.get(task.id).lease_token)
    result = b"".join(storage.open(Folder.FINISHED, task.id, version).stream(None))
    assert same_pixels(decode(result), swapped(image))


@pytest.mark.chaos
def test_jobs_survive_killed_replicas_and_a_postgresql_crash(tmp_path, postgres_server, capsys):
    """Two database and two storage replicas on PostgreSQL and one data directory: one of
    each killed, and PostgreSQL crash-restarted, while jobs run."""
    seed = int(os.environ.get("DARKROOM_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    settings = ChaosSettings(jobs=120, corrupt=4, seconds=90, seed=seed, kill_interval=(1.5, 3))
    report = run_replicated_chaos(settings, tmp_path, postgres_server)
    with capsys.disabled():
        print("\n" + report.summary())
    assert not report.problems(), report.summary()
    assert report.submitted == settings.jobs
    assert report.finished == settings.jobs - settings.corrupt
    assert report.failed == settings.corrupt
    assert set(report.kills) == {"database", "storage", "postgresql"}
