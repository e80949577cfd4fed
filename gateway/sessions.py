"""BFF sessions: the server-side record behind the opaque `__Host-edm-session` cookie, the single-use login
attempts behind `state`, and the store that every gateway process shares.

    SessionStore        bytes by key, each with a time to live; single-use reads; short leases
    ├── HostStore       SQLite (WAL) in a per-user 0700 directory: every worker process of one host
    └── RedisStore      the gateway's shared Redis (GATEWAY_REDIS_URL, gateway/store.py): every process of every host

`build_store()` picks one; `Sessions` keeps logins and sessions in it. Both stores answer the same six calls, so
what is true of one (tests/test_sessions.py runs every test on both) is true of the other.

What GATEWAY_SESSION_SECRET protects (two keys derived from it with HKDF-SHA256):
- store keys are HMACs of the cookie value, of `state` and of the login cookie, never the values themselves: a
  copy of the store (a Redis dump, the host's file) holds nothing that a browser could present;
- every record is sealed with AES-256-GCM, its store key as associated data: the store holds no readable token,
  and a record can neither be altered nor moved under another key. Records sealed with another secret read as
  absent, so changing the secret logs everybody out.

Refresh once: a session's access token is refreshed only by the request that holds the session's lease (a key
set only if absent, with an expiry); the others wait for the record to change, then use the new token. The
lease lives in the store, so this holds across the worker processes of a host and, with Redis, across hosts.
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.config import ConfigError
from gateway.errors import (
    AccountDisabled,
    InvalidRefreshToken,
    LoginFailed,
    NotLoggedIn,
    SessionEnded,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.store import translated

log = logging.getLogger(__name__)

LOGIN_SECONDS = 1800  # a login may take as long on Keycloak's page as Keycloak allows by default (30 minutes)
REFRESH_MARGIN = 30.0  # refresh an access token this long before it expires (at most a fifth of its lifetime)
PURGE_INTERVAL = 60.0  # seconds between sweeps of expired entries from the host's file, per process


class HostStore:
    """Entries in one SQLite file (WAL mode) that every worker process of the host opens; each thread has its own
    connection, opened on first use (so none crosses gunicorn's fork). Expired entries are swept now and then."""

    FILE = "sessions.sqlite3"

    def __init__(self, directory, timeout=5.0, clock=time.time):
        self.directory = directory
        self.path = os.path.join(directory, self.FILE)
        self.timeout = timeout
        self.clock = clock
        self._local = threading.local()
        self._swept_at = 0.0
        self._connect().close()  # now: a directory or file that cannot be used stops the start

    def _connect(self):
        """A connection to the file, made (with its directory and table) if a temp-file cleaner removed it."""
        with self._translated("open"):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise ConfigError(f"session directory {self.directory} (under XDG_RUNTIME_DIR or TMPDIR) must be a "
                                  "directory of this user, mode 0700")
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for sessions, no fsync per write
            db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, "
                       "expires REAL NOT NULL) WITHOUT ROWID")
            db.execute("CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires)")
            return db

    @contextmanager
    def _translated(self, operation):
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"session file {operation}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"session file {operation}: {exc.strerror or exc}") from exc

    def _db(self):
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.db, local.pid = self._connect(), os.getpid()
        return local.db

    def _execute(self, operation, sql, parameters):
        with self._translated(operation):
            return self._db().execute(sql, parameters)

    def get(self, key):
        row = self._execute("read", "SELECT value FROM entries WHERE key = ? AND expires > ?",
                            (key, self.clock())).fetchone()
        return bytes(row[0]) if row else None

    def put(self, key, value, ttl, only_existing=False):
        """Store `value` for `ttl` seconds; with `only_existing`, only over a live entry (True if stored)."""
        now = self.clock()
        if only_existing:
            done = self._execute("write", "UPDATE entries SET value = ?, expires = ? WHERE key = ? AND expires > ?",
                                 (value, now + ttl, key, now))
        else:
            done = self._execute("write", "INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT "
                                 "(key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                                 (key, value, now + ttl))
        self._sweep(now)
        return done.rowcount == 1

    def take(self, key):
        """The live value of `key`, removed in the same step: of several callers, one gets it."""
        row = self._execute("take", "DELETE FROM entries WHERE key = ? RETURNING value, expires", (key,)).fetchone()
        return bytes(row[0]) if row and row[1] > self.clock() else None

    def delete(self, key):
        self._execute("delete", "DELETE FROM entries WHERE key = ?", (key,))

    def lease(self, key, ttl):
        """A token if the lease `key` was free (or had expired) and is now held for `ttl` seconds, else None."""
        token, now = secrets.token_hex(16), self.clock()
        done = self._execute("lease", "INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value, expires = excluded.expires "
                             "WHERE entries.expires <= ?", (key, token.encode(), now + ttl, now))
        return token if done.rowcount == 1 else None

    def release(self, key, token):
        """Give the lease back, if it is still the one `token` names."""
        self._execute("release", "DELETE FROM entries WHERE key = ? AND value = ?", (key, token.encode()))

    def ready(self):
        self._execute("ping", "SELECT 1", ())
        return True

    def _sweep(self, now):
        if now - self._swept_at >= PURGE_INTERVAL:
            self._swept_at = now
            self._execute("sweep", "DELETE FROM entries WHERE expires <= ?", (now,))


# Deletes a lease only while it still holds the caller's token (it may have expired and been taken by another).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class RedisStore:
    """Entries in Redis under `edm-gateway:bff:`, through the redis-py client of the gateway's shared store
    (`gateway/store.py`, GATEWAY_REDIS_URL); its failures are the store's StoreUnavailable."""

    PREFIX = "edm-gateway:bff:"

    def __init__(self, client):
        self.client = client
        self._release = client.register_script(_RELEASE)

    @staticmethod
    def _ms(seconds):
        return max(1, int(seconds * 1000))

    def get(self, key):
        with translated("get"):
            return self.client.get(self.PREFIX + key)

    def put(self, key, value, ttl, only_existing=False):
        with translated("set"):
            return bool(self.client.set(self.PREFIX + key, value, px=self._ms(ttl), xx=only_existing))

    def take(self, key):
        with translated("getdel"):
            return self.client.getdel(self.PREFIX + key)

    def delete(self, key):
        with translated("del"):
            self.client.delete(self.PREFIX + key)

    def lease(self, key, ttl):
        token = secrets.token_hex(16)
        with translated("set nx"):
            return token if self.client.set(self.PREFIX + key, token, nx=True, px=self._ms(ttl)) else None

    def release(self, key, token):
        with translated("release"):
            self._release(keys=[self.PREFIX + key], args=[token])

    def ready(self):
        with translated("ping"):
            return self.client.ping() is True


def build_store(settings, shared=None):
    """The session store: Redis through the gateway's shared store (`gateway.store.Store`, there when
    GATEWAY_REDIS_URL is set), otherwise the host's file that every worker process of the host shares."""
    if shared is not None:
        return RedisStore(shared.client)
    return HostStore(settings.session_dir, timeout=settings.timeout)


def _derive(secret, purpose):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret.encode())


