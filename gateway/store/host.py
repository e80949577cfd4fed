"""The host's store: one SQLite file (WAL mode) that every worker process of the host opens, in a per-user 0700
directory. Each thread has its own connection, opened on first use (so none crosses gunicorn's fork); expired
entries are swept now and then."""

import fcntl
import os
import secrets
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager

from gateway.config import ConfigError
from gateway.errors import StoreUnavailable

SWEEP_SECONDS = 60.0  # between sweeps of expired entries, per process

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL) "
    "WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires)",
    # AUTOINCREMENT: an id is never handed out twice, so a reader's cursor never skips an entry
    "CREATE TABLE IF NOT EXISTS feeds (id INTEGER PRIMARY KEY AUTOINCREMENT, feed TEXT NOT NULL, "
    "value BLOB NOT NULL, expires REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS feeds_feed ON feeds (feed, id)",
)


class HostStore:
    """The store of one host's worker processes (`gateway.store` has the contract)."""

    FILE = "state.sqlite3"
    shared_across_hosts = False
    redis = None

    def __init__(self, directory, timeout=5.0, clock=time.time):
        self.directory = directory
        self.path = os.path.join(directory, self.FILE)
        self.timeout = timeout
        self.clock = clock
        self._local = threading.local()
        self._swept_at = 0.0
        self._connect().close()  # now: a directory or file that cannot be used stops the start

    def _connect(self):
        """A connection to the file, made (with its directory and tables) if a temp-file cleaner removed it."""
        with self._translated("open"):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise ConfigError(f"state directory {self.directory} (under XDG_RUNTIME_DIR or TMPDIR) must be a "
                                  "directory of this user, mode 0700")
            self._create_file()
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for this state, no fsync per write
            for statement in _SCHEMA:
                db.execute(statement)
            return db

    def _create_file(self):
        """The database file, made if it is missing, one process at a time. A new file never meets the write-ahead
        log of a removed one: SQLite would replay that log into it and find the file malformed."""
        lock = os.open(os.path.join(self.directory, "create.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(self.path):
                for leftover in (self.path + "-wal", self.path + "-shm"):
                    try:
                        os.unlink(leftover)
                    except FileNotFoundError:
                        pass
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        finally:
            os.close(lock)

    @contextmanager
    def _translated(self, operation):
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"host store {operation}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"host store {operation}: {exc.strerror or exc}") from exc

    def _db(self):
        local = self._local
        # A file removed by a temp-file cleaner is made again, not written on unlinked (one stat per call).
        if getattr(local, "pid", None) != os.getpid() or not os.path.exists(self.path):
            local.db, local.pid = self._connect(), os.getpid()
        return local.db

    def _execute(self, operation, sql, parameters=()):
        with self._translated(operation):
            return self._db().execute(sql, parameters)

    def get(self, key):
        row = self._execute("read", "SELECT value FROM entries WHERE key = ? AND expires > ?",
                            (key, self.clock())).fetchone()
        return bytes(row[0]) if row else None

    def put(self, key, value, ttl, only_existing=False):
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

    def put_new(self, key, value, ttl):
        now = self.clock()
        done = self._execute("write", "INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) "
                             "DO UPDATE SET value = excluded.value, expires = excluded.expires "
                             "WHERE entries.expires <= ?", (key, value, now + ttl, now))
        self._sweep(now)
        return done.rowcount == 1

    def take(self, key):
        row = self._execute("take", "DELETE FROM entries WHERE key = ? RETURNING value, expires", (key,)).fetchone()
        return bytes(row[0]) if row and row[1] > self.clock() else None

    def delete(self, key):
        self._execute("delete", "DELETE FROM entries WHERE key = ?", (key,))

    def lease(self, key, ttl):
        token = secrets.token_hex(16)
        return token if self.put_new(key, token.encode(), ttl) else None

    def renew(self, key, token, ttl):
        now = self.clock()
        done = self._execute("renew", "UPDATE entries SET expires = ? WHERE key = ? AND value = ? AND expires > ?",
                             (now + ttl, key, token.encode(), now))
        return done.rowcount == 1

    def release(self, key, token):
        self._execute("release", "DELETE FROM entries WHERE key = ? AND value = ?", (key, token.encode()))

    def append(self, feed, value, retention):
        now = self.clock()
        self._execute("append", "INSERT INTO feeds (feed, value, expires) VALUES (?, ?, ?)",
                      (feed, value, now + retention))
        self._sweep(now)

    def since(self, feed, cursor):
        rows = self._execute("feed read", "SELECT id, value FROM feeds WHERE feed = ? AND id > ? AND expires > ? "
                             "ORDER BY id", (feed, cursor or 0, self.clock())).fetchall()
        return (rows[-1][0] if rows else cursor), [bytes(value) for _, value in rows]

    def ready(self):
        """Whether the file can be read now."""
        try:
            self._execute("ping", "SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def _sweep(self, now):
        if now - self._swept_at >= SWEEP_SECONDS:
            self._swept_at = now
            self._execute("sweep", "DELETE FROM entries WHERE expires <= ?", (now,))
            self._execute("sweep", "DELETE FROM feeds WHERE expires <= ?", (now,))
