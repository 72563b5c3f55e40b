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
from darkroom.contract.limits import (
    IDEMPOTENCY_KEY_PATTERN,
    MAX_IDEMPOTENCY_KEY_CHARS,
    TASK_ID_PATTERN,
)
from darkroom.contract.pipeline import DEFAULT_PIPELINE, MAX_PIPELINE_CHARS, MAX_STEPS, STEPS
from darkroom.contract.tasks import IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER, TaskState
from darkroom.contract.webhooks import KEPT_ATTEMPTS, MAX_WEBHOOK_URL_CHARS, DeliveryState
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
        "another. Without it the wait lasts until the job has ended (finished, failed or "
        "cancelled)."
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

_WEBHOOK_PARAMETER = {
    "name": "webhook",
    "in": "query",
    "required": False,
    "description": (
        "A URL the job's status document (what `/status` answers, without its `webhook` field) "
        "is POSTed to when the job ends (finished, failed or cancelled), signed as the Standard "
        "Webhooks specification says: headers `webhook-id` (`msg_<job id>`, the same for every "
        "retry), `webhook-timestamp` (epoch seconds) and `webhook-signature` (`v1,` + base64 "
        "HMAC-SHA256 of `id.timestamp.body` with the server's secret; one per secret, space-"
        "separated, while secrets rotate). `https://` (or `http://` where the server allows it). "
        "Refused with 400 when malformed or when the server has no webhook secret, with 422 when "
        "its host does not resolve or resolves to an internal address (loopback, private, "
        "link-local, the cluster's networks, ...), checked again before every attempt. Retried "
        "with exponential backoff and jitter until a 2xx answer, for a day by default; a 410 "
        "answer stops it. Redirects are not followed. `/status` shows the delivery as `webhook`."
    ),
    "schema": {"type": "string", "maxLength": MAX_WEBHOOK_URL_CHARS},
}

_WEBHOOK_SCHEMA = {
    "type": "object",
    "description": "the job's webhook delivery, when it was uploaded with `webhook`",
    "required": ["url", "state", "attempts", "nextAttemptAt", "last"],
    "properties": {
        "url": {
            "type": "string",
            "description": "the webhook URL, its query string replaced by `redacted`",
        },
        "state": {
            "type": "string",
            "enum": [str(state) for state in DeliveryState],
            "description": "pending: the job has not ended, or an attempt is due; delivered: "
            "a 2xx answer; failed: given up (a 410 answer, or retried for the whole period)",
        },
        "attempts": {"type": "integer", "minimum": 0},
        "nextAttemptAt": {"type": "string", "format": "date-time", "nullable": True},
        "last": {
            "type": "array",
            "maxItems": KEPT_ATTEMPTS,
            "description": f"the last {KEPT_ATTEMPTS} attempts, oldest first",
            "items": {
                "type": "object",
                "required": ["at", "status", "error"],
                "properties": {
                    "at": {"type": "string", "format": "date-time"},
                    "status": {
                        "type": "integer",
                        "nullable": True,
                        "description": "the receiver's HTTP status",
                    },
                    "error": {
                        "type": "string",
                        "nullable": True,
                        "description": "why there was no answer (refused, timed out, ...)",
                    },
                },
            },
        },
    },
}

_CLIENT_SECURITY = [{}, {"bearer": []}, {"apiKey": []}, {"basic": []}]

