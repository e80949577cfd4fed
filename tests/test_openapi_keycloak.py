"""Every documented endpoint driven against the real Keycloak, each real answer (status, body, documented headers)
held to the document's schema for its status: the document cannot drift from the code."""

from urllib.parse import quote, urlsplit

import pytest

from gateway import create_app
from gateway.keycloak import Tokens
from tests.bff import LoopbackBrowser, bff_config, keycloak_login
from tests.conftest import ISSUER, free_port, live_config
from tests.openapi_check import Document

pytestmark = pytest.mark.keycloak  # the whole module: its last test reads what the others checked

# Statuses the document names that no request can provoke from outside (a bug in the gateway).
UNPROVOKED = {"500"}
BFF_PUBLIC_URL = "http://127.0.0.1:8999"  # Keycloak sends the browser there; this module's browser never goes
API = "/bff/api/{name}/{path}"
SESSION = "/api/sessions/{id}"
BFF_SESSION = "/bff/sessions/{id}"
CSRF = {"X-CSRF": "1"}


def forged_logout_token():
    """A logout token signed by a key the realm does not have: refused once the realm's keys are read."""
    from tests.conftest import Signer
    from tests.test_backchannel import logout_claims, sign

    return sign(Signer(kid="not-the-realms"), logout_claims())


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    """The document of a gateway with every profile and BFF mode on, and everything checked against it by the
    module's tests."""
    app = create_app(bff_config(GATEWAY_PUBLIC_URL=BFF_PUBLIC_URL, GATEWAY_TESTER_PAGE="true",
                                TMPDIR=str(tmp_path_factory.mktemp("bff"))))
    return Document(app.test_client().get("/openapi.json").json)


@pytest.fixture
def live_app(kc):
    """The module's gateway on the real Keycloak, with the tester page on (its answers are documented too)."""
    return create_app(live_config(GATEWAY_TESTER_PAGE="true"))


@pytest.fixture
def call(live_client, checked):
    def call_(method, path, client=None, path_template=None, **kwargs):
        template = path_template or path.split("?")[0]
        return checked.check(template, method, (client or live_client).open(path, method=method, **kwargs))
    return call_


def login(call, username, password, **kwargs):
    return call("POST", "/api/login", json={"username": username, "password": password}, **kwargs)


def test_login_answers(call, kc):
    user = kc.create_user()
    assert login(call, user.username, user.password).status_code == 200
    assert login(call, user.username, "wrong-password").json == "code=400, message=wrong password"
    assert login(call, "nosuchuser99", "password123").json == "code=404, message=username not found"
    assert call("POST", "/api/login", json={"username": "x"}).json == "code=400, message=payload is unknown"
    assert call("POST", "/api/login", data="not json", content_type="text/plain").status_code == 400
    disabled, unfinished, locked = (kc.create_user(enabled=False), kc.create_user(actions=["UPDATE_PASSWORD"]),
                                    kc.create_user())
    kc.lock(locked)
    for user, body in ((disabled, "code=403, message=account disabled"),
                       (unfinished, "code=403, message=account is not fully set up"),
                       (locked, "code=403, message=account temporarily locked")):
        assert login(call, user.username, user.password).json == body
    assert call("GET", "/api/login").status_code == 405
    assert call("POST", "/api/login", data=b"x" * 20000, content_type="application/json").status_code == 413


def test_upstream_failures(call, kc, silent_url):
    token = login(call, "ahmadakbar", "password").json["accessToken"]  # its key must be fetched by each below
    unreachable = create_app(live_config(KEYCLOAK_URL=f"http://127.0.0.1:{free_port()}/auth/")).test_client()
    slow = create_app(live_config(KEYCLOAK_URL=silent_url, KEYCLOAK_TIMEOUT="0.3")).test_client()
    broken = create_app(live_config(KEYCLOAK_REALM="nosuchrealm")).test_client()
    for client, status in ((unreachable, 503), (slow, 504), (broken, 502)):
        assert login(call, "ahmadakbar", "password", client=client).status_code == status
        for path, body in (("/api/refresh", {"refreshToken": "r"}), ("/api/logout", {"refreshToken": "r"}),
                           ("/users/login/", {"username": "a", "password": "b"}), ("/users/refresh/", {"refresh": "r"}),
                           ("/users/verify/", {"token": "eyJhbGciOiJIUzUxMiJ9.eyJ0eXAiOiJSZWZyZXNoIn0.c2ln"})):
            assert call("POST", path, client=client, json=body).status_code == status
        bearer = {"Authorization": f"Bearer {token}"}
        assert call("GET", "/api/me", client=client, headers=bearer).status_code == status
        assert call("GET", "/api/sessions", client=client, headers=bearer).status_code == status
        assert call("DELETE", "/api/sessions/s-1", client=client, headers=bearer,
                    path_template=SESSION).status_code == status
        assert call("POST", "/backchannel-logout", client=client,
                    data={"logout_token": forged_logout_token()}).status_code == status
    assert call("GET", "/readyz", client=unreachable).json == "code=503, message=keycloak unavailable"