class Sealer:
    """Store keys and sealed records, with keys derived from GATEWAY_SESSION_SECRET."""

    def __init__(self, secret):
        self._mac_key = _derive(secret, b"edm-gateway bff store keys")
        self._aead = AESGCM(_derive(secret, b"edm-gateway bff records"))

    def key(self, kind, value):
        """The store key of a cookie value, `state` or login binding: an HMAC, never the value itself."""
        digest = hmac.new(self._mac_key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
        return f"{kind}:{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"

    def seal(self, key, record):
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, json.dumps(record).encode(), key.encode())

    def open(self, key, sealed):
        """The record sealed under `key`, or None if it was sealed under another key or secret, or altered."""
        if not sealed or len(sealed) < 28:
            return None
        try:
            return json.loads(self._aead.decrypt(sealed[:12], sealed[12:], key.encode()))
        except (InvalidTag, ValueError):
            return None


def _urlsafe(size):
    return secrets.token_urlsafe(size)


def code_challenge(verifier):
    """PKCE's S256 challenge of a verifier (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Login:
    """A login started by /bff/login: what its callback needs, kept under its `state`."""

    binding: str  # the store key of the login cookie's value: the browser that started it
    nonce: str
    verifier: str
    return_url: str


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

    def expiring(self, now):
        """Whether the access token should be refreshed before it is used."""
        margin = min(REFRESH_MARGIN, self.access_lifetime / 5)
        return self.access_expires_at - now <= margin

    def with_tokens(self, tokens, now):
        """The session with the tokens of a grant made at `now`."""
        ends_at = now + tokens.refresh_expires_in if tokens.refresh_expires_in > 0 else self.ends_at
        return replace(self, claims=tokens.claims, access_token=tokens.access_token,
                       access_expires_at=now + tokens.expires_in, access_lifetime=tokens.expires_in,
                       refresh_token=tokens.refresh_token, ends_at=ends_at)


class Sessions:
    """Logins and sessions of the BFF mode, in `store`, sealed with the session secret."""

    def __init__(self, store, secret, timeout, clock=time.time):
        self.store = store
        self.sealer = Sealer(secret)
        self.timeout = timeout  # KEYCLOAK_TIMEOUT: how long a refresh may take
        self.clock = clock

    def begin_login(self, binding, return_url):
        """A new login of the browser whose login cookie is `binding`: (state, nonce, S256 code challenge)."""
        state, nonce, verifier = _urlsafe(32), _urlsafe(32), _urlsafe(64)
        login = Login(self.sealer.key("browser", binding), nonce, verifier, return_url)
        key = self.sealer.key("login", state)
        self.store.put(key, self.sealer.seal(key, asdict(login)), LOGIN_SECONDS)
        return state, nonce, code_challenge(verifier)

    def finish_login(self, state, binding):
        """The login that `state` names, if this browser started it; it can be finished once. LoginFailed otherwise."""
        if not state:
            raise LoginFailed("callback without state")
        key = self.sealer.key("login", state)
        record = self.sealer.open(key, self.store.get(key))
        if record is None:
            raise LoginFailed("unknown, expired or already used state")
        login = Login(**record)
        # Checked before the state is spent: another browser's request cannot use up this browser's login.
        if not binding or not hmac.compare_digest(login.binding, self.sealer.key("browser", binding)):
            raise LoginFailed("state of a login that another browser started")
        if self.store.take(key) is None:
            raise LoginFailed("state already used")  # by a concurrent callback with the same state
        return login

    def create(self, tokens, sid):
        """A new session for a completed login: (the cookie's value, the session)."""
        now = self.clock()
        session = Session(tokens.claims["sub"], sid, {}, "", 0.0, 0.0, "", 0.0).with_tokens(tokens, now)
        cookie = _urlsafe(32)
        key = self.sealer.key("session", cookie)
        self.store.put(key, self.sealer.seal(key, asdict(session)), session.ends_at - now)
        return cookie, session

    def _read(self, key):
        record = self.sealer.open(key, self.store.get(key))
        return Session(**record) if record is not None else None

    def find(self, cookie):
        """The session of a cookie value, as stored; NotLoggedIn if there is none (any more)."""
        session = self._read(self.sealer.key("session", cookie)) if cookie else None
        if session is None:
            raise NotLoggedIn("no session" if cookie else "no session cookie")
        return session

    def end(self, cookie):
        """Delete the session of a cookie value."""
        self.store.delete(self.sealer.key("session", cookie))

    def current(self, cookie, refresh, on_refresh=None):
        """The session of `cookie` with an access token that will live a while yet: refreshed with `refresh(refresh
        token)` first if it is about to expire, by one request of the session at a time across every process
        that shares the store. A session whose refresh Keycloak refuses is deleted (SessionEnded). `on_refresh(outcome,
        reason, claims)` hears of every refresh tried."""
        session = self.find(cookie)
        if not session.expiring(self.clock()):
            return session
        key = self.sealer.key("session", cookie)
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
            time.sleep(pause)
            pause = min(2 * pause, 0.05)
            session = self._read(key)
            if session is None:
                raise NotLoggedIn("session ended while another request refreshed it")
            if not session.expiring(self.clock()):
                return session  # another request of the session refreshed it
            if time.monotonic() > deadline:
                raise UpstreamTimeout("waited too long for another request's refresh of the session")

    def _refresh(self, key, refresh, on_refresh):
        session = self._read(key)  # again, under the lease: another request may have refreshed it just before
        if session is None:
            raise NotLoggedIn("session ended while waiting to refresh it")
        if not session.expiring(self.clock()):
            return session
        try:
            tokens = refresh(session.refresh_token)
        except (InvalidRefreshToken, AccountDisabled) as exc:
            self.store.delete(key)
            if on_refresh:
                on_refresh(SessionEnded.outcome, exc.reason, session.claims)
            raise SessionEnded(exc.reason) from None
        except UpstreamError as exc:
            if on_refresh:
                on_refresh(exc.outcome, exc.reason, session.claims)
            if session.access_expires_at - self.clock() > 1:
                log.warning("session refresh failed, its access token is used while it lasts: %s", exc.reason)
                return session
            raise
        now = self.clock()
        session = session.with_tokens(tokens, now)
        # Only over the live record: a logout that deleted it meanwhile must not be undone.
        if not self.store.put(key, self.sealer.seal(key, asdict(session)), session.ends_at - now, only_existing=True):
            raise NotLoggedIn("logged out while the session was refreshed")
        if on_refresh:
            on_refresh("success", "refresh grant", session.claims)
        return session
