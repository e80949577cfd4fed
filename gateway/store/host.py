"""The host's store: one SQLite file (WAL mode) that every worker process of the host opens, in a per-user 0700
directory. Each process has one connection, opened on first use (so none crosses gunicorn's fork), that its threads
take in turn: a statement takes microseconds, and a connection of its own per thread would cost more than the wait
(its page cache emptied by every other connection's write, and a writer that finds the file locked sleeps 1, 2,
5... ms in SQLite's busy handler, where a thread waiting for the lock is woken as it is released).

A file that another process holds locked for writing (another worker mid-write, a backup, an operator's sqlite3
shell) is waited for with this process's lock let go between tries: the process's other threads, readers above all
(WAL lets them read meanwhile), are not held up behind one waiting writer, and every operation ends within
`timeout`, served or StoreUnavailable. A file removed or replaced under the processes is opened anew by each of them
(one stat per operation tells), so they never go on writing to one that the others no longer read. Expired entries
are swept now and then."""

import fcntl
import os
import secrets
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager, suppress

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
# A new file's feed ids start at the microseconds of the epoch, not at 1: a file removed and made again (a temp-file
# cleaner) hands out ids above every cursor that readers kept from the one before, which gave out one id per entry
# from its own creation on, so none of the new file's entries (an ended session) is skipped.
_FIRST_FEED_ID = ("INSERT INTO sqlite_sequence (name, seq) SELECT 'feeds', ? "
                  "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'feeds')")


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
        self._lock = threading.Lock()  # the connection's
        self._db, self._pid, self._file = None, None, None
        self._swept_at = 0.0  # (read and set without the lock: two threads may both sweep, which does no harm)
        with self._translated("open"):  # now: a directory or file that cannot be used stops the start
            self._connect(busy_timeout=timeout)[0].close()

    def _connect(self, busy_timeout=0.0):
        """(connection, the identity of its file): the file made (with its directory and tables) if a temp-file
        cleaner removed it. The identity is read before the file is opened, so that a file replaced in between shows
        as another one at the next operation. The busy timeout is 0 once started: `_locked` waits for a locked file
        itself."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(f"state directory {self.directory} (under XDG_RUNTIME_DIR or TMPDIR) must be a "
                              "directory of this user, mode 0700")
        self._create_file()
        found = os.stat(self.path)
        db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable enough for this state, no fsync per write
            for statement in _SCHEMA:
                db.execute(statement)
            if db.execute("SELECT 1 FROM sqlite_sequence WHERE name = 'feeds'").fetchone() is None:  # a new file
                db.execute(_FIRST_FEED_ID, (int(time.time() * 1_000_000),))
        except BaseException:
            db.close()
            raise
        return db, (found.st_dev, found.st_ino)

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

    def _run(self, operation, sql, parameters=(), rows=False):
        """The statement's rows (`rows`), else the count of rows it changed; every row fetched under the lock (a
        statement with RETURNING commits only once its last row is read)."""

        def statement(db):
            cursor = db.execute(sql, parameters)
            return cursor.fetchall() if rows else cursor.rowcount

        return self._locked(operation, statement)

    def _locked(self, operation, work):
        """`work(connection)` with this process's lock held, within `timeout`. A file that another process has
        locked (SQLITE_BUSY: nothing done) is tried again after a pause of 1, 2, 4... up to 10 ms, with the lock let
        go in between."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise StoreUnavailable(f"host store {operation}: the file stayed locked for {self.timeout} s")
            try:
                with self._translated(operation):
                    try:
                        return work(self._connection())
                    except sqlite3.OperationalError as exc:
                        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + pause > deadline:
                            raise
            finally:
                self._lock.release()
            time.sleep(pause)
            pause = min(2 * pause, 0.01)

    def _connection(self):
        """This process's connection (the lock held). A file removed (a temp-file cleaner) or replaced is opened
        anew, never written on where the other processes no longer read (one stat per call); a directory made
        unusable since the start is StoreUnavailable, as a file that cannot be read is."""
        try:
            found = os.stat(self.path)
            found = (found.st_dev, found.st_ino)
        except FileNotFoundError:
            found = None
        if self._db is None or self._pid != os.getpid() or found != self._file:  # (a missing file: None)
            if self._db is not None and self._pid == os.getpid():
                with suppress(sqlite3.Error):
                    self._db.close()
            self._db = None
            try:
                db, identity = self._connect()
            except ConfigError as exc:
                raise StoreUnavailable(f"host store open: {exc}") from exc
            self._db, self._pid, self._file = db, os.getpid(), identity
        return self._db

    def get(self, key):
        rows = self._run("read", "SELECT value FROM entries WHERE key = ? AND expires > ?", (key, self.clock()), True)
        return bytes(rows[0][0]) if rows else None

    def put(self, key, value, ttl, only_existing=False):
        now = self.clock()
        if only_existing:
            done = self._run("write", "UPDATE entries SET value = ?, expires = ? WHERE key = ? AND expires > ?",
                             (value, now + ttl, key, now))
        else:
            done = self._run("write", "INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT "
                             "(key) DO UPDATE SET value = excluded.value, expires = excluded.expires",
                             (key, value, now + ttl))
        self._sweep(now)
        return done == 1

    def put_many(self, entries):
        now = self.clock()
        rows = [(key, value, now + ttl) for key, value, ttl in entries]

        def transaction(db):
            db.execute("BEGIN IMMEDIATE")  # (a file locked elsewhere: nothing begun, tried again)
            try:
                db.executemany("INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO "
                               "UPDATE SET value = excluded.value, expires = excluded.expires", rows)
                db.execute("COMMIT")
            except BaseException:
                # Never leave the process's one connection inside a transaction: every later write would join it.
                self._db = None
                with suppress(sqlite3.Error):
                    db.close()  # (closing rolls back what is not committed)
                raise

        self._locked("write", transaction)
        self._sweep(now)

    def put_new(self, key, value, ttl):
        now = self.clock()
        done = self._run("write", "INSERT INTO entries (key, value, expires) VALUES (?, ?, ?) ON CONFLICT (key) "
                         "DO UPDATE SET value = excluded.value, expires = excluded.expires "
                         "WHERE entries.expires <= ?", (key, value, now + ttl, now))
        self._sweep(now)
        return done == 1

    def take(self, key):
        rows = self._run("take", "DELETE FROM entries WHERE key = ? RETURNING value, expires", (key,), True)
        return bytes(rows[0][0]) if rows and rows[0][1] > self.clock() else None

    def delete(self, key):
        self._run("delete", "DELETE FROM entries WHERE key = ?", (key,))

    def lease(self, key, ttl):
        token = secrets.token_hex(16)
        return token if self.put_new(key, token.encode(), ttl) else None

    def renew(self, key, token, ttl):
        now = self.clock()
        done = self._run("renew", "UPDATE entries SET expires = ? WHERE key = ? AND value = ? AND expires > ?",
                         (now + ttl, key, token.encode(), now))
        return done == 1

    def release(self, key, token):
        self._run("release", "DELETE FROM entries WHERE key = ? AND value = ?", (key, token.encode()))

    def append(self, feed, value, retention):
        now = self.clock()
        self._run("append", "INSERT INTO feeds (feed, value, expires) VALUES (?, ?, ?)",
                  (feed, value, now + retention))
        self._sweep(now)

    def since(self, feed, cursor):
        rows = self._run("feed read", "SELECT id, value FROM feeds WHERE feed = ? AND id > ? AND expires > ? "
                         "ORDER BY id", (feed, cursor or 0, self.clock()), True)
        return (rows[-1][0] if rows else cursor), [bytes(value) for _, value in rows]

    def ready(self):
        """Whether the file can be read now."""
        try:
            self._run("ping", "SELECT 1")
        except StoreUnavailable:
            return False
        return True

    def _sweep(self, now):
        """Now and then, the expired entries deleted: housekeeping, whose failure never fails the write before it
        (the next sweep is a minute later)."""
        if now - self._swept_at >= SWEEP_SECONDS:
            self._swept_at = now
            with suppress(StoreUnavailable):
                self._run("sweep", "DELETE FROM entries WHERE expires <= ?", (now,))
                self._run("sweep", "DELETE FROM feeds WHERE expires <= ?", (now,))
