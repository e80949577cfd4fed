"""The port to Keycloak: every call to it, and the only module that imports `requests`.

The realm's OpenID endpoints (token, logout, introspection, keys, metadata), the Account REST API (the user's
sessions) and the two admin look-ups that explain a refused login (the user by name, its brute-force status) all go
through one pooled requests `HTTPAdapter`, shared by the threads of a worker, with an explicit timeout and no retry
(a retried password grant would be a second brute-force failure). The admin look-ups use the client's service
account, whose token is fetched by the client-credentials grant, kept, and renewed before it expires.

Why not python-keycloak: the token endpoint is the hot path of every login and refresh, and a requests `Session`
or python-keycloak around it cost twice the CPU of the call itself (measured: 0.74 ms per refresh through
python-keycloak, 0.30 ms through the adapter); for the admin API it served two GETs, brought eight packages (an
async HTTP stack among them), took most of `create_app`'s time building SSL contexts it never used, changed headers
on a connection that threads must not share, and could only be kept from retrying POSTs and from reading the
environment per call by setting its private attributes.

It returns plain values (token answers as Keycloak sends them: `gateway/grants.py` checks them) and raises the
gateway's own errors (`gateway.errors`): `_upstream()` translates exceptions by type, and Keycloak's refusals go
through a table per operation. Anything it cannot place is a bad upstream answer (502), never a 500.

Calls made for a client's request (the grants, logout, the Account API) carry the client's address as the gateway
trusts it (`X-Forwarded-For`, after the GATEWAY_TRUSTED_PROXIES rule) and its `User-Agent`, so that Keycloak's
session list and brute-force records show the user, not the gateway. Keycloak takes them from trusted addresses
only (`--proxy-trusted-addresses`); with the realm's `sslRequired: external`, a public client address over plain
http is refused ("HTTPS required": a 502 here), so production calls Keycloak over https.
"""

import ipaddress
import json
import logging
import re
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urlencode, urlsplit

import requests
from flask import has_request_context, request
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util import SKIP_HEADER

from gateway import metrics, observe
from gateway.errors import (
    AccountDisabled,
    AccountLocked,
    AccountNotSetUp,
    GatewayError,
    InvalidAccessToken,
    InvalidRefreshToken,
    LoginFailed,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)

log = logging.getLogger(__name__)


class CredentialsRejected(GatewayError):
    """Keycloak's "Invalid user credentials": an unknown user, a wrong password, a lock, or an overlapping grant of
    the same user; the login policy (`gateway/login.py`) looks up which."""


class _SessionEnded(GatewayError):
    """The session of a refresh token has already ended: for logout, the work is done."""


class _ServiceTokenRefused(GatewayError):
    """The admin API refused the service account's token: it is fetched again."""


# (error, error_description) -> what it means; (error, None) matches any description of that error.
LOGIN_REFUSALS = {
    ("invalid_grant", "Invalid user credentials"): CredentialsRejected,
    ("invalid_grant", "Account disabled"): AccountDisabled,
    ("invalid_grant", "User disabled"): AccountDisabled,
    ("invalid_grant", "Account temporarily disabled"): AccountLocked,
    ("invalid_grant", "Account is not fully set up"): AccountNotSetUp,
}
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
    except Exception as exc:  # e.g. a body that is not JSON, or JSON nested too deep: a bad answer, not a crash
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


