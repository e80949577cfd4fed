"""Every error goes through one handler and comes out as the documented answer of its profile."""

import logging

import pytest
from werkzeug import exceptions as http

from gateway import errors

# (error, HTTP status on /raise, EDM body), written out as the spec says them, never read from the classes.
GATEWAY_ERRORS = [
    (errors.GatewayError, 500, "code=500, message=internal server error"),
    (errors.RequestError, 500, "code=500, message=internal server error"),
    (errors.PayloadUnknown, 400, "code=400, message=payload is unknown"),
    (errors.InvalidCredentials, 400, "code=400, message=invalid username or password"),
    (errors.UsernameNotFound, 404, "code=404, message=username not found"),
    (errors.WrongPassword, 400, "code=400, message=wrong password"),
    (errors.AccountLocked, 403, "code=403, message=account temporarily locked"),
    (errors.AccountDisabled, 403, "code=403, message=account disabled"),
    (errors.AccountNotSetUp, 403, "code=403, message=account is not fully set up"),
    (errors.InvalidRefreshToken, 401, "code=401, message=refresh token is invalid or expired"),
    (errors.ExpiredRefreshToken, 401, "code=401, message=refresh token is invalid or expired"),
    (errors.WrongTokenType, 401, "code=401, message=refresh token is invalid or expired"),
    (errors.RefreshReused, 401, "code=401, message=refresh token is invalid or expired"),
    (errors.MissingAccessToken, 401, "code=401, message=missing access token"),
    (errors.InvalidAccessToken, 401, "code=401, message=access token is invalid or expired"),
    (errors.ExpiredAccessToken, 401, "code=401, message=access token is invalid or expired"),
    (errors.TooManyAttempts, 429, "code=429, message=too many login attempts"),
    (errors.LoginQueueTimeout, 504, "code=504, message=authentication service timed out"),
    (errors.UpstreamError, 500, "code=500, message=internal server error"),
    (errors.UpstreamUnavailable, 503, "code=503, message=authentication service unavailable"),
    (errors.StoreUnavailable, 503, "code=503, message=authentication service unavailable"),
    (errors.UpstreamTimeout, 504, "code=504, message=authentication service timed out"),
    (errors.UpstreamBadResponse, 502, "code=502, message=authentication service error"),
    # BFF mode
    (errors.InvalidReturnUrl, 400, "code=400, message=invalid return url"),
    (errors.LoginFailed, 400, "code=400, message=login failed"),
    (errors.InvalidIdToken, 400, "code=400, message=login failed"),
    (errors.MissingCsrfHeader, 403, "code=403, message=missing csrf header"),
    (errors.NotLoggedIn, 401, "code=401, message=not logged in"),
    (errors.SessionEnded, 401, "code=401, message=not logged in"),
    (errors.InvalidSessionId, 400, "code=400, message=invalid session id"),
    (errors.UnknownUpstream, 404, "code=404, message=unknown upstream"),
    (errors.InvalidUpstreamPath, 400, "code=400, message=invalid upstream path"),
    (errors.BodyNotAllowed, 400, "code=400, message=body not allowed"),
    # session integrity (the back-channel logout renders its own refusal, tests/test_backchannel.py)
    (errors.InvalidLogoutToken, 400, "code=400, message=invalid logout token"),
    (errors.SessionNotFound, 404, "code=404, message=session not found"),
    (errors.ApiUpstreamError, 500, "code=500, message=internal server error"),
    (errors.ApiUnavailable, 503, "code=503, message=upstream service unavailable"),
    (errors.ApiTimeout, 504, "code=504, message=upstream service timed out"),
    (errors.ApiBadResponse, 502, "code=502, message=upstream service error"),
]


def test_the_table_covers_every_error_class():
    classes = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GatewayError)}
    with_arguments = {errors.FieldErrors, errors.MalformedBody, errors.UnsupportedMediaType, errors.NotReady}  # below
    assert classes - with_arguments - {e for e, _, _ in GATEWAY_ERRORS} == set()


@pytest.mark.parametrize("error_class, status, body", GATEWAY_ERRORS, ids=lambda v: getattr(v, "__name__", None))
def test_each_error_renders_its_documented_body(app, error_class, status, body):
    @app.get("/raise")
    def raise_it():
        raise error_class("internal reason with a secret-token")

    response = app.test_client().get("/raise")
    assert (response.status_code, response.json) == (status, body)
    assert response.content_type == "application/json"
    assert "secret-token" not in response.get_data(as_text=True)


