"""Every role's base app: errors are JSON with a description, whatever the client accepts."""

from __future__ import annotations

import falcon
import pytest
from falcon import testing

from darkroom.core.app import create_base_app


class Failing:
    """A resource raising whatever error a test asks for, and one unexpected exception."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPError(falcon.code_to_http_status(int(req.get_param("status"))))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise RuntimeError("a bug")


@pytest.fixture
def client(config) -> testing.TestClient:
    app = create_base_app(config)
    app.add_route("/fail", Failing())
    return testing.TestClient(app)


def assert_json_error(result: testing.Result, status: int) -> dict:
    assert result.status_code == status
    assert result.headers["Content-Type"] == "application/json"
    assert result.headers["X-Content-Type-Options"] == "nosniff"
    assert set(result.json) >= {"title", "description"}
    assert result.json["title"] and result.json["description"], result.json
    return result.json


BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize("accept", [None, "application/json", BROWSER, "application/xml", "*/*"])
def test_unknown_route_is_a_json_404_naming_the_path(client, accept):
    headers = {"Accept": accept} if accept else {}
    error = assert_json_error(client.simulate_get("/no/such/thing", headers=headers), 404)
    assert error == {
        "title": "Not found",
        "description": "This service has no route '/no/such/thing'.",
    }


@pytest.mark.parametrize("accept", [None, BROWSER])
def test_unknown_method_is_a_json_405_naming_the_allowed_ones(client, accept):
    headers = {"Accept": accept} if accept else {}
    result = client.simulate_delete("/healthz", headers=headers)
    error = assert_json_error(result, 405)
    assert error["title"] == "Method not allowed"
    assert error["description"] == "DELETE is not allowed on /healthz; allowed: GET, OPTIONS."
    assert result.headers["Allow"] == "GET, OPTIONS"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 415, 429, 500, 502, 503, 507])
@pytest.mark.parametrize("accept", [None, BROWSER])
def test_every_error_status_is_json_with_a_description(client, status, accept):
    headers = {"Accept": accept} if accept else {}
    assert_json_error(
        client.simulate_get("/fail", params={"status": status}, headers=headers), status
    )


def test_unexpected_exception_is_a_json_500_without_details(client):
    error = assert_json_error(client.simulate_post("/fail", headers={"Accept": BROWSER}), 500)
    assert "a bug" not in error["description"]
    assert error["title"] == "Internal server error"


def test_nosniff_on_successful_answers_too(client):
    result = client.simulate_get("/healthz")
    assert result.status_code == 200
    assert result.headers["X-Content-Type-Options"] == "nosniff"


def test_nosniff_when_authentication_refuses(config):
    client = testing.TestClient(create_base_app(config.replace(internal_token="secret")))
    client.app.add_route("/fail", Failing())
    assert_json_error(client.simulate_get("/fail", params={"status": 200}), 401)
