"""Local verification of the realm's access tokens, and the cache of the realm's signing keys.

Nothing here calls the network: the keys come from the fetch function that `gateway.keycloak` hands over.
"""

import base64
import json
import logging
import math
import threading
import time

from jwcrypto import jwk, jwt
from jwcrypto.common import JWException

from gateway import metrics
from gateway.errors import ExpiredAccessToken, InvalidAccessToken, UpstreamBadResponse, UpstreamError

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30
# Past this share of its maximum age the key set is re-fetched by one request while the others go on with it.
REFRESH_SHARE = 0.9


def _b64_json(segment):
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except RecursionError:  # deeply nested JSON in a token: as malformed as any other
        raise ValueError("nested too deeply") from None


def unverified_claims(token):
    """A JWT's payload read without any check: only to choose the words of a refusal, never to trust."""
    try:
        claims = _b64_json(token.split(".")[1])
    except (IndexError, ValueError, TypeError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


class RealmKeys:
    """The realm's RS256 signing keys by `kid`.

    The set is used for at most `max_age` seconds, so a key that an admin removed from the realm stops verifying
    within that age; near its end one request re-fetches it while the others go on with the keys in hand, and past
    it every request waits for the one fetch under way. A `kid` the set does not know causes a re-fetch too. Fetches
    are tried at most once per `refetch_interval`, so forged `kid`s cannot make the gateway hammer Keycloak, and
    until the next try a failed fetch is answered with its error instead of a new call.
    """

    def __init__(self, fetch, max_age=300.0, refetch_interval=2.0, clock=time.monotonic):
        self._fetch = fetch
        self.max_age = max_age
        self.refetch_interval = refetch_interval
        self.clock = clock
        self._keys = {}
        self._loaded_at = None  # when the keys in hand were fetched
        self._tried_at = None  # when a fetch was last tried, whatever came of it
        self._failure = None  # that try's error, if it failed
        self._lock = threading.Lock()
        self.fetches = 0

    def _age(self, now):
        return math.inf if self._loaded_at is None else now - self._loaded_at

    def _may_try(self, now):
        return self._tried_at is None or now - self._tried_at >= self.refetch_interval

    def get(self, kid):
        """The public key named `kid`, or None when the realm does not publish it."""
        now = self.clock()
        age = self._age(now)
        if age < self.max_age:
            if age >= REFRESH_SHARE * self.max_age and self._may_try(now) and self._lock.acquire(blocking=False):
                try:
                    self._refresh_quietly()
                finally:
                    self._lock.release()
            key = self._keys.get(kid)
            if key is not None:
                return key
        with self._lock:
            now = self.clock()
            usable = self._age(now) < self.max_age
            key = self._keys.get(kid) if usable else None
            if key is not None:  # fetched by another thread while this one waited
                return key
            # An expired set is fetched again when due; the interval holds back unknown kids and failed fetches.
            if not self._may_try(now) and (usable or self._failure is not None):
                if self._failure is not None:
                    raise type(self._failure)(self._failure.reason)
                return None
            self._fetch_locked()
            return self._keys.get(kid)

    def _refresh_quietly(self):
        try:
            self._fetch_locked()
        except UpstreamError as exc:
            log.warning("realm keys could not be refreshed, the current ones stay until they expire: %s", exc.reason)

    def _fetch_locked(self):
        self._tried_at = self.clock()  # failed fetches count against the rate too
        try:
            keys = self._load()
        except UpstreamError as exc:
            self._failure = exc
            metrics.KEY_FETCHES.labels("error").inc()
            raise
        metrics.KEY_FETCHES.labels("ok").inc()
        self._keys, self._loaded_at, self._failure = keys, self._tried_at, None

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


class AccessTokens:
    """Checks access tokens of one realm and client locally: an RS256 signature by a key the realm publishes,
    `iss`, `azp`, `typ: Bearer`, `sub`, and `exp` with LEEWAY_SECONDS of leeway."""

    def __init__(self, settings, keys, clock=time.time):
        self.issuer = settings.issuer
        self.client_id = settings.client_id
        self.keys = keys
        self.clock = clock  # the tests set the clock forward instead of waiting for tokens to expire

    def verify(self, token):
        """The claims of a valid access token; else InvalidAccessToken (ExpiredAccessToken once expired)."""
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
                check_claims={"iss": self.issuer, "sub": None, "azp": self.client_id},
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

    def is_valid(self, token):
        """Whether `token` is a valid access token of this realm and client now."""
        try:
            self.verify(token)
        except InvalidAccessToken:
            return False
        return True

    def expired(self, token):
        """Whether the token's own `exp`, read unverified, has passed: only to choose the words of a refusal."""
        expires = unverified_claims(token).get("exp")
        return isinstance(expires, (int, float)) and not isinstance(expires, bool) and expires < self.clock()
