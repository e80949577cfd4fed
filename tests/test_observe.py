"""Every answer carries X-Request-ID; every request leaves one log line and each login, refresh and logout attempt
one audit event, all with that id."""

import json
import logging
import re

import pytest

from gateway.logs import JsonFormatter
from tests.test_keycloak import CERTS, grant_answers, invalid_grant, look_up_answers

GENERATED = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def lines(caplog):
    """The JSON lines the gateway logged during the test, as an operator reads them."""
    caplog.set_level(logging.INFO)
    return lambda: [json.loads(JsonFormatter().format(r)) for r in caplog.records]


@pytest.mark.parametrize("incoming", ["abc-123", "A.b_c-9", "x" * 128, "0"])
def test_a_sane_incoming_request_id_is_kept(client, incoming):
    assert client.get("/healthz", headers={"X-Request-ID": incoming}).headers["X-Request-ID"] == incoming


@pytest.mark.parametrize("incoming", ["", "x" * 129, "has space", "semi;colon", "new\\nline", "ü-umlaut", "a/b"])
def test_anything_else_is_replaced_by_a_generated_one(client, incoming):
    answer = client.get("/healthz", headers={"X-Request-ID": incoming})
    assert GENERATED.fullmatch(answer.headers["X-Request-ID"])


def test_generated_ids_differ(client):
    assert len({client.get("/healthz").headers["X-Request-ID"] for _ in range(20)}) == 20


@pytest.mark.parametrize("method, path, kwargs, status", [
    ("GET", "/nowhere", {}, 404),
    ("GET", "/api/login", {}, 405),
    ("POST", "/api/login", {"data": b"x" * 20000, "content_type": "application/json"}, 413),
    ("POST", "/api/login", {"json": {}}, 400),
    ("GET", "/api/me", {}, 401),
    ("POST", "/users/login/", {"data": b"x", "content_type": "text/plain"}, 415),
])
def test_errors_carry_the_request_id_too(client, method, path, kwargs, status):
    answer = client.open(path, method=method, headers={"X-Request-ID": "err-1"}, **kwargs)
    assert (answer.status_code, answer.headers["X-Request-ID"]) == (status, "err-1")


def test_an_unexpected_failure_carries_it_and_its_trace_line_has_it(app, lines):
    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    answer = app.test_client().get("/boom", headers={"X-Request-ID": "boom-1"})
    assert (answer.status_code, answer.headers["X-Request-ID"]) == (500, "boom-1")
    assert {entry["request_id"] for entry in lines()} == {"boom-1"}  # the trace line and the request line


def test_one_request_line(client, lines):
    client.get("/healthz", headers={"X-Request-ID": "r-1"})
    (entry,) = [e for e in lines() if e["logger"] == "gateway.request"]
    assert {k: entry[k] for k in ("level", "message", "request_id", "method", "path", "status", "client")} == {
        "level": "info", "message": "request", "request_id": "r-1", "method": "GET", "path": "/healthz",
        "status": 200, "client": "127.0.0.1"}
    assert isinstance(entry["duration_ms"], float)


def test_the_request_line_has_no_query_string(client, lines):
    client.get("/healthz?code=secret-code&state=s1", headers={"X-Request-ID": "r-2"})
    (entry,) = [e for e in lines() if e["logger"] == "gateway.request"]
    assert entry["path"] == "/healthz" and "secret-code" not in json.dumps(lines())


def audit(lines):
    return [{k: v for k, v in e.items() if k not in ("time", "logger", "level", "pid", "upstream_ms")}
            for e in lines() if e["logger"] == "gateway.audit"]


def test_audit_of_a_wrong_password(client, upstream, lines):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [{"id": "u-1", "username": "ahmadakbar"}], {"disabled": False})
    client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"},
                headers={"X-Request-ID": "a-1", "traceparent": TRACEPARENT})
    assert audit(lines) == [{
        "message": "audit", "request_id": "a-1", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "event": "login",
        "endpoint": "api.login", "username": "ahmadakbar",
        "user_id": None, "client": "127.0.0.1", "outcome": "wrong_password",
        "reason": "password grant: HTTP 400 invalid_grant: Invalid user credentials"}]


def test_audit_of_a_success_names_the_user_from_the_verified_token(client, upstream, signer, lines):
    grant_answers(upstream, json={"access_token": signer.token(sub="u-42", preferred_username="ahmadakbar"),
                                  "refresh_token": "r", "expires_in": 300})
    upstream.get(CERTS, json=signer.jwks)
    client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"},
                headers={"X-Request-ID": "a-2", "traceparent": TRACEPARENT})
    assert audit(lines) == [{
        "message": "audit", "request_id": "a-2", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "event": "login",
        "endpoint": "api.login", "username": "ahmadakbar",
        "user_id": "u-42", "client": "127.0.0.1", "outcome": "success", "reason": None}]


def test_audit_of_a_bad_payload_and_an_outage(client, upstream, lines):
    client.post("/api/login", json={"username": "a b", "password": "password1"}, headers={"X-Request-ID": "a-3"})
    grant_answers(upstream, body=__import__("requests").ConnectionError("refused"))
    client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"},
                headers={"X-Request-ID": "a-4"})
    assert [(e["request_id"], e["username"], e["outcome"]) for e in audit(lines)] == [
        ("a-3", None, "payload_unknown"), ("a-4", "ahmadakbar", "upstream_unavailable")]


@pytest.mark.parametrize("path, body, event", [
    ("/api/refresh", {"refreshToken": "r"}, "refresh"), ("/api/logout", {"refreshToken": "r"}, "logout"),
    ("/users/refresh/", {"refresh": "r"}, "refresh"), ("/users/login/", {"username": "u", "password": "p"}, "login"),
])
def test_every_attempt_endpoint_is_audited(client, upstream, lines, path, body, event):
    upstream.post(re.compile(r".*/token|.*/logout"), **invalid_grant(400, "Invalid refresh token"))
    client.post(path, json=body)
    assert [e["event"] for e in audit(lines)] == [event]


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/openapi.json", "/readyz", "/api/me", "/nowhere"])
def test_other_endpoints_leave_no_audit_event(client, lines, path):
    client.get(path)
    assert audit(lines) == []
