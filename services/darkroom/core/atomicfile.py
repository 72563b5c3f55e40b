"""Writing a file so that its name only ever points at complete contents.

The bytes go to a temporary file in the same directory (a rename never crosses file systems),
are flushed to disk, and only then does the file take its name; the directory is flushed last,
since the rename is durable only once the directory entry is on disk. A crash or a full disk at
any point leaves either the old file or the new one under the name, never a partial or empty
one; the temporary file is removed on a failure (and a killed process's leftover carries
``prefix``, so a cleanup can find it).
"""

from __future__ import annotations

import contextlib
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
    path: Path, *, prefix: str = TEMP_PREFIX, overwrite: bool = True
) -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents into; it takes the name on a clean exit.

    With ``overwrite=False`` an existing ``path`` is kept and FileExistsError raised (the name
    is taken with a hard link, which never replaces: two racing writers cannot both win).
    The file is created readable and writable by its owner only (0600).
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix)
    temp = Path(temp_name)
    try:
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
