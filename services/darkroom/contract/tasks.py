"""A task's states and the claim record a worker gets, as they travel between roles.

A task is what the public API calls a job: one uploaded image and its pipeline.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any


class TaskState(enum.StrEnum):
    """A task's state; the value is its name on the wire (``stateName``, the ``state`` parameter).

    ``code`` is the seed's number for it: the ``state`` field of a task document, what
    ``/setById`` takes, and what the database stores.
    """

    UPLOADING = "uploading"  # created, image still streaming to storage: not claimable
    QUEUED = "queued"
    IN_PROGRESS = "in progress"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def code(self) -> int:
        return _CODES[self]

    @property
    def ended(self) -> bool:
        """Finished or failed: the task changes no more (but for an operator's retry)."""
        return self in ENDED_STATES

    @classmethod
    def from_code(cls, code: int) -> TaskState:
        """The state with the seed's number ``code``; ValueError for any other number."""
        try:
            return _BY_CODE[code]
        except KeyError:
            raise ValueError(f"{code!r} is not a task state number") from None

    @classmethod
    def parse(cls, name: str) -> TaskState:
        """The state named ``name`` on the wire; ValueError saying which names there are."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"Expected one of: {', '.join(cls)}.") from None


_CODES = {
    TaskState.UPLOADING: -1,
    TaskState.QUEUED: 0,
    TaskState.IN_PROGRESS: 1,
    TaskState.FINISHED: 2,
    TaskState.FAILED: 3,
}
_BY_CODE = {code: state for state, code in _CODES.items()}
ENDED_STATES = frozenset({TaskState.FINISHED, TaskState.FAILED})
UNFINISHED_STATES = frozenset(TaskState) - ENDED_STATES


@dataclasses.dataclass(frozen=True)
class Claim:
    """A task leased to one worker: what ``/getNewTask`` answers, and what every later call
    about the task (heartbeat, finish, fail, release) names."""

    task_id: str
    lease: str
    pipeline: str
    attempts: int

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Claim:
        return cls(document["id"], document["lease"], document["pipeline"], document["attempts"])
