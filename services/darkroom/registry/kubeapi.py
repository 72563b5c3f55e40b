"""The Kubernetes API adapter: one ConfigMap through the client library's ``CoreV1Api``.

The only module calling the API (``kubeconfig`` only builds the client). Every failure leaves
here as a ``darkroom.registry.apierrors`` type with the library's exception as its cause, and
every object as a ``Snapshot``, so nothing else needs the library's types.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from darkroom.registry.apierrors import ApiUnreachable, refused
from darkroom.registry.watching import Snapshot, WatchPolicy

# What a ConfigMapApi is built on: the typed API, or the client it would be built from.
KubeClient = k8s.CoreV1Api | k8s.ApiClient
# Failures of a call to the API server that are worth retrying later.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """The library's failures as ``apierrors`` types (the original chained as the cause)."""
    try:
        yield
    except ApiException as exc:
        raise refused(exc.status or 0, str(exc.reason), exc.body or "") from exc
    except TRANSPORT_ERRORS as exc:
        raise ApiUnreachable(str(exc)) from exc


def snapshot_of(configmap: k8s.V1ConfigMap) -> Snapshot:
    meta = configmap.metadata or k8s.V1ObjectMeta()
    return Snapshot(
        data=dict(configmap.data or {}),
        version=meta.resource_version or "",
        labels=dict(meta.labels or {}),
        annotations=dict(meta.annotations or {}),
    )


class ConfigMapApi:
    """One ConfigMap: the watch loop's ``ConfigMapSource``, and the calls writes need."""

    def __init__(
        self,
        api: KubeClient,
        namespace: str,
        name: str,
        policy: WatchPolicy,
        stop: threading.Event,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._api = k8s.CoreV1Api(api) if isinstance(api, k8s.ApiClient) else api
        self._policy = policy
        self._stop = stop
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._timeout = (policy.connect_timeout_seconds, policy.request_timeout_seconds)

    def list(self) -> tuple[Snapshot | None, str]:
        with translated_errors():
            result = self._api.list_namespaced_config_map(
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                _request_timeout=self._timeout,
            )
        items = result.items or []
        return (snapshot_of(items[0]) if items else None), result.metadata.resource_version

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
        with translated_errors():
            response = self._api.list_namespaced_config_map(
                self.namespace,
                field_selector=f"metadata.name={self.name}",
                watch=True,
                resource_version=version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._policy.server_timeout_seconds,
                _preload_content=False,
                _request_timeout=(
                    self._policy.connect_timeout_seconds,
                    self._policy.client_timeout_seconds,
                ),
            )
        with self._lock:
            # Checked under the lock so a stop() racing with this request cannot miss it.
            if self._stop.is_set():
                _close(response)
                return iter(())
            self._response = response
        return self._events(response)

    def _events(self, response: urllib3.BaseHTTPResponse) -> Iterator[dict[str, Any]]:
        try:
            with translated_errors():  # a stream cut or timed out mid-way
                for line in json_lines(response.stream(amt=None, decode_content=True)):
                    yield json.loads(line)
        finally:
            with self._lock:
                self._response = None
            _close(response)

    def interrupt(self) -> None:
        """Unblock a watch waiting for data, so a stop need not wait for the server timeout."""
        with self._lock:
            response = self._response
            sock = getattr(getattr(response, "connection", None), "sock", None)
            if sock is not None:
                with contextlib.suppress(OSError):  # already closed: nothing to unblock
                    sock.shutdown(socket.SHUT_RDWR)

    def read(self) -> Snapshot:
        with translated_errors():
            configmap = self._api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self._timeout
            )
        return snapshot_of(configmap)

    def patch(self, changes: Mapping[str, str | None], version: str) -> Snapshot:
        """Merge-patch ``data`` (None removes a key); Conflict unless it is at ``version``."""
        body = {"metadata": {"resourceVersion": version}, "data": dict(changes)}
        with translated_errors():
            configmap = self._api.patch_namespaced_config_map(
                self.name,
                self.namespace,
                body,
                _content_type="application/merge-patch+json",
                _request_timeout=self._timeout,
            )
        return snapshot_of(configmap)

    def create(self, snapshot: Snapshot) -> Snapshot:
        body = k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels=dict(snapshot.labels) or None,
                annotations=dict(snapshot.annotations) or None,
            ),
            data=dict(snapshot.data),
        )
        with translated_errors():
            configmap = self._api.create_namespaced_config_map(
                self.namespace, body, _request_timeout=self._timeout
            )
        return snapshot_of(configmap)


def json_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a chunked body into its non-empty lines, whatever the chunk boundaries."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if b"\n" not in chunk:
            continue  # a large event arrives in pieces: do not rescan it for each one
        *lines, rest = bytes(buffer).split(b"\n")
        buffer = bytearray(rest)
        yield from (line for line in lines if line.strip())
    if buffer.strip():
        yield bytes(buffer)


def _close(response: urllib3.BaseHTTPResponse) -> None:
    # Closing (not just releasing) drops a half-read connection instead of pooling it.
    response.close()
    response.release_conn()
