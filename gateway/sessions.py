"""BFF sessions: the server-side record behind the opaque `__Host-edm-session` cookie, in the gateway's store
(`gateway/store/`), sealed (`gateway/sealing.py`) under an HMAC of the cookie value.

Refresh once: a session's access token is refreshed only by the request that holds the session's lease (a key set
only if absent, with an expiry), so across the worker processes of a host and, with Redis, across hosts,
Keycloak sees one refresh grant per session however many requests arrive together. Requests that find the lease
taken go on at once with the access token they have when it still lives a while (WAIT_MARGIN); only those whose
token is about to die wait for the new one. A refresh that fails for want of Keycloak is remembered in the
record, so the next requests do not each try again at once (RETRY_SECONDS).

Ending: a session ends when its browser logs out or logs in again, when Keycloak refuses its refresh, and when
its Keycloak session ends (`end_sid`, from a back-channel logout or a session ended through the gateway): each
`sid:` index entry lists the session records of one Keycloak session, so all of them can be deleted.
"""

import logging
import secrets
import time
from dataclasses import asdict, dataclass, replace

from gateway.errors import (
    AccountDisabled,
    InvalidRefreshToken,
    NotLoggedIn,
    SessionEnded,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.sealing import Sealer

log = logging.getLogger(__name__)

REFRESH_MARGIN = 30.0  # refresh an access token this long before it expires (at most a fifth of its lifetime)
WAIT_MARGIN = 5.0  # a request whose access token lives longer than this never waits for another's refresh
RETRY_SECONDS = 5.0  # after a refresh failed for want of Keycloak, the next try waits this long


@dataclass(frozen=True)
class Session:
    """A logged-in browser's session. Times are the gateway's clock (seconds since the epoch)."""

    sub: str
    sid: str  # Keycloak's session id: the `sid` of /bff/logout
    claims: dict  # the verified access token's claims (/bff/user's `user`)
    access_token: str
    access_expires_at: float
    access_lifetime: float
    refresh_token: str
    ends_at: float  # when Keycloak's session ends unless a refresh extends it (refresh_expires_in)
    retry_at: float = 0.0  # a refresh failed for want of Keycloak: not again before this

    def expiring(self, now):
        """Whether the access token should be refreshed before it is used."""
        margin = min(REFRESH_MARGIN, self.access_lifetime / 5)
        return self.access_expires_at - now <= margin

    def due(self, now):
        """Whether to refresh now: expiring, and not just after a refresh that failed while the token still lives."""
        return self.expiring(now) and not (self.retry_at > now and self.lives(now, 1.0))

    def lives(self, now, margin):
        """Whether the access token still lives longer than `margin` seconds."""
        return self.access_expires_at - now > margin

    def with_tokens(self, tokens, now):
        """The session with the tokens of a grant made at `now`."""
        ends_at = now + tokens.refresh_expires_in if tokens.refresh_expires_in > 0 else self.ends_at
        return replace(self, claims=tokens.claims, access_token=tokens.access_token,
                       access_expires_at=now + tokens.expires_in, access_lifetime=tokens.expires_in,
                       refresh_token=tokens.refresh_token, ends_at=ends_at, retry_at=0.0)


class Sessions:
    """The BFF sessions in `store`, sealed with the session secret (and read with the previous ones)."""

    def __init__(self, store, secret, timeout, previous_secrets=(), clock=time.time, ended=None):
        self.store = store
        self.sealer = Sealer(secret, "bff", previous_secrets)
        self.timeout = timeout  # KEYCLOAK_TIMEOUT: how long a refresh may take
        self.clock = clock
        self.ended = ended  # ended(session) -> whether its Keycloak session has ended (gateway/revocations.py)

    def create(self, tokens, sid):
        """A new session for a completed login: (the cookie's value, the session)."""
        now = self.clock()
        session = Session(tokens.claims["sub"], sid, {}, "", 0.0, 0.0, "", 0.0).with_tokens(tokens, now)
        cookie = secrets.token_urlsafe(32)
        key = self.sealer.key("session", cookie)
        self._write(key, session, now)
        self._index(sid, key, session.ends_at - now)
        return cookie, session

    def _write(self, key, session, now, only_existing=False):
        return self.store.put(key, self.sealer.seal(key, asdict(session)), session.ends_at - now,
                              only_existing=only_existing)

    def _index(self, sid, key, ttl):
        # Read, add, write: two logins of one Keycloak session at the same instant may keep one key of the two;
        # the ended-session check at every use (`find`) still refuses the other.
        index = self.sealer.key("sid", sid)
        keys = [k for k in self.sealer.open(index, self.store.get(index)) or [] if k != key]
        self.store.put(index, self.sealer.seal(index, [*keys, key][-16:]), max(ttl, 1.0))

    def _locate(self, cookie):
        """(store key, session) of a cookie value, under the current secret or a previous one; (None, None)."""
        for key in self.sealer.keys("session", cookie) if cookie else ():
            record = self.sealer.open(key, self.store.get(key))
            if record is not None:
                return key, Session(**record)
        return None, None

    def find(self, cookie):
        """The session of a cookie value, as stored; NotLoggedIn if there is none (any more), SessionEnded if its
        Keycloak session has ended (the record is deleted then)."""
        return self._find(cookie)[1]

    def _find(self, cookie):
        key, session = self._locate(cookie)
        if session is None:
            raise NotLoggedIn("no session" if cookie else "no session cookie")
        if self.ended is not None and self.ended(session):
            self.store.delete(key)
            raise SessionEnded("its Keycloak session has ended")
        return key, session

    def end(self, cookie):
        """Delete the session of a cookie value (the session, or None if there was none)."""
        key, session = self._locate(cookie)
        if key is not None:
            self.store.delete(key)
        return session

    def end_sid(self, sid):
        """Delete every session of the Keycloak session `sid`."""
        for index in self.sealer.keys("sid", sid):
            for key in self.sealer.open(index, self.store.take(index)) or []:
                self.store.delete(key)

    def current(self, cookie, refresh, on_refresh=None):
        """The session of `cookie` with an access token that will live a while yet: refreshed with `refresh(refresh
        token)` first if it is about to expire, by one request of the session at a time across every process
        that shares the store. A session whose refresh Keycloak refuses is deleted (SessionEnded). `on_refresh(outcome,
        reason, session)` hears of every refresh tried."""
        key, session = self._find(cookie)
        now = self.clock()
        if not session.due(now):
            return session
        lease_key = "refresh:" + key
        lease_seconds = 2 * self.timeout + 1  # a refresh takes at most `timeout`; a dead holder's lease runs out
        deadline = time.monotonic() + lease_seconds + self.timeout
        pause = 0.005
        while True:
            token = self.store.lease(lease_key, lease_seconds)
            if token is not None:
                try:
                    return self._refresh(key, refresh, on_refresh)
                finally:
                    self.store.release(lease_key, token)
            if session.lives(self.clock(), WAIT_MARGIN):
                return session  # another request refreshes it; this one's token does for now
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
            key, session = self._find(cookie)
            if not session.due(self.clock()):
                return session  # another request of the session refreshed it (or tried, and Keycloak is away)
            if time.monotonic() > deadline:
                raise UpstreamTimeout("waited too long for another request's refresh of the session")

    def _refresh(self, key, refresh, on_refresh):
        record = self.sealer.open(key, self.store.get(key))  # again, under the lease: another may have just done it
        if record is None:
            raise NotLoggedIn("session ended while waiting to refresh it")
        session, now = Session(**record), self.clock()
        if not session.due(now):
            return session
        try:
            tokens = refresh(session.refresh_token)
        except (InvalidRefreshToken, AccountDisabled) as exc:
            self.store.delete(key)
            if on_refresh:
                on_refresh(SessionEnded.outcome, exc.reason, session)
            raise SessionEnded(exc.reason) from None
        except UpstreamError as exc:
            if on_refresh:
                on_refresh(exc.outcome, exc.reason, session)
            now = self.clock()
            self._write(key, replace(session, retry_at=now + RETRY_SECONDS), now, only_existing=True)
            if session.lives(now, 1.0):
                log.warning("session refresh failed, its access token is used while it lasts: %s", exc.reason)
                return session
            raise
        now = self.clock()
        session = session.with_tokens(tokens, now)
        # Only over the live record: a logout that deleted it meanwhile must not be undone.
        if not self._write(key, session, now, only_existing=True):
            raise NotLoggedIn("logged out while the session was refreshed")
        self._index(session.sid, key, session.ends_at - now)  # the Keycloak session's index lives as long as it
        if on_refresh:
            on_refresh("success", "refresh grant", session)
        return session
