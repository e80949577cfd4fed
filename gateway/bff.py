"""BFF mode (RFC 10017, `GATEWAY_BFF=true`): the browser logs in on Keycloak's own page (authorization code with
PKCE), the tokens stay in a server-side session (`gateway/sessions.py`), the browser holds one opaque cookie, and
its API calls go through the allowlisted proxy (`gateway/proxy.py`) with the access token added.

- `GET /bff/login?returnUrl=/path`: 302 to Keycloak's login page; `state`, `nonce` and the PKCE verifier are kept
  server-side under `state`, bound to this browser by the `__Host-edm-login` cookie (SameSite=Lax, so that it
  comes back on Keycloak's cross-site redirect to the callback).
- `GET /bff/callback`: the login of that `state`, if this browser started it (once), then the code exchange, the
  ID token's checks, a new session, its cookie, and 302 to `returnUrl`.
- `GET /bff/user`, `POST /bff/logout?sid=`, `/bff/api/<name>/<path>`: need `X-CSRF: 1`, a header that a page of
  another origin can only send after a CORS preflight, which the gateway never grants for `/bff/`
  (`gateway/browser.py`); the session cookie is SameSite=Strict besides.

The session cookie `__Host-edm-session` is HttpOnly, Secure, SameSite=Strict, Path=/, without Domain and without
an expiry (it goes with the browser session; the server decides how long the session lives). Its value is 256
random bits; the store knows only an HMAC of it.
"""

import re
import secrets
import time
from urllib.parse import quote, urlsplit

from flask import Blueprint, current_app, request
from werkzeug.routing import BaseConverter

from gateway import keycloak, observe, proxy
from gateway.api import json_response, user_of
from gateway.errors import (
    InvalidReturnUrl,
    InvalidSessionId,
    LoginFailed,
    MissingCsrfHeader,
    NotLoggedIn,
    handle_gateway_error,
)
from gateway.logs import register_secret
from gateway.sessions import LOGIN_SECONDS, Sessions, build_store
from gateway.tokens import same_text

bp = Blueprint("bff", __name__, url_prefix="/bff")

SESSION_COOKIE = "__Host-edm-session"
LOGIN_COOKIE = "__Host-edm-login"
UNGUARDED = frozenset({"bff.login", "bff.callback"})  # top-level navigations: no header can be added to them
RETURN_URL_LENGTH = 2048
_BINDING = re.compile(r"[A-Za-z0-9_-]{43}")  # a login cookie's value: 32 random bytes, base64url
_KEYCLOAK_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _Everything(BaseConverter):
    """The rest of the path, empty or with slashes of any number (the proxy checks it as sent)."""

    regex = ".*"
    part_isolating = False


def register(app, settings, shared_store):
    """Serve `/bff/`: sessions in the shared Redis store if there is one (`gateway.store`), else in the host's
    file; the upstreams; the blueprint."""
    register_secret(settings.session_secret)
    sessions = Sessions(build_store(settings, shared_store), settings.session_secret, settings.timeout)
    app.extensions["bff_sessions"] = sessions
    app.extensions["bff_upstreams"] = proxy.Upstreams(settings)
    app.url_map.converters["everything"] = _Everything
    app.register_blueprint(bp)


def sessions():
    return current_app.extensions["bff_sessions"]


@bp.before_request
def require_csrf_header():
    """Every `/bff/` request but the two navigations of a login carries `X-CSRF: 1`."""
    if request.endpoint not in UNGUARDED and request.headers.get("X-CSRF") != "1":
        raise MissingCsrfHeader("no X-CSRF: 1 header")


@bp.after_request
def session_headers(response):
    """Nothing of a session is cached."""
    if request.endpoint != "bff.api" or "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(NotLoggedIn)
def not_logged_in(error):
    """The gateway's own "not logged in": a cookie that names no session any more is expired. (An upstream's 401,
    passed on by the proxy, is the upstream's word on one call and leaves the session alone.)"""
    response = handle_gateway_error(error)
    if SESSION_COOKIE in request.cookies:
        expire_cookie(response, SESSION_COOKIE, "Strict")
    return response


def set_cookie(response, name, value, samesite, max_age=None):
    """A `__Host-` cookie: Secure, Path=/, no Domain; HttpOnly, out of every script's reach."""
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite=samesite)


def expire_cookie(response, name, samesite):
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite=samesite)


def redirect_to(location):
    """A bare 302: no body for a navigation to show."""
    response = current_app.response_class(status=302, headers={"Location": location})
    del response.headers["Content-Type"]
    return response


