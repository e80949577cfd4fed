"""Every call to Keycloak, and the only module that imports `keycloak`, `requests` or `jwcrypto`.

It returns plain values and raises the gateway's own errors (`gateway.errors`): `_upstream()` translates
python-keycloak's exceptions, and Keycloak's JSON refusals through a table per operation.
"""

import base64
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from jwcrypto import jwk, jwt
from jwcrypto.common import JWException
from keycloak import KeycloakAdmin, KeycloakOpenID, KeycloakOpenIDConnection
from keycloak.exceptions import KeycloakConnectionError, KeycloakError, KeycloakPostError, raise_error_from_response
from keycloak.urls_patterns import URL_INTROSPECT

from gateway.errors import (
    AccountDisabled,
    AccountLocked,
    AccountNotSetUp,
    ExpiredAccessToken,
    ExpiredRefreshToken,
    InvalidAccessToken,
    InvalidCredentials,
    InvalidRefreshToken,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    UsernameNotFound,
    WrongPassword,
    WrongTokenType,
)
from gateway.userlock import UsernameLock

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30


class _CredentialsRejected(Exception):
    """Keycloak's "Invalid user credentials": unknown user, wrong password or locked; a look-up decides."""


class _SessionEnded(Exception):
    """The session of a refresh token has already ended: for logout, the work is done."""


# (error, error_description) -> what it means; (error, None) matches any description of that error.
LOGIN_REFUSALS = {
    ("invalid_grant", "Invalid user credentials"): _CredentialsRejected,
    ("invalid_grant", "Account disabled"): AccountDisabled,
    ("invalid_grant", "User disabled"): AccountDisabled,
    ("invalid_grant", "Account temporarily disabled"): AccountLocked,
    ("invalid_grant", "Account is not fully set up"): AccountNotSetUp,
}
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


@contextmanager
def _upstream(operation, refusals=None):
    """Translate python-keycloak's exceptions into the gateway's, the most specific class."""
    try:
        yield
    except KeycloakConnectionError as exc:
        # python-keycloak wraps every exception of a call in this class, network or not.
        if isinstance(exc.__cause__, requests.Timeout):
            raise UpstreamTimeout(f"{operation}: no answer in time") from exc
        if isinstance(exc.__cause__, requests.RequestException):
            raise UpstreamUnavailable(f"{operation}: {type(exc.__cause__).__name__}") from exc
        raise
    except KeycloakError as exc:
        error, description = _refusal_of(exc)
        refusal = (refusals or {}).get((error, description)) or (refusals or {}).get((error, None))
        reason = f"{operation}: HTTP {exc.response_code} {error or 'non-JSON body'}: {description or ''}".rstrip()
        if refusal is None:
            raise UpstreamBadResponse(reason) from exc
        raise refusal(reason) from exc
    except TypeError as exc:
        # python-keycloak's word for "the body was not the JSON type it expected"; any other TypeError is a bug.
        if not str(exc).startswith("Unexpected response type"):
            raise
        raise UpstreamBadResponse(f"{operation}: unexpected body") from exc


def _b64_json(segment):
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except RecursionError:  # deeply nested JSON in a token: as malformed as any other
        raise ValueError("nested too deeply") from None


