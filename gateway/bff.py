"""BFF mode (RFC 10017, `GATEWAY_BFF=true`): the browser logs in on Keycloak's own page (authorization code with
PKCE), the tokens stay in a server-side session (`gateway/sessions.py`), the browser holds one opaque cookie, and
its API calls go through the allowlisted proxy (`gateway/proxy.py`) with the access token added.

- `GET /bff/login?returnUrl=/path`: 302 to Keycloak's login page; `state`, `nonce` and the PKCE verifier are sealed
  into this browser's `__Host-edm-login` cookie (`gateway/logins.py`): nothing is stored for an anonymous request.
- `GET /bff/callback`: the login of that `state`, if this browser started it (once), then the code exchange, the
  ID token's checks, a new session (the browser's previous one ended), its cookie, and 302 to `returnUrl`.
- `GET /bff/sessions`, `DELETE /bff/sessions/<id>`: the user's Keycloak sessions, as `/api/sessions` lists and ends
  them, with the session's access token; ending the browser's own session is a logout of it.
- `GET /bff/user`, `POST /bff/logout?sid=`, `/bff/sessions`, `/bff/api/<name>/<path>`: need `X-CSRF: 1`, a header
  that a page of another origin can only send after a CORS preflight, which the gateway never grants for `/bff/`
  (`gateway/browser.py`); the session cookie is SameSite=Strict besides.

The session cookie `__Host-edm-session` is HttpOnly, Secure, SameSite=Strict, Path=/, without Domain and without
an expiry (it goes with the browser session; the server decides how long the session lives). Its value is 256
random bits; the store knows only an HMAC of it.
"""

import logging
import re
import time
from urllib.parse import quote, urlsplit

from flask import Blueprint, current_app, request
from werkzeug.routing import BaseConverter

from gateway import observe, proxy, services
from gateway.api import end_own_session, json_response, sessions_body, user_of
from gateway.errors import (
    InvalidAccessToken,
    InvalidReturnUrl,
    InvalidSessionId,
    LoginFailed,
    MissingCsrfHeader,
    NotLoggedIn,
    SessionEnded,
    UpstreamError,
    handle_gateway_error,
)
from gateway.logins import LOGIN_SECONDS, Logins, code_challenge
from gateway.logs import register_secret
from gateway.sessions import Sessions
from gateway.tokens import same_text

log = logging.getLogger(__name__)
bp = Blueprint("bff", __name__, url_prefix="/bff")

SESSION_COOKIE = "__Host-edm-session"
LOGIN_COOKIE = "__Host-edm-login"
UNGUARDED = frozenset({"bff.login", "bff.callback"})  # top-level navigations: no header can be added to them
RETURN_URL_LENGTH = 512  # a path of the portal; the login cookie carries it, for up to three tabs at once
_KEYCLOAK_WORD = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _Everything(BaseConverter):
    """The rest of the path, empty or with slashes of any number (the proxy checks it as sent)."""

    regex = ".*"
    part_isolating = False


def register(app, settings, store, ended):
    """Serve `/bff/`: sessions in the gateway's store (`gateway/store/`), ended with their Keycloak session
    (`ended`, gateway/revocations.py), logins in the browser's cookie, the upstreams, the blueprint."""
    register_secret(settings.session_secret)
    register_secret(settings.session_secret_previous)
    previous = (settings.session_secret_previous,) if settings.session_secret_previous else ()
    sessions = Sessions(store, settings.session_secret, settings.timeout, previous_secrets=previous,
                        ended=lambda session: ended.ended({"sid": session.sid, "sub": session.sub, **{
                            name: session.claims[name] for name in ("auth_time", "iat") if name in session.claims}}))
    ended.listeners.append(sessions.end_sid)
    app.extensions["bff_sessions"] = sessions
    app.extensions["bff_logins"] = Logins(store, settings.session_secret, previous_secrets=previous)
    app.extensions["bff_upstreams"] = proxy.Upstreams(settings)
    app.url_map.converters["everything"] = _Everything
    app.register_blueprint(bp)


def sessions():
    return current_app.extensions["bff_sessions"]


def logins():
    return current_app.extensions["bff_logins"]


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
    def heard(outcome, reason, session):
        observe.identify(session.claims)
        observe.audit("bff refresh", outcome, reason)
        if outcome == SessionEnded.outcome:  # Keycloak ended it (or disabled its user): so does every gateway
            services.current().ended.end_sid(session.sid, f"its refresh refused: {reason}")

    session = sessions().current(request.cookies.get(SESSION_COOKIE), services.current().grants.refresh,
                                 on_refresh=heard)
    observe.identify(session.claims)
    return session


