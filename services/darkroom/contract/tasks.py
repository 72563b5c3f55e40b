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
    CANCELLED = "cancelled"  # by its client (``/cancel``): ended, never processed further

    @property
    def code(self) -> int:
        return _CODES[self]

    @property
    def ended(self) -> bool:
        """Finished, failed or cancelled: the task changes no more (but for an operator's retry
        of a failed one)."""
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
    TaskState.CANCELLED: 4,
}
_BY_CODE = {code: state for state, code in _CODES.items()}
ENDED_STATES = frozenset({TaskState.FINISHED, TaskState.FAILED, TaskState.CANCELLED})
UNFINISHED_STATES = frozenset(TaskState) - ENDED_STATES


def waited_through(state: TaskState | None) -> frozenset[TaskState]:
    """The states a long poll on a task (``wait`` with ``state`` or without) waits through:
    ``state`` when one is named, else every unfinished state (it answers when the task ends)."""
    return UNFINISHED_STATES if state is None else frozenset({state})


# The title of the database's 409 to a worker's call about a task its client cancelled: the
# worker's client tells it from a lost lease by it.
TASK_CANCELLED_TITLE = "Task cancelled"


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


# -- idempotent uploads -------------------------------------------------------------------
# The header of an upload (``/new``) that names it, and the header of the answer to a second
# upload with the same key: the job is the first one's.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclasses.dataclass(frozen=True)
class KeyHolder:
    """The task an upload's ``Idempotency-Key`` was first used for, as the database tells the
    master: enough to tell a replay (same ``op``, same body) from a misuse of the key."""

    task_id: str
    pipeline: str
    state: TaskState
    # hex SHA-256 of the first upload's body; None while that upload is still streaming
    body_sha256: str | None

    def to_document(self) -> dict[str, Any]:
        return {
            "id": self.task_id,
            "pipeline": self.pipeline,
            "stateName": self.state.value,
            "bodySha256": self.body_sha256,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> KeyHolder:
        state = TaskState.parse(document["stateName"])
        return cls(document["id"], document["pipeline"], state, document["bodySha256"])


class IdempotencyKeyUsed(Exception):
    """A task was created with this idempotency key before (and the key is still kept)."""

    def __init__(self, holder: KeyHolder) -> None:
        super().__init__(f"idempotency key already used for task {holder.task_id}")
        self.holder = holder


# -- the feed of ended tasks ---------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EndedTask:
    """A task that has just ended, as the feed tells it: its state, and for a finished one the
    version its result is stored as."""

    task_id: str
    state: TaskState
    result: str | None = None

    def to_document(self) -> dict[str, Any]:
        return {"id": self.task_id, "stateName": self.state.value, "result": self.result}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> EndedTask:
        return cls(document["id"], TaskState.parse(document["stateName"]), document["result"])


@dataclasses.dataclass(frozen=True)
class EndedTasks:
    """One answer of the database's feed of ended tasks (``GET /endedTasks``): the tasks that
    ended after a position, in the order the database process learnt of them.

    Positions count within one ``epoch``: a database process's life, or on PostgreSQL its
    listener's connection (notifications sent while it was away are lost). ``reset`` says the
    position asked for cannot be continued (another epoch, or too far behind): nothing is
    known of what ended before ``position``, which the caller goes on from.
    """

    epoch: str
    position: int
    ended: tuple[EndedTask, ...] = ()
    reset: bool = False

    def to_document(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "ended": [task.to_document() for task in self.ended],
            "reset": self.reset,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> EndedTasks:
        ended = tuple(EndedTask.from_document(item) for item in document["ended"])
        return cls(document["epoch"], document["position"], ended, document["reset"])
