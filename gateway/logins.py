"""BFF logins under way: what `/bff/login` starts and `/bff/callback` finishes, kept in the browser, not the store.

A login is `state`, `nonce`, the PKCE verifier and `returnUrl`, sealed (gateway/sealing.py) into the browser's
`__Host-edm-login` cookie (HttpOnly, SameSite=Lax so that it comes back on Keycloak's cross-site redirect). Nothing
is stored before the callback, so anonymous login starts cannot fill the store; the cookie binds the login to the
browser that started it. The cookie holds the last PENDING logins (tabs that each start one) for LOGIN_SECONDS.
A callback spends its `state` once: the store remembers it (`login-state:`, an HMAC) until the login would have
expired anyway, so a replayed callback fails even with a copy of the cookie. That one small record per finished
callback is the only state a login leaves, and each needs a login start, which the per-address limit counts.
"""

import base64
import hashlib
import secrets
import time
from dataclasses import asdict, dataclass

from gateway.errors import LoginFailed
from gateway.sealing import TEXT_LIMIT, Sealer
from gateway.tokens import same_text

LOGIN_SECONDS = 600  # how long a login may take on Keycloak's page (its own login timeout is longer)
PENDING = 3  # logins one browser may have under way at once (tabs)
COOKIE = "__Host-edm-login"


def code_challenge(verifier):
    """PKCE's S256 challenge of a verifier (RFC 7636)."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Login:
    """A login started by /bff/login: what its callback needs."""

    state: str
    nonce: str
    verifier: str
    return_url: str
    expires: float


class Logins:
    """Logins under way, sealed into the login cookie; spent states remembered in `store`."""

    def __init__(self, store, secret, previous_secrets=(), clock=time.time):
        self.store = store
        self.sealer = Sealer(secret, "bff login", previous_secrets)
        self.clock = clock

    def _pending(self, cookie):
        record = self.sealer.open_text(COOKIE, cookie)
        now = self.clock()
        try:
            logins = [Login(**entry) for entry in record] if isinstance(record, list) else []
        except TypeError:  # a record of another shape: none
            logins = []
        return [login for login in logins if login.expires > now]

    def begin(self, cookie, return_url):
        """A new login of the browser whose login cookie is `cookie`: (the cookie's new value, the login)."""
        login = Login(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64), return_url,
                      self.clock() + LOGIN_SECONDS)
        pending = [*self._pending(cookie), login][-PENDING:]
        while True:  # a browser keeps a cookie of at most 4,096 characters: the oldest logins give way
            sealed = self.sealer.seal_text(COOKIE, [asdict(entry) for entry in pending])
            if len(sealed) <= TEXT_LIMIT or len(pending) == 1:
                return sealed, login
            pending = pending[1:]

    def finish(self, cookie, state):
        """The login that `state` names, if this browser started it, spent (it finishes once): (the cookie's new
        value, or "" when no login is left, and the login). LoginFailed otherwise."""
        if not state:
            raise LoginFailed("callback without state")
        pending = self._pending(cookie)
        login = next((entry for entry in pending if same_text(state, entry.state)), None)
        if login is None:
            raise LoginFailed("a state this browser did not start, or an expired one")
        if not self.store.put_new(self.sealer.key("login-state", state), b"1", LOGIN_SECONDS):
            raise LoginFailed("state already used")
        rest = [asdict(entry) for entry in pending if entry is not login]
        return (self.sealer.seal_text(COOKIE, rest) if rest else ""), login
