"""The images volume: image files by folder and task id, behind an interface an S3-compatible
store can implement too. The storage role serves it over HTTP; a role that mounts the same
volume (``DARKROOM_STORAGE_VOLUME``: every role of ``darkroom up``) reads and writes it here
directly (``darkroom.storage.client.VolumeStorage``), with the same limits and answers.

Writes stream through ``core.atomicfile`` (a temporary file in the target folder, fsync, then
rename): a reader never sees a partial file, and an interrupted upload leaves nothing behind.

Several processes may share one root (storage replicas on a ReadWriteMany volume, the roles of
``darkroom up``): nothing is kept in memory, every existence check and listing reads the disk,
temporary names are random, each upload's temporary file is locked while it is written (so a
starting process removes the leftovers of crashed ones only, never another one's upload in
progress), and sweeps that run at once in several replicas ignore files another one removed
first.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO, Protocol

from darkroom.contract.errors import ServiceError, ServiceNotFound
from darkroom.contract.folders import RESULT_VERSION_PATTERN, Folder
from darkroom.core.atomicfile import atomic_writer, make_private_directory, remove_abandoned
from darkroom.core.config import Config
from darkroom.core.errors import DISK_FULL_ERRNOS
from darkroom.core.ids import is_task_id
from darkroom.core.imagetypes import SNIFF_BYTES, sniff_media_type
from darkroom.core.transport import STREAM_CHUNK_BYTES

TEMP_PREFIX = ".upload-"
# A temporary file left this long unwritten is a crashed upload's even where locks cannot tell
# (NFS, within one process): a live upload writes every chunk, and the server closes a
# connection idle for twice DARKROOM_HTTP_TIMEOUT_SECONDS.
ABANDONED_AFTER_SECONDS = 3600.0


SERVICE = "storage"  # the service whose answers these are, whichever way the volume is reached


class TooLarge(Exception):
    pass


class ImageNotFound(LookupError):
    pass


def folder_limits(config: Config) -> dict[Folder, int]:
    """The largest image each folder takes: an upload, a result (larger: a JPEG becomes a PNG)."""
    return {Folder.WORKING: config.max_upload_bytes, Folder.FINISHED: config.max_result_bytes}


def unknown_image(folder: Folder) -> ServiceNotFound:
    return ServiceNotFound(SERVICE, 404, "Unknown image", f"No {folder} image for this id.")


def image_too_large(limit: int) -> ServiceError:
    return ServiceError(SERVICE, 413, "Image too large", f"Images may be at most {limit} bytes.")


def volume_full() -> ServiceError:
    return ServiceError(
        SERVICE, 507, "Disk full", "The storage volume has no space left; nothing was stored."
    )


class StoredImage:
    """An open stored image: its stream, size and media type."""

    def __init__(self, stream: BinaryIO, size: int, media_type: str) -> None:
        self.stream, self.size, self.media_type = stream, size, media_type


class ImageAnswer(Protocol):
    """A stored image as its reader gets it: the storage's HTTP answer
    (``core.transport.Response``) or the file itself (``FileAnswer``). Close it when done."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    def stream(self, chunk_bytes: int | None = ...) -> Iterator[bytes]: ...

    def close(self) -> None: ...

    def __enter__(self) -> ImageAnswer: ...

    def __exit__(self, *exc: object) -> None: ...


class FileAnswer:
    """A stored image read from the volume, answering as the storage's response would."""

    def __init__(self, image: StoredImage) -> None:
        self._file = image.stream
        self.headers = {"Content-Type": image.media_type, "Content-Length": str(image.size)}

    @property
    def content(self) -> bytes:
        return self._file.read()

    def stream(self, chunk_bytes: int | None = STREAM_CHUNK_BYTES) -> Iterator[bytes]:
        while chunk := self._file.read(chunk_bytes or STREAM_CHUNK_BYTES):
            yield chunk

    def detach(self) -> BinaryIO:
        """The file itself, to be read in place (no copy) and closed by the caller."""
        file, self._file = self._file, io.BytesIO()
        return file

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FileAnswer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageStore(Protocol):
    """Images by folder, task id and an optional version (``contract.folders.result_version``)."""

    def write(
        self,
        folder: Folder,
        task_id: str,
        chunks: Iterator[bytes],
        limit: int,
        version: str | None = None,
    ) -> int:
        """Store the image atomically; returns its size. Raises TooLarge past ``limit`` bytes."""
        ...

    def open(self, folder: Folder, task_id: str, version: str | None = None) -> StoredImage: ...

    def delete(self, folder: Folder, task_id: str, version: str | None = None) -> bool: ...

    def purge(self, older_than: float) -> int:
        """Delete images last written before ``older_than`` (epoch seconds)."""
        ...


