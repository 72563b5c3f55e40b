"""The registry's keys in a Kubernetes ConfigMap, served from a watched in-memory copy.

Split as kopf splits its clients: ``watching`` is the list/watch loop (with its retry policy
passed in), ``kubeapi`` the adapter to the API (the only module calling ``kubernetes``),
``kubeconfig`` how the client connects, ``apierrors`` what fails. This module is the store:
what is done with each event (keep the copy that ``get`` and ``items`` read, recreate a deleted
ConfigMap) plus the writes, which patch ``data`` with the copy's resourceVersion as a
precondition, so a write based on a stale copy conflicts (409) and is retried on a fresh read.

A deleted ConfigMap is recreated from the last known data, labels and annotations (keeping
Helm's ownership metadata lets a later ``helm upgrade`` adopt it). Until that succeeds
``problem()`` says the ConfigMap is missing, so the registry is never silently served stale.
The service account therefore needs get, list, watch, create and patch on configmaps.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from darkroom.registry.apierrors import Conflict, Invalid, KubeApiError, NotFound, describe
from darkroom.registry.kubeapi import ConfigMapApi, KubeClient
from darkroom.registry.kubeconfig import SERVICEACCOUNT_DIR, load_api_client, pod_namespace
from darkroom.registry.store import (
    InvalidEntry,
    StoreFull,
    StoreUnavailable,
    validate_key,
    validate_value,
)
from darkroom.registry.watching import Snapshot, WatchPolicy, watch_configmap

if TYPE_CHECKING:
    from darkroom.core.config import Config

logger = logging.getLogger(__name__)

# The API server refuses a ConfigMap whose keys and values add up to more bytes than this.
MAX_DATA_BYTES = 1024 * 1024


class ConfigMapKeyValueStore:
    """A ``KeyValueStore`` kept in one ConfigMap; reads come from the watched copy."""

    def __init__(
        self,
        api: KubeClient,
        *,
        namespace: str,
        name: str,
        stale_seconds: float = 30.0,
        policy: WatchPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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
        api: KubeClient | None = None,
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
            self._last_error = describe(error)

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
        except Conflict:
            try:  # someone else recreated it first: theirs is the truth
                created = self._configmap.read()
            except KubeApiError as read_exc:
                return self._recreate_failed(why, read_exc)
        except KubeApiError as exc:
            return self._recreate_failed(why, exc)
        with self._lock:
            self._adopt(created)
            self._missing = None
        return True

    def _recreate_failed(self, why: str, error: Exception) -> bool:
        reason = describe(error)
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
                except (NotFound, Conflict) as exc:
                    logger.info(
                        "registry write conflicted, retrying on a fresh read",
                        extra={**self._extra, "key": key, "attempt": attempt, "status": exc.status},
                    )
                    snapshot = None
                    continue
                except KubeApiError as exc:
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
        except NotFound:
            pass
        except KubeApiError as exc:
            raise _write_failed(exc) from exc
        if not self._recreate("was missing at a write"):
            raise StoreUnavailable(self._missing)
        with self._lock:
            assert self._snapshot is not None  # _recreate adopted what it created
            return self._snapshot


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


def _write_failed(error: Exception) -> Exception:
    if isinstance(error, Invalid):
        message = error.body or error.reason
        return InvalidEntry(f"the Kubernetes API refused the write: {message}")
    return StoreUnavailable(f"the Kubernetes API failed the write: {describe(error)}")
