"""BFF mode with a mocked Keycloak (the answers Keycloak gives, signed by a stand-in realm key): the login redirect,
every refusal of the callback, the cookies, the CSRF header, /bff/user, logout, the refresh of an expiring access
token, and the proxy's checks and forwarding to a local upstream. tests/test_bff_keycloak.py and
tests/test_bff_chromium.py do the same against the real Keycloak."""

import base64
import hashlib
import io
import json
import re
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from gateway import create_app
from tests.bff import BFF_SECRET
from tests.conftest import ISSUER, MOCK_URL, mock_config
from tests.upstreams import KeepAliveUpstream

REALM = f"{MOCK_URL}realms/edm/protocol/openid-connect"
PUBLIC = "http://127.0.0.1:8000"
CSRF = {"X-CSRF": "1"}


def bff_app(tmp_path, **overrides):
    return create_app(mock_config(**{"GATEWAY_BFF": "true", "GATEWAY_SESSION_SECRET": BFF_SECRET,
                                     "GATEWAY_PUBLIC_URL": PUBLIC, "TMPDIR": str(tmp_path), **overrides}))


@pytest.fixture
def app(tmp_path, echo_upstream):
    return bff_app(tmp_path, GATEWAY_BFF_UPSTREAMS=f"echo={echo_upstream.url}/base,other=http://127.0.0.1:9")


def at_hash(access_token):
    return base64.urlsafe_b64encode(hashlib.sha256(access_token.encode()).digest()[:16]).rstrip(b"=").decode()


class MockRealm:
    """Keycloak's token, keys and logout endpoints, answering as Keycloak 26 does."""

    def __init__(self, mock, signer):
        self.signer, self.logins, self.grants, self.logouts, self.issued = signer, {}, [], [], []
        self.refusal = None  # (status, body) to answer the next grant with
        self.id_claims = {}  # claims to change in the next ID token
        self.expires_in = 300
        mock.get(f"{REALM}/certs", json=signer.jwks)
        mock.add_callback(responses.POST, f"{REALM}/token", callback=self._token)
        mock.add_callback(responses.POST, f"{REALM}/logout", callback=self._logout)

    def expect(self, location, code="the-code", sub="mock-user-id"):
        """A code Keycloak will exchange for the login whose redirect is `location`."""
        query = parse_qs(urlsplit(location).query)
        self.logins[code] = (query["nonce"][0], query["code_challenge"][0], sub)
        return code

    def _tokens(self, sub, nonce=None):
        self.count = getattr(self, "count", 0) + 1
        access = self.signer.token(sub=sub, sid="kc-session-1", exp=int(time.time()) + self.expires_in,
                                   jti=f"access-{self.count}", email="someone@example.com")
        self.issued.append(access)
        body = {"access_token": access, "expires_in": self.expires_in, "refresh_expires_in": 1800,
                "refresh_token": f"refresh-token-{self.count}", "token_type": "Bearer", "scope": "openid"}
        if nonce is not None:
            claims = {"typ": "ID", "aud": "edmportal", "nonce": nonce, "at_hash": at_hash(access),
                      "sid": "kc-session-1", "sub": sub, **self.id_claims}
            body["id_token"] = self.signer.token(**claims)
        return body

    def _token(self, request):
        form = {k: v[0] for k, v in parse_qs(request.body).items()}
        self.grants.append(form)
        if self.refusal:
            status, body = self.refusal
            return status, {}, json.dumps(body)
        if form["grant_type"] == "refresh_token":
            return 200, {}, json.dumps(self._tokens("mock-user-id"))
        nonce, challenge, sub = self.logins.pop(form.get("code"), (None, None, None))
        verifier = form.get("code_verifier", "")
        expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if nonce is None or expected != challenge:
            return 400, {}, json.dumps({"error": "invalid_grant", "error_description": "Code not valid"})
        return 200, {}, json.dumps(self._tokens(sub, nonce))

    def _logout(self, request):
        self.logouts.append({k: v[0] for k, v in parse_qs(request.body).items()})
        return 204, {}, ""


