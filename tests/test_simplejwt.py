"""The SimpleJWT profile's error shapes for failures a real Keycloak cannot be made to produce on demand."""

import logging

import pytest

from tests.conftest import MOCK_URL

TOKEN = f"{MOCK_URL}realms/edm/protocol/openid-connect/token"


@pytest.mark.parametrize("kc_answer, status, body", [
    ({"status": 200, "body": "<html>"}, 502, {"detail": "Authentication service error."}),
    ({"status": 200, "json": {"access_token": "a"}}, 502, {"detail": "Authentication service error."}),
    ({"status": 400, "json": {"error": "invalid_grant", "error_description": "Invalid user credentials"}}, 401,
     {"detail": "No active account found with the given credentials"}),
    ({"status": 401, "json": {"error": "invalid_grant", "error_description": "Invalid user credentials"}}, 401,
     {"detail": "No active account found with the given credentials"}),
])
def test_login_answers(client, upstream, kc_answer, status, body):
    upstream.post(TOKEN, **kc_answer)
    response = client.post("/users/login/", json={"username": "ahmadakbar", "password": "password"})
    assert (response.status_code, response.json) == (status, body)
    assert len(upstream.calls) == 1  # no admin look-up: every credential failure reads alike here


def test_unexpected_failure_in_the_profile(app, caplog):
    @app.post("/users/boom/")
    def boom():
        raise RuntimeError("secret detail")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().post("/users/boom/")
    assert (response.status_code, response.json) == (500, {"detail": "A server error occurred."})
    assert "secret detail" in caplog.text and "secret detail" not in response.get_data(as_text=True)


def test_body_over_the_limit(client):
    response = client.post("/users/login/", data=b"x" * 20000, content_type="application/json")
    assert (response.status_code, response.json) == (413, {"detail": "Request body too large."})


def test_deeply_nested_tokens_are_invalid_not_a_crash(client, upstream):
    import base64

    nested = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=").decode()
    token = f"eyJhbGciOiJIUzUxMiJ9.{nested}.c2ln"
    upstream.post(TOKEN, status=400, json={"error": "invalid_grant", "error_description": "Invalid refresh token"})
    refresh = client.post("/users/refresh/", json={"refresh": token})
    verify = client.post("/users/verify/", json={"token": token})
    invalid = {"detail": "Token is invalid", "code": "token_not_valid"}
    assert (refresh.status_code, refresh.json) == (verify.status_code, verify.json) == (401, invalid)


def test_a_new_subclass_of_a_mapped_error_reads_as_its_parent_never_a_500(app):
    from gateway import errors

    class KeycloakGone(errors.UpstreamUnavailable):
        pass

    class StoreGone(errors.StoreUnavailable):
        pass

    @app.post("/users/raise/<kind>")
    def raise_it(kind):
        raise {"keycloak": KeycloakGone, "store": StoreGone}[kind]("test")

    for kind in ("keycloak", "store"):
        answer = app.test_client().post(f"/users/raise/{kind}")
        assert (answer.status_code, answer.json) == (503, {"detail": "Authentication service unavailable."})


def test_the_error_module_imports_no_profile():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(__file__).parent.parent.joinpath("gateway", "errors.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name and name.startswith("gateway.") and name != "gateway.observe"}
