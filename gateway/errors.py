"""Every error the gateway answers with, and the one place that shapes them.

    GatewayError                       500 internal server error
    ├── RequestError                   caused by the request (HTTP 400 on POST /api/login)
    │   ├── PayloadUnknown             400 payload is unknown
    │   │   ├── FieldErrors            (its `fields`: DRF's per-field messages)
    │   │   ├── MalformedBody          (its `detail`: DRF's parse error)
    │   │   └── UnsupportedMediaType   (its `media_type`)
    │   ├── InvalidCredentials         400 invalid username or password (no look-up made)
    │   ├── UsernameNotFound           404 username not found
    │   ├── WrongPassword              400 wrong password
    │   ├── AccountLocked              403 account temporarily locked
    │   ├── AccountDisabled            403 account disabled
    │   ├── AccountNotSetUp            403 account is not fully set up
    │   ├── InvalidRefreshToken        401 refresh token is invalid or expired
    │   │   ├── ExpiredRefreshToken
    │   │   ├── WrongTokenType         (an access token where a refresh token belongs)
    │   │   └── RefreshReused          (spent before, presented after the grace: its session is ended)
    │   ├── MissingAccessToken         401 missing access token
    │   ├── InvalidAccessToken         401 access token is invalid or expired
    │   │   └── ExpiredAccessToken
    │   ├── InvalidReturnUrl           400 invalid return url (BFF: /bff/login)
    │   ├── LoginFailed                400 login failed (BFF: /bff/callback)
    │   │   └── InvalidIdToken         (the ID token failed a check: nonce, iss, aud, at_hash...)
    │   ├── MissingCsrfHeader          403 missing csrf header (BFF: every /bff/ request but login and callback)
    │   ├── NotLoggedIn                401 not logged in (BFF: no session, or an ended one)
    │   │   └── SessionEnded           (Keycloak no longer refreshes the session's tokens)
    │   ├── InvalidSessionId           400 invalid session id (BFF: /bff/logout?sid=)
    │   ├── UnknownUpstream            404 unknown upstream (BFF: a name not in GATEWAY_BFF_UPSTREAMS)
    │   ├── InvalidUpstreamPath        400 invalid upstream path (BFF: a path that would leave the upstream)
    │   ├── BodyNotAllowed             400 body not allowed (BFF: a GET or HEAD with a body)
    │   ├── InvalidLogoutToken         400 invalid_request (back-channel logout: OpenID's JSON object)
    │   └── SessionNotFound            404 session not found (a session id that is not one of the user's)
    ├── TooManyAttempts                429 too many login attempts (its `retry_after`, also sent as Retry-After)
    ├── LoginQueueTimeout              504 authentication service timed out (the username's turn did not come)
    ├── NotReady                       503 keycloak unavailable (/readyz: names what failed)
    ├── UpstreamError                  Keycloak could not answer usefully
    │   ├── UpstreamUnavailable        503 authentication service unavailable
    │   │   └── StoreUnavailable       (Redis, or the host's BFF session file, could not be used)
    │   ├── UpstreamTimeout            504 authentication service timed out
    │   └── UpstreamBadResponse        502 authentication service error
    └── ApiUpstreamError               an upstream API of the BFF proxy could not answer usefully
        ├── ApiUnavailable             503 upstream service unavailable
        ├── ApiTimeout                 504 upstream service timed out
        └── ApiBadResponse             502 upstream service error

Subclasses set class attributes; the three payload errors also carry what DRF's body needs. An EDM error
body is a JSON string, `"code=404, message=not found"`. A profile with words of its own registers a `Profile` for
its paths (`register_profile`): the SimpleJWT profile renders every error under `/users/` as Django REST Framework
and SimpleJWT word them (`gateway/simplejwt.py`), so this module imports no profile.
"""

import logging
from urllib.parse import urlsplit

from flask import current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from gateway.observe import record_outcome

log = logging.getLogger(__name__)

# Endpoints whose request-caused failures answer HTTP 400 with the precise meaning in `code` (the seed's contract).
STATUS_400_ENDPOINTS = frozenset({"api.login"})
# The password logins: the SimpleJWT profile and enumeration-safe mode word all their account failures alike.
LOGIN_ENDPOINTS = frozenset({"api.login", "simplejwt.login"})


