"""Every error the gateway answers with, and the one place that shapes them.

    GatewayError                       500 internal server error
    ├── RequestError                   caused by the request (HTTP 400 on POST /api/login)
    │   ├── PayloadUnknown             400 payload is unknown
    │   ├── UsernameNotFound           404 username not found
    │   ├── WrongPassword              400 wrong password
    │   ├── AccountLocked              403 account temporarily locked
    │   ├── AccountDisabled            403 account disabled
    │   ├── AccountNotSetUp            403 account is not fully set up
    │   ├── InvalidRefreshToken        401 refresh token is invalid or expired
    │   ├── MissingAccessToken         401 missing access token
    │   └── InvalidAccessToken         401 access token is invalid or expired
    └── UpstreamError                  Keycloak could not answer usefully
        ├── UpstreamUnavailable        503 authentication service unavailable
        ├── UpstreamTimeout            504 authentication service timed out
        └── UpstreamBadResponse        502 authentication service error

Subclasses only set class attributes. An EDM error body is a JSON string, `"code=404, message=not found"`.
"""

import logging

from flask import current_app, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# Endpoints whose request-caused failures answer HTTP 400 with the precise meaning in `code` (the seed's contract).
STATUS_400_ENDPOINTS = frozenset({"api.login"})


class GatewayError(Exception):
    """Root of the gateway's errors: `code` and `message` make the documented body."""

    code = 500
    message = "internal server error"
    headers = {}

    def __init__(self, reason=None):
        # `reason` is what really happened (Keycloak's words); it goes to logs, never into a response.
        super().__init__(reason or self.message)
        self.reason = reason or self.message


class RequestError(GatewayError):
    """A failure caused by what the client sent: payload, credentials, tokens or account state."""


class PayloadUnknown(RequestError):
    code, message = 400, "payload is unknown"


class UsernameNotFound(RequestError):
    code, message = 404, "username not found"


class WrongPassword(RequestError):
    code, message = 400, "wrong password"


class AccountLocked(RequestError):
    code, message = 403, "account temporarily locked"


class AccountDisabled(RequestError):
    code, message = 403, "account disabled"


class AccountNotSetUp(RequestError):
    code, message = 403, "account is not fully set up"


class InvalidRefreshToken(RequestError):
    code, message = 401, "refresh token is invalid or expired"


class MissingAccessToken(RequestError):
    code, message = 401, "missing access token"
    headers = {"WWW-Authenticate": 'Bearer realm="edm"'}


class InvalidAccessToken(RequestError):
    code, message = 401, "access token is invalid or expired"
    headers = {
        "WWW-Authenticate": 'Bearer realm="edm", error="invalid_token", '
        'error_description="The access token is invalid or expired"'
    }


class UpstreamError(GatewayError):
    """Keycloak could not be used: not reached, too slow, or an answer the gateway cannot use."""


class UpstreamUnavailable(UpstreamError):
    code, message = 503, "authentication service unavailable"


class UpstreamTimeout(UpstreamError):
    code, message = 504, "authentication service timed out"


class UpstreamBadResponse(UpstreamError):
    code, message = 502, "authentication service error"


def edm_body(code, message):
    """The EDM error body: a JSON string such as `"code=404, message=not found"`."""
    return f"code={code}, message={message}"


def _json_response(body, status):
    return current_app.json.response(body), status


def handle_gateway_error(error):
    """Render a GatewayError in the EDM shape; on login, request-caused failures answer HTTP 400."""
    status = error.code
    if isinstance(error, RequestError) and request.endpoint in STATUS_400_ENDPOINTS:
        status = 400
    if isinstance(error, UpstreamError):
        log.warning("upstream failure on %s: %s", request.path, error.reason)
    response, status = _json_response(edm_body(error.code, error.message), status)
    response.headers.update(error.headers)
    return response, status


def handle_http_error(error):
    """Render werkzeug's HTTP errors (404, 405, 413...) as EDM strings; 405 keeps its `Allow` header."""
    message = {
        404: "not found",
        405: "method not allowed",
        413: "payload too large",
    }.get(error.code, (error.name or "error").lower())
    response, status = _json_response(edm_body(error.code, message), error.code)
    if error.code == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response, status


def handle_unexpected_error(error):
    """Log an unexpected failure with its trace and answer the bare 500 string."""
    if isinstance(error, HTTPException):
        return handle_http_error(error)
    log.exception("unexpected failure on %s %s", request.method, request.path)
    return _json_response(edm_body(500, "internal server error"), 500)


def register_error_handlers(app):
    """Install the handlers once; every error of every endpoint goes through them."""
    app.register_error_handler(GatewayError, handle_gateway_error)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
