"""The OpenAPI 3.1 document of every endpoint of every profile (`GET /openapi.json`).

Generated with apispec and its marshmallow plugin from the schemas the gateway validates requests with
(`gateway.schemas`), the answer schemas below, and the error classes (`gateway.errors`): each documented status
with its body and headers. An EDM error is a JSON string, documented as a `string` with the `enum` of the exact
bodies that status can carry. The tests hold real answers, against the real Keycloak, to this document.
"""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema, fields, validate

from gateway import errors as e
from gateway import version
from gateway.schemas import (
    DrfCharField,
    LoginSchema,
    LogoutTokenSchema,
    RefreshTokenSchema,
    TokenObtainSchema,
    TokenRefreshSchema,
    TokenVerifySchema,
)

BODY_TYPES = ("application/json", "application/x-www-form-urlencoded", "multipart/form-data")


class TokenBody(Schema):
    """The EDM token body, keys in this order."""

    status = fields.Integer(required=True, validate=validate.Equal(200))
    message = fields.String(required=True, metadata={"description": "the user id (the access token's `sub`)"})
    accessToken = fields.String(required=True, metadata={"description": "an RS256 JWT of the realm"})
    refreshToken = fields.String(required=True)
    expiresIn = fields.Integer(required=True, metadata={"description": "seconds the access token lives"})


class MessageBody(Schema):
    status = fields.Integer(required=True, validate=validate.Equal(200))
    message = fields.String(required=True)


class User(Schema):
    id = fields.String(required=True)
    username = fields.String(required=True, allow_none=True)
    email = fields.String(required=True, allow_none=True)
    emailVerified = fields.Boolean(required=True, allow_none=True)
    firstName = fields.String(required=True, allow_none=True)
    lastName = fields.String(required=True, allow_none=True)
    roles = fields.List(fields.String(), required=True, metadata={"description": "realm roles, sorted"})


class MeBody(Schema):
    status = fields.Integer(required=True, validate=validate.Equal(200))
    message = fields.String(required=True, metadata={"description": "the user id"})
    user = fields.Nested(User, required=True)


class AccountSession(Schema):
    """One of the user's Keycloak sessions, as Keycloak's Account API lists it."""

    id = fields.String(required=True, metadata={"description": "Keycloak's session id, the tokens' `sid`"})
    ipAddress = fields.String(required=True, allow_none=True, metadata={
        "description": "the client address Keycloak recorded when the session began (the one the gateway passed on)"})
    started = fields.Integer(required=True, metadata={"description": "when it began, in seconds since the epoch"})
    lastAccess = fields.Integer(required=True, metadata={"description": "its last use, in seconds since the epoch"})
    expires = fields.Integer(required=True, metadata={"description": "when it ends at the latest (the realm's SSO "
                                                                     "maximum), in seconds since the epoch"})
    current = fields.Boolean(required=True, metadata={"description": "whether it is the session of this request's "
                                                                     "access token (or BFF session)"})
    clients = fields.List(fields.String(), required=True, metadata={"description": "the client ids it is used by"})


class SessionsBody(Schema):
    status = fields.Integer(required=True, validate=validate.Equal(200))
    message = fields.String(required=True, metadata={"description": "the user id"})
    sessions = fields.List(fields.Nested(AccountSession), required=True)


class BackchannelError(Schema):
    """OpenID Connect Back-Channel Logout 1.0's error object."""

    error = fields.String(required=True, validate=validate.Equal("invalid_request"))
    error_description = fields.String(required=True, metadata={"description": "which check the logout token failed"})


class BffSession(Schema):
    expiresIn = fields.Integer(required=True, metadata={"description": "seconds until the session ends, unless "
                                                                       "activity extends it (Keycloak's SSO idle)"})
    logoutUrl = fields.String(required=True, metadata={"description": "`/bff/logout?sid=<Keycloak session id>`"})


class BffUserBody(Schema):
    status = fields.Integer(required=True, validate=validate.Equal(200))
    message = fields.String(required=True, metadata={"description": "the user id"})
    user = fields.Nested(User, required=True)
    session = fields.Nested(BffSession, required=True)


