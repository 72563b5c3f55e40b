"""The storage reached through its API and on its volume: the same files, the same answers."""

from __future__ import annotations

import errno
import os

import pytest

from darkroom.contract.errors import ServiceError, ServiceNotFound
from darkroom.contract.folders import Folder, result_version
from darkroom.core.ids import new_task_id
from darkroom.core.imagefiles import TEMP_PREFIX, FileImageStore
from darkroom.storage.app import create_app
from darkroom.storage.client import Storage, StorageClient, VolumeStorage, storage_for
from support.inprocess import STORAGE_ACCESS, service_client, storage_by

LIMIT = 1000


class FullDisk(FileImageStore):
    def write(self, folder, task_id, chunks, limit, version=None):
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def small_limits(config):
    return config.replace(max_upload_bytes=LIMIT, max_result_bytes=2 * LIMIT)


@pytest.fixture(params=STORAGE_ACCESS)
def access(request) -> str:
    return request.param


@pytest.fixture
def storage(access, small_limits) -> Storage:
    return storage_by(access, small_limits)


def test_an_image_sent_is_read_back_whole_or_streamed_with_its_type_and_length(storage, png):
    task_id = new_task_id()
    storage.send(Folder.WORKING, task_id, iter([png[:10], png[10:]]), size=len(png))
    with storage.open(Folder.WORKING, task_id) as answer:
        assert answer.headers["Content-Type"] == "image/png"
        assert answer.headers["Content-Length"] == str(len(png))
        assert answer.content == png
    with storage.open(Folder.WORKING, task_id) as answer:
        assert b"".join(answer.stream(7)) == png
    assert storage.exists(Folder.WORKING, task_id)
    assert not storage.exists(Folder.FINISHED, task_id)


def test_results_are_kept_by_version_and_deleted_by_version(storage, png, small_limits):
    task_id, lease = new_task_id(), "a-lease"
    version = result_version(lease)
    storage.send(Folder.FINISHED, task_id, png, version=version)
    assert (small_limits.data_dir / "finished" / f"{task_id}.{version}").read_bytes() == png
    assert storage.exists(Folder.FINISHED, task_id, version)
    assert storage.delete(Folder.FINISHED, task_id, version)
    assert not storage.delete(Folder.FINISHED, task_id, version)
    assert not storage.exists(Folder.FINISHED, task_id, version)


def test_a_missing_image_is_the_storages_404(storage):
    with pytest.raises(ServiceNotFound) as raised:
        storage.open(Folder.WORKING, new_task_id())
    assert (raised.value.service, raised.value.status) == ("storage", 404)
    assert raised.value.description == "No working image for this id."


def test_an_image_past_its_folders_limit_is_413_and_leaves_nothing(storage, small_limits):
    task_id = new_task_id()
    storage.send(Folder.FINISHED, task_id, iter([b"\x89PNG" + b"x" * LIMIT]))  # results: 2x
    with pytest.raises(ServiceError) as raised:
        storage.send(Folder.WORKING, task_id, iter([b"\x89PNG", b"x" * LIMIT]))
    assert raised.value.status == 413
    assert raised.value.description == f"Images may be at most {LIMIT} bytes."
    with pytest.raises(ServiceError) as raised:  # a size given is refused before it is sent
        storage.send(Folder.WORKING, task_id, iter(()), size=LIMIT + 1)
    assert raised.value.status == 413
    assert list((small_limits.data_dir / "working").iterdir()) == []


def test_a_full_volume_is_507_saying_so(access, small_limits, png):
    storage = storage_by(access, small_limits, FullDisk(small_limits.data_dir))
    with pytest.raises(ServiceError) as raised:
        storage.send(Folder.WORKING, new_task_id(), png)
    assert raised.value.status == 507
    assert raised.value.description == "The storage volume has no space left; nothing was stored."


def test_storage_for_takes_the_volume_only_when_this_role_mounts_it(config):
    service = service_client(create_app(config, FileImageStore(config.data_dir)), "k", "s:1")
    assert isinstance(storage_for(config, service), StorageClient)
    (config.data_dir / "volume").mkdir()
    mounted = config.replace(storage_volume=str(config.data_dir / "volume"))
    leftover = config.data_dir / "volume" / "working" / f"{TEMP_PREFIX}crashed"
    leftover.parent.mkdir()
    leftover.write_bytes(b"partial")
    assert isinstance(storage_for(mounted, service), VolumeStorage)
    assert (config.data_dir / "volume" / "finished").is_dir()
    assert leftover.exists(), "the storage's start and sweeps remove leftovers, not this role's"


def test_a_volume_that_is_not_there_or_not_writable_stops_the_role_saying_why(config):
    service = service_client(create_app(config, FileImageStore(config.data_dir)), "k", "s:1")
    missing = config.replace(storage_volume=str(config.data_dir / "not-mounted"))
    with pytest.raises(ValueError, match=r"not-mounted: no such directory; mount the storage"):
        storage_for(missing, service)
    assert not (config.data_dir / "not-mounted").exists(), "no folder made in its place"
    read_only = config.data_dir / "read-only"
    read_only.mkdir(mode=0o500)
    try:
        if os.access(read_only, os.W_OK):  # root writes anywhere: a file stands for the folder
            read_only.rmdir()
            read_only.mkdir()
            (read_only / "working").write_text("not a folder")
        with pytest.raises(ValueError, match=r"read-only: cannot be used \(.*\); mount the"):
            storage_for(config.replace(storage_volume=str(read_only)), service)
    finally:
        read_only.chmod(0o700)
