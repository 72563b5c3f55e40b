"""Image files on a volume, behind an interface an S3-compatible store can implement too.

Writes stream through ``core.atomicfile`` (a temporary file in the target folder, fsync, then
rename): a reader never sees a partial file, and an interrupted upload leaves nothing behind.

Several storage processes may share one root (replicas on a ReadWriteMany volume): nothing is
kept in memory, every existence check and listing reads the disk, temporary names are random,
each upload's temporary file is locked while it is written (so a starting replica removes the
leftovers of crashed ones only, never another replica's upload in progress), and sweeps that
run at once in several replicas ignore files another one removed first.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from darkroom.contract.folders import RESULT_VERSION_PATTERN, Folder
from darkroom.core.atomicfile import atomic_writer, make_private_directory, remove_abandoned
from darkroom.core.ids import is_task_id
from darkroom.core.imagetypes import SNIFF_BYTES, sniff_media_type

TEMP_PREFIX = ".upload-"
# A temporary file left this long unwritten is a crashed upload's even where locks cannot tell
# (NFS, within one process): a live upload writes every chunk, and the server closes a
# connection idle for twice DARKROOM_HTTP_TIMEOUT_SECONDS.
ABANDONED_AFTER_SECONDS = 3600.0


class TooLarge(Exception):
    pass


class ImageNotFound(LookupError):
    pass


class StoredImage:
    """An open stored image: its stream, size and media type."""

    def __init__(self, stream: BinaryIO, size: int, media_type: str) -> None:
        self.stream, self.size, self.media_type = stream, size, media_type


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
    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self._root = root
        self._clock = clock
        for folder in Folder:
            make_private_directory(root / folder)
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
