"""The OpenAPI 3.0 document of the master's public API, served at ``GET /openapi.json``.

Only the client routes are described: the worker routes (``/getNewTask``,
``/registerTaskFinished``, ``/heartbeat``, ``/failTask``, ``/releaseTask``) are internal and
need the service token. The document is the contract the fuzz tests check the master against.
"""

from __future__ import annotations

import copy
from typing import Any

import falcon

from darkroom import __version__
from darkroom.contract.limits import TASK_ID_PATTERN
from darkroom.contract.pipeline import DEFAULT_PIPELINE, MAX_PIPELINE_CHARS, MAX_STEPS, STEPS
from darkroom.contract.tasks import TaskState
from darkroom.core.auth import PUBLIC
from darkroom.core.imagetypes import EXTENSIONS

JSON = "application/json"
TEXT = "text/plain"
IMAGE_TYPES = sorted(EXTENSIONS)


def _error(description: str, *media_types: str) -> dict[str, Any]:
    """An error answer: JSON ``{"title", "description"}`` (or what the server says instead)."""
    content = {media_type: {"schema": {"type": "string"}} for media_type in media_types}
    return {
        "description": description,
        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}, **content},
    }


_ERROR_RESPONSES = {
    "400": _error("A parameter is missing or invalid; the description says which."),
    "401": _error("API keys are configured and none was given."),
    "403": _error("The credentials given are not an API key."),
    "502": _error("A service behind the master failed."),
    "503": _error("A service behind the master is not reachable; retry (see Retry-After)."),
}

_TASK_ID_PARAMETER = {
    "name": "id",
    "in": "query",
    "required": True,
    "description": "The job id `/new` answered.",
    "schema": {"type": "string", "pattern": f"^{TASK_ID_PATTERN.pattern}$"},
}

_WAIT_PARAMETER = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": (
        "Long polling: hold the answer up to this many seconds until the job changes (capped by "
        "the server, 30 s by default; answered at once when the server is busy). Without it, "
        "or with 0, the answer is immediate."
    ),
    "schema": {"type": "number", "minimum": 0},
}

_STATE_PARAMETER = {
    "name": "state",
    "in": "query",
    "required": False,
    "description": (
        "With `wait`: the state the client last saw; the answer comes once the job is in "
        "another. Without it the wait lasts until the job is finished or failed."
    ),
    "schema": {"type": "string", "enum": [str(state) for state in TaskState]},
}

# Generated from the grammar's step table, so the document cannot drift from what is accepted.
_PIPELINE_DESCRIPTION = (
    f"Operation pipeline: at most {MAX_STEPS} steps separated by commas, applied in order, "
    "e.g. `resize:800x600,grayscale,jpeg:85,keep-metadata`; at most one output format step "
    "and one `keep-metadata`. Names are case-insensitive. An unencoded `+` arrives as a space, "
    f"which `crop` accepts too. Absent or empty: `{DEFAULT_PIPELINE}`. The canonical form is "
    "what `/status` answers as `pipeline`; an invalid pipeline is refused with 400. Steps:\n\n"
    + "\n".join(f"- `{rule.syntax}`: {rule.help}" for rule in STEPS)
)

_CLIENT_SECURITY = [{}, {"bearer": []}, {"apiKey": []}, {"basic": []}]

# -- live progress (GET /events) ----------------------------------------------------------------
_LAST_EVENT_ID_PARAMETER = {
    "name": "Last-Event-ID",
    "in": "header",
    "required": False,
    "description": (
        "Resume after this event (the number of its `id:` line); EventSource sends it when it "
        "reconnects. Absent: every event from the first."
    ),
    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
}
_EVENTS_DESCRIPTION = (
    "The job's progress as Server-Sent Events, from its first event (or after `Last-Event-ID`):"
    " one event per state change (`event: state`, data `{state, at}`) and per processing stage"
    " of each attempt (`event: stage`, data `{stage, startMs, durationMs, at}`: `download`,"
    " `decode`, each step by its text, `encode`, `store`; start offset from the worker's claim"
    " and duration in milliseconds; a worker sends them with its heartbeats and its finish, so"
    " they may come in bursts). `id:` is the event's number. A comment line (`: keep-alive`)"
    " is sent while nothing happens. The stream closes after the event of an ended state (at"
    " once, after replaying, for a job that had already ended), and after a few minutes in"
    " any case: reconnect with `Last-Event-ID` (EventSource does). A job that ended with no"
    " event after `Last-Event-ID` answers 204, which stops EventSource. The number of open"
    " streams is bounded: over it, 503 with Retry-After."
)
_EVENTS_OVER = {
    "description": "The job has ended and no event follows `Last-Event-ID`: nothing more comes."
}
_EVENTS_OK = {
    "description": "The event stream.",
    "content": {
        "text/event-stream": {
            "schema": {"type": "string"},
            "example": (
                "retry: 1000\n\nid: 3\nevent: state\n"
                'data: {"state":"in progress","at":"2026-01-01T00:00:00.000+00:00"}\n\n'
                "id: 4\nevent: stage\n"
                'data: {"stage":"download","startMs":0.0,"durationMs":2.1,'
                '"at":"2026-01-01T00:00:00.020+00:00"}\n\n'
            ),
        }
    },
}