class DrfLoginPair(Schema):
    refresh = fields.String(required=True)
    access = fields.String(required=True)


class DrfRefreshPair(Schema):
    access = fields.String(required=True)
    refresh = fields.String(required=True)


class DrfVerified(Schema):
    """SimpleJWT's `{}`."""


class DrfDetail(Schema):
    detail = fields.String(required=True)


class DrfTokenError(Schema):
    detail = fields.String(required=True, validate=validate.OneOf(
        ["Token is invalid", "Token is expired", "Token has wrong type"]))
    code = fields.String(required=True, validate=validate.Equal("token_not_valid"))


DRF_FIELD_ERRORS = {
    "type": "object",
    "description": "DRF's field errors: every failing field (or `non_field_errors`) with its messages",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
}

HEADERS = {
    "X-Request-ID": {"description": "the request's id: the incoming one if sane, else a new one", "required": True,
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}},
    "Cache-Control": {"description": "token bodies are never cached", "required": True,
                      "schema": {"type": "string", "enum": ["no-store"]}},
    "WWW-Authenticate": {"description": "the RFC 6750 (EDM) or SimpleJWT challenge", "required": True,
                         "schema": {"type": "string"}},
    "Allow": {"description": "the methods the path allows", "required": True, "schema": {"type": "string"}},
    "Retry-After": {"description": "seconds until an attempt may get through", "required": True,
                    "schema": {"type": "integer", "minimum": 1}},
    "Location": {"description": "where the browser goes next", "required": True, "schema": {"type": "string"}},
    "Set-Cookie": {"description": "the BFF's `__Host-` cookies (HttpOnly; Secure; Path=/)", "required": True,
                   "schema": {"type": "string"}},
}
BFF_CSRF = {"name": "X-CSRF", "in": "header", "required": True, "description": "the CSRF defence of BFF mode",
            "schema": {"type": "string", "enum": ["1"]}}
SESSION_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "a session id of the sessions list"}


def _headers(*names):
    return {name: {"$ref": f"#/components/headers/{name}"} for name in ("X-Request-ID", *names)}


def _edm(*answers):
    """An EDM error answer: one of `answers` (error classes, or (code, message) pairs) as its JSON string."""
    bodies = sorted({e.edm_body(*(a if isinstance(a, tuple) else (a.code, a.message))) for a in answers})
    return {"type": "string", "enum": bodies}


def _answer(description, schema, *headers, media_type="application/json"):
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": description, "headers": _headers(*headers), "content": {media_type: {"schema": schema}}}


def _edm_failures(*, upstream=True, body=True, refused=None):
    """The EDM failures an endpoint shares with the others; `refused`: {status: error classes} of its own. Every
    POST can be refused by the rate limits (and a login by the bound on logins waiting for the username)."""
    answers = {
        "405": _answer("wrong method", _edm((405, "method not allowed")), "Allow"),
        "500": _answer("unexpected failure (logged, never shown)", _edm(e.GatewayError)),
    }
    if body:
        answers["413"] = _answer("body over GATEWAY_MAX_BODY_BYTES", _edm((413, "payload too large")))
        answers["429"] = _answer("too many attempts; never reached Keycloak", _edm(e.TooManyAttempts), "Retry-After")
    if upstream:
        answers["502"] = _answer("Keycloak answered something unusable", _edm(e.UpstreamBadResponse))
        answers["503"] = _answer("Keycloak, or the Redis the gateways share, cannot be reached",
                                 _edm(e.UpstreamUnavailable))
        answers["504"] = _answer("Keycloak (or another login of the same username) took too long",
                                 _edm(e.UpstreamTimeout, e.LoginQueueTimeout))
    for status, classes in (refused or {}).items():
        headers = ("WWW-Authenticate",) if status == 401 and any(c.headers for c in classes) else ()
        answers[str(status)] = _answer("refused", _edm(*classes), *headers)
    return answers


def _unlimited(answers):
    """The failures of a POST that the rate limits never hold back (the back-channel logout)."""
    return {status: answer for status, answer in answers.items() if status != "429"}


