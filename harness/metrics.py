"""Prometheus text as numbers: what tests assert on and benchmarks subtract."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset:
    return frozenset(values.items())


def total(found: Samples, name: str) -> float:
    """The sum of ``name`` over all its label sets (0 when absent)."""
    return sum(value for (sample, _), value in found.items() if sample == name)


def value(found: Samples, name: str, **label_values: str) -> float:
    """One sample (0 when absent)."""
    return found.get((name, labels(**label_values)), 0.0)


class CounterTotal:
    """A counter's increase over scrapes of a process that may restart, as Prometheus's
    ``increase()`` counts it: a value lower than the last, or a new ``source`` (the pid that
    answered), is a restart from zero.

    Increments between the last scrape and a restart are not seen: scrape often.
    """

    def __init__(self) -> None:
        self.increase = 0.0
        self._last: float | None = None
        self._source: object = None

    @property
    def read(self) -> bool:
        """Whether any scrape was added: an increase of 0 may be a counter never seen."""
        return self._last is not None

    def add(self, current: float, source: object = None) -> None:
        restarted = self._last is None or current < self._last or source != self._source
        self.increase += current if restarted else current - self._last
        self._last, self._source = current, source
