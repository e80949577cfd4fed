"""Ended sessions, on every gateway that shares the store: what Keycloak ends, the gateway ends.

A Keycloak session ends (a back-channel logout, the gateway's own logouts, a session ended by its user, a reused
refresh token); from then on every access token that carries its `sid` is refused, within a second, by every
gateway on the store, on every surface that verifies tokens (`gateway/tokens.py`) and in BFF mode. With only a
`sub`, every session of that user begun before the end is refused.

The check costs no call to Keycloak and, on the request path, no call to the store either: each process keeps a
mirror of the store's `ended` feed and reads what was added since, at most every POLL_SECONDS, by whichever
request finds it due. A mirror older than STALE_SECONDS (the store could not be read) is not trusted: the request
then waits for the store, and if the store cannot answer either it is the store's 503, never a check skipped.

A record lives as long as an access token of the ended session can: until the longest access-token lifetime any
gateway on the store has seen (at least DEFAULT_LIFESPAN; kept in the store under LIFESPAN_KEY, so that a process
that has verified no token yet writes records as long as the others), plus the verification's leeway, from the end;
no longer. The feed itself keeps records for FEED_RETENTION, the longest a record can live: each record carries its
own end, so that a shorter one never trims a longer one away.
"""

import json
import logging
import os
import threading
import time

from gateway.errors import StoreUnavailable
from gateway.tokens import LEEWAY_SECONDS

log = logging.getLogger(__name__)

FEED = "ended"
POLL_SECONDS = 0.25
STALE_SECONDS = 1.0
DEFAULT_LIFESPAN = 300  # the realm's access-token lifespan until a token says otherwise
MAX_LIFESPAN = 86400  # a longer lifetime is no token's: ignored
LIFESPAN_KEY = "ended:lifespan"
LIFESPAN_KEPT = 30 * 86400  # how long the store remembers the longest lifetime after it was last written
FEED_RETENTION = MAX_LIFESPAN + LEEWAY_SECONDS


class EndedSessions:
    """The ended sessions of the store's feed, mirrored in this process; `end_sid`/`end_sub` add to it."""

    def __init__(self, store, clock=time.time, monotonic=time.monotonic):
        self.store = store
        self.clock = clock
        self.monotonic = monotonic
        self.lifespan = DEFAULT_LIFESPAN
        self.listeners = []  # called with each sid ended here (BFF mode deletes its sessions)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._sids = {}  # sid -> until (epoch seconds)
        self._subs = {}  # sub -> (ended at, until)
        self._cursor = None
        self._read_at = None  # monotonic time of the last complete read of the feed
        self._pid = os.getpid()

    def learn(self, claims):
        """Note an access token's lifetime: a record must outlive the longest one any gateway has seen."""
        lifetime = claims.get("exp", 0) - claims.get("iat", 0)
        if isinstance(lifetime, (int, float)) and self.lifespan < lifetime <= MAX_LIFESPAN:
            self.lifespan = lifetime
            try:
                self._share_lifespan()
            except StoreUnavailable as exc:  # the next end of a session writes it
                log.warning("the longest access-token lifetime not written to the store: %s", exc.reason)

    def _share_lifespan(self):
        """The longest lifetime known here or in the store; the store told of it if this process knows longer."""
        stored = self.store.get(LIFESPAN_KEY)
        try:
            shared = float(stored) if stored is not None else 0.0
        except ValueError:
            shared = 0.0
        if self.lifespan > shared:
            self.store.put(LIFESPAN_KEY, str(self.lifespan).encode(), LIFESPAN_KEPT)
        return max(self.lifespan, min(shared, MAX_LIFESPAN))

    def end_sid(self, sid, reason):
        """End the Keycloak session `sid` on every gateway of the store, and at once in this process."""
        self._append({"sid": sid})
        log.info("session ended: %s", reason)
        for listener in self.listeners:
            listener(sid)

    def end_sub(self, sub, reason, at=None):
        """End every session of the user `sub` begun before `at` (now, or earlier: a logout token's `iat`)."""
        now = self.clock()
        self._append({"sub": sub, "at": now if at is None else min(float(at), now)})
        log.info("every session of a user ended: %s", reason)

    def _append(self, record):
        lifespan = self._share_lifespan()
        now = self.clock()
        record["until"] = now + lifespan + LEEWAY_SECONDS
        self.store.append(FEED, json.dumps(record).encode(), FEED_RETENTION)
        with self._lock:
            self._apply(record, now)

    def ended(self, claims):
        """Whether the session of a verified token's claims has ended."""
        self._fresh()
        sid = claims.get("sid")
        if sid is not None and sid in self._sids:
            return True
        ended = self._subs.get(claims.get("sub"))
        if ended is None:
            return False
        begun = claims.get("auth_time", claims.get("iat"))
        return not isinstance(begun, (int, float)) or begun <= ended[0]

    def _fresh(self):
        if os.getpid() != self._pid:  # forked: this process reads the feed for itself
            with self._lock:
                self._reset()
        read_at = self._read_at
        age = float("inf") if read_at is None else self.monotonic() - read_at
        if age < POLL_SECONDS:
            return
        if self._lock.acquire(blocking=age >= STALE_SECONDS):
            try:
                if self._read_at == read_at:  # not read by another thread while this one waited
                    self._read(strict=age >= STALE_SECONDS)
            finally:
                self._lock.release()

    def _read(self, strict):
        try:
            cursor, values = self.store.since(FEED, self._cursor)
        except StoreUnavailable as exc:
            if strict:
                raise
            log.warning("ended sessions not read, the last read is used for now: %s", exc.reason)
            return
        now = self.clock()
        for value in values:
            try:
                record = json.loads(value)
                self._apply(record, now)
            except (ValueError, TypeError, KeyError):
                log.warning("ignoring an unreadable ended-session record")
        self._sids = {sid: until for sid, until in self._sids.items() if until > now}
        self._subs = {sub: ended for sub, ended in self._subs.items() if ended[1] > now}
        self._cursor, self._read_at = cursor, self.monotonic()

    def _apply(self, record, now):
        until = float(record["until"])
        if until <= now:
            return
        if "sid" in record:
            self._sids[str(record["sid"])] = max(until, self._sids.get(record["sid"], 0))
        elif "sub" in record:
            at = float(record["at"])
            previous = self._subs.get(record["sub"], (0, 0))
            self._subs[str(record["sub"])] = (max(at, previous[0]), max(until, previous[1]))
