"""The user's sessions (`/api/sessions`, `/bff/sessions`) and what Keycloak's records learn of the client, against a
mocked Keycloak: how Keycloak's Account API answers become the gateway's, that only the user's own session ids are
ended, and which calls carry the client's address and browser. tests/test_sessions_api_keycloak.py proves the same
against the real Keycloak."""

import logging
from urllib.parse import parse_qs

import pytest
import requests
import responses
from responses import matchers
from urllib3.util import SKIP_HEADER

from gateway import create_app
from tests.conftest import MOCK_URL, mock_config
from tests.test_bff import CSRF, MockRealm, bff_app, log_in

REALM = f"{MOCK_URL}realms/edm"
CERTS = f"{REALM}/protocol/openid-connect/certs"
TOKEN = f"{REALM}/protocol/openid-connect/token"
LOGOUT = f"{REALM}/protocol/openid-connect/logout"
SESSIONS = f"{REALM}/account/sessions"
INVALID = "code=401, message=access token is invalid or expired"
NOT_FOUND = "code=404, message=session not found"
BAD = "code=502, message=authentication service error"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0.0.0 Safari/537.36"


def listed(session_id, address="10.1.2.3", client_ids=("edmportal",), **changes):
    """One session as Keycloak 26.7's Account API lists it."""
    entry = {"id": session_id, "ipAddress": address, "started": 1796304254, "lastAccess": 1796304260,
             "expires": 1796340254, "clients": [{"clientId": c, "clientName": "EDM portal gateway",
                                                 "userConsentRequired": False, "inUse": False,
                                                 "offlineAccess": False} for c in client_ids],
             "browser": "Chrome/130.0.0", **changes}
    return {name: value for name, value in entry.items() if value is not None}


@pytest.fixture
def realm(signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(CERTS, json=signer.jwks)
        yield mock


def bearer(token, **headers):
    return {"Authorization": f"Bearer {token}", "User-Agent": BROWSER, **headers}


def account_calls(realm):
    return [(call.request.method, call.request.url) for call in realm.calls if "/account/" in call.request.url]


def test_the_users_sessions_are_listed_with_the_tokens_own_marked_current(client, realm, signer):
    token = signer.token(sub="u-1", sid="AYzBofcC8RmYCu5sU7DVXxmW")
    realm.get(SESSIONS, json=[listed("AYzBofcC8RmYCu5sU7DVXxmW", current=True),
                              listed("mg7uWKDVsLhBNAXttIXTec3a", "127.0.0.1", ("edmportal", "account-console"))],
              match=[matchers.header_matcher({"Authorization": f"Bearer {token}", "Accept": "application/json",
                                              "X-Forwarded-For": "127.0.0.1", "User-Agent": BROWSER})])
    answer = client.get("/api/sessions", headers=bearer(token))
    assert answer.status_code == 200
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.get_data(as_text=True) == (
        '{"status":200,"message":"u-1","sessions":['
        '{"id":"AYzBofcC8RmYCu5sU7DVXxmW","ipAddress":"10.1.2.3","started":1796304254,"lastAccess":1796304260,'
        '"expires":1796340254,"current":true,"clients":["edmportal"]},'
        '{"id":"mg7uWKDVsLhBNAXttIXTec3a","ipAddress":"127.0.0.1","started":1796304254,"lastAccess":1796304260,'
        '"expires":1796340254,"current":false,"clients":["edmportal","account-console"]}]}\n')


def test_a_token_without_sid_has_no_current_session_and_a_session_without_clients_lists_none(client, realm, signer):
    realm.get(SESSIONS, json=[listed("s-1", clients=None)])
    answer = client.get("/api/sessions", headers=bearer(signer.token()))
    assert answer.json["sessions"] == [{"id": "s-1", "ipAddress": "10.1.2.3", "started": 1796304254,
                                        "lastAccess": 1796304260, "expires": 1796340254, "current": False,
                                        "clients": []}]


@pytest.mark.parametrize("headers, body", [
    ({}, "code=401, message=missing access token"),
    ({"Authorization": "Bearer not-a-token"}, INVALID),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, "code=401, message=missing access token"),
])
@pytest.mark.parametrize("method, path", [("GET", "/api/sessions"), ("DELETE", "/api/sessions/s-1")])
def test_a_token_refused_here_never_reaches_keycloak(client, realm, method, path, headers, body):
    answer = client.open(path, method=method, headers=headers)
    assert (answer.status_code, answer.json) == (401, body)
    assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="edm"')
    assert account_calls(realm) == []


