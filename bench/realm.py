"""The realm `edm` as the bench uses it: its own users, made and removed through the admin API (as the realm
administrator), their brute-force state and sessions, and grants straight to the token endpoint."""

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import requests

REALM = "edm"
CLIENT_ID = "edmportal"
CLIENT_SECRET = "edmportal-dev-secret"
ADMIN = ("edmadmin", "edmadmin")
PASSWORD = "bench-password-1"
TIMEOUT = 30


@dataclass(frozen=True)
class User:
    id: str
    username: str


class Realm:
    """The realm at `keycloak_url` (`http://host:port/auth/`), driven by the bench."""

    def __init__(self, keycloak_url):
        self.base = keycloak_url.rstrip("/")
        self.token_path = f"/realms/{REALM}/protocol/openid-connect/token"
        self.admin_path = f"{self.base}/admin"
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: no proxy from the environment
        self._admin_token, self._admin_token_at = None, 0.0
        self.users = []

    def grant(self, **form):
        """A grant of the bench's client straight to the token endpoint; the answer's JSON (raises on refusal)."""
        answer = self.http.post(self.base + self.token_path, data={"client_id": CLIENT_ID,
                                                                   "client_secret": CLIENT_SECRET, **form},
                                timeout=TIMEOUT)
        if answer.status_code != 200:
            raise RuntimeError(f"{form['grant_type']} grant refused: HTTP {answer.status_code} {answer.text[:200]}")
        return answer.json()

    def login(self, user):
        """A fresh session of `user`: the token response of a password grant."""
        form = {"grant_type": "password", "username": user.username, "password": PASSWORD, "scope": "profile email"}
        try:
            return self.grant(**form)
        except RuntimeError:
            # Keycloak refuses a grant while another of the user is in flight, one that a phase's load may have
            # left behind (wrk stops mid-request): once more, a moment later.
            time.sleep(0.5)
            return self.grant(**form)

    def _admin(self, method, path, **kwargs):
        # The admin token lives 300 s in this realm: take a new one well before.
        if time.monotonic() - self._admin_token_at > 120:
            answer = self.http.post(self.base + self.token_path, timeout=TIMEOUT, data={
                "grant_type": "password", "client_id": "admin-cli", "username": ADMIN[0], "password": ADMIN[1]})
            answer.raise_for_status()
            self._admin_token, self._admin_token_at = answer.json()["access_token"], time.monotonic()
        answer = self.http.request(method, self.admin_path + path, timeout=TIMEOUT,
                                   headers={"Authorization": f"Bearer {self._admin_token}"}, **kwargs)
        answer.raise_for_status()
        return answer

    def server_info(self):
        """Keycloak's system information (version, Java version...) from the admin API."""
        return self._admin("GET", "/serverinfo").json()["systemInfo"]

    def create_users(self, count):
        """`count` fresh users with alphanumeric names, complete profiles and a permanent password."""
        run = secrets.token_hex(3)

        def create(index):
            username = f"bench{run}n{index:03d}"
            answer = self._admin("POST", f"/realms/{REALM}/users", json={
                "username": username, "enabled": True, "email": f"{username}@example.com", "emailVerified": True,
                "firstName": "Bench", "lastName": f"User{index}",
                "credentials": [{"type": "password", "value": PASSWORD, "temporary": False}]})
            return User(answer.headers["Location"].rpartition("/")[2], username)

        self._admin("GET", f"/realms/{REALM}/users", params={"max": 1})  # one admin token for the threads below
        # Keycloak hashes each password as it stores it: a few at once, not one after another.
        with ThreadPoolExecutor(4) as pool:
            self.users.extend(pool.map(create, range(count)))
        return self.users

    def reset_brute_force(self, users):
        """Forget the failed logins of `users` (only these: other tests may lock users of their own)."""
        for user in users:
            self._admin("DELETE", f"/realms/{REALM}/attack-detection/brute-force/users/{user.id}")

    def end_sessions(self, users):
        """End every session of `users`, so that sessions do not pile up in Keycloak from phase to phase."""
        for user in users:
            self._admin("POST", f"/realms/{REALM}/users/{user.id}/logout")

    def delete_users(self):
        """Remove the users this bench made."""
        for user in self.users:
            self._admin("DELETE", f"/realms/{REALM}/users/{user.id}")
        self.users = []
