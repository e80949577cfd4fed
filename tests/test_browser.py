"""The browser side in-process: `GATEWAY_CORS_ORIGINS` parsed and checked at start, CORS headers on every answer
for the allowed origins only, preflights, and the hardening headers."""

import subprocess
import sys

import pytest
from werkzeug.exceptions import TooManyRequests

from gateway import create_app
from gateway.config import ConfigError, load_settings
from gateway.errors import UpstreamUnavailable
from tests.browser import hermetic
from tests.conftest import ROOT, mock_config

PORTAL = "https://portal.example.org"
OTHER = "https://elsewhere.example.net"
ALLOW_HEADERS = {"Content-Type", "Authorization", "X-Request-ID", "X-CSRF"}


def make_app(**overrides):
    app = create_app(hermetic(**mock_config(**overrides)))

    @app.get("/test/429")
    def rate_limited():
        return app.json.response("code=429, message=too many login attempts"), 429, {"Retry-After": "30"}

    @app.get("/test/429-raised")
    def rate_limited_raised():
        raise TooManyRequests()

    @app.get("/test/500")
    def crash():
        raise RuntimeError("boom")

    @app.get("/test/503")
    def upstream_down():
        raise UpstreamUnavailable("keycloak down")

    return app


@pytest.fixture
def cors_client():
    return make_app(GATEWAY_CORS_ORIGINS=f"{PORTAL}, http://127.0.0.1:3000").test_client()


@pytest.fixture
def plain_client():
    return make_app().test_client()


def cors_headers(response):
    return {name: value for name, value in response.headers.items() if name.lower().startswith("access-control-")}


@pytest.mark.parametrize("value, origins", [
    ("", ()),
    (" , ", ()),
    ("https://portal.example.org", ("https://portal.example.org",)),
    ("HTTPS://Portal.Example.ORG/", ("https://portal.example.org",)),
    ("https://portal.example.org:443, http://localhost:80", ("https://portal.example.org", "http://localhost")),
    ("http://127.0.0.1:3000,http://[::1]:3000, http://127.0.0.1:3000", ("http://127.0.0.1:3000", "http://[::1]:3000")),
    ("https://xn--prtal-jua.example.org:8443", ("https://xn--prtal-jua.example.org:8443",)),
])
def test_origins_are_written_as_browsers_send_them(value, origins):
    assert load_settings(environ=hermetic(KEYCLOAK_CLIENT_SECRET="x", GATEWAY_CORS_ORIGINS=value)).cors_origins == origins


@pytest.mark.parametrize("value, message", [
    ("*", "GATEWAY_CORS_ORIGINS must list exact origins; the wildcard in '*' is refused"),
    ("https://portal.example.org, *", "the wildcard in '*' is refused"),
    ("https://*.example.org", "the wildcard in 'https://*.example.org' is refused"),
    ("null", "GATEWAY_CORS_ORIGINS: 'null' is not an origin"),
    ("portal.example.org", "'portal.example.org' is not an origin"),
    ("ftp://portal.example.org", "is not an origin"),
    ("https://portal.example.org/app", "is not an origin"),
    ("https://portal.example.org/?next=1", "is not an origin"),
    ("https://portal.example.org#top", "is not an origin"),
    ("https://user@portal.example.org", "is not an origin"),
    ("https://portal.example.org:0", "is not an origin"),
    ("https://portal.example.org:70000", "is not an origin"),
    ("https://portal.example.org:https", "is not an origin"),
    ("https://pörtal.example.org", "is not an origin"),
    ("http://[::1", "is not an origin"),
])
def test_a_bad_origin_stops_the_start_naming_the_variable(value, message):
    with pytest.raises(ConfigError, match="GATEWAY_CORS_ORIGINS") as refused:
        load_settings(environ=hermetic(KEYCLOAK_CLIENT_SECRET="x", GATEWAY_CORS_ORIGINS=value))
    assert message in str(refused.value)


@pytest.mark.parametrize("variable, value, message", [
    ("GATEWAY_CORS_ORIGINS", "*", "configuration error: GATEWAY_CORS_ORIGINS must list exact origins; "
                                  "the wildcard in '*' is refused"),
])
def test_gunicorn_refuses_to_start_naming_the_variable(variable, value, message):
    gunicorn = [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "gateway:create_app()"]
    environ = {"PATH": "/usr/bin:/bin", "KEYCLOAK_CLIENT_SECRET": "x", variable: value}
    done = subprocess.run(gunicorn, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# (method, path, keyword arguments of the test client, HTTP status, body)
ANSWERS = {
    "health": ("GET", "/healthz", {}, 200, {"status": 200, "message": "ok"}),
    "payload": ("POST", "/api/login", {"json": {}}, 400, "code=400, message=payload is unknown"),
    "missing token": ("GET", "/api/me", {}, 401, "code=401, message=missing access token"),
    "unknown path": ("GET", "/nowhere", {}, 404, "code=404, message=not found"),
    "wrong method": ("PUT", "/api/login", {}, 405, "code=405, message=method not allowed"),
    "too large": ("POST", "/api/login", {"json": {"username": "someone", "password": "p" * 17000}}, 413,
                  "code=413, message=payload too large"),
    "rate limited": ("GET", "/test/429", {}, 429, "code=429, message=too many login attempts"),
    "rate limited, raised": ("GET", "/test/429-raised", {}, 429, "code=429, message=too many requests"),
    "crash": ("GET", "/test/500", {}, 500, "code=500, message=internal server error"),
    "upstream down": ("GET", "/test/503", {}, 503, "code=503, message=authentication service unavailable"),
    "simplejwt": ("POST", "/users/login/", {"json": {}}, 400,
                  {"username": ["This field is required."], "password": ["This field is required."]}),
}


@pytest.mark.parametrize("case", ANSWERS)
def test_every_answer_carries_cors_for_an_allowed_origin(cors_client, case):
    method, path, kwargs, status, body = ANSWERS[case]
    response = cors_client.open(path, method=method, headers={"Origin": PORTAL}, **kwargs)
    assert (response.status_code, response.json) == (status, body)
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": PORTAL,
        "Access-Control-Expose-Headers": "Retry-After, WWW-Authenticate, X-Request-ID",
    }
    assert "Origin" in response.vary
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if status >= 400:
        assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("case", ANSWERS)