def test_an_expired_token_is_refused_before_keycloak_is_asked(client, realm, signer):
    import time

    answer = client.get("/api/sessions", headers=bearer(signer.token(exp=int(time.time()) - 120)))
    assert (answer.status_code, answer.json) == (401, INVALID)
    assert account_calls(realm) == []


@pytest.mark.parametrize("answer, status, body", [
    ({"status": 401, "json": {"error": "HTTP 401 Unauthorized"}}, 401, INVALID),
    ({"status": 401, "body": ""}, 401, INVALID),
    ({"status": 403, "json": {"error": "HTTP 403 Forbidden"}}, 502, BAD),  # no manage-account role, no account aud
    ({"status": 403, "json": {"error": "invalid_request", "error_description": "HTTPS required"}}, 502, BAD),
    ({"status": 404, "json": {"error": "Realm does not exist"}}, 502, BAD),
    ({"status": 405, "json": {"error": "HTTP 405 Method Not Allowed"}}, 502, BAD),
    ({"status": 500, "body": "<html>Internal Server Error</html>"}, 502, BAD),
    ({"status": 200, "body": "<!doctype html><html>the account console</html>"}, 502, BAD),
    ({"status": 200, "body": ""}, 502, BAD),
    ({"status": 200, "json": {"sessions": []}}, 502, BAD),
    ({"status": 200, "json": ["s-1"]}, 502, BAD),
    ({"status": 200, "json": [listed(None)]}, 502, BAD),
    ({"status": 200, "json": [listed(7)]}, 502, BAD),
    ({"status": 200, "json": [listed("")]}, 502, BAD),
    ({"status": 200, "json": [listed("..")]}, 502, BAD),
    ({"status": 200, "json": [listed("a/b")]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", started="1796304254")]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", expires=True)]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", lastAccess=1.5)]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", ipAddress=["10.0.0.1"])]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", clients="edmportal")]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", clients=[{"clientName": "no id"}])]}, 502, BAD),
    ({"status": 200, "json": [listed("s-1", clients=["edmportal"])]}, 502, BAD),
    ({"body": requests.ConnectionError("refused")}, 503, "code=503, message=authentication service unavailable"),
    ({"body": requests.exceptions.ChunkedEncodingError("cut")}, 503,
     "code=503, message=authentication service unavailable"),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
])
def test_keycloaks_answer_to_the_list_becomes_the_gateways(client, realm, signer, answer, status, body):
    realm.get(SESSIONS, **answer)
    response = client.get("/api/sessions", headers=bearer(signer.token(sid="s-1")))
    assert (response.status_code, response.json) == (status, body)
    assert response.headers["Cache-Control"] == "no-store"
    delete = client.delete("/api/sessions/s-1", headers=bearer(signer.token(sid="s-1")))
    assert (delete.status_code, delete.json) == (status, body)
    assert [method for method, _ in account_calls(realm)] == ["GET", "GET"]  # nothing was ended


def test_a_session_keycloak_lists_without_an_address_is_listed_so(client, realm, signer):
    realm.get(SESSIONS, json=[listed("s-1", address=None)])
    answer = client.get("/api/sessions", headers=bearer(signer.token(sid="s-1")))
    assert answer.json["sessions"][0]["ipAddress"] is None