@pytest.mark.parametrize("error, status, body", [
    (errors.FieldErrors({"username": ["This field is required."]}), 400, "code=400, message=payload is unknown"),
    (errors.MalformedBody("JSON parse error - x"), 400, "code=400, message=payload is unknown"),
    (errors.UnsupportedMediaType("text/plain"), 400, "code=400, message=payload is unknown"),
    (errors.NotReady(["keycloak"]), 503, "code=503, message=keycloak unavailable"),
    (errors.NotReady(["keycloak", "redis"]), 503, "code=503, message=keycloak, redis unavailable"),
])
def test_errors_that_carry_their_details(app, error, status, body):
    @app.get("/raise")
    def raise_it():
        raise error

    response = app.test_client().get("/raise")
    assert (response.status_code, response.json) == (status, body)


# Every werkzeug HTTP error, as the EDM profile and the SimpleJWT profile render it.
HTTP_ERRORS = [
    (http.BadRequest, 400, "code=400, message=bad request", {"detail": "Malformed request."}),
    (http.Unauthorized, 401, "code=401, message=unauthorized",
     {"detail": "Authentication credentials were not provided."}),
    (http.Forbidden, 403, "code=403, message=forbidden",
     {"detail": "You do not have permission to perform this action."}),
    (http.NotFound, 404, "code=404, message=not found", {"detail": "Not found."}),
    (http.NotAcceptable, 406, "code=406, message=not acceptable",
     {"detail": "Could not satisfy the request Accept header."}),
    (http.RequestTimeout, 408, "code=408, message=request timeout", {"detail": "Request Timeout."}),
    (http.Conflict, 409, "code=409, message=conflict", {"detail": "Conflict."}),
    (http.Gone, 410, "code=410, message=gone", {"detail": "Gone."}),
    (http.LengthRequired, 411, "code=411, message=length required", {"detail": "Length Required."}),
    (http.PreconditionFailed, 412, "code=412, message=precondition failed", {"detail": "Precondition Failed."}),
    (http.RequestEntityTooLarge, 413, "code=413, message=payload too large", {"detail": "Request body too large."}),
    (http.RequestURITooLarge, 414, "code=414, message=request uri too long", {"detail": "Request URI Too Long."}),
    (http.UnsupportedMediaType, 415, "code=415, message=unsupported media type", {"detail": "Unsupported Media Type."}),
    (http.RequestedRangeNotSatisfiable, 416, "code=416, message=requested range not satisfiable",
     {"detail": "Requested Range Not Satisfiable."}),
    (http.ExpectationFailed, 417, "code=417, message=expectation failed", {"detail": "Expectation Failed."}),
    (http.ImATeapot, 418, "code=418, message=i'm a teapot", {"detail": "I'm a teapot."}),
    (http.MisdirectedRequest, 421, "code=421, message=misdirected request", {"detail": "Misdirected Request."}),
    (http.UnprocessableEntity, 422, "code=422, message=unprocessable entity", {"detail": "Unprocessable Entity."}),
    (http.Locked, 423, "code=423, message=locked", {"detail": "Locked."}),
    (http.FailedDependency, 424, "code=424, message=failed dependency", {"detail": "Failed Dependency."}),
    (http.PreconditionRequired, 428, "code=428, message=precondition required", {"detail": "Precondition Required."}),
    (http.TooManyRequests, 429, "code=429, message=too many requests", {"detail": "Request was throttled."}),
    (http.RequestHeaderFieldsTooLarge, 431, "code=431, message=request header fields too large",
     {"detail": "Request Header Fields Too Large."}),
    (http.UnavailableForLegalReasons, 451, "code=451, message=unavailable for legal reasons",
     {"detail": "Unavailable For Legal Reasons."}),
    (http.InternalServerError, 500, "code=500, message=internal server error", {"detail": "A server error occurred."}),
    (http.NotImplemented, 501, "code=501, message=not implemented", {"detail": "Not Implemented."}),
    (http.BadGateway, 502, "code=502, message=bad gateway", {"detail": "Bad Gateway."}),
    (http.ServiceUnavailable, 503, "code=503, message=service unavailable", {"detail": "Service Unavailable."}),
    (http.GatewayTimeout, 504, "code=504, message=gateway timeout", {"detail": "Gateway Timeout."}),
    (http.HTTPVersionNotSupported, 505, "code=505, message=http version not supported",
     {"detail": "HTTP Version Not Supported."}),
]


