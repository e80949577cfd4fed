"""Every call to Keycloak, and the only module that imports `keycloak` or `requests`.

The realm's OpenID endpoints (token, logout, introspection, keys, metadata) and the Account REST API (the user's
sessions) are called through one pooled requests `HTTPAdapter`, shared by the threads of a worker: the token
endpoint is the hot path of every login and refresh, and a `requests.Session` or python-keycloak around it cost
twice the CPU of the call itself (measured: 0.74 ms per refresh through python-keycloak, 0.30 ms through the
adapter). python-keycloak stays for what it does well, the admin API with its service-account token (the look-ups
after a failed login).

It returns plain values and raises the gateway's own errors (`gateway.errors`): `_upstream()` translates
exceptions by type, and Keycloak's JSON refusals through a table per operation. Anything it cannot place is a
bad upstream answer (502), never a 500.

Calls made for a client's request (the grants, logout, the Account API) carry the client's address as the gateway
trusts it (`X-Forwarded-For`, after the GATEWAY_TRUSTED_PROXIES rule) and its `User-Agent`, so that Keycloak's
session list and brute-force records show the user, not the gateway. Keycloak takes them from trusted addresses
only (`--proxy-trusted-addresses`); with the realm's `sslRequired: external`, a public client address over plain
http is refused ("HTTPS required": a 502 here), so production calls Keycloak over https.
"""

import ipaddress
import json
import logging
import os
import re
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, replace
from urllib.parse import quote, urlencode, urlsplit

import requests
from flask import current_app, has_request_context, request
from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakConnectionError, KeycloakError
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util import SKIP_HEADER

from gateway import metrics, observe
from gateway.config import ConfigError
from gateway.errors import (
    AccountDisabled,
    AccountLocked,
    AccountNotSetUp,
    GatewayError,
    InvalidAccessToken,
    InvalidCredentials,
    InvalidIdToken,
    InvalidRefreshToken,
    LoginFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UsernameNotFound,
    WrongPassword,
)
from gateway.tokens import AccessTokens, IdTokens, LogoutTokens, RealmKeys
from gateway.userlock import SharedTurns, UsernameTurns

log = logging.getLogger(__name__)


def current():
    """The app's Keycloak, built once by `create_app`."""
    return current_app.extensions["keycloak"]


class _CredentialsRejected(GatewayError):
    """Keycloak's "Invalid user credentials": unknown user, wrong password or locked; a look-up decides."""


class _SessionEnded(GatewayError):
    """The session of a refresh token has already ended: for logout, the work is done."""


# (error, error_description) -> what it means; (error, None) matches any description of that error.
LOGIN_REFUSALS = {
    ("invalid_grant", "Invalid user credentials"): _CredentialsRejected,
    ("invalid_grant", "Account disabled"): AccountDisabled,
    ("invalid_grant", "User disabled"): AccountDisabled,
    ("invalid_grant", "Account temporarily disabled"): AccountLocked,
    ("invalid_grant", "Account is not fully set up"): AccountNotSetUp,
}
ACCOUNT_STATE_REFUSALS = (AccountDisabled, AccountLocked, AccountNotSetUp)
# Keycloak drops a form parameter longer than 4,000 characters: an overlong refresh token is "No refresh token".
REFRESH_REFUSALS = {
    ("invalid_grant", "Account disabled"): AccountDisabled,
    ("invalid_grant", "User disabled"): AccountDisabled,
    ("invalid_grant", None): InvalidRefreshToken,
    ("invalid_request", "No refresh token"): InvalidRefreshToken,
}
CODE_REFUSALS = {
    # the code expired, was used before, belongs to another redirect URI, or the PKCE verifier does not match
    ("invalid_grant", None): LoginFailed,
}
LOGOUT_REFUSALS = {
    ("invalid_grant", "Session not active"): _SessionEnded,
    ("invalid_grant", "Token is not active"): _SessionEnded,
    ("invalid_grant", None): InvalidRefreshToken,
    ("invalid_request", "No refresh token"): InvalidRefreshToken,
}
# The Account REST API words its refusals as statuses (`{"error": "HTTP 401 Unauthorized"}`): by status.
ACCOUNT_REFUSALS = {
    401: InvalidAccessToken,  # expired, or its session ended at Keycloak
}
# Keycloak's answer to a forwarded public client address over plain http (the realm's sslRequired: external).
HTTPS_REQUIRED = ("invalid_request", "HTTPS required")


