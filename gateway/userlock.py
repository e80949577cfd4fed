"""At most one password grant per username in flight, across threads, worker processes and (with Redis) hosts;
and a bound on how many logins of one username may wait for that turn.

Keycloak 26 refuses a grant while another grant of the same user is in flight, in the words of a wrong
password (`shared/KEYCLOAK.md`), so the gateway gives each username one turn at a time:
- between the threads of a process, an exact per-username queue (first come, first served; no polling), whose
  entries exist only while someone holds or waits for them;
- between the processes of the host (`UsernameTurns`), `fcntl.flock` on one of 65,536 lock files (released by the
  kernel if a worker dies), chosen by a keyed hash of the username. The key is made once per lock directory and
  readable only by its owner, so nobody can pick a username that shares another's file and hold it to keep that
  user out;
- between every process of every host (`SharedTurns`, with `GATEWAY_REDIS_URL`), redis-py's `Lock`, whose expiry
  outlasts the longest grant so a crashed holder cannot keep the turn; Keycloak's own guard stays the backstop if a
  Redis failover ever loses a lock.

A thread that waits for a turn is a thread that serves nobody else, so a burst of logins for one username could
take every thread of the host. Each login therefore first takes one of `waiters + 1` places of its username (the
turn's holder and the waiters), counted over the whole host, or over every host with Redis; when none is free it
is refused at once (TooManyAttempts, 429 with Retry-After) instead of queueing. And within one worker process at
most `threads - max(1, threads // 8)` threads may be in line for one username: a worker keeps one thread in eight,
and at least one whenever it has two or more, for everyone else even when all the places of a username happen to
be in it (gunicorn hands a worker's queued requests to its threads in order, so a worker whose every thread waits
serves the others only as turns end). `threads` is the worker's real count, as gunicorn resolved it
(`gateway/gunicorn_conf.py` tells each worker before it builds the app). On a host a place is an
open-file-description lock on one byte of the username's lock file (`F_OFD_SETLK`: per open file, so per
thread, and released by the kernel when the file is closed or its process dies). With Redis the places are the
members of a sorted set scored by their expiry, added and counted by one Lua script, so places of a crashed
process lapse by themselves. A turn held in Redis is extended while its holder is inside (a watchdog thread per
process renews it, and the holder's place, every third of the expiry), so it never lapses under a grant or look-up
still running; a holder whose process died stops being renewed, and its turn lapses within the expiry. A release
that Redis refused (its primary went away as the login ended) is tried again by a thread of the process until it
lands, as it does on the replica that a Sentinel failover promotes, or the turn has lapsed anyway.
"""

import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import stat
import struct
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager

from gateway.config import ConfigError
from gateway.errors import LoginQueueTimeout, StoreUnavailable, TooManyAttempts
from gateway.store import translated

log = logging.getLogger(__name__)

STRIPES = 65536
KEY_FILE = "stripe.key"
# A refused login is told to come back after this many seconds: by then the logins ahead of it are usually done.
RETRY_AFTER = 1
# Keycloak clears a grant's in-flight mark a few milliseconds after it answered (measured here on a quiet machine:
# grants handed on at once were refused 23 times in 240, after 5 ms 4 in 240, after 10 ms or more never; on one
# loaded with other work, one logged in 50 ms after its previous grant was refused), so a turn begins at the earliest
# this long after the previous grant of the username ended.
SETTLE_SECONDS = 0.1
# How often a release that Redis refused (a turn or a place, at the moment the primary went away) is tried again.
RELEASE_RETRY = 0.25
# Where the lock file keeps when its username's last grant ended (CLOCK_MONOTONIC, the same in every process).
_ENDED = struct.Struct("d")


# struct flock as fcntl(F_OFD_SETLK) reads it on Linux: l_type, l_whence, l_start, l_len, l_pid (0), padding.
_FLOCK = struct.Struct("hhqqi4x")


