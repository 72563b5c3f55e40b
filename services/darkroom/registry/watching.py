"""Watching one ConfigMap: the list/watch loop, knowing nothing of Kubernetes' client library.

As kopf's ``watching.py``: list the one ConfigMap to get a resourceVersion, watch from it with
a server-side ``timeoutSeconds`` and a client read timeout, watch again from the last version
seen after a normal end, list again after 410 Gone, back off (capped, exponential) after
failures. The retry policy is passed in, the API comes in as a ``ConfigMapSource`` (``kubeapi``
is the real one) and what is done with each event is the ``WatchHandler``'s business (the
store's, in ``configmap``), so each half is testable alone.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from darkroom.registry.apierrors import Gone, KubeApiError, NotFound, describe

logger = logging.getLogger(__name__)


class WatchError(Exception):
    """The watch stream reported an error other than 410 Gone."""


@dataclasses.dataclass(frozen=True)
class WatchPolicy:
    """Timeouts and retry pacing of the watch loop and of writes; defaults suit a cluster."""

    # The API server ends each watch normally after this long (``timeoutSeconds``).
    server_timeout_seconds: int = 60
    # Longest silence tolerated on a socket read: a watch connection that died without a
    # FIN would otherwise hang forever. Must exceed server_timeout_seconds.
    client_timeout_seconds: float = 90.0
    connect_timeout_seconds: float = 5.0
    # Read timeout of lists, reads and writes.
    request_timeout_seconds: float = 10.0
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    backoff_factor: float = 2.0
    # A watch that ends sooner than this without any event counts as a failure, so a server
    # (or proxy) that closes streams at once is not hammered.
    min_stream_seconds: float = 1.0
    # Tries of one write when its precondition keeps conflicting.
    write_attempts: int = 5

    def backoff(self, failures: int) -> float:
        """Delay before the next try after ``failures`` failures in a row (at least 1)."""
        exponent = max(0, failures - 1)
        return min(
            self.backoff_max_seconds, self.backoff_initial_seconds * self.backoff_factor**exponent
        )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The parts of the ConfigMap the registry keeps."""

    data: Mapping[str, str]
    version: str
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, configmap: Mapping[str, Any]) -> Snapshot:
        meta = configmap.get("metadata") or {}
        return cls(
            data=dict(configmap.get("data") or {}),
            version=meta.get("resourceVersion") or "",
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )


class ConfigMapSource(Protocol):
    """What the watch loop needs from the API: list one ConfigMap, watch it."""

    namespace: str
    name: str

    def list(self) -> tuple[Snapshot | None, str]:
        """The ConfigMap (None when absent) and the list's resourceVersion."""
        ...

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
        """Open a watch from ``version`` (raises if refused); iterate its raw events."""
        ...


class WatchHandler(Protocol):
    """What is done with what the loop sees."""

    def on_listed(self, snapshot: Snapshot | None) -> None: ...

    def on_event(self, kind: str, snapshot: Snapshot) -> None: ...

    def on_connected(self) -> None: ...

    def on_broken(self, error: Exception) -> None: ...


def watch_configmap(
    source: ConfigMapSource,
    handler: WatchHandler,
    policy: WatchPolicy,
    stop: threading.Event,
    wait: Callable[[float], object] | None = None,
) -> None:
    """List, then watch from the list's version, until ``stop`` is set.

    After a normal end the watch resumes from the last version seen; after 410 Gone it lists
    again; after a failure (or a suspiciously short empty stream) it waits ``policy.backoff``.
    ``wait`` defaults to ``stop.wait``, so a stop cuts a backoff short.
    """
    wait = wait or stop.wait
    extra = {"namespace": source.namespace, "configmap": source.name}
    version: str | None = None
    failures = 0
    while not stop.is_set():
        started, received = time.monotonic(), 0
        try:
            if version is None:
                version = _relist(source, handler)
            # Progress is kept event by event, so a stream that fails resumes where it got to.
            for reached in _watch(source, handler, version, stop):
                version, received = reached, received + 1
        except Gone as exc:
            logger.info("watch: version too old, listing again", extra={**extra, "error": str(exc)})
            version = None
        except Exception as exc:
            if stop.is_set():
                return
            failures += 1
            handler.on_broken(exc)
            delay = policy.backoff(failures)
            logger.warning(
                "watch: failed, retrying",
                extra={**extra, "error": describe(exc), "delay_seconds": delay},
                exc_info=not isinstance(exc, (KubeApiError, WatchError)),
            )
            wait(delay)
            continue
        if received or time.monotonic() - started >= policy.min_stream_seconds:
            failures = 0
        elif not stop.is_set():
            failures += 1
            wait(policy.backoff(failures))


def _relist(source: ConfigMapSource, handler: WatchHandler) -> str:
    try:
        snapshot, version = source.list()
    except NotFound:
        handler.on_listed(None)  # absent; still fail, to list again after a backoff
        raise
    handler.on_listed(snapshot)
    logger.debug(
        "watch: listed",
        extra={
            "namespace": source.namespace,
            "configmap": source.name,
            "resource_version": version,
        },
    )
    return version


def _watch(
    source: ConfigMapSource, handler: WatchHandler, version: str, stop: threading.Event
) -> Iterator[str]:
    """Apply the events of one watch request; yield the version reached after each one.

    A too-old version ends in Gone either way: some servers refuse the watch with 410 (the
    source raises it), others send an ERROR event with code 410.
    """
    events = source.watch(version)
    handler.on_connected()
    for raw in events:
        kind, obj = raw.get("type"), raw.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(410, obj.get("message", "Gone"))
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            handler.on_event(kind, Snapshot.from_json(obj))
        elif kind != "BOOKMARK":  # a bookmark only moves the version on
            logger.warning("watch: ignoring an unknown event", extra={"event_type": kind})
        version = (obj.get("metadata") or {}).get("resourceVersion") or version
        yield version
        if stop.is_set():
            return