# The realm's endpoints the gateway calls, relative to `<KEYCLOAK_URL>realms/<realm>/` (the admin API's to
# `<KEYCLOAK_URL>admin/realms/<realm>/`).
ENDPOINTS = {
    "token": "protocol/openid-connect/token",
    "logout": "protocol/openid-connect/logout",
    "introspect": "protocol/openid-connect/token/introspect",
    "certs": "protocol/openid-connect/certs",
    "metadata": ".well-known/openid-configuration",
    "account sessions": "account/sessions",
}
ADMIN_ENDPOINTS = {
    "users": "users",
    "brute force": "attack-detection/brute-force/users/",
}
# Renew the service account's token this long before Keycloak says it expires (at most half its lifetime).
SERVICE_TOKEN_MARGIN = 30.0
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
    """The realm of KEYCLOAK_REALM as the gateway calls it: grants, logout, introspection, keys, metadata, the
    Account API, and the admin look-ups of a refused login. Token answers come back as Keycloak sent them."""

    def __init__(self, settings):
        self.settings = settings
        realm = f"{settings.keycloak_url}realms/{settings.realm}/"
        admin = f"{settings.keycloak_url}admin/realms/{settings.realm}/"
        self._urls = {**{name: realm + path for name, path in ENDPOINTS.items()},
                      **{name: admin + path for name, path in ADMIN_ENDPOINTS.items()}}
        self._client = {"client_id": settings.client_id, "client_secret": settings.client_secret}
        # Proxies and CA bundle were read once, at start (a Session would read the environment again on every call).
        self._adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(10, settings.threads), max_retries=0)
        self._send_options = {"timeout": (settings.timeout, settings.timeout), "verify": settings.tls_verify,
                              "proxies": _proxies(settings)}
        self._service_token = (None, 0.0)  # (token, time on `clock` to renew it by)
        self._service_token_lock = threading.Lock()
        self.clock = time.monotonic

    def _call(self, operation, endpoint, form=None, refusals=None, *, method=None, path="", bearer=None,
              for_client=False, answer=dict, query=None):
        """One call to an endpoint of the realm (a POST of `form`, else a GET, or `method`; `path` appended to the
        endpoint's URL, then `query`; `bearer` as the Authorization; with `for_client`, the client's address and
        browser): its JSON value, which must be of type `answer` ({} for an empty answer); a refusal listed in
        `refusals` raises its class, anything else unusable a bad answer."""
        headers = {"Accept": "application/json", **(client_headers() if for_client else {})}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        request = requests.PreparedRequest()
        request.url = self._urls[endpoint] + path + (f"?{urlencode(query)}" if query else "")
        request.hooks = {"response": []}
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
            body = json.loads(content) if content else {}  # an empty answer is no list
            if not isinstance(body, answer):
                raise UpstreamBadResponse(f"{operation}: not a JSON {answer.__name__}")
        return body

    def password_grant(self, username, password):
        """The password grant: Keycloak's token answer; its refusals as LOGIN_REFUSALS says (CredentialsRejected for
        "Invalid user credentials")."""
        form = {"grant_type": "password", "username": username, "password": password, "scope": "profile email",
                **self._client}
        return self._call("password grant", "token", form, LOGIN_REFUSALS, for_client=True)

    def refresh_grant(self, refresh_token):
        """The refresh grant: Keycloak's token answer; InvalidRefreshToken when Keycloak refuses the token."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token, **self._client}
        return self._call("refresh grant", "token", form, REFRESH_REFUSALS, for_client=True)

    def code_grant(self, code, code_verifier):
        """The authorization code grant, with the PKCE verifier and the client's secret: Keycloak's token answer,
        its ID token included; LoginFailed when Keycloak refuses the code."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.settings.redirect_uri,
                "code_verifier": code_verifier, **self._client}
        return self._call("code exchange", "token", form, CODE_REFUSALS, for_client=True)

    def authorization_url(self, state, nonce, code_challenge):
        """Keycloak's login page for an authorization code login with PKCE (S256), at its public URL: no network
        call."""
        s = self.settings
        query = urlencode({"client_id": s.client_id, "response_type": "code", "redirect_uri": s.redirect_uri,
                           "scope": "openid profile email", "state": state, "nonce": nonce,
                           "code_challenge": code_challenge, "code_challenge_method": "S256"})
        return f"{s.keycloak_public_url}realms/{quote(s.realm, safe='')}/protocol/openid-connect/auth?{query}"

    def logout(self, refresh_token):
        """End the session of `refresh_token`; ending an ended session is not an error."""
        try:
            self._call("logout", "logout", {"refresh_token": refresh_token, **self._client}, LOGOUT_REFUSALS,
                       for_client=True)
        except _SessionEnded:
            pass

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

    def user_id(self, username):
        """The id of the realm's user of this username (letter case ignored, as Keycloak matches it), or None."""
        query = {"username": username, "exact": "true", "briefRepresentation": "true", "first": 0, "max": 1}
        users = self._admin("user look-up", "users", query=query, answer=list)
        user_id = users[0].get("id") if users and isinstance(users[0], dict) else None
        if users and not isinstance(user_id, str):
            raise UpstreamBadResponse("user look-up: no user id")
        return user_id

    def locked(self, user_id):
        """Whether brute-force detection holds the user temporarily locked now."""
        status = self._admin("brute-force status", "brute force", path=quote(user_id, safe=""))
        return status.get("disabled") is True

    def _admin(self, operation, endpoint, **call):
        """A GET of the admin API with the service account's token; a token Keycloak no longer takes (a restart, a
        rotated key) is fetched again once."""
        for attempt in (1, 2):
            token = self._service_account_token(renew=attempt == 2)
            try:
                return self._call(operation, endpoint, refusals={401: _ServiceTokenRefused}, bearer=token, **call)
            except _ServiceTokenRefused:
                if attempt == 2:
                    raise UpstreamBadResponse(f"{operation}: the service account's fresh token refused") from None
        raise AssertionError("unreachable")

    def _service_account_token(self, renew=False):
        """The service account's access token, shared by the worker's threads, fetched again shortly before it
        expires (or when `renew`), never per request."""
        token, renew_by = self._service_token
        if token is not None and not renew and self.clock() < renew_by:
            return token
        with self._service_token_lock:
            token, renew_by = self._service_token
            if token is None or renew or self.clock() >= renew_by:
                answer = self._call("service account token", "token",
                                    {"grant_type": "client_credentials", **self._client})
                token, lifetime = answer.get("access_token"), answer.get("expires_in")
                if not isinstance(token, str) or type(lifetime) is not int:
                    raise UpstreamBadResponse("service account token: no access_token or expires_in")
                margin = min(SERVICE_TOKEN_MARGIN, lifetime / 2)
                self._service_token = (token, self.clock() + lifetime - margin)
            return token

    def jwks(self):
        """The realm's published keys (JWKS)."""
        return self._call("realm keys", "certs")

    def metadata(self):
        """The realm's OpenID Connect discovery document."""
        return self._call("realm metadata", "metadata")
