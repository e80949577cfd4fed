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
import tempfile
import time
from contextlib import contextmanager

from gateway.errors import UpstreamTimeout

STRIPES = 1024


class UsernameLock:
    """Serialises work per username; waits at most `timeout` seconds for its turn."""

    def __init__(self, timeout, directory=None):
        self.timeout = timeout
        self.directory = directory or os.path.join(tempfile.gettempdir(), f"edm-gateway-{os.getuid()}-grants")
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def _path(self, username):
        # Keycloak usernames are case-insensitive: "Ahmad" and "ahmad" are one user and one lock.
        digest = hashlib.sha256(username.lower().encode()).digest()
        return os.path.join(self.directory, f"{int.from_bytes(digest[:4], 'big') % STRIPES:04d}.lock")

    @contextmanager
    def hold(self, username):
        """Hold the username's turn for the block; UpstreamTimeout if it does not come in time."""
        fd = os.open(self._path(username), os.O_RDWR | os.O_CREAT, 0o600)
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
