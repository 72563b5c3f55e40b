"""thumbor, the peer the thumbnail workload is measured against: its own virtual environment,
its configuration, and the server started and stopped by the benchmark.

thumbor is installed from PyPI with pip into a virtual environment of its own under
``~/.cache/darkroom-bench`` (``$XDG_CACHE_HOME`` is honoured), made once and reused, so its
dependencies (an older Pillow, tornado) never meet Darkroom's. It runs as the issue sets it up:
the Pillow engine, the file loader reading the benchmark's images, no storage and no result
storage, ``--processes 2``, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from harness.launch import HOST, Launched, Timeout, free_port, wait_until
from harness.proc import children, running, tree_cpu_seconds

THUMBOR = "thumbor==7.8.0"
INSTALL_TIMEOUT = 900.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
COMPLETE = "darkroom-bench-complete"  # written last: the venv's install finished


class PeerUnavailable(RuntimeError):
    """thumbor cannot be installed or started here; the message says why."""


def venv_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache / "darkroom-bench" / f"{THUMBOR.replace('==', '-')}-{version}"


def cached() -> Path | None:
    """The ready virtual environment, or None when none was made yet."""
    venv = venv_dir()
    return venv if (venv / COMPLETE).exists() else None


def install(log_path: Path) -> Path:
    """The virtual environment with thumbor, made now unless cached; PeerUnavailable if not."""
    if ready := cached():
        return ready
    venv = venv_dir()
    shutil.rmtree(venv, ignore_errors=True)  # what an interrupted install left
    venv.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", THUMBOR],
            [str(venv / "bin" / "thumbor"), "--version"],
        ):
            try:
                subprocess.run(step, stdout=log, stderr=log, check=True, timeout=INSTALL_TIMEOUT)
            except (OSError, subprocess.SubprocessError) as exc:
                shutil.rmtree(venv, ignore_errors=True)
                command = " ".join([Path(step[0]).name, *step[1:5]])
                said = _last_line(log_path)
                raise PeerUnavailable(f"{command} failed: {said or exc} (see {log_path})") from exc
    (venv / COMPLETE).touch()
    return venv


def _last_line(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def configuration(images_dir: Path, quality: int) -> str:
    return "\n".join(
        [
            "LOADER = 'thumbor.loaders.file_loader'",
            f"FILE_LOADER_ROOT_PATH = {str(images_dir)!r}",
            "STORAGE = 'thumbor.storages.no_storage'",
            "RESULT_STORAGE = 'thumbor.result_storages.no_storage'",
            "ENGINE = 'thumbor.engines.pil'",
            f"QUALITY = {quality}",
            "AUTO_WEBP = False",
            # Stop at once on SIGTERM instead of waiting for in-flight work.
            "MAX_WAIT_SECONDS_BEFORE_SERVER_SHUTDOWN = 0",
            "MAX_WAIT_SECONDS_BEFORE_IO_SHUTDOWN = 0",
            "",
        ]
    )


class Thumbor:
    """``thumbor --processes N`` serving the files of ``images_dir`` on a free 127.0.0.1 port."""

    def __init__(self, venv: Path, images_dir: Path, work_dir: Path, processes: int, quality: int):
        self.venv = venv
        self.port = free_port()
        self.processes = processes
        self.log_path = work_dir / "thumbor.log"
        self.config_path = work_dir / "thumbor.conf"
        self.config_path.write_text(configuration(images_dir, quality))
        self.launched: Launched | None = None

    def url(self, path: str = "") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def fit_in(self, name: str, width: int, height: int, quality: int) -> str:
        """The URL of ``name`` scaled to fit in ``width`` x ``height`` (never enlarged)."""
        return self.url(f"/unsafe/fit-in/{width}x{height}/filters:quality({quality})/{quote(name)}")

    def pillow_version(self) -> str:
        python = self.venv / "bin" / "python"
        command = [str(python), "-c", "import PIL; print(PIL.__version__)"]
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()

    def start(self) -> None:
        command = [
            str(self.venv / "bin" / "thumbor"),
            *("--ip", HOST, "--port", str(self.port), "--conf", str(self.config_path)),
            *("--processes", str(self.processes), "--log-level", "warning"),
        ]
        env = {**os.environ, "PYTHONPATH": ""}  # thumbor's own packages, not Darkroom's
        self.launched = Launched("thumbor", command, env, self.log_path, new_session=True)
        try:
            self.launched.wait_for_url(self.url("/healthcheck"), START_TIMEOUT)
        except Timeout as exc:
            self.stop()
            raise PeerUnavailable(f"thumbor did not start: {exc}") from exc

    def cpu_seconds(self) -> float:
        """CPU seconds of thumbor's parent and its forked processes so far."""
        assert self.launched is not None
        return tree_cpu_seconds(self.launched.pid)

    def stop(self) -> None:
        """SIGTERM to the whole process group (tornado's parent leaves its forks running)."""
        if self.launched is None:
            return
        group, forks = self.launched.pid, children(self.launched.pid)
        _signal_group(group, signal.SIGTERM)
        try:
            self.launched.process.wait(STOP_TIMEOUT)
            wait_until(lambda: not any(map(running, forks)), STOP_TIMEOUT, "thumbor's forks gone")
        except (Timeout, subprocess.TimeoutExpired):
            _signal_group(group, signal.SIGKILL)
            self.launched.process.wait(STOP_TIMEOUT)
        self.launched = None

    def __enter__(self) -> Thumbor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> bool:
    """Signal the process group ``group``; False when no process is left in it."""
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        return False
    return True
