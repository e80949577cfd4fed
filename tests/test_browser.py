"""The browser side in-process: `GATEWAY_CORS_ORIGINS` parsed and checked at start, CORS headers on every answer
for the allowed origins only, preflights, the hardening headers, and the tester page's files and switch."""

import subprocess
import sys
from html.parser import HTMLParser

import pytest
from werkzeug.exceptions import TooManyRequests

from gateway import create_app
from gateway.config import ConfigError, load_settings
from gateway.errors import UpstreamUnavailable
from tests.browser import hermetic
from tests.compose_env import gateway_environment
from tests.conftest import ROOT, mock_config

PORTAL = "https://portal.example.org"
OTHER = "https://elsewhere.example.net"
ALLOW_HEADERS = {"Content-Type", "Authorization", "X-Request-ID", "X-CSRF"}
STATIC = ROOT / "gateway" / "static"


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
    return make_app(GATEWAY_TESTER_PAGE="true").test_client()


def test_the_tester_page_is_a_dev_feature_off_by_default():
    client = make_app().test_client()
    for path in ("/", "/static/tester.js"):
        answer = client.get(path)
        assert (answer.status_code, answer.json) == (404, "code=404, message=not found")


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
    settings = load_settings(environ=hermetic(KEYCLOAK_CLIENT_SECRET="x", GATEWAY_CORS_ORIGINS=value))
    assert settings.cors_origins == origins


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
    ("GATEWAY_TESTER_PAGE", "sometimes", "configuration error: GATEWAY_TESTER_PAGE must be true or false, "
                                         "got 'sometimes'"),
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
    ("/users/login/", "POST"), ("/api/nowhere", "POST"), ("/", "GET"), ("/api/sessions", "GET"),
    ("/api/sessions/some-id", "DELETE"),
])
def test_a_preflight_of_an_allowed_origin_is_answered_for_the_documented_methods_and_headers(cors_client, path,
                                                                                          method):
    response = preflight(cors_client, path, PORTAL, method, **{"Access-Control-Request-Private-Network": "true"})
    assert (response.status_code, response.data) == (204, b"")
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": PORTAL,
        "Access-Control-Allow-Methods": "GET, POST, DELETE",
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
    for response in (preflight(plain_client, "/api/login", PORTAL),
                     plain_client.get("/nowhere", headers={"Origin": PORTAL}),
                     plain_client.post("/api/login", json={}, headers={"Origin": "null"})):
        assert cors_headers(response) == {}
        assert "Origin" not in response.vary  # nothing depends on the origin
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert preflight(plain_client, "/api/login", PORTAL).status_code == 200


@pytest.mark.parametrize("path", ["/", "/static/tester.js", "/static/tester.css", "/healthz", "/nowhere",
                                  "/users/nowhere/"])
def test_nosniff_on_every_answer(plain_client, path):
    assert plain_client.get(path).headers["X-Content-Type-Options"] == "nosniff"


def policy_directives(policy):
    return {name: values for name, *values in (part.split() for part in policy.split(";") if part.strip())}


def test_the_tester_page_and_its_headers(plain_client):
    response = plain_client.get("/")
    assert (response.status_code, response.mimetype) == (200, "text/html")
    assert policy_directives(response.headers["Content-Security-Policy"]) == {
        "default-src": ["'none'"], "script-src": ["'self'"], "style-src": ["'self'"], "connect-src": ["'self'"],
        "img-src": ["'self'"], "base-uri": ["'none'"], "form-action": ["'self'"], "frame-ancestors": ["'none'"],
        "object-src": ["'none'"], "require-trusted-types-for": ["'script'"], "trusted-types": ["'none'"],
    }
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("path, mimetypes", [
    ("/", {"text/html"}),
    ("/static/tester.js", {"text/javascript", "application/javascript"}),  # which one depends on the system's table
    ("/static/tester.css", {"text/css"}),
])
def test_the_page_files_are_revalidated_not_stored_stale(plain_client, path, mimetypes):
    first = plain_client.get(path)
    assert first.status_code == 200 and first.mimetype in mimetypes
    assert first.headers["Cache-Control"] == "no-cache" and first.headers["ETag"]
    again = plain_client.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert (again.status_code, again.data) == (304, b"")
    assert again.headers["X-Content-Type-Options"] == "nosniff"


