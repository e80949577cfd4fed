"""The realm `edm` as the bench uses it: its own users, made and removed through the admin API (as the realm
administrator), their brute-force state and sessions, and grants straight to the token endpoint. Or a realm of
the bench's own, a copy of `keycloak/realm-edm.json` with other settings (refresh-token rotation), made through
the master realm's administrator and deleted at the end."""

import json
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

REALM = "edm"
REALM_FILE = Path(__file__).resolve().parent.parent / "keycloak" / "realm-edm.json"
# The placeholder that Keycloak's import at start resolves from the environment; the admin API does not.
SECRET_PLACEHOLDER = "${KEYCLOAK_CLIENT_SECRET:edmportal-dev-secret}"
ROTATION = {"revokeRefreshToken": True, "refreshTokenMaxReuse": 0}
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

    def __init__(self, keycloak_url, name=REALM):
        self.base = keycloak_url.rstrip("/")
        self.name = name
        self.token_path = f"/realms/{name}/protocol/openid-connect/token"
        self.admin_path = f"{self.base}/admin"
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: no proxy from the environment
        self._admin_tokens, self._admin_token_at = None, 0.0
        self.users = []

    def grant(self, client=(CLIENT_ID, CLIENT_SECRET), **form):
        """A grant straight to the token endpoint, by default of the gateway's client; the answer's JSON."""
        client_form = {"client_id": client[0], **({"client_secret": client[1]} if client[1] else {})}
        answer = self.http.post(self.base + self.token_path, data={**client_form, **form}, timeout=TIMEOUT)
        if answer.status_code != 200:
            raise RuntimeError(f"{form['grant_type']} grant refused: HTTP {answer.status_code} {answer.text[:200]}")
        return answer.json()

    def password_grant(self, username, password, client=(CLIENT_ID, CLIENT_SECRET), attempts=4):
        """A password grant, tried again a moment later if refused: Keycloak refuses a user's grant while
        another of the user is in flight (a phase's load may leave one behind, a test may be logging the realm
        administrator in), or follows it too closely, in the words of a wrong password."""
        for attempt in range(attempts):
            try:
                return self.grant(client, grant_type="password", username=username, password=password,
                                  scope="profile email")
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.5)

    def login(self, user):
        """A fresh session of `user`: the token response of a password grant."""
        return self.password_grant(user.username, PASSWORD)

    def _admin(self, method, path, **kwargs):
        # One password grant per run; after it, refresh grants, which no other login can collide with. The
        # admin token lives 300 s in this realm: renewed well before.
        if self._admin_tokens is None:
            self._admin_tokens = self.password_grant(*ADMIN, client=("admin-cli", None))
            self._admin_token_at = time.monotonic()
        elif time.monotonic() - self._admin_token_at > 120:
            self._admin_tokens = self.grant(("admin-cli", None), grant_type="refresh_token",
                                            refresh_token=self._admin_tokens["refresh_token"])
            self._admin_token_at = time.monotonic()
        answer = self.http.request(method, self.admin_path + path, timeout=TIMEOUT, **kwargs,
                                   headers={"Authorization": f"Bearer {self._admin_tokens['access_token']}"})
        answer.raise_for_status()
        return answer

    def rotation(self):
        """The realm's refresh-token rotation settings, as Keycloak reports them."""
        settings = self._admin("GET", f"/realms/{self.name}").json()
        return {key: settings.get(key) for key in ROTATION}

    def server_info(self):
        """Keycloak's system information (version, Java version...) from the admin API."""
        return self._admin("GET", "/serverinfo").json()["systemInfo"]

    def create_users(self, count):
        """`count` fresh users with alphanumeric names, complete profiles and a permanent password."""
        run = secrets.token_hex(3)

        def create(index):
            username = f"bench{run}n{index:03d}"
            answer = self._admin("POST", f"/realms/{self.name}/users", json={
                "username": username, "enabled": True, "email": f"{username}@example.com", "emailVerified": True,
                "firstName": "Bench", "lastName": f"User{index}",
                "credentials": [{"type": "password", "value": PASSWORD, "temporary": False}]})
            return User(answer.headers["Location"].rpartition("/")[2], username)

        self._admin("GET", f"/realms/{self.name}/users", params={"max": 1})  # one admin token for the threads below
        # Keycloak hashes each password as it stores it: a few at once, not one after another.
        with ThreadPoolExecutor(4) as pool:
            self.users.extend(pool.map(create, range(count)))
        return self.users

    def reset_brute_force(self, users):
        """Forget the failed logins of `users` (only these: other tests may lock users of their own)."""
        for user in users:
            self._admin("DELETE", f"/realms/{self.name}/attack-detection/brute-force/users/{user.id}")

    def end_sessions(self, users):
        """End every session of `users`, so that sessions do not pile up in Keycloak from phase to phase."""
        for user in users:
            self._admin("POST", f"/realms/{self.name}/users/{user.id}/logout")

    def delete_users(self):
        """Remove the users this bench made."""
        for user in self.users:
            self._admin("DELETE", f"/realms/{self.name}/users/{user.id}")
        self.users = []


def _master_admin_token(http, base, admin):
    answer = http.post(f"{base}/realms/master/protocol/openid-connect/token", timeout=TIMEOUT, data={
        "grant_type": "password", "client_id": "admin-cli", "username": admin[0], "password": admin[1]})
    if answer.status_code != 200:
        raise RuntimeError(f"the master realm's administrator was refused: HTTP {answer.status_code}; "
                           "--master-admin USER:PASSWORD names another")
    return answer.json()["access_token"]


def create_copy(keycloak_url, admin, settings):
    """A realm of the bench's own: `keycloak/realm-edm.json` under a fresh name, with `settings` (realm
    attributes) on top, made by the master realm's `admin` (user, password). Returns its name."""
    realm = json.loads(REALM_FILE.read_text().replace(SECRET_PLACEHOLDER, CLIENT_SECRET))
    realm.update(settings, realm=f"{REALM}-bench-{secrets.token_hex(3)}")
    for client in realm.get("clients", []):
        # The copy's sessions end without telling the stack's gateway, whose URL the realm file may name.
        client.get("attributes", {}).pop("backchannel.logout.url", None)
    base, http = keycloak_url.rstrip("/"), requests.Session()
    http.trust_env = False
    token = _master_admin_token(http, base, admin)
    answer = http.post(f"{base}/admin/realms", json=realm, timeout=120, headers={"Authorization": f"Bearer {token}"})
    answer.raise_for_status()
    return realm["realm"]


def delete_copy(keycloak_url, admin, name):
    """Delete the realm `create_copy` made (never the stack's own)."""
    if name == REALM:
        raise ValueError("the stack's realm is not the bench's to delete")
    base, http = keycloak_url.rstrip("/"), requests.Session()
    http.trust_env = False
    token = _master_admin_token(http, base, admin)
    http.delete(f"{base}/admin/realms/{name}", timeout=120,
                headers={"Authorization": f"Bearer {token}"}).raise_for_status()