def _lock_byte(fd, offset):
    """Try an open-file-description write lock on one byte of `fd`'s file; False if another open file has it."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0))
    except (BlockingIOError, PermissionError):  # EAGAIN or EACCES: held elsewhere
        return False
    return True


class Turn:
    """What `hold()` yields: how long after the block the next grant of the username must wait. A grant that timed
    out in the gateway may still run in Keycloak, which would refuse an overlapping one in the words of a wrong
    password, so its holder sets `settle` to the time Keycloak may still take."""

    def __init__(self):
        self.settle = SETTLE_SECONDS


def _no_place(where):
    return TooManyAttempts(f"too many logins of the same username already wait for their turn {where}",
                           retry_after=RETRY_AFTER)


def in_line_bound(threads):
    """How many of a worker's `threads` may hold or wait for one username's turn: all but one in eight, and all but
    one whenever there are two or more."""
    return max(1, threads - max(1, threads // 8))


class _Queue:
    """The threads of this process that hold or wait for one username's turn."""

    def __init__(self):
        self.busy = False
        self.waiters = deque()  # one Event per waiting thread, in arrival order
        self.users = 0  # holder plus waiters: the entry goes when it drops to 0


class _Turns:
    """The per-username queue of this process's threads; the subclasses add the places and the turn between
    processes (and hosts)."""

    def __init__(self, timeout, waiters, threads):
        self.timeout = timeout
        self.waiters = waiters
        # None: no bound of its own (a process not serving requests from a fixed number of threads)
        self.in_line_per_process = in_line_bound(threads) if threads else None
        self._queues = {}
        self._guard = threading.Lock()

    def _enter(self, key, deadline):
        with self._guard:
            queue = self._queues.get(key) or self._queues.setdefault(key, _Queue())
            if self.in_line_per_process is not None and queue.users >= self.in_line_per_process:
                raise _no_place("in this worker process")
            queue.users += 1
            if not queue.busy:
                queue.busy = True
                return queue
            called = threading.Event()
            queue.waiters.append(called)
        if called.wait(max(0.0, deadline - time.monotonic())):
            return queue
        with self._guard:
            if called.is_set():  # handed the turn just as the wait ran out: take it
                return queue
            queue.waiters.remove(called)
            self._drop(key, queue)
        raise LoginQueueTimeout("waited too long for another login of the same username in this process")

    def _leave(self, key, queue):
        with self._guard:
            if queue.waiters:
                queue.waiters.popleft().set()  # the turn passes straight to the next in line
            else:
                queue.busy = False
            self._drop(key, queue)

    def _drop(self, key, queue):
        queue.users -= 1
        if queue.users == 0:
            del self._queues[key]

    def waiting(self, username):
        """How many threads of this process wait for the username's turn (the holder not counted)."""
        with self._guard:
            queue = self._queues.get(username.lower())
            return len(queue.waiters) if queue else 0


class UsernameTurns(_Turns):
    """One turn per username at a time on this host; a turn not had within `timeout` seconds is LoginQueueTimeout,
    and a login that finds the turn's holder and `waiters` others already there is TooManyAttempts at once."""

    def __init__(self, directory, timeout, waiters=7, threads=None):
        super().__init__(timeout, waiters, threads)
        self.directory = directory
        self._ensure_directory()
        self._key = self._stripe_key(secrets.token_bytes(32))

    def _ensure_directory(self):
        # Made again if a temp-file cleaner removed it; refused if someone else made it first at this path.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ConfigError(f"lock directory {self.directory} (under XDG_RUNTIME_DIR or TMPDIR) must be a "
                              "directory of this user, mode 0700")

    def _stripe_key(self, proposed):
        """The directory's hashing key, shared by every process that uses the directory; the first one's wins."""
        path = os.path.join(self.directory, KEY_FILE)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(proposed)
        for _ in range(100):  # another process may have created the file and not yet written its key
            with open(path, "rb") as file:
                key = file.read()
            if len(key) == 32:
                return key
            time.sleep(0.01)
        raise ConfigError(f"lock directory {self.directory} (under XDG_RUNTIME_DIR or TMPDIR) has an unusable "
                          f"{KEY_FILE}")

    def stripe(self, username):
        """The lock file of a username; letter case ignored, as Keycloak ignores it."""
        digest = hmac.new(self._key, username.lower().encode(), hashlib.sha256).digest()
        return os.path.join(self.directory, f"{int.from_bytes(digest[:4], 'big') % STRIPES:05d}.lock")

    @contextmanager
    def hold(self, username):
        """Hold the username's turn for the block; TooManyAttempts if no place is free, LoginQueueTimeout if the
        turn does not come in time."""
        deadline = time.monotonic() + self.timeout
        key = username.lower()
        fd = self._open(self.stripe(username))  # this thread's own open file: its place and, later, its turn
        try:
            # Place i is byte i + 1 of the lock file; the turn itself is the whole file's flock, another kind of lock.
            if not any(_lock_byte(fd, 1 + place) for place in range(self.waiters + 1)):
                raise _no_place("on this host")
            queue = self._enter(key, deadline)
            try:
                self._host_turn(fd, deadline)
                turn = Turn()
                try:
                    yield turn
                finally:
                    # The next turn begins SETTLE_SECONDS after the recorded end, so a longer settle moves it on.
                    os.pwrite(fd, _ENDED.pack(time.monotonic() + turn.settle - SETTLE_SECONDS), 0)
                    fcntl.flock(fd, fcntl.LOCK_UN)  # before the next thread of this process is called in
            finally:
                self._leave(key, queue)
        finally:
            os.close(fd)  # closing the file gives back the place (and any lock left)

    def _host_turn(self, fd, deadline):
        """The username's lock file, taken against the other processes of the host; only a process's turn holder
        waits here, so at most one thread per process polls. Taken, it waits until the last grant settled."""
        pause = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            if time.monotonic() >= deadline:
                raise LoginQueueTimeout("waited too long for a login of the same username in another process")
            time.sleep(pause)
            pause = min(pause * 2, 0.005)
        recorded = os.pread(fd, _ENDED.size, 0)
        if len(recorded) == _ENDED.size:
            begins = _ENDED.unpack(recorded)[0] + SETTLE_SECONDS
            if begins > deadline:
                fcntl.flock(fd, fcntl.LOCK_UN)
                raise LoginQueueTimeout("the last grant of the same username may still run in Keycloak")
            time.sleep(max(0.0, begins - time.monotonic()))

    def _open(self, path):
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._ensure_directory()
            self._stripe_key(self._key)  # the key the running processes hash with, for those that start next
            return os.open(path, flags, 0o600)


