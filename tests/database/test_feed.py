"""The feed of ended tasks as one database process keeps it."""

from __future__ import annotations

import threading
import time

from darkroom.contract.tasks import EndedTask, TaskState
from darkroom.database.feed import ENDS_PER_ANSWER, EndedFeed


def ends(*ids: str) -> list[EndedTask]:
    return [EndedTask(task_id, TaskState.FINISHED, f"v-{task_id}") for task_id in ids]


def test_a_new_follower_starts_where_the_feed_is():
    feed = EndedFeed()
    feed.add(ends("a", "b"))
    start = feed.after(None, 0)
    assert start.reset and start.position == 2 and start.ended == ()
    feed.add(ends("c"))
    answer = feed.after(start.epoch, start.position)
    assert not answer.reset and answer.position == 3 and answer.ended == tuple(ends("c"))


def test_a_follower_goes_on_from_any_position_kept():
    feed = EndedFeed(capacity=3)
    start = feed.after(None, 0)
    feed.add(ends("a", "b", "c", "d"))  # "a" is no longer kept
    assert feed.after(start.epoch, 0).reset, "too far behind: starts over"
    answer = feed.after(start.epoch, 1)
    assert [task.task_id for task in answer.ended] == ["b", "c", "d"]
    assert feed.after(start.epoch, 3).ended == tuple(ends("d"))
    assert feed.after(start.epoch, 4).ended == ()
    assert feed.after(start.epoch, 5).reset, "a position the feed never had"


def test_an_answer_holds_at_most_its_share_and_says_where_to_go_on():
    feed = EndedFeed()
    start = feed.after(None, 0)
    feed.add(ends(*(str(n) for n in range(ENDS_PER_ANSWER + 5))))
    first = feed.after(start.epoch, 0)
    assert len(first.ended) == ENDS_PER_ANSWER and first.position == ENDS_PER_ANSWER
    rest = feed.after(start.epoch, first.position)
    assert [task.task_id for task in rest.ended] == [str(ENDS_PER_ANSWER + n) for n in range(5)]


def test_a_waiting_follower_wakes_when_a_task_ends():
    feed = EndedFeed()
    start = feed.after(None, 0)
    got = {}

    def follow() -> None:
        got["answer"] = feed.after(start.epoch, start.position, wait_seconds=10)

    follower = threading.Thread(target=follow)
    began = time.monotonic()
    follower.start()
    feed.add(ends("a"))
    follower.join(10)
    assert got["answer"].ended == tuple(ends("a"))
    assert time.monotonic() - began < 5


def test_a_wait_with_nothing_ending_answers_empty_at_its_deadline():
    feed = EndedFeed()
    start = feed.after(None, 0)
    answer = feed.after(start.epoch, start.position, wait_seconds=0.2)
    assert not answer.reset and answer.ended == () and answer.position == start.position


def test_a_reset_begins_a_new_epoch_its_followers_start_over_from():
    feed = EndedFeed()
    start = feed.after(None, 0)
    feed.add(ends("a"))
    feed.reset()
    answer = feed.after(start.epoch, start.position)
    assert answer.reset and answer.epoch != start.epoch


def test_a_waiting_follower_is_answered_soon_after_the_feed_closes():
    feed = EndedFeed()
    start = feed.after(None, 0)
    threading.Timer(0.1, feed.close).start()
    began = time.monotonic()
    answer = feed.after(start.epoch, start.position, wait_seconds=30)
    assert answer.ended == () and time.monotonic() - began < 2, "no server thread held on"