def _unverified_claims(token):
    """A JWT's payload read without any check: only to choose the words of a refusal, never to trust."""
    try:
        claims = _b64_json(token.split(".")[1])
    except (IndexError, ValueError, TypeError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


class RealmKeys:
    """The realm's signing keys by `kid`: fetched once, fetched again only for an unknown `kid`, at most
    once per `refetch_interval` seconds so that forged `kid`s cannot make the gateway hammer Keycloak."""

    def __init__(self, fetch, refetch_interval=2.0):
        self._fetch = fetch
        self.refetch_interval = refetch_interval
        self._keys = {}
        self._fetched_at = None
        self._failure = None
        self._lock = threading.Lock()
        self.fetches = 0

    def get(self, kid):
        """The public key named `kid`, or None when the realm does not publish it. While Keycloak cannot be
        asked again, a failed fetch is answered with its error instead of a new call."""
        key = self._keys.get(kid)
        if key is not None:
            return key
        with self._lock:
            key = self._keys.get(kid)
            if key is not None:
                return key
            if self._fetched_at is not None and time.monotonic() - self._fetched_at < self.refetch_interval:
                if self._failure is not None:
                    raise type(self._failure)(self._failure.reason)
                return None
            self._fetch_locked()
            return self._keys.get(kid)

    def _fetch_locked(self):
        try:
            self._keys = self._load()
            self._failure = None
        except UpstreamError as exc:
            self._failure = exc
            raise
        finally:
            self._fetched_at = time.monotonic()  # failed fetches count against the rate too

    def load_now(self):
        """Fetch the realm's keys now and keep them; returns them (UpstreamError if they cannot be had)."""
        with self._lock:
            self._fetch_locked()
            return self._keys

    def _load(self):
        self.fetches += 1
        document = self._fetch()
        keys = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if isinstance(entry, dict) and entry.get("use", "sig") == "sig" and entry.get("kty") == "RSA":
                try:
                    keys[entry["kid"]] = jwk.JWK(**entry)
                except (KeyError, TypeError, ValueError, JWException):
                    log.warning("ignoring an unusable key in the realm's JWKS")
        if not keys:
            raise UpstreamBadResponse("realm keys: no RSA signing key published")
        return keys


class Keycloak:
    """The realm `edm` as the gateway uses it: grants, logout, user look-ups and token verification.

    python-keycloak's clients change headers on their connection per call, so each thread (and each process,
    after a fork) gets its own; their connection pools are per thread too.
    """

    def __init__(self, settings):
        self.settings = settings
        self._local = threading.local()
        self._proxies = requests.utils.get_environ_proxies(settings.keycloak_url)
        self._verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.keys = RealmKeys(self._fetch_jwks)
        self._username_lock = UsernameLock(timeout=settings.timeout)
        self.clock = time.time  # the tests set the clock forward instead of waiting for tokens to expire
        self._readiness = (None, False)  # (monotonic time it was checked, result)

    def _clients(self):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            s = self.settings
            # Explicit timeout and no retries: a retried password grant would be a second brute-force failure.
            options = dict(server_url=s.keycloak_url, timeout=s.timeout, max_retries=0, verify=self._verify)
            local.openid = KeycloakOpenID(
                realm_name=s.realm, client_id=s.client_id, client_secret_key=s.client_secret, **options
            )
            connection = KeycloakOpenIDConnection(
                realm_name=s.realm, client_id=s.client_id, client_secret_key=s.client_secret, **options
            )
            # requests re-reads proxy settings, CA bundles and ~/.netrc from the environment on every call (about
            # 1 ms of CPU here): proxies and CA bundle were read once, in __init__, and that is all.
            for session in (local.openid.connection._s, connection._s):
                session.trust_env = False
                session.proxies.update(self._proxies)
            # It would build its own token client with python-keycloak's POST retry; it gets ours instead.
            connection._keycloak_openid = local.openid
            local.admin = KeycloakAdmin(connection=connection)
            local.pid = os.getpid()
        return local

    def login(self, username, password, explain=True):
        """The password grant. On "Invalid user credentials", one admin look-up says which failure it was;
        without `explain` no look-up is made and the failure is InvalidCredentials."""
        openid = self._clients().openid
        with self._username_lock.hold(username):
            try:
                with _upstream("password grant", LOGIN_REFUSALS):
                    body = openid.token(username=username, password=password, scope="profile email")
            except _CredentialsRejected as exc:
                rejected = exc
            else:
                return self._tokens(body)
        if not explain:
            raise InvalidCredentials(rejected.args[0])
        raise self._credential_failure(username, rejected.args[0])

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
        """The refresh grant: new tokens for a live session."""
        if self._is_access_token(refresh_token):
            raise WrongTokenType("an access token of this client where a refresh token belongs")
        openid = self._clients().openid
        try:
            with _upstream("refresh grant", REFRESH_REFUSALS):
                body = openid.refresh_token(refresh_token)
        except InvalidRefreshToken as exc:
            if self._expired(refresh_token):
                raise ExpiredRefreshToken(exc.reason) from None
            raise
        return self._tokens(body)

    def verify_token(self, token):
        """Whether any token of this client is valid now (SimpleJWT's verify): an access token is checked
        locally; a refresh token, which only Keycloak can check, by its introspection endpoint."""
        try:
            return self.verify_access_token(token)
        except ExpiredAccessToken:
            raise
        except InvalidAccessToken:
            if _unverified_claims(token).get("typ") != "Refresh":
                raise
        openid = self._clients().openid
        # python-keycloak's introspect() drops token_type_hint, without which Keycloak 26 calls refresh tokens inactive.
        payload = {"client_id": self.settings.client_id, "client_secret": self.settings.client_secret,
                   "token": token, "token_type_hint": "refresh_token"}
        with _upstream("introspection"):
            answer = openid.connection.raw_post(URL_INTROSPECT.format(**{"realm-name": self.settings.realm}), data=payload)
            info = raise_error_from_response(answer, KeycloakPostError)
        if not isinstance(info, dict):
            raise UpstreamBadResponse("introspection: not a JSON object")
        if info.get("active") is True and info.get("azp") == self.settings.client_id:
            return info
        if self._expired(token):
            raise ExpiredRefreshToken("refresh token expired")
        raise InvalidRefreshToken("refresh token not active")

    def _is_access_token(self, token):
        try:
            self.verify_access_token(token)
        except InvalidAccessToken:
            return False
        return True

    def _expired(self, token):
        expires = _unverified_claims(token).get("exp")
        return isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires < self.clock()

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
        openid = self._clients().openid
        try:
            with _upstream("realm metadata"):
                metadata = openid.well_known()
            result = isinstance(metadata, dict) and metadata.get("issuer") == self.settings.issuer
            result = result and bool(self.keys.load_now())
        except UpstreamError:
            result = False
        self._readiness = (time.monotonic(), result)
        return result

    def _fetch_jwks(self):
        openid = self._clients().openid
        with _upstream("realm keys"):
            return openid.certs()

    def _tokens(self, body):
        try:
            access, refresh, expires_in = body["access_token"], body["refresh_token"], body["expires_in"]
        except (KeyError, TypeError):
            raise UpstreamBadResponse("token response without access_token, refresh_token or expires_in") from None
        if not (isinstance(access, str) and isinstance(refresh, str) and type(expires_in) is int):
            raise UpstreamBadResponse("token response with fields of the wrong type")
        try:
            claims = self.verify_access_token(access)
        except InvalidAccessToken as exc:
            raise UpstreamBadResponse(f"Keycloak issued a token the gateway cannot verify: {exc.reason}") from None
        return Tokens(access, refresh, expires_in, claims)

    def verify_access_token(self, token):
        """The claims of an access token of this realm and client, checked locally; else InvalidAccessToken."""
        s = self.settings
        try:
            header = _b64_json(token.split(".", 1)[0])
            if not isinstance(header, dict) or header.get("alg") != "RS256":
                raise InvalidAccessToken("not an RS256 token")
            key = self.keys.get(header.get("kid"))
            if key is None:
                raise InvalidAccessToken("signed by a key the realm does not publish")
            verified = jwt.JWT(
                algs=["RS256"],
                expected_type="JWS",
                check_claims={"iss": s.issuer, "sub": None, "azp": s.client_id},
            )
            verified.deserialize(token, key)
            claims = json.loads(verified.claims)
            if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str) or claims.get("typ") != "Bearer":
                raise InvalidAccessToken("not an access token")
            expires = claims.get("exp")
            if not isinstance(expires, (int, float)) or isinstance(expires, bool):
                raise InvalidAccessToken("no expiry")
            if expires + LEEWAY_SECONDS < self.clock():
                raise ExpiredAccessToken("expired")
        except (JWException, ValueError, TypeError, UnicodeError) as exc:
            raise InvalidAccessToken(f"{type(exc).__name__}: {exc}") from None
        return claims
