"""The database's answers to what its store refuses, and the values it keeps: stated once for
its HTTP API (``darkroom.database.app``) and for the roles that call the store in their own
process (``darkroom.database.direct``), so both tell a caller the same."""

from __future__ import annotations

import dataclasses
import sqlite3

from darkroom.contract.limits import MAX_NOTE_LENGTH, MAX_NOTES
from darkroom.contract.tasks import TASK_CANCELLED_TITLE
from darkroom.core.errors import disk_full
from darkroom.database.store import StoreUnavailable, TaskCancelled, TaskConflict, TaskNotFound

# The store's refusals that have an answer of their own (a full disk is one kind of
# sqlite3.OperationalError; any other is a bug, answered 500).
STORE_ERRORS = (TaskNotFound, TaskConflict, StoreUnavailable, sqlite3.OperationalError)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    title: str
    description: str
    retry_after: int | None = None


def answer_for(error: Exception) -> Answer | None:
    """The answer to a refusal of the store; None for an error that is not one (re-raise it)."""
    if isinstance(error, TaskNotFound):
        return Answer(404, "Unknown task", "No task has this id.")
    if isinstance(error, TaskCancelled):  # before TaskConflict, which it is
        return Answer(409, TASK_CANCELLED_TITLE, str(error))
    if isinstance(error, TaskConflict):
        return Answer(409, "Task conflict", str(error))
    if isinstance(error, StoreUnavailable):
        # What failed (addresses included) is for the operator's log, not the caller.
        return Answer(
            503,
            "Database unavailable",
            "The task database cannot be reached; try again shortly.",
            retry_after=1,
        )
    if isinstance(error, sqlite3.OperationalError) and (
        "disk is full" in str(error) or "disk I/O error" in str(error)
    ):
        full = disk_full("database volume")
        return Answer(507, full.title, full.description)
    return None


def text_refusal(value: str | None, name: str, limit: int) -> str | None:
    """Why the optional text ``name`` cannot be kept as it is (None: it can): it must be 1 to
    ``limit`` characters with no NUL (which PostgreSQL's text cannot hold)."""
    if value is not None and (not 0 < len(value) <= limit or "\x00" in value):
        return f"{name} must be 1 to {limit} characters, none NUL"
    return None


def kept_text(value: str) -> str:
    """A worker's free text (an error, a note) as every store keeps it: PostgreSQL's text
    holds no NUL character, so none is kept (they say nothing to a reader anyway)."""
    return value.replace("\x00", "").strip()


def kept_notes(notes: list[str]) -> list[str]:
    """A finish's notes as the task keeps them: at most MAX_NOTES, each cut to MAX_NOTE_LENGTH."""
    cut = [kept_text(note)[:MAX_NOTE_LENGTH] for note in notes]
    return [note for note in cut if note][:MAX_NOTES]
