"""How Keycloak's answers become the gateway's: the mapping table, against a mocked token endpoint."""

import time

import pytest
import requests
import responses
from responses import matchers

from gateway import create_app
from gateway.errors import (
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.keycloak import REFRESH_REFUSALS, _upstream
from tests.conftest import MOCK_URL, Signer, mock_config

REALM = f"{MOCK_URL}realms/edm"
TOKEN = f"{REALM}/protocol/openid-connect/token"
CERTS = f"{REALM}/protocol/openid-connect/certs"
USERS = f"{MOCK_URL}admin/realms/edm/users"
BRUTE_FORCE = f"{MOCK_URL}admin/realms/edm/attack-detection/brute-force/users/u-1"
GRANT_SENT = {"grant_type": "password", "client_id": "edmportal", "client_secret": "mock-secret",
              "username": "ahmadakbar", "password": "password1", "scope": "profile email"}
SERVICE_GRANT_SENT = {"grant_type": "client_credentials", "client_id": "edmportal", "client_secret": "mock-secret"}


def invalid_grant(status, description):
    return {"status": status, "json": {"error": "invalid_grant", "error_description": description}}


def login(client):
    return client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"})


def grant_answers(upstream, **answer):
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(GRANT_SENT)], **answer)


def look_up_answers(upstream, users, brute_force=None):
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(SERVICE_GRANT_SENT)],
                  json={"access_token": "service-token", "expires_in": 300, "token_type": "Bearer"})
    upstream.get(USERS, json=users, match=[
        matchers.query_param_matcher({"username": "ahmadakbar", "exact": "true", "briefRepresentation": "true",
                                      "first": "0", "max": "1"}),
        matchers.header_matcher({"Authorization": "Bearer service-token"}),
    ])
    if brute_force is not None:
        upstream.get(BRUTE_FORCE, json=brute_force)


def test_success_body_in_documented_order(client, upstream, signer):
    access = signer.token(sub="2c7b55a6-d513-4682-808f-9d589b5a100a")
    grant_answers(upstream, json={"access_token": access, "refresh_token": "r-1", "expires_in": 300,
                                  "token_type": "Bearer"})
    upstream.get(CERTS, json=signer.jwks)
    response = login(client)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.get_data(as_text=True) == (
        '{"status":200,"message":"2c7b55a6-d513-4682-808f-9d589b5a100a","accessToken":"%s",'
        '"refreshToken":"r-1","expiresIn":300}\n' % access)


@pytest.mark.parametrize("kc_status", [401, 400], ids=["keycloak<=26.5", "keycloak>=26.6"])
@pytest.mark.parametrize("users, brute_force, body", [
    ([], None, "code=404, message=username not found"),
    ([{"id": "u-1", "username": "ahmadakbar"}], {"disabled": False, "numFailures": 1},
     "code=400, message=wrong password"),
    ([{"id": "u-1", "username": "ahmadakbar"}], {"disabled": True, "numFailures": 2},
     "code=403, message=account temporarily locked"),
])
def test_invalid_credentials_are_told_apart_by_one_look_up(client, upstream, kc_status, users, brute_force, body):
    grant_answers(upstream, **invalid_grant(kc_status, "Invalid user credentials"))
    look_up_answers(upstream, users, brute_force)
    response = login(client)
    assert (response.status_code, response.json) == (400, body)


def test_service_account_token_is_cached_between_look_ups(client, upstream):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [])
    assert login(client).json == "code=404, message=username not found"
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    upstream.get(USERS, json=[])
    assert login(client).json == "code=404, message=username not found"
    service_grants = [c for c in upstream.calls if "client_credentials" in (c.request.body or "")]
    assert len(service_grants) == 1


def test_service_account_token_is_renewed_before_it_expires_and_when_refused(app, upstream):
    client, port = app.test_client(), app.extensions["gateway"].keycloak
    now = [1000.0]
    port.clock = lambda: now[0]
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [])  # a token of 300 s: renewed 30 s before
    assert login(client).json == "code=404, message=username not found"
    now[0] += 269
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    upstream.get(USERS, json=[])
    assert login(client).json == "code=404, message=username not found"
    now[0] += 2  # 29 s left: renewed first
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    look_up_answers(upstream, [])
    assert login(client).json == "code=404, message=username not found"
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    upstream.get(USERS, status=401, json={"error": "HTTP 401 Unauthorized"})  # Keycloak restarted: the token is
    look_up_answers(upstream, [])  # refused, fetched again once, and the look-up made with the new one
    assert login(client).json == "code=404, message=username not found"
    service_grants = [c for c in upstream.calls if "client_credentials" in (c.request.body or "")]
    assert len(service_grants) == 3


