"""The OpenAPI document's pipeline description and limits come from the grammar."""

from __future__ import annotations

from darkroom.contract.pipeline import MAX_PIPELINE_CHARS, MAX_STEPS, STEPS
from darkroom.contract.webhooks import MAX_WEBHOOK_URL_CHARS
from darkroom.master.openapi import document


def upload_parameter(name: str) -> dict:
    [parameter] = [
        p for p in document()["paths"]["/new"]["post"]["parameters"] if p["name"] == name
    ]
    return parameter


def op_parameter() -> dict:
    return upload_parameter("op")


def test_op_description_lists_every_step_with_its_help() -> None:
    description = op_parameter()["description"]
    for rule in STEPS:
        assert f"- `{rule.syntax}`: {rule.help}" in description
    assert f"at most {MAX_STEPS} steps" in description


def test_op_length_limit_is_the_grammars() -> None:
    assert op_parameter()["schema"]["maxLength"] == MAX_PIPELINE_CHARS


def test_the_webhook_parameter_and_status_field_are_described() -> None:
    webhook = upload_parameter("webhook")
    assert webhook["schema"]["maxLength"] == MAX_WEBHOOK_URL_CHARS
    for words in ("webhook-signature", "410", "422", "Standard Webhooks"):
        assert words in webhook["description"]
    task = document()["components"]["schemas"]["Task"]["properties"]["webhook"]
    assert task["properties"]["state"]["enum"] == ["pending", "delivered", "failed"]
    assert "422" in document()["paths"]["/new"]["post"]["responses"]


def test_cancel_and_the_idempotency_key_are_documented() -> None:
    paths = document()["paths"]
    cancel = paths["/cancel"]["post"]
    assert {"200", "404", "409"} <= cancel["responses"].keys()
    assert "410" in paths["/get"]["get"]["responses"]
    assert "410" in paths["/isReady"]["get"]["responses"]
    upload = paths["/new"]["post"]
    [key] = [p for p in upload["parameters"] if p["name"] == "Idempotency-Key"]
    assert key["in"] == "header" and key["schema"]["pattern"] == r"^[\x21-\x7e]{1,255}$"
    assert {"409", "422"} <= upload["responses"].keys()
    assert "Idempotent-Replayed" in upload["responses"]["200"]["headers"]
    task = document()["components"]["schemas"]["Task"]["properties"]
    assert "cancelled" in task["stateName"]["enum"] and 4 in task["state"]["enum"]


def test_events_are_documented_as_an_event_stream_with_last_event_id() -> None:
    operation = document()["paths"]["/events"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
    assert {"204", "400", "404", "503"} <= set(operation["responses"])
    headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
    assert headers == ["Last-Event-ID"]
    assert "stage" in document()["components"]["schemas"]["Task"]["properties"]