# KEYS[1]: the username's places; ARGV: how many places, seconds a place may live, the new place's token.
# Redis's clock scores every place, so the hosts' clocks never matter.
TAKE_PLACE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) * 1000))
return 1
"""
# KEYS[1]: the username's places; ARGV: seconds the place lives from now on, the place's token. A place that lapsed
# or was given back stays gone.
RENEW_PLACE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
if redis.call('ZADD', KEYS[1], 'XX', 'CH', t + tonumber(ARGV[1]), ARGV[2]) == 0 then
  return 0
end
local life = math.ceil(tonumber(ARGV[1]) * 1000)
if redis.call('PTTL', KEYS[1]) < life then
  redis.call('PEXPIRE', KEYS[1], life)
end
return 1
"""


class _Held:
    """A turn that a thread of this process holds in Redis, with its place: what the watchdog renews."""

    def __init__(self, lock, places, token, until):
        self.lock, self.places, self.token, self.until = lock, places, token, until
        self.inside = True
        self.guard = threading.Lock()  # a renewal and the holder's leaving never interleave


class SharedTurns(_Turns):
    """One turn per username at a time across every host sharing the Redis of `store`; places counted there too.
    A Redis that cannot be reached is StoreUnavailable: the rule is never skipped."""

    def __init__(self, store, timeout, waiters=7, threads=None):
        super().__init__(timeout, waiters, threads)
        self.client = store.client
        # A turn whose holder's process died lapses this long after its last renewal: a grant's connect and read.
        self.expiry = 2 * timeout + 1
        # Renewed at most this long: the grant and the look-ups after it (the service account's token, the user, its
        # brute-force status) are a few calls, each bounded by `timeout` to connect and as long to read; a holder
        # stuck past all of them no longer keeps the username from everyone.
        self.longest_hold = 10 * timeout
        self._take_place = self.client.register_script(TAKE_PLACE)
        self._renew_place = self.client.register_script(RENEW_PLACE)
        self._held = set()
        self._held_guard = threading.Lock()
        self._watchdog = None  # the thread renewing this process's turns, while it holds any
        self._unreleased = []  # (monotonic time it lapses by itself, operation, release) that Redis refused
        self._releaser = None  # the thread trying those again, while there are any

    @contextmanager
    def hold(self, username):
        """Hold the username's turn for the block, as UsernameTurns.hold, across hosts."""
        deadline = time.monotonic() + self.timeout
        key = username.lower()
        # Hashed: Redis learns no username, and a key's length does not depend on what a client sent.
        name = hashlib.sha256(key.encode()).hexdigest()
        places, token = f"edm-gateway:places:{name}", uuid.uuid4().hex
        with translated("login places"):
            taken = self._take_place(keys=[places], args=[self.waiters + 1, self.timeout + self.expiry, token])
        if not taken:
            raise _no_place("on the gateways sharing Redis")
        try:
            queue = self._enter(key, deadline)
            try:
                # Not thread-local: the watchdog thread renews the lock this thread holds.
                lock = self.client.lock(f"edm-gateway:turn:{name}", timeout=self.expiry, sleep=0.005,
                                        blocking_timeout=max(0.0, deadline - time.monotonic()), thread_local=False)
                with translated("login turn"):
                    if not lock.acquire():
                        raise LoginQueueTimeout("waited too long for a login of the same username elsewhere")
                held = self._watch(_Held(lock, places, token, time.monotonic() + self.longest_hold))
                turn = Turn()
                try:
                    yield turn
                finally:
                    self._unwatch(held)
                    # Not deleted: left to lapse once the grant settled in Keycloak, then the next one may begin.
                    settled = time.monotonic() + turn.settle
                    self._let_go("login turn", lambda: _settle(lock, settled), self.expiry)
            finally:
                self._leave(key, queue)
        finally:
            self._let_go("login places", lambda: self.client.zrem(places, token), self.timeout + self.expiry)

    def _watch(self, held):
        with self._held_guard:
            self._held.add(held)
            if self._watchdog is None or not self._watchdog.is_alive():  # none yet, or it stayed in a forked parent
                self._watchdog = threading.Thread(target=self._renewals, name="edm-gateway-turn-watchdog",
                                                  daemon=True)
                self._watchdog.start()
        return held

    def _unwatch(self, held):
        with held.guard:
            held.inside = False
        with self._held_guard:
            self._held.discard(held)

    def _renewals(self):
        """The watchdog: every third of the expiry, extend each turn held here (and its place), until none is."""
        while True:
            time.sleep(self.expiry / 3)
            with self._held_guard:
                if not self._held:
                    self._watchdog = None
                    return
                held = list(self._held)
            for turn in held:
                self._renew(turn)

    def _renew(self, turn):
        with turn.guard:
            if not turn.inside or time.monotonic() > turn.until:
                return
            try:
                with translated("login turn renewal"):
                    turn.lock.reacquire()
                    self._renew_place(keys=[turn.places], args=[self.expiry, turn.token])
            except StoreUnavailable as exc:
                # Lost, or Redis away: Keycloak's own guard is the backstop; the next renewal tries again.
                log.warning("could not extend a login turn: %s", exc.reason)

    def _let_go(self, operation, release, lapses_within):
        """Release what a login held. The grant is done: a Redis that fails now must not change its answer. What it
        could not release is tried again until that lands or the thing has lapsed by itself (`lapses_within` seconds
        at most): after a Sentinel failover the new primary still holds the turn that the old one could not free, and
        without the retry every login of the username would wait for it until it lapsed."""
        try:
            with translated(operation):
                release()
        except StoreUnavailable as exc:
            log.warning("could not release: %s (tried again until it lapses by itself)", exc.reason)
            with self._held_guard:
                self._unreleased.append((time.monotonic() + lapses_within, operation, release))
                if self._releaser is None or not self._releaser.is_alive():  # none yet, or left in a forked parent
                    self._releaser = threading.Thread(target=self._releases, name="edm-gateway-turn-release",
                                                      daemon=True)
                    self._releaser.start()

    def _releases(self):
        """The releaser: every RELEASE_RETRY seconds, each release Redis refused, until none is left to try."""
        while True:
            time.sleep(RELEASE_RETRY)
            with self._held_guard:
                now = time.monotonic()
                self._unreleased = [entry for entry in self._unreleased if entry[0] > now]
                if not self._unreleased:
                    self._releaser = None
                    return
                pending = list(self._unreleased)
            for entry in pending:
                try:
                    with translated(entry[1]):
                        entry[2]()
                except StoreUnavailable:
                    continue
                log.info("released after all: %s", entry[1])
                with self._held_guard:
                    if entry in self._unreleased:
                        self._unreleased.remove(entry)


def _settle(lock, settled):
    """Leave the turn to lapse at `settled` (monotonic), also when this is a retry after that time; one that lapsed
    already (and may be the next login's) is no longer this login's to change."""
    import redis

    try:
        lock.extend(max(0.001, settled - time.monotonic()), replace_ttl=True)
    except redis.exceptions.LockNotOwnedError:
        pass
