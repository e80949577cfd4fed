"""Local verification of the realm's access tokens, and the cache of the realm's signing keys.

Nothing here calls the network: the keys come from the fetch function that `gateway.keycloak` hands over.
Keys are built from the JWKS by PyJWT, once per key set, and signatures checked by its RS256 algorithm on
`cryptography`'s RSA keys. The token's three segments are read here: the realm's access tokens are one narrow
case (compact JWS, RS256, a `kid` of the realm), and PyJWT's general-purpose reading checks the base64url
alphabet character by character in Python, which cost more than the RSA check itself (measured: 1.2 M
instructions per token through `jwt.decode`, 0.37 M for the signature check and the JSON).
"""

import base64
import binascii
import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time

import jwt
from jwt.algorithms import RSAAlgorithm

from gateway import metrics
from gateway.errors import (
    ExpiredAccessToken,
    InvalidAccessToken,
    InvalidIdToken,
    InvalidLogoutToken,
    UpstreamBadResponse,
    UpstreamError,
)

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30
RS256 = RSAAlgorithm(RSAAlgorithm.SHA256)
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")  # RFC 7515 writes JWS segments in base64url without padding


def _segment(text):
    """The bytes of a base64url segment, written canonically (no padding, no stray bits); else ValueError."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not a base64url segment")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error:
        raise ValueError("not a base64url segment") from None
    if base64.urlsafe_b64encode(data).rstrip(b"=") != text.encode():
        raise ValueError("not canonical base64url")
    return data
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


def read_signed(token, keys, refused, typ=None):
    """The claims of a compact JWS signed with RS256 by a key of the realm, with the key's kid and the key:
    (claims, kid, key). Read as strictly as Keycloak writes its tokens (three canonical base64url segments, no
    `crit`, the header's `typ` `typ` when there is one and `typ` is given), the payload only once the signature
    holds; anything else raises `refused(reason)`."""
    parts = token.split(".")
    if len(parts) != 3:
        raise refused("not a compact JWS: three segments")
    header_text, payload_text, signature_text = parts
    try:
        header = json.loads(_segment(header_text))
        if (not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(header.get("kid"), str)
                or "crit" in header):  # no critical extension is understood here
            raise refused("not an RS256 token with a kid")
        given = header.get("typ", typ) if typ is not None else None
        if typ is not None and (not isinstance(given, str) or given.lower().removeprefix("application/") != typ):
            raise refused(f"a JWT of another type than {typ}")  # RFC 7515: `typ` is a media type, case-insensitive
        kid = header["kid"]
        key = keys.get(kid)
        if key is None:
            raise refused("signed by a key the realm does not publish")
        if not RS256.verify(f"{header_text}.{payload_text}".encode(), key, _segment(signature_text)):
            raise refused("bad signature")
        claims = json.loads(_segment(payload_text))
    except (ValueError, TypeError, UnicodeError, RecursionError) as exc:
        raise refused(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(claims, dict):
        raise refused("claims not a JSON object")
    return claims, kid, key


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
                    if not isinstance(entry.get("kid"), str):
                        raise ValueError("no kid")
                    keys[entry["kid"]] = jwt.PyJWK(entry, algorithm="RS256").key
                except (jwt.PyJWTError, KeyError, TypeError, ValueError):
                    log.warning("ignoring an unusable key in the realm's JWKS")
        if not keys:
            raise UpstreamBadResponse("realm keys: no RSA signing key published")
        return keys


class AccessTokens:
    """Checks access tokens of one realm and client locally: an RS256 signature by a key the realm publishes,
    `iss`, `azp`, `typ: Bearer`, `sub`, and `exp` with LEEWAY_SECONDS of leeway.

    Tokens already verified are remembered by the digest of the token (at most CACHE_SIZE of them, the oldest
    forgotten first) with the key that verified them: a token seen again is answered from there while that same
    key is still one the realm publishes (so GATEWAY_KEYS_MAX_AGE holds for it too), and `exp` is checked each time.
    """

    CACHE_SIZE = 4096

    def __init__(self, settings, keys, clock=time.time, ended=None):
        self.issuer = settings.issuer
        self.client_id = settings.client_id
        self.keys = keys
        self.clock = clock  # the tests set the clock forward instead of waiting for tokens to expire
        self.ended = ended  # the ended sessions (gateway/revocations.py): a token of one is refused
        self._verified = {}  # token digest -> (claims, kid, key)
        self._lock = threading.Lock()

    def verify(self, token):
        """The claims of a valid access token; else InvalidAccessToken (ExpiredAccessToken once expired)."""
        digest = hashlib.blake2b(token.encode(errors="surrogatepass"), digest_size=16).digest()
        known = self._verified.get(digest)
        if known is not None and self.keys.get(known[1]) is known[2]:
            claims = known[0]
        else:
            claims, kid, key = self._verify_signed(token)
            if self.ended is not None:
                self.ended.learn(claims)
            with self._lock:
                if len(self._verified) >= self.CACHE_SIZE:
                    del self._verified[next(iter(self._verified))]
                self._verified[digest] = (claims, kid, key)
        if claims["exp"] + LEEWAY_SECONDS < self.clock():
            raise ExpiredAccessToken("expired")
        if self.ended is not None and self.ended.ended(claims):
            raise InvalidAccessToken("its session has ended")
        return claims

    def _verify_signed(self, token):
        claims, kid, key = read_signed(token, self.keys, InvalidAccessToken)
        if claims.get("iss") != self.issuer:
            raise InvalidAccessToken("another issuer")
        if not isinstance(claims.get("sub"), str) or claims.get("typ") != "Bearer":
            raise InvalidAccessToken("not an access token")
        if claims.get("azp") != self.client_id:
            raise InvalidAccessToken("issued to another client")
        for name in ("exp", "nbf"):
            value = claims.get(name, 0 if name == "nbf" else None)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidAccessToken(f"no usable {name}")
        if claims.get("nbf", 0) > self.clock() + LEEWAY_SECONDS:
            raise InvalidAccessToken("not valid yet")
        return claims, kid, key

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


def same_text(given, expected):
    """Whether two strings are equal, compared in constant time (any characters, lone surrogates included)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _access_token_hash(access_token):
    """OpenID Connect's `at_hash` of an RS256 access token: the left half of its SHA-256, base64url."""
    digest = hashlib.sha256(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


class IdTokens:
    """Checks the ID token of an authorization-code login (BFF mode) locally: an RS256 signature by a key the realm
    publishes, `iss`, `aud` naming this client (and `azp` when it names others too), `typ: ID`, `sub`, `exp` with
    LEEWAY_SECONDS of leeway, the `nonce` the login was started with, and `at_hash` binding it to the access token
    of the same answer. Every check is required: a claim that is missing fails it."""

    def __init__(self, settings, keys, clock=time.time):
        self.issuer = settings.issuer
        self.client_id = settings.client_id
        self.keys = keys
        self.clock = clock

    def verify(self, token, nonce, access_token):
        """The claims of a valid ID token for this login; else InvalidIdToken (a `login failed`)."""
        claims, _, _ = read_signed(token, self.keys, lambda reason: InvalidIdToken(f"ID token: {reason}"))
        if claims.get("iss") != self.issuer:
            raise InvalidIdToken("ID token: another issuer")
        self._check(claims, nonce, access_token)
        return claims

    def _check(self, claims, nonce, access_token):
        if not isinstance(claims, dict) or claims.get("typ") != "ID" or not isinstance(claims.get("sub"), str):
            raise InvalidIdToken("ID token: not an ID token")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != self.client_id):
            raise InvalidIdToken("ID token: issued to another client")
        expires = claims.get("exp")
        if (not isinstance(expires, (int, float)) or isinstance(expires, bool)
                or expires + LEEWAY_SECONDS < self.clock()):
            raise InvalidIdToken("ID token: expired or without expiry")
        if not isinstance(claims.get("nonce"), str) or not same_text(claims["nonce"], nonce):
            raise InvalidIdToken("ID token: not the nonce this login was started with")
        at_hash = claims.get("at_hash")
        if not isinstance(at_hash, str) or not same_text(at_hash, _access_token_hash(access_token)):
            raise InvalidIdToken("ID token: at_hash does not match the access token")


BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_AGE = 300  # seconds a logout token's `iat` may lie in the past (Keycloak's live 120 s)


class LogoutTokens:
    """Checks a logout token of OpenID Connect Back-Channel Logout 1.0 locally: an RS256 signature by a key the realm
    publishes, header `typ` `logout+jwt` when present, `iss`, `aud` naming this client, `iat` recent, `exp` not
    passed (LEEWAY_SECONDS of leeway for both), the back-channel logout event, `sid` or `sub`, a `jti`, no
    `nonce`. (Whether the `jti` was seen before is the receiver's business: it needs the store.)"""

    def __init__(self, settings, keys, clock=time.time):
        self.issuer = settings.issuer
        self.client_id = settings.client_id
        self.keys = keys
        self.clock = clock

    def verify(self, token):
        """The claims of a valid logout token; else InvalidLogoutToken naming the check that failed."""
        claims, _, _ = read_signed(token, self.keys, InvalidLogoutToken, typ="logout+jwt")
        now = self.clock()
        audience = claims.get("aud")
        events = claims.get("events")
        if claims.get("iss") != self.issuer:
            raise InvalidLogoutToken("another issuer")
        if self.client_id not in (audience if isinstance(audience, list) else [audience]):
            raise InvalidLogoutToken("issued to another client")
        for name in ("iat", "exp"):
            if not isinstance(claims.get(name), (int, float)) or isinstance(claims.get(name), bool):
                raise InvalidLogoutToken(f"no usable {name}")
        if not now - LOGOUT_TOKEN_AGE - LEEWAY_SECONDS <= claims["iat"] <= now + LEEWAY_SECONDS:
            raise InvalidLogoutToken("iat not recent")
        if claims["exp"] + LEEWAY_SECONDS < now:
            raise InvalidLogoutToken("expired")
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_LOGOUT_EVENT), dict):
            raise InvalidLogoutToken("no back-channel logout event")
        named = [name for name in ("sid", "sub") if name in claims]
        if not named or any(not isinstance(claims[name], str) or not claims[name] for name in named):
            raise InvalidLogoutToken("neither sid nor sub, or one that is not a string")
        if "nonce" in claims:
            raise InvalidLogoutToken("a nonce, as in an ID token")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise InvalidLogoutToken("no jti")
        return claims
