from __future__ import annotations

import errno
import os

import pytest
from falcon import testing

from darkroom.core.ids import new_task_id
from darkroom.core.imagefiles import FileImageStore, Folder, TooLarge
from darkroom.storage.app import create_app


@pytest.fixture
def store(config) -> FileImageStore:
    return FileImageStore(config.data_dir)


@pytest.fixture
def client(config, store) -> testing.TestClient:
    return testing.TestClient(create_app(config, store))


def test_folders_created_at_start(config, store):
    assert (config.data_dir / "working").is_dir()
    assert (config.data_dir / "finished").is_dir()


def test_send_then_get_streams_with_type_and_length(client, png):
    task_id = new_task_id()
    sent = client.simulate_post("/sendImage", params={"id": task_id, "state": "working"}, body=png)
    assert sent.status_code == 201
    got = client.simulate_get("/getImage", params={"id": task_id, "state": "working"})
    assert got.status_code == 200
    assert got.content == png
    assert got.headers["content-type"] == "image/png"
    assert got.headers["content-length"] == str(len(png))
    missing = client.simulate_get("/getImage", params={"id": task_id, "state": "finished"})
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"id": "../../etc/passwd", "state": "working"}, 400),
        ({"id": "1", "state": "working"}, 400),
        ({"id": "A" * 22, "state": "tmp"}, 400),
        ({"id": "A" * 22}, 400),
        ({"state": "working"}, 400),
        ({"id": "A" * 22, "state": "working"}, 404),
    ],
)
def test_bad_requests(client, params, status):
    result = client.simulate_get("/getImage", params=params)
    assert result.status_code == status
    assert result.json["description"]


def test_too_large_is_413_and_leaves_nothing(config, client):
    task_id = new_task_id()
    body = b"x" * (config.max_upload_bytes + 1)
    result = client.simulate_post(
        "/sendImage", params={"id": task_id, "state": "working"}, body=body
    )
    assert result.status_code == 413
    assert list((config.data_dir / "working").iterdir()) == []


def test_interrupted_write_leaves_no_file(config, store):
    task_id = new_task_id()

    def broken_upload():
        yield b"partial"
        raise ConnectionError("client went away")

    with pytest.raises(ConnectionError):
        store.write(Folder.WORKING, task_id, broken_upload(), limit=100)
    with pytest.raises(TooLarge):
        store.write(Folder.WORKING, task_id, iter([b"x" * 101]), limit=100)
    assert list((config.data_dir / "working").iterdir()) == []


def test_overwrite_is_atomic_replace(store, png):
    task_id = new_task_id()
    store.write(Folder.FINISHED, task_id, iter([b"old"]), limit=100)
    store.write(Folder.FINISHED, task_id, iter([png]), limit=10_000)
    image = store.open(Folder.FINISHED, task_id)
    with image.stream:
        assert image.stream.read() == png


def test_leftover_temporary_files_removed_at_start(config, store):
    leftover = config.data_dir / "working" / ".upload-abc"
    leftover.write_bytes(b"partial")
    FileImageStore(config.data_dir)
    assert not leftover.exists()


def test_delete(client, png):
    task_id = new_task_id()
    client.simulate_post("/sendImage", params={"id": task_id, "state": "working"}, body=png)
    params = {"id": task_id, "state": "working"}
    assert client.simulate_delete("/deleteImage", params=params).status_code == 204
    assert client.simulate_delete("/deleteImage", params=params).status_code == 404


def test_purge_removes_old_images_only(config, store, png):
    old, new = new_task_id(), new_task_id()
    store.write(Folder.FINISHED, old, iter([png]), limit=10_000)
    store.write(Folder.WORKING, new, iter([png]), limit=10_000)
    os.utime(config.data_dir / "finished" / old, (1_000, 1_000))
    assert store.purge(older_than=2_000) == 1
    assert not (config.data_dir / "finished" / old).exists()
    assert (config.data_dir / "working" / new).exists()


class FullDisk(FileImageStore):
    def write(self, folder, task_id, chunks, limit, version=None):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_507(config, png):
    client = testing.TestClient(create_app(config, FullDisk(config.data_dir)))
    result = client.simulate_post(
        "/sendImage", params={"id": new_task_id(), "state": "working"}, body=png
    )
    assert result.status_code == 507
    assert "no space" in result.json["description"]
    assert "/" not in result.json["description"]


def test_a_result_from_before_versions_is_still_found(store, png):
    """An upgraded data directory keeps results stored as finished/ID, without a version."""
    task_id = new_task_id()
    store.write(Folder.FINISHED, task_id, iter([png]), limit=len(png))
    version = "0" * 32
    assert store.open(Folder.FINISHED, task_id, version).stream.read() == png
    store.write(Folder.FINISHED, task_id, iter([b"\x89PNG newer"]), limit=100, version=version)
    assert store.open(Folder.FINISHED, task_id, version).stream.read() == b"\x89PNG newer"