def me(client, token):
    answer = client.get("/api/me", headers=bearer(token))
    return answer.status_code, answer.json if answer.status_code != 200 else answer.json["message"]


def test_ending_another_of_the_users_sessions_ends_it_at_keycloak_and_here(client, realm, signer):
    mine, other = signer.token(sid="s-mine"), signer.token(sid="s-other")
    realm.get(SESSIONS, json=[listed("s-mine"), listed("s-other")])
    realm.delete(f"{SESSIONS}/s-other", status=204, match=[matchers.header_matcher({
        "Authorization": f"Bearer {mine}", "Accept": "application/json", "X-Forwarded-For": "127.0.0.1",
        "User-Agent": BROWSER})])
    assert me(client, other) == (200, "mock-user-id")
    answer = client.delete("/api/sessions/s-other", headers=bearer(mine))
    assert (answer.status_code, answer.json) == (200, {"status": 200, "message": "session ended"})
    assert answer.headers["Cache-Control"] == "no-store"
    assert account_calls(realm) == [("GET", SESSIONS), ("DELETE", f"{SESSIONS}/s-other")]
    assert me(client, other) == (401, INVALID)
    assert me(client, mine) == (200, "mock-user-id")


def test_ending_the_tokens_own_session_refuses_the_token_from_then_on(client, realm, signer):
    mine = signer.token(sid="s-mine")
    realm.get(SESSIONS, json=[listed("s-mine")])
    realm.delete(f"{SESSIONS}/s-mine", status=204)
    assert client.delete("/api/sessions/s-mine", headers=bearer(mine)).json == {"status": 200,
                                                                                "message": "session ended"}
    assert me(client, mine) == (401, INVALID)
    assert client.get("/api/sessions", headers=bearer(mine)).json == INVALID


@pytest.mark.parametrize("session_id", [
    "s-of-another-user", "S-MINE", "s-mine ", "s-min", "x" * 300, "..", "%2E%2E", "s-mine%00", "%C3%A9", "s-mine;x",
])
def test_an_id_that_is_not_one_of_the_users_sessions_is_404_and_ends_nothing(client, realm, signer, session_id):
    mine, others = signer.token(sid="s-mine"), signer.token(sid="s-of-another-user", sub="someone-else")
    realm.get(SESSIONS, json=[listed("s-mine")])
    answer = client.delete(f"/api/sessions/{session_id}", headers=bearer(mine))
    assert (answer.status_code, answer.json) == (404, NOT_FOUND)
    assert answer.headers["Cache-Control"] == "no-store"
    assert account_calls(realm) == [("GET", SESSIONS)]  # never Keycloak's DELETE, which answers 204 for any id
    assert me(client, mine) == (200, "mock-user-id")
    assert me(client, others) == (200, "someone-else")


@pytest.mark.parametrize("path, status, body", [
    ("/api/sessions/", 404, "code=404, message=not found"),
    ("/api/sessions/a/b", 404, "code=404, message=not found"),
])
def test_paths_beside_the_sessions_are_not_found(client, realm, signer, path, status, body):
    answer = client.delete(path, headers=bearer(signer.token(sid="s-mine")))
    assert (answer.status_code, answer.json) == (status, body)
    assert account_calls(realm) == []


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/api/sessions", {"GET", "HEAD", "OPTIONS"}), ("DELETE", "/api/sessions", {"GET", "HEAD", "OPTIONS"}),
    ("GET", "/api/sessions/s-1", {"DELETE", "OPTIONS"}), ("POST", "/api/sessions/s-1", {"DELETE", "OPTIONS"}),
])
def test_other_methods_are_405_with_allow(client, method, path, allow):
    answer = client.open(path, method=method)
    assert (answer.status_code, answer.json) == (405, "code=405, message=method not allowed")
    assert set(answer.headers["Allow"].split(", ")) == allow


