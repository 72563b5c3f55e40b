"""One atomic write: the name only ever points at complete contents, whatever happens."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from darkroom.core.atomicfile import atomic_writer, write_atomically
from darkroom.supervisor import internal_token

# Runs in a child whose files may not grow (a full disk, as far as writes can tell).
FULL_DISK = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write then fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
from darkroom.supervisor import internal_token
try:
    internal_token(Path(sys.argv[1]))
except OSError as exc:
    sys.exit(f"failed as expected: {exc}")
"""

KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from darkroom.core.atomicfile import atomic_writer
with atomic_writer(Path(sys.argv[1])) as file:
    file.write(b"half of the new")
    file.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def run_child(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this checkout's code
    return subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=30, env=env
    )


def test_a_full_disk_between_create_and_write_leaves_no_empty_token(tmp_path: Path) -> None:
    child = run_child(FULL_DISK, str(tmp_path))
    assert "failed as expected" in child.stderr, child.stderr
    assert list(tmp_path.iterdir()) == [], "neither an empty token nor a temporary file is left"

    token = internal_token(tmp_path)  # the next start makes a whole token
    assert len(token) >= 40
    assert internal_token(tmp_path) == token
    assert (tmp_path / "internal-token").stat().st_mode & 0o777 == 0o600


def test_a_writer_killed_mid_write_leaves_the_old_contents_under_the_name(tmp_path: Path) -> None:
    path = tmp_path / "file"
    write_atomically(path, "old")
    child = run_child(KILLED_MID_WRITE, str(path))
    assert child.returncode == -9
    assert path.read_text() == "old"
    (leftover,) = [p for p in tmp_path.iterdir() if p != path]
    assert leftover.name.startswith(".tmp-")  # for a cleanup to find; never under the name


def test_a_failed_write_removes_its_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    with pytest.raises(RuntimeError), atomic_writer(path) as file:
        file.write(b"partial")
        raise RuntimeError("the upload broke")
    assert list(tmp_path.iterdir()) == []


def test_without_overwrite_the_first_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "token"
    write_atomically(path, "first", overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomically(path, "second", overwrite=False)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_an_empty_token_file_is_never_read_as_no_token(tmp_path: Path) -> None:
    """An empty file, left by a non-atomic write, used to turn the internal checks off."""
    (tmp_path / "internal-token").write_text("")
    token = internal_token(tmp_path)
    assert len(token) >= 40
    assert (tmp_path / "internal-token").read_text() == token
    assert internal_token(tmp_path) == token
