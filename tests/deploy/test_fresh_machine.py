"""The README's two commands, as written there, on a fresh Debian 12 machine (a podman container).

The machine is debootstrap's minbase of bookworm without Python (scripts/make-base-image.sh
--bare). As on a user's machine, python3 comes first, from apt (this machine's apt sources, mounted
read-only), then the checkout's files (`git ls-files`: no venv, no caches). The README's first
command, read from the README's first sh block, runs as written until the system answers: the
chart's smoke test uploads a PNG, waits until it is ready, downloads the result and checks every
pixel. A user who is not root is told the apt-get command that makes venvs work. Then the second
command's install step (DARKROOM_TEST_INSTALL_ONLY=1) must succeed, with every version the pinned
one, chromium and helm installed.

pip in the container gets this machine's pip settings (`pip config list`: index, find-links, CA
bundle, timeouts), the local paths they name mounted read-only. Needs root and podman, takes
3-6 minutes, so it runs only with DARKROOM_CONTAINER_TESTS=1 (as .ci/run sets). Ubuntu 24.04 is
not covered: no Ubuntu mirror to debootstrap from is reachable where CI runs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from harness.launch import wait_until
from support.pins import normal_name, pinned_versions

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONTAINER = f"darkroom-fresh-{os.getpid()}"
BUDGET_SECONDS = 900
SMOKE_PASSED = "every pixel is (G, R, B) with alpha kept"
HOST_MOUNTS = "/host"  # where files named by this machine's pip settings appear in the container
APT_CONFIG = ("/etc/apt/sources.list", "/etc/apt/sources.list.d", "/etc/apt/apt.conf.d",
              "/etc/apt/trusted.gpg.d", "/etc/apt/keyrings")  # fmt: skip
CA_BUNDLE_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
# podman set up as scripts/make-base-image.sh does it (runc, ulimits), unless set otherwise.
ENVIRONMENT = {"CONTAINERS_CONF": "/var/tmp/darkroom-containers.conf", **os.environ}

containers_on = pytest.mark.skipif(
    os.environ.get("DARKROOM_CONTAINER_TESTS") != "1",
    reason="container tests are off: set DARKROOM_CONTAINER_TESTS=1 (needs root and podman)",
)


def readme_commands() -> list[str]:
    """The commands of the README's first sh block, the fresh-machine one; comments dropped."""
    match = re.search(r"^```sh\n(.*?)^```", README.read_text(), re.DOTALL | re.MULTILINE)
    assert match, "README.md has no ```sh block"
    lines = (line.strip() for line in match.group(1).splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_gives_two_commands_and_ci_runs_the_second() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


# --- the container -------------------------------------------------------------------------


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            pytest.fail(f"out of time ({BUDGET_SECONDS} s)")
        return left


def run(*command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
        env=ENVIRONMENT,
    )  # fmt: skip


def checkout_tarball(path: Path) -> None:
    """This checkout's files as git knows them (tracked, or new and not ignored)."""
    listed = run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", timeout=30)
    assert listed.returncode == 0, listed.stderr
    names = sorted({name for name in listed.stdout.split("\0") if (ROOT / name).is_file()})
    with tarfile.open(path, "w") as tar:
        for name in names:
            tar.add(ROOT / name, arcname=name)


def _host_path(token: str) -> str | None:
    path = token.removeprefix("file://")
    return path if path.startswith("/") and os.path.exists(path) else None


def host_settings(work: Path) -> tuple[dict[str, str], list[str]]:
    """This machine's pip settings and CA bundle as environment variables, and the volumes that
    give the container the paths they name and this machine's apt sources."""
    listed = run(sys.executable, "-m", "pip", "config", "list", timeout=30)
    settings: dict[str, str] = {}
    environment_last = sorted(listed.stdout.splitlines(), key=lambda line: line.startswith(":env:"))
    for line in environment_last:
        key, _, value = line.partition("=")
        name = "PIP_" + key.split(".", 1)[1].upper().replace("-", "_")
        settings[name] = value.strip("'\"")
    settings.update({n: os.environ[n] for n in CA_BUNDLE_VARIABLES if os.environ.get(n)})
    if "PIP_CERT" in settings:
        settings.setdefault("SSL_CERT_FILE", settings["PIP_CERT"])
    # Directories keep their paths, and a local index comes with its parent (its pages link to
    # ../../files/...); files (CA bundle, constraints) go under /host, not to shadow the
    # container's own /etc.
    volumes: set[str] = set()
    for name, value in settings.items():
        tokens = value.split()
        for n, token in enumerate(tokens):
            if (path := _host_path(token)) and os.path.isdir(path):
                if name.endswith("INDEX_URL"):
                    path = os.path.dirname(path.rstrip("/"))
                volumes.add(f"{path}:{path}:ro")
            elif path:
                volumes.add(f"{path}:{HOST_MOUNTS}{path}:ro")
                tokens[n] = token.replace(path, HOST_MOUNTS + path, 1)
        settings[name] = " ".join(tokens)
    # This machine's apt sources, as copies: packages write there (postgresql-common adds a
    # file to apt.conf.d), which a read-only mount would fail and a writable one would change.
    for path in filter(os.path.exists, APT_CONFIG):
        copy = work / "apt" / path.removeprefix("/etc/apt/")
        copy.parent.mkdir(parents=True, exist_ok=True)
        if os.path.isdir(path):
            shutil.copytree(path, copy, symlinks=True)
        else:
            shutil.copy2(path, copy)
        volumes.add(f"{copy}:{path}")
    if not os.path.exists("/etc/apt/sources.list"):  # the container's own would add a second
        (work / "sources.list").write_text("")
        volumes.add(f"{work / 'sources.list'}:/etc/apt/sources.list:ro")
    return settings, sorted(volumes)


FRESH_MACHINE = """\
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
echo "== apt-get install python3 (all a fresh machine has)"
apt-get update -qq
apt-get install -y -qq python3 >/dev/null
mkdir /src
tar -xf /in/checkout.tar -C /src
cd /src
echo "== command 1 as a user who is not root, without python3-venv"
if out=$(setpriv --reuid=65534 --regid=65534 --clear-groups \\
    env HOME=/tmp DARKROOM_VENV=/tmp/user-venv bash -c {command} 2>&1); then
  echo "FRESH-FAIL: made a venv without python3-venv: $out"
  exit 1
fi
grep -F "sudo apt-get install python3-venv" <<<"$out" || {{ echo "FRESH-FAIL: $out"; exit 1; }}
echo "== command 1 as root: {command}"
exec bash -c {command}
"""


@pytest.mark.containers
@containers_on
@pytest.mark.timeout(BUDGET_SECONDS + 60)
def test_readme_commands_work_on_a_fresh_debian(tmp_path: Path) -> None:
    deadline = Deadline(BUDGET_SECONDS)
    run_command, test_command = readme_commands()
    made = run(str(ROOT / "scripts" / "make-base-image.sh"), "--bare", timeout=deadline.left())
    assert made.returncode == 0, made.stderr[-3000:]
    image = made.stdout.split()[-1]

    checkout_tarball(tmp_path / "checkout.tar")
    (tmp_path / "fresh-machine.sh").write_text(
        FRESH_MACHINE.format(command=shlex.quote(run_command))
    )
    settings, volumes = host_settings(tmp_path)
    options = [f"--volume={tmp_path}:/in:ro", *(f"--volume={v}" for v in volumes)]
    options += [f"--env={name}={value}" for name, value in settings.items()]
    run("podman", "rm", "-f", CONTAINER, timeout=60)
    started = run("podman", "run", "-d", "--name", CONTAINER, *options, image,
                  "bash", "/in/fresh-machine.sh", timeout=120)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        _wait_until_the_system_answers(deadline)
        smoke = run("podman", "exec", CONTAINER, "/src/.venv/bin/python",
                    "/src/helm/darkroom/files/smoke_test.py", "http://127.0.0.1:3003",
                    "--timeout", "120", timeout=min(deadline.left(), 180))  # fmt: skip
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert SMOKE_PASSED in smoke.stdout

        installed = run("podman", "exec", "--workdir=/src", "--env=DARKROOM_TEST_INSTALL_ONLY=1",
                        CONTAINER, "bash", "-c", test_command, timeout=deadline.left())  # fmt: skip
        assert installed.returncode == 0, (installed.stdout + installed.stderr)[-4000:]
        _check_the_test_install(deadline)
    except BaseException:
        logs = run("podman", "logs", "--tail", "60", CONTAINER, timeout=30)
        print(f"----- {CONTAINER}'s output:\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        raise
    finally:
        run("podman", "rm", "-f", "-t", "5", CONTAINER, timeout=60)


def _wait_until_the_system_answers(deadline: Deadline) -> None:
    probe = "import urllib.request as u; u.urlopen('http://127.0.0.1:3003/readyz', timeout=3)"

    def answers() -> bool:
        state = run("podman", "inspect", "-f", "{{.State.Running}}", CONTAINER, timeout=30)
        assert state.stdout.strip() == "true", f"{CONTAINER} exited before the system answered"
        answer = run("podman", "exec", CONTAINER, "/src/.venv/bin/python", "-c", probe, timeout=30)
        return answer.returncode == 0

    wait_until(answers, deadline.left(), "the master's /readyz in the container", interval=2)


def _check_the_test_install(deadline: Deadline) -> None:
    helm = run("podman", "exec", CONTAINER, "/src/.venv/bin/helm", "version", "--short",
               timeout=30)  # fmt: skip
    assert helm.stdout.startswith("v3.19.0"), helm.stdout + helm.stderr
    chromium = run("podman", "exec", CONTAINER, "test", "-x", "/usr/bin/chromium", timeout=30)
    assert chromium.returncode == 0, "chromium was not installed for the browser tests"
    frozen = run("podman", "exec", CONTAINER, "/src/.venv/bin/python", "-m", "pip", "freeze",
                 "--exclude-editable", timeout=deadline.left())  # fmt: skip
    installed = dict(
        (normal_name(name), version)
        for name, _, version in (line.partition("==") for line in frozen.stdout.splitlines())
    )
    pins = pinned_versions()
    wrong = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert not wrong, f"not the pinned versions (pinned, installed): {wrong}"