def _bff_failures(*refused, keycloak=True, api=False, body=False, methods=True, limited=False):
    """The failures of a `/bff/` endpoint: its own refusals, the store's and Keycloak's (a refresh, a code
    exchange), for the proxy the upstream API's, and for `/bff/logout` the per-address rate limit of POSTs."""
    answers = {"500": _answer("unexpected failure (logged, never shown)", _edm(e.GatewayError))}
    if limited:
        answers["429"] = _answer("too many attempts; never reached Keycloak", _edm(e.TooManyAttempts), "Retry-After")
    if methods:
        answers["405"] = _answer("wrong method", _edm((405, "method not allowed")), "Allow")
    if body:
        answers["413"] = _answer("body over GATEWAY_MAX_BODY_BYTES", _edm((413, "payload too large")))
    unavailable, slow, broken = [e.UpstreamUnavailable], [], []
    if keycloak:
        slow, broken = [e.UpstreamTimeout], [e.UpstreamBadResponse]
    if api:
        unavailable, slow, broken = unavailable + [e.ApiUnavailable], slow + [e.ApiTimeout], broken + [e.ApiBadResponse]
    answers["503"] = _answer("Keycloak, the session store or the upstream cannot be reached", _edm(*unavailable))
    if slow:
        answers["504"] = _answer("Keycloak or the upstream took too long", _edm(*slow))
    if broken:
        answers["502"] = _answer("Keycloak or the upstream answered something unusable", _edm(*broken))
    by_status = {}
    for error in refused:
        by_status.setdefault(error.code, []).append(error)
    for status, classes in by_status.items():
        answers[str(status)] = _answer("refused", _edm(*classes))
    return answers


def _bff_operations():
    """The BFF mode's endpoints (GATEWAY_BFF)."""
    redirect = {"description": "to Keycloak's login page", "headers": _headers("Location", "Set-Cookie")}
    yield "/bff/login", "get", {
        "tags": ["BFF"], "summary": "Start a login on Keycloak's page (authorization code with PKCE)",
        "parameters": [{"name": "returnUrl", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "a path of the gateway to return to after the login (default `/`)"}],
        "responses": {"302": redirect, **_bff_failures(e.InvalidReturnUrl, keycloak=False)},
    }
    yield "/bff/callback", "get", {
        "tags": ["BFF"], "summary": "Keycloak's redirect back: the code exchanged, the session started, 302 to "
                                    "returnUrl with the `__Host-edm-session` cookie",
        "parameters": [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                       for name in ("state", "code", "iss", "session_state", "error", "error_description")],
        "responses": {"302": {**redirect, "description": "to the login's returnUrl"},
                      **_bff_failures(e.LoginFailed)},
    }
    yield "/bff/user", "get", {
        "tags": ["BFF"], "summary": "Who is logged in (as /api/me), the session's remaining time and logout URL",
        "parameters": [BFF_CSRF], "security": [{"bffSession": []}],
        "responses": {"200": _answer("the session's user", "BffUserBody", "Cache-Control"),
                      **_bff_failures(e.NotLoggedIn, e.MissingCsrfHeader)},
    }
    yield "/bff/logout", "post", {
        "tags": ["BFF"], "summary": "End the Keycloak session and the gateway's; the cookie expires",
        "parameters": [BFF_CSRF, {"name": "sid", "in": "query", "required": True, "schema": {"type": "string"},
                                  "description": "the Keycloak session id of /bff/user's logoutUrl"}],
        "security": [{"bffSession": []}],
        "responses": {"200": _answer("logged out", "MessageBody", "Set-Cookie"),
                      # Keycloak's failures never fail a logout: the gateway's session ends first
                      **_bff_failures(e.InvalidSessionId, e.NotLoggedIn, e.MissingCsrfHeader, keycloak=False,
                                      limited=True)},
    }
    yield "/bff/sessions", "get", {
        "tags": ["BFF"], "summary": "The user's Keycloak sessions, as /api/sessions lists them",
        "parameters": [BFF_CSRF], "security": [{"bffSession": []}],
        "responses": {"200": _answer("the sessions, the browser's own `current`", "SessionsBody", "Cache-Control"),
                      **_bff_failures(e.NotLoggedIn, e.MissingCsrfHeader)},
    }
    ended = _answer("ended, at Keycloak and on every gateway", "MessageBody", "Cache-Control")
    ended["headers"]["Set-Cookie"] = {"description": "the session cookie, expired, when the session ended was the "
                                                     "browser's own (a logout)", "schema": {"type": "string"}}
    yield "/bff/sessions/{id}", "delete", {
        "tags": ["BFF"], "summary": "End one of the user's Keycloak sessions, as /api/sessions/{id} does; the "
                                    "browser's own is a logout of it",
        "parameters": [BFF_CSRF, SESSION_ID], "security": [{"bffSession": []}],
        "responses": {"200": ended, **_bff_failures(e.NotLoggedIn, e.MissingCsrfHeader, e.SessionNotFound)},
    }
    parameters = [BFF_CSRF,
                  {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "an upstream of GATEWAY_BFF_UPSTREAMS"},
                  {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "the rest of the path, slashes included, forwarded as sent (no `.` or `..` "
                                  "segment, also not before a `;` or in another spelling, no encoded slash or "
                                  "backslash, no empty segment)"}]
    proxied = {"description": "the upstream's answer, of any status, streamed as it came (hop-by-hop headers, "
                              "Set-Cookie and CORS headers left out); the statuses listed are the gateway's own",
               "content": {"*/*": {"schema": {}}}}
    for method in ("get", "post", "put", "patch", "delete"):
        yield "/bff/api/{name}/{path}", method, {
            "tags": ["BFF"], "summary": f"{method.upper()} forwarded to an allowlisted upstream with the session's "
                                        "access token (HEAD and OPTIONS are forwarded too)",
            "parameters": parameters, "security": [{"bffSession": []}],
            **({"requestBody": {"content": {"*/*": {"schema": {}}}}} if method in ("post", "put", "patch") else {}),
            "responses": {"default": proxied,
                          **_bff_failures(e.InvalidUpstreamPath, *((e.BodyNotAllowed,) if method == "get" else ()),
                                          e.NotLoggedIn, e.MissingCsrfHeader, e.UnknownUpstream, api=True,
                                          body=method != "get", methods=method == "get")},
        }