def test_a_service_account_token_refused_twice_is_a_bad_answer(client, upstream):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    for _ in range(2):
        upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(SERVICE_GRANT_SENT)],
                      json={"access_token": "service-token", "expires_in": 300})
        upstream.get(USERS, status=401, json={"error": "HTTP 401 Unauthorized"})
    response = login(client)
    assert (response.status_code, response.json) == (502, "code=502, message=authentication service error")


@pytest.mark.parametrize("answer, status, body", [
    (invalid_grant(400, "Account disabled"), 400, "code=403, message=account disabled"),
    (invalid_grant(400, "Account is not fully set up"), 400, "code=403, message=account is not fully set up"),
    (invalid_grant(400, "Account temporarily disabled"), 400, "code=403, message=account temporarily locked"),
    ({"status": 401, "json": {"error": "unauthorized_client",
                              "error_description": "Invalid client or Invalid client credentials"}},
     502, "code=502, message=authentication service error"),
    ({"status": 404, "json": {"error": "Realm does not exist"}}, 502, "code=502, message=authentication service error"),
    ({"status": 401, "json": {"error": "invalid_request", "error_description": "Missing parameter: username"}},
     502, "code=502, message=authentication service error"),
    (invalid_grant(400, "Something Keycloak has never said"), 502, "code=502, message=authentication service error"),
    ({"status": 500, "body": "<html>Internal Server Error</html>"}, 502,
     "code=502, message=authentication service error"),
    ({"status": 200, "body": "<html>not json</html>"}, 502, "code=502, message=authentication service error"),
    ({"status": 200, "json": ["not", "an", "object"]}, 502, "code=502, message=authentication service error"),
    ({"status": 200, "json": {"token_type": "Bearer"}}, 502, "code=502, message=authentication service error"),
    ({"status": 200, "json": {"access_token": 1, "refresh_token": "r", "expires_in": 300}}, 502,
     "code=502, message=authentication service error"),
    ({"status": 200, "json": {"access_token": "a", "refresh_token": "r", "expires_in": True}}, 502,
     "code=502, message=authentication service error"),
    ({"status": 400, "json": {"error": ["invalid_grant"], "error_description": {"x": 1}}}, 502,
     "code=502, message=authentication service error"),
    ({"body": requests.ConnectionError("refused")}, 503, "code=503, message=authentication service unavailable"),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
    ({"body": requests.ConnectTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
])
def test_keycloak_answer_to_gateway_answer(client, upstream, answer, status, body):
    grant_answers(upstream, **answer)
    response = login(client)
    assert (response.status_code, response.json) == (status, body)
    assert len(upstream.calls) == 1


def test_token_signed_by_a_key_the_realm_does_not_publish_is_a_bad_answer(client, upstream, signer):
    grant_answers(upstream, json={"access_token": Signer(kid="rogue").token(), "refresh_token": "r",
                                  "expires_in": 300})
    upstream.get(CERTS, json=signer.jwks)
    response = login(client)
    assert (response.status_code, response.json) == (502, "code=502, message=authentication service error")


@pytest.mark.parametrize("look_up, status, body", [
    ({"status": 403, "json": {"error": "unknown_error"}}, 502, "code=502, message=authentication service error"),
    ({"body": requests.ConnectionError("refused")}, 503, "code=503, message=authentication service unavailable"),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
    ({"json": {"not": "a list"}}, 502, "code=502, message=authentication service error"),
    ({"json": [{"username": "ahmadakbar"}]}, 502, "code=502, message=authentication service error"),
])
def test_failing_look_up_is_an_upstream_failure(client, upstream, look_up, status, body):
    grant_answers(upstream, **invalid_grant(400, "Invalid user credentials"))
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(SERVICE_GRANT_SENT)],
                  json={"access_token": "service-token", "expires_in": 300})
    upstream.get(USERS, **look_up)
    response = login(client)
    assert (response.status_code, response.json) == (status, body)


def test_upstream_error_body_never_reaches_the_client(client, upstream):
    grant_answers(upstream, status=500, body="java.lang.NullPointerException at org.keycloak.secret")
    response = login(client)
    assert "java" not in response.get_data(as_text=True)
    assert response.json == "code=502, message=authentication service error"


REFRESH_SENT = {"grant_type": "refresh_token", "client_id": "edmportal", "client_secret": "mock-secret",
                "refresh_token": "r-old"}
LOGOUT = f"{REALM}/protocol/openid-connect/logout"
LOGOUT_SENT = {"client_id": "edmportal", "client_secret": "mock-secret", "refresh_token": "r-old"}
TOKEN_INVALID = "code=401, message=refresh token is invalid or expired"


def test_refresh_success(client, upstream, signer):
    access = signer.token(sub="u-1")
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(REFRESH_SENT)],
                  json={"access_token": access, "refresh_token": "r-new", "expires_in": 300})
    upstream.get(CERTS, json=signer.jwks)
    response = client.post("/api/refresh", json={"refreshToken": "r-old"})
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    assert list(response.json.items()) == [("status", 200), ("message", "u-1"), ("accessToken", access),
                                           ("refreshToken", "r-new"), ("expiresIn", 300)]