def test_a_keycloak_that_fails_to_end_it_after_the_gateway_did_leaves_it_refused_here(client, realm, signer):
    mine, other = signer.token(sid="s-mine"), signer.token(sid="s-other")
    realm.get(SESSIONS, json=[listed("s-mine"), listed("s-other")])
    realm.delete(f"{SESSIONS}/s-other", body=requests.ConnectionError("refused"))
    answer = client.delete("/api/sessions/s-other", headers=bearer(mine))
    assert (answer.status_code, answer.json) == (503, "code=503, message=authentication service unavailable")
    assert me(client, other) == (401, INVALID)  # failed closed: the session's tokens are refused all the same


@pytest.mark.parametrize("answer, status, body", [
    ({"status": 401, "json": {"error": "HTTP 401 Unauthorized"}}, 401, INVALID),
    ({"status": 405, "json": {"error": "HTTP 405 Method Not Allowed"}}, 502, BAD),
    ({"status": 200, "json": ["not", "an", "object"]}, 502, BAD),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
])
def test_keycloaks_answer_to_the_end_becomes_the_gateways(client, realm, signer, answer, status, body):
    realm.get(SESSIONS, json=[listed("s-mine"), listed("s-other")])
    realm.delete(f"{SESSIONS}/s-other", **answer)
    response = client.delete("/api/sessions/s-other", headers=bearer(signer.token(sid="s-mine")))
    assert (response.status_code, response.json) == (status, body)


