"""Every documented endpoint driven against the real Keycloak, each real answer (status, body, documented headers)
held to the document's schema for its status: the document cannot drift from the code."""

import pytest

from gateway import create_app
from tests.conftest import free_port, live_config
from tests.openapi_check import Document

pytestmark = pytest.mark.keycloak  # the whole module: its last test reads what the others checked

# Statuses the document names that no request can provoke from outside (a bug in the gateway).
UNPROVOKED = {"500"}


@pytest.fixture(scope="module")
def checked():
    """The document, and everything checked against it by the module's tests."""
    return Document(create_app(live_config()).test_client().get("/openapi.json").json)


@pytest.fixture
def call(live_client, checked):
    def call_(method, path, client=None, path_template=None, **kwargs):
        return checked.check(path_template or path, method, (client or live_client).open(path, method=method, **kwargs))
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
        assert call("GET", "/api/me", client=client, headers={"Authorization": f"Bearer {token}"}).status_code == status
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


def test_every_documented_answer_was_seen(checked):
    """Runs after the module's other tests: each documented status of each operation was really answered."""
    missing = {(p, m, s) for p, m, s in checked.operations() - checked.seen if s not in UNPROVOKED}
    assert missing == set()