class PageParts(HTMLParser):
    """What the page's HTML holds: its elements with their attributes, and the text of each label."""

    def __init__(self):
        super().__init__()
        self.elements, self.labels, self.buttons, self.inline_scripts = [], {}, [], []
        self._open = None

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._open = (tag, dict(attrs))

    def handle_data(self, data):
        tag, attrs = self._open or (None, {})
        if tag == "label":
            self.labels[data.strip()] = attrs.get("for")
        elif tag == "button" and data.strip():
            self.buttons.append(data.strip())
        elif tag == "script" and data.strip():
            self.inline_scripts.append(data)

    def handle_endtag(self, tag):
        self._open = None


@pytest.fixture(scope="module")
def page_parts():
    parts = PageParts()
    parts.feed((STATIC / "tester.html").read_text())
    return parts


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(page_parts):
    assert page_parts.inline_scripts == []
    scripts = [attrs for tag, attrs in page_parts.elements if tag == "script"]
    assert scripts == [{"type": "module", "src": "/static/tester.js"}]
    sheets = [attrs["href"] for tag, attrs in page_parts.elements if tag == "link" and attrs.get("rel") == "stylesheet"]
    assert sheets == ["/static/tester.css"]
    assert [tag for tag, _ in page_parts.elements if tag in ("style", "iframe", "object", "embed", "base")] == []
    for tag, attrs in page_parts.elements:
        assert "style" not in attrs and not any(name.startswith("on") for name in attrs), (tag, attrs)
    assert sorted(path.name for path in STATIC.iterdir()) == ["tester.css", "tester.html", "tester.js"]


def test_the_form_is_labelled_and_the_bff_place_is_hidden(page_parts):
    ids = {attrs.get("id"): (tag, attrs) for tag, attrs in page_parts.elements}
    assert ids[page_parts.labels["Username"]][1]["autocomplete"] == "username"
    assert ids[page_parts.labels["Password"]][1]["type"] == "password"
    assert page_parts.buttons == ["Log in", "Log in with Keycloak", "Who am I (BFF)", "Log out (BFF)", "Refresh",
                                  "Who am I", "Log out", "List sessions"]
    assert "hidden" in ids["bff-login"][1]  # until the script finds the gateway in BFF mode
    assert "hidden" in ids["sessions"][1]  # until a login, of either kind
    assert ids["login-form"][1] == {"id": "login-form", "method": "post", "action": "/api/login"}


def test_the_script_keeps_tokens_in_memory_and_writes_no_markup():
    script = (STATIC / "tester.js").read_text()
    for forbidden in ("localStorage.", "sessionStorage.", "document.cookie", "indexedDB", "innerHTML", "outerHTML",
                      "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert forbidden not in script, forbidden


def test_the_tester_page_can_be_switched_off():
    client = make_app(GATEWAY_TESTER_PAGE="false").test_client()
    for path in ("/", "/static/tester.js", "/static/tester.css", "/static/tester.html"):
        response = client.get(path)
        assert (response.status_code, response.json) == (404, "code=404, message=not found"), path
        assert "Content-Security-Policy" not in response.headers
    assert client.get("/healthz").status_code == 200


def test_the_compose_stack_serves_the_page_at_the_same_url():
    environment = gateway_environment()
    assert environment.get("GATEWAY_TESTER_PAGE", "true") == "true"
    client = create_app(hermetic(**environment)).test_client()
    response = client.get("/")
    assert (response.status_code, response.mimetype) == (200, "text/html")
    assert b"<label for=\"username\">Username</label>" in response.data
