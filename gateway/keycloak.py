"""Every call to Keycloak, and the only module that imports `keycloak` or `requests`.

It returns plain values and raises the gateway's own errors (`gateway.errors`): `_upstream()` translates
python-keycloak's exceptions by type, and Keycloak's JSON refusals through a table per operation. Anything it
cannot place is a bad upstream answer (502), never a 500.
"""

import json
import logging
import os
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from flask import current_app
from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakConnectionError, KeycloakError, KeycloakPostError, raise_error_from_response
from keycloak.urls_patterns import URL_INTROSPECT

from gateway.config import ConfigError
from gateway.errors import (
    AccountDisabled,
    AccountLocked,
    AccountNotSetUp,
    GatewayError,
    InvalidAccessToken,
    InvalidCredentials,
    InvalidRefreshToken,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UsernameNotFound,
    WrongPassword,
)
from gateway.tokens import AccessTokens, RealmKeys
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
REFRESH_REFUSALS = {
    ("invalid_grant", "Account disabled"): AccountDisabled,
    ("invalid_grant", "User disabled"): AccountDisabled,
    ("invalid_grant", None): InvalidRefreshToken,
}
LOGOUT_REFUSALS = {
    ("invalid_grant", "Session not active"): _SessionEnded,
    ("invalid_grant", "Token is not active"): _SessionEnded,
    ("invalid_grant", None): InvalidRefreshToken,
}


@dataclass(frozen=True)
class Tokens:
    """A token response of Keycloak, its access token verified."""

    access_token: str
    refresh_token: str
    expires_in: int
    claims: dict