def test_expires_in_is_the_access_tokens_own_lifetime(client, upstream, signer):
    """Keycloak counts `expires_in` down on its own clock as it answers: a refresh that crosses a second says 299
    for a token that lives 300 s. `expiresIn` is what the token itself says, `exp - iat`."""
    issued = int(time.time()) - 1
    access = signer.token(sub="u-1", iat=issued, exp=issued + 300)
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(REFRESH_SENT)],
                  json={"access_token": access, "refresh_token": "r-new", "expires_in": 299})
    upstream.get(CERTS, json=signer.jwks)
    response = client.post("/api/refresh", json={"refreshToken": "r-old"})
    assert (response.status_code, response.json["expiresIn"]) == (200, 300)


@pytest.mark.parametrize("description, status, body", [
    ("Invalid refresh token", 401, TOKEN_INVALID),
    ("Invalid refresh token. Token client and authorized client don't match", 401, TOKEN_INVALID),
    ("Token is not active", 401, TOKEN_INVALID),
    ("Session not active", 401, TOKEN_INVALID),
    ("Stale token", 401, TOKEN_INVALID),
    ("Refresh token expired", 401, TOKEN_INVALID),
    ("User disabled", 403, "code=403, message=account disabled"),
    ("Account disabled", 403, "code=403, message=account disabled"),
])
def test_refresh_refusals(client, upstream, description, status, body):
    upstream.post(TOKEN, match=[matchers.urlencoded_params_matcher(REFRESH_SENT)],
                  **invalid_grant(400, description))
    response = client.post("/api/refresh", data={"refreshToken": "r-old"})
    assert (response.status_code, response.json) == (status, body)


@pytest.mark.parametrize("path, url", [("/api/refresh", TOKEN), ("/api/logout", LOGOUT)])
def test_an_overlong_token_is_refused_as_invalid_request(client, upstream, path, url):
    """Keycloak drops a form parameter over 4,000 characters and answers as if no token had been sent."""
    upstream.post(url, status=400, json={"error": "invalid_request", "error_description": "No refresh token"})
    assert (client.post(path, json={"refreshToken": "r-old"}).json) == TOKEN_INVALID


@pytest.mark.parametrize("answer, status, body", [
    ({"status": 401, "json": {"error": "unauthorized_client"}}, 502, "code=502, message=authentication service error"),
    ({"body": requests.ConnectionError("refused")}, 503, "code=503, message=authentication service unavailable"),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
    # a Keycloak that is starting answers 503; a proxy in front of it 502 or 504
    ({"status": 503, "body": "<html>starting</html>"}, 503, "code=503, message=authentication service unavailable"),
    ({"status": 502, "body": "Bad Gateway"}, 503, "code=503, message=authentication service unavailable"),
    ({"status": 504, "body": ""}, 504, "code=504, message=authentication service timed out"),
    ({"status": 500, "body": "<html>oops</html>"}, 502, "code=502, message=authentication service error"),
])
@pytest.mark.parametrize("path, url", [("/api/refresh", TOKEN), ("/api/logout", LOGOUT)])
def test_refresh_and_logout_upstream_failures(client, upstream, path, url, answer, status, body):
    upstream.post(url, **answer)
    response = client.post(path, json={"refreshToken": "r-old"})
    assert (response.status_code, response.json) == (status, body)
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("answer, status, body", [
    ({"status": 204}, 200, {"status": 200, "message": "logged out"}),
    (invalid_grant(400, "Session not active"), 200, {"status": 200, "message": "logged out"}),
    (invalid_grant(400, "Token is not active"), 200, {"status": 200, "message": "logged out"}),
    (invalid_grant(400, "Invalid refresh token"), 401, TOKEN_INVALID),
    (invalid_grant(400, "Invalid refresh token. Token client and authorized client don't match"), 401, TOKEN_INVALID),
])
def test_logout_answers(client, upstream, answer, status, body):
    upstream.post(LOGOUT, match=[matchers.urlencoded_params_matcher(LOGOUT_SENT)], **answer)
    response = client.post("/api/logout", json={"refreshToken": "r-old"})
    assert (response.status_code, response.json) == (status, body)


@pytest.mark.parametrize("path", ["/api/refresh", "/api/logout"])
@pytest.mark.parametrize("body", [{}, {"refreshToken": ""}, {"refreshToken": None}, {"refreshToken": 5},
                                  {"refresh": "r-old"}, ["r-old"], {"refreshToken": "r" * 8193}], ids=repr)
