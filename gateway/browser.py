"""What browsers need from every answer: CORS for the origins of `GATEWAY_CORS_ORIGINS`, and hardening headers.

CORS is this module's own, not Flask-CORS: the contract is one set of exact origins, one list of methods and one
of request headers, a few lines. Flask-CORS (6.0) compares origins case-insensitively, takes an origin string
holding regex characters as a regular expression, by default lists every configured origin on answers to
requests without `Origin`, needed security fixes in its path matching (CVE-2024-6839, CVE-2024-6844,
CVE-2024-6866) and its defaults (CVE-2024-6221), and leaves a preflight to a path without a route to Flask's 404,
so a portal would see a bare network error where the gateway documents an answer.

- An allowed `Origin` is echoed in `Access-Control-Allow-Origin` on every answer, errors included (the hook runs
  after the error handlers); any other origin gets no CORS header at all, so its browser withholds the answer.
- `Vary: Origin` goes on every answer once any origin is allowed, so a shared cache never serves one origin's
  answer to another.
- A preflight (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is answered here, 204, for
  any path, so that the real request then gets the gateway's own documented answer (404 and 405 included).
  Preflights from other origins fall through to Flask (its automatic `OPTIONS` answer or a 404), without CORS.
- Never `Access-Control-Allow-Credentials`: tokens travel in bodies and the `Authorization` header, not cookies.
- Nothing for `/bff/` (BFF mode): it serves the gateway's own origin only, as RFC 10017 recommends; a portal that
  uses it is served from that origin (or behind the same reverse proxy), so no cross-origin call is ever needed.
- Every answer: `X-Content-Type-Options: nosniff`; every error (4xx, 5xx): `Cache-Control: no-store`.
"""

from flask import current_app, request

ALLOW_METHODS = "GET, POST, DELETE"  # DELETE: /api/sessions/<id>
ALLOW_HEADERS = "Content-Type, Authorization, X-Request-ID, X-CSRF"
# What the portal's script must read beyond the CORS-safelisted headers (Cache-Control, Content-Type...).
EXPOSE_HEADERS = "Retry-After, WWW-Authenticate, X-Request-ID"
PREFLIGHT_MAX_AGE = "600"


def _allowed_origin():
    """The request's `Origin` if it is one of the configured origins, else None; never for `/bff/`, which is
    same-origin by design (its cookie would need credentialed CORS, and its CSRF defence rests on the preflight
    that a cross-origin `X-CSRF` header needs and never gets)."""
    if request.path.startswith("/bff/"):
        return None
    origin = request.headers.get("Origin")
    return origin if origin in current_app.config["SETTINGS"].cors_origins else None


def _is_preflight():
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def answer_preflight():
    """Answer a CORS preflight of an allowed origin before routing; the headers come in `add_headers`."""
    if not (_is_preflight() and _allowed_origin()):
        return None
    response = current_app.response_class(status=204)
    del response.headers["Content-Type"]  # no body, so no type
    return response


def add_headers(response):
    """CORS for allowed origins and the hardening headers, on every answer the app gives."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    if response.status_code >= 400:
        response.headers["Cache-Control"] = "no-store"
    if not current_app.config["SETTINGS"].cors_origins:
        return response
    response.vary.add("Origin")
    origin = _allowed_origin()
    if origin is None:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    if _is_preflight():
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
    else:
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response


def register_browser_headers(app):
    """Install the preflight answer and the header hook once, for every blueprint."""
    app.before_request(answer_preflight)
    app.after_request(add_headers)