@pytest.fixture
def bff_client(tmp_path, signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        realm = MockRealm(mock, signer)
        client = bff_app(tmp_path).test_client()
        assert log_in(client, realm).status_code == 302
        client.mock, client.realm = mock, realm
        yield client


def test_bff_sessions_are_listed_with_the_sessions_access_token(bff_client):
    access_token = bff_client.realm.issued[-1]
    bff_client.mock.get(SESSIONS, json=[listed("kc-session-1"), listed("kc-session-2", "192.168.1.9")],
                        match=[matchers.header_matcher({"Authorization": f"Bearer {access_token}"})])
    answer = bff_client.get("/bff/sessions", headers=CSRF)
    assert (answer.status_code, answer.headers["Cache-Control"]) == (200, "no-store")
    assert answer.json == {"status": 200, "message": "mock-user-id", "sessions": [
        {"id": "kc-session-1", "ipAddress": "10.1.2.3", "started": 1796304254, "lastAccess": 1796304260,
         "expires": 1796340254, "current": True, "clients": ["edmportal"]},
        {"id": "kc-session-2", "ipAddress": "192.168.1.9", "started": 1796304254, "lastAccess": 1796304260,
         "expires": 1796340254, "current": False, "clients": ["edmportal"]}]}
    assert list(answer.json["sessions"][0]) == ["id", "ipAddress", "started", "lastAccess", "expires", "current",
                                                "clients"]


@pytest.mark.parametrize("method, path", [("GET", "/bff/sessions"), ("DELETE", "/bff/sessions/kc-session-2")])
def test_bff_sessions_need_the_csrf_header_and_a_session(bff_client, tmp_path, method, path):
    answer = bff_client.open(path, method=method)
    assert (answer.status_code, answer.json) == (403, "code=403, message=missing csrf header")
    (tmp_path / "other").mkdir()
    anonymous = bff_app(tmp_path / "other").test_client()
    answer = anonymous.open(path, method=method, headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert [c for c in bff_client.mock.calls if "/account/" in c.request.url] == []


def test_bff_ending_another_session_keeps_the_browsers(bff_client):
    bff_client.mock.get(SESSIONS, json=[listed("kc-session-1"), listed("kc-session-2")])
    bff_client.mock.delete(f"{SESSIONS}/kc-session-2", status=204)
    answer = bff_client.delete("/bff/sessions/kc-session-2", headers=CSRF)
    assert (answer.status_code, answer.json) == (200, {"status": 200, "message": "session ended"})
    assert "Set-Cookie" not in answer.headers
    assert bff_client.get("/bff/user", headers=CSRF).status_code == 200


def test_bff_ending_the_browsers_own_session_is_a_logout_of_it(bff_client):
    bff_client.mock.get(SESSIONS, json=[listed("kc-session-1")])
    bff_client.mock.delete(f"{SESSIONS}/kc-session-1", status=204)
    answer = bff_client.delete("/bff/sessions/kc-session-1", headers=CSRF)
    assert (answer.status_code, answer.json) == (200, {"status": 200, "message": "session ended"})
    assert answer.headers["Set-Cookie"].startswith("__Host-edm-session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT;")
    bff_client.set_cookie("__Host-edm-session", answer.request.cookies["__Host-edm-session"])  # the old cookie, kept
    after = bff_client.get("/bff/user", headers=CSRF)
    assert (after.status_code, after.json) == (401, "code=401, message=not logged in")


def test_bff_an_id_that_is_not_the_users_is_404_and_ends_nothing(bff_client):
    bff_client.mock.get(SESSIONS, json=[listed("kc-session-1")])
    answer = bff_client.delete("/bff/sessions/kc-session-9", headers=CSRF)
    assert (answer.status_code, answer.json) == (404, NOT_FOUND)
    assert [c.request.method for c in bff_client.mock.calls if "/account/" in c.request.url] == ["GET"]
    assert bff_client.get("/bff/user", headers=CSRF).status_code == 200


def test_bff_a_session_whose_access_token_keycloak_refuses_is_ended(bff_client):
    bff_client.mock.get(SESSIONS, status=401, json={"error": "HTTP 401 Unauthorized"})
    answer = bff_client.get("/bff/sessions", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert answer.headers["Set-Cookie"].startswith("__Host-edm-session=; Expires=Thu, 01 Jan 1970")
    cookie = answer.request.cookies["__Host-edm-session"]
    bff_client.set_cookie("__Host-edm-session", cookie)
    assert bff_client.get("/bff/user", headers=CSRF).json == "code=401, message=not logged in"  # deleted, not hidden


@pytest.mark.parametrize("answer, status, body", [
    ({"status": 403, "json": {"error": "HTTP 403 Forbidden"}}, 502, BAD),
    ({"body": requests.ConnectionError("refused")}, 503, "code=503, message=authentication service unavailable"),
    ({"body": requests.ReadTimeout("slow")}, 504, "code=504, message=authentication service timed out"),
])
def test_bff_keycloaks_failures_are_the_upstream_answers(bff_client, answer, status, body):
    bff_client.mock.get(SESSIONS, **answer)
    response = bff_client.get("/bff/sessions", headers=CSRF)
    assert (response.status_code, response.json) == (status, body)
    assert bff_client.get("/bff/user", headers=CSRF).status_code == 200  # the session lives on


def forwarded(call):
    """What a call to Keycloak told it of the client: (X-Forwarded-For, User-Agent)."""
    headers = call.request.headers
    return headers.get("X-Forwarded-For"), headers.get("User-Agent")


def login_answers(realm, signer):
    body = {"access_token": signer.token(sid="s-1"), "refresh_token": "r-1", "expires_in": 300}
    realm.post(TOKEN, json=body)
    realm.post(LOGOUT, status=204)


@pytest.mark.parametrize("config, environ, headers, expected", [
    ({}, {}, {"User-Agent": BROWSER}, ("127.0.0.1", BROWSER)),
    ({}, {}, {"User-Agent": BROWSER, "X-Forwarded-For": "10.9.9.9"}, ("127.0.0.1", BROWSER)),  # not trusted
    ({"GATEWAY_TRUSTED_PROXIES": "1"}, {}, {"X-Forwarded-For": "10.9.9.9", "User-Agent": "curl/8.5.0"},
     ("10.9.9.9", "curl/8.5.0")),
    ({"GATEWAY_TRUSTED_PROXIES": "1"}, {}, {"X-Forwarded-For": "8.8.8.8, 10.9.9.9"}, ("10.9.9.9", None)),
    ({"GATEWAY_TRUSTED_PROXIES": "2"}, {}, {"X-Forwarded-For": "203.0.113.7, 10.9.9.9"}, ("203.0.113.7", None)),
    ({"GATEWAY_TRUSTED_PROXIES": "1"}, {}, {"X-Forwarded-For": "unknown"}, (None, None)),
    ({"GATEWAY_TRUSTED_PROXIES": "1"}, {}, {"X-Forwarded-For": "10.0.0.1 garbage"}, (None, None)),
    ({}, {"REMOTE_ADDR": "::ffff:10.0.0.7"}, {}, ("10.0.0.7", None)),
    ({}, {"REMOTE_ADDR": "fd00::1"}, {}, ("fd00::1", None)),
    ({}, {"REMOTE_ADDR": "fe80::1%eth0"}, {}, ("fe80::1", None)),
    ({}, {"REMOTE_ADDR": ""}, {}, (None, None)),  # a Unix socket
    ({}, {}, {"User-Agent": "A" * 3000}, ("127.0.0.1", "A" * 512)),
    ({}, {}, {"User-Agent": "Mozilla/5.0 \x7f\x01caf\xe9"}, ("127.0.0.1", "Mozilla/5.0 caf")),
])
def test_keycloak_hears_the_clients_address_and_browser_on_login_and_logout(realm, signer, config, environ,
                                                                            headers, expected):
    client = create_app(mock_config(**config)).test_client()
    del client.environ_base["HTTP_USER_AGENT"]  # Werkzeug's own
    login_answers(realm, signer)
    body = {"username": "ahmadakbar", "password": "password1"}
    assert client.post("/api/login", json=body, headers=headers, environ_base=environ).status_code == 200
    assert client.post("/api/logout", json={"refreshToken": "r-1"}, headers=headers,
                       environ_base=environ).status_code == 200
    calls = [call for call in realm.calls if call.request.url in (TOKEN, LOGOUT)]
    address, agent = expected
    for call in calls:
        seen_address, seen_agent = forwarded(call)
        assert seen_address == address
        assert seen_agent == (agent or SKIP_HEADER)  # urllib3 then sends no User-Agent at all
    assert [forwarded(c)[0] for c in realm.calls if c.request.url == CERTS] == [None]  # the realm's own, for all


def test_the_code_exchange_and_the_refresh_carry_them_too(tmp_path, signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        realm = MockRealm(mock, signer)
        client = bff_app(tmp_path, GATEWAY_TRUSTED_PROXIES="1").test_client()
        client.environ_base.update({"HTTP_USER_AGENT": BROWSER, "HTTP_X_FORWARDED_FOR": "172.16.5.4"})
        assert log_in(client, realm).status_code == 302
        assert client.post("/api/refresh", json={"refreshToken": "refresh-token-1"}).status_code == 200
        grants = [(parse_qs(c.request.body)["grant_type"][0], forwarded(c)) for c in mock.calls
                  if c.request.url == TOKEN]
    assert grants == [("authorization_code", ("172.16.5.4", BROWSER)), ("refresh_token", ("172.16.5.4", BROWSER))]


def test_an_https_required_answer_is_the_502_with_a_reason_for_the_admin(realm, signer, caplog):
    client = create_app(mock_config(GATEWAY_TRUSTED_PROXIES="1")).test_client()
    realm.post(TOKEN, status=403, json={"error": "invalid_request", "error_description": "HTTPS required"})
    with caplog.at_level(logging.WARNING, logger="gateway.errors"):
        answer = client.post("/api/login", json={"username": "ahmadakbar", "password": "password1"},
                             headers={"X-Forwarded-For": "8.8.8.8"})
    assert (answer.status_code, answer.json) == (502, BAD)
    assert "call it over https" in caplog.text