@pytest.mark.parametrize("error_class, status, edm_body, drf_body", HTTP_ERRORS,
                         ids=lambda v: getattr(v, "__name__", None))
def test_every_werkzeug_error_goes_through_the_handler(app, error_class, status, edm_body, drf_body):
    def raise_it():
        raise error_class()

    app.add_url_rule("/raise", "raise_edm", raise_it)
    app.add_url_rule("/users/raise/", "raise_drf", raise_it)
    client = app.test_client()
    for path, body in (("/raise", edm_body), ("/users/raise/", drf_body)):
        response = client.get(path)
        assert (response.status_code, response.json) == (status, body)
        assert response.content_type == "application/json"
        assert "<" not in response.get_data(as_text=True)  # no HTML page, ever


def test_unknown_path(client):
    response = client.get("/nowhere")
    assert (response.status_code, response.json) == (404, "code=404, message=not found")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_wrong_method_names_the_allowed_ones(client, method):
    response = client.open("/api/login", method=method)
    assert (response.status_code, response.json) == (405, "code=405, message=method not allowed")
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}


@pytest.mark.parametrize("content_type, data", [
    ("application/json", b'{"username": "ahmadakbar", "password": "' + b"p" * 17000 + b'"}'),
    ("application/x-www-form-urlencoded", b"username=ahmadakbar&password=" + b"p" * 17000),
])
def test_body_over_the_limit(client, content_type, data):
    response = client.post("/api/login", data=data, content_type=content_type)
    assert (response.status_code, response.json) == (413, "code=413, message=payload too large")


def test_unexpected_failure_is_logged_with_its_trace_and_never_shown(app, caplog):
    @app.get("/boom")
    def boom():
        raise RuntimeError("database password is hunter2")

    with caplog.at_level(logging.ERROR):
        response = app.test_client().get("/boom")
    assert (response.status_code, response.json) == (500, "code=500, message=internal server error")
    assert "hunter2" not in response.get_data(as_text=True)
    assert "Traceback" in caplog.text and "RuntimeError" in caplog.text


def test_the_operations_guide_explains_every_outcome():
    """The outcome of each error is a label of the metrics and a field of the audit log: operators look it up."""
    from tests.conftest import ROOT

    outcomes = {c.outcome for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GatewayError)}
    guide = (ROOT / "docs" / "operations.md").read_text().split("\n### The outcomes\n", 1)[1].split("\n## ", 1)[0]
    assert sorted(o for o in outcomes if f"`{o}`" not in guide) == []


@pytest.mark.parametrize("method, path, location", [
    ("GET", "//api//me", "/api/me?x=1"), ("GET", "/api//me", "/api/me?x=1"), ("POST", "/api//login", "/api/login?x=1"),
    ("POST", "//api//refresh", "/api/refresh?x=1"), ("POST", "/api//logout", "/api/logout?x=1"),
    ("POST", "/users//login//", "/users/login/?x=1"), ("POST", "/users/refresh///", "/users/refresh/?x=1"),
    ("POST", "//users//verify//", "/users/verify/?x=1"),
])
def test_routing_redirects_name_no_host_the_client_sent(client, method, path, location):
    """werkzeug's redirects (slashes merged, a trailing slash added): a path of this gateway, whatever `Host` said."""
    answer = client.open("/", method=method, headers={"Host": "evil.example"},
                         environ_overrides={"PATH_INFO": path, "QUERY_STRING": "x=1"})
    assert (answer.status_code, answer.headers["Location"], answer.data) == (308, location, b"")
    assert "Content-Type" not in answer.headers


def test_a_redirect_keeps_the_path_the_gateway_is_mounted_at(client):
    answer = client.get("/", headers={"Host": "evil.example"},
                        environ_overrides={"SCRIPT_NAME": "/auth-gw", "PATH_INFO": "/api//me"})
    assert (answer.status_code, answer.headers["Location"]) == (308, "/auth-gw/api/me")
