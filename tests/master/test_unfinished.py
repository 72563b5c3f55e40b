"""The master's memory of jobs still running, kept by the database's feed of ended tasks."""

from __future__ import annotations

import threading
import time

import pytest

from darkroom.contract.errors import ServiceUnavailable
from darkroom.contract.tasks import EndedTask, EndedTasks, TaskState
from darkroom.master.finished import FinishedTasks
from darkroom.master.unfinished import UnfinishedTasks
from harness.launch import wait_until

EPOCH = "0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ScriptedFeed:
    """A database whose feed answers are given by the test, one per call (an exception is
    raised); with none left, it waits as a long poll would."""

    def __init__(self, *answers: EndedTasks | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str | None, int]] = []
        self.memory: UnfinishedTasks | None = None
        self.following: list[bool] = []  # the memory's, at each call

    def ended_tasks(self, epoch: str | None, after: int, wait: float = 0.0) -> EndedTasks:
        self.calls.append((epoch, after))
        if self.memory is not None:
            self.following.append(self.memory.following)
        if not self.answers:
            time.sleep(0.05)
            return EndedTasks(epoch or EPOCH, after)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def finished() -> FinishedTasks:
    return FinishedTasks(retention_seconds=86_400)


@pytest.fixture
def unfinished(finished, clock) -> UnfinishedTasks:
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event(), clock=clock)
    memory.take(EndedTasks(EPOCH, 10, reset=True))
    return memory


def ended(position: int, *tasks: EndedTask) -> EndedTasks:
    return EndedTasks(EPOCH, position, tasks)


def test_nothing_is_known_before_the_feed_is_followed(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event())
    assert not memory.following and memory.mark() is None
    memory.remember("a", memory.mark())
    assert not memory.still_running("a")


def test_a_job_read_unfinished_is_running_until_the_feed_says_it_ended(unfinished, finished):
    unfinished.remember("a", unfinished.mark())
    assert unfinished.still_running("a")
    unfinished.take(ended(11, EndedTask("a", TaskState.FINISHED, "v1")))
    assert not unfinished.still_running("a")
    assert finished.version("a") == (True, "v1"), "a finish told by the feed needs no read"


def test_a_failed_or_cancelled_end_is_forgotten_for_a_read_to_tell(unfinished, finished):
    for position, (task_id, state) in enumerate(
        [("a", TaskState.FAILED), ("b", TaskState.CANCELLED)], start=11
    ):
        unfinished.remember(task_id, unfinished.mark())
        unfinished.take(ended(position, EndedTask(task_id, state)))
        assert not unfinished.still_running(task_id)
        assert finished.version(task_id) == (False, None)


def test_an_end_told_between_the_read_and_remembering_it_is_not_lost(unfinished):
    mark = unfinished.mark()  # the read begins; the job ends before it is remembered
    unfinished.take(ended(11, EndedTask("a", TaskState.FINISHED, "v1")))
    unfinished.remember("a", mark)
    assert not unfinished.still_running("a")


def test_a_read_from_before_the_feed_started_over_is_not_remembered(unfinished):
    mark = unfinished.mark()
    unfinished.take(EndedTasks("fedcba9876543210", 3, reset=True))
    unfinished.remember("a", mark)
    assert not unfinished.still_running("a")


def test_the_ends_of_jobs_not_followed_are_not_kept_as_finished(unfinished, finished):
    unfinished.take(ended(11, EndedTask("other", TaskState.FINISHED, "v1")))
    assert finished.version("other") == (False, None)


def test_a_remembered_job_is_trusted_for_a_while_only(unfinished, clock):
    unfinished.remember("a", unfinished.mark())
    clock.now += 4.9
    assert unfinished.still_running("a")
    clock.now += 0.2
    assert not unfinished.still_running("a"), "read again after trust_seconds"


def test_a_waiting_poll_wakes_when_its_job_ends(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event())
    memory.take(EndedTasks(EPOCH, 0, reset=True))
    memory.remember("a", memory.mark())
    threading.Timer(0.1, memory.take, [ended(1, EndedTask("a", TaskState.FAILED))]).start()
    began = time.monotonic()
    assert not memory.still_running("a", wait_seconds=10)
    assert time.monotonic() - began < 5


def test_a_waiting_poll_answers_running_at_its_deadline(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event())
    memory.take(EndedTasks(EPOCH, 0, reset=True))
    memory.remember("a", memory.mark())
    assert memory.still_running("a", wait_seconds=0.1)


def test_a_waiting_poll_whose_client_left_gives_its_thread_back(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event())
    memory.take(EndedTasks(EPOCH, 0, reset=True))
    memory.remember("a", memory.mark())
    left = threading.Event()
    threading.Timer(0.1, left.set).start()
    began = time.monotonic()
    assert memory.still_running("a", wait_seconds=30, departed=left.is_set)
    assert time.monotonic() - began < 2


def test_following_goes_on_from_each_answer_and_stops_while_the_database_is_away(finished):
    feed = ScriptedFeed(
        EndedTasks(EPOCH, 4, reset=True),
        ended(5, EndedTask("a", TaskState.CANCELLED)),
        ServiceUnavailable("database", 503, "Unavailable", "away"),
    )
    stop = threading.Event()
    memory = feed.memory = UnfinishedTasks(feed, finished, stop)
    memory.start()
    try:
        wait_until(lambda: len(feed.calls) >= 5, 10, "the feed asked again after the backoff")
    finally:
        stop.set()
    assert feed.calls[:4] == [(None, 0), (EPOCH, 4), (EPOCH, 5), (EPOCH, 5)], "goes on"
    assert feed.following[:5] == [False, True, True, False, True], "not while it was away"


def test_a_waiting_poll_is_answered_soon_after_the_master_starts_stopping(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event())
    memory.take(EndedTasks(EPOCH, 0, reset=True))
    memory.remember("a", memory.mark())
    threading.Timer(0.1, memory.close).start()
    began = time.monotonic()
    assert memory.still_running("a", wait_seconds=30)
    assert time.monotonic() - began < 2


def test_a_read_older_than_the_ends_kept_is_not_remembered(finished):
    memory = UnfinishedTasks(ScriptedFeed(), finished, threading.Event(), recent_ends=2)
    memory.take(EndedTasks(EPOCH, 0, reset=True))
    mark = memory.mark()
    memory.take(ended(3, *(EndedTask(name, TaskState.FAILED) for name in "xyz")))
    memory.remember("a", mark)  # "a" may have ended among the ends no longer kept
    assert not memory.still_running("a")
    memory.remember("a", memory.mark())
    assert memory.still_running("a")