class GatewayError(Exception):
    """Root of the gateway's errors: `code` and `message` make the documented body; `outcome` names the answer in
    the metrics and the audit log."""

    code = 500
    message = "internal server error"
    outcome = "internal_error"
    headers = {}

    def __init__(self, reason=None):
        # `reason` is what really happened (Keycloak's words); it goes to logs, never into a response.
        super().__init__(reason or self.message)
        self.reason = reason or self.message


class RequestError(GatewayError):
    """A failure caused by what the client sent: payload, credentials, tokens or account state."""


class PayloadUnknown(RequestError):
    code, message = 400, "payload is unknown"
    outcome = "payload_unknown"


class FieldErrors(PayloadUnknown):
    """DRF's field errors, e.g. `{"username": ["This field is required."]}`."""

    def __init__(self, fields):
        super().__init__(f"invalid fields: {', '.join(fields)}")
        self.fields = fields


class MalformedBody(PayloadUnknown):
    """A body that does not parse as its media type; `detail` is DRF's, e.g. "JSON parse error - ..."."""

    def __init__(self, detail):
        super().__init__("malformed body")
        self.detail = detail


class UnsupportedMediaType(PayloadUnknown):
    """A body of a media type the endpoint does not read."""

    def __init__(self, media_type):
        super().__init__("unsupported media type")
        self.media_type = media_type


class InvalidCredentials(RequestError):
    code, message = 400, "invalid username or password"
    outcome = "invalid_credentials"


class UsernameNotFound(RequestError):
    code, message = 404, "username not found"
    outcome = "username_not_found"


class WrongPassword(RequestError):
    code, message = 400, "wrong password"
    outcome = "wrong_password"


class AccountLocked(RequestError):
    code, message = 403, "account temporarily locked"
    outcome = "account_locked"


class AccountDisabled(RequestError):
    code, message = 403, "account disabled"
    outcome = "account_disabled"


class AccountNotSetUp(RequestError):
    code, message = 403, "account is not fully set up"
    outcome = "account_not_set_up"


class InvalidRefreshToken(RequestError):
    code, message = 401, "refresh token is invalid or expired"
    outcome = "invalid_refresh_token"


class ExpiredRefreshToken(InvalidRefreshToken):
    pass


class WrongTokenType(InvalidRefreshToken):
    pass


class RefreshReused(InvalidRefreshToken):
    outcome = "refresh_reused"


class MissingAccessToken(RequestError):
    code, message = 401, "missing access token"
    outcome = "missing_access_token"
    headers = {"WWW-Authenticate": 'Bearer realm="edm"'}


class InvalidAccessToken(RequestError):
    code, message = 401, "access token is invalid or expired"
    outcome = "invalid_access_token"
    headers = {
        "WWW-Authenticate": 'Bearer realm="edm", error="invalid_token", '
        'error_description="The access token is invalid or expired"'
    }


class ExpiredAccessToken(InvalidAccessToken):
    pass


class TooManyAttempts(GatewayError):
    """A rate limit refused the attempt, or too many logins already wait for the username's turn; the attempt
    never reached Keycloak. `retry_after` is how many seconds until an attempt may get through."""

    code, message = 429, "too many login attempts"
    outcome = "rate_limited"

    def __init__(self, reason=None, retry_after=1):
        super().__init__(reason)
        self.retry_after = max(1, int(retry_after))
        self.headers = {"Retry-After": str(self.retry_after)}


class InvalidReturnUrl(RequestError):
    code, message = 400, "invalid return url"
    outcome = "invalid_return_url"


class LoginFailed(RequestError):
    """The login came back unusable: no, an unknown, a reused or another browser's `state`, an `error` from
    Keycloak, or a code Keycloak would not exchange."""

    code, message = 400, "login failed"
    outcome = "login_failed"


class InvalidIdToken(LoginFailed):
    outcome = "invalid_id_token"


class MissingCsrfHeader(RequestError):
    code, message = 403, "missing csrf header"
    outcome = "missing_csrf_header"


