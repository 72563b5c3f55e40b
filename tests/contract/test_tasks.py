"""The task vocabulary: states by their wire names and the seed's numbers, the claim record."""

from __future__ import annotations

import pytest

from darkroom.contract.tasks import (
    ENDED_STATES,
    UNFINISHED_STATES,
    Claim,
    KeyHolder,
    TaskState,
)


def test_states_are_their_wire_names_with_the_seeds_numbers() -> None:
    assert [(str(state), state.code) for state in TaskState] == [
        ("uploading", -1),
        ("queued", 0),
        ("in progress", 1),
        ("finished", 2),
        ("failed", 3),
        ("cancelled", 4),
    ]
    assert all(TaskState.from_code(state.code) is state for state in TaskState)
    assert TaskState.parse("in progress") is TaskState.IN_PROGRESS


def test_unknown_states_are_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="Expected one of: uploading, queued, in progress"):
        TaskState.parse("done")
    with pytest.raises(ValueError, match="not a task state number"):
        TaskState.from_code(5)


def test_ended_and_unfinished_states_split_them_all() -> None:
    assert {TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED} == ENDED_STATES
    assert set(TaskState) == ENDED_STATES | UNFINISHED_STATES
    assert not ENDED_STATES & UNFINISHED_STATES
    assert TaskState.FAILED.ended and TaskState.CANCELLED.ended and not TaskState.QUEUED.ended


def test_a_claim_reads_the_claim_document() -> None:
    document = {"id": "t" * 22, "lease": "l", "pipeline": "swap", "attempts": 2, "state": 1}
    assert Claim.from_document(document) == Claim("t" * 22, "l", "swap", 2)


def test_a_key_holder_crosses_the_wire_unchanged() -> None:
    holder = KeyHolder("t" * 22, "swap", TaskState.QUEUED, "ab" * 32)
    assert KeyHolder.from_document(holder.to_document()) == holder
    uploading = KeyHolder("t" * 22, "swap", TaskState.UPLOADING, None)
    assert KeyHolder.from_document(uploading.to_document()) == uploading