@dataclass(frozen=True)
class Tokens:
    """A token response of Keycloak, its access token verified."""

    access_token: str
    refresh_token: str
    expires_in: int
    claims: dict
    refresh_expires_in: int = 0  # seconds until Keycloak's session ends unless refreshed (0: not said)
    id_claims: dict = None  # the verified ID token's claims (authorization code grant only)


def _refusal_of(content):
    """Keycloak's (error, error_description) from a refusal's JSON body, or (None, None)."""
    try:
        body = json.loads(content or b"")
    except (TypeError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    error, description = body.get("error"), body.get("error_description")
    return (error if isinstance(error, str) else None), (description if isinstance(description, str) else None)


# What a failed call's requests exception means, most specific first.
TRANSPORT_FAILURES = (
    (requests.Timeout, UpstreamTimeout),
    (requests.ConnectionError, UpstreamUnavailable),  # refused, reset, DNS, TLS handshake
    (requests.exceptions.ChunkedEncodingError, UpstreamUnavailable),  # the connection broke mid-answer
)


def _transport_failure(operation, exc):
    for failure, error in TRANSPORT_FAILURES:
        if isinstance(exc, failure):
            return error(f"{operation}: {type(exc).__name__}")
    return UpstreamBadResponse(f"{operation}: {type(exc).__name__}: {exc}")


# What an answer's status means when Keycloak's body names no refusal: a Keycloak that is starting (or a proxy in
# front of one that is down) answers 503, and a proxy whose Keycloak is too slow 504.
UNAVAILABLE_STATUSES = {502: UpstreamUnavailable, 503: UpstreamUnavailable, 504: UpstreamTimeout}


def _refused(operation, status, content, refusals):
    """The gateway's error for a refusal of Keycloak: its class in `refusals` (by error and description, by error, or
    by HTTP status), else by the status, else a bad answer."""
    error, description = _refusal_of(content)
    refusals = refusals or {}
    refusal = refusals.get((error, description)) or refusals.get((error, None)) or refusals.get(status)
    reason = f"{operation}: HTTP {status} {error or 'non-JSON body'}: {description or ''}".rstrip()
    if (error, description) == HTTPS_REQUIRED:
        reason += " (Keycloak refuses a public client address over plain http: call it over https)"
    return (refusal or UNAVAILABLE_STATUSES.get(status) or UpstreamBadResponse)(reason)


@contextmanager
def _upstream(operation, refusals=None):
    """One call to Keycloak: timed (metrics and the request's audit event), and what it raises translated into
    the gateway's errors, the most specific class."""
    started = time.perf_counter()
    result = "error"
    try:
        yield
        result = "ok"
    except GatewayError as exc:  # already translated; a refusal is an answer, not a failure of the call
        result = "error" if isinstance(exc, UpstreamError) else "refused"
        raise
    except requests.RequestException as exc:
        raise _transport_failure(operation, exc) from exc
    except KeycloakConnectionError as exc:
        # python-keycloak (admin API) wraps every exception of the HTTP call in this class: its cause tells.
        raise _transport_failure(operation, exc.__cause__) from exc
    except KeycloakError as exc:
        error = _refused(operation, exc.response_code, exc.response_body, refusals)
        result = "error" if isinstance(error, UpstreamError) else "refused"
        raise error from exc
    except Exception as exc:  # e.g. python-keycloak's TypeError for a body of the wrong JSON type
        log.warning("%s: unusable answer", operation, exc_info=True)
        raise UpstreamBadResponse(f"{operation}: {type(exc).__name__}: {exc}") from exc
    finally:
        elapsed = time.perf_counter() - started
        metrics.UPSTREAM_SECONDS.labels(operation, result).observe(elapsed)
        observe.add_upstream_time(elapsed)


def _proxies(settings):
    """The proxies of the environment that apply to Keycloak's URL, read once (requests would re-read them per call)."""
    host = urlsplit(settings.keycloak_url).hostname or ""
    if settings.no_proxy and urllib.request.proxy_bypass_environment(host, {"no": settings.no_proxy}):
        return {}
    return settings.proxies


# The realm's endpoints the gateway calls, relative to `<KEYCLOAK_URL>realms/<realm>/`.
ENDPOINTS = {
    "token": "protocol/openid-connect/token",
    "logout": "protocol/openid-connect/logout",
    "introspect": "protocol/openid-connect/token/introspect",
    "certs": "protocol/openid-connect/certs",
    "metadata": ".well-known/openid-configuration",
    "account sessions": "account/sessions",
}
USER_AGENT_LENGTH = 512  # a browser's is about 150 characters; Keycloak parses what it gets with regexes
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")
# A session id as Keycloak makes them (24 base64url characters in 26.x, a UUID before): safe as a path segment.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,255}")


def client_address():
    """The client's address as the gateway trusts it (`request.remote_addr`, after the GATEWAY_TRUSTED_PROXIES
    rule), written as an IP address, or None when it is none (a Unix socket, a proxy that sent something else)."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return None
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        address = ipaddress.IPv6Address(int(address))  # without a %zone, which means nothing to Keycloak
    return str(address)


def client_headers():
    """What Keycloak records of the client of this request: its address and its browser. Without a `User-Agent`
    from the client none is sent (urllib3 would send its own, and Keycloak would record the gateway's)."""
    if not has_request_context():
        return {}
    headers = {"User-Agent": _UNPRINTABLE.sub("", request.headers.get("User-Agent", ""))[:USER_AGENT_LENGTH]
               or SKIP_HEADER}
    address = client_address()
    if address is not None:
        headers["X-Forwarded-For"] = address
    return headers


@dataclass(frozen=True)
class AccountSession:
    """One of the user's Keycloak sessions, as the Account REST API lists it (times in epoch seconds)."""

    id: str
    ip_address: str
    started: int
    last_access: int
    expires: int
    clients: list


def _account_session(entry):
    """An AccountSession of one entry of Keycloak's list; UpstreamBadResponse for anything else."""
    if not isinstance(entry, dict):
        raise UpstreamBadResponse("account sessions: an entry that is not an object")
    times = [entry.get(name) for name in ("started", "lastAccess", "expires")]
    clients = entry.get("clients", [])
    if (not isinstance(entry.get("id"), str) or not _SESSION_ID.fullmatch(entry["id"])
            or not isinstance(entry.get("ipAddress"), (str, type(None)))
            or any(type(value) is not int for value in times)
            or not isinstance(clients, list)
            or any(not isinstance(c, dict) or not isinstance(c.get("clientId"), str) for c in clients)):
        raise UpstreamBadResponse("account sessions: an entry without a usable id, address, times or clients")
    return AccountSession(entry["id"], entry.get("ipAddress"), *times, [c["clientId"] for c in clients])


class Keycloak:
    """The realm `edm` as the gateway uses it: grants, logout, introspection and user look-ups; its access tokens
    are checked by `self.tokens` against the realm's keys in `self.keys`."""

    def __init__(self, settings, store=None, ended=None):
        self.settings = settings
        realm = f"{settings.keycloak_url}realms/{settings.realm}/"
        self._urls = {name: realm + path for name, path in ENDPOINTS.items()}
        self._client = {"client_id": settings.client_id, "client_secret": settings.client_secret}
        # Explicit timeout and no retries: a retried password grant would be a second brute-force failure. Proxies
        # and CA bundle were read once, at start (a Session would read the environment again on every call).
        self._adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(10, settings.threads), max_retries=0)
        self._send_options = {"timeout": (settings.timeout, settings.timeout), "verify": settings.tls_verify,
                              "proxies": _proxies(settings)}
        self._local = threading.local()
        try:
            self._admin()  # built now: a bad CA bundle or URL, or a python-keycloak that changed, stops the start
        except Exception as exc:  # any failure here is a start-up failure, named
            raise ConfigError(f"cannot build the Keycloak client: {type(exc).__name__}: {exc}") from exc
        self.keys = RealmKeys(self._fetch_jwks, max_age=settings.keys_max_age)
        self.tokens = AccessTokens(settings, self.keys, ended=ended)
        self.id_tokens = IdTokens(settings, self.keys)
        self.logout_tokens = LogoutTokens(settings, self.keys)
        if store is None or store.redis is None:  # one turn per username on this host, else across every host
            self.turns = UsernameTurns(settings.lock_dir, timeout=settings.timeout, waiters=settings.login_waiters,
                                       threads=settings.threads)
        else:
            self.turns = SharedTurns(store, timeout=settings.timeout, waiters=settings.login_waiters,
                                     threads=settings.threads)
        self._readiness = (None, False)  # (monotonic time it was checked, result)
        self.readiness_ttl = 5.0  # seconds a readiness answer is kept

    def _call(self, operation, endpoint, form=None, refusals=None, *, method=None, path="", bearer=None,
              for_client=False, answer=dict):
        """One call to an endpoint of the realm (a POST of `form`, else a GET, or `method`; `path` appended to the
        endpoint's URL; `bearer` as the Authorization; with `for_client`, the client's address and browser): its
        JSON value, which must be of type `answer` ({} for an empty answer); a refusal listed in `refusals` raises
        its class, anything else unusable a bad answer."""
        headers = {"Accept": "application/json", **(client_headers() if for_client else {})}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        request = requests.PreparedRequest()
        request.url, request.hooks = self._urls[endpoint] + path, {"response": []}
        if form is None:
            request.method, request.body = method or "GET", None
        else:
            request.method, request.body = method or "POST", urlencode(form)  # ASCII, percent-encoded, as requests does
            headers.update({"Content-Length": str(len(request.body)),
                            "Content-Type": "application/x-www-form-urlencoded"})
        request.headers = CaseInsensitiveDict(headers)
        request.headers.update(observe.trace_headers())
        with _upstream(operation, refusals):
            response = self._adapter.send(request, **self._send_options)
            content = response.content
            if not 200 <= response.status_code < 300:
                raise _refused(operation, response.status_code, content, refusals)
            body = json.loads(content) if content else {}
            if not isinstance(body, answer):
                raise UpstreamBadResponse(f"{operation}: not a JSON {answer.__name__}")
        return body

    def _admin(self):
        """python-keycloak's admin client of this thread (and process, after a fork): its clients change headers
        on their connection per call, so threads must not share one."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            s = self.settings
            options = dict(server_url=s.keycloak_url, timeout=s.timeout, max_retries=0, verify=s.tls_verify)
            openid = KeycloakOpenID(realm_name=s.realm, client_id=s.client_id, client_secret_key=s.client_secret,
                                    **options)
            connection = KeycloakOpenIDConnection(realm_name=s.realm, client_id=s.client_id,
                                                  client_secret_key=s.client_secret, **options)
            # requests re-reads proxy settings, CA bundles and ~/.netrc from the environment on every call: they
            # were read once, at start, and that is all.
            for session in (openid.connection._s, connection._s):
                session.trust_env = False
                session.proxies.update(self._send_options["proxies"])
            # It would build its own token client with python-keycloak's POST retry; it gets ours instead.
            connection._keycloak_openid = openid
            local.admin, local.pid = KeycloakAdmin(connection=connection), os.getpid()
        return local.admin

    def login(self, username, password, explain=True):
        """The password grant. On "Invalid user credentials", one admin look-up says which failure it was;
        without `explain` no look-up is made and the failure is InvalidCredentials. In enumeration-safe mode
        (GATEWAY_HIDE_ACCOUNT_STATE) every credential or account-state refusal is InvalidCredentials, without a
        look-up, Keycloak's own words kept as its reason."""
        form = {"grant_type": "password", "username": username, "password": password, "scope": "profile email",
                **self._client}
        hide_account_state = self.settings.hide_account_state
        with self.turns.hold(username) as turn:
            try:
                body = self._call("password grant", "token", form, LOGIN_REFUSALS, for_client=True)
            except UpstreamTimeout:
                turn.settle = self.settings.timeout  # Keycloak may still be working on it: no overlapping grant
                raise
            except _CredentialsRejected as exc:
                if not explain or hide_account_state:
                    raise InvalidCredentials(exc.reason) from None
                # Within the turn: while another grant of the user is in flight, Keycloak reports it as locked.
                raise self._credential_failure(username, exc.reason) from None
            except ACCOUNT_STATE_REFUSALS as exc:
                # Each tells that the account exists; "disabled" and "not set up", that the password was right.
                if hide_account_state:
                    raise InvalidCredentials(exc.reason) from None
                raise
        return self._tokens(body)  # verified after the turn was passed on

    def _credential_failure(self, username, reason):
        admin = self._admin()
        trace = observe.trace_headers()  # on this thread's own connections, its service-account token's renewal too
        for connection in (admin.connection, admin.connection.keycloak_openid.connection):
            for header in ("traceparent", "tracestate"):
                if header in trace:
                    connection.add_param_headers(header, trace[header])
                else:
                    connection.del_param_headers(header)
        query = {"username": username, "exact": "true", "briefRepresentation": "true", "first": 0, "max": 1}
        with _upstream("user look-up"):
            users = admin.get_users(query)
        if not users:
            return UsernameNotFound(reason)
        user_id = users[0].get("id") if isinstance(users[0], dict) else None
        if not isinstance(user_id, str):
            return UpstreamBadResponse("user look-up: no user id")
        with _upstream("brute-force status"):
            status = admin.get_bruteforce_detection_status(user_id)
        if status.get("disabled") is True:
            return AccountLocked(reason + " (temporarily locked by brute-force detection)")
        return WrongPassword(reason)

    def refresh(self, refresh_token):
        """The refresh grant: new tokens for a live session; InvalidRefreshToken when Keycloak refuses the token."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **self._client}
        return self._tokens(self._call("refresh grant", "token", form, REFRESH_REFUSALS, for_client=True))

    def authorization_url(self, state, nonce, code_challenge):
        """Keycloak's login page for an authorization code login with PKCE (S256), at its public URL: no network
        call. (python-keycloak's auth_url() fetches the discovery document each time and does not encode the
        parameters it puts in the query.)"""
        s = self.settings
        query = urlencode({"client_id": s.client_id, "response_type": "code", "redirect_uri": s.redirect_uri,
                           "scope": "openid profile email", "state": state, "nonce": nonce,
                           "code_challenge": code_challenge, "code_challenge_method": "S256"})
        return f"{s.keycloak_public_url}realms/{quote(s.realm, safe='')}/protocol/openid-connect/auth?{query}"

    def exchange_code(self, code, code_verifier, nonce):
        """The authorization code grant, with the PKCE verifier and the client's secret; the access token and the
        ID token (`nonce`, `iss`, `aud`, `at_hash`) verified. LoginFailed when Keycloak refuses the code."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_uri,
                "code_verifier": code_verifier, **self._client}
        body = self._call("code exchange", "token", form, CODE_REFUSALS, for_client=True)
        tokens = self._tokens(body)
        id_token = body.get("id_token")
        if not isinstance(id_token, str):
            raise UpstreamBadResponse("code exchange: no id_token in the answer")
        if not tokens.refresh_expires_in > 0:
            raise UpstreamBadResponse("code exchange: no refresh_expires_in in the answer")
        id_claims = self.id_tokens.verify(id_token, nonce, tokens.access_token)
        if id_claims["sub"] != tokens.claims["sub"] or not isinstance(id_claims.get("sid"), str):
            raise InvalidIdToken("ID token of another user than the access token, or without sid")
        return replace(tokens, id_claims=id_claims)

    def end_session(self, refresh_token):
        """End the Keycloak session of `refresh_token` (BFF logout): a token Keycloak no longer takes means the
        session is over already."""
        try:
            self.logout(refresh_token)
        except InvalidRefreshToken:
            pass

    def introspect(self, token, token_type_hint):
        """Keycloak's introspection of any token of the realm: a dict with at least `active`."""
        # token_type_hint matters: without it Keycloak 26 calls refresh tokens inactive.
        form = {"token": token, "token_type_hint": token_type_hint, **self._client}
        return self._call("introspection", "introspect", form)

    def logout(self, refresh_token):
        """End the session of `refresh_token`; ending an ended session is not an error."""
        try:
            self._call("logout", "logout", {"refresh_token": refresh_token, **self._client}, LOGOUT_REFUSALS,
                       for_client=True)
        except _SessionEnded:
            pass

    def sessions(self, access_token):
        """The Keycloak sessions of the access token's user (Account REST API, with that token: no admin role), as
        AccountSession values; InvalidAccessToken when Keycloak no longer takes the token."""
        body = self._call("account sessions", "account sessions", refusals=ACCOUNT_REFUSALS, bearer=access_token,
                          for_client=True, answer=list)
        return [_account_session(entry) for entry in body]

    def end_account_session(self, access_token, session_id):
        """End one Keycloak session of the access token's user, named by an id of `sessions()`. (Keycloak answers 204
        for any id, another user's too, and ends only the user's own: the caller checks the id first.)"""
        if not _SESSION_ID.fullmatch(session_id):
            raise ValueError("not a session id of Keycloak's")
        self._call("account session end", "account sessions", method="DELETE", path="/" + quote(session_id, safe=""),
                   refusals=ACCOUNT_REFUSALS, bearer=access_token, for_client=True)

    def ready(self):
        """Whether the realm's metadata and keys can be fetched now; the answer is kept `readiness_ttl` seconds."""
        checked_at, result = self._readiness
        if checked_at is not None and time.monotonic() - checked_at < self.readiness_ttl:
            return result
        try:
            metadata = self._call("realm metadata", "metadata")
            result = metadata.get("issuer") == self.settings.issuer and bool(self.keys.load_now())
        except UpstreamError as exc:
            log.warning("not ready: %s", exc.reason)
            result = False
        self._readiness = (time.monotonic(), result)
        return result

    def _fetch_jwks(self):
        return self._call("realm keys", "certs")

    def _tokens(self, body):
        try:
            access, refresh, expires_in = body["access_token"], body["refresh_token"], body["expires_in"]
        except (KeyError, TypeError):
            raise UpstreamBadResponse("token response without access_token, refresh_token or expires_in") from None
        if not (isinstance(access, str) and isinstance(refresh, str) and type(expires_in) is int):
            raise UpstreamBadResponse("token response with fields of the wrong type")
        refresh_expires_in = body.get("refresh_expires_in")
        try:
            claims = self.tokens.verify(access)
        except InvalidAccessToken as exc:
            raise UpstreamBadResponse(f"Keycloak issued a token the gateway cannot verify: {exc.reason}") from None
        # The token's own lifetime: Keycloak's expires_in counts down from its clock as it answers (299 for the
        # same 300-second token when an answer crosses a second).
        issued = claims.get("iat")
        if type(issued) is int and type(claims["exp"]) is int:
            expires_in = claims["exp"] - issued
        return Tokens(access, refresh, expires_in, claims,
                      refresh_expires_in if type(refresh_expires_in) is int else 0)