def test_session_answers(call, kc):
    user = kc.create_user()
    tokens = login(call, user.username, user.password).json
    refreshed = call("POST", "/api/refresh", json={"refreshToken": tokens["refreshToken"]}).json
    bearer = {"Authorization": f"Bearer {refreshed['accessToken']}"}
    assert call("GET", "/api/me", headers=bearer).json["message"] == user.id
    assert call("GET", "/api/me").json == "code=401, message=missing access token"
    assert call("GET", "/api/me", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    assert call("POST", "/api/me").status_code == 405
    for path in ("/api/refresh", "/api/logout"):
        assert call("POST", path, json={}).status_code == 400
        assert call("GET", path).status_code == 405
        assert call("POST", path, data=b"x" * 20000, content_type="application/json").status_code == 413
    assert call("POST", "/api/refresh", json={"refreshToken": "garbage"}).status_code == 401
    assert call("POST", "/api/logout", json={"refreshToken": "garbage"}).status_code == 401
    assert call("POST", "/api/logout", json={"refreshToken": refreshed["refreshToken"]}).json == {
        "status": 200, "message": "logged out"}
    other = kc.create_user()
    other_tokens = login(call, other.username, other.password).json
    kc.admin.update_user(other.id, {"enabled": False})
    assert call("POST", "/api/refresh", json={"refreshToken": other_tokens["refreshToken"]}).status_code == 403


def test_sessions_answers(call, kc):
    user, other = kc.create_user(), kc.create_user()
    mine, second = login(call, user.username, user.password).json, login(call, user.username, user.password).json
    bearer = {"Authorization": f"Bearer {mine['accessToken']}"}
    listed = call("GET", "/api/sessions", headers=bearer).json["sessions"]
    assert len(listed) == 2
    assert call("GET", "/api/sessions").json == "code=401, message=missing access token"
    assert call("GET", "/api/sessions", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    assert call("POST", "/api/sessions", headers=bearer).status_code == 405
    others = login(call, other.username, other.password).json
    foreign = _sid(others["accessToken"])
    assert call("DELETE", f"/api/sessions/{foreign}", headers=bearer, path_template=SESSION).json == (
        "code=404, message=session not found")
    assert call("DELETE", "/api/sessions/s-1", path_template=SESSION).status_code == 401
    assert call("GET", "/api/sessions/s-1", path_template=SESSION).status_code == 405
    ended = call("DELETE", f"/api/sessions/{_sid(second['accessToken'])}", headers=bearer, path_template=SESSION)
    assert ended.json == {"status": 200, "message": "session ended"}


def _sid(access_token):
    from tests.test_session_integrity_keycloak import _sid as sid

    return sid(access_token)


@pytest.fixture
def back_channel_client(kc):
    """A client of the realm like `edmportal`, whose back-channel logouts go to a catcher of the test's: (client id,
    secret, the catcher). The realm's own clients stay as they are for the other tests."""
    import secrets

    from tests.conftest import SUITE_SECRETS
    from tests.test_session_integrity_keycloak import Catcher

    catcher = Catcher()
    client_id, secret = f"bctest{secrets.token_hex(4)}", secrets.token_hex(16)
    SUITE_SECRETS.add(secret)
    internal_id = kc.admin.create_client({
        "clientId": client_id, "secret": secret, "publicClient": False, "protocol": "openid-connect",
        "standardFlowEnabled": False, "directAccessGrantsEnabled": True, "serviceAccountsEnabled": False,
        "attributes": {"backchannel.logout.url": catcher.url, "backchannel.logout.session.required": "true"},
    })
    yield client_id, secret, catcher
    kc.admin.delete_client(internal_id)
    catcher.stop()


def test_back_channel_logout_answers(call, kc, back_channel_client):
    import time

    from tests.conftest import SUITE_SECRETS

    client_id, secret, catcher = back_channel_client
    gateway = create_app(live_config(KEYCLOAK_CLIENT_ID=client_id, KEYCLOAK_CLIENT_SECRET=secret)).test_client()
    user = kc.create_user()
    assert login(call, user.username, user.password, client=gateway).status_code == 200
    kc.admin.user_logout(user.id)
    deadline = time.monotonic() + 5
    while not catcher.tokens and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(catcher.tokens) == 1
    SUITE_SECRETS.add(catcher.tokens[0])
    genuine = {"logout_token": catcher.tokens[0]}
    answer = call("POST", "/backchannel-logout", client=gateway, data=genuine)
    assert (answer.status_code, answer.get_data()) == (200, b"")
    assert call("POST", "/backchannel-logout", client=gateway, data=genuine).json["error"] == "invalid_request"
    assert call("POST", "/backchannel-logout", data={"logout_token": "not-a-jwt"}).status_code == 400
    assert call("POST", "/backchannel-logout", data={}).status_code == 400
    assert call("GET", "/backchannel-logout").status_code == 405
    assert call("POST", "/backchannel-logout", data={"logout_token": "x" * 20000}).status_code == 413


def test_simplejwt_answers(call, kc):
    user = kc.create_user()
    pair = call("POST", "/users/login/", json={"username": user.username, "password": user.password}).json
    assert call("POST", "/users/login/", json={"username": user.username, "password": "wrong"}).status_code == 401
    assert call("POST", "/users/login/", json={}).status_code == 400
    assert call("POST", "/users/login/", data=b"{", content_type="application/json").status_code == 400
    refreshed = call("POST", "/users/refresh/", json={"refresh": pair["refresh"]}).json
    assert call("POST", "/users/verify/", json={"token": refreshed["access"]}).json == {}
    for path in ("/users/login/", "/users/refresh/", "/users/verify/"):
        assert call("GET", path).status_code == 405
        assert call("POST", path, data=b"x", content_type="text/plain").status_code == 415
        assert call("POST", path, data=b"x" * 20000, content_type="application/json").status_code == 413
        assert call("POST", path, json=[]).status_code == 400
    assert call("POST", "/users/refresh/", json={"refresh": "garbage"}).status_code == 401
    assert call("POST", "/users/verify/", json={"token": "garbage"}).status_code == 401
    assert call("POST", "/users/refresh/", json={"refresh": refreshed["access"]}).json == {
        "detail": "Token has wrong type", "code": "token_not_valid"}


def test_rate_limit_and_redis_answers(call, kc):
    limited = create_app(live_config(GATEWAY_LIMIT_PER_ADDRESS="1/minute")).test_client()
    for path, body in (("/api/login", {"username": "nosuchuser42", "password": "password123"}),
                       ("/api/refresh", {"refreshToken": "r"}), ("/api/logout", {"refreshToken": "r"}),
                       ("/users/login/", {"username": "nosuchuser42", "password": "p"}),
                       ("/users/refresh/", {"refresh": "r"}), ("/users/verify/", {"token": "t"})):
        statuses = [call("POST", path, client=limited, json=body).status_code for _ in range(2)]
        assert statuses[-1] == 429
    dead = f"redis://127.0.0.1:{free_port()}/0"
    no_redis = create_app(live_config(GATEWAY_REDIS_URL=dead)).test_client()
    assert login(call, "ahmadakbar", "password", client=no_redis).json == (
        "code=503, message=authentication service unavailable")
    assert call("GET", "/readyz", client=no_redis).json == "code=503, message=redis unavailable"


def test_operations_answers(call, kc):
    assert call("GET", "/healthz").status_code == 200
    assert call("GET", "/readyz").status_code == 200
    assert call("GET", "/metrics").status_code == 200
    assert call("GET", "/openapi.json").status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/"):
        assert call("POST", path).status_code == 405
    assert call("GET", "/").content_type == "text/html; charset=utf-8"
    for name in ("tester.css", "tester.js"):
        assert checked_static(call, name).status_code == 200
    assert checked_static(call, "nothing.txt").status_code == 404
    assert checked_static(call, "tester.js", method="POST").status_code == 405


def checked_static(call, name, method="GET"):
    """A file of the tester page, held to the document's `/static/{file}`."""
    return call(method, f"/static/{name}", path_template="/static/{file}")


def bff_client(tmp_path, **overrides):
    return create_app(bff_config(GATEWAY_PUBLIC_URL=BFF_PUBLIC_URL, TMPDIR=str(tmp_path), **overrides)).test_client()


def bff_log_in(call, client, user):
    """The login through Keycloak's page, the callback answered by the test client; the session cookie's value."""
    start = call("GET", "/bff/login", client=client, query_string={"returnUrl": "/"})
    back = keycloak_login(LoopbackBrowser(), start.headers["Location"], user.username, user.password)
    parts = urlsplit(back)
    assert call("GET", parts.path + "?" + parts.query, client=client).status_code == 302
    return client.get_cookie("__Host-edm-session").value


def planted_session(client, expires_in=0):
    """A session put straight into the client's store, its access token due for a refresh at once."""
    sessions = client.application.extensions["bff_sessions"]
    cookie, _ = sessions.create(Tokens("access", "refresh", expires_in, {"sub": "someone"}, 1800), "kc-sid")
    client.set_cookie("__Host-edm-session", cookie)


def test_bff_answers(call, kc, tmp_path, echo_upstream, silent_url, garbage_server):
    upstreams = (f"echo={echo_upstream.url},down=http://127.0.0.1:{free_port()},"
                 f"slow={silent_url.removesuffix('/auth/')},garbage={garbage_server.url}")
    client = bff_client(tmp_path, GATEWAY_BFF_UPSTREAMS=upstreams, KEYCLOAK_TIMEOUT="0.5")
    user = kc.create_user()
    assert call("GET", "/bff/user", client=client, headers=CSRF).status_code == 401
    assert call("GET", "/bff/logout", client=client, headers=CSRF).status_code == 405
    assert call("POST", "/bff/logout?sid=x", client=client, headers=CSRF).status_code == 401
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        assert call(method, "/bff/api/echo/x", client=client, headers=CSRF, path_template=API).status_code == 401
    cookie = bff_log_in(call, client, user)
    assert cookie
    assert call("GET", "/bff/login", client=client, query_string={"returnUrl": "//evil"}).status_code == 400
    assert call("POST", "/bff/login", client=client).status_code == 405
    assert call("GET", "/bff/callback?state=forged", client=client).status_code == 400
    assert call("POST", "/bff/callback", client=client).status_code == 405
    me = call("GET", "/bff/user", client=client, headers=CSRF)
    assert me.json["message"] == user.id
    assert call("GET", "/bff/user", client=client).status_code == 403
    assert call("POST", "/bff/user", client=client, headers=CSRF).status_code == 405
    assert call("POST", "/bff/logout?sid=other", client=client, headers=CSRF).status_code == 400
    assert call("POST", "/bff/logout?sid=other", client=client).status_code == 403
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        def api(path, method=method, **kwargs):
            return call(method, path, client=client, path_template=API, **kwargs).status_code

        assert api("/bff/api/echo/x", headers=CSRF) == 200
        assert api("/bff/api/echo/x") == 403
        assert api("/bff/api/echo/../x", headers=CSRF) == 400
        assert api("/bff/api/nowhere/x", headers=CSRF) == 404
        too_large = api("/bff/api/echo/x", headers=CSRF, data=b"x" * 20000, content_type="application/json")
        assert too_large == (400 if method == "GET" else 413)  # a GET's body is refused before it is read
        assert api("/bff/api/down/x", headers=CSRF) == 503
        assert api("/bff/api/slow/x", headers=CSRF) == 504
        assert api("/bff/api/garbage/x", headers=CSRF) == 502
    assert call("TRACE", "/bff/api/echo/x", client=client, headers=CSRF, path_template=API).status_code == 405
    sessions = call("GET", "/bff/sessions", client=client, headers=CSRF)
    assert [s["current"] for s in sessions.json["sessions"]] == [True]
    assert call("GET", "/bff/sessions", client=client).status_code == 403
    assert call("POST", "/bff/sessions", client=client, headers=CSRF).status_code == 405
    own = sessions.json["sessions"][0]["id"]
    assert call("DELETE", "/bff/sessions/nosuch", client=client, headers=CSRF,
                path_template=BFF_SESSION).json == "code=404, message=session not found"
    assert call("DELETE", f"/bff/sessions/{own}", client=client, path_template=BFF_SESSION).status_code == 403
    assert call("GET", f"/bff/sessions/{own}", client=client, headers=CSRF,
                path_template=BFF_SESSION).status_code == 405
    assert call("POST", me.json["session"]["logoutUrl"], client=client, headers=CSRF).status_code == 200
    assert call("GET", "/bff/sessions", client=client, headers=CSRF).status_code == 401
    assert call("DELETE", f"/bff/sessions/{own}", client=client, headers=CSRF,
                path_template=BFF_SESSION).status_code == 401
    cookie = bff_log_in(call, client, user)
    assert cookie
    own = call("GET", "/bff/sessions", client=client, headers=CSRF).json["sessions"][0]["id"]
    ended = call("DELETE", f"/bff/sessions/{own}", client=client, headers=CSRF, path_template=BFF_SESSION)
    assert ended.json == {"status": 200, "message": "session ended"}
    assert call("GET", "/bff/user", client=client, headers=CSRF).status_code == 401  # a logout of it


def test_bff_upstream_failures(call, kc, tmp_path, silent_url):
    """Keycloak unreachable, too slow or unusable at each step that calls it, and the session store down."""
    for overrides, status in (({"KEYCLOAK_URL": f"http://127.0.0.1:{free_port()}/auth/"}, 503),
                              ({"KEYCLOAK_URL": silent_url, "KEYCLOAK_TIMEOUT": "0.3"}, 504),
                              ({"KEYCLOAK_REALM": "nosuchrealm"}, 502)):
        client = bff_client(tmp_path / str(status), **overrides)
        start = call("GET", "/bff/login", client=client)
        state = dict(part.split("=", 1) for part in urlsplit(start.headers["Location"]).query.split("&"))["state"]
        issuer = quote(client.application.config["SETTINGS"].issuer, safe="")
        assert call("GET", f"/bff/callback?state={state}&code=c&iss={issuer}", client=client).status_code == status
        planted_session(client)
        assert call("GET", "/bff/user", client=client, headers=CSRF).status_code == status
        planted_session(client, expires_in=300)  # no refresh due: the Account API call itself fails
        assert call("GET", "/bff/sessions", client=client, headers=CSRF).status_code == status
        assert call("DELETE", "/bff/sessions/kc-sid", client=client, headers=CSRF,
                    path_template=BFF_SESSION).status_code == status
        planted_session(client, expires_in=300)  # a logout never fails open: Keycloak's failure is only logged
        assert call("POST", "/bff/logout?sid=kc-sid", client=client, headers=CSRF).status_code == 200
    limited = bff_client(tmp_path / "limited", GATEWAY_LIMIT_PER_ADDRESS="1/minute")
    planted_session(limited, expires_in=300)
    assert [call("POST", "/bff/logout?sid=other", client=limited, headers=CSRF).status_code for _ in range(2)] == [
        400, 429]
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    # the per-address limit counts login starts: with its store down, nobody starts one
    assert call("GET", "/bff/login", client=bff_client(tmp_path / "down", GATEWAY_REDIS_URL=dead_redis)
                ).status_code == 503
    store_down = bff_client(tmp_path, GATEWAY_REDIS_URL=dead_redis, GATEWAY_LIMIT_PER_ADDRESS="off")
    start = call("GET", "/bff/login", client=store_down)  # without the limit nothing is stored: the login starts
    state = dict(part.split("=", 1) for part in urlsplit(start.headers["Location"]).query.split("&"))["state"]
    store_down.set_cookie("__Host-edm-session", "a" * 43)
    for method, path in ((("GET", f"/bff/callback?state={state}&code=c&iss={quote(ISSUER, safe='')}")),
                         ("GET", "/bff/user"),
                         ("POST", "/bff/logout?sid=s")):
        assert call(method, path, client=store_down, headers=CSRF).status_code == 503


def test_every_documented_answer_was_seen(checked):
    """Runs after the module's other tests: each documented status of each operation was really answered."""
    missing = {(p, m, s) for p, m, s in checked.operations() - checked.seen if s not in UNPROVOKED}
    assert missing == set()