class FileImageStore:
    """The images under ``root``. A storage process starting removes the leftovers of crashed
    uploads (``remove_leftovers``), a listing of both folders; a master or worker that only
    reaches the volume leaves that to the storage (its start and its sweeps), so that its own
    start, and each loop process's, does not list a volume of millions of files."""

    def __init__(
        self, root: Path, clock: Callable[[], float] = time.time, remove_leftovers: bool = True
    ) -> None:
        self._root = root
        self._clock = clock
        for folder in Folder:
            make_private_directory(root / folder)
        if remove_leftovers:
            self.remove_partial_uploads()

    def _path(self, folder: Folder, task_id: str, version: str | None) -> Path:
        # Both are validated by the API too; checking here keeps every path inside the root.
        if not is_task_id(task_id):
            raise ValueError(f"not a task id: {task_id!r}")
        if version is None:
            return self._root / folder / task_id
        if not RESULT_VERSION_PATTERN.fullmatch(version):
            raise ValueError(f"not a result version: {version!r}")
        return self._root / folder / f"{task_id}.{version}"

    def write(
        self,
        folder: Folder,
        task_id: str,
        chunks: Iterator[bytes],
        limit: int,
        version: str | None = None,
    ) -> int:
        path = self._path(folder, task_id, version)
        with atomic_writer(path, prefix=TEMP_PREFIX, lock=True) as file:
            return _copy_bounded(chunks, file, limit)

    def open(self, folder: Folder, task_id: str, version: str | None = None) -> StoredImage:
        try:
            stream = self._path(folder, task_id, version).open("rb")
        except FileNotFoundError as exc:
            if version is None:
                raise ImageNotFound(task_id) from exc
            # A result stored before results had versions (an upgraded data directory).
            return self.open(folder, task_id)
        size = os.fstat(stream.fileno()).st_size
        media_type = sniff_media_type(stream.read(SNIFF_BYTES)) or "application/octet-stream"
        stream.seek(0)
        return StoredImage(stream, size, media_type)

    def delete(self, folder: Folder, task_id: str, version: str | None = None) -> bool:
        try:
            self._path(folder, task_id, version).unlink()
        except FileNotFoundError:
            return False
        return True

    def purge(self, older_than: float) -> int:
        """Delete old images, and temporary files abandoned long ago (by any replica)."""
        removed = 0
        for folder in Folder:
            for path in (self._root / folder).iterdir():
                # gone already: another replica's sweep, or a delete, took it first
                with contextlib.suppress(FileNotFoundError):
                    stored = is_task_id(path.name.partition(".")[0])  # ID or ID.VERSION
                    if stored and path.stat().st_mtime < older_than:
                        path.unlink()
                        removed += 1
        self.remove_partial_uploads(older_than=self._clock() - ABANDONED_AFTER_SECONDS)
        return removed

    def remove_partial_uploads(self, older_than: float | None = None) -> int:
        """Delete the temporary files of uploads whose process is gone (crashed or killed).

        Another replica's upload in progress holds its file locked and is kept.
        """
        return sum(
            remove_abandoned(self._root / folder, TEMP_PREFIX, older_than=older_than)
            for folder in Folder
        )


def _copy_bounded(chunks: Iterator[bytes], file: BinaryIO, limit: int) -> int:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the image is larger than the limit of {limit} bytes")
        file.write(chunk)
    return size


def store_image(
    store: ImageStore,
    limits: dict[Folder, int],
    folder: Folder,
    task_id: str,
    chunks: Iterator[bytes],
    version: str | None = None,
    size: int | None = None,
) -> int:
    """Write an image within its folder's limit: its size; the storage's answers as errors
    (413 past the limit, 507 when the volume is full), for every way the volume is reached.
    A ``size`` given (a Content-Length) past the limit is refused before a byte is written."""
    limit = limits[folder]
    if size is not None and size > limit:
        raise image_too_large(limit)
    try:
        return store.write(folder, task_id, chunks, limit, version)
    except TooLarge as exc:
        raise image_too_large(limit) from exc
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise volume_full() from exc
        raise


def open_image(store: ImageStore, folder: Folder, task_id: str, version: str | None) -> StoredImage:
    """The stored image; 404 as an error when there is none."""
    try:
        return store.open(folder, task_id, version)
    except ImageNotFound as exc:
        raise unknown_image(folder) from exc
