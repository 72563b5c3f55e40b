"""The database's own figures: ``darkroom_tasks{state}``, ``darkroom_lease_expiries_total`` and
``darkroom_finishes_refused_total``.

All are read from the store at each scrape, after it writes any lease that ran out
(``TaskStore.expire``), so a scrape never counts a lapsed lease as in progress. The chart's KEDA
ScaledObject scales the workers on ``darkroom_tasks{state="queued"}`` and ``{state="in progress"}``
(docs/kubernetes.md); with a shared store (PostgreSQL) every database replica reports the same
whole queue, so a query takes their max, not their sum.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from darkroom.database.store import TaskStore


class QueueCollector:
    """The database's tasks by state and its lease expiries, from the store at each scrape."""

    def __init__(self, store: TaskStore) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        self._store.expire()
        tasks = GaugeMetricFamily("darkroom_tasks", "Tasks by state.", labels=["state"])
        for state, count in self._store.counts().items():
            tasks.add_metric([state.value], count)
        yield tasks
        yield CounterMetricFamily(
            "darkroom_lease_expiries",
            "Leases that expired: the task went back to the queue or failed.",
            value=self._store.lease_expiries,
        )
        yield CounterMetricFamily(
            "darkroom_finishes_refused",
            "Finishes refused: the task was finished already or its lease was lost (work redone).",
            value=self._store.finishes_refused,
        )
