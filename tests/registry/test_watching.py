"""The watch loop alone: a scripted source and a recording handler, no API server."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from darkroom.registry.apierrors import ApiRefused
from darkroom.registry.watching import Snapshot, WatchPolicy, watch_configmap

NS = "darkroom"
NAME = "darkroom-registry"


class ScriptedSource:
    """A ConfigMapSource playing a script: each watch() takes the next step."""

    namespace, name = NS, NAME

    def __init__(self, steps: list[Any], stop: threading.Event) -> None:
        self.steps = steps
        self.stop = stop
        self.calls: list[str] = []

    def list(self) -> tuple[Snapshot | None, str]:
        self.calls.append("list")
        version = str(len(self.calls))
        return Snapshot({"k": version}, version), version

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
        self.calls.append(f"watch {version}")
        if not self.steps:
            self.stop.set()
            return iter(())
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        return iter(step)


class RecordingHandler:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_listed(self, snapshot: Snapshot | None) -> None:
        self.seen.append(("listed", snapshot.version if snapshot else ""))

    def on_event(self, kind: str, snapshot: Snapshot) -> None:
        self.seen.append((kind, snapshot.version))

    def on_connected(self) -> None:
        pass

    def on_broken(self, error: Exception) -> None:
        self.seen.append(("broken", type(error).__name__))


def modified(version: str) -> dict[str, Any]:
    return {"type": "MODIFIED", "object": {"metadata": {"resourceVersion": version}}}


def test_loop_resumes_after_normal_end_and_lists_again_after_gone():
    stop = threading.Event()
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "8"}}}
    source = ScriptedSource([[modified("7"), bookmark], [gone]], stop)
    handler = RecordingHandler()
    waits: list[float] = []
    policy = WatchPolicy(min_stream_seconds=0.0)

    watch_configmap(source, handler, policy, stop, wait=waits.append)

    assert source.calls == ["list", "watch 1", "watch 8", "list", "watch 4"]
    assert handler.seen == [("listed", "1"), ("MODIFIED", "7"), ("listed", "4")]
    assert waits == []


def test_loop_backs_off_exponentially_up_to_the_cap_and_never_loops_hot():
    stop = threading.Event()
    error = ApiRefused(500, "Internal Server Error")  # as the adapter raises it
    # Four failures, then four streams that end at once without an event (as a proxy that
    # drops idle connections would), then a productive stream.
    source = ScriptedSource([error] * 4 + [[]] * 4 + [[modified("9")]], stop)
    handler = RecordingHandler()
    waits: list[float] = []
    policy = WatchPolicy(backoff_initial_seconds=1, backoff_factor=2, backoff_max_seconds=4)

    watch_configmap(source, handler, policy, stop, wait=waits.append)

    assert waits == [1, 2, 4, 4, 4, 4, 4, 4]
    assert source.calls[-1] == "watch 9"  # progress kept; never listed again
    assert source.calls.count("list") == 1


def test_the_loop_and_its_errors_need_no_kubernetes_client():
    script = (
        "import sys, darkroom.registry.watching, darkroom.registry.apierrors\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('kubernetes', 'urllib3')))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, env=env
    )
    assert child.stdout.strip() == "[]", child.stderr