class NotLoggedIn(RequestError):
    code, message = 401, "not logged in"
    outcome = "not_logged_in"


class SessionEnded(NotLoggedIn):
    """The session's refresh token stopped working (logged out elsewhere, idle or too old, user disabled): the
    gateway's session is deleted too."""

    outcome = "session_ended"


class InvalidSessionId(RequestError):
    code, message = 400, "invalid session id"
    outcome = "invalid_session_id"


class UnknownUpstream(RequestError):
    code, message = 404, "unknown upstream"
    outcome = "unknown_upstream"


class InvalidUpstreamPath(RequestError):
    code, message = 400, "invalid upstream path"
    outcome = "invalid_upstream_path"


class BodyNotAllowed(RequestError):
    """A GET or HEAD to the proxy with a body: an upstream that leaves it unread would take it for the next request
    on the connection, which the pool shares between users."""

    code, message = 400, "body not allowed"
    outcome = "body_not_allowed"


class InvalidLogoutToken(RequestError):
    """A back-channel logout without a logout token that passes every check (`gateway/backchannel.py` renders it
    as Back-Channel Logout 1.0 says)."""

    code, message = 400, "invalid logout token"
    outcome = "invalid_logout_token"


class SessionNotFound(RequestError):
    code, message = 404, "session not found"
    outcome = "session_not_found"


class LoginQueueTimeout(GatewayError):
    """Another login of the same username held its turn for longer than KEYCLOAK_TIMEOUT: a wait in the gateway,
    not in Keycloak, though the answer is the documented timeout."""

    code, message = 504, "authentication service timed out"
    outcome = "login_queue_timeout"


class NotReady(GatewayError):
    """`/readyz`: a service the gateway needs does not answer; the message names which."""

    code = 503
    outcome = "not_ready"

    def __init__(self, services):
        super().__init__(f"not ready: {', '.join(services)}")
        self.message = f"{', '.join(services)} unavailable"


class UpstreamError(GatewayError):
    """Keycloak could not be used: not reached, too slow, or an answer the gateway cannot use."""


class UpstreamUnavailable(UpstreamError):
    code, message = 503, "authentication service unavailable"
    outcome = "upstream_unavailable"


class StoreUnavailable(UpstreamUnavailable):
    """Redis could not be used: rate limits and the one-grant-per-username rule cannot be kept, so nobody logs in."""

    outcome = "store_unavailable"


class UpstreamTimeout(UpstreamError):
    code, message = 504, "authentication service timed out"
    outcome = "upstream_timeout"


class UpstreamBadResponse(UpstreamError):
    code, message = 502, "authentication service error"
    outcome = "upstream_error"


class ApiUpstreamError(GatewayError):
    """An upstream API behind `/bff/api/` could not answer usefully (as for Keycloak, in its own words)."""


class ApiUnavailable(ApiUpstreamError):
    code, message = 503, "upstream service unavailable"
    outcome = "api_unavailable"


class ApiTimeout(ApiUpstreamError):
    code, message = 504, "upstream service timed out"
    outcome = "api_timeout"


class ApiBadResponse(ApiUpstreamError):
    code, message = 502, "upstream service error"
    outcome = "api_error"


def edm_body(code, message):
    """The EDM error body: a JSON string such as `"code=404, message=not found"`."""
    return f"code={code}, message={message}"


ACCOUNT_ERRORS = (InvalidCredentials, UsernameNotFound, WrongPassword, AccountLocked, AccountDisabled, AccountNotSetUp)


class Profile:
    """How the errors of a profile other than the EDM one read: a profile registers one with `register_profile`
    for the paths under its prefix, so this module renders every error and knows no profile."""

    prefix = ""
    hides_account_state = False  # one answer for every credential and account-state failure of a login

    def gateway_error(self, error):
        raise NotImplementedError

    def http_error(self, error, headers):
        raise NotImplementedError

    def internal_error(self):
        raise NotImplementedError


def register_profile(app, profile):
    """Render the errors of every path under `profile.prefix` as `profile` says."""
    app.extensions.setdefault("error_profiles", []).append(profile)