def _refusal_of(exc):
    """Keycloak's (error, error_description) from a refusal's JSON body, or (None, None)."""
    try:
        body = json.loads(exc.response_body or b"")
    except (TypeError, ValueError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    error, description = body.get("error"), body.get("error_description")
    return (error if isinstance(error, str) else None), (description if isinstance(description, str) else None)


# What a failed call's underlying requests exception means, most specific first.
TRANSPORT_FAILURES = (
    (requests.Timeout, UpstreamTimeout),
    (requests.ConnectionError, UpstreamUnavailable),  # refused, reset, DNS, TLS handshake
    (requests.exceptions.ChunkedEncodingError, UpstreamUnavailable),  # the connection broke mid-answer
)


@contextmanager
def _upstream(operation, refusals=None):
    """Translate what a python-keycloak call raises into the gateway's errors, the most specific class."""
    try:
        yield
    except KeycloakConnectionError as exc:
        # python-keycloak wraps every exception of the HTTP call in this class: its cause tells what happened.
        cause = exc.__cause__
        for failure, error in TRANSPORT_FAILURES:
            if isinstance(cause, failure):
                raise error(f"{operation}: {type(cause).__name__}") from exc
        raise UpstreamBadResponse(f"{operation}: {type(cause).__name__}: {cause}") from exc
    except KeycloakError as exc:
        error, description = _refusal_of(exc)
        refusal = (refusals or {}).get((error, description)) or (refusals or {}).get((error, None))
        reason = f"{operation}: HTTP {exc.response_code} {error or 'non-JSON body'}: {description or ''}".rstrip()
        raise (refusal or UpstreamBadResponse)(reason) from exc
    except GatewayError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. python-keycloak's TypeError for a body of the wrong JSON type
        log.warning("%s: unusable answer", operation, exc_info=True)
        raise UpstreamBadResponse(f"{operation}: {type(exc).__name__}: {exc}") from exc


def _proxies(settings):
    """The proxies of the environment that apply to Keycloak's URL, read once (requests would re-read them per call)."""
    host = urlsplit(settings.keycloak_url).hostname or ""
    if settings.no_proxy and urllib.request.proxy_bypass_environment(host, {"no": settings.no_proxy}):
        return {}
    return settings.proxies


class Keycloak:
    """The realm `edm` as the gateway uses it: grants, logout, user look-ups and introspection; its access tokens
    are checked by `self.tokens` against the realm's keys in `self.keys`.

    python-keycloak's clients change headers on their connection per call, so each thread (and each process,
    after a fork) gets its own; their connection pools are per thread too.
    """

    def __init__(self, settings, store=None):
        self.settings = settings
        self._local = threading.local()
        self._proxies = _proxies(settings)
        try:
            self._clients()  # built now: a bad CA bundle or URL, or a python-keycloak that changed, stops the start
        except Exception as exc:  # noqa: BLE001 - any failure here is a start-up failure, named
            raise ConfigError(f"cannot build the Keycloak client: {type(exc).__name__}: {exc}") from exc
        self.keys = RealmKeys(self._fetch_jwks, max_age=settings.keys_max_age)
        self.tokens = AccessTokens(settings, self.keys)
        if store is None:  # one turn per username on this host, else across every host sharing the store
            self.turns = UsernameTurns(settings.lock_dir, timeout=settings.timeout, waiters=settings.login_waiters,
                                       threads=settings.threads)
        else:
            self.turns = SharedTurns(store, timeout=settings.timeout, waiters=settings.login_waiters,
                                     threads=settings.threads)
        self._readiness = (None, False)  # (monotonic time it was checked, result)

    def _clients(self):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            s = self.settings
            # Explicit timeout and no retries: a retried password grant would be a second brute-force failure.
            options = dict(server_url=s.keycloak_url, timeout=s.timeout, max_retries=0, verify=s.tls_verify)
            openid = KeycloakOpenID(realm_name=s.realm, client_id=s.client_id, client_secret_key=s.client_secret,
                                    **options)
            connection = KeycloakOpenIDConnection(realm_name=s.realm, client_id=s.client_id,
                                                  client_secret_key=s.client_secret, **options)
            # requests re-reads proxy settings, CA bundles and ~/.netrc from the environment on every call (about
            # 1 ms of CPU here): proxies and CA bundle were read once, at start, and that is all.
            for session in (openid.connection._s, connection._s):
                session.trust_env = False
                session.proxies.update(self._proxies)
            # It would build its own token client with python-keycloak's POST retry; it gets ours instead.
            connection._keycloak_openid = openid
            local.openid, local.admin, local.pid = openid, KeycloakAdmin(connection=connection), os.getpid()
        return local

    def login(self, username, password, explain=True):
        """The password grant. On "Invalid user credentials", one admin look-up says which failure it was;
        without `explain` no look-up is made and the failure is InvalidCredentials. In enumeration-safe mode
        (GATEWAY_HIDE_ACCOUNT_STATE) every credential or account-state refusal is InvalidCredentials, without a
        look-up, Keycloak's own words kept as its reason."""
        openid = self._clients().openid
        hide_account_state = self.settings.hide_account_state
        with self.turns.hold(username):
            try:
                with _upstream("password grant", LOGIN_REFUSALS):
                    body = openid.token(username=username, password=password, scope="profile email")
            except _CredentialsRejected as exc:
                body, rejected = None, exc
            except ACCOUNT_STATE_REFUSALS as exc:
                # Each tells that the account exists; "disabled" and "not set up", that the password was right.
                if hide_account_state:
                    raise InvalidCredentials(exc.reason) from None
                raise
        if body is not None:
            return self._tokens(body)  # verified after the turn was passed on
        if not explain or hide_account_state:
            raise InvalidCredentials(rejected.reason)
        raise self._credential_failure(username, rejected.reason)

    def _credential_failure(self, username, reason):
        admin = self._clients().admin
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
        openid = self._clients().openid
        with _upstream("refresh grant", REFRESH_REFUSALS):
            body = openid.refresh_token(refresh_token)
        return self._tokens(body)

    def introspect(self, token, token_type_hint):
        """Keycloak's introspection of any token of the realm: a dict with at least `active`."""
        openid = self._clients().openid
        # python-keycloak's introspect() drops token_type_hint, without which Keycloak 26 calls refresh tokens inactive.
        payload = {"client_id": self.settings.client_id, "client_secret": self.settings.client_secret,
                   "token": token, "token_type_hint": token_type_hint}
        with _upstream("introspection"):
            answer = openid.connection.raw_post(URL_INTROSPECT.format(**{"realm-name": self.settings.realm}),
                                                data=payload)
            info = raise_error_from_response(answer, KeycloakPostError)
        if not isinstance(info, dict):
            raise UpstreamBadResponse("introspection: not a JSON object")
        return info

    def logout(self, refresh_token):
        """End the session of `refresh_token`; ending an ended session is not an error."""
        openid = self._clients().openid
        try:
            with _upstream("logout", LOGOUT_REFUSALS):
                openid.logout(refresh_token)
        except _SessionEnded:
            pass

    def ready(self, cache_seconds=5.0):
        """Whether the realm's metadata and keys can be fetched now; the answer is kept a few seconds."""
        checked_at, result = self._readiness
        if checked_at is not None and time.monotonic() - checked_at < cache_seconds:
            return result
        try:
            with _upstream("realm metadata"):
                metadata = self._clients().openid.well_known()
            result = isinstance(metadata, dict) and metadata.get("issuer") == self.settings.issuer
            result = result and bool(self.keys.load_now())
        except UpstreamError as exc:
            log.warning("not ready: %s", exc.reason)
            result = False
        self._readiness = (time.monotonic(), result)
        return result

    def _fetch_jwks(self):
        with _upstream("realm keys"):
            return self._clients().openid.certs()

    def _tokens(self, body):
        try:
            access, refresh, expires_in = body["access_token"], body["refresh_token"], body["expires_in"]
        except (KeyError, TypeError):
            raise UpstreamBadResponse("token response without access_token, refresh_token or expires_in") from None
        if not (isinstance(access, str) and isinstance(refresh, str) and type(expires_in) is int):
            raise UpstreamBadResponse("token response with fields of the wrong type")
        try:
            claims = self.tokens.verify(access)
        except InvalidAccessToken as exc:
            raise UpstreamBadResponse(f"Keycloak issued a token the gateway cannot verify: {exc.reason}") from None
        return Tokens(access, refresh, expires_in, claims)
