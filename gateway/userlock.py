"""At most one password grant per username in flight on this host, across threads and worker processes.

Keycloak 26 refuses a grant while another grant of the same user is in flight, in the words of a wrong
password (`shared/KEYCLOAK.md`), so the gateway queues them. Usernames hash onto a fixed set of lock files
(`fcntl.flock`, released by the kernel if a worker dies): bounded on disk, and two usernames that share a
stripe merely take turns.
"""

import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from contextlib import contextmanager

from gateway.errors import UpstreamTimeout

STRIPES = 1024


def default_directory():
    """A per-user directory for the lock files: the runtime directory where there is one, else the temp dir."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(base, f"edm-gateway-{os.getuid()}-grants")


class UsernameLock:
    """Serialises work per username; waits at most `timeout` seconds for its turn."""

    def __init__(self, timeout, directory=None):
        self.timeout = timeout
        self.directory = directory or default_directory()
        self._ensure_directory()

    def _ensure_directory(self):
        # Made again if a temp-file cleaner removed it; refused if someone else made it first at this path.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        info = os.lstat(self.directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise RuntimeError(f"lock directory {self.directory} must be a directory of this user, mode 0700")

    def _open(self, username):
        # Keycloak usernames are case-insensitive: "Ahmad" and "ahmad" are one user and one lock.
        digest = hashlib.sha256(username.lower().encode()).digest()
        path = os.path.join(self.directory, f"{int.from_bytes(digest[:4], 'big') % STRIPES:04d}.lock")
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            self._ensure_directory()
            return os.open(path, flags, 0o600)

    @contextmanager
    def hold(self, username):
        """Hold the username's turn for the block; UpstreamTimeout if it does not come in time."""
        fd = self._open(username)
        try:
            deadline = time.monotonic() + self.timeout
            pause = 0.002
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if time.monotonic() >= deadline:
                    raise UpstreamTimeout("waited too long for another login of the same username")
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
