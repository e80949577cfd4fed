"""A bounded mixed load for the topology's fault tests, through nginx as a browser or portal would send it: logins,
refreshes and `/api/me` of users of their own, and BFF sessions asking `/bff/user`; every answer recorded.

The load comes from many loopback addresses (nginx sets X-Forwarded-For to the address it saw, and the gateways
trust it): compose's per-address limit stays as it is, and no client address carries more than a browser would."""

import collections
import secrets
import threading
import time
from dataclasses import dataclass

import requests
from keycloak import KeycloakAdmin, KeycloakOpenIDConnection
from requests.adapters import HTTPAdapter

from tests.conftest import SUITE_SECRETS, User

UNAVAILABLE = (503, "code=503, message=authentication service unavailable")
TIMED_OUT = (504, "code=504, message=authentication service timed out")
UPSTREAM_ERROR = (502, "code=502, message=authentication service error")


@dataclass
class Answer:
    kind: str  # login, refresh, me, bff
    started: float  # monotonic
    ended: float
    status: int | None  # None: no HTTP answer at all
    body: object

    @property
    def shown(self):
        """(status, body) as the tests compare them."""
        return self.status, self.body


class SourceAddressAdapter(HTTPAdapter):
    """Connections from one loopback address of the client's choosing."""

    def __init__(self, address, **kwargs):
        self.address = address
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address):
    session = requests.Session()
    adapter = SourceAddressAdapter(address)
    session.mount("http://", adapter)
    return session


_addresses = (f"127.0.{block}.{host}" for block in range(10, 250) for host in range(1, 255))
_lock = threading.Lock()


def client_addresses(count):
    """`count` loopback addresses no other client of the run has had."""
    with _lock:
        return [next(_addresses) for _ in range(count)]


def body_of(response):
    try:
        return response.json()
    except ValueError:
        return response.text[:200]  # nginx's own HTML pages, e.g. its 502


class MixedLoad:
    """One thread per user (login, refresh with the new refresh token, `/api/me` with the new access token, again
    and again) and one per BFF browser (`/bff/user`), `pause` seconds between requests, until `stop()` or `seconds`
    ran out."""

    def __init__(self, url, users=(), browsers=(), seconds=120, pause=0.2, addresses_per_user=8):
        self.url, self.pause = url, pause
        self.answers = []
        self._lock = threading.Lock()
        self._until = time.monotonic() + seconds
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(user, addresses_per_user), daemon=True)
                         for user in users]
        self._threads += [threading.Thread(target=self._browser, args=(browser,), daemon=True)
                          for browser in browsers]

    def _record(self, kind, call):
        started = time.monotonic()
        try:
            response = call()
            answer = Answer(kind, started, time.monotonic(), response.status_code, body_of(response))
        except requests.RequestException as exc:
            answer = Answer(kind, started, time.monotonic(), None, type(exc).__name__)
            response = None
        with self._lock:
            self.answers.append(answer)
        self._stop.wait(self.pause)
        return answer

    def _running(self):
        return not self._stop.is_set() and time.monotonic() < self._until

    def _user(self, user, addresses_per_user):
        sessions = [session_from(address) for address in client_addresses(addresses_per_user)]
        turn = 0

        def next_session():
            nonlocal turn
            turn += 1
            return sessions[turn % len(sessions)]

        credentials = {"username": user.username, "password": user.password}
        while self._running():
            login = self._record("login", lambda: next_session().post(f"{self.url}/api/login", json=credentials,
                                                                       timeout=30))
            if login.status != 200 or not self._running():
                continue
            refresh_token = login.body["refreshToken"]
            refreshed = self._record("refresh", lambda refresh_token=refresh_token: next_session().post(
                f"{self.url}/api/refresh", json={"refreshToken": refresh_token}, timeout=30))
            token = refreshed.body["accessToken"] if refreshed.status == 200 else login.body["accessToken"]
            if self._running():
                self._record("me", lambda token=token: next_session().get(
                    f"{self.url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=30))

    def _browser(self, browser):
        while self._running():
            self._record("bff", lambda: browser.get(f"{self.url}/bff/user", headers={"X-CSRF": "1"}, timeout=30))

    def start(self):
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.answers

    def wait_for_answers(self, count, timeout=30):
        """Block until the load has recorded `count` answers in all (it runs, and runs through)."""
        deadline = time.monotonic() + timeout
        while len(self.answers) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.answers) >= count, f"the load recorded {len(self.answers)} answers in {timeout} s"


def by_status(answers):
    """Counts by kind and status, as the figures line prints them: `login 200: 40, login 503: 3, ...`."""
    counts = collections.Counter(f"{a.kind} {a.status}" for a in answers)
    return ", ".join(f"{key}: {counts[key]}" for key in sorted(counts))


def failures(answers):
    return [a for a in answers if a.status != 200]


class TopologyRealm:
    """The realm `edm` of the topology's own Keycloak, through its admin API as the realm administrator."""

    def __init__(self, keycloak_url):
        connection = KeycloakOpenIDConnection(server_url=keycloak_url, username="edmadmin", password="edmadmin",
                                              realm_name="edm", user_realm_name="edm", client_id="admin-cli",
                                              timeout=30)
        self.admin = KeycloakAdmin(connection=connection)

    def create_user(self, prefix="topo"):
        username = f"{prefix}{secrets.token_hex(6)}"
        password = f"Pw-{secrets.token_hex(8)}"
        SUITE_SECRETS.add(password)
        user_id = self.admin.create_user({
            "username": username, "enabled": True, "email": f"{username}@example.com", "emailVerified": True,
            "firstName": "Topology", "lastName": "User",
            "credentials": [{"type": "password", "value": password, "temporary": False}]})
        return User(user_id, username, password)

    def sessions(self, user):
        """The user's sessions in Keycloak: one per password grant it accepted."""
        return self.admin.get_sessions(user.id)