@bp.get("/login")
def login():
    """Start a login on Keycloak's page: 302 there, with `state`, `nonce` and the PKCE challenge."""
    return_url = local_path(request.args.get("returnUrl"))
    cookie, started = logins().begin(request.cookies.get(LOGIN_COOKIE), return_url)
    response = redirect_to(services.current().keycloak.authorization_url(started.state, started.nonce,
                                                                code_challenge(started.verifier)))
    set_cookie(response, LOGIN_COOKIE, cookie, "Lax", max_age=LOGIN_SECONDS)
    return response


@bp.get("/callback")
def callback():
    """Finish the login that `state` names: exchange the code, start the session, 302 to its `returnUrl`."""
    arguments = request.args
    login_cookie, started = logins().finish(request.cookies.get(LOGIN_COOKIE), arguments.get("state"))
    if "error" in arguments:
        error = arguments["error"] if _KEYCLOAK_WORD.fullmatch(arguments["error"]) else "(unreadable)"
        raise LoginFailed(f"Keycloak answered error {error}: {arguments.get('error_description', '')[:200]}")
    # RFC 9207: Keycloak names itself in every callback (it advertises authorization_response_iss_parameter_
    # supported), so a callback without `iss`, or with another, may come from a mix-up with another server.
    if not same_text(arguments.get("iss", ""), services.current().settings.issuer):
        raise LoginFailed("the callback names no issuer, or another")
    if not arguments.get("code"):
        raise LoginFailed("callback without code")
    tokens = services.current().grants.code(arguments["code"], started.verifier, started.nonce)
    observe.identify(tokens.id_claims)
    end_previous_session(tokens.id_claims["sid"])
    cookie, _ = sessions().create(tokens, tokens.id_claims["sid"])
    response = redirect_to(started.return_url)
    set_cookie(response, SESSION_COOKIE, cookie, "Strict")
    if login_cookie:  # other tabs' logins still under way
        set_cookie(response, LOGIN_COOKIE, login_cookie, "Lax", max_age=LOGIN_SECONDS)
    else:
        expire_cookie(response, LOGIN_COOKIE, "Lax")
    return response


def end_previous_session(new_sid):
    """A new login in this browser ends the session its cookie names, at Keycloak too unless the new login is of
    the same Keycloak session (Keycloak's own cookie logged the user in again without a password)."""
    previous = sessions().end(request.cookies.get(SESSION_COOKIE))
    if previous is not None and previous.sid != new_sid:
        services.current().ended.end_sid(previous.sid, "a new login in the same browser")
        tell_keycloak_session_ended(previous)


def tell_keycloak_session_ended(session):
    """End the Keycloak session of a session the gateway has ended already; Keycloak's failure is logged, and
    counted with the logout call's metrics, never turned into a failure of the logout."""
    try:
        services.current().keycloak.end_session(session.refresh_token)
    except UpstreamError as exc:
        log.warning("the gateway's session ended, Keycloak's could not be ended now: %s", exc.reason)
        observe.note("keycloak session not ended: " + exc.reason)


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
    sessions().end(cookie)  # first, whatever Keycloak says next: a logout never fails open
    services.current().ended.end_sid(session.sid, "logged out through /bff/logout")  # its tokens, everywhere
    tell_keycloak_session_ended(session)
    response = current_app.json.response({"status": 200, "message": "logged out"})
    expire_cookie(response, SESSION_COOKIE, "Strict")
    return response


def with_access_token(session, work):
    """`work(access token)` for the session; an access token that Keycloak refuses means that its session is over
    there, so the gateway's ends too (401 not logged in)."""
    try:
        return work(session.access_token)
    except InvalidAccessToken as exc:
        sessions().end(request.cookies.get(SESSION_COOKIE))
        raise SessionEnded(f"Keycloak refused the session's access token: {exc.reason}") from None


@bp.get("/sessions")
def sessions_list():
    """The user's Keycloak sessions, as /api/sessions lists them, the browser's own marked `current`."""
    session = current_session()
    listed = with_access_token(session, services.current().keycloak.sessions)
    return json_response(sessions_body(session.sub, session.sid, listed))


@bp.delete("/sessions/<session_id>")
def end_session(session_id):
    """End one of the user's Keycloak sessions, as /api/sessions does; the browser's own is a logout of it."""
    session = current_session()
    with_access_token(session, lambda access_token: end_own_session(access_token, session_id))
    response = current_app.json.response({"status": 200, "message": "session ended"})
    if same_text(session_id, session.sid):
        expire_cookie(response, SESSION_COOKIE, "Strict")
    return response


@bp.route("/api/<everything:target>", methods=proxy.METHODS, merge_slashes=False, provide_automatic_options=False)
def api(target):
    """Forward to the upstream named in the path, with the session's access token."""
    name, path, query = proxy.request_target()
    proxy.check_body()
    session = current_session()
    return proxy.current().forward(name, path, query, session.access_token)