def _profile():
    return next((profile for profile in current_app.extensions.get("error_profiles", ())
                 if request.path.startswith(profile.prefix)), None)


def json_answer(body, status, headers=None):
    """A JSON answer with this status and these headers (the body's key order kept)."""
    response = current_app.json.response(body)
    response.status_code = status
    response.headers.update(headers or {})
    return response


def mapped(error, table, default=None):
    """The value `table` gives the error's class or the nearest of its ancestors (a subclass is never a 500)."""
    return next((table[cls] for cls in type(error).__mro__ if cls in table), default)


def _edm_error(error):
    status = error.code
    if isinstance(error, RequestError) and request.endpoint in STATUS_400_ENDPOINTS:
        status = 400
    return json_answer(edm_body(error.code, error.message), status, error.headers)


def answered(error, profile=None):
    """The error an answer tells, whose `outcome` the metrics and the audit log count: where a profile or
    enumeration-safe mode words every credential and account-state failure of a login alike, InvalidCredentials,
    the real cause kept in its `reason` (the audit log's, never a metric's)."""
    if not isinstance(error, ACCOUNT_ERRORS) or request.endpoint not in LOGIN_ENDPOINTS:
        return error
    if (profile is not None and profile.hides_account_state) or current_app.config["SETTINGS"].hide_account_state:
        return InvalidCredentials(error.reason)
    return error


def handle_gateway_error(error):
    """Render a GatewayError in the shape of the profile the request belongs to, and record the outcome it tells."""
    profile = _profile()
    shown = answered(error, profile)
    record_outcome(shown.outcome, error.reason)
    if isinstance(error, (UpstreamError, ApiUpstreamError)):
        log.warning("upstream failure on %s: %s", request.path, error.reason)
    elif isinstance(error, LoginQueueTimeout):
        log.warning("login queue timeout on %s: %s", request.path, error.reason)
    return profile.gateway_error(shown) if profile is not None else _edm_error(shown)


METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
HTTP_MESSAGES = {404: "not found", 405: "method not allowed", 413: "payload too large"}
HTTP_OUTCOMES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def handle_http_error(error):
    """Render werkzeug's HTTP errors (404, 405, 413...); 405 keeps its `Allow` header."""
    record_outcome(HTTP_OUTCOMES.get(error.code, f"http_{error.code}"), error.name)
    allowed = getattr(error, "valid_methods", None) or ()
    headers = {"Allow": ", ".join(sorted(allowed, key=METHOD_ORDER.index))} if allowed else {}
    profile = _profile()
    if profile is not None:
        return profile.http_error(error, headers)
    message = HTTP_MESSAGES.get(error.code, (error.name or "error").lower())
    return json_answer(edm_body(error.code, message), error.code, headers)


def handle_unexpected_error(error):
    """Log an unexpected failure with its trace and answer the bare 500 of the profile."""
    if isinstance(error, HTTPException):
        return handle_http_error(error)
    record_outcome(GatewayError.outcome, f"{type(error).__name__}: {error}")
    log.exception("unexpected failure on %s %s", request.method, request.path)
    profile = _profile()
    if profile is not None:
        return profile.internal_error()
    return json_answer(edm_body(500, "internal server error"), 500)


def relative_redirect():
    """werkzeug's routing redirects (slashes merged, a trailing slash added) as a bare redirect to the path alone: the
    URL werkzeug writes names whatever host the client sent (`Host: evil.example`)."""
    redirect = request.routing_exception
    if not isinstance(redirect, RequestRedirect):
        return None
    parts = urlsplit(redirect.new_url)
    # One leading slash: `//host` or `/\\host` would be another host to a browser.
    location = "/" + parts.path.lstrip("/\\") + (f"?{parts.query}" if parts.query else "")
    response = current_app.response_class(status=redirect.code, headers={"Location": location})
    del response.headers["Content-Type"]
    return response


def register_error_handlers(app):
    """Install the handlers once; every error of every endpoint goes through them."""
    # Flask passes routing redirects to no error handler: they are caught before the view instead.
    app.before_request(relative_redirect)
    app.register_error_handler(GatewayError, handle_gateway_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
