"""The registry's keys in a Kubernetes ConfigMap, served from a watched in-memory copy.

Two halves, as in kopf's ``watching.py``:

- ``watch_configmap`` is the loop: list the one ConfigMap to get a resourceVersion, watch from
  it with a server-side ``timeoutSeconds`` and a client read timeout, watch again from the last
  version seen after a normal end, list again after 410 Gone, back off (capped, exponential)
  after failures. Its retry policy is passed in and it knows nothing about the registry.
- ``ConfigMapKeyValueStore`` is what is done with each event (keep the copy that ``get`` and
  ``items`` read, recreate a deleted ConfigMap) plus the writes, which patch ``data`` with the
  copy's resourceVersion as a precondition, so a write based on a stale copy conflicts (409)
  and is retried on a fresh read.

A deleted ConfigMap is recreated from the last known data, labels and annotations (keeping
Helm's ownership metadata lets a later ``helm upgrade`` adopt it). Until that succeeds
``problem()`` says the ConfigMap is missing, so the registry is never silently served stale.
The service account therefore needs get, list, watch, create and patch on configmaps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

from darkroom.registry.store import (
    InvalidEntry,
    StoreFull,
    StoreUnavailable,
    validate_key,
    validate_value,
)

if TYPE_CHECKING:
    from darkroom.core.config import Config

logger = logging.getLogger(__name__)

SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The API server refuses a ConfigMap whose keys and values add up to more bytes than this.
MAX_DATA_BYTES = 1024 * 1024
# Failures of a call to the API server that are worth retrying later.
TRANSPORT_ERRORS = (urllib3.exceptions.HTTPError, OSError)


class WatchError(Exception):
    """The watch stream reported an error other than 410 Gone."""


class _Gone(Exception):
    """The resourceVersion being watched from is too old: list again."""


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
    def from_model(cls, configmap: k8s.V1ConfigMap) -> Snapshot:
        meta = configmap.metadata or k8s.V1ObjectMeta()
        return cls(
            data=dict(configmap.data or {}),
            version=meta.resource_version or "",
            labels=dict(meta.labels or {}),
            annotations=dict(meta.annotations or {}),
        )

    @classmethod
    def from_json(cls, configmap: Mapping[str, Any]) -> Snapshot:
        meta = configmap.get("metadata") or {}
        return cls(
            data=dict(configmap.get("data") or {}),
            version=meta.get("resourceVersion") or "",
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
        )


# --- the loop ----------------------------------------------------------------------------


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
        except _Gone as exc:
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
                extra={**extra, "error": _describe(exc), "delay_seconds": delay},
                exc_info=not isinstance(exc, (ApiException, WatchError, *TRANSPORT_ERRORS)),
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
    except ApiException as exc:
        if exc.status == 404:
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
    """Apply the events of one watch request; yield the version reached after each one."""
    try:
        events = source.watch(version)
    except ApiException as exc:
        if exc.status == 410:  # some servers refuse a too-old watch outright
            raise _Gone(str(exc.reason)) from exc
        raise
    handler.on_connected()
    for raw in events:
        kind, obj = raw.get("type"), raw.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone(obj.get("message", "410 Gone"))
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            handler.on_event(kind, Snapshot.from_json(obj))
        elif kind != "BOOKMARK":  # a bookmark only moves the version on
            logger.warning("watch: ignoring an unknown event", extra={"event_type": kind})
        version = (obj.get("metadata") or {}).get("resourceVersion") or version
        yield version
        if stop.is_set():
            return


# --- the API -----------------------------------------------------------------------------


class ConfigMapApi:
    """One ConfigMap through ``CoreV1Api``: the loop's source, and the calls writes need."""

    def __init__(
        self,
        api: k8s.CoreV1Api,
        namespace: str,
        name: str,
        policy: WatchPolicy,
        stop: threading.Event,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self._api = api
        self._policy = policy
        self._stop = stop
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None
        self._timeout = (policy.connect_timeout_seconds, policy.request_timeout_seconds)

    def list(self) -> tuple[Snapshot | None, str]:
        result = self._api.list_namespaced_config_map(
            self.namespace,
            field_selector=f"metadata.name={self.name}",
            _request_timeout=self._timeout,
        )
        items = result.items or []
        return (Snapshot.from_model(items[0]) if items else None), result.metadata.resource_version

    def watch(self, version: str) -> Iterator[dict[str, Any]]:
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
        configmap = self._api.read_namespaced_config_map(
            self.name, self.namespace, _request_timeout=self._timeout
        )
        return Snapshot.from_model(configmap)

    def patch(self, changes: Mapping[str, str | None], version: str) -> Snapshot:
        """Merge-patch ``data`` (None removes a key); 409 unless the object is at ``version``."""
        body = {"metadata": {"resourceVersion": version}, "data": dict(changes)}
        configmap = self._api.patch_namespaced_config_map(
            self.name,
            self.namespace,
            body,
            _content_type="application/merge-patch+json",
            _request_timeout=self._timeout,
        )
        return Snapshot.from_model(configmap)

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
        configmap = self._api.create_namespaced_config_map(
            self.namespace, body, _request_timeout=self._timeout
        )
        return Snapshot.from_model(configmap)


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


# --- the store ---------------------------------------------------------------------------


class ConfigMapKeyValueStore:
    """A ``KeyValueStore`` kept in one ConfigMap; reads come from the watched copy."""

    def __init__(
        self,
        api: k8s.CoreV1Api | k8s.ApiClient,
        *,
        namespace: str,
        name: str,
        stale_seconds: float = 30.0,
        policy: WatchPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(api, k8s.ApiClient):
            api = k8s.CoreV1Api(api)
        self._policy = policy or WatchPolicy()
        self._stop = threading.Event()
        self._configmap = ConfigMapApi(api, namespace, name, self._policy, self._stop)
        self._where = f"{namespace}/{name}"
        self._extra = {"namespace": namespace, "configmap": name}
        self._stale_seconds = stale_seconds
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below
        self._snapshot: Snapshot | None = None  # None until the first list
        self._loaded = False
        self._broken_since: float | None = None
        self._last_error = ""
        self._missing: str | None = None  # why the ConfigMap is absent, while it is
        # Writes from this process go one at a time: they would only conflict with each other.
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        api: k8s.CoreV1Api | k8s.ApiClient | None = None,
        policy: WatchPolicy | None = None,
        environ: Mapping[str, str] | None = None,
        serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
    ) -> ConfigMapKeyValueStore:
        """Build from ``registry_*`` settings; without ``api``, connect as ``load_api_client``."""
        if api is None:
            api = load_api_client(environ, serviceaccount_dir=serviceaccount_dir)
        return cls(
            api,
            namespace=config.registry_namespace or pod_namespace(serviceaccount_dir),
            name=config.registry_configmap,
            stale_seconds=config.registry_watch_stale_seconds,
            policy=policy,
        )

    # --- life cycle ---

    def start(self) -> None:
        """Start watching in a background thread; ``problem()`` is set until the first list."""
        if self._thread is not None:
            raise RuntimeError("the ConfigMap watch is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=watch_configmap,
            args=(self._configmap, self, self._policy, self._stop),
            name=f"registry-watch-{self._configmap.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._configmap.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- KeyValueStore ---

    def get(self, key: str) -> str | None:
        with self._lock:
            return None if self._snapshot is None else self._snapshot.data.get(key)

    def items(self) -> dict[str, str]:
        with self._lock:
            return {} if self._snapshot is None else dict(self._snapshot.data)

    def set(self, key: str, value: str) -> None:
        # The HTTP layer validates too, but the store does not rely on its callers.
        validate_key(key)
        validate_value(value, key)
        self._write(key, value)

    def remove(self, key: str) -> bool:
        validate_key(key)
        return self._write(key, None)

    def problem(self) -> str | None:
        with self._lock:
            if not self._loaded:
                suffix = f" (last error: {self._last_error})" if self._last_error else ""
                return f"registry ConfigMap {self._where} not loaded yet{suffix}"
            if self._missing is not None:
                return self._missing
            if self._broken_since is not None:
                broken_for = self._clock() - self._broken_since
                if broken_for > self._stale_seconds:
                    return (
                        f"watch on registry ConfigMap {self._where} broken for "
                        f"{broken_for:.0f}s: {self._last_error}"
                    )
        return None

    # --- WatchHandler: what is done with each event ---

    def on_listed(self, snapshot: Snapshot | None) -> None:
        with self._lock:
            self._loaded = True
            self._broken_since = None
            if snapshot is not None:
                self._adopt(snapshot)
                self._missing = None
        if snapshot is None:
            self._recreate("does not exist")

    def on_event(self, kind: str, snapshot: Snapshot) -> None:
        if kind == "DELETED":
            self._recreate("was deleted")
            return
        with self._lock:
            self._adopt(snapshot)
            self._missing = None

    def on_connected(self) -> None:
        with self._lock:
            self._broken_since = None

    def on_broken(self, error: Exception) -> None:
        with self._lock:
            if self._broken_since is None:
                self._broken_since = self._clock()
            self._last_error = _describe(error)

    # --- internals ---

    def _adopt(self, snapshot: Snapshot) -> None:
        """Take ``snapshot`` unless the copy is newer (a write's answer can beat its event)."""
        if self._snapshot is None or not _older(snapshot.version, self._snapshot.version):
            self._snapshot = snapshot

    def _recreate(self, why: str) -> bool:
        """Create the ConfigMap again from the last known copy; False (and a problem) if not."""
        with self._lock:
            snapshot = self._snapshot or Snapshot(data={}, version="")
            self._missing = f"registry ConfigMap {self._where} {why}; recreating it"
        logger.warning(
            "registry ConfigMap missing, recreating it",
            extra={**self._extra, "reason": why, "keys": len(snapshot.data)},
        )
        try:
            created = self._configmap.create(snapshot)
        except ApiException as exc:
            if exc.status != 409:
                return self._recreate_failed(why, exc)
            try:  # someone else recreated it first: theirs is the truth
                created = self._configmap.read()
            except (ApiException, *TRANSPORT_ERRORS) as read_exc:
                return self._recreate_failed(why, read_exc)
        except TRANSPORT_ERRORS as exc:
            return self._recreate_failed(why, exc)
        with self._lock:
            self._adopt(created)
            self._missing = None
        return True

    def _recreate_failed(self, why: str, error: Exception) -> bool:
        reason = _describe(error)
        logger.error(
            "registry ConfigMap could not be recreated", extra={**self._extra, "error": reason}
        )
        with self._lock:
            self._missing = (
                f"registry ConfigMap {self._where} {why} and could not be recreated: {reason}"
            )
        return False

    def _write(self, key: str, value: str | None) -> bool:
        """Patch one key (None removes it); True when the key was there before.

        The first try uses the cached copy and its resourceVersion; a conflict means the copy
        was stale, so each retry starts from a fresh read.
        """
        with self._write_lock:
            with self._lock:
                snapshot, fresh = self._snapshot, False
            for attempt in range(1, self._policy.write_attempts + 1):
                if snapshot is None:
                    snapshot, fresh = self._current(), True
                if fresh and snapshot.data.get(key) == value:
                    return value is not None  # the server already has it
                if value is not None and not _fits(snapshot.data, key, value):
                    if fresh:
                        raise StoreFull(_too_big_message(snapshot.data, key, value))
                    snapshot = None  # the copy may be stale: judge on the server's data
                    continue
                try:
                    patched = self._configmap.patch({key: value}, snapshot.version)
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise _write_failed(exc) from exc
                    logger.info(
                        "registry write conflicted, retrying on a fresh read",
                        extra={**self._extra, "key": key, "attempt": attempt, "status": exc.status},
                    )
                    snapshot = None
                    continue
                except TRANSPORT_ERRORS as exc:
                    raise _write_failed(exc) from exc
                with self._lock:  # read-your-writes; the watch event will confirm it
                    self._adopt(patched)
                return key in snapshot.data
        raise StoreUnavailable(
            f"registry ConfigMap {self._where} kept changing under the write of {key!r}; "
            f"gave up after {self._policy.write_attempts} attempts"
        )

    def _current(self) -> Snapshot:
        """The ConfigMap as the API server has it now; recreated first if it is missing."""
        try:
            return self._configmap.read()
        except ApiException as exc:
            if exc.status != 404:
                raise _write_failed(exc) from exc
        except TRANSPORT_ERRORS as exc:
            raise _write_failed(exc) from exc
        if not self._recreate("was missing at a write"):
            raise StoreUnavailable(self._missing)
        with self._lock:
            assert self._snapshot is not None  # _recreate adopted what it created
            return self._snapshot


# --- connecting --------------------------------------------------------------------------


def load_api_client(
    environ: Mapping[str, str] | None = None,
    *,
    serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
) -> k8s.ApiClient:
    """In a pod (KUBERNETES_SERVICE_HOST set) use its service account, else the kubeconfig."""
    environ = os.environ if environ is None else environ
    configuration = k8s.Configuration()
    if environ.get("KUBERNETES_SERVICE_HOST"):
        # The loader re-reads the token file every minute: projected tokens are rotated.
        InClusterConfigLoader(
            token_filename=str(serviceaccount_dir / "token"),
            cert_filename=str(serviceaccount_dir / "ca.crt"),
            environ=environ,
        ).load_and_set(configuration)
    else:
        k8s_config.load_kube_config(
            config_file=environ.get("KUBECONFIG"),
            client_configuration=configuration,
            persist_config=False,  # a server must not rewrite the user's kubeconfig
        )
    return k8s.ApiClient(configuration)


def pod_namespace(serviceaccount_dir: Path = SERVICEACCOUNT_DIR) -> str:
    """The namespace this pod runs in, or "default" outside a cluster."""
    path = serviceaccount_dir / "namespace"
    try:
        return path.read_text().strip() or "default"
    except FileNotFoundError:
        return "default"


# --- helpers -----------------------------------------------------------------------------


def data_size(data: Mapping[str, str]) -> int:
    """What the API server counts against MAX_DATA_BYTES: the bytes of keys and values."""
    return sum(len(key.encode()) + len(value.encode()) for key, value in data.items())


def _fits(data: Mapping[str, str], key: str, value: str) -> bool:
    return data_size({**data, key: value}) <= MAX_DATA_BYTES


def _too_big_message(data: Mapping[str, str], key: str, value: str) -> str:
    size = data_size({**data, key: value})
    return f"the registry would hold {size} bytes; a ConfigMap holds at most {MAX_DATA_BYTES}"


def _older(version: str, than: str) -> bool:
    """Whether ``version`` is older than ``than``.

    resourceVersions are opaque by contract, but every real API server hands out etcd
    revisions, which are increasing integers; anything else is taken as not older.
    """
    return version.isdigit() and than.isdigit() and int(version) < int(than)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"[:300]


def _write_failed(error: Exception) -> Exception:
    if isinstance(error, ApiException) and error.status == 422:
        message = error.body or error.reason
        return InvalidEntry(f"the Kubernetes API refused the write: {message}")
    return StoreUnavailable(f"the Kubernetes API failed the write: {_describe(error)}")
