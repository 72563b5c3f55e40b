"""The ConfigMap registry backend against the Kubernetes API double, over real HTTP.

Every wait polls a condition with a deadline; nothing sleeps for a guessed duration.
"""

from __future__ import annotations

import dataclasses
import itertools
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes.client import ApiClient, Configuration, CoreV1Api

from darkroom.core.config import Config
from darkroom.registry.configmap import MAX_DATA_BYTES, ConfigMapKeyValueStore, data_size
from darkroom.registry.kubeapi import json_lines
from darkroom.registry.kubeconfig import load_api_client, pod_namespace
from darkroom.registry.store import InvalidEntry, StoreFull, StoreUnavailable
from darkroom.registry.watching import Snapshot, WatchPolicy
from support.certificates import self_signed_certificate
from support.kube_api_double import KubeApiDouble

NS = "darkroom"
NAME = "darkroom-registry"
FAST = WatchPolicy(
    server_timeout_seconds=5,
    client_timeout_seconds=8,
    connect_timeout_seconds=1,
    request_timeout_seconds=2,
    backoff_initial_seconds=0.05,
    backoff_max_seconds=0.2,
    min_stream_seconds=0.2,
)

pytestmark = pytest.mark.timeout(30)


def wait_until(condition: Callable[[], object], timeout: float = 2.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {what or condition}")
        time.sleep(0.005)


def local_api(double: KubeApiDouble) -> CoreV1Api:
    return CoreV1Api(ApiClient(Configuration(host=double.url)))


@pytest.fixture
def double(request: pytest.FixtureRequest) -> Iterator[KubeApiDouble]:
    with KubeApiDouble(**getattr(request, "param", {})) as api:
        yield api


@pytest.fixture
def make_store(double: KubeApiDouble) -> Iterator[Callable[..., ConfigMapKeyValueStore]]:
    stores: list[ConfigMapKeyValueStore] = []

    def make(
        *, policy: WatchPolicy = FAST, stale_seconds: float = 30.0, ready: bool = True
    ) -> ConfigMapKeyValueStore:
        store = ConfigMapKeyValueStore(
            local_api(double), namespace=NS, name=NAME, stale_seconds=stale_seconds, policy=policy
        )
        stores.append(store)
        if ready:
            store.start()
            wait_until(lambda: store.problem() is None, what="store ready")
        return store

    yield make
    for store in stores:
        store.stop()


# --- loading and readiness ---------------------------------------------------------------


def test_initial_list_fills_the_cache_and_makes_it_ready(double, make_store):
    double.put(NS, NAME, {"databaseAddress": "db:3001", "storageAddress": "st:3002"})
    store = make_store(ready=False)
    assert "not loaded" in store.problem()
    assert store.get("databaseAddress") is None

    store.start()
    wait_until(lambda: store.problem() is None)

    assert store.items() == {"databaseAddress": "db:3001", "storageAddress": "st:3002"}
    assert store.get("storageAddress") == "st:3002"
    [listing] = double.lists()
    assert listing.query["fieldSelector"] == f"metadata.name={NAME}"
    wait_until(lambda: double.watches())
    first_watch = double.watches()[0].query
    assert first_watch["resourceVersion"] == str(double.version)
    assert first_watch["timeoutSeconds"] == str(FAST.server_timeout_seconds)


def test_not_ready_until_the_first_list_succeeds(double, make_store):
    double.put(NS, NAME, {"k": "v"})
    double.unavailable = True
    store = make_store(ready=False)
    store.start()
    wait_until(lambda: len(double.lists()) >= 2, what="list retried")
    assert "not loaded" in store.problem()
    assert "503" in store.problem()

    double.unavailable = False
    wait_until(lambda: store.problem() is None)
    assert store.get("k") == "v"


def test_missing_configmap_at_start_is_created_empty(double, make_store):
    store = make_store()
    assert double.data(NS, NAME) == {}
    assert store.items() == {}


# --- watching ----------------------------------------------------------------------------


def test_out_of_band_change_shows_up_within_a_second(double, make_store):
    double.put(NS, NAME, {"a": "1", "b": "2"})
    store = make_store()

    double.patch_data(NS, NAME, {"a": "changed", "b": None})  # as `kubectl patch` would

    wait_until(lambda: store.get("a") == "changed" and store.get("b") is None, timeout=1.0)
    assert len(double.lists()) == 1  # from the watch, not a relist


def test_watch_server_timeout_resumes_from_last_version_without_relisting(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    policy = dataclasses.replace(FAST, server_timeout_seconds=1, min_stream_seconds=0.5)
    store = make_store(policy=policy)
    listing = double.lists()[0]
    wait_until(lambda: double.watches())
    changed = double.patch_data(NS, NAME, {"a": "2"})
    wait_until(lambda: store.get("a") == "2")

    wait_until(lambda: len(double.watches()) >= 2, timeout=3.0, what="second watch")

    first, second = double.watches()[:2]
    assert first.query["timeoutSeconds"] == "1"
    assert second.query["resourceVersion"] == changed["metadata"]["resourceVersion"]
    assert second.time - first.time >= 0.9  # the stream lasted until the server ended it
    assert double.lists() == [listing]


def test_silent_watch_is_abandoned_after_the_client_read_timeout(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    policy = dataclasses.replace(FAST, server_timeout_seconds=30, client_timeout_seconds=0.5)
    double.silent_watches = True
    make_store(policy=policy)

    # The server would hold the stream for 30 s; the client gives up after 0.5 s of silence.
    wait_until(lambda: len(double.watches()) >= 2, timeout=2.0, what="watch reopened")
    double.silent_watches = False


@pytest.mark.parametrize(
    "double",
    [{"gone_as_http_status": False}, {"gone_as_http_status": True}],
    ids=["error-event", "http-410"],
    indirect=True,
)
def test_gone_lists_again(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()
    wait_until(lambda: double.watches())

    with double.paused_watches():  # the store misses the change...
        double.patch_data(NS, NAME, {"a": "2"})
        double.compact()  # ...and the history that would let it catch up
        double.end_watches()

    wait_until(lambda: store.get("a") == "2")
    assert len(double.lists()) == 2
    if double.gone_as_http_status:
        assert 410 in [w.status for w in double.watches()]


def test_api_down_then_up_goes_unready_after_stale_seconds_and_recovers(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store(stale_seconds=0.5)

    double.stop()  # connections drop mid-stream, then connections are refused
    assert store.problem() is None  # a short break is tolerated
    wait_until(lambda: store.problem() is not None, timeout=3.0, what="unready")
    assert "broken" in store.problem()
    assert store.get("a") == "1"  # the copy is still there for when it comes back
    double.patch_data(NS, NAME, {"a": "2"})  # changed while the store could not see

    double.start()  # same port
    wait_until(lambda: store.problem() is None and store.get("a") == "2", timeout=3.0)
    assert len(double.lists()) == 1  # resumed from the last version: history covered the gap


def test_reconnects_with_capped_exponential_backoff(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()
    double.patch_data(NS, NAME, {"a": "2"})  # the open stream delivers: it was productive
    wait_until(lambda: store.get("a") == "2")
    double.unavailable = True
    double.end_watches()

    def failed() -> list[float]:
        return [w.time for w in double.watches() if w.status == 503]

    wait_until(lambda: len(failed()) >= 6, timeout=3.0, what="six failed watches")
    times = failed()[:6]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Expected 0.05, 0.1, 0.2 (cap), 0.2, 0.2; loose upper bounds for a busy machine.
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2], strict=True):
        assert expected * 0.9 <= gap <= expected + 0.15, gaps
    double.unavailable = False


# --- each half alone ---------------------------------------------------------------------


def test_cache_ignores_events_older_than_its_copy_and_tracks_staleness():
    now = [100.0]
    store = ConfigMapKeyValueStore(
        CoreV1Api(ApiClient(Configuration(host="http://127.0.0.1:9"))),
        namespace=NS,
        name=NAME,
        stale_seconds=10,
        clock=lambda: now[0],
    )
    store.on_listed(Snapshot({"a": "5"}, "5"))
    store.on_event("MODIFIED", Snapshot({"a": "4"}, "4"))  # late, e.g. behind a write's answer
    assert store.get("a") == "5"
    store.on_event("MODIFIED", Snapshot({"a": "6"}, "6"))
    assert store.get("a") == "6"

    store.on_broken(ConnectionResetError("reset"))
    now[0] += 10
    assert store.problem() is None
    now[0] += 1
    assert "broken for 11s" in store.problem()
    assert "ConnectionResetError" in store.problem()
    store.on_connected()
    assert store.problem() is None


def test_json_lines_reassembles_lines_across_chunks():
    chunks = [b'{"a":', b'1}\n{"b"', b":2}\n\n", b'{"c":3}']
    assert list(json_lines(chunks)) == [b'{"a":1}', b'{"b":2}', b'{"c":3}']


# --- writes ------------------------------------------------------------------------------


def test_set_and_remove_patch_the_configmap(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()

    store.set("b", "2")
    assert store.get("b") == "2"  # read-your-writes, before any watch event
    assert double.data(NS, NAME) == {"a": "1", "b": "2"}
    [patch] = double.calls("PATCH")
    assert patch.headers["content-type"] == "application/merge-patch+json"
    assert patch.body == {"metadata": {"resourceVersion": "1"}, "data": {"b": "2"}}

    assert store.remove("a") is True
    assert store.get("a") is None
    assert double.data(NS, NAME) == {"b": "2"}
    assert double.calls("PATCH")[-1].body["data"] == {"a": None}
    assert store.remove("a") is False


def test_stale_write_conflicts_and_is_retried_on_a_fresh_read(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()

    with double.paused_watches():  # the store's copy goes stale
        double.patch_data(NS, NAME, {"other": "x"})
        store.set("mine", "1")

    assert double.data(NS, NAME) == {"a": "1", "other": "x", "mine": "1"}
    assert [p.status for p in double.calls("PATCH")] == [409, 200]
    assert store.get("other") == "x"


def test_conflicts_are_retried_a_bounded_number_of_times(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()
    double.forced_conflicts = 100

    with pytest.raises(StoreUnavailable, match="gave up"):
        store.set("b", "2")
    assert len(double.calls("PATCH")) == FAST.write_attempts


def test_write_past_the_configmap_size_limit_raises_store_full(double, make_store):
    seed = {f"k{i:03}": "v" * 4096 for i in range(255)}
    double.put(NS, NAME, seed)
    store = make_store()
    room = MAX_DATA_BYTES - data_size(seed)
    assert 0 < room < 4096 + len("overflow")

    with pytest.raises(StoreFull):
        store.set("overflow", "x" * 4096)
    assert double.calls("PATCH") == []
    store.set("small", "fits")  # what still fits is accepted
    assert double.data(NS, NAME)["small"] == "fits"


@pytest.mark.parametrize(
    "key",
    ["", "bad key", "a/b", ".", "..", "k" * 254, "ключ"],
    ids=["empty", "space", "slash", "dot", "dotdot", "long", "non-ascii"],
)
def test_keys_are_validated_by_the_store_itself(double, make_store, key):
    store = make_store()
    with pytest.raises(InvalidEntry):
        store.set(key, "v")
    with pytest.raises(InvalidEntry):
        store.remove(key)
    assert double.calls("PATCH") == []


@pytest.mark.parametrize("value", ["", "a\nb", "x" * 4097], ids=["empty", "newline", "long"])
def test_values_are_validated_by_the_store_itself(double, make_store, value):
    store = make_store()
    with pytest.raises(InvalidEntry):
        store.set("key", value)
    assert double.calls("PATCH") == []


# --- a deleted ConfigMap -----------------------------------------------------------------


def test_deleted_configmap_is_recreated_with_the_cached_data(double, make_store):
    labels = {"app.kubernetes.io/managed-by": "Helm"}
    annotations = {"meta.helm.sh/release-name": "darkroom"}
    double.put(NS, NAME, {"a": "1", "b": "2"}, labels=labels, annotations=annotations)
    store = make_store()

    double.delete(NS, NAME)  # as `kubectl delete configmap` would

    wait_until(lambda: double.data(NS, NAME) == {"a": "1", "b": "2"}, what="recreated")
    recreated = double.object(NS, NAME)
    assert recreated["metadata"]["labels"] == labels
    assert recreated["metadata"]["annotations"] == annotations
    assert [c.status for c in double.calls("POST")] == [201]
    wait_until(lambda: store.problem() is None)
    assert store.items() == {"a": "1", "b": "2"}


def test_configmap_that_cannot_be_recreated_is_reported_not_served_silently(double, make_store):
    double.put(NS, NAME, {"a": "1"})
    store = make_store()
    double.forbid_create = True

    double.delete(NS, NAME)

    # "recreating it" is reported first; then why it failed.
    wait_until(lambda: "could not be recreated" in (store.problem() or ""), what="reported")
    assert "was deleted and could not be recreated: HTTP 403" in store.problem()
    with pytest.raises(StoreUnavailable):
        store.set("b", "2")

    double.forbid_create = False
    store.set("b", "2")  # a write recreates it: the cached data plus the change
    assert double.data(NS, NAME) == {"a": "1", "b": "2"}
    wait_until(lambda: store.problem() is None)


# --- life cycle and connecting -----------------------------------------------------------


def test_stop_ends_an_open_watch_at_once(double, make_store):
    store = make_store()  # its watch would last FAST.server_timeout_seconds (5 s)
    wait_until(lambda: double.watches())
    started = time.monotonic()
    store.stop()
    assert time.monotonic() - started < 1.0
    assert not any(t.name.startswith("registry-watch") for t in threading.enumerate())


def test_from_config_reads_the_namespace_from_the_pod(double, tmp_path):
    (tmp_path / "namespace").write_text("team-a\n")
    double.put("team-a", "custom-registry", {"a": "1"})
    config = Config(registry_configmap="custom-registry", registry_watch_stale_seconds=7)

    store = ConfigMapKeyValueStore.from_config(
        config, api=local_api(double), policy=FAST, serviceaccount_dir=tmp_path
    )
    store.start()
    try:
        wait_until(lambda: store.problem() is None)
        assert store.items() == {"a": "1"}
    finally:
        store.stop()
    assert pod_namespace(tmp_path / "elsewhere") == "default"


def test_kubeconfig_is_used_outside_a_cluster(double, tmp_path):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(
        f"""
apiVersion: v1
kind: Config
clusters: [{{name: double, cluster: {{server: "{double.url}"}}}}]
users: [{{name: dev, user: {{token: s3cret}}}}]
contexts: [{{name: dev, context: {{cluster: double, user: dev}}}}]
current-context: dev
"""
    )
    double.put(NS, NAME, {"a": "1"})
    config = Config(registry_namespace=NS, registry_configmap=NAME)

    store = ConfigMapKeyValueStore.from_config(
        config, policy=FAST, environ={"KUBECONFIG": str(kubeconfig)}
    )
    store.start()
    try:
        wait_until(lambda: store.problem() is None)
    finally:
        store.stop()
    assert double.lists()[0].headers["authorization"] == "Bearer s3cret"


@pytest.fixture
def tls_double(tmp_path: Path) -> Iterator[tuple[KubeApiDouble, Path]]:
    """The double over https with a self-signed certificate for 127.0.0.1."""
    cert, key = self_signed_certificate(tmp_path, "127.0.0.1")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with KubeApiDouble(tls=context) as api:
        yield api, cert


def test_in_cluster_uses_the_service_account(tls_double, tmp_path):
    double, cert = tls_double
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "ca.crt").write_bytes(cert.read_bytes())
    (account / "namespace").write_text("team-b")
    double.put("team-b", NAME, {"a": "1"})
    environ = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(double.port)}

    store = ConfigMapKeyValueStore.from_config(
        Config(), policy=FAST, environ=environ, serviceaccount_dir=account
    )
    store.start()
    try:
        wait_until(lambda: store.problem() is None, what="ready over https")
        assert store.items() == {"a": "1"}
    finally:
        store.stop()
    assert double.lists()[0].headers["authorization"] == "bearer pod-token"
    assert load_api_client(environ, serviceaccount_dir=account).configuration.ssl_ca_cert == str(
        account / "ca.crt"
    )
