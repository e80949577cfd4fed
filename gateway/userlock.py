"""At most one password grant per username in flight on this host, across threads and worker processes.

Keycloak 26 refuses a grant while another grant of the same user is in flight, in the words of a wrong
password (`shared/KEYCLOAK.md`), so the gateway gives each username one turn at a time:
- between the threads of a process, an exact per-username queue (first come, first served; no polling), whose
  entries exist only while someone holds or waits for them;
- between the processes of the host, `fcntl.flock` on one of 65,536 lock files (released by the kernel if a worker
  dies), chosen by a keyed hash of the username. The key is made once per lock directory and readable only by its
  owner, so nobody can pick a username that shares another's file and hold it to keep that user out.
"""

import fcntl
import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from collections import deque
from contextlib import contextmanager

from gateway.config import ConfigError
from gateway.errors import LoginQueueTimeout

STRIPES = 65536
KEY_FILE = "stripe.key"


class _Queue:
    """The threads of this process that hold or wait for one username's turn."""

    def __init__(self):
        self.busy = False
        self.waiters = deque()  # one Event per waiting thread, in arrival order
        self.users = 0  # holder plus waiters: the entry goes when it drops to 0


class UsernameTurns:
    """One turn per username at a time on this host; a turn not had within `timeout` seconds is LoginQueueTimeout."""

    def __init__(self, directory, timeout):
        self.directory = directory
        self.timeout = timeout
        self._queues = {}
        self._guard = threading.Lock()
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
        """Hold the username's turn for the block; LoginQueueTimeout if it does not come in time."""
        deadline = time.monotonic() + self.timeout
        key = username.lower()
        queue = self._enter(key, deadline)
        try:
            with self._host_turn(username, deadline):
                yield
        finally:
            self._leave(key, queue)

    def _enter(self, key, deadline):
        with self._guard:
            queue = self._queues.get(key) or self._queues.setdefault(key, _Queue())
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

    @contextmanager
    def _host_turn(self, username, deadline):
        """The username's lock file, held against the other processes of the host; only a process's turn holder
        waits here, so at most one thread per process polls."""
        fd = self._open(self.stripe(username))
        try:
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
                pause = min(pause * 2, 0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _open(self, path):
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._ensure_directory()
            self._stripe_key(self._key)  # the key the running processes hash with, for those that start next
            return os.open(path, flags, 0o600)