_IDEMPOTENCY_KEY_PARAMETER = {
    "name": IDEMPOTENCY_KEY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        f"Makes the upload safe to send again: 1 to {MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII "
        "characters (a UUID, say), new for each image. The same key within 24 hours with the "
        "same body and `op` answers the first upload's job id (200, with "
        f"`{REPLAYED_HEADER}: true`) and creates nothing (a `webhook` given again is not "
        "compared: the first upload's stands); with another body or `op`, 422; "
        "while the first upload with the key is still being stored, 409. A key whose upload "
        "failed may be used again."
    ),
    "schema": {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_PATTERN.pattern}$"},
}
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
    method: str = "get",
    described: dict[str, str] | None = None,
    more_responses: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A route about one job; ``described`` words some of its error statuses its own way."""
    errors = {
        "404": "No job has this id.",
        "409": "The job is not finished yet (see Retry-After).",
        "410": "The job was cancelled: it has no result.",
        "422": "The job failed; the description says why.",
        **(described or {}),
    }
    return {
        method: {
            "summary": summary,
            "description": description,
            "operationId": operation_id,
            "tags": ["jobs"],
            "security": _CLIENT_SECURITY,
            "parameters": [_TASK_ID_PARAMETER, *parameters],
            "responses": {
                "200": ok,
                **(more_responses or {}),
                **{status: _error(errors[status]) for status in statuses},
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
            "once, ask `/isReady` or `/status` until it is finished (or follow it live on "
            "`/events`, or be called back with `webhook`), then download it from `/get`; "
            "`/cancel` stops it."
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
                    },
                    _WEBHOOK_PARAMETER,
                    _IDEMPOTENCY_KEY_PARAMETER,
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
                        "headers": {
                            REPLAYED_HEADER: {
                                "description": "`true` when the Idempotency-Key named an "
                                "earlier upload of the same image: its job, nothing created.",
                                "schema": {"type": "string", "enum": ["true"]},
                            }
                        },
                        "content": {TEXT: {"schema": {"$ref": "#/components/schemas/TaskId"}}},
                    },
                    "409": _error(
                        "The first upload with this Idempotency-Key is still being stored "
                        "(see Retry-After), or the job was cancelled while it was uploaded."
                    ),
                    "413": _error("The image is over the size limit.", TEXT, "text/html"),
                    "415": _error("The body is not an image in a supported format."),
                    "422": _error(
                        "The webhook URL is refused, or the Idempotency-Key was used for an"
                        " upload with another body or `op`; the description says which."
                    ),
                    **_ERROR_RESPONSES,
                },
            }
        },
        "/isReady": _job_operation(
            "isReady",
            "Is the job finished",
            "`1` when the job is finished, `0` while it waits or runs; 422 when it failed, 410 "
            "when it was cancelled.",
            {
                "description": "`1` or `0`.",
                "content": {TEXT: {"schema": {"type": "string", "enum": ["0", "1"]}}},
            },
            "404",
            "410",
            "422",
            parameters=(_WAIT_PARAMETER,),
        ),
        "/status": _job_operation(
            "status",
            "The job's state",
            "The job's state, attempts, error, notes, the stage reached, its timestamps, whether"
            " its upload came with an Idempotency-Key and, when it was uploaded with `webhook`,"
            " the delivery's state and last attempts.",
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
            "410",
            "422",
        ),
        "/cancel": _job_operation(
            "cancel",
            "Cancel the job",
            "Cancels a job that has not ended (uploading, queued or in progress): it is never "
            "processed further, a worker holding it stops at its next heartbeat, and its result "
            "is never stored as finished; `/get` answers 410 from then on. Cancelling a "
            "cancelled job again changes nothing and answers the same.",
            {
                "description": "The cancelled job.",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Task"}}},
            },
            "404",
            "409",
            method="post",
            described={"409": "The job has ended (finished or failed); the description says how."},
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
                    "notes",
                    "hasIdempotencyKey",
                    "stage",
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
                    "hasIdempotencyKey": {
                        "type": "boolean",
                        "description": "whether the job's upload came with an Idempotency-Key",
                    },
                    "stage": {
                        "type": "string",
                        "nullable": True,
                        "description": "the processing stage reached: the name of the job's "
                        "last stage event (see /events), null before its first",
                    },
                    "createdAt": {"type": "string", "format": "date-time"},
                    "updatedAt": {"type": "string", "format": "date-time"},
                    "finishedAt": {
                        "type": "string",
                        "format": "date-time",
                        "nullable": True,
                        "description": "when the job ended: finished, failed or cancelled",
                    },
                    "webhook": _WEBHOOK_SCHEMA,
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
