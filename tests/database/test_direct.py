"""The database's clients on the store itself answer as its HTTP API does."""

from __future__ import annotations

import threading

import pytest

from darkroom.contract.errors import ServiceError, ServiceNotFound, ServiceUnavailable
from darkroom.contract.limits import MAX_PIPELINE_CHARS
from darkroom.contract.tasks import Claim
from darkroom.core.leases import LeaseLost, TaskWasCancelled
from darkroom.database.app import create_app
from darkroom.database.client import DatabaseClient
from darkroom.database.direct import DirectDatabase, DirectLeases
from darkroom.database.service import open_store
from darkroom.database.store import StoreUnavailable
from support.inprocess import service_client


@pytest.fixture
def store(config):
    store = open_store(config)
    yield store
    store.close()


@pytest.fixture
def over_http(config, store) -> DatabaseClient:
    return DatabaseClient(service_client(create_app(config, store), "databaseAddress", "db:1"))


@pytest.mark.parametrize("pipeline", ["x" * (MAX_PIPELINE_CHARS + 1), "swap\x00"])
def test_a_pipeline_the_store_cannot_keep_is_refused_as_over_http(store, over_http, pipeline):
    direct = DirectDatabase(None, store)
    refusals = []
    for database in (over_http, direct):
        with pytest.raises(ServiceError) as caught:
            database.create(pipeline)
        refusals.append((caught.value.status, caught.value.title, caught.value.description))
    assert (
        refusals[0]
        == refusals[1]
        == (
            400,
            "Invalid pipeline",
            f"pipeline must be 1 to {MAX_PIPELINE_CHARS} characters, none NUL",
        )
    )
    assert store.recent(10) == []


def test_an_unknown_task_is_the_same_not_found_either_way(store, over_http):
    errors = []
    for database in (over_http, DirectDatabase(None, store)):
        with pytest.raises(ServiceNotFound) as caught:
            database.get("A" * 22)
        errors.append((caught.value.service, caught.value.status, caught.value.title))
    assert errors[0] == errors[1] == ("database", 404, "Unknown task")


def test_a_lost_lease_and_a_cancellation_are_told_apart(store):
    leases = DirectLeases(None, store, threading.Event())
    first = store.create("swap")
    store.enqueue(first.id)
    claim = leases.claim(0, 5)
    with pytest.raises(LeaseLost) as lost:
        leases.finish(Claim(claim.task_id, "not-the-lease", claim.pipeline, claim.attempts))
    assert not isinstance(lost.value, TaskWasCancelled) and lost.value.status == 409
    store.cancel(claim.task_id)
    with pytest.raises(TaskWasCancelled):
        leases.heartbeat(claim)


def test_a_claim_of_a_stopping_loop_leases_nothing(store):
    stopping = threading.Event()
    leases = DirectLeases(None, store, stopping)
    task = store.create("swap")
    store.enqueue(task.id)
    stopping.set()
    assert leases.claim(10, 5) is None
    assert store.get(task.id).state.value == "queued"


def test_an_unreachable_store_is_a_503_to_retry(store):
    class Unreachable:
        def get(self, task_id):
            raise StoreUnavailable("connection refused")

        def delivery(self, task_id):
            return None

    with pytest.raises(ServiceUnavailable) as caught:
        DirectDatabase(None, Unreachable()).get("A" * 22)
    assert (caught.value.status, caught.value.retry_after) == (503, 1)
    assert "connection refused" not in caught.value.description  # the operator's, not the caller's