def _drf_failures(unauthorized):
    """The SimpleJWT profile's failures: DRF's shapes."""
    return {
        "400": _answer("field errors, or a body that does not parse (also one of a charset that is no text "
                       "encoding)",
                       {"oneOf": [{"$ref": "#/components/schemas/DrfFieldErrors"},
                                  {"$ref": "#/components/schemas/DrfDetail"}]}),
        "401": _answer("refused", unauthorized, "WWW-Authenticate"),
        "405": _answer("wrong method", "DrfDetail", "Allow"),
        "413": _answer("body over GATEWAY_MAX_BODY_BYTES", "DrfDetail"),
        "415": _answer("a media type other than JSON, urlencoded or multipart", "DrfDetail"),
        "429": _answer("throttled: \"Request was throttled. Expected available in N seconds.\"", "DrfDetail",
                       "Retry-After"),
        "500": _answer("unexpected failure", "DrfDetail"),
        "502": _answer("Keycloak answered something unusable", "DrfDetail"),
        "503": _answer("Keycloak, or the Redis the gateways share, cannot be reached", "DrfDetail"),
        "504": _answer("Keycloak took too long", "DrfDetail"),
    }


def _body(schema_name):
    return {"required": True, "content": {t: {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
                                          for t in BODY_TYPES}}


def _operations(settings):
    """(path, method, operation) of every endpoint the app serves with these settings."""
    account_state = [e.PayloadUnknown, e.UsernameNotFound, e.WrongPassword, e.AccountLocked, e.AccountDisabled,
                     e.AccountNotSetUp, e.InvalidCredentials]
    yield "/api/login", "post", {
        "tags": ["EDM"], "summary": "Log in with username and password (Keycloak's password grant)",
        "requestBody": _body("Login"),
        "responses": {"200": _answer("logged in", "TokenBody", "Cache-Control"),
                      **_edm_failures(refused={400: account_state})},
    }
    yield "/api/refresh", "post", {
        "tags": ["EDM"], "summary": "New tokens for a refresh token (Keycloak rotates the refresh token)",
        "requestBody": _body("RefreshToken"),
        "responses": {"200": _answer("refreshed", "TokenBody", "Cache-Control"),
                      **_edm_failures(refused={400: [e.PayloadUnknown], 401: [e.InvalidRefreshToken],
                                               403: [e.AccountDisabled]})},
    }
    yield "/api/logout", "post", {
        "tags": ["EDM"], "summary": "End the Keycloak session of a refresh token (idempotent)",
        "requestBody": _body("RefreshToken"),
        "responses": {"200": _answer("logged out (also when already)", "MessageBody"),
                      **_edm_failures(refused={400: [e.PayloadUnknown], 401: [e.InvalidRefreshToken]})},
    }
    yield "/api/me", "get", {
        "tags": ["EDM"], "summary": "Who the access token belongs to, checked locally",
        "security": [{"bearer": []}],
        "responses": {"200": _answer("the token's user", "MeBody", "Cache-Control"),
                      **_edm_failures(body=False, refused={401: [e.MissingAccessToken, e.InvalidAccessToken]})},
    }
    yield "/api/sessions", "get", {
        "tags": ["EDM"], "summary": "The user's Keycloak sessions (Keycloak's Account API, with the user's own token)",
        "security": [{"bearer": []}],
        "responses": {"200": _answer("the sessions, the access token's own `current`", "SessionsBody",
                                     "Cache-Control"),
                      **_edm_failures(body=False, refused={401: [e.MissingAccessToken, e.InvalidAccessToken]})},
    }
    yield "/api/sessions/{id}", "delete", {
        "tags": ["EDM"], "summary": "End one of the user's Keycloak sessions, at Keycloak and on every gateway",
        "parameters": [SESSION_ID], "security": [{"bearer": []}],
        "responses": {"200": _answer("ended", "MessageBody", "Cache-Control"),
                      **_edm_failures(body=False, refused={401: [e.MissingAccessToken, e.InvalidAccessToken],
                                                           404: [e.SessionNotFound]})},
    }
    yield "/backchannel-logout", "post", {
        "tags": ["Session integrity"], "summary": "OpenID Connect Back-Channel Logout 1.0: Keycloak says a session "
                                                  "ended; it ends on every gateway",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {
            "schema": {"$ref": "#/components/schemas/LogoutToken"}}}},
        "responses": {"200": {"description": "the session ended (an empty body)", "headers": _headers("Cache-Control")},
                      "400": _answer("a logout token that fails a check, or none: nothing ends", "BackchannelError",
                                     "Cache-Control"),
                      **_unlimited(_edm_failures())},
    }
    if settings.simplejwt_profile:
        yield "/users/login/", "post", {
            "tags": ["SimpleJWT"], "summary": "SimpleJWT's token pair for username and password",
            "requestBody": _body("TokenObtain"),
            "responses": {"200": _answer("logged in", "DrfLoginPair", "Cache-Control"),
                          **_drf_failures("DrfDetail")},
        }
        yield "/users/refresh/", "post", {
            "tags": ["SimpleJWT"], "summary": "A new access token and the rotated refresh token",
            "requestBody": _body("TokenRefresh"),
            "responses": {"200": _answer("refreshed", "DrfRefreshPair", "Cache-Control"),
                          **_drf_failures({"oneOf": [{"$ref": "#/components/schemas/DrfTokenError"},
                                                     {"$ref": "#/components/schemas/DrfDetail"}]})},
        }
        yield "/users/verify/", "post", {
            "tags": ["SimpleJWT"], "summary": "Whether a token of this client (access or refresh) is valid",
            "requestBody": _body("TokenVerify"),
            "responses": {"200": _answer("valid", "DrfVerified", "Cache-Control"),
                          **_drf_failures("DrfTokenError")},
        }
    if settings.tester_page:
        not_found = _answer("no such file", _edm((404, "not found")))
        yield "/", "get", {
            "tags": ["Tester page"], "summary": "The tester page (GATEWAY_TESTER_PAGE)",
            "responses": {"200": _answer("the page", {"type": "string"}, media_type="text/html"),
                          **_edm_failures(upstream=False, body=False)},
        }
        yield "/static/{file}", "get", {
            "tags": ["Tester page"], "summary": "The tester page's stylesheet and script",
            "parameters": [{"name": "file", "in": "path", "required": True,
                            "schema": {"type": "string", "enum": ["tester.css", "tester.js"]}}],
            "responses": {"200": {"description": "the file", "headers": _headers(), "content": {
                              "text/css": {"schema": {"type": "string"}},
                              "text/javascript": {"schema": {"type": "string"}}}},
                          "404": not_found, **_edm_failures(upstream=False, body=False)},
        }
    if settings.bff:
        yield from _bff_operations()
    yield "/healthz", "get", {
        "tags": ["Operations"], "summary": "Liveness: 200 while the process serves",
        "responses": {"200": _answer("serving", "MessageBody"), **_edm_failures(upstream=False, body=False)},
    }
    yield "/readyz", "get", {
        "tags": ["Operations"], "summary": "Readiness: Keycloak's realm metadata and keys reachable (kept 5 s)",
        "responses": {"200": _answer("ready", "MessageBody"),
                      "503": _answer("not ready; the message names what failed", _edm(
                          (503, "keycloak unavailable"), (503, "redis unavailable"),
                          (503, "redis, keycloak unavailable"))),
                      **_edm_failures(upstream=False, body=False)},
    }
    yield "/metrics", "get", {
        "tags": ["Operations"], "summary": "Prometheus text, summed over the worker processes",
        "responses": {"200": _answer("the series", {"type": "string"}, media_type="text/plain"),
                      **_edm_failures(upstream=False, body=False)},
    }
    yield "/openapi.json", "get", {
        "tags": ["Operations"], "summary": "This document",
        "responses": {"200": _answer("the document", {"type": "object"}),
                      **_edm_failures(upstream=False, body=False)},
    }


