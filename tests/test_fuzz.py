"""Property-based fuzzing (hypothesis) of the schemas and the body parsers, in process against a mocked Keycloak:
thousands of generated requests (bodies of every shape and media type, odd charsets, headers) to every endpoint of
both profiles. None may answer a 5xx, carry a trace, or answer anything but one of the endpoint's documented
answers. Deterministic (derandomized) so that CI and a developer see the same examples; the count is printed.
A longer run by hand: `FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_fuzz.py`."""

import json
import os
import re

import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import create_app
from tests.conftest import mock_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "600"))
REALM = "http://keycloak.test/auth/realms/edm/protocol/openid-connect"
TRACE = re.compile(r"Traceback|File \"|line \d+, in |Error:|Exception")

EDM = "code={}, message={}"
DRF_FIELD_MESSAGES = {"This field is required.", "This field may not be null.", "Not a valid string.",
                      "This field may not be blank.", "Null characters are not allowed."}
TOKEN_401 = {"detail": "Token is invalid", "code": "token_not_valid"}
DRF_413 = {"detail": "Request body too large."}
DRF_THROTTLED = re.compile(r"Request was throttled\. Expected available in \d+ seconds?\.")

# What each endpoint may answer with this mocked realm (every grant refused as a disabled account, every refresh
# token refused, every session already ended), and with the limits on, the 429s.
EDM_ANSWERS = {
    "/api/login": {(400, EDM.format(400, "payload is unknown")), (400, EDM.format(403, "account disabled")),
                   (413, EDM.format(413, "payload too large"))},
    "/api/refresh": {(400, EDM.format(400, "payload is unknown")),
                     (401, EDM.format(401, "refresh token is invalid or expired")),
                     (413, EDM.format(413, "payload too large"))},
    "/api/logout": {(400, EDM.format(400, "payload is unknown")), (200, None),
                    (413, EDM.format(413, "payload too large"))},
}
TOO_MANY = (429, EDM.format(429, "too many login attempts"))
DRF_FIELDS = {"/users/login/": ("username", "password"), "/users/refresh/": ("refresh",), "/users/verify/": ("token",)}
EDM_FIELDS = {"/api/login": ("username", "password"), "/api/refresh": ("refreshToken",),
              "/api/logout": ("refreshToken",)}


def fuzzed():
    """How many requests this module sent, for the run's summary."""
    return pytest.__dict__.setdefault("fuzzed_requests", {})


def count(kind):
    fuzzed()[kind] = fuzzed().get(kind, 0) + 1


@pytest.fixture(scope="module")
def mocked_realm(signer):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        def token(request):
            grant = dict(pair.split("=", 1) for pair in (request.body or "").split("&") if "=" in pair)
            if grant.get("grant_type") == "password":
                return 400, {}, json.dumps({"error": "invalid_grant", "error_description": "Account disabled"})
            return 400, {}, json.dumps({"error": "invalid_grant", "error_description": "Invalid refresh token"})

        mock.add_callback(responses.POST, f"{REALM}/token", callback=token)
        mock.post(f"{REALM}/logout", status=400,
                  json={"error": "invalid_grant", "error_description": "Session not active"})
        mock.post(f"{REALM}/token/introspect", json={"active": False})
        mock.get(f"{REALM}/certs", json=signer.jwks)
        yield mock


@pytest.fixture(scope="module")
def unlimited(mocked_realm, tmp_path_factory):
    app = create_app(mock_config(GATEWAY_LIMIT_PER_USERNAME="off", GATEWAY_LIMIT_PER_ADDRESS="off",
                                 TMPDIR=str(tmp_path_factory.mktemp("locks"))))
    return app.test_client()


@pytest.fixture(scope="module")
def limited(mocked_realm, tmp_path_factory):
    app = create_app(mock_config(GATEWAY_LIMIT_PER_USERNAME="3/minute", GATEWAY_LIMIT_PER_ADDRESS="20/minute",
                                 TMPDIR=str(tmp_path_factory.mktemp("locks"))))
    return app.test_client()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70) | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
field_values = (st.text(max_size=300) | st.text(alphabet="abcXYZ019", min_size=1, max_size=260)
                | st.text(min_size=8, max_size=1100) | json_values)
charsets = st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", "; charset=utf-16", "; charset=nonsense",
                            "; charset=", "; charset=rot13", "; charset=base64", "; charset=zlib", "; charset=bz2",
                            "; charset=hex", "; charset=uu", "; charset=undefined", "; charset=punycode",
                            "; charset=unicode_escape", "; charset=utf-7"])


# Values that pass validation, so that the requests also reach the (mocked) realm.
plausible = {"username": st.from_regex(r"[A-Za-z0-9]{3,40}", fullmatch=True),
             "password": st.text(min_size=8, max_size=80), "refreshToken": st.text(min_size=1, max_size=200),
             "refresh": st.text(min_size=1, max_size=200), "token": st.text(min_size=1, max_size=200)}


