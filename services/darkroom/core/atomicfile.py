"""Writing a file so that its name only ever points at complete contents.

The bytes go to a temporary file in the same directory (a rename never crosses file systems),
are flushed to disk, and only then does the file take its name; the directory is flushed last,
since the rename is durable only once the directory entry is on disk. A crash or a full disk at
any point leaves either the old file or the new one under the name, never a partial or empty
one; the temporary file is removed on a failure (and a killed process's leftover carries
``prefix``, so a cleanup can find it).

Several processes may write into one directory (storage replicas on a shared volume): a writer
asked to ``lock`` holds an exclusive ``flock`` on its temporary file until the file has its
name, so ``remove_abandoned`` deletes only the leftovers of writers that are gone (the kernel
drops a dead process's locks), never a live upload of another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"
# Every role's umask: what it makes is its owner's only (data directory 0700, files 0600),
# since the data is every user's images and the ids that read them.
OWNER_ONLY_UMASK = 0o077


def make_private_directory(path: Path) -> None:
    """``path`` and any missing parents, readable by their owner only (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_writer(
    path: Path, *, prefix: str = TEMP_PREFIX, overwrite: bool = True, lock: bool = False
) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents into; it takes the name on a clean exit.

    With ``overwrite=False`` an existing ``path`` is kept and FileExistsError raised (the name
    is taken with a hard link, which never replaces: two racing writers cannot both win).
    With ``lock`` the temporary file is locked until it has its name (see ``remove_abandoned``).
    The file is created readable and writable by its owner only (0600).
    """
    fd, temp = _temporary_file(path.parent, prefix, lock)
    try:
        # The file stays open (and locked) until it has its name: a cleanup in another process
        # must not take an unlocked temporary file between the close and the rename.
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
            if overwrite:
                os.replace(temp, path)
            else:
                os.link(temp, path)
                temp.unlink()
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _temporary_file(directory: Path, prefix: str, lock: bool) -> tuple[int, Path]:
    while True:
        fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
        if not lock:
            return fd, Path(name)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _is_named(fd, Path(name)):
            return fd, Path(name)
        # A cleanup took the file between its creation and the lock: make another.
        os.close(fd)


def _is_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def remove_abandoned(directory: Path, prefix: str, *, older_than: float | None = None) -> int:
    """Delete the temporary files ``prefix*`` in ``directory`` that no writer holds locked.

    Only for files written with ``lock=True``. ``older_than`` (epoch seconds) spares files
    written since: on NFS the kernel emulates ``flock`` with POSIX locks, which do not conflict
    within one process, so a sweep running beside its own process's writers needs an age too.
    Returns how many files this call removed (a file another cleanup took first is not counted).
    """
    removed = 0
    for path in directory.glob(f"{prefix}*"):
        try:
            fd = os.open(path, os.O_RDWR)  # NFS locks need a writable descriptor
        except FileNotFoundError:
            continue  # renamed to its name, or removed by another cleanup
        except (IsADirectoryError, PermissionError):
            continue  # not a temporary file this process wrote: not for it to judge
        try:
            if older_than is not None and os.fstat(fd).st_mtime >= older_than:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # under the lock: a writer that locks later sees it gone
                removed += 1
        finally:
            os.close(fd)
    return removed


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (for files others open)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def write_atomically(
    path: Path, data: bytes | str, *, prefix: str = TEMP_PREFIX, overwrite: bool = True
) -> None:
    """Replace (or with ``overwrite=False``, create) ``path`` with ``data``, atomically."""
    with atomic_writer(path, prefix=prefix, overwrite=overwrite) as file:
        file.write(data.encode() if isinstance(data, str) else data)


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename or link in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
