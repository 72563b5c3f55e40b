"""Long-poll slots: only so many requests wait; the others are answered at once."""

from __future__ import annotations

from darkroom.core.longpoll import LongPolls


def test_long_polls_beyond_the_slots_are_answered_at_once():
    polls = LongPolls(slots=1)
    with polls.wait(5) as first, polls.wait(5) as second:
        assert (first, second) == (5, 0.0)
    with polls.wait(5) as again:
        assert again == 5, "the slot is given back"