@st.composite
def bodies(draw, fields):
    """A body and its Content-Type: mostly the endpoint's fields with any values, sometimes anything at all."""
    if draw(st.booleans()):
        values = {field: draw(plausible[field]) for field in fields}
    else:
        values = draw(st.dictionaries(st.sampled_from(fields + ("extra", "")), field_values,
                                      max_size=len(fields) + 1))
    kind = draw(st.sampled_from(["json", "json", "form", "multipart", "raw", "none", "huge"]))
    if kind == "json":
        document = values if draw(st.booleans()) else draw(json_values)
        text = json.dumps(document)
        if draw(st.booleans()):
            text = text[:draw(st.integers(0, len(text)))]  # cut short: malformed JSON
        return text.encode("utf-8", "surrogatepass"), "application/json" + draw(charsets)
    if kind == "form":
        return {k: str(v) for k, v in values.items()}, "application/x-www-form-urlencoded"
    if kind == "multipart":
        return {k: str(v) for k, v in values.items()}, "multipart/form-data"
    if kind == "huge":
        return b'{"x": "' + b"a" * draw(st.integers(16 * 1024, 40 * 1024)) + b'"}', "application/json"
    if kind == "none":
        return b"", draw(st.sampled_from(["", "application/json", "text/plain"]))
    return draw(st.binary(max_size=400)), draw(st.sampled_from(
        ["application/json", "text/plain", "application/xml", "application/x-www-form-urlencoded",
         "multipart/form-data", "multipart/form-data; boundary=xyz", "", "application/json; charset=utf-8",
         "application/x-www-form-urlencoded; charset=bz2", "multipart/form-data; boundary=xyz; charset=rot13"]))


def send(client, path, body, content_type, headers=None):
    kwargs = {"headers": headers or {}}
    if isinstance(body, dict):
        kwargs["data"] = {k.replace("\x00", ""): v.replace("\x00", "") for k, v in body.items() if k}
        if content_type == "multipart/form-data":
            kwargs["content_type"] = content_type
    else:
        kwargs["data"] = body
        if content_type:
            kwargs["content_type"] = content_type
    return client.post(path, **kwargs)


def check_common(response):
    text = response.get_data(as_text=True)
    assert response.status_code < 500, (response.status_code, text)
    assert not TRACE.search(text), text
    assert response.content_type == "application/json", response.content_type
    return response.json


def check_edm(path, response, limits):
    body = check_common(response)
    answer = (response.status_code, body if response.status_code != 200 else None)
    allowed = EDM_ANSWERS[path] | ({TOO_MANY} if limits else set())
    if path == "/api/logout" and response.status_code == 200:
        assert body == {"status": 200, "message": "logged out"}
    else:
        assert answer in allowed, answer


def check_drf(path, response, limits):
    body = check_common(response)
    status = response.status_code
    assert isinstance(body, dict), body
    if status == 400:
        if "detail" in body:
            assert set(body) == {"detail"} and re.fullmatch(
                r"JSON parse error - .+|Multipart form parse error - Invalid boundary in multipart: None"
                r'|Unsupported charset "[^"]+" in request Content-Type header\.',
                body["detail"], re.S), body
        else:
            assert set(body) <= set(DRF_FIELDS[path]) | {"non_field_errors"}, body
            for messages in body.values():
                assert isinstance(messages, list) and messages
                for message in messages:
                    assert (message in DRF_FIELD_MESSAGES or message.startswith("Surrogate characters are not allowed")
                            or re.fullmatch(r"Invalid data\. Expected a dictionary, but got \w+\.|No data provided",
                                            message)), message
    elif status == 401:
        assert body in ({"detail": "No active account found with the given credentials"}, TOKEN_401,
                        {"detail": "Token is expired", "code": "token_not_valid"},
                        {"detail": "Token has wrong type", "code": "token_not_valid"}), body
    elif status == 415:
        assert set(body) == {"detail"} and body["detail"].startswith("Unsupported media type ")
    elif status == 413:
        assert body == DRF_413
    elif status == 429 and limits:
        assert set(body) == {"detail"} and DRF_THROTTLED.fullmatch(body["detail"])
        assert response.headers["Retry-After"].isdigit()
    else:
        raise AssertionError((status, body))


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("path", sorted(EDM_FIELDS))
def test_edm_endpoints(unlimited, path):
    @FUZZ
    @given(bodies(EDM_FIELDS[path]))
    def run(body):
        count("in-process, limits off")
        check_edm(path, send(unlimited, path, *body), limits=False)

    run()


@pytest.mark.parametrize("path", sorted(DRF_FIELDS))
def test_simplejwt_endpoints(unlimited, path):
    @FUZZ
    @given(bodies(DRF_FIELDS[path]))
    def run(body):
        count("in-process, limits off")
        check_drf(path, send(unlimited, path, *body), limits=False)

    run()


authorizations = st.one_of(
    st.text(max_size=60), st.builds(lambda s, t: f"{s} {t}", st.sampled_from(["Bearer", "JWT", "bearer", "Basic"]),
                                    st.text(max_size=300)),
    st.builds(lambda n: "Bearer " + "a" * n, st.integers(8000, 9000)))


def test_me(unlimited):
    @FUZZ
    @given(st.none() | authorizations)
    def run(authorization):
        count("in-process, limits off")
        headers = {} if authorization is None else {"Authorization": authorization.replace("\n", "")
                                                    .replace("\r", "")}
        response = unlimited.get("/api/me", headers=headers)
        body = check_common(response)
        assert (response.status_code, body) in {(401, EDM.format(401, "missing access token")),
                                                (401, EDM.format(401, "access token is invalid or expired"))}
        assert response.headers["WWW-Authenticate"].startswith("Bearer")

    run()


def test_every_endpoint_with_the_limits_on(limited):
    """A shorter run against a gateway whose limits are on: the 429s are documented answers, nothing else changes."""
    paths = sorted(EDM_FIELDS) + sorted(DRF_FIELDS)

    @settings(FUZZ, max_examples=max(EXAMPLES // 2, 50))
    @given(st.sampled_from(paths).flatmap(lambda p: st.tuples(st.just(p), bodies((EDM_FIELDS | DRF_FIELDS)[p]))))
    def run(case):
        path, body = case
        count("in-process, limits on")
        response = send(limited, path, *body)
        (check_edm if path.startswith("/api/") else check_drf)(path, response, limits=True)

    run()
