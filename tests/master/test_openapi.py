"""The OpenAPI document's pipeline description and limits come from the grammar."""

from __future__ import annotations

from darkroom.contract.pipeline import MAX_PIPELINE_CHARS, MAX_STEPS, STEPS
from darkroom.master.openapi import document


def op_parameter() -> dict:
    [op] = document()["paths"]["/new"]["post"]["parameters"]
    return op


def test_op_description_lists_every_step_with_its_help() -> None:
    description = op_parameter()["description"]
    for rule in STEPS:
        assert f"- `{rule.syntax}`: {rule.help}" in description
    assert f"at most {MAX_STEPS} steps" in description


def test_op_length_limit_is_the_grammars() -> None:
    assert op_parameter()["schema"]["maxLength"] == MAX_PIPELINE_CHARS


def test_events_are_documented_as_an_event_stream_with_last_event_id() -> None:
    operation = document()["paths"]["/events"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/event-stream"}
    assert {"204", "400", "404", "503"} <= set(operation["responses"])
    headers = [p["name"] for p in operation["parameters"] if p["in"] == "header"]
    assert headers == ["Last-Event-ID"]
    assert "stage" in document()["components"]["schemas"]["Task"]["properties"]