def test_refresh_and_logout_bad_payload(client, upstream, path, body):
    response = client.post(path, json=body)
    assert (response.status_code, response.json) == (400, "code=400, message=payload is unknown")
    assert len(upstream.calls) == 0


@pytest.mark.parametrize("path, body", [
    ("/api/login", {"username": "ahmadakbar", "password": "password1"}),
    ("/api/refresh", {"refreshToken": "r-old"}),
    ("/api/logout", {"refreshToken": "r-old"}),
])
def test_a_dropped_post_is_never_sent_again(path, body, hanging_up_server):
    """A retried grant would be a second brute-force failure: the adapter retries nothing."""
    client = create_app(mock_config(KEYCLOAK_URL=hanging_up_server.url)).test_client()
    response = client.post(path, json=body)
    assert (response.status_code, response.json) == (503, "code=503, message=authentication service unavailable")
    assert hanging_up_server.connections == 1


def test_proxy_and_ca_bundle_settings_are_read_once_and_kept(monkeypatch, upstream):
    """Read from the environment at start, never again per call (a measured cost), and applied to every call:
    the OpenID endpoints' and the admin look-ups alike."""
    import certifi

    bundle = certifi.where()  # any real bundle: it is checked at start
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", bundle)
    client = create_app(mock_config(KEYCLOAK_URL="https://keycloak.internal/auth/")).test_client()
    monkeypatch.setenv("HTTPS_PROXY", "http://elsewhere:1")  # changed after the start: not read again
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    base = "https://keycloak.internal/auth/"
    upstream.post(f"{base}realms/edm/protocol/openid-connect/token", **invalid_grant(400, "Invalid user credentials"))
    upstream.post(f"{base}realms/edm/protocol/openid-connect/token", json={"access_token": "s", "expires_in": 300})
    upstream.get(f"{base}admin/realms/edm/users", json=[])
    assert login(client).json == "code=404, message=username not found"
    sent = [(c.request.req_kwargs["proxies"].get("https"), c.request.req_kwargs["verify"]) for c in upstream.calls]
    assert sent == [("http://proxy.internal:3128", bundle)] * 3


@pytest.mark.parametrize("raised, expected", [
    # the HTTP call's own failures, by type
    (requests.ConnectTimeout("connect"), UpstreamTimeout),
    (requests.ReadTimeout("read"), UpstreamTimeout),
    (requests.ConnectionError("refused"), UpstreamUnavailable),
    (requests.exceptions.SSLError("handshake"), UpstreamUnavailable),
    (requests.exceptions.ChunkedEncodingError("cut"), UpstreamUnavailable),
    (requests.exceptions.InvalidHeader("bad header"), UpstreamBadResponse),
    # an answer that cannot be read: a bad answer, not a crash
    (ValueError("Expecting value: line 1 column 1 (char 0)"), UpstreamBadResponse),
    (RecursionError("maximum recursion depth exceeded"), UpstreamBadResponse),
    (KeyError("access_token"), UpstreamBadResponse),
    (TypeError("odd"), UpstreamBadResponse),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v.__name__)
def test_every_branch_of_the_translation(raised, expected):
    with pytest.raises(expected) as caught:
        with _upstream("refresh grant", REFRESH_REFUSALS):
            raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised


@pytest.mark.parametrize("cause", [ValueError("odd"), RuntimeError("odd")])
def test_a_connection_error_with_an_odd_cause_is_a_502_not_a_500(client, upstream, cause):
    grant_answers(upstream, body=cause)
    response = login(client)
    assert (response.status_code, response.json) == (502, "code=502, message=authentication service error")


def test_the_client_secret_is_in_no_log_line(upstream, signer, caplog):
    """Success, every kind of failure and an outage, all logged at DEBUG: the secret never appears."""
    import logging

    client = create_app(mock_config()).test_client()
    with caplog.at_level(logging.DEBUG):
        grant_answers(upstream, json={"access_token": signer.token(), "refresh_token": "r", "expires_in": 300})
        upstream.get(CERTS, json=signer.jwks)
        assert login(client).status_code == 200
        upstream.replace(responses.POST, TOKEN, match=[matchers.urlencoded_params_matcher(GRANT_SENT)],
                         **invalid_grant(400, "Invalid user credentials"))
        look_up_answers(upstream, [])
        assert login(client).json == "code=404, message=username not found"
        for answer in ({"status": 200, "body": "<html>"}, {"body": ValueError("odd")},
                       {"body": requests.ConnectionError("refused")}, {"status": 401, "json": {"error": "x"}}):
            upstream.replace(responses.POST, TOKEN, match=[matchers.urlencoded_params_matcher(GRANT_SENT)], **answer)
            assert login(client).status_code in (502, 503)
    assert "mock-secret" not in caplog.text
    assert "Traceback" in caplog.text  # the odd failure was logged with its trace, and still no secret