@pytest.mark.parametrize("origin", [
    OTHER, "null", "HTTPS://PORTAL.EXAMPLE.ORG", f"{PORTAL}/", f"{PORTAL}:443", "http://portal.example.org",
    "https://portal.example.org.elsewhere.example.net", "https://sub.portal.example.org", None,
])
def test_no_other_origin_gets_any_cors_header(cors_client, case, origin):
    method, path, kwargs, status, body = ANSWERS[case]
    headers = {"Origin": origin} if origin else {}
    response = cors_client.open(path, method=method, headers=headers, **kwargs)
    assert (response.status_code, response.json) == (status, body)
    assert cors_headers(response) == {}
    assert "Origin" in response.vary  # a shared cache must not hand this answer to the allowed origin
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_errors_keep_their_own_headers_beside_cors(cors_client):
    wrong_method = cors_client.put("/api/login", headers={"Origin": PORTAL})
    assert set(wrong_method.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    assert wrong_method.headers["Access-Control-Allow-Origin"] == PORTAL
    missing = cors_client.get("/api/me", headers={"Origin": PORTAL})
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="edm"'
    limited = cors_client.get("/test/429", headers={"Origin": PORTAL})
    assert limited.headers["Retry-After"] == "30"


def preflight(client, path, origin, method="POST", **extra):
    headers = {"Origin": origin, "Access-Control-Request-Method": method,
               "Access-Control-Request-Headers": "content-type,authorization,x-request-id,x-csrf", **extra}
    return client.options(path, headers=headers)


@pytest.mark.parametrize("path, method", [
    ("/api/login", "POST"), ("/api/refresh", "POST"), ("/api/logout", "POST"), ("/api/me", "GET"),
    ("/users/login/", "POST"), ("/api/nowhere", "POST"), ("/", "GET"),
])
def test_a_preflight_of_an_allowed_origin_is_answered_for_the_documented_methods_and_headers(cors_client, path,
                                                                                          method):
    response = preflight(cors_client, path, PORTAL, method, **{"Access-Control-Request-Private-Network": "true"})
    assert (response.status_code, response.data) == (204, b"")
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": PORTAL,
        "Access-Control-Allow-Methods": "GET, POST",
        "Access-Control-Allow-Headers": "Content-Type, Authorization, X-Request-ID, X-CSRF",
        "Access-Control-Max-Age": "600",
    }  # never Allow-Credentials, never Allow-Private-Network
    assert set(response.headers["Access-Control-Allow-Headers"].split(", ")) == ALLOW_HEADERS
    assert "Origin" in response.vary
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("origin", [OTHER, "null", f"{PORTAL}:443", "https://sub.portal.example.org"])
def test_a_preflight_of_another_origin_gets_no_allow_header(cors_client, origin):
    known = preflight(cors_client, "/api/login", origin)
    assert (known.status_code, set(known.headers["Allow"].split(", "))) == (200, {"POST", "OPTIONS"})
    unknown = preflight(cors_client, "/api/nowhere", origin)
    assert (unknown.status_code, unknown.json) == (404, "code=404, message=not found")
    for response in (known, unknown):
        assert cors_headers(response) == {}


def test_a_plain_options_request_is_flasks_own_answer(cors_client):
    response = cors_client.options("/api/login", headers={"Origin": PORTAL})
    assert (response.status_code, set(response.headers["Allow"].split(", "))) == (200, {"POST", "OPTIONS"})
    assert response.headers["Access-Control-Allow-Origin"] == PORTAL
    assert "Access-Control-Allow-Methods" not in response.headers


def test_nothing_is_allowed_by_default(plain_client):
    for response in (preflight(plain_client, "/api/login", PORTAL), plain_client.get("/nowhere", headers={"Origin": PORTAL}),
                     plain_client.post("/api/login", json={}, headers={"Origin": "null"})):
        assert cors_headers(response) == {}
        assert "Origin" not in response.vary  # nothing depends on the origin
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert preflight(plain_client, "/api/login", PORTAL).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/nowhere", "/users/nowhere/"])
def test_nosniff_on_every_answer(plain_client, path):
    assert plain_client.get(path).headers["X-Content-Type-Options"] == "nosniff"