@pytest.fixture
def realm(signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru("http://127.0.0.1")  # the echo upstream is real
        yield MockRealm(mock, signer)


def start_login(client, return_url="/after"):
    answer = client.get("/bff/login", query_string={"returnUrl": return_url})
    assert answer.status_code == 302, answer.json
    return answer


def log_in(client, realm, return_url="/after"):
    """The whole login with the mocked Keycloak; the callback's answer."""
    location = start_login(client, return_url).headers["Location"]
    code = realm.expect(location)
    state = parse_qs(urlsplit(location).query)["state"][0]
    return client.get("/bff/callback", query_string={"state": state, "code": code, "iss": ISSUER,
                                                     "session_state": "kc-session-1"})


def set_cookies(response):
    return {c.split("=", 1)[0]: c for c in response.headers.getlist("Set-Cookie")}


def test_login_redirects_to_keycloaks_page_with_pkce_state_and_nonce(client):
    answer = start_login(client, "/portal/orders?page=2")
    location = urlsplit(answer.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        "http://localhost:8180/auth/realms/edm/protocol/openid-connect/auth")  # KEYCLOAK_PUBLIC_URL, not the one called
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert sorted(query) == ["client_id", "code_challenge", "code_challenge_method", "nonce", "redirect_uri",
                             "response_type", "scope", "state"]
    assert (query["client_id"], query["response_type"], query["redirect_uri"], query["code_challenge_method"]) == (
        "edmportal", "code", f"{PUBLIC}/bff/callback", "S256")
    assert query["scope"].split() == ["openid", "profile", "email"]
    for name in ("state", "nonce", "code_challenge"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", query[name]), name
    assert answer.data == b"" and answer.headers["Cache-Control"] == "no-store"
    cookie = set_cookies(answer)["__Host-edm-login"]
    # the login itself, sealed: a 10-minute cookie, nothing stored on the gateway
    assert re.fullmatch(r"__Host-edm-login=[A-Za-z0-9_-]{300,600}; Expires=[^;]+; Max-Age=600; Secure; HttpOnly; "
                        r"Path=/; SameSite=Lax", cookie), cookie
    second = urlsplit(start_login(client).headers["Location"]).query
    assert parse_qs(second)["state"] != query["state"]  # every login its own state, nonce and verifier
    assert len(client.get_cookie("__Host-edm-login").value) > len(cookie.split(";")[0])  # both logins under way


@pytest.mark.parametrize("return_url", ["/", "/after", "/portal/orders?page=2&sort=date", "/a/b/", "/%2F%2Fx",
                                        "/" + "a" * 511])
def test_local_return_urls_are_taken(client, return_url):
    assert start_login(client, return_url).status_code == 302


@pytest.mark.parametrize("return_url", [
    "", "after", "https://evil.example/", "//evil.example", "///evil.example", "/\\evil.example", "\\\\evil.example",
    "/\t/evil.example", "/\n/evil.example", "javascript:alert(1)", "http:/evil.example", "/ünïcode", "/a b",
    "/" + "a" * 512, "/" + "a" * 2048,
])
def test_foreign_return_urls_are_refused(client, return_url):
    answer = client.get("/bff/login", query_string={"returnUrl": return_url})
    assert (answer.status_code, answer.json) == (400, "code=400, message=invalid return url")
    assert "__Host-edm-login" not in set_cookies(answer)


def test_a_login_sets_one_session_cookie_and_returns(client, realm):
    answer = log_in(client, realm, "/portal?tab=1")
    assert (answer.status_code, answer.headers["Location"], answer.data) == (302, "/portal?tab=1", b"")
    cookies = set_cookies(answer)
    assert re.fullmatch(r"__Host-edm-session=[A-Za-z0-9_-]{43}; Secure; HttpOnly; Path=/; SameSite=Strict",
                        cookies["__Host-edm-session"]), cookies
    assert cookies["__Host-edm-login"].startswith("__Host-edm-login=; Expires=Thu, 01 Jan 1970")
    grant = realm.grants[-1]
    assert {k: v for k, v in grant.items() if k not in ("code_verifier", "code")} == {
        "grant_type": "authorization_code", "redirect_uri": f"{PUBLIC}/bff/callback", "client_id": "edmportal",
        "client_secret": "mock-secret"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{86}", grant["code_verifier"])


def test_the_user_and_the_session(client, realm):
    log_in(client, realm)
    answer = client.get("/bff/user", headers=CSRF)
    assert answer.status_code == 200
    assert answer.json == {
        "status": 200, "message": "mock-user-id",
        "user": {"id": "mock-user-id", "username": "mockuser", "email": "someone@example.com", "emailVerified": None,
                 "firstName": None, "lastName": None, "roles": []},
        "session": {"expiresIn": answer.json["session"]["expiresIn"], "logoutUrl": "/bff/logout?sid=kc-session-1"}}
    assert 1795 <= answer.json["session"]["expiresIn"] <= 1800
    assert list(answer.json) == ["status", "message", "user", "session"]
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("method, path", [("GET", "/bff/user"), ("POST", "/bff/logout?sid=x"),
                                          ("GET", "/bff/api/echo/x"), ("POST", "/bff/api/echo/x"),
                                          ("OPTIONS", "/bff/user"), ("DELETE", "/bff/api/echo/x")])
@pytest.mark.parametrize("header", [None, "0", "true", " 1", "11"])
def test_every_bff_request_but_the_login_needs_the_csrf_header(client, realm, method, path, header):
    log_in(client, realm)
    headers = {} if header is None else {"X-CSRF": header}
    answer = client.open(path, method=method, headers=headers)
    assert (answer.status_code, answer.json) == (403, "code=403, message=missing csrf header")
    assert client.open(path, method=method, headers=CSRF).status_code != 403


def test_without_a_session(client):
    answer = client.get("/bff/user", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert "Set-Cookie" not in answer.headers
    client.set_cookie("__Host-edm-session", "a" * 43)
    answer = client.get("/bff/user", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert set_cookies(answer)["__Host-edm-session"].startswith("__Host-edm-session=; Expires=Thu, 01 Jan 1970")
    for path, method in (("/bff/logout?sid=kc-session-1", "POST"), ("/bff/api/echo/x", "GET")):
        answer = client.open(path, method=method, headers=CSRF)
        assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")


def callback(client, **query):
    return client.get("/bff/callback", query_string=query)


LOGIN_FAILED = (400, "code=400, message=login failed")


def test_callbacks_without_a_known_state_fail(client, realm, app):
    location = start_login(client).headers["Location"]
    code = realm.expect(location)
    assert (lambda a: (a.status_code, a.json))(callback(client, code=code)) == LOGIN_FAILED  # no state
    assert (lambda a: (a.status_code, a.json))(callback(client, code=code, state="forged" * 7)) == LOGIN_FAILED
    state = parse_qs(urlsplit(location).query)["state"][0]
    stranger = app.test_client()  # another browser, without this one's login cookie
    assert (lambda a: (a.status_code, a.json))(callback(stranger, code=code, state=state)) == LOGIN_FAILED
    stranger.set_cookie("__Host-edm-login", "b" * 43)
    assert (lambda a: (a.status_code, a.json))(callback(stranger, code=code, state=state)) == LOGIN_FAILED
    assert realm.grants == []  # none of them reached Keycloak
    assert callback(client, code=code, state=state, iss=ISSUER).status_code == 302  # the stranger used nothing up
    reused = callback(client, code=code, state=state, iss=ISSUER)
    assert (reused.status_code, reused.json) == LOGIN_FAILED
    assert len(realm.grants) == 1


def test_a_callback_with_keycloaks_error_fails_and_spends_the_state(client, realm):
    location = start_login(client).headers["Location"]
    state = parse_qs(urlsplit(location).query)["state"][0]
    answer = callback(client, state=state, error="access_denied", error_description="User denied", iss=ISSUER)
    assert (answer.status_code, answer.json) == LOGIN_FAILED
    answer = callback(client, state=state, code=realm.expect(location), iss=ISSUER)
    assert (answer.status_code, answer.json) == LOGIN_FAILED
    assert realm.grants == []


@pytest.mark.parametrize("query", [{"iss": "http://evil.example/realms/edm"}, {"iss": ""}, {"omit": "iss"},
                                   {"iss": ISSUER + "/"}, {"code": ""}, {"omit": "code"}])
def test_a_callback_from_another_issuer_or_none_or_without_code_fails(client, realm, query):
    location = start_login(client).headers["Location"]
    arguments = {"state": parse_qs(urlsplit(location).query)["state"][0], "code": realm.expect(location),
                 "iss": ISSUER, **query}
    arguments.pop(arguments.pop("omit", "none"), None)
    assert (lambda a: (a.status_code, a.json))(callback(client, **arguments)) == LOGIN_FAILED
    assert realm.grants == []


@pytest.mark.parametrize("change", [
    {"nonce": "another-nonce"}, {"aud": "another-client"}, {"aud": ["edmportal", "other"], "azp": "other"},
    {"iss": "http://evil.example/realms/edm"}, {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, {"at_hash": None},
    {"nonce": None}, {"typ": "Bearer"}, {"exp": 1000}, {"sub": "someone-else"}, {"sid": None}, {"nonce": "\ud800"},
], ids=str)
def test_an_id_token_that_fails_a_check_fails_the_login(client, realm, change):
    realm.id_claims = change
    answer = log_in(client, realm)
    assert (answer.status_code, answer.json) == LOGIN_FAILED
    assert "__Host-edm-session" not in set_cookies(answer)


def test_a_code_that_keycloak_refuses_fails_the_login(client, realm):
    realm.refusal = (400, {"error": "invalid_grant", "error_description": "PKCE verification failed: Code mismatch"})
    assert (lambda a: (a.status_code, a.json))(log_in(client, realm)) == LOGIN_FAILED


@pytest.mark.parametrize("refusal, answer", [
    ((401, {"error": "unauthorized_client", "error_description": "Invalid client credentials"}),
     (502, "code=502, message=authentication service error")),
    ((500, {"error": "unknown_error"}), (502, "code=502, message=authentication service error")),
])
def test_a_code_exchange_keycloak_cannot_do_is_an_upstream_error(client, realm, refusal, answer):
    realm.refusal = refusal
    response = log_in(client, realm)
    assert (response.status_code, response.json) == answer


def test_logout_needs_the_sessions_sid_and_ends_both_sessions(client, realm):
    log_in(client, realm)
    for sid in ("", "other-session", "kc-session-1x", "ünï"):
        answer = client.post("/bff/logout", query_string={"sid": sid}, headers=CSRF)
        assert (answer.status_code, answer.json) == (400, "code=400, message=invalid session id")
    answer = client.post("/bff/logout", headers=CSRF)
    assert (answer.status_code, answer.json) == (400, "code=400, message=invalid session id")
    assert realm.logouts == []
    answer = client.post("/bff/logout?sid=kc-session-1", headers=CSRF)
    assert (answer.status_code, answer.json) == (200, {"status": 200, "message": "logged out"})
    assert set_cookies(answer)["__Host-edm-session"] == (
        "__Host-edm-session=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Secure; HttpOnly; Path=/; "
        "SameSite=Strict")
    assert realm.logouts == [{"client_id": "edmportal", "refresh_token": "refresh-token-1",
                              "client_secret": "mock-secret"}]
    assert client.get("/bff/user", headers=CSRF).status_code == 401


@pytest.mark.parametrize("keycloak", [{"body": requests.ConnectionError("refused")}, {"status": 500, "body": "oops"},
                                      {"body": requests.Timeout("slow")}], ids=["down", "error", "slow"])
def test_logout_ends_the_gateways_session_first_whatever_keycloak_answers(client, realm, app, keycloak, caplog):
    log_in(client, realm)
    cookie = client.get_cookie("__Host-edm-session").value
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.post(f"{REALM}/logout", **keycloak)
        answer = client.post("/bff/logout?sid=kc-session-1", headers=CSRF)
    assert (answer.status_code, answer.json) == (200, {"status": 200, "message": "logged out"})
    assert set_cookies(answer)["__Host-edm-session"].startswith("__Host-edm-session=; Expires=Thu, 01 Jan 1970")
    other_browser = app.test_client()
    other_browser.set_cookie("__Host-edm-session", cookie)
    answer = other_browser.get("/bff/user", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert any("Keycloak's could not be ended now" in record.getMessage() for record in caplog.records)


def test_a_new_login_in_the_same_browser_ends_its_previous_session(client, realm, app):
    log_in(client, realm)
    first = client.get_cookie("__Host-edm-session").value
    log_in(client, realm)  # the same Keycloak session: only the gateway's old record goes
    second = client.get_cookie("__Host-edm-session").value
    assert realm.logouts == []
    realm.id_claims = {"sid": "kc-session-2"}  # a new Keycloak session: the old one is ended there too
    log_in(client, realm)
    assert realm.logouts == [{"client_id": "edmportal", "refresh_token": "refresh-token-2",
                              "client_secret": "mock-secret"}]
    other_browser = app.test_client()
    for old in (first, second):
        other_browser.set_cookie("__Host-edm-session", old)
        answer = other_browser.get("/bff/user", headers=CSRF)
        assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert client.get("/bff/user", headers=CSRF).status_code == 200


def test_anonymous_login_starts_store_nothing(client, app):
    for i in range(200):  # from 200 addresses: each one's login starts count against its per-address limit
        assert client.get("/bff/login", query_string={"returnUrl": "/" + "a" * 511},
                          environ_base={"REMOTE_ADDR": f"10.0.0.{i}"}).status_code == 302
        client.delete_cookie("__Host-edm-login")  # each start a new "browser"
    store = app.extensions["store"]
    assert store._run("count", "SELECT count(*) FROM entries", rows=True)[0][0] == 0


def test_logout_of_a_session_keycloak_ended_already_succeeds(client, realm, signer):
    log_in(client, realm)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.post(f"{REALM}/logout", status=400,
                  json={"error": "invalid_grant", "error_description": "Token is not active"})
        answer = client.post("/bff/logout?sid=kc-session-1", headers=CSRF)
    assert answer.status_code == 200


def advance(app, seconds):
    """Move the BFF sessions' clock on, instead of waiting for an access token to come due."""
    app.extensions["bff_sessions"].clock = lambda: time.time() + seconds


def test_an_expiring_access_token_is_refreshed_before_use(client, realm, app):
    realm.expires_in = 5  # a fifth of its life is the margin: 1 s
    log_in(client, realm)
    first = client.get("/bff/user", headers=CSRF)
    assert first.status_code == 200 and [g["grant_type"] for g in realm.grants] == ["authorization_code"]
    realm.expires_in = 300
    advance(app, 4.1)
    assert client.get("/bff/user", headers=CSRF).status_code == 200
    assert [g["grant_type"] for g in realm.grants] == ["authorization_code", "refresh_token"]
    assert realm.grants[-1]["refresh_token"] == "refresh-token-1"
    echoed = client.get("/bff/api/echo/who", headers=CSRF).json
    assert echoed["headers"]["Authorization"] == f"Bearer {realm.issued[1]}"
    assert len(realm.grants) == 2  # the new token lives 300 s


def test_a_session_whose_refresh_is_refused_is_ended(client, realm, app):
    realm.expires_in = 5  # due for a refresh at once (margin: 1 s) after 4 s
    log_in(client, realm)
    advance(app, 4.1)
    realm.refusal = (400, {"error": "invalid_grant", "error_description": "Session not active"})
    cookie = client.get_cookie("__Host-edm-session").value
    answer = client.get("/bff/user", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")
    assert set_cookies(answer)["__Host-edm-session"].startswith("__Host-edm-session=; Expires=Thu, 01 Jan 1970")
    assert [g["grant_type"] for g in realm.grants] == ["authorization_code", "refresh_token"]
    client.set_cookie("__Host-edm-session", cookie)  # the old cookie names no session any more
    assert client.get("/bff/user", headers=CSRF).status_code == 401
    assert len(realm.grants) == 2


def test_the_proxy_forwards_with_the_bearer_and_without_the_browsers_credentials(client, realm, echo_upstream):
    log_in(client, realm)
    token = realm.issued[0]
    answer = client.post("/bff/api/echo/orders/7/items?q=a%20b&x=1", data='{"n": 1}',
                         headers={**CSRF, "Content-Type": "application/json", "Authorization": "Bearer forged",
                                  "Accept": "application/json", "X-Request-ID": "req-42", "X-Other": "dropped",
                                  "Origin": "http://127.0.0.1:8000"})
    assert answer.status_code == 200
    seen = answer.json
    assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/base/orders/7/items?q=a%20b&x=1", '{"n": 1}')
    headers = seen["headers"]
    assert headers["Authorization"] == f"Bearer {token}"
    assert (headers["Content-Type"], headers["Accept"], headers["X-Request-ID"]) == (
        "application/json", "application/json", "req-42")
    for dropped in ("Cookie", "X-CSRF", "X-Other", "Origin"):
        assert dropped not in headers, dropped
    assert answer.headers["X-Upstream"] == "echo"
    assert "Set-Cookie" not in answer.headers and "Access-Control-Allow-Origin" not in answer.headers
    assert answer.headers["X-Request-ID"] == "req-42"


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def test_the_proxy_forwards_every_method(client, realm, echo_upstream, method):
    log_in(client, realm)
    answer = client.open("/bff/api/echo/thing?status=201", method=method, headers=CSRF)
    assert answer.status_code == 201
    assert echo_upstream.received[-1]["method"] == method


@pytest.mark.parametrize("path", [
    "/bff/api/echo/../secret", "/bff/api/echo/a/../../secret", "/bff/api/echo/%2e%2e/secret",
    "/bff/api/echo/%2E%2e/secret", "/bff/api/echo/./x", "/bff/api/echo/a%2Fb", "/bff/api/echo/a%2fb",
    "/bff/api/echo/a%5Cb", "/bff/api/echo/a\\b", "/bff/api/echo//evil.example/x", "/bff/api/echo/a//b",
    "/bff/api/echo/http://evil.example/x", "/bff/api/echo/a%252Fb", "/bff/api/echo/a%00b", "/bff/api/echo/a%zzb",
    "/bff/api/echo/a b", "/bff/api%2Fecho/x", "/bff/api/echo%2F..%2F/x",
    # a dot segment before a `;` (Tomcat, Jetty and Spring drop path parameters: `..;x` is `..` to them)
    "/bff/api/echo/..;/admin", "/bff/api/echo/%2e%2e;/admin", "/bff/api/echo/.;/x", "/bff/api/echo/%2E%2E%3B/x",
    "/bff/api/echo/a/..;/..;/x", "/bff/api/echo/..;jsessionid=1/x", "/bff/api/echo/.%2e;/x", "/bff/api/echo/%2e.;/x",
    "/bff/api/echo/%2E.;a=b/x", "/bff/api/echo/..%3b/x", "/bff/api/echo/..;", "/bff/api/echo/.;",
    "/bff/api/echo/..;;/x",
    # an empty segment before a `;` (`/;/` is `//` once the parameter is dropped)
    "/bff/api/echo/;/evil.example/x", "/bff/api/echo/a/;x=1/b", "/bff/api/echo/;", "/bff/api/echo/%3B/x",
    # a dot or slash in another spelling: overlong UTF-8, a fullwidth or compatibility form (NFKC)
    "/bff/api/echo/%c0%ae%c0%ae/x", "/bff/api/echo/%c0%af", "/bff/api/echo/%ef%bc%8e%ef%bc%8e/x",
    "/bff/api/echo/%e2%80%a5/x", "/bff/api/echo/a%ef%bc%8fb", "/bff/api/echo/a%ef%bc%bcb", "/bff/api/echo/%ff/x",
    "/bff/api/echo/%ef%bc%8e%ef%bc%8e%ef%bc%9b/x",
])
def test_paths_that_could_leave_the_upstream_are_refused(client, realm, echo_upstream, path):
    log_in(client, realm)
    before = len(echo_upstream.received)
    answer = client.get(path, headers=CSRF)
    assert (answer.status_code, answer.json) == (400, "code=400, message=invalid upstream path")
    assert len(echo_upstream.received) == before


@pytest.mark.parametrize("path, forwarded", [
    ("/bff/api/echo/items;v=2/x", "/base/items;v=2/x"), ("/bff/api/echo/a;b=..", "/base/a;b=.."),
    ("/bff/api/echo/...;x/y", "/base/...;x/y"), ("/bff/api/echo/a.;/b", "/base/a.;/b"),
    ("/bff/api/echo/caf%C3%A9/%E2%82%AC", "/base/caf%C3%A9/%E2%82%AC"), ("/bff/api/echo/x/", "/base/x/"),
])
def test_matrix_parameters_and_other_segments_pass_as_sent(client, realm, echo_upstream, path, forwarded):
    log_in(client, realm)
    answer = client.get(path, headers=CSRF)
    assert (answer.status_code, answer.json["path"]) == (200, forwarded)


@pytest.mark.parametrize("path", ["/bff/api/nowhere/x", "/bff/api/", "/bff/api/ECHO/x", "/bff/api/%65cho2/x"])
def test_only_listed_upstreams_are_destinations(client, realm, path):
    log_in(client, realm)
    answer = client.get(path, headers=CSRF)
    assert (answer.status_code, answer.json) == (404, "code=404, message=unknown upstream")


def chunked(client, method, path, body, **headers):
    """A chunked request, as a server that ends the stream itself (gunicorn, werkzeug's) hands it over."""
    return client.open(path, method=method, headers={**CSRF, "Transfer-Encoding": "chunked", **headers},
                       environ_overrides={"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})


BODY_NOT_ALLOWED = (400, "code=400, message=body not allowed")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("framing", ["length", "chunked", "empty chunked", "length and chunked", "bad length"])
def test_a_get_or_head_with_a_body_is_refused_before_anything_is_sent(client, realm, echo_upstream, method,
                                                                       framing):
    log_in(client, realm)
    grants, before = len(realm.grants), len(echo_upstream.received)
    smuggled = b"POST /base/notes HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"
    if framing == "length":
        answer = client.open("/bff/api/echo/x", method=method, data=smuggled, headers=CSRF)
    elif framing == "bad length":
        answer = client.open("/bff/api/echo/x", method=method, headers=CSRF, environ_overrides={"CONTENT_LENGTH": "1x"})
    else:
        headers = {"Content-Length": str(len(smuggled))} if framing == "length and chunked" else {}
        answer = chunked(client, method, "/bff/api/echo/x", b"" if framing == "empty chunked" else smuggled, **headers)
    assert answer.status_code == 400
    assert answer.get_data() == (b"" if method == "HEAD" else b'"code=400, message=body not allowed"\n')
    assert (len(echo_upstream.received), len(realm.grants)) == (before, grants)


def test_the_body_is_refused_before_the_session_is_looked_at(client, echo_upstream):
    answer = client.get("/bff/api/echo/x", data=b"x", headers=CSRF)  # no session: still the body's refusal
    assert (answer.status_code, answer.json) == BODY_NOT_ALLOWED


@pytest.mark.parametrize("headers", [{}, {"Content-Length": "0"}, {"Content-Length": "000"}])
def test_a_get_without_a_body_is_forwarded_without_one(client, realm, echo_upstream, headers):
    log_in(client, realm)
    answer = client.get("/bff/api/echo/x", headers={**CSRF, **headers})
    assert (answer.status_code, answer.json["method"], answer.json["body"]) == (200, "GET", "")
    assert "Content-Length" not in answer.json["headers"] and "Transfer-Encoding" not in answer.json["headers"]


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS"])
def test_a_delete_or_options_body_is_sent_with_its_length_on_a_connection_closed_after(client, realm,
                                                                                     echo_upstream, method):
    log_in(client, realm)
    answer = chunked(client, method, "/bff/api/echo/x", b"a body of no defined meaning")
    seen = answer.json
    assert (answer.status_code, seen["method"], seen["body"]) == (200, method, "a body of no defined meaning")
    assert (seen["headers"]["Content-Length"], seen["headers"]["Connection"]) == ("28", "close")
    plain = client.open("/bff/api/echo/x", method=method, headers=CSRF).json  # without a body: pooled as usual
    assert "Connection" not in plain["headers"] and "Content-Length" not in plain["headers"]


@pytest.fixture
def keep_alive_upstream():
    server = KeepAliveUpstream()
    yield server
    server.stop()


@pytest.mark.parametrize("method", ["DELETE", "OPTIONS"])
def test_a_connection_that_carried_such_a_body_never_serves_another_request(tmp_path, realm, keep_alive_upstream,
                                                                            method):
    client = bff_app(tmp_path, GATEWAY_BFF_UPSTREAMS=f"up={keep_alive_upstream.url}").test_client()
    log_in(client, realm)
    assert [client.get(f"/bff/api/up/{i}", headers=CSRF).json["connection"] for i in range(2)] == [1, 1]  # pooled
    answer = client.open("/bff/api/up/x", method=method, data=b"GET /notes HTTP/1.1\r\n\r\n", headers=CSRF)
    assert (answer.status_code, answer.json["connection"]) == (200, 1)
    # The next request goes on a new connection and gets its own answer; the upstream reads the body it left unread
    # as a request of its own (here a harmless GET), whose answer reaches nobody.
    assert client.get("/bff/api/up/y", headers=CSRF).json == {"method": "GET", "path": "/y", "connection": 2}
    assert keep_alive_upstream.idle()
    assert sorted((r["connection"], r["method"], r["path"]) for r in keep_alive_upstream.received) == sorted([
        (1, "GET", "/0"), (1, "GET", "/1"), (1, method, "/x"), (1, "GET", "/notes"), (2, "GET", "/y")])


def test_a_chunked_body_over_the_limit_is_413_and_reaches_no_upstream(client, realm, echo_upstream):
    log_in(client, realm)
    before = len(echo_upstream.received)
    answer = chunked(client, "POST", "/bff/api/echo/x", b"a" * 40000)
    assert (answer.status_code, answer.json) == (413, "code=413, message=payload too large")
    answer = chunked(client, "PUT", "/bff/api/echo/x", b"a" * 16385)
    assert (answer.status_code, answer.json) == (413, "code=413, message=payload too large")
    assert len(echo_upstream.received) == before


def test_a_chunked_body_of_exactly_the_limit_is_forwarded_whole(client, realm, echo_upstream):
    log_in(client, realm)
    answer = chunked(client, "POST", "/bff/api/echo/x", b"a" * 16384)
    assert (answer.status_code, len(answer.json["body"])) == (200, 16384)
    assert answer.json["headers"]["Content-Length"] == "16384" and "Transfer-Encoding" not in answer.json["headers"]


def test_an_upstreams_401_passes_through_and_the_session_goes_on(client, realm, echo_upstream):
    log_in(client, realm)
    answer = client.get("/bff/api/echo/admin?status=401", headers=CSRF)
    assert (answer.status_code, answer.json["path"]) == (401, "/base/admin?status=401")  # the upstream's own body
    assert "Set-Cookie" not in answer.headers
    assert client.get("/bff/user", headers=CSRF).status_code == 200
    assert client.get("/bff/api/echo/x", headers=CSRF).status_code == 200


@pytest.mark.parametrize("method, path, location", [
    ("GET", "/bff//user", "/bff/user?x=1"), ("GET", "//bff//login", "/bff/login?x=1"),
    ("POST", "/bff//logout", "/bff/logout?x=1"), ("GET", "/bff//callback", "/bff/callback?x=1"),
    ("GET", "//static//tester.js", "/static/tester.js?x=1"),
])
def test_bff_redirects_name_no_host_the_client_sent(tmp_path, method, path, location):
    client = bff_app(tmp_path, GATEWAY_TESTER_PAGE="true").test_client()
    answer = client.open("/", method=method, headers={"Host": "evil.example", **CSRF},
                         environ_overrides={"PATH_INFO": path, "QUERY_STRING": "x=1"})
    assert (answer.status_code, answer.headers["Location"], answer.data) == (308, location, b"")


def test_an_upstream_that_is_down_slow_or_not_http(tmp_path, realm, silent_url, garbage_server):
    from tests.conftest import free_port

    app = bff_app(tmp_path, KEYCLOAK_TIMEOUT="0.5", GATEWAY_BFF_UPSTREAMS=(
        f"down=http://127.0.0.1:{free_port()},slow={silent_url.removesuffix('/auth/')},garbage={garbage_server.url}"))
    client = app.test_client()
    log_in(client, realm)
    for name, answer in (("down", (503, "code=503, message=upstream service unavailable")),
                         ("slow", (504, "code=504, message=upstream service timed out")),
                         ("garbage", (502, "code=502, message=upstream service error"))):
        response = client.get(f"/bff/api/{name}/x", headers=CSRF)
        assert (response.status_code, response.json) == answer, name


def test_bff_mode_is_same_origin_only(tmp_path):
    app = bff_app(tmp_path, GATEWAY_CORS_ORIGINS="http://portal.example")
    client = app.test_client()
    preflight = {"Origin": "http://portal.example", "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "x-csrf"}
    answer = client.options("/bff/user", headers=preflight)
    assert answer.status_code == 403 and "Access-Control-Allow-Origin" not in answer.headers
    answer = client.get("/bff/user", headers={"Origin": "http://portal.example", **CSRF})
    assert answer.status_code == 401 and "Access-Control-Allow-Origin" not in answer.headers
    assert client.options("/api/login", headers=preflight).status_code == 204  # the legacy API keeps its CORS


def test_bff_mode_is_off_by_default(client):
    plain = create_app(mock_config()).test_client()
    for path in ("/bff/login", "/bff/callback", "/bff/user"):
        assert (plain.get(path).status_code, plain.get(path).json) == (404, "code=404, message=not found")


def test_the_tester_page_offers_the_keycloak_login_in_bff_mode(tmp_path):
    with_bff = bff_app(tmp_path, GATEWAY_TESTER_PAGE="true").test_client()
    assert b'<body data-bff="on">' in with_bff.get("/").data
    without = create_app(mock_config(GATEWAY_TESTER_PAGE="true")).test_client().get("/")
    assert without.status_code == 200 and b'<body data-bff="on">' not in without.data


def test_audit_events_and_no_secret_in_any_line(client, realm, caplog, app):
    import logging

    from gateway.logs import JsonFormatter

    caplog.set_level(logging.INFO)
    realm.expires_in = 5
    location = start_login(client).headers["Location"]
    query = parse_qs(urlsplit(location).query)
    code = realm.expect(location)
    client.get("/bff/callback", query_string={"state": query["state"][0], "code": code, "iss": ISSUER})
    cookie = client.get_cookie("__Host-edm-session").value
    advance(app, 4.1)
    client.post("/bff/api/echo/x?token=in-the-query", headers=CSRF, data="body")  # refreshed first
    client.post("/bff/logout?sid=kc-session-1", headers=CSRF)
    lines = [JsonFormatter().format(record) for record in caplog.records]
    events = [json.loads(line) for line in lines if '"gateway.audit"' in line]
    assert [(e["event"], e["endpoint"], e["outcome"], e["username"]) for e in events] == [
        ("bff login", "bff.login", "success", None),
        ("bff callback", "bff.callback", "success", "mockuser"),
        ("bff refresh", "bff.api", "success", "mockuser"),
        ("bff logout", "bff.logout", "success", "mockuser"),
    ]
    verifier = realm.grants[0]["code_verifier"]
    for secret in (cookie, query["state"][0], query["nonce"][0], query["code_challenge"][0], code, verifier,
                   "kc-session-1", "in-the-query", *realm.issued, "refresh-token-1", "refresh-token-2", BFF_SECRET):
        assert not [line for line in lines if secret in line], secret


def test_the_api_proxy_is_not_rate_limited_and_logout_is(tmp_path, realm, echo_upstream):
    app = bff_app(tmp_path, GATEWAY_BFF_UPSTREAMS=f"echo={echo_upstream.url}", GATEWAY_LIMIT_PER_ADDRESS="3/minute")
    client = app.test_client()
    log_in(client, realm)
    assert [client.post("/bff/api/echo/x", headers=CSRF).status_code for _ in range(6)] == [200] * 6
    answers = [client.post("/bff/logout?sid=other", headers=CSRF) for _ in range(4)]
    assert [a.status_code for a in answers] == [400, 400, 400, 429]
    assert answers[-1].json == "code=429, message=too many login attempts"


def test_a_back_channel_logout_deletes_the_bff_sessions_of_its_keycloak_session(client, realm, app, signer):
    from tests.test_backchannel import logout_claims, sign

    log_in(client, realm)
    key = app.extensions["bff_sessions"].sealer.key("session", client.get_cookie("__Host-edm-session").value)
    assert app.extensions["store"].get(key) is not None
    assert client.post("/backchannel-logout", data={"logout_token": sign(signer, logout_claims())}).status_code == 200
    assert app.extensions["store"].get(key) is None  # deleted, not only refused
    for path, method in (("/bff/user", "GET"), ("/bff/api/echo/x", "GET")):
        answer = client.open(path, method=method, headers=CSRF)
        assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")


def test_a_new_session_secret_keeps_the_sessions_of_the_previous_one(tmp_path, realm, signer):
    old = bff_app(tmp_path).test_client()
    log_in(old, realm)
    cookie = old.get_cookie("__Host-edm-session").value
    new_secret = BFF_SECRET + "-rotated-in"
    rotated = bff_app(tmp_path, GATEWAY_SESSION_SECRET=new_secret, GATEWAY_SESSION_SECRET_PREVIOUS=BFF_SECRET)
    browser = rotated.test_client()
    browser.set_cookie("__Host-edm-session", cookie)
    assert browser.get("/bff/user", headers=CSRF).json["user"]["id"] == "mock-user-id"
    without = bff_app(tmp_path, GATEWAY_SESSION_SECRET=new_secret).test_client()  # the old secret dropped too soon
    without.set_cookie("__Host-edm-session", cookie)
    answer = without.get("/bff/user", headers=CSRF)
    assert (answer.status_code, answer.json) == (401, "code=401, message=not logged in")


def test_a_bff_logout_ends_its_keycloak_session_on_every_surface(client, realm, app, signer):
    log_in(client, realm)
    access = realm.issued[-1]  # the session's own access token, sid kc-session-1, as another client might hold it
    api = app.test_client()
    assert api.get("/api/me", headers={"Authorization": f"Bearer {access}"}).status_code == 200
    assert client.post("/bff/logout?sid=kc-session-1", headers=CSRF).status_code == 200
    answer = api.get("/api/me", headers={"Authorization": f"Bearer {access}"})
    assert (answer.status_code, answer.json) == (401, "code=401, message=access token is invalid or expired")


def test_a_session_whose_refresh_keycloak_refuses_ends_its_tokens_everywhere(client, realm, app):
    realm.expires_in = 5
    log_in(client, realm)
    access = realm.issued[-1]
    advance(app, 4.1)
    realm.refusal = (400, {"error": "invalid_grant", "error_description": "Session not active"})
    assert client.get("/bff/user", headers=CSRF).status_code == 401
    answer = app.test_client().get("/api/me", headers={"Authorization": f"Bearer {access}"})
    assert (answer.status_code, answer.json) == (401, "code=401, message=access token is invalid or expired")