def _job_operation(
    operation_id: str,
    summary: str,
    description: str,
    ok: dict[str, Any],
    *statuses: str,
    parameters: tuple[dict[str, Any], ...] = (),
    more_responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    errors = {
        "404": _error("No job has this id."),
        "409": _error("The job is not finished yet (see Retry-After)."),
        "422": _error("The job failed; the description says why."),
    }
    return {
        "get": {
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "tags": ["jobs"],
            "security": _CLIENT_SECURITY,
            "parameters": [_TASK_ID_PARAMETER, *parameters],
            "responses": {
                "200": ok,
                **(more_responses or {}),
                **{status: errors[status] for status in statuses},
                **_ERROR_RESPONSES,
            },
        }
    }


_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Darkroom",
        "version": __version__,
        "description": (
            "Asynchronous image processing: upload an image with `POST /new` and get a job id at "
            "once, ask `/isReady` or `/status` until it is finished, then download it from `/get`."
            " Errors are JSON `{title, description}` with the right status. The client routes "
            "need an API key only when the server is configured with some."
        ),
    },
    "tags": [{"name": "jobs"}, {"name": "operations"}],
    "paths": {
        "/new": {
            "post": {
                "summary": "Upload an image",
                "description": (
                    "The request body is the image itself (PNG, JPEG, GIF, WebP, BMP or TIFF, "
                    "recognised by its content). The answer is the new job's id."
                ),
                "operationId": "upload",
                "tags": ["jobs"],
                "security": _CLIENT_SECURITY,
                "parameters": [
                    {
                        "name": "op",
                        "in": "query",
                        "required": False,
                        "description": _PIPELINE_DESCRIPTION,
                        "schema": {"type": "string", "maxLength": MAX_PIPELINE_CHARS},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        media_type: {"schema": {"type": "string", "format": "binary"}}
                        for media_type in ["application/octet-stream", *IMAGE_TYPES]
                    },
                },
                "responses": {
                    "200": {
                        "description": "The job id.",
                        "content": {TEXT: {"schema": {"$ref": "#/components/schemas/TaskId"}}},
                    },
                    "413": _error("The image is over the size limit.", TEXT, "text/html"),
                    "415": _error("The body is not an image in a supported format."),
                    **_ERROR_RESPONSES,
                },
            }
        },
        "/isReady": _job_operation(
            "isReady",
            "Is the job finished",
            "`1` when the job is finished, `0` while it waits or runs; 422 when it failed.",
            {
                "description": "`1` or `0`.",
                "content": {TEXT: {"schema": {"type": "string", "enum": ["0", "1"]}}},
            },
            "404",
            "422",
            parameters=(_WAIT_PARAMETER,),
        ),
        "/status": _job_operation(
            "status",
            "The job's state",
            "The job's state, attempts, error and timestamps.",
            {
                "description": "The job.",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Task"}}},
            },
            "404",
            parameters=(_WAIT_PARAMETER, _STATE_PARAMETER),
        ),
        "/get": _job_operation(
            "result",
            "Download the result",
            "The processed image, as an attachment.",
            {
                "description": "The result image.",
                "content": {
                    media_type: {"schema": {"type": "string", "format": "binary"}}
                    for media_type in [*IMAGE_TYPES, "application/octet-stream"]
                },
            },
            "404",
            "409",
            "422",
        ),
        "/events": _job_operation(
            "events",
            "Follow the job live",
            _EVENTS_DESCRIPTION,
            _EVENTS_OK,
            "404",
            parameters=(_LAST_EVENT_ID_PARAMETER,),
            more_responses={"204": _EVENTS_OVER},
        ),
        "/healthz": {
            "get": {
                "summary": "The process answers",
                "operationId": "healthz",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Health"}}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "The master can reach the database and the storage",
                "operationId": "readyz",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Ready.",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                    "503": _error("Not ready; the description says why."),
                },
            }
        },
    },
    "components": {
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic", "description": "The password is the key."},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        },
        "schemas": {
            "TaskId": {"type": "string", "pattern": f"^{TASK_ID_PATTERN.pattern}$"},
            "Error": {
                "type": "object",
                "required": ["title"],
                "properties": {"title": {"type": "string"}, "description": {"type": "string"}},
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            },
            "Task": {
                "type": "object",
                "required": [
                    "id",
                    "state",
                    "stateName",
                    "pipeline",
                    "attempts",
                    "error",
                    "createdAt",
                    "updatedAt",
                    "finishedAt",
                ],
                "properties": {
                    "id": {"$ref": "#/components/schemas/TaskId"},
                    "state": {
                        "type": "integer",
                        "enum": [state.code for state in TaskState],
                        "description": ", ".join(f"{s.code} {s}" for s in TaskState),
                    },
                    "stateName": {
                        "type": "string",
                        "enum": [str(state) for state in TaskState],
                    },
                    "pipeline": {"type": "string"},
                    "attempts": {"type": "integer", "minimum": 0},
                    "error": {
                        "type": "string",
                        "nullable": True,
                        "description": "why a task failed; on a finished task, its notes "
                        "joined by '; ', else null",
                    },
                    "notes": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "on a finished task, what the user should know, one "
                        "note each: what of the image was skipped as unreadable, whether an "
                        "animation was kept, what of its metadata the result dropped (e.g. "
                        "'metadata removed: EXIF (GPS position, camera serial number), XMP'); "
                        "the same notes are joined by '; ' in error",
                    },
                    "stage": {
                        "type": "string",
                        "nullable": True,
                        "description": "the processing stage reached: the name of the job's "
                        "last stage event (see /events), null before its first",
                    },
                    "createdAt": {"type": "string", "format": "date-time"},
                    "updatedAt": {"type": "string", "format": "date-time"},
                    "finishedAt": {"type": "string", "format": "date-time", "nullable": True},
                },
            },
        },
    },
}


def document() -> dict[str, Any]:
    """A fresh copy of the document (callers may change theirs)."""
    return copy.deepcopy(_DOCUMENT)


class OpenApiDocument:
    auth = PUBLIC

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _DOCUMENT