def local_path(return_url):
    """`returnUrl` if it is a path of this gateway (one leading `/`, no scheme or host); InvalidReturnUrl otherwise."""
    if return_url is None:
        return "/"
    # Browsers drop tabs and newlines from URLs and read `\` as `/`, so `/\t/evil.example` and `/\evil.example`
    # would lead elsewhere: anything but printable ASCII is refused.
    if (len(return_url) > RETURN_URL_LENGTH or not return_url.startswith("/") or return_url.startswith("//")
            or "\\" in return_url or not all("!" <= character <= "~" for character in return_url)):
        raise InvalidReturnUrl("returnUrl is not a local path")
    parts = urlsplit(return_url)
    if parts.scheme or parts.netloc:
        raise InvalidReturnUrl("returnUrl names a scheme or host")
    return return_url


def current_session():
    """The request's session, its access token refreshed if it is about to expire (NotLoggedIn without one)."""
    def heard(outcome, reason, claims):
        observe.identify(claims)
        observe.audit("bff refresh", outcome, reason)

    session = sessions().current(request.cookies.get(SESSION_COOKIE), keycloak.current().refresh, on_refresh=heard)
    observe.identify(session.claims)
    return session


@bp.get("/login")
def login():
    """Start a login on Keycloak's page: 302 there, with `state`, `nonce` and the PKCE challenge."""
    return_url = local_path(request.args.get("returnUrl"))
    binding = request.cookies.get(LOGIN_COOKIE, "")
    if not _BINDING.fullmatch(binding):  # a browser's logins in several tabs share one binding
        binding = secrets.token_urlsafe(32)
    state, nonce, challenge = sessions().begin_login(binding, return_url)
    response = redirect_to(keycloak.current().authorization_url(state, nonce, challenge))
    set_cookie(response, LOGIN_COOKIE, binding, "Lax", max_age=LOGIN_SECONDS)
    return response


@bp.get("/callback")
def callback():
    """Finish the login that `state` names: exchange the code, start the session, 302 to its `returnUrl`."""
    arguments = request.args
    started = sessions().finish_login(arguments.get("state"), request.cookies.get(LOGIN_COOKIE))
    if "error" in arguments:
        error = arguments["error"] if _KEYCLOAK_WORD.fullmatch(arguments["error"]) else "(unreadable)"
        raise LoginFailed(f"Keycloak answered error {error}: {arguments.get('error_description', '')[:200]}")
    if arguments.get("iss", keycloak.current().settings.issuer) != keycloak.current().settings.issuer:
        raise LoginFailed("the callback names another issuer")  # RFC 9207: a mix-up with another server
    if not arguments.get("code"):
        raise LoginFailed("callback without code")
    tokens = keycloak.current().exchange_code(arguments["code"], started.verifier, started.nonce)
    observe.identify(tokens.id_claims)
    cookie, _ = sessions().create(tokens, tokens.id_claims["sid"])
    response = redirect_to(started.return_url)
    set_cookie(response, SESSION_COOKIE, cookie, "Strict")
    expire_cookie(response, LOGIN_COOKIE, "Lax")
    return response


@bp.get("/user")
def user():
    """Who is logged in, as /api/me says it, with how long the session lasts and where to log out."""
    session = current_session()
    body = {"status": 200, "message": session.sub, "user": user_of(session.claims),
            "session": {"expiresIn": max(0, int(session.ends_at - time.time())),
                        "logoutUrl": f"/bff/logout?sid={quote(session.sid, safe='')}"}}
    return json_response(body)


@bp.post("/logout")
def logout():
    """End the Keycloak session and the gateway's, and expire the cookie; `sid` must name the session."""
    cookie = request.cookies.get(SESSION_COOKIE)
    session = sessions().find(cookie)
    observe.identify(session.claims)
    if not same_text(request.args.get("sid", ""), session.sid):
        raise InvalidSessionId("sid is not the session's")
    keycloak.current().end_session(session.refresh_token)
    sessions().end(cookie)
    response = current_app.json.response({"status": 200, "message": "logged out"})
    expire_cookie(response, SESSION_COOKIE, "Strict")
    return response


@bp.route("/api/<everything:target>", methods=proxy.METHODS, merge_slashes=False, provide_automatic_options=False)
def api(target):
    """Forward to the upstream named in the path, with the session's access token."""
    name, path, query = proxy.request_target()
    proxy.check_body()
    session = current_session()
    return proxy.current().forward(name, path, query, session.access_token)