def build_document(settings):
    """The document for an app with these settings (only the profiles it serves), as a dict."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="EDM auth gateway", version=version(), openapi_version="3.1.0", plugins=[plugin],
        info={"description": "A Backend-for-Frontend in front of the Keycloak realm `edm`. Every EDM error is a "
                             "JSON string such as `\"code=404, message=username not found\"`; on POST /api/login "
                             "every failure caused by the request answers HTTP 400 with the meaning in `code`."},
    )
    plugin.converter.map_to_openapi_type(DrfCharField, ["string", "number"], None)  # DRF takes numbers as text
    for name, schema in (("Login", LoginSchema), ("RefreshToken", RefreshTokenSchema), ("TokenBody", TokenBody),
                         ("MessageBody", MessageBody), ("MeBody", MeBody), ("TokenObtain", TokenObtainSchema),
                         ("TokenRefresh", TokenRefreshSchema), ("TokenVerify", TokenVerifySchema),
                         ("DrfLoginPair", DrfLoginPair), ("DrfRefreshPair", DrfRefreshPair),
                         ("DrfVerified", DrfVerified), ("DrfDetail", DrfDetail), ("DrfTokenError", DrfTokenError),
                         ("SessionsBody", SessionsBody), ("LogoutToken", LogoutTokenSchema),
                         ("BackchannelError", BackchannelError),
                         *((("BffUserBody", BffUserBody),) if settings.bff else ())):
        spec.components.schema(name, schema=schema)
    spec.components.schema("DrfFieldErrors", DRF_FIELD_ERRORS)
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    if settings.bff:
        spec.components.security_scheme("bffSession", {"type": "apiKey", "in": "cookie", "name": "__Host-edm-session"})
    for name, header in HEADERS.items():
        spec.components.header(name, header)
    for path, method, operation in _operations(settings):
        spec.path(path=path, operations={method: operation})
    return spec.to_dict()
